"""Label-enhanced GORACS (spec §2.4, "Algorithm 2"), generalised from 2 to K classes.

The coreset is the union of per-class selections: class k's training rows are matched to class k's validation rows
(a class-conditional OT: infinite cost across classes, class masses fixed to the validation prior). Budgets follow
the validation class rates ``p_k``:

- 2 classes: the official rule ``n_1 = round(p_1 n)`` (Python rounding, half to even), ``n_0 = n - n_1``;
- K > 2: largest remainder (floors of ``p_k n``, the rest one by one to the largest fractional parts, ties to the
  smaller label), which equals the 2-class rule except at exact halves.

A class cannot receive more than it has: the excess goes to the classes with spare rows, largest ``p_k`` first.
"""

from __future__ import annotations

import logging
import math
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)


def class_budgets(train_labels: np.ndarray, valid_labels: np.ndarray, budget: int) -> dict[int, int]:
    """Samples to select per class label (sums to ``min(budget, N)``)."""
    train_labels, valid_labels = np.asarray(train_labels), np.asarray(valid_labels)
    classes = np.unique(np.concatenate([train_labels, valid_labels])).tolist()
    rates = {k: float(np.mean(valid_labels == k)) for k in classes}
    if len(classes) == 2:
        hi = classes[1]
        quota = {hi: round(rates[hi] * budget)}
        quota[classes[0]] = budget - quota[hi]
    else:
        raw = {k: rates[k] * budget for k in classes}
        quota = {k: math.floor(raw[k]) for k in classes}
        order = sorted(classes, key=lambda k: (-(raw[k] - quota[k]), k))
        for k in order[: budget - sum(quota.values())]:
            quota[k] += 1
    available = {k: int(np.sum(train_labels == k)) for k in classes}
    surplus = sum(max(quota[k] - available[k], 0) for k in classes)
    quota = {k: min(quota[k], available[k]) for k in classes}
    for k in sorted(classes, key=lambda k: (-rates[k], k)):
        give = min(surplus, available[k] - quota[k])
        quota[k] += give
        surplus -= give
    if any(quota[k] < round(rates[k] * budget) for k in classes):
        log.warning("class budgets %s deviate from the validation rates %s: some classes are too small", quota, rates)
    return quota


def select_by_class(
    train_labels: np.ndarray,
    valid_labels: np.ndarray,
    budget: int,
    select_block: Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, dict, dict]],
) -> tuple[np.ndarray, dict[str, float], dict[str, list[float]]]:
    """Run ``select_block(train_rows, valid_rows, n_k) -> (chosen rows, stats, traces)`` per class and merge.

    Stats are suffixed ``_class<k>``; ``poo_greedy``/``poo_final`` are the n_k/n weighted means (the value of the
    class-conditional OT when every class uses its own min-max normalisation); counts and times are summed.
    """
    quotas = class_budgets(train_labels, valid_labels, budget)
    total = sum(quotas.values())
    chosen, stats, traces = [], {}, {}
    for k, n_k in quotas.items():
        train_rows = np.flatnonzero(train_labels == k)
        valid_rows = np.flatnonzero(valid_labels == k)
        stats[f"budget_class{k}"] = n_k
        if n_k == 0:
            continue
        if n_k >= len(train_rows) or len(valid_rows) == 0:
            log.info("class %s: taking all %d rows (budget %d, %d validation rows)", k, len(train_rows), n_k,
                     len(valid_rows))
            chosen.append(train_rows[:n_k] if len(valid_rows) == 0 else train_rows)
            continue
        log.info("class %s: selecting %d of %d rows against %d validation rows", k, n_k, len(train_rows),
                 len(valid_rows))
        rows, block_stats, block_traces = select_block(train_rows, valid_rows, n_k)
        chosen.append(train_rows[rows])
        for key, value in block_stats.items():
            stats[f"{key}_class{k}"] = value
            if key.startswith("poo_"):
                stats[key] = stats.get(key, 0.0) + value * n_k / total
            elif key.startswith(("exchanges_", "time_", "screened")):
                stats[key] = stats.get(key, 0) + value
        for key, trace in block_traces.items():
            traces[f"{key}_class{k}"] = trace
    return np.concatenate(chosen) if chosen else np.empty(0, dtype=np.int64), stats, traces
