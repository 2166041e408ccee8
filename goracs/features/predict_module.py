"""The LightningModule behind sharded extraction (a module of its own: ``ddp_spawn`` pickles it by reference, and
importing Lightning costs seconds that the single-process path should not pay)."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import numpy as np
import torch


class PredictModule(L.LightningModule):
    """Holds a batch function (not as a submodule: it manages its own device) and saves this rank's rows to
    ``<out_dir>/rank<r>.npz`` when prediction ends."""

    def __init__(self, fn, out_dir: str):
        super().__init__()
        self.fn, self.out_dir = fn, out_dir
        self._rows: list[dict[str, np.ndarray]] = []
        self._threads_before: int | None = None

    def on_predict_start(self) -> None:
        if self.device.type == "cpu":
            # Share the cores between the processes instead of oversubscribing them, never above the caller's own
            # setting (OMP_NUM_THREADS=1 in a test worker, a cluster slot's cores), and give it back at the end: a
            # thread count left raised made every later matmul of the process compete with its neighbours (10x
            # slower SmolLM2 steps in a 2-worker test run).
            self._threads_before = torch.get_num_threads()
            torch.set_num_threads(max(1, min(self._threads_before, (os.cpu_count() or 1) // self.trainer.world_size)))
        self.fn.prepare(self.device)

    def predict_step(self, batch, batch_idx):
        self._rows.append({**self.fn(batch), "index": batch["index"].cpu().numpy()})

    def on_predict_end(self) -> None:
        if self._threads_before is not None:
            torch.set_num_threads(self._threads_before)
        merged = {k: np.concatenate([r[k] for r in self._rows]) for k in self._rows[0]} if self._rows else {}
        np.savez(Path(self.out_dir) / f"rank{self.global_rank}.npz", **merged)

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch  # the batch function moves what it needs
