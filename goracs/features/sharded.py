"""Run a batch function over all items, in this process or sharded through Lightning ``predict``.

A batch function has ``collate(items) -> batch``, ``prepare(device)`` and ``__call__(batch) -> {name: (B, ...)
array}``; every item carries ``index`` (its row in the split) and every batch an ``index`` tensor, so results are put
back in row order whatever the sharding. With ``num_processes > 1`` Lightning's ``ddp_spawn`` strategy starts that
many processes (CPU, or one per CUDA device); its distributed sampler gives each a disjoint share (padded with
repeats, which are dropped), each writes its rows to a file, and this process merges them. In one process the items
are batched in order of length (less padding). Per-sample results do
not depend on the batch they were computed in (see :mod:`goracs.features.gradients`), so 1 and N processes agree.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Mapping, Protocol, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


class BatchFn(Protocol):
    def collate(self, items: Sequence[Mapping]) -> dict[str, torch.Tensor]: ...

    def prepare(self, device: torch.device) -> None: ...

    def __call__(self, batch: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]: ...


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error naming the option."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("features.device=cuda but no CUDA device is available; use auto or cpu")
    return torch.device(device)


def run_batches(fn: BatchFn, items: Sequence[Mapping], *, batch_size: int, device: str = "auto",
                num_processes: int = 1, desc: str = "features") -> dict[str, np.ndarray]:
    """All results of ``fn`` over ``items``, each an array with one row per item in ``index`` order."""
    if not items:
        raise ValueError(f"{desc}: no samples to process")
    dev = resolve_device(device)
    if num_processes > 1:
        parts = _lightning_predict(fn, items, batch_size=batch_size, device=dev, num_processes=num_processes)
    else:
        fn.prepare(dev)
        # Batches of similar lengths carry little padding; the index puts rows back in order.
        ordered = sorted(items, key=_size)
        parts = []
        for start in tqdm(range(0, len(ordered), batch_size), desc=desc, unit="batch", leave=False):
            batch = fn.collate(ordered[start:start + batch_size])
            parts.append({**fn(batch), "index": batch["index"].numpy()})
    return _merge(parts, len(items))


def _size(item: Mapping) -> int:
    """Length used to group items: tokens when already encoded, else characters of the text."""
    return len(item["input_ids"]) if "input_ids" in item else len(item.get("text", ""))


def _merge(parts: list[dict[str, np.ndarray]], n: int) -> dict[str, np.ndarray]:
    parts = [p for p in parts if "index" in p]  # a rank that received no batch saved nothing
    index = np.concatenate([p["index"] for p in parts])
    names = [k for k in parts[0] if k != "index"]
    out = {}
    for name in names:
        values = np.concatenate([p[name] for p in parts])
        full = np.empty((n,) + values.shape[1:], dtype=values.dtype)
        full[index] = values  # repeats (sampler padding) write identical rows
        out[name] = full
    if len(np.unique(index)) != n:
        raise RuntimeError(f"sharded extraction returned {len(np.unique(index))} of {n} samples")
    return out


def _lightning_predict(fn: BatchFn, items: Sequence[Mapping], *, batch_size: int, device: torch.device,
                       num_processes: int) -> list[dict[str, np.ndarray]]:
    import lightning as L  # imported here: it costs seconds and the single-process path does not need it
    from torch.utils.data import DataLoader

    from goracs.features.predict_module import PredictModule

    accelerator = "gpu" if device.type == "cuda" else "cpu"
    if accelerator == "gpu" and torch.cuda.device_count() < num_processes:
        raise ValueError(f"features.num_processes={num_processes} but only {torch.cuda.device_count()} CUDA devices")
    with tempfile.TemporaryDirectory(prefix="goracs-shards-") as tmp:
        module = PredictModule(fn, tmp)
        trainer = L.Trainer(accelerator=accelerator, devices=num_processes, strategy="ddp_spawn", logger=False,
                            enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=True)
        log.info("sharding %d samples over %d %s processes", len(items), num_processes, accelerator)
        loader = DataLoader(list(items), batch_size=batch_size, shuffle=False, collate_fn=fn.collate)
        trainer.predict(module, dataloaders=loader, return_predictions=False)
        files = sorted(Path(tmp).glob("rank*.npz"))
        if len(files) != num_processes:
            raise RuntimeError(f"expected {num_processes} shard files from the workers, found {len(files)}")
        parts = []
        for f in files:
            with np.load(f) as data:
                parts.append({k: data[k] for k in data.files})
    return parts
