"""One call that LoRA-fine-tunes a model on a task's samples with Lightning: ``fine_tune``.

``trainer`` is a :class:`TrainerConfig`, the ``_target_`` of the ``conf/trainer/<name>.yaml`` node (see those files
for every key), or a mapping of its fields: our knobs (``lr``, ``weight_decay``, ``warmup_steps``, ``batch_size``,
``eval_batch_size``, ``cutoff_len``, ``train_on_inputs``, ``patience``) plus a ``lightning`` node instantiated as the
``lightning.pytorch.Trainer``.

Validation, early stopping and best-checkpoint restore:

* With validation samples: ``val/loss`` (mean per-sample loss over the valid set) is computed at every
  ``val_check_interval``; ``EarlyStopping`` stops after ``patience`` checks without improvement, the best adapter is
  checkpointed (trainable tensors only, a few MB) and copied back into ``model`` at the end.
* With an empty ``valid``: no validation, no early stopping; the model trains for ``max_epochs`` and the final
  adapter is kept (and saved). ``best_val_loss`` is then NaN.

Strategies: single device, ``ddp_spawn`` (the trained adapter comes back to the calling process) and FSDP. FSDP wraps
the model's decoder layers in place, so a model fine-tuned with ``trainer=fsdp`` cannot be evaluated as is: load the
saved adapter (``FitResult.ckpt``) into a freshly built model (``LoraRecModule.load_trainable``) first.

Checkpoints (in ``out_dir/checkpoints``), both holding the trainable (LoRA) tensors only, never the frozen base:

* ``adapter-best.ckpt`` (``adapter-final.ckpt`` without validation): weights only, rewritten whenever val/loss
  improves (at every epoch end without validation); the adapter ``fine_tune`` copies back into ``model``.
* ``last.ckpt``: everything Lightning needs to resume: the adapter, AdamW and LR-scheduler state, the loops' progress,
  the callbacks' state (best-checkpoint bookkeeping, early-stopping counters, ``_FitTracker``'s val/loss history, the
  torch RNG state that draws LoRA dropout masks) and the training data's position (``_ResumableData``). Written at
  every validation check (with a validation set and ``val_check_interval=1.0``: at the end of every epoch, after that
  epoch's validation), at the end of every epoch without validation, and, with ``save_every_n_steps=N``, also every N
  optimiser steps (but not after a batch that a validation check or the epoch's end follows: that check writes it).
  About 3x the adapter (AdamW keeps two moments per trainable tensor) plus ~20 KB. Writes are atomic (Lightning
  saves through an fsspec transaction), so a kill leaves the previous ``last.ckpt`` or the new one. It stays after
  the fit (a few MB), so that a rerun of a finished fit costs nothing.

Resume: ``fine_tune(..., resume=True)`` (the default) continues from ``last.ckpt`` when the folder has one
(``trainer.fit(ckpt_path=...)``), and ends with the same adapter and the same ``FitResult`` (but ``time_s``) as an
uninterrupted fit: same batches in the same order (the shuffling generator's state and the batches already run in the
epoch are restored), same dropout masks, same optimiser and schedule. Exactness holds on one device; under DDP every
rank restarts from rank 0's RNG state, so with LoRA dropout > 0 the masks after a resume differ from an uninterrupted
run's. A finished fit resumes to its end at once (nothing is trained again). A ``last.ckpt`` written by another model,
adapter, task, data or trainer setting is refused with an error naming it (delete it or use a new output folder).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
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
from torch.utils.data import DataLoader

from goracs.config import HYDRA_KEYS, check_options, construct
from goracs.errors import ConfigError
from goracs.option_types import check_types
from goracs.models.datamodule import RecDataModule
from goracs.models.module import LoraRecModule
from goracs.task_protocol import Task

log = logging.getLogger(__name__)

LAST_CKPT = "last.ckpt"  # the resumable checkpoint, in out_dir/checkpoints
# Trainer kwargs that do not change what is trained: left out of the fingerprint a resume must match.
_COSMETIC = frozenset({"enable_progress_bar", "enable_model_summary", "logger", "log_every_n_steps", "callbacks",
                       "default_root_dir", "enable_checkpointing", "profiler"})


@dataclass(frozen=True)
class TrainerConfig:
    """The ``trainer`` node (``conf/trainer/<name>.yaml`` explains every key; all are required)."""

    lr: float                    # peak AdamW learning rate (per optimiser step)
    weight_decay: float          # AdamW decoupled weight decay
    warmup_steps: int            # optimiser steps of linear warmup, then linear decay to 0
    batch_size: int              # samples per micro-batch (per device)
    eval_batch_size: int         # samples per validation batch
    cutoff_len: int              # max tokens per sample
    train_on_inputs: bool        # SeqRec: the loss counts the prompt tokens too
    patience: int                # early stopping: validation checks without val/loss improvement
    lightning: dict[str, Any]    # `_target_: lightning.pytorch.Trainer` and its kwargs (instantiated by fine_tune)

    def __post_init__(self) -> None:
        if not isinstance(self.lightning, Mapping) or "_target_" not in self.lightning:
            raise ConfigError("trainer.lightning must be a node with `_target_: lightning.pytorch.Trainer` and its "
                              "kwargs")
        if isinstance(self.patience, bool) or not isinstance(self.patience, int) or self.patience < 1:
            raise ConfigError(f"trainer.patience={self.patience!r}: expected >= 1 validation checks")
        if not _number(self.lr) or not math.isfinite(self.lr) or self.lr <= 0:
            raise ConfigError(f"trainer.lr={self.lr!r}: expected a positive learning rate (e.g. 1e-4)")
        if not _number(self.weight_decay) or not math.isfinite(self.weight_decay) or self.weight_decay < 0:
            raise ConfigError(f"trainer.weight_decay={self.weight_decay!r}: expected a number >= 0")
        if not _count(self.warmup_steps, 0):
            raise ConfigError(f"trainer.warmup_steps={self.warmup_steps!r}: expected an integer >= 0 optimiser steps")
        for key in ("batch_size", "eval_batch_size", "cutoff_len"):
            if not _count(getattr(self, key), 1):
                raise ConfigError(f"trainer.{key}={getattr(self, key)!r}: expected a positive integer")
        if not isinstance(self.train_on_inputs, bool):
            raise ConfigError(f"trainer.train_on_inputs={self.train_on_inputs!r}: expected true or false")
        check_lightning(self.lightning)

    @classmethod
    def of(cls, trainer: "TrainerConfig | Mapping[str, Any]") -> "TrainerConfig":
        """``trainer`` itself, or the config its mapping describes (a ``_target_`` key is ignored)."""
        return trainer if isinstance(trainer, cls) else construct(cls, trainer, "trainer")


def check_lightning(node: Mapping[str, Any]) -> None:
    """The ``trainer.lightning`` node against ``lightning.pytorch.Trainer``'s signature (unknown keys, value types)
    and the ranges a fit needs: ``max_epochs`` a positive number (-1, Lightning's "forever", is refused: without
    validation nothing would stop it), ``accumulate_grad_batches`` >= 1, ``devices`` a positive count, a list of
    device ids, or ``auto``; ``strategy`` a registered Lightning strategy name (or a ``_target_`` node)."""
    from lightning.pytorch.strategies import StrategyRegistry

    options_ = {k: v for k, v in node.items() if k not in HYDRA_KEYS}
    check_options(pl.Trainer, options_, "trainer.lightning")
    check_types(pl.Trainer, options_, "trainer.lightning")
    epochs = options_.get("max_epochs")
    if epochs is not None and not _count(epochs, 1):
        raise ConfigError(f"trainer.lightning.max_epochs={epochs}: expected a positive number of epochs (the upper "
                          "bound; early stopping may end sooner)")
    accumulate = options_.get("accumulate_grad_batches", 1)
    if not _count(accumulate, 1):
        raise ConfigError(f"trainer.lightning.accumulate_grad_batches={accumulate}: expected an integer >= 1")
    devices = options_.get("devices", "auto")
    if not (devices == "auto" or _count(devices, 1) or devices == -1
            or (isinstance(devices, list) and devices and all(_count(d, 0) for d in devices))):
        raise ConfigError(f"trainer.lightning.devices={devices!r}: expected a positive number of devices, a list of "
                          "device ids, -1 (all) or auto")
    strategy = options_.get("strategy", "auto")
    if isinstance(strategy, str) and strategy != "auto" and strategy not in StrategyRegistry.available_strategies():
        names = ["auto", *sorted(s for s in StrategyRegistry.available_strategies() if "_find_unused" not in s)]
        raise ConfigError(f"trainer.lightning.strategy={strategy!r}: expected one of {names}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _count(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


@dataclass(frozen=True)
class FitResult:
    best_val_loss: float            # lowest val/loss seen (NaN without validation)
    epochs: int                     # epochs run (fewer than max_epochs when early stopping fired)
    steps: int                      # optimiser steps taken
    time_s: float                   # wall time of the fit, seconds
    ckpt: Path | None               # the restored adapter checkpoint (trainable tensors only)
    val_history: list[float] = field(default_factory=list)  # val/loss at each validation check, in order
    resumed_from: Path | None = None  # the last.ckpt this fit resumed from; None for a fresh fit


def fine_tune(model: torch.nn.Module, tokenizer, train: pd.DataFrame, valid: pd.DataFrame, *, task: Task,
              faithful: bool, trainer: TrainerConfig | Mapping[str, Any], logger=None, out_dir: Path, seed: int,
              callbacks: Sequence[Callback] = (), resume: bool = True, save_every_n_steps: int = 0) -> FitResult:
    """Fine-tune the trainable (LoRA) parameters of ``model`` on ``train``; restore the best adapter into ``model``.

    ``logger``: a Lightning logger, a list of them, or None (no logging). ``callbacks``: extra Lightning callbacks
    (e.g. timers), added to ours. Checkpoints go to ``out_dir/checkpoints`` (see the module docstring for what each
    holds and when it is written).
    ``resume``: when ``out_dir/checkpoints/last.ckpt`` exists, continue that fit (it must come from the same model,
    adapter, task, samples and trainer settings, else a ``ConfigError`` names the file); ``resume=False`` deletes it
    and starts afresh. ``save_every_n_steps``: also write ``last.ckpt`` every that many optimiser steps (0: only at
    validation checks and epoch ends); useful when an epoch takes long.
    The model ends on the CPU or the device Lightning leaves it on; the caller moves it for evaluation.
    Four steps: ``_build`` (datamodule, module, fingerprint), ``_resume`` (the checkpoint to continue), ``_fit`` (the
    Lightning trainer and its fit), ``_collect`` (restore the best adapter, the ``FitResult``).
    """
    opts = _check_trainer(trainer)
    if isinstance(save_every_n_steps, bool) or int(save_every_n_steps) != save_every_n_steps or save_every_n_steps < 0:
        raise ConfigError(f"save_every_n_steps={save_every_n_steps}: expected an integer >= 0 (0: no step checkpoints)")
    out_dir = Path(out_dir)
    pl.seed_everything(seed, workers=True, verbose=False)
    data, module, fingerprint = _build(model, tokenizer, train, valid, task=task, faithful=faithful, opts=opts,
                                       seed=seed)
    resumed_from = _resume(out_dir / "checkpoints" / LAST_CKPT, data, module, fingerprint, resume=resume)
    pl_trainer, checkpoint, time_s = _fit(module, data, opts=opts, out_dir=out_dir, fingerprint=fingerprint,
                                          logger=logger, callbacks=callbacks, save_every_n_steps=save_every_n_steps,
                                          resumed_from=resumed_from, task=task.name)
    return _collect(pl_trainer, checkpoint, module, validate=data.has_validation, time_s=time_s,
                    resumed_from=resumed_from)


def _build(model: torch.nn.Module, tokenizer, train: pd.DataFrame, valid: pd.DataFrame, *, task: Task,
           faithful: bool, opts: Mapping[str, Any], seed: int) -> tuple[_ResumableData, LoraRecModule, dict]:
    """Step 1: the datamodule, the LightningModule around ``model`` and the fit's fingerprint (``_fingerprint``)."""
    data = _ResumableData(tokenizer, train, valid, task=task, faithful=faithful, batch_size=opts["batch_size"],
                          eval_batch_size=opts["eval_batch_size"], cutoff_len=opts["cutoff_len"],
                          train_on_inputs=opts["train_on_inputs"], seed=seed)
    module = LoraRecModule(model, task=task, lr=float(opts["lr"]), weight_decay=float(opts["weight_decay"]),
                           warmup_steps=int(opts["warmup_steps"]),
                           answer_ids=task.answer_ids(tokenizer))
    fingerprint = _fingerprint(model, train, valid, task=task.name, faithful=faithful, seed=seed, opts=opts)
    return data, module, fingerprint


