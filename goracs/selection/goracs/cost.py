"""The GORACS cost matrix ``C`` (N x M, float32 in [0, 1]) built once, in row chunks, from the separable form.

With ``d_ij = ||e_i - e'_j||_2`` (train i, validation j), ``d̂ = d / max d`` (or ``d`` when ``normalize_dist`` is
false, the official CTR quirk), ``ĝ_i`` the max-normalised gradient norm and ``λ >= 0``::

    c_ij = d̂_ij - λ ĝ_i                      (a row constant: the separable form)
    C_ij = (c_ij - c_min) / (c_max - c_min)   with c_min = min_i (min_j d̂_ij - λ ĝ_i), c_max likewise

so ``OT_C(μ_S, μ_V) = (W1_d̂(μ_S, μ_V) - λ mean_{i∈S} ĝ_i - c_min) / (c_max - c_min)`` (uniform row masses).

The float32 operations follow the official code step by step (cdist -> divide by max -> subtract λĝ -> min-max), so
the same inputs give the same matrix; only one N x M buffer is ever allocated (distances are written into it and
transformed in place), other temporaries are O(chunk x M).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CostMatrix:
    """The normalised cost and the affine map that produced it.

    Attributes:
        values: (N, M) float32 tensor ``C`` on the compute device.
        row_shift: (N,) float64 ``λ ĝ_i`` subtracted from every row before min-max.
        dist_scale: divisor applied to the raw L2 distances (``max d`` or 1).
        c_min, c_max: the min-max bounds of ``d̂ - λĝ`` (dimensionless).
    """

    values: torch.Tensor
    row_shift: torch.Tensor
    dist_scale: float
    c_min: float
    c_max: float

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.values.shape)  # type: ignore[return-value]

    def poo_from_w1(self, w1_dhat: float, mean_shift: float) -> float:
        """POO from the Wasserstein-1 distance on ``d̂`` and ``λ mean_{i∈S} ĝ_i`` (the separable identity)."""
        return (w1_dhat - mean_shift - self.c_min) / (self.c_max - self.c_min)


def build_cost(
    train_emb: torch.Tensor,
    valid_emb: torch.Tensor,
    grad_hat: torch.Tensor,
    lam: float,
    *,
    normalize_dist: bool,
    chunk_size: int,
) -> CostMatrix:
    """Build ``C`` on ``train_emb.device``; ``grad_hat`` is already divided by its (global) max."""
    n_train, n_valid = train_emb.shape[0], valid_emb.shape[0]
    device = train_emb.device
    values = torch.empty((n_train, n_valid), dtype=torch.float32, device=device)
    dist_max = torch.tensor(float("-inf"), device=device)
    # Pass 1: raw distances straight into the single N x M buffer.
    for start in range(0, n_train, chunk_size):
        block = torch.cdist(train_emb[start : start + chunk_size], valid_emb, p=2)
        values[start : start + chunk_size] = block
        dist_max = torch.maximum(dist_max, block.max())
    scale = dist_max if normalize_dist else torch.tensor(1.0, device=device)
    shift = (lam * grad_hat.to(device=device, dtype=torch.float32)).unsqueeze(1)  # float32, as λ * grads[:, None]
    c_min = torch.tensor(float("inf"), device=device)
    c_max = torch.tensor(float("-inf"), device=device)
    # Pass 2: d̂ - λĝ in place, tracking the global bounds for the min-max map.
    for start in range(0, n_train, chunk_size):
        block = values[start : start + chunk_size]
        if normalize_dist:
            block.div_(scale)
        block.sub_(shift[start : start + chunk_size])
        c_min = torch.minimum(c_min, block.min())
        c_max = torch.maximum(c_max, block.max())
    span = c_max - c_min
    if not torch.isfinite(span) or float(span) <= 0:
        raise ValueError(
            f"GORACS cost matrix is constant (c_min = c_max = {float(c_min)}): all train/validation embeddings "
            "are at the same distance and the gradient term is flat; check the embedding feature"
        )
    # Pass 3: min-max to [0, 1], in float32 as (cost - min) / (max - min).
    for start in range(0, n_train, chunk_size):
        values[start : start + chunk_size].sub_(c_min).div_(span)
    log.debug("cost %dx%d: dist scale %.6g, c_min %.6g, c_max %.6g", n_train, n_valid, float(scale), float(c_min),
              float(c_max))
    return CostMatrix(
        values=values,
        row_shift=shift.squeeze(1).double(),
        dist_scale=float(scale),
        c_min=float(c_min),
        c_max=float(c_max),
    )
