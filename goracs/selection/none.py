"""No training: the reference row that evaluates the initial adapter φ₀ as it is, to show how far fine-tuning moved
the model (every table can carry it; ``goracs-report --reference none``)."""

from __future__ import annotations

import logging
import time

import numpy as np

from goracs.selection.pool import Pool, SelectionResult, check_budget

log = logging.getLogger(__name__)


class NoTrainingSelector:
    """Select nothing; ``goracs-run`` then skips fine-tuning and evaluates φ₀. The budget is only validated."""

    def select(self, pool: Pool, budget: int, *, seed: int) -> SelectionResult:
        start = time.perf_counter()
        check_budget(budget, max(pool.size, 1))  # a non-positive budget is still a user mistake worth reporting
        log.info("none: no training sample; the initial adapter is evaluated as it is (budget %d ignored)", budget)
        return SelectionResult(indices=np.zeros(0, dtype=np.int64), stats={"time_s": time.perf_counter() - start})