def _resume(last: Path, data: _ResumableData, module: LoraRecModule, fingerprint: Mapping[str, str], *,
            resume: bool) -> Path | None:
    """Step 2: the ``last.ckpt`` to continue from (checked by ``_read_resumable``, its data position handed to
    ``data``), or None for a fresh fit; ``resume=False`` deletes it."""
    if last.exists() and not resume:
        log.info("resume=False: deleting %s and fine-tuning afresh", last)
        last.unlink()
    elif last.exists():
        saved = _read_resumable(last, module, fingerprint)
        # Hand the data position over now: Lightning builds the first training iterator before it restores a
        # checkpoint when the strategy restores after setup (FSDP); a second load of the same state is ignored.
        data.load_state_dict(saved.get(_ResumableData.__qualname__, {}))
        log.info("resuming fine-tuning from %s (epoch %d, step %d)", last, int(saved["epoch"]),
                 int(saved["global_step"]))
        return last
    return None


def _fit(module: LoraRecModule, data: _ResumableData, *, opts: Mapping[str, Any], out_dir: Path,
         fingerprint: Mapping[str, str], logger, callbacks: Sequence[Callback], save_every_n_steps: int,
         resumed_from: Path | None, task: str) -> tuple[pl.Trainer, ModelCheckpoint, float]:
    """Step 3: the Lightning ``Trainer`` (from ``opts["lightning"]``, with our callbacks) and its ``fit``; returns the
    trainer, the best-adapter checkpoint callback and the fit's wall time (seconds)."""
    validate, node = data.has_validation, dict(opts["lightning"])
    checkpoint, own = _callbacks(out_dir / "checkpoints", fingerprint, validate=validate,
                                 patience=int(opts["patience"]), save_every_n_steps=save_every_n_steps,
                                 extra=callbacks, progress_bar=bool(node.get("enable_progress_bar", True)))
    extra: dict[str, Any] = {"limit_val_batches": 0, "num_sanity_val_steps": 0} if not validate else {}
    pl_trainer = instantiate(node, logger=logger if logger is not None else False, callbacks=own,
                             default_root_dir=str(out_dir), enable_checkpointing=True, **extra)

    log.info("fine-tuning on %d samples (%d valid), task %s, %s", len(data.train_frame), len(data.valid_frame), task,
             "early stopping on val/loss" if validate else "no validation: final adapter kept")
    t0 = time.perf_counter()
    pl_trainer.fit(module, datamodule=data, ckpt_path=str(resumed_from) if resumed_from is not None else None)
    return pl_trainer, checkpoint, time.perf_counter() - t0


