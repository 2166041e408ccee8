"""The whole pool, whatever the budget: the upper reference every coreset is compared with."""

from __future__ import annotations

import logging
import time

from goracs.selection.pool import Pool, SelectionResult, check_budget, whole_pool

log = logging.getLogger(__name__)


class FullSelector:
    """Select every training sample. Reads no features; the budget is only validated (it must be positive)."""

    def select(self, pool: Pool, budget: int, *, seed: int) -> SelectionResult:
        start = time.perf_counter()
        check_budget(budget, pool.size)  # a non-positive budget is still a user mistake worth reporting
        log.info("full: keeping all %d samples (budget %d ignored)", pool.size, budget)
        return whole_pool(pool.size, time_s=time.perf_counter() - start)
