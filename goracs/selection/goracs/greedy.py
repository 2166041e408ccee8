"""ITRA stage 1: facility-location greedy with the official zero-mass filtering, computed lazily.

Objective (semi-relaxed OT): ``F(S) = (1/M) Σ_j m_j(S)`` with ``m_j(S) = min_{i∈S} C_ij``. Each step adds the row with
the largest decrease ``δ_e(S) = Σ_j max(m_j(S) - C_ej, 0)`` (ties: lowest row index), which is the official
"smallest gain" rule ``Σ_j C_ej - Σ_j |m_j - C_ej| = 2 Σ_j min(m_j, C_ej) - Σ_j m_j``.

Because ``δ_e`` only shrinks as S grows (submodularity), a stale value is an upper bound: a max-heap of bounds is
refreshed in batches from the top until the top entry is fresh (lazy greedy, Minoux 1978). The picks are those of
the dense brute force, at O(chunk x M) extra memory and usually a few batches per step instead of N rows.

Stopping rule (spec §3.1): ``flag`` = the unconstrained nearest-row assignment of the validation columns uses more
than n rows. Once ``|S| >= n``, stop when at least n selected rows receive mass (own a column: argmin over S in S
order), or when ``flag`` is false; with ``flag``, keep only the rows with mass (exactly n of them). With exactly tied
costs (duplicate samples) every row can end up picked with fewer than n carrying mass, where the official code
fails; we then pad with the earliest zero-mass picks.

Saturation: once the best fresh decrease is 0 (F at its global minimum, p < n picks), every remaining row ties.
By default (``selection.greedy_fill=index``, official-compatible) the greedy keeps taking the lowest row ids;
``stop_when_saturated=True`` returns the saturated prefix instead, for :func:`goracs.selection.goracs.fill.ot_fill`
to choose the remaining rows for the uniform-mass POO.
"""

from __future__ import annotations

import heapq
import logging

import numpy as np
import torch
from tqdm import tqdm

log = logging.getLogger(__name__)


def greedy_init(cost: torch.Tensor, budget: int, *, chunk_size: int, batch: int = 32,
                stop_when_saturated: bool = False) -> list[int]:
    """Row indices of the greedy initial subset, in pick order: ``budget`` of them, or with ``stop_when_saturated`` the
    picks made when every remaining gain is 0 (fewer than ``budget``; see the module docstring)."""
    n_rows, n_cols = cost.shape
    if not 0 < budget < n_rows:
        raise ValueError(f"greedy needs 0 < budget < pool size, got budget={budget}, pool={n_rows}")
    row_sums, nn_rows = _row_sums_and_nearest(cost, chunk_size)
    flag = len(np.unique(nn_rows)) > budget
    first = int(np.argmin(row_sums))
    selected = [first]
    col_min = cost[first].clone()
    owner = torch.full((n_cols,), first, dtype=torch.long, device=cost.device)  # argmin over S, earliest on ties
    mass = {first: n_cols}  # columns owned per selected row

    heap = [(-float(d), i, 1) for i, d in enumerate(_decrease(cost, col_min, chunk_size)) if i != first]
    heapq.heapify(heap)
    progress = tqdm(total=budget, desc="goracs greedy", leave=False, disable=budget < 200)
    progress.update(1)
    while True:
        if len(selected) >= budget:
            with_mass = sum(1 for k in selected if mass.get(k, 0) > 0)
            if with_mass >= budget or not flag:
                progress.close()
                if flag:
                    selected = [k for k in selected if mass.get(k, 0) > 0]
                log.info("greedy: %d picks, %d kept (flag=%s)", len(mass), len(selected), flag)
                return selected
        if not heap:  # only with exact cost ties (duplicate samples): fill with the earliest zero-mass picks
            progress.close()
            keep = {k for k in selected if mass.get(k, 0) > 0}
            log.warning("greedy: every row picked but only %d carry mass (tied costs); padding to %d", len(keep),
                        budget)
            keep |= set([k for k in selected if k not in keep][: budget - len(keep)])
            return [k for k in selected if k in keep]
        pick, decrease = _pop_best(cost, col_min, heap, step=len(selected), batch=batch)
        if stop_when_saturated and decrease <= 0 and len(selected) < budget:  # F is at its global minimum
            progress.close()
            log.info("greedy saturated after %d picks (every further gain is 0)", len(selected))
            return selected
        row = cost[pick]
        gained = row < col_min  # strict: an equal earlier row keeps the column, as argmin over S does
        if bool(gained.any()):
            losers, counts = torch.unique(owner[gained], return_counts=True)
            for k, c in zip(losers.tolist(), counts.tolist()):
                mass[k] -= c
            mass[pick] = int(gained.sum())
            owner[gained] = pick
            col_min = torch.minimum(col_min, row)
        else:
            mass[pick] = 0
        selected.append(pick)
        progress.update(1)


