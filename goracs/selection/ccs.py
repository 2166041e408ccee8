"""CCS: Coverage-centric Coreset Selection (Zheng, Liu, Li, Prakash; ICLR 2023).

1. Hard cutoff: drop the ``floor(β·N)`` hardest samples (β = ``hard_fraction``, a fraction of the whole pool).
2. Split the remaining scores into ``n_strata`` equal-width strata.
3. Give the budget to the strata by water-filling, smallest stratum first (``sampling.allocate_budget``).
4. Sample uniformly inside each stratum.

The official code ranks the cutoff by AUM (low = hard) and stratifies another score; we have one score per run and
cut on it, so ``drop_highest`` says which end is hard (true for ``el2n``, ``grad_norm``, ``loss``).

``variant`` (both give ``min(budget, N)`` samples):

- ``official`` (default) reproduces ``CoresetSelection.stratified_sampling`` of haizhongzheng/Coverage-centric-coreset-
  selection at b37f166 index for index (``tests/test_official_fixtures.py``): float32 bin edges ``lo + k·step`` with
  ``step = (1.0001·max − lo) / k`` (left-closed; when ``max ≤ 0`` the stretch shrinks the range and the top samples
  fall in no stratum), the strata visited by ``torch.argsort`` of their sizes, the kept samples in the cutoff's sorted
  order, and one ``torch.randperm`` per stratum from ``torch.Generator().manual_seed(seed)``: the official selection
  when its global RNG is seeded with ``torch.manual_seed(seed)`` right before the call. Only if fewer than ``budget``
  samples lie in a stratum (possible only when ``max ≤ 0``) are the out-of-stratum ones added, in cutoff order, so that
  the budget is met (the official code returns fewer).
- ``corrected``: float64 edges over ``[min, max]`` with the maximum in the last stratum (nothing is lost for negative
  scores), ties between equal-size strata by stratum index, ``numpy.random.default_rng(seed)`` sampling.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from goracs.errors import ConfigError
from goracs.selection.pool import Pool, SelectionResult, check_budget, whole_pool
from goracs.selection.sampling import allocate_budget, equal_width_strata, hard_cutoff, stratified_sample
from goracs.selection.scored import read_score

log = logging.getLogger(__name__)

VARIANTS = ("official", "corrected")
OFFICIAL_STRETCH = 1.0001  # the official upper edge is max·1.0001


class CCSSelector:
    """Score-stratified sampling with a hard cutoff.

    Args:
        score: per-sample importance feature (``el2n``, ``grad_norm`` or ``loss``).
        hard_fraction: β, fraction of the whole pool removed as "too hard" before stratifying.
        drop_highest: the hard end is the highest score (true) or the lowest (AUM-like scores).
        n_strata: k, number of equal-width score strata.
        variant: ``official`` (the authors' bins, tie order and RNG) or ``corrected`` (module docstring).
    """

    def __init__(self, score: str, hard_fraction: float, drop_highest: bool, n_strata: int,
                 variant: str = "official"):
        if not 0.0 <= hard_fraction < 1.0:
            raise ValueError(f"selection.hard_fraction must be in [0, 1), got {hard_fraction}")
        if n_strata < 1:
            raise ValueError(f"selection.n_strata must be >= 1, got {n_strata}")
        if variant not in VARIANTS:
            raise ConfigError(f"selection.variant={variant!r}: expected one of {', '.join(VARIANTS)}")
        self.score = str(score)
        self.hard_fraction = float(hard_fraction)
        self.drop_highest = bool(drop_highest)
        self.n_strata = int(n_strata)
        self.variant = variant

    def select(self, pool: Pool, budget: int, *, seed: int) -> SelectionResult:
        start = time.perf_counter()
        m = check_budget(budget, pool.size)
        scores = read_score(pool, self.score)
        if m == pool.size:
            return whole_pool(pool.size, time_s=time.perf_counter() - start)
        if self.variant == "official":
            picked, per_stratum, n_kept = official_stratified(scores, m, self.hard_fraction, self.drop_highest,
                                                              self.n_strata, seed)
        else:
            kept = hard_cutoff(scores, self.hard_fraction, keep_at_least=m, drop_highest=self.drop_highest)
            picked = kept[stratified_sample(scores[kept], m, self.n_strata, np.random.default_rng(seed))]
            strata = equal_width_strata(scores[kept], self.n_strata)
            per_stratum = np.bincount(strata[np.searchsorted(kept, picked)], minlength=self.n_strata)
            n_kept = len(kept)
        elapsed = time.perf_counter() - start
        log.info("ccs (%s) on %s: %d of %d samples (%d cut as hard, %d non-empty strata) in %.3f s", self.variant,
                 self.score, m, pool.size, pool.size - n_kept, int((per_stratum > 0).sum()), elapsed)
        stats = {"time_s": elapsed, "n_cut": float(pool.size - n_kept)}
        return SelectionResult(indices=picked, scores=scores, stats=stats,
                               traces={"per_stratum": per_stratum.astype(float).tolist()})


def official_stratified(scores: np.ndarray, m: int, hard_fraction: float, drop_highest: bool, n_strata: int,
                        seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The official cutoff + ``stratified_sampling`` (module docstring): (sorted picks, picks per stratum, kept)."""
    s = torch.as_tensor(np.asarray(scores, dtype=np.float32))
    n_drop = min(int(np.floor(hard_fraction * len(s))), len(s) - m)
    # mislabel_mask: the kept samples stay in the sorted order, which decides the positions randperm indexes
    kept = torch.argsort(s, descending=drop_highest)[n_drop:].numpy()
    strata = official_strata(s.numpy()[kept], n_strata)
    sizes = np.bincount(strata[strata >= 0], minlength=n_strata)
    budgets = official_allocate(sizes, m)
    gen = torch.Generator().manual_seed(int(seed))
    picked = []
    for stratum in range(n_strata):  # one randperm per stratum, empty ones included, as the official loop
        members = np.flatnonzero(strata == stratum)
        perm = torch.randperm(len(members), generator=gen).numpy()
        picked.append(members[perm[:budgets[stratum]]])
    picked = np.concatenate(picked)
    short = m - len(picked)
    if short > 0:  # only when max <= 0: the 1.0001 stretch left samples outside every stratum
        outside = np.flatnonzero(strata < 0)[:short]
        log.warning("ccs (official): %d samples lie above the last bin edge (max score %.4g <= 0); adding %d of them "
                    "to meet the budget %d (variant=corrected keeps them in the last stratum)",
                    int((strata < 0).sum()), float(s.max()), len(outside), m)
        picked = np.concatenate([picked, outside])
    per_stratum = np.bincount(strata[picked][strata[picked] >= 0], minlength=n_strata)
    return np.sort(kept[picked]).astype(np.int64), per_stratum, len(kept)


def official_strata(scores: np.ndarray, n_strata: int) -> np.ndarray:
    """Stratum of each float32 score by the official bins ``[lo + k·step, lo + (k+1)·step)``, all in float32, with
    ``step = (max·1.0001 − lo) / n_strata``; −1 where a score is in none (above the top edge)."""
    s = np.asarray(scores, dtype=np.float32)
    lo = s.min()
    hi = s.max() * np.float32(OFFICIAL_STRETCH)
    step = (hi - lo) / np.float32(n_strata)
    strata = np.full(len(s), -1, dtype=np.int64)
    for k in range(n_strata):
        start, end = lo + np.float32(k) * step, lo + np.float32(k + 1) * step
        strata[(s >= start) & (s < end)] = k
    return strata


def official_allocate(sizes: np.ndarray, m: int) -> np.ndarray:
    """Water-filling with the strata visited in ``torch.argsort`` order of their sizes (the official tie order)."""
    order = torch.argsort(torch.as_tensor(np.asarray(sizes, dtype=np.int64))).numpy()
    return allocate_budget(sizes, m, order=order)
