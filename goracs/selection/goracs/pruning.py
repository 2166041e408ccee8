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
  float32 over the pool (only the ranking matters), float64 on S. The pool's ranking is found without scoring every
  row: ``min_j z_kj / n`` is a lower bound on ``F_k`` that one cheap min pass gives (see :func:`_corrected_outer`).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch


def prune_candidates(
    cost: torch.Tensor, rows: list[int], duals: np.ndarray, *, cut_num: int, mode: str, chunk_size: int,
    cache: dict | None = None,
) -> tuple[list[int], list[int]]:
    """(inner, outer) candidate row ids in the order the pairs are tried.

    ``cache`` (a dict kept by the caller across rounds; corrected mode): the row minima of ``C - v`` from an earlier
    round, which stay lower bounds when ``v`` has not risen (see :func:`_corrected_outer`).
    """
    n_rows, n_cols = cost.shape
    n = len(rows)
    r = math.ceil(n_cols / n)
    sel = torch.as_tensor(rows, dtype=torch.long, device=cost.device)
    u = torch.as_tensor(duals, dtype=torch.float64, device=cost.device).unsqueeze(1)
    cost_s = cost[sel]
    in_s = np.zeros(n_rows, dtype=bool)
    in_s[rows] = True
    outside = np.flatnonzero(~in_s)
    if mode == "official":
        shifted = (cost_s.double() - u).float()  # float32 C.sub_(u) with a float64 u
        v = shifted.min(dim=0).values
        outer = _official_outer(cost, v, outside, r, n, cut_num, chunk_size)
        # The official code restores S rows with C.add_(u) after rounding: F on S uses those rows.
        inner_scores = _official_scores((shifted.double() + u).float(), v, r, n, chunk_size)
    elif mode == "corrected":
        v = (cost_s.double() - u).min(dim=0).values
        outer = _corrected_outer(cost, v.float().unsqueeze(0), outside, r, n, cut_num, chunk_size, cache)
        f_s = removal_potentials(cost_s, u.squeeze(1), torch.arange(n, device=cost.device))
        inner_scores = _corrected_scores(cost_s.double(), f_s, r, n, chunk_size)
    else:
        raise ValueError(f"selection.pruning must be 'official' or 'corrected', got {mode!r}")
    inner = np.asarray(rows)[np.argsort(inner_scores.cpu().numpy(), kind="stable")[-cut_num:]]
    return inner.tolist(), outer.tolist()


OFFICIAL_MARGIN = 1e-4  # >> twice the float32 error of F (~1e-6): rows beyond it cannot enter the official top list


def _official_outer(cost: torch.Tensor, v: torch.Tensor, outside: np.ndarray, r: int, n: int, cut_num: int,
                    chunk_size: int) -> np.ndarray:
    """The ``cut_num`` rows of ``outside`` with the smallest official float32 F, in the official order.

    On the CPU one fused numba pass gives every row's F in float64 (a top-R and a row sum: ``Σ_j min(z_j - ŷ, 0) =
    Σ_j z_j - M ŷ - Σ_{R largest} (z - ŷ)``); only rows within :data:`OFFICIAL_MARGIN` of the ``cut_num``-th value
    are then scored by the official float32 formula and ranked, which is the ranking of all rows by that formula.
    """
    if cost.device.type != "cpu" or len(outside) <= cut_num:
        scores = _official_scores(cost, v, r, n, chunk_size).cpu().numpy()
        return outside[np.argsort(scores[outside], kind="stable")[:cut_num]]
    threads = torch.get_num_threads()  # the caller's thread budget (OMP_NUM_THREADS, a cluster slot's cores)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    approx = official_f64(cost.numpy(), v.numpy(), r, n)[outside]
    # numba's OpenMP layer resets the process's shared OpenMP pool to every core on its first launch: give torch its
    # count back, or every later matmul of the process oversubscribes the cores.
    torch.set_num_threads(threads)
    cut = np.partition(approx, cut_num - 1)[cut_num - 1]
    candidates = outside[approx <= cut + OFFICIAL_MARGIN]
    index = torch.as_tensor(candidates, dtype=torch.long)
    scores = _official_scores(cost[index], v, r, n, chunk_size).cpu().numpy()
    return candidates[np.argsort(scores, kind="stable")[:cut_num]]