def _callbacks(ckpt_dir: Path, fingerprint: Mapping[str, str], *, validate: bool, patience: int,
               save_every_n_steps: int, extra: Sequence[Callback],
               progress_bar: bool) -> tuple[ModelCheckpoint, list[Callback]]:
    """The best-adapter checkpoint, and every callback in order: it, the resumable ``last.ckpt`` writer(s),
    ``_FitTracker``, the caller's ``extra``, ``EarlyStopping`` (with validation) and the progress bar."""
    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir, filename="adapter-best" if validate else "adapter-final",
        monitor="val/loss" if validate else None, mode="min", save_top_k=1, save_weights_only=True,
        enable_version_counter=False)
    # The resumable checkpoint: ModelCheckpoint without a monitor saves where the best one is considered (after every
    # validation check, or at every epoch end without validation), always to the same file. Checkpoint callbacks run
    # last and in this order, so last.ckpt is written after EarlyStopping, the best checkpoint and _FitTracker have
    # taken the step's results into their state.
    resumable = [_LastCheckpoint(dirpath=ckpt_dir, filename=Path(LAST_CKPT).stem, monitor=None, save_top_k=1,
                                 save_weights_only=False, every_n_epochs=1, enable_version_counter=False)]
    if save_every_n_steps:
        resumable.append(_LastCheckpoint(dirpath=ckpt_dir, filename=Path(LAST_CKPT).stem, monitor=None,
                                         save_top_k=1, save_weights_only=False,
                                         every_n_train_steps=int(save_every_n_steps), enable_version_counter=False))
    own: list[Callback] = [checkpoint, *resumable, _FitTracker(fingerprint), *extra]
    if validate:
        own.append(EarlyStopping(monitor="val/loss", mode="min", patience=patience))
    if progress_bar:
        own.append(TQDMProgressBar())
    return checkpoint, own


