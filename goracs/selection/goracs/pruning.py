"""Exchange candidates from the estimated marginal improvement ``F`` (spec §3.3, paper Eq. 16).

With row duals ``u`` on S (n rows), ``R = ceil(M / n)`` and a column potential ``f_k`` per row::

    F_k = (1/M) Σ_j min(C_kj - f_kj - ŷ_k, 0) + ŷ_k / n

outer = the ``cut_num`` rows outside S with the smallest F (ascending), inner = the ``cut_num`` rows of S with the
largest F, listed in ascending order as the official ``argsort()[-cut_num:]`` does (so the product tries the
30th-largest first).

- ``official`` (as coded): ``f_kj = v_j = min_{k'∈S} (C_k'j - u_k')`` for every row (the intended mask is a no-op) and
  ``ŷ_k`` = R-th *largest* of ``C_k - v``. Arithmetic is float32 in the official order, including the rounding of S
  rows by the in-place ``C - u + u``, so candidate lists match the reference implementation.
- ``corrected``: for k ∈ S, ``f_k`` excludes k itself (the second minimum where k is the unique argmin) and ``ŷ_k`` is
  the R-th *smallest* value, the maximiser of the concave dual gain ``a y + b Σ_j min(0, C_kj - y - f_kj)``;
  float32 over the pool (only the ranking matters), float64 on S.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def prune_candidates(
    cost: torch.Tensor, rows: list[int], duals: np.ndarray, *, cut_num: int, mode: str, chunk_size: int
) -> tuple[list[int], list[int]]:
    """(inner, outer) candidate row ids in the order the pairs are tried."""
    n_rows, n_cols = cost.shape
    n = len(rows)
    r = math.ceil(n_cols / n)
    sel = torch.as_tensor(rows, dtype=torch.long, device=cost.device)
    u = torch.as_tensor(duals, dtype=torch.float64, device=cost.device).unsqueeze(1)
    cost_s = cost[sel]
    if mode == "official":
        shifted = (cost_s.double() - u).float()  # float32 C.sub_(u) with a float64 u
        v = shifted.min(dim=0).values
        scores = _official_scores(cost, v, r, n, chunk_size)
        # The official code restores S rows with C.add_(u) after rounding: F on S uses those rows.
        scores[sel] = _official_scores((shifted.double() + u).float(), v, r, n, chunk_size)
    elif mode == "corrected":
        v = (cost_s.double() - u).min(dim=0).values
        scores = _corrected_scores(cost, v.float().unsqueeze(0), r, n, chunk_size)
        f_s = removal_potentials(cost_s, u.squeeze(1), torch.arange(n, device=cost.device))
        scores[sel] = _corrected_scores(cost_s.double(), f_s, r, n, chunk_size)
    else:
        raise ValueError(f"selection.pruning must be 'official' or 'corrected', got {mode!r}")
    scores = scores.cpu().numpy()
    in_s = np.zeros(n_rows, dtype=bool)
    in_s[rows] = True
    outside = np.flatnonzero(~in_s)
    outer = outside[np.argsort(scores[outside], kind="stable")[:cut_num]]
    inside = np.asarray(rows)
    inner = inside[np.argsort(scores[inside], kind="stable")[-cut_num:]]
    return inner.tolist(), outer.tolist()


def removal_potentials(cost_s: torch.Tensor, u: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``w^(p)_j = min_{k∈S, k≠p} (C_kj - u_k)`` for the S positions ``p`` given (float64, shape (P, M))."""
    shifted = cost_s.double() - u.unsqueeze(1)
    v, arg = shifted.min(dim=0)
    is_min = shifted == v
    unique = is_min.sum(dim=0) == 1
    second = torch.where(is_min, torch.full_like(shifted, float("inf")), shifted).min(dim=0).values
    w = v.expand(len(positions), -1).clone()
    own = (arg.unsqueeze(0) == positions.unsqueeze(1)) & unique.unsqueeze(0)  # columns only p serves
    return torch.where(own, second.expand_as(w), w)


def _official_scores(block_src: torch.Tensor, v: torch.Tensor, r: int, n: int, chunk_size: int) -> torch.Tensor:
    """Official float32 F: ``((C - ŷ) - v).clamp_max(0).mean + ŷ / n`` with ŷ the R-th largest of ``C - v``."""
    rows = block_src.shape[0]
    out = torch.empty(rows, dtype=torch.float32, device=block_src.device)
    z = torch.empty((min(chunk_size, rows), block_src.shape[1]), dtype=torch.float32, device=block_src.device)
    for start in range(0, rows, chunk_size):
        c = block_src[start : start + chunk_size]
        buf = z[: c.shape[0]]
        torch.sub(c, v, out=buf)
        y = buf.topk(k=r, dim=1, largest=True).values[:, -1]
        torch.sub(c, y.unsqueeze(1), out=buf)  # same float32 operation order as the official compute_F
        out[start : start + chunk_size] = buf.sub_(v).clamp_max_(0).mean(dim=1) + y / n
    return out


def _corrected_scores(block_src: torch.Tensor, f: torch.Tensor, r: int, n: int, chunk_size: int) -> torch.Tensor:
    """F with ŷ = R-th smallest of ``z = C_k - f_k``; ``f`` is (1, M) (shared) or one row per source row.

    Only the R smallest entries lie below ŷ, so ``Σ_j min(z_j - ŷ, 0) = Σ_{R smallest} (z_j - ŷ)``: one top-k per row.
    """
    rows, cols = block_src.shape
    out = torch.empty(rows, dtype=torch.float64, device=block_src.device)
    buf = torch.empty((min(chunk_size, rows), cols), dtype=block_src.dtype, device=block_src.device)
    for start in range(0, rows, chunk_size):
        fk = f if f.shape[0] == 1 else f[start : start + chunk_size]
        z = buf[: min(chunk_size, rows - start)]
        torch.sub(block_src[start : start + chunk_size], fk.to(block_src.dtype), out=z)  # reused: see greedy._decrease
        low = z.topk(k=r, dim=1, largest=False).values.double()
        y = low[:, -1]
        out[start : start + chunk_size] = (low - y.unsqueeze(1)).sum(dim=1) / cols + y / n
    return out
