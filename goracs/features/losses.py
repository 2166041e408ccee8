"""Per-sample task losses (the quantity whose gradient is taken) and EL2N error norms.

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

import math

import torch

from goracs.models.encoding import ctr_loss_per_sample, lm_loss_per_sample
from goracs.models.lm_head import losses_from_logits


def task_loss(task: str, logits: torch.Tensor, batch: dict[str, torch.Tensor],
              yes_no: tuple[int, int] | None) -> torch.Tensor:
    """(B,) differentiable per-sample loss. ``logits`` (B, T, V); CTR uses only the last position."""
    if task == "seqrec":
        return lm_loss_per_sample(logits, batch["labels"])
    if task == "ctr":
        yes, no = _answer_ids(yes_no)
        return ctr_loss_per_sample(logits[:, -1, :], batch["label"], yes, no)
    raise ValueError(f"unknown task {task!r}; expected 'seqrec' or 'ctr'")


@torch.no_grad()
def el2n(task: str, logits: torch.Tensor, batch: dict[str, torch.Tensor],
         yes_no: tuple[int, int] | None) -> torch.Tensor:
    """(B,) EL2N score as defined in the module docstring."""
    if task == "ctr":
        yes, no = _answer_ids(yes_no)
        p_yes = torch.softmax(logits[:, -1, [yes, no]].float(), dim=-1)[:, 0]
        return math.sqrt(2.0) * (p_yes - batch["label"].float()).abs()
    return losses_from_logits(logits, batch["labels"], response=batch.get("response"), want_el2n=True).el2n


def _answer_ids(yes_no: tuple[int, int] | None) -> tuple[int, int]:
    if yes_no is None:
        raise ValueError("CTR features need the token ids of the Yes/No answers")
    return yes_no
