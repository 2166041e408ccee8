"""Per-sample task losses (the quantity whose gradient is taken) and EL2N error norms, from full logits; each task
defines its own (:mod:`goracs.tasks`).

Loss (spec ``goracs.md`` §2.3, via :mod:`goracs.models.encoding`):

* SeqRec: mean next-token cross-entropy over every counted token of ``prompt + output + EOS`` (prompt included,
  as the official gradient code), ``ℓ_i = Σ_t CE_t / #{t counted}``.
* CTR: two-way cross-entropy over ``[z_Yes, z_No]`` at the last prompt token.

EL2N (Paul et al. 2021: ``‖softmax(z) − onehot(y)‖₂``). There is no official LLM definition; ours:

* CTR: over the two answer classes, ``‖softmax([z_Yes, z_No]) − onehot(y)‖₂ = √2 · |P(Yes) − y|``.
* SeqRec: the per-token error norm ``e_t = ‖softmax(z_t) − onehot(y_t)‖₂ = √(Σ_v p_v² − 2 p_{y_t} + 1)`` over the
  full vocabulary, averaged over the **response** tokens (the quoted target title and EOS), i.e. how far the model
  is from producing the answer; prompt tokens are left out because they are mostly the shared template. A sample
  whose response was cut off by ``cutoff_len`` falls back to the mean over all its counted tokens.
"""

from __future__ import annotations

import torch

from goracs.tasks import Task, as_task


def task_loss(task: Task | str, logits: torch.Tensor, batch: dict[str, torch.Tensor],
              yes_no: tuple[int, int] | None) -> torch.Tensor:
    """(B,) differentiable per-sample loss from full logits (B, T, V) (:meth:`goracs.tasks.Task.logits_losses`;
    CTR uses only the last position). The gradient pass takes the lighter :meth:`goracs.tasks.Task.losses`."""
    return as_task(task).logits_losses(logits, batch, answer_ids=yes_no)[0]


@torch.no_grad()
def el2n(task: Task | str, logits: torch.Tensor, batch: dict[str, torch.Tensor],
         yes_no: tuple[int, int] | None) -> torch.Tensor:
    """(B,) EL2N score as defined in the module docstring, from full logits."""
    return as_task(task).logits_losses(logits, batch, answer_ids=yes_no, want_el2n=True)[1]