def _collect(pl_trainer: pl.Trainer, checkpoint: ModelCheckpoint, module: LoraRecModule, *, validate: bool,
             time_s: float, resumed_from: Path | None) -> FitResult:
    """Step 4: restore the best (or final) adapter into the model and gather the ``FitResult`` (counters from
    ``_FitTracker``'s ``callback_metrics``, which survive ``ddp_spawn``)."""
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
                       val_history=history, resumed_from=resumed_from)
    log.info("fit done in %.1f s: %d epochs, %d steps, best val/loss %.4f", time_s, result.epochs, result.steps, best)
    return result


def _fingerprint(model: torch.nn.Module, train: pd.DataFrame, valid: pd.DataFrame, *, task: str, faithful: bool,
                 seed: int, opts: Mapping[str, Any]) -> dict[str, str]:
    """What a fit's result depends on, as strings (saved in last.ckpt; a resume must match it key by key): task,
    prompts, seed, a digest of the train and valid samples, the trainer settings but the cosmetic ones, the model's
    size. (The adapter's tensor names and shapes are checked apart, by ``LoraRecModule.check_trainable``.)"""
    def digest(frame: pd.DataFrame) -> str:
        text = frame.reset_index(drop=True).to_json(orient="split", default_handler=str)
        return f"{len(frame)} samples, sha256 {hashlib.sha256(text.encode()).hexdigest()[:16]}"

    n_params = sum(p.numel() for p in model.parameters())
    out = {"task": task, "faithful": str(bool(faithful)), "seed": str(int(seed)), "train": digest(train),
           "valid": digest(valid), "model": f"{type(model).__name__}, {n_params} parameters"}
    for key, value in opts.items():
        if key != "lightning":
            out[f"trainer.{key}"] = json.dumps(value, sort_keys=True, default=str)
    for key, value in opts["lightning"].items():
        if key not in _COSMETIC:
            out[f"trainer.lightning.{key}"] = json.dumps(value, sort_keys=True, default=str)
    return out


