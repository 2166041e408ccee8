"""Per-sample test records (``test_outputs.parquet``) and the metrics computed from them.

One row per test sample. Every job of a sweep with the same data config and ``data_seed`` writes the same ``row``
ids for the same samples, so two methods (or seeds) can be compared sample by sample (paired statistics,
``goracs-report --reference``). Columns:

* all tasks: ``row`` (int, 0-based position in the test split: the stable test-row id), ``user`` (str),
  ``item`` (str, the target id), ``targets`` (list of str: every target id; DEALRec test rows have several),
  ``loss`` (float, nats: the per-sample test loss, see below).
* SeqRec: ``generated`` (str, the cleaned best beam; null when grounding was not run on that row), ``rank``
  (sampled 1+negatives grounding rank, 0-based), ``rank_full`` (full-catalogue grounding rank), ``rank_ll``
  (likelihood rank among the target and its negatives, 0-based); ranks are nullable integers, null where that
  ranking was not computed (``eval.ranking``, ``eval.ranking_rows``). ``loss`` = mean next-token cross-entropy
  of the response tokens (the quoted target title and EOS) given the training prompt, teacher-forced.
* CTR: ``label`` (int, 1 = like), ``p_yes`` (float), ``loss`` = two-way logloss ``-[y log p + (1-y) log(1-p)]``
  with ``p`` clipped to ``[EPS, 1 - EPS]``.

:func:`sample_values` is the single definition of each mean-type ``test/*`` metric as a per-sample value, and
:func:`ranking_metrics` / :func:`classification_metrics` average them (AUC is the one metric that is not a mean); the
evaluation stage reports those and the report's bootstrap resamples the same per-sample values. Only numpy, pandas
and scikit-learn are imported here (no torch), so the report stays light.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np
import pandas as pd

FILENAME = "test_outputs.parquet"
EPS = 1e-7  # probabilities are clipped to [EPS, 1 - EPS] in the logloss: a confident mistake costs ~16 nats
RANK_COLUMNS = {"": "rank", "_full": "rank_full", "_ll": "rank_ll"}  # metric suffix -> rank column
RANKED = re.compile(r"(ndcg|hit)@(\d+)(.*)")  # ndcg@K / hit@K with a RANK_COLUMNS suffix


def classification_metrics(records: pd.DataFrame) -> dict[str, float]:
    """``loss`` = mean of ``loss`` over rows, ``logloss`` (= ``loss``), ``auc`` (NaN when the labels have one class)
    and ``accuracy`` = mean of ``1[p_yes > 0.5] = label`` (the CTR task's metrics)."""
    out: dict[str, float] = {"loss": _nanmean(sample_values(records, "loss"))}
    labels = records["label"].to_numpy(dtype=np.int64)
    out.update(auc=auc(labels, records["p_yes"].to_numpy(dtype=np.float64)), logloss=out["loss"],
               accuracy=_nanmean(sample_values(records, "accuracy")))
    return out


def ranking_metrics(records: pd.DataFrame, topk: Sequence[int] = (5, 10)) -> dict[str, float]:
    """``loss`` = mean of ``loss`` over rows; for each rank column present with at least one non-null value and
    each K, ``ndcg@K<suffix>`` = mean of ``1/log2(rank + 2)·1[rank < K]`` and ``hit@K<suffix>`` = mean of
    ``1[rank < K]`` over the rows where that rank is not null (suffix ``""`` grounding sampled, ``_full`` grounding
    full catalogue, ``_ll`` likelihood); ``exact_match`` = share of non-null ``generated`` that equal a catalogue
    title (column ``exact``). The SeqRec task's metrics."""
    out: dict[str, float] = {"loss": _nanmean(sample_values(records, "loss"))}
    for suffix, column in RANK_COLUMNS.items():
        if column not in records.columns or not records[column].notna().any():
            continue
        for k in sorted(int(k) for k in topk):
            for name in (f"ndcg@{k}{suffix}", f"hit@{k}{suffix}"):
                out[name] = _nanmean(sample_values(records, name))
    if "exact" in records.columns and records["exact"].notna().any():
        out["exact_match"] = _nanmean(sample_values(records, "exact_match"))
    return out


def sample_values(records: pd.DataFrame, metric: str) -> np.ndarray | None:
    """Per-sample values (NaN where null) whose mean over non-null rows is ``metric`` as
    :func:`ranking_metrics` / :func:`classification_metrics` define it; ``None`` when the column is absent.

    ``loss`` / ``logloss``: ``loss``; ``accuracy``: ``1[p_yes > 0.5] = label``; ``exact_match``: ``exact``;
    ``ndcg@K<suffix>``: ``ndcg_gain(rank, K)`` and ``hit@K<suffix>``: ``1[rank < K]`` with the rank column
    ``RANK_COLUMNS[suffix]``; ``auc``: the scores ``p_yes`` (their labels: :func:`floats` of ``label``).
    """
    name = metric.removeprefix("test/")
    if name in ("loss", "logloss"):
        return floats(records, "loss")
    if name == "auc":
        return floats(records, "p_yes")
    if name == "exact_match":
        return floats(records, "exact")
    if name == "accuracy":
        p, y = floats(records, "p_yes"), floats(records, "label")
        if p is None or y is None:
            return None
        return np.where(np.isnan(p) | np.isnan(y), np.nan, ((p > 0.5) == (y == 1)).astype(np.float64))
    ranked = RANKED.fullmatch(name)
    ranks = floats(records, RANK_COLUMNS[ranked[3]]) if ranked and ranked[3] in RANK_COLUMNS else None
    if ranks is None:
        return None
    k = int(ranked[2])
    values = ndcg_gain(ranks, k) if ranked[1] == "ndcg" else (ranks < k).astype(np.float64)
    return np.where(np.isnan(ranks), np.nan, values)


def floats(records: pd.DataFrame, column: str) -> np.ndarray | None:
    """``column`` as float64 with NaN for null (nullable ints and booleans included); ``None`` when absent."""
    if column not in records.columns:
        return None
    values = records[column]
    if values.dtype == object:
        values = values.map(lambda v: np.nan if v is None or v is pd.NA else float(v))
    return values.astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)


def ndcg_gain(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-sample NDCG@K gain of 0-based ranks: ``1/log2(rank + 2)`` if ``rank < K`` else 0 (one relevant item)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)


def logloss_per_sample(labels: np.ndarray, p: np.ndarray) -> np.ndarray:
    """``-[y log q + (1 - y) log(1 - q)]`` with ``q = clip(p, EPS, 1 - EPS)``, in nats."""
    labels, q = np.asarray(labels, dtype=np.float64), np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return -(labels * np.log(q) + (1 - labels) * np.log(1 - q))


def auc(labels: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC of scores ``p`` for binary ``labels``; NaN when only one class is present."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return math.nan
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, p))


def read_records(path) -> pd.DataFrame:
    """``pandas.read_parquet`` of a record file with hive partitioning **off**: inside a Hydra sweep folder such as
    ``budget=16,seed=0,selection=random/`` pyarrow would otherwise add bogus categorical columns from the path."""
    return pd.read_parquet(path, partitioning=None)


def write_records(records: pd.DataFrame, path) -> None:
    """Write ``records`` to ``path`` (parquet) atomically: a temporary file renamed into place."""
    from goracs.cache import atomic_write

    atomic_write(path, lambda p: records.to_parquet(p, index=False))


def _nanmean(values: np.ndarray | None) -> float:
    """Mean over the non-NaN entries (NaN when there are none)."""
    if values is None:
        return math.nan
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else math.nan
