"""``LoraRecModule``: the LightningModule that fine-tunes a LoRA-wrapped causal LM on one task.

Losses (per-sample definitions in :mod:`goracs.models.encoding`):

* SeqRec: causal-LM cross-entropy; a batch's loss is the mean over its samples of each sample's mean token CE,
  ``L = (1/B) Σ_i Σ_t ℓ_it / #{t counted in i}``. This weighs samples equally whatever their length, and makes
  ``val/loss`` an exact per-sample average independent of the eval batch size. (The official HF Trainer averages
  over all tokens of a micro-batch; the two agree when samples have equal length.)
* CTR: ``L = (1/B) Σ_i -log softmax([z_yes, z_no])[y_i]`` with ``z`` the logits at the last prompt token.

Optimiser: AdamW on the trainable (LoRA) parameters only, learning rate warmed up linearly over ``warmup_steps``
optimiser steps then decayed linearly to 0 at the last step (the HF ``linear`` schedule the official code uses).

Checkpoints keep only the trainable parameters (a few MB), never the frozen base (540 MB for SmolLM2): every
checkpoint's ``state_dict`` (the weights-only best adapter as well as the resumable ``last.ckpt`` of
:func:`goracs.models.finetune.fine_tune`) holds exactly the trainable tensors. Restoring one (``trainer.fit(...,
ckpt_path=...)``) therefore loads a *partial* state dict (``strict_loading = False``) into a module whose frozen base
was built afresh, after :meth:`LoraRecModule.check_trainable` has checked that every trainable tensor is there with
its shape and nothing else is (a checkpoint of another model or adapter fails loudly).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from transformers import PreTrainedModel, get_linear_schedule_with_warmup

from goracs.errors import ConfigError
from goracs.task_protocol import Task


# Wrapper prefixes that FSDP / activation checkpointing insert into parameter names.
_WRAPPER_PARTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


class LoraRecModule(pl.LightningModule):
    """Fine-tunes ``model`` (a PEFT model whose only trainable parameters are the adapter's).

    ``task``: a :class:`goracs.task_protocol.Task`, which defines the loss. ``answer_ids`` = (yes_id, no_id)
    from :meth:`goracs.task_protocol.Task.answer_ids`; required for a task that scores answers (CTR).
    ``lr`` per optimiser step, ``weight_decay`` AdamW decoupled decay, ``warmup_steps`` in optimiser steps.
    """

    def __init__(self, model: PreTrainedModel, *, task: Task, lr: float, weight_decay: float = 0.0,
                 warmup_steps: int = 0, answer_ids: tuple[int, int] | None = None):
        super().__init__()
        if task.answers and answer_ids is None:
            raise ValueError(f"task={task.name!r} needs answer_ids=(yes_id, no_id) (see Task.answer_ids)")
        if lr <= 0 or warmup_steps < 0 or weight_decay < 0:
            raise ValueError(f"trainer: lr={lr} must be > 0, warmup_steps={warmup_steps} and "
                             f"weight_decay={weight_decay} >= 0")
        self.model = model
        self.task, self.lr, self.weight_decay, self.warmup_steps = task, lr, weight_decay, warmup_steps
        self.answer_ids = answer_ids
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError("the model has no trainable parameters: attach a LoRA adapter before fine-tuning")
        # Checkpoints hold the adapter only (on_save_checkpoint): Lightning must not ask them for the frozen base.
        # on_load_checkpoint checks instead that they hold exactly the trainable tensors.
        self.strict_loading = False

    def per_sample_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B,) task loss of each sample in ``batch`` (:meth:`goracs.task_protocol.Task.losses`; module docstring)."""
        return self.task.losses(self.model, batch, answer_ids=self.answer_ids)[0]

    def on_train_epoch_start(self) -> None:
        # Lightning keeps the modes it finds, and Hugging Face loads models in eval mode: make training mode (LoRA
        # dropout on) explicit, whatever pass the model served before. Validation switches to eval and back.
        self.model.train()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.per_sample_loss(batch).mean()
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True,
                 batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.per_sample_loss(batch).mean()
        # Lightning weights the epoch mean by batch_size, so val/loss is the mean over all validation samples.
        self.log("val/loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True,
                 batch_size=batch["input_ids"].shape[0])
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(self.warmup_steps, total)
        scheduler = get_linear_schedule_with_warmup(optimizer, warmup, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --- checkpoints: the adapter only -------------------------------------------------------------------------

    def trainable_names(self) -> set[str]:
        return {_clean(n) for n, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = self.trainable_names()
        checkpoint["state_dict"] = {_clean(k): v for k, v in checkpoint["state_dict"].items() if _clean(k) in keep}
        # The monitored score at save time: the best checkpoint then carries the best val/loss (read by fine_tune).
        metrics = self.trainer.callback_metrics if self._trainer is not None else {}
        if "val/loss" in metrics:
            checkpoint["val_loss"] = float(metrics["val/loss"])

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Before Lightning loads a checkpoint's (partial) ``state_dict`` on resume: it must hold exactly our
        trainable tensors (see :meth:`check_trainable`); the frozen base is the one this module was built with."""
        try:
            self.check_trainable(checkpoint.get("state_dict", {}))
        except ValueError as e:
            path = self.trainer.ckpt_path if self._trainer is not None else None
            raise ConfigError(f"cannot resume from {path or 'the checkpoint'}: {e}. It was written by a different "
                              "model or task: delete it or use a new output folder") from None

    def check_trainable(self, state: dict[str, torch.Tensor]) -> None:
        """Raise ``ValueError`` unless ``state`` (saved by :meth:`on_save_checkpoint`) holds every trainable tensor
        of this module, with its shape, and no other tensor."""
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        params = {_clean(n): p for n, p in named}
        state = {_clean(k): v for k, v in state.items()}
        missing, unexpected = set(params) - set(state), set(state) - set(params)
        # FSDP (use_orig_params) turns each parameter into a flat view of this rank's shard: no shape to compare.
        sharded = any(_WRAPPER_PARTS[0] in n for n, _ in named)
        reshaped = [] if sharded else sorted(f"{k} {tuple(state[k].shape)} vs {tuple(p.shape)}"
                                             for k, p in params.items()
                                             if k in state and tuple(state[k].shape) != tuple(p.shape))
        if missing or unexpected or reshaped:
            raise ValueError(f"checkpoint does not match the adapter: missing {sorted(missing)[:3]}, "
                             f"unexpected {sorted(unexpected)[:3]}"
                             + (f", shape (checkpoint vs model) {reshaped[:3]}" if reshaped else ""))

    def load_trainable(self, state: dict[str, torch.Tensor]) -> None:
        """Copy adapter weights saved by :meth:`on_save_checkpoint` into the model; every trainable tensor must be
        present and no other tensor may appear (a checkpoint from another model or task fails loudly)."""
        self.check_trainable(state)
        params = {_clean(n): p for n, p in self.named_parameters()}
        with torch.no_grad():
            for name, value in state.items():
                name = _clean(name)
                params[name].copy_(value.to(device=params[name].device, dtype=params[name].dtype))


def _clean(name: str) -> str:
    for part in _WRAPPER_PARTS:
        name = name.replace(part, "")
    return name