def _pop_best(cost: torch.Tensor, col_min: torch.Tensor, heap: list, *, step: int, batch: int) -> tuple[int, float]:
    """Pop ``(row, decrease)`` with the largest exact decrease at ``step`` (= |S|), refreshing stale bounds in batches.

    The batch doubles while the top stays stale: early steps (when one pick changes many bounds) refresh thousands
    of rows in a few large chunks instead of many small ones.
    """
    size = batch
    while True:
        if heap[0][2] == step:
            neg, row, _ = heapq.heappop(heap)
            return row, -neg
        stale = []
        while heap and len(stale) < size and heap[0][2] != step:
            stale.append(heapq.heappop(heap)[1])
        fresh = _decrease(cost[torch.as_tensor(stale, device=cost.device)], col_min, len(stale))
        for i, d in zip(stale, fresh):
            heapq.heappush(heap, (-float(d), i, step))
        size = min(2 * size, 8192)


def _decrease(rows: torch.Tensor, col_min: torch.Tensor, chunk_size: int) -> np.ndarray:
    """``δ_e = Σ_j max(m_j - C_ej, 0)`` per row, chunked over rows.

    One preallocated chunk buffer: fresh per-chunk temporaries interleaved with small reductions made the allocator
    keep ~N x M bytes resident (measured +1.1 GB at N=160k, M=2k).
    """
    n_rows = rows.shape[0]
    out = torch.empty(n_rows, dtype=rows.dtype, device=rows.device)
    buf = torch.empty((min(chunk_size, n_rows), rows.shape[1]), dtype=rows.dtype, device=rows.device)
    for start in range(0, n_rows, chunk_size):
        block = buf[: min(chunk_size, n_rows - start)]
        torch.sub(col_min, rows[start : start + chunk_size], out=block)
        # float32 accumulation, as the official gain (float64 costs ~1.5x here)
        out[start : start + chunk_size] = block.clamp_min_(0).sum(dim=1)
    return out.cpu().numpy()


def _row_sums_and_nearest(cost: torch.Tensor, chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Row sums (float64) and, per column, the first row attaining the column minimum."""
    n_rows, n_cols = cost.shape
    sums = []
    best = torch.full((n_cols,), float("inf"), dtype=cost.dtype, device=cost.device)
    arg = torch.zeros(n_cols, dtype=torch.long, device=cost.device)
    for start in range(0, n_rows, chunk_size):
        block = cost[start : start + chunk_size]
        sums.append(block.sum(dim=1, dtype=torch.float64))
        vals, idx = block.min(dim=0)
        better = vals < best  # strict: earlier chunks win ties, like a global argmin
        best = torch.where(better, vals, best)
        arg = torch.where(better, idx + start, arg)
    return torch.cat(sums).cpu().numpy(), arg.cpu().numpy()


def saturation_point(cost: torch.Tensor, rows: list[int], chunk_size: int) -> int | None:
    """Smallest p with ``F(rows[:p])`` at its global minimum ``(1/M) Σ_j min_i C_ij``, or None if never reached.

    From that pick on every greedy gain is 0 and the ``greedy_fill`` option decides the rest (module docstring).
    """
    floor = torch.full((cost.shape[1],), float("inf"), dtype=cost.dtype, device=cost.device)
    for start in range(0, cost.shape[0], chunk_size):
        floor = torch.minimum(floor, cost[start : start + chunk_size].amin(dim=0))
    col_min = torch.full_like(floor, float("inf"))
    for p, k in enumerate(rows, start=1):
        col_min = torch.minimum(col_min, cost[k])
        if bool((col_min <= floor).all()):
            return p
    return None
