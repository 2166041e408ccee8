"""Sampling helpers shared by the selection methods: top-k, CCS water-filling, stratified and uniform sampling.

Everything here is a pure function of its arguments (randomness only through an explicit
``numpy.random.Generator``), so methods stay deterministic per seed and the helpers can be tested on their own.
"""

from __future__ import annotations

import numpy as np


def top_k(scores: np.ndarray, k: int, largest: bool = True) -> np.ndarray:
    """Indices of the ``k`` largest (or smallest) scores, best first.

    Ties are broken by the lower index (stable sort), so the result never depends on the platform or on the
    order numpy's partitioning happens to visit equal values.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"top_k expects a 1-D score vector, got shape {scores.shape}")
    if np.isnan(scores).any():
        raise ValueError(f"top_k got {int(np.isnan(scores).sum())} NaN scores; every sample needs a finite score")
    k = max(0, min(int(k), len(scores)))
    order = np.argsort(-scores if largest else scores, kind="stable")
    return order[:k]


def allocate_budget(strata_sizes: np.ndarray, m: int, order: np.ndarray | None = None) -> np.ndarray:
    """Per-stratum budgets by CCS's water-filling (``bin_allocate``), in the input order.

    Strata are visited by size, smallest first (ties: lower stratum index first, unless ``order`` gives the visiting
    order: CCS's official ``torch.argsort``, see ``ccs.official_allocate``); stratum i receives
    ``b_i = min(size_i, remaining // strata_left)`` and ``remaining -= b_i``. Small strata are taken whole and the
    slack flows to the larger ones; the total is ``min(m, sum(sizes))``. Empty strata are skipped when counting
    ``strata_left`` (d2pruning's fix; identical to CCS because empty strata sort first and take 0).
    """
    sizes = np.asarray(strata_sizes, dtype=np.int64)
    if (sizes < 0).any():
        raise ValueError(f"strata sizes must be >= 0, got {sizes.tolist()}")
    if m < 0:
        raise ValueError(f"budget must be >= 0, got {m}")
    budgets = np.zeros(len(sizes), dtype=np.int64)
    remaining = int(m)
    order = np.argsort(sizes, kind="stable") if order is None else np.asarray(order, dtype=np.int64)
    if sorted(order.tolist()) != list(range(len(sizes))) or (np.diff(sizes[order]) < 0).any():
        raise ValueError("allocate_budget: order must visit every stratum once, by non-decreasing size")
    nonempty_left = int((sizes > 0).sum())
    for s in order:
        if sizes[s] == 0:
            continue
        take = min(int(sizes[s]), remaining // nonempty_left)
        budgets[s] = take
        remaining -= take
        nonempty_left -= 1
    return budgets


def equal_width_strata(scores: np.ndarray, n_strata: int, right_closed: bool = False) -> np.ndarray:
    """Stratum id in ``0..n_strata-1`` of each score: ``floor((s - min) / w)`` with ``w = (max - min) / n_strata``.

    Bins are left-closed ``[min + i·w, min + (i+1)·w)`` as in CCS, except that the maximum falls in the last bin
    (CCS stretches the range by ``max·1.0001`` instead, which loses the top sample when ``max < 0``).
    ``right_closed`` gives DEALRec's ``prune.py`` bins instead: a score goes to the first bin i with
    ``s <= min(min + (i+1)·w, max)``, i.e. ``[min, min + w]`` then ``(min + i·w, min + (i+1)·w]``.
    A constant score vector is one stratum (id 0).
    """
    if n_strata < 1:
        raise ValueError(f"n_strata must be >= 1, got {n_strata}")
    s = np.asarray(scores, dtype=np.float64)
    if len(s) == 0:
        return np.zeros(0, dtype=np.int64)
    lo, hi = float(s.min()), float(s.max())
    if hi == lo:
        return np.zeros(len(s), dtype=np.int64)
    width = (hi - lo) / n_strata
    if right_closed:
        uppers = np.minimum(lo + width * np.arange(1, n_strata + 1), hi)  # the official bounds, float for float
        return np.searchsorted(uppers, s, side="left").astype(np.int64)
    return np.clip(np.floor((s - lo) / width), 0, n_strata - 1).astype(np.int64)


def stratified_sample(scores: np.ndarray, m: int, n_strata: int, rng: np.random.Generator,
                      right_closed: bool = False) -> np.ndarray:
    """CCS sampling: equal-width score strata, water-filling budgets, uniform sampling inside each stratum.

    Returns ``min(m, len(scores))`` positions into ``scores`` (sorted). ``right_closed``: DEALRec's bins
    (:func:`equal_width_strata`).
    """
    strata = equal_width_strata(scores, n_strata, right_closed=right_closed)
    budgets = allocate_budget(np.bincount(strata, minlength=n_strata), m)
    picked = []
    for stratum, b in enumerate(budgets):
        if b == 0:
            continue
        members = np.flatnonzero(strata == stratum)
        picked.append(members[uniform_sample(len(members), int(b), rng)])
    if not picked:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(picked))


def uniform_sample(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` distinct positions drawn uniformly from ``0..n-1`` (without replacement), in draw order."""
    if not 0 <= k <= n:
        raise ValueError(f"cannot draw {k} distinct samples from {n}")
    return rng.choice(n, size=k, replace=False).astype(np.int64)


def hard_cutoff(scores: np.ndarray, fraction: float, keep_at_least: int, drop_highest: bool) -> np.ndarray:
    """Positions that survive CCS's hard cutoff, which drops the ``floor(fraction·N)`` hardest samples.

    "Hardest" is the highest score when ``drop_highest`` (EL2N, gradient norm, loss: larger = harder) and the lowest
    otherwise (AUM-like scores). The cut is capped at ``N - keep_at_least`` so the budget can still be met.
    Returned positions are sorted.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"hard_fraction must be in [0, 1), got {fraction}")
    n = len(scores)
    n_drop = min(int(np.floor(fraction * n)), max(0, n - keep_at_least))
    if n_drop == 0:
        return np.arange(n, dtype=np.int64)
    dropped = top_k(scores, n_drop, largest=drop_highest)
    keep = np.ones(n, dtype=bool)
    keep[dropped] = False
    return np.flatnonzero(keep)
