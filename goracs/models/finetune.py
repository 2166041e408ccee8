"""One call that LoRA-fine-tunes a model on a task's samples with Lightning: ``fine_tune``.

The ``trainer`` mapping is the ``conf/trainer/<name>.yaml`` subtree (see those files for every key): our knobs
(``lr``, ``weight_decay``, ``warmup_steps``, ``batch_size``, ``eval_batch_size``, ``cutoff_len``,
``train_on_inputs``, ``patience``) plus a ``lightning`` node instantiated as the ``lightning.pytorch.Trainer``.

Validation, early stopping and best-checkpoint restore:

* With validation samples: ``val/loss`` (mean per-sample loss over the valid set) is computed at every
  ``val_check_interval``; ``EarlyStopping`` stops after ``patience`` checks without improvement, the best adapter is
  checkpointed (trainable tensors only, a few MB) and copied back into ``model`` at the end.
* With an empty ``valid``: no validation, no early stopping; the model trains for ``max_epochs`` and the final
  adapter is kept (and saved). ``best_val_loss`` is then NaN.

Strategies: single device, ``ddp_spawn`` (the trained adapter comes back to the calling process) and FSDP. FSDP wraps
the model's decoder layers in place, so a model fine-tuned with ``trainer=fsdp`` cannot be evaluated as is: load the
saved adapter (``FitResult.ckpt``) into a freshly built model (``LoraRecModule.load_trainable``) first.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import lightning.pytorch as pl
import pandas as pd
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, TQDMProgressBar

from goracs.models.datamodule import RecDataModule
from goracs.models.encoding import answer_token_ids
from goracs.models.module import LoraRecModule

log = logging.getLogger(__name__)

TRAINER_KEYS = ("lr", "weight_decay", "warmup_steps", "batch_size", "eval_batch_size", "cutoff_len",
                "train_on_inputs", "patience", "lightning")


@dataclass(frozen=True)
class FitResult:
    best_val_loss: float            # lowest val/loss seen (NaN without validation)
    epochs: int                     # epochs run (fewer than max_epochs when early stopping fired)
    steps: int                      # optimiser steps taken
    time_s: float                   # wall time of the fit, seconds
    ckpt: Path | None               # the restored adapter checkpoint (trainable tensors only)
    val_history: list[float] = field(default_factory=list)  # val/loss at each validation check, in order


def fine_tune(model: torch.nn.Module, tokenizer, train: pd.DataFrame, valid: pd.DataFrame, *, task: str,
              faithful: bool, trainer: Mapping[str, Any], logger=None, out_dir: Path, seed: int,
              callbacks: Sequence[Callback] = ()) -> FitResult:
    """Fine-tune the trainable (LoRA) parameters of ``model`` on ``train``; restore the best adapter into ``model``.

    ``logger``: a Lightning logger, a list of them, or None (no logging). ``callbacks``: extra Lightning callbacks
    (e.g. timers), added to ours. Checkpoints go to ``out_dir/checkpoints``.
    The model ends on the CPU or the device Lightning leaves it on; the caller moves it for evaluation.
    """
    opts = _check_trainer(trainer)
    out_dir = Path(out_dir)
    pl.seed_everything(seed, workers=True, verbose=False)
    data = RecDataModule(tokenizer, train, valid, task=task, faithful=faithful, batch_size=opts["batch_size"],
                         eval_batch_size=opts["eval_batch_size"], cutoff_len=opts["cutoff_len"],
                         train_on_inputs=opts["train_on_inputs"], seed=seed)
    module = LoraRecModule(model, task=task, lr=float(opts["lr"]), weight_decay=float(opts["weight_decay"]),
                           warmup_steps=int(opts["warmup_steps"]),
                           answer_ids=answer_token_ids(tokenizer) if task == "ctr" else None)

    validate = data.has_validation
    checkpoint = ModelCheckpoint(
        dirpath=out_dir / "checkpoints", filename="adapter-best" if validate else "adapter-final",
        monitor="val/loss" if validate else None, mode="min", save_top_k=1, save_weights_only=True,
        enable_version_counter=False)
    own: list[Callback] = [checkpoint, _FitTracker(), *callbacks]
    if validate:
        own.append(EarlyStopping(monitor="val/loss", mode="min", patience=int(opts["patience"])))
    node = dict(opts["lightning"])
    if node.get("enable_progress_bar", True):
        own.append(TQDMProgressBar())
    extra: dict[str, Any] = {"limit_val_batches": 0, "num_sanity_val_steps": 0} if not validate else {}
    pl_trainer = instantiate(node, logger=logger if logger is not None else False, callbacks=own,
                             default_root_dir=str(out_dir), enable_checkpointing=True, **extra)

    log.info("fine-tuning on %d samples (%d valid), task %s, %s", len(train), len(valid), task,
             "early stopping on val/loss" if validate else "no validation: final adapter kept")
    t0 = time.perf_counter()
    pl_trainer.fit(module, datamodule=data)
    time_s = time.perf_counter() - t0

    ckpt = Path(checkpoint.best_model_path) if checkpoint.best_model_path else None
    best = math.nan
    if ckpt is not None and ckpt.exists():
        saved = torch.load(ckpt, map_location="cpu", weights_only=False)  # our own file: plain tensors and numbers
        module.load_trainable(saved["state_dict"])
        best = float(saved.get("val_loss", math.nan)) if validate else math.nan
    elif ckpt is not None:
        raise FileNotFoundError(f"best checkpoint {ckpt} vanished before it could be restored")
    metrics = pl_trainer.callback_metrics
    history = [float(v) for v in torch.as_tensor(metrics.get("fit/val_history", torch.empty(0))).flatten()]
    result = FitResult(best_val_loss=best, epochs=int(metrics.get("fit/epochs", pl_trainer.current_epoch)),
                       steps=int(metrics.get("fit/steps", pl_trainer.global_step)), time_s=time_s, ckpt=ckpt,
                       val_history=history)
    log.info("fit done in %.1f s: %d epochs, %d steps, best val/loss %.4f", time_s, result.epochs, result.steps, best)
    return result


def _check_trainer(trainer: Mapping[str, Any]) -> dict[str, Any]:
    opts = dict(trainer)
    unknown = sorted(set(opts) - set(TRAINER_KEYS))
    missing = [k for k in TRAINER_KEYS if k not in opts]
    if unknown or missing:
        raise ValueError(f"trainer config: unknown key(s) {unknown}, missing key(s) {missing}; expected exactly "
                         f"{list(TRAINER_KEYS)} (see conf/trainer/cpu.yaml)")
    node = opts["lightning"]
    if not isinstance(node, Mapping) or "_target_" not in node:
        raise ValueError("trainer.lightning must be a node with `_target_: lightning.pytorch.Trainer` and its kwargs")
    if int(opts["patience"]) < 1:
        raise ValueError(f"trainer.patience={opts['patience']}: expected >= 1 validation checks")
    return opts


class _FitTracker(Callback):
    """Records val/loss at each check, and epochs/steps at the end, in ``trainer.callback_metrics``: Lightning
    copies those back to the main process under ``ddp_spawn``, where the trainer's own counters stay at 0."""

    def __init__(self):
        self.history: list[float] = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and "val/loss" in trainer.callback_metrics:
            self.history.append(float(trainer.callback_metrics["val/loss"]))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.callback_metrics["fit/val_history"] = torch.tensor(self.history, dtype=torch.float64)
        trainer.callback_metrics["fit/epochs"] = torch.tensor(trainer.current_epoch)
        trainer.callback_metrics["fit/steps"] = torch.tensor(trainer.global_step)