def _read_resumable(path: Path, module: LoraRecModule, fingerprint: Mapping[str, str]) -> dict[str, Any]:
    """The checkpoint at ``path``, checked to continue this very fit; a ``ConfigError`` naming it otherwise."""
    advice = "delete it or use a new output folder to fine-tune afresh"
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)  # tensors, numbers and strings only
    except Exception as e:
        raise ConfigError(f"cannot resume fine-tuning from {path}: the file cannot be read "
                          f"({type(e).__name__}: {e}); {advice}") from e
    tracker = saved.get("callbacks", {}).get(_FitTracker.__qualname__) if isinstance(saved, dict) else None
    if not isinstance(tracker, dict) or "optimizer_states" not in saved or "state_dict" not in saved:
        raise ConfigError(f"cannot resume fine-tuning from {path}: not a resumable checkpoint of goracs' fine_tune "
                          f"(no optimiser or fit-tracker state); {advice}")
    try:
        module.check_trainable(saved["state_dict"])
    except ValueError as e:
        raise ConfigError(f"cannot resume fine-tuning from {path}: it was written by a different model or adapter "
                          f"({e}); {advice}") from None
    old = tracker.get("fingerprint", {})
    changed = [k for k in sorted(set(old) | set(fingerprint)) if old.get(k) != fingerprint.get(k)]
    if changed:
        detail = "; ".join(f"{k}: {_short(old.get(k))} then, {_short(fingerprint.get(k))} now" for k in changed[:4])
        raise ConfigError(f"cannot resume fine-tuning from {path}: it was written by a fit with another task, data "
                          f"or trainer setting ({detail}{'; ...' if len(changed) > 4 else ''}); {advice}")
    return saved


def _short(value: str | None, width: int = 60) -> str:
    if value is None:
        return "(absent)"
    return value if len(value) <= width else value[:width - 3] + "..."


def _check_trainer(trainer: TrainerConfig | Mapping[str, Any]) -> dict[str, Any]:
    config = TrainerConfig.of(trainer)
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


