"""Fine-tune the LoRA on a selected coreset, as ``goracs-run`` does, and return the model to evaluate.

The backbone gets the same initial adapter φ₀ as the gradient features (``lora_seed``, or ``lora_init``), as the
paper starts both from the Alpaca LoRA. With no sample selected (``selection=none``) φ₀ is returned untrained.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Mapping

import lightning
import numpy as np

from goracs.exports import save_adapter
from goracs.models.encoding import tokenizer_corpus
from goracs.models.finetune import TrainerConfig, fine_tune
from goracs.models.lora import attach_lora
from goracs.task_protocol import Task

log = logging.getLogger(__name__)


def train_on_coreset(backbone: Any, samples: Any, indices: np.ndarray, *, lora: Any, lora_init: str | None,
                     lora_seed: int, task: Task, faithful: bool, trainer: TrainerConfig | Mapping[str, Any],
                     loggers: list | None, out_dir: Path, seed: int, resume: bool,
                     owner: bool = True) -> tuple[Any, Any, dict[str, Any]]:
    """Fine-tune a fresh copy of ``backbone`` + LoRA on rows ``indices`` of ``samples.train`` (validated on
    ``samples.valid``) for ``task`` (a :class:`goracs.task_protocol.Task`), save the adapter to ``out_dir/adapter``
    (a PEFT folder); return ``(model, tokenizer, metrics)`` with ``train/best_val_loss``, ``train/epochs``,
    ``train/steps`` and, after training, ``train/resumed``. ``seed`` seeds everything (Lightning) and the coreset's order; a killed
    job resumes from its last checkpoint in ``out_dir`` when ``resume``. ``owner=False``: a rank > 0 of a
    multi-process fit (:mod:`goracs.ranks`), which trains but leaves the adapter to rank 0."""
    lightning.seed_everything(seed, workers=True, verbose=False)
    model, tokenizer = _with_initial_adapter(backbone, samples, lora, lora_init, lora_seed)
    if not len(indices):
        log.info("no training sample selected: evaluating the initial adapter as it is")
        return model, tokenizer, {"train/epochs": 0, "train/steps": 0, "train/best_val_loss": math.nan}
    # The official --seed only shuffles the coreset order; the selected rows themselves are fixed by the selection.
    order = np.random.default_rng(seed).permutation(indices)
    train = samples.train.iloc[order].reset_index(drop=True)
    fit = fine_tune(model, tokenizer, train, samples.valid, task=task, faithful=faithful, trainer=trainer,
                    logger=loggers or None, out_dir=out_dir, seed=seed, resume=resume)
    metrics = {"train/best_val_loss": fit.best_val_loss, "train/epochs": fit.epochs, "train/steps": fit.steps,
               "train/resumed": fit.resumed_from is not None}
    if not owner:
        return model, tokenizer, metrics
    if _sharded(trainer) and fit.ckpt is not None:
        # FSDP wrapped the decoder layers in place: evaluate a fresh model carrying the best adapter.
        model = _fresh_with_adapter(backbone, samples, lora, lora_init, lora_seed, task, fit.ckpt)
    save_adapter(model, out_dir / "adapter")  # a PEFT folder: PeftModel.from_pretrained(base, out_dir/adapter)
    return model, tokenizer, metrics


def _with_initial_adapter(backbone: Any, samples: Any, lora: Any, lora_init: str | None, lora_seed: int):
    model, tokenizer = backbone.load(tokenizer_corpus(samples))
    return attach_lora(model, lora, lora_init, seed=lora_seed), tokenizer


def _sharded(trainer: TrainerConfig | Mapping[str, Any]) -> bool:
    return "fsdp" in str(TrainerConfig.of(trainer).lightning.get("strategy", "")).lower()


def _fresh_with_adapter(backbone: Any, samples: Any, lora: Any, lora_init: str | None, lora_seed: int, task: Any,
                        ckpt: Path):
    """A newly loaded backbone with the adapter of checkpoint ``ckpt`` (trainable tensors only)."""
    import torch

    from goracs.models.module import LoraRecModule

    model, _ = _with_initial_adapter(backbone, samples, lora, lora_init, lora_seed)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]  # our own checkpoint file
    LoraRecModule(model, task=task, lr=1.0, answer_ids=(0, 1)).load_trainable(state)
    log.info("evaluating a fresh model with the best adapter from %s (FSDP wrapped the trained one)", ckpt)
    return model
