"""The selection cache: a selection is computed once per samples, features, method, budget and seed, then read.

An entry is ``<cache_dir>/selections/<key>.npz`` (:meth:`SelectionResult.save`) with the usual manifest
(:class:`goracs.cache.DiskCache`). The key is the hash of what determines the picks: the caller's ``identity`` (the
data, task and selection config nodes, ``data_seed``, the method's name), the model by its fingerprint (the adapter
by content, not by path), the feature options that change feature values (never batch sizes, device or process
count), the budget and the seed. Parallel jobs that need one selection compute it once (:meth:`DiskCache.claim`).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Mapping

from goracs.cache import DiskCache, config_key
from goracs.selection.pool import BUDGET_FREE_METHODS, Pool, SelectionResult, Selector, check_budget

log = logging.getLogger(__name__)

KIND, SUFFIX = "selections", "npz"


def cached_select(selector: Selector, pool: Pool, budget: int, *, seed: int, identity: Mapping[str, Any],
                  cache_dir: str | Path) -> SelectionResult:
    """``selector.select(pool, budget, seed=seed)``, or the cached result of the same selection.

    ``pool.features`` is a :class:`goracs.features.FeatureStore` (its ``fingerprint``, ``cfg.value_spec()`` and
    ``seconds`` are used). The budget is checked strictly (:func:`check_budget`) before any feature is computed,
    except for methods that ignore it (``identity["method"]`` in :data:`BUDGET_FREE_METHODS`: ``full``, ``none``),
    whose ``select`` still refuses a budget that is not positive. The method's ``select/time_s`` excludes the time
    spent computing features.
    """
    if identity.get("method") not in BUDGET_FREE_METHODS:
        check_budget(budget, pool.size, strict=True)
    spec = selection_spec(pool, budget, seed=seed, identity=identity)
    key = config_key(spec)
    cache = DiskCache(cache_dir)
    with cache.claim(KIND, key, SUFFIX) as hit:  # parallel jobs with one selection: one computes, the rest read
        if hit is not None:
            result = SelectionResult.load(hit)
            log.info("selection read from cache %s", hit)
        else:
            result = _select(selector, pool, budget, seed)
            cache.store(KIND, key, SUFFIX, result.save, spec)
    log.info("selected %d of %d samples with %s", len(result.indices), pool.size, identity.get("method"))
    return result


def selection_spec(pool: Pool, budget: int, *, seed: int, identity: Mapping[str, Any]) -> dict[str, Any]:
    """What the cache key hashes (module docstring); stored in the entry's manifest."""
    store = pool.features
    return {**identity, "model": store.fingerprint, "features": store.cfg.value_spec(), "budget": int(budget),
            "seed": int(seed)}


def _select(selector: Selector, pool: Pool, budget: int, seed: int) -> SelectionResult:
    t0 = pool.features.seconds
    result = selector.select(pool, budget, seed=seed)
    # Features are computed lazily inside select(): keep them out of the method's time, which compares methods.
    if "time_s" in result.stats:
        own = max(float(result.stats["time_s"]) - (pool.features.seconds - t0), 0.0)
        result = dataclasses.replace(result, stats={**result.stats, "time_s": own})
    return result