class _LastCheckpoint(ModelCheckpoint):
    """The ``ModelCheckpoint`` that writes ``last.ckpt``; its own class gives its state its own key in checkpoints
    (without validation, the adapter-final checkpoint has the very same settings).

    Step checkpoints (``every_n_train_steps``) are not written after a batch that a validation check or the epoch's
    end follows: Lightning resumes such a checkpoint past that validation (its restart logic counts the check as
    done), which would lose a val/loss. The save at the end of that check or epoch comes right after anyway."""

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch: Any,
                           batch_idx: int) -> None:
        if not _validation_or_epoch_end_follows(trainer):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


def _validation_or_epoch_end_follows(trainer: pl.Trainer) -> bool:
    """Whether the training batch that just ended is its epoch's last or one after which a validation check runs (as
    ``_TrainingEpochLoop._should_check_val_fx`` decides, over-approximated: any ``val_check_batch`` boundary)."""
    progress = trainer.fit_loop.epoch_loop.batch_progress
    if progress.is_last_batch or progress.current.ready >= trainer.num_training_batches:
        return True
    if not trainer.enable_validation:
        return False
    if getattr(trainer, "_val_check_time_interval", None) is not None:
        return True  # time-based validation: it may follow any batch, so no step checkpoints
    every = trainer.val_check_batch
    if not isinstance(every, int) or every <= 0:
        return False
    done = progress.total.ready if trainer.check_val_every_n_epoch is None else progress.current.ready
    return done % every == 0