@numba.njit(parallel=True, cache=True)
def official_f64(cost, v, r, n):
    """Official F per row in float64 from float32 ``z = C - v``: ŷ the R-th largest z, ``mean(min(z - ŷ, 0)) + ŷ/n``."""
    rows, cols = cost.shape
    out = np.empty(rows)
    block = 256
    for b in numba.prange((rows + block - 1) // block):
        top = np.empty(r)  # the r largest so far, ascending (top[0] is the r-th largest)
        for k in range(b * block, min(rows, (b + 1) * block)):
            top[:] = -np.inf
            total = 0.0
            for j in range(cols):
                z = np.float64(cost[k, j] - v[j])
                total += z
                if z > top[0]:
                    q = 0
                    while q + 1 < r and top[q + 1] < z:
                        top[q] = top[q + 1]
                        q += 1
                    top[q] = z
            y = top[0]
            out[k] = (total - cols * y - (top.sum() - r * y)) / cols + y / n
    return out


def _corrected_outer(
    cost: torch.Tensor, v: torch.Tensor, outside: np.ndarray, r: int, n: int, cut_num: int, chunk_size: int,
    cache: dict | None = None,
) -> np.ndarray:
    """The ``cut_num`` rows of ``outside`` with the smallest corrected F (ties to the lowest id), without F on all.

    ``F_k = max_y [y/n + (1/M) Σ_j min(0, z_kj - y)] >= min_j z_kj / n`` (take y = min z_k, every term is 0), and that
    bound costs one min per row instead of a top-k. Exact F is computed on the rows with the smallest bounds, their
    ``cut_num``-th smallest value ``T`` bounds the answer's, and only rows with ``min z_k / n <= T`` can belong to it:
    those are scored exactly and ranked. Same answer as ranking F on every row (on the paper's Games shape about 200
    of 139k rows are scored; a min pass is ~7x cheaper than the top-k pass it replaces).

    With a ``cache``, the min pass itself is skipped while it can be: ``min_j (C_kj - v_j) >= min_j (C_kj - v'_j) -
    max_j (v_j - v'_j)^+`` for the ``v'`` of the cached pass (re-optimised duals only lower ``v``, so the shift is
    usually 0). The pass is redone when the stale bounds leave more than :data:`CACHE_MAX_CANDIDATES` rows to score.
    """
    if len(outside) <= cut_num:
        return outside[np.argsort(_scores_of(cost, outside, v, r, n, chunk_size), kind="stable")]
    for fresh in (False, True):
        if cache is None or fresh or "row_min" not in cache:
            row_min = _row_min(cost, v, chunk_size).double().cpu().numpy()
            if cache is not None:
                cache.update(row_min=row_min, v=v.clone())
            lower = row_min[outside] / n
        else:  # stale minima, lowered by how far v rose since, minus float32 rounding slack
            rise = max(0.0, float((v - cache["v"]).max()))
            lower = (cache["row_min"][outside] - rise - 1e-6) / n
        probe = outside[np.argpartition(lower, 4 * cut_num)[: 4 * cut_num]] if len(outside) > 4 * cut_num else outside
        threshold = np.partition(_scores_of(cost, probe, v, r, n, chunk_size), cut_num - 1)[cut_num - 1]
        # F is a float64 sum of float32 differences: allow its rounding (~1e-15) so no tied row is dropped.
        candidates = outside[lower <= threshold + 1e-12 * max(1.0, abs(threshold))]
        if fresh or cache is None or len(candidates) <= CACHE_MAX_CANDIDATES:
            break
    scores = _scores_of(cost, candidates, v, r, n, chunk_size)
    return candidates[np.argsort(scores, kind="stable")[:cut_num]]


CACHE_MAX_CANDIDATES = 2000  # beyond this many rows to score exactly, a fresh min pass is cheaper


def _scores_of(cost: torch.Tensor, ids: np.ndarray, v: torch.Tensor, r: int, n: int, chunk_size: int) -> np.ndarray:
    """Corrected F of the rows ``ids``, gathered ``chunk_size`` at a time (the candidate set can be the whole pool)."""
    out = np.empty(len(ids), dtype=np.float64)
    for start in range(0, len(ids), chunk_size):
        index = torch.as_tensor(ids[start : start + chunk_size], dtype=torch.long, device=cost.device)
        out[start : start + chunk_size] = _corrected_scores(cost[index], v, r, n, chunk_size).cpu().numpy()
    return out


def _row_min(cost: torch.Tensor, v: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """``min_j (C_kj - v_j)`` per row in float32 (the same float32 differences as :func:`_corrected_scores`)."""
    rows, cols = cost.shape
    out = torch.empty(rows, dtype=torch.float32, device=cost.device)
    step = max(1, min(chunk_size, 256))  # 256 x M float32 stays in cache between the sub and the min
    buf = torch.empty((min(step, rows), cols), dtype=torch.float32, device=cost.device)
    for start in range(0, rows, step):
        z = buf[: min(step, rows - start)]
        torch.sub(cost[start : start + step], v, out=z)
        out[start : start + step] = z.amin(dim=1)
    return out


def removal_potentials(cost_s: torch.Tensor, u: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``w^(p)_j = min_{k∈S, k≠p} (C_kj - u_k)`` for the S positions ``p`` given (float64, shape (P, M)).

    Only the argmin row of a column sees a different value: the column minimum with that one entry masked, which is
    the minimum again when it is attained twice.
    """
    shifted = cost_s.double() - u.unsqueeze(1)  # a fresh tensor: masking it in place is safe
    v, arg = shifted.min(dim=0)
    shifted[arg, torch.arange(shifted.shape[1], device=shifted.device)] = float("inf")
    second = shifted.amin(dim=0)
    own = arg.unsqueeze(0) == positions.unsqueeze(1)
    return torch.where(own, second.unsqueeze(0), v.unsqueeze(0))


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
    """F = :func:`dual_gain` of ``z = C_k - f_k`` per row; ``f`` is (1, M) (shared) or one row per source row."""
    rows, cols = block_src.shape
    out = torch.empty(rows, dtype=torch.float64, device=block_src.device)
    buf = torch.empty((min(chunk_size, rows), cols), dtype=block_src.dtype, device=block_src.device)
    for start in range(0, rows, chunk_size):
        fk = f if f.shape[0] == 1 else f[start : start + chunk_size]
        z = buf[: min(chunk_size, rows - start)]
        torch.sub(block_src[start : start + chunk_size], fk.to(block_src.dtype), out=z)  # reused: see greedy._decrease
        out[start : start + chunk_size] = dual_gain(z, r, n)
    return out


def dual_gain(z: torch.Tensor, r: int, n: int) -> torch.Tensor:
    """``max_y [y/n + (1/M) Σ_j min(0, z_j - y)]`` over the last dimension (size M), in float64.

    The concave function peaks at ``y`` = the R-th smallest ``z`` (R = ceil(M/n)), and only the R smallest entries
    lie below it, so ``Σ_j min(0, z_j - y) = Σ_{R smallest} (z_j - y)``: one top-k, no pass over the rest.
    """
    low = z.topk(k=r, dim=-1, largest=False).values.double()
    y = low[..., -1]
    return (low - y.unsqueeze(-1)).sum(dim=-1) / z.shape[-1] + y / n
