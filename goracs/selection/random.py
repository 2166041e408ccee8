"""Uniform random selection: the baseline every coreset method has to beat."""

from __future__ import annotations

import logging
import time

import numpy as np

from goracs.selection.pool import Pool, SelectionResult, check_budget, whole_pool
from goracs.selection.sampling import uniform_sample

log = logging.getLogger(__name__)


class RandomSelector:
    """``budget`` samples drawn uniformly without replacement with ``numpy.random.default_rng(seed)``.

    Reads no features, so it runs before (and without) the feature stage.
    """

    def select(self, pool: Pool, budget: int, *, seed: int) -> SelectionResult:
        start = time.perf_counter()
        m = check_budget(budget, pool.size)
        if m == pool.size:
            return whole_pool(pool.size, time_s=time.perf_counter() - start)
        indices = uniform_sample(pool.size, m, np.random.default_rng(seed))
        elapsed = time.perf_counter() - start
        log.info("random: %d of %d samples (seed %d) in %.3f s", m, pool.size, seed, elapsed)
        return SelectionResult(indices=indices, stats={"time_s": elapsed})