class _FitTracker(Callback):
    """Records val/loss at each check, and epochs/steps at the end, in ``trainer.callback_metrics``: Lightning
    copies those back to the main process under ``ddp_spawn``, where the trainer's own counters stay at 0.

    Its state, saved by Lightning in every resumable checkpoint (``state_dict``) and handed back on resume
    (``load_state_dict``): the val/loss history; whether the fit had been stopped (early stopping sets
    ``trainer.should_stop``, which Lightning does not checkpoint; a resumed stopped fit then ends at once); the torch
    RNG state (CPU, and the current CUDA device's), which draws the LoRA dropout masks; the fit's fingerprint
    (``_fingerprint``, checked by ``fine_tune`` before it resumes)."""

    def __init__(self, fingerprint: Mapping[str, str] | None = None):
        self.history: list[float] = []
        self.fingerprint = dict(fingerprint or {})
        self._trainer: pl.Trainer | None = None
        self._stopped_epochs: int | None = None  # restored: the fit had stopped early after this many epochs

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        trainer = self._trainer
        # Saved inside an epoch (at its validation or at its end): once stopped, the fit ends after this epoch.
        stopped = trainer.current_epoch + 1 if trainer is not None and trainer.should_stop else None
        rng: dict[str, torch.Tensor] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state()
        return {"history": list(self.history), "stopped_epochs": stopped, "rng": rng,
                "fingerprint": dict(self.fingerprint)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [float(v) for v in state_dict.get("history", [])]
        self._stopped_epochs = state_dict.get("stopped_epochs")
        rng = state_dict.get("rng", {})
        if "torch" in rng:
            torch.set_rng_state(rng["torch"].cpu())
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"].cpu())

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._stopped_epochs is not None:
            trainer.should_stop = True  # resumed from the checkpoint where early stopping fired: nothing left to do

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and "val/loss" in trainer.callback_metrics:
            self.history.append(float(trainer.callback_metrics["val/loss"]))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # on_fit_end, not on_train_end: resuming a fit that had reached max_epochs skips the training loop entirely.
        epochs = self._stopped_epochs if self._stopped_epochs is not None else trainer.current_epoch
        trainer.callback_metrics["fit/val_history"] = torch.tensor(self.history, dtype=torch.float64)
        trainer.callback_metrics["fit/epochs"] = torch.tensor(epochs)
        trainer.callback_metrics["fit/steps"] = torch.tensor(trainer.global_step)


class _ResumableData(RecDataModule):
    """``RecDataModule`` whose position in the training data survives a resume.

    The training loader shuffles with one ``torch.Generator`` seeded at the start of the fit, which every epoch
    advances; a fresh process would replay epoch 0's order. Lightning saves :meth:`state_dict` in every checkpoint
    (under this class's name) and hands it to :meth:`load_state_dict` on resume (``fine_tune`` also hands it over
    before the fit, see there). The state: the generator's state where the resumed fit's first training iterator must
    start, and how many batches of that epoch to skip (the ones already trained on), with the step it was saved at.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._generator: torch.Generator | None = None
        self._epoch_start: torch.Tensor | None = None  # generator state when the current training iterator began
        self._pending: dict[str, Any] | None = None    # restored position, applied to the next training iterator
        self._loaded_step: int | None = None
        self._iterating = False                        # a training iterator has been built

    def train_dataloader(self) -> DataLoader:
        base = super().train_dataloader()
        # The same sampler and generator: the batches are those of the plain loader. (Under DDP Lightning rebuilds
        # this loader with a DistributedSampler, which shuffles by epoch number: then only the skip matters.)
        return _ResumableLoader(base.dataset, data=self, batch_size=base.batch_size, sampler=base.sampler,
                                collate_fn=base.collate_fn, generator=base.generator, num_workers=base.num_workers,
                                pin_memory=base.pin_memory, drop_last=base.drop_last, timeout=base.timeout,
                                worker_init_fn=base.worker_init_fn, persistent_workers=base.persistent_workers,
                                multiprocessing_context=base.multiprocessing_context,
                                prefetch_factor=base.prefetch_factor if base.num_workers else None)

    def state_dict(self) -> dict[str, Any]:
        trainer = self.trainer
        if trainer is None or not self._iterating:
            return {}
        epochs = trainer.fit_loop.epoch_progress.current
        batches = trainer.fit_loop.epoch_loop.batch_progress.current
        # Where Lightning takes up a fit saved here (lightning.pytorch.loops.fit_loop, RestartStage): saved at the
        # end of an epoch (epoch processed), or at the end of its last training batch, it starts the next epoch with
        # the first iterator it builds; saved elsewhere in an epoch (a step checkpoint, a validation check, even
        # after the last batch), it finishes that epoch with it.
        epoch_over = epochs.processed >= epochs.ready
        last_batch_end = batches.completed < batches.processed and batches.processed >= trainer.num_training_batches
        # "epoch": the epoch the first iterator serves (for samplers that shuffle by epoch, e.g. DistributedSampler:
        # Lightning builds that iterator before it calls their set_epoch).
        if epoch_over or last_batch_end:
            now = self._generator.get_state() if self._generator is not None else None
            return {"generator": now, "skip": 0, "epoch": int(epochs.ready), "step": trainer.global_step}
        return {"generator": self._epoch_start, "skip": int(batches.processed), "epoch": int(epochs.ready) - 1,
                "step": trainer.global_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict or state_dict.get("step") == self._loaded_step:
            return  # nothing saved, or the position already handed over (fine_tune, then Lightning)
        state = state_dict.get("generator")
        self._pending = {"generator": state.cpu() if state is not None else None, "skip": int(state_dict["skip"]),
                         "epoch": state_dict.get("epoch")}
        self._loaded_step = state_dict.get("step")

    def _start_iterator(self, generator: torch.Generator | None) -> tuple[int, int | None]:
        """Called as a training iterator is built: apply a restored position. Returns the number of batches to skip
        and the epoch to give the sampler (None: leave it to Lightning)."""
        skip, epoch = 0, None
        if self._pending is not None:
            if generator is not None and self._pending["generator"] is not None:
                generator.set_state(self._pending["generator"])
            skip, epoch = self._pending["skip"], self._pending["epoch"]
        self._pending = None
        self._generator = generator
        self._epoch_start = generator.get_state() if generator is not None else None
        self._iterating = True
        return skip, epoch


class _ResumableLoader(DataLoader):
    """The training ``DataLoader`` of :class:`_ResumableData`: each new iterator starts where the datamodule says
    (generator state, batches to skip). It also tells Lightning it is resumable (``state_dict``/``load_state_dict``,
    empty: the position is the datamodule's, which Lightning restores also between epochs, where it restores no
    loader state), so Lightning does not warn that a mid-epoch resume is unreliable."""

    def __init__(self, dataset, *, data: _ResumableData, **kwargs):
        super().__init__(dataset, **kwargs)
        self.data = data

    def __iter__(self):
        skip, epoch = self.data._start_iterator(self.generator)
        if epoch is not None:
            for sampler in {id(s): s for s in (self.sampler, getattr(self.batch_sampler, "sampler", None))}.values():
                if callable(getattr(sampler, "set_epoch", None)):
                    sampler.set_epoch(epoch)
        iterator = super().__iter__()
        for _ in range(skip):  # the batches the interrupted fit had trained on in this epoch (same order)
            next(iterator)
        return iterator

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass
