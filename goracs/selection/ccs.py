"""CCS: Coverage-centric Coreset Selection (Zheng, Liu, Li, Prakash; ICLR 2023).

1. Hard cutoff: drop the ``floor(β·N)`` hardest samples (β = ``hard_fraction``, a fraction of the whole pool).
2. Split the remaining scores into ``n_strata`` equal-width strata.
3. Give the budget to the strata by water-filling, smallest stratum first (``sampling.allocate_budget``).
4. Sample uniformly inside each stratum with ``default_rng(seed)`` (the official code uses the unseeded global RNG).

The official code ranks the cutoff by AUM (low = hard) and stratifies another score; we have one score per run and
cut on it, so ``drop_highest`` says which end is hard (true for ``el2n``, ``grad_norm``, ``loss``).
"""

from __future__ import annotations

import logging
import time

import numpy as np

from goracs.selection.pool import Pool, SelectionResult, check_budget, whole_pool
from goracs.selection.sampling import equal_width_strata, hard_cutoff, stratified_sample
from goracs.selection.scored import read_score

log = logging.getLogger(__name__)


class CCSSelector:
    """Score-stratified sampling with a hard cutoff.

    Args:
        score: per-sample importance feature (``el2n``, ``grad_norm`` or ``loss``).
        hard_fraction: β, fraction of the whole pool removed as "too hard" before stratifying.
        drop_highest: the hard end is the highest score (true) or the lowest (AUM-like scores).
        n_strata: k, number of equal-width score strata.
    """

    def __init__(self, score: str, hard_fraction: float, drop_highest: bool, n_strata: int):
        if not 0.0 <= hard_fraction < 1.0:
            raise ValueError(f"selection.hard_fraction must be in [0, 1), got {hard_fraction}")
        if n_strata < 1:
            raise ValueError(f"selection.n_strata must be >= 1, got {n_strata}")
        self.score = str(score)
        self.hard_fraction = float(hard_fraction)
        self.drop_highest = bool(drop_highest)
        self.n_strata = int(n_strata)

    def select(self, pool: Pool, budget: int, *, seed: int) -> SelectionResult:
        start = time.perf_counter()
        m = check_budget(budget, pool.size)
        scores = read_score(pool, self.score)
        if m == pool.size:
            return whole_pool(pool.size, time_s=time.perf_counter() - start)
        kept = hard_cutoff(scores, self.hard_fraction, keep_at_least=m, drop_highest=self.drop_highest)
        picked = kept[stratified_sample(scores[kept], m, self.n_strata, np.random.default_rng(seed))]
        per_stratum = np.bincount(equal_width_strata(scores[kept], self.n_strata)[np.searchsorted(kept, picked)],
                                  minlength=self.n_strata)
        elapsed = time.perf_counter() - start
        log.info("ccs on %s: %d of %d samples (%d cut as hard, %d non-empty strata) in %.3f s", self.score, m,
                 pool.size, pool.size - len(kept), int((per_stratum > 0).sum()), elapsed)
        stats = {"time_s": elapsed, "n_cut": float(pool.size - len(kept))}
        return SelectionResult(indices=picked, scores=scores, stats=stats,
                               traces={"per_stratum": per_stratum.astype(float).tolist()})
