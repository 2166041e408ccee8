"""Intervals of ``method − reference`` for ``goracs-report``: a paired bootstrap over test rows, seeds as strata.

:func:`attach_intervals` is the entry point: it fills ``Table.intervals`` and ``Table.interval_notes`` of every table
from the ``test_outputs.parquet`` beside each run's ``metrics.json`` (schema: :mod:`goracs.evaluation.records`).
The statistics themselves are :func:`paired_bootstrap` and, when the per-sample records are missing,
:func:`welch_interval`. The procedure is described for readers in ``docs/statistics.md``.

Pairing. A cell (method m, column c) is compared with the reference cell (ref, c), or with (ref, ``all``) when the
reference is budget-less (``none``, ``full``); budget-less rows get no interval against a budgeted reference.
Strata are seeds: method seed s is paired with reference seed s (seeds only one side has are left out); when the
reference has exactly one seed, every method seed is paired with it. Within stratum s the two record files (same
``row`` ids, checked) are aligned on ``row`` and rows where either value is null are dropped (pairwise), leaving
``n_s`` rows with per-sample values ``x_s`` (method) and ``y_s`` (reference).

Statistic, with ``f`` the metric of a set of rows (the mean for mean-type metrics such as ``test/loss``,
``test/ndcg@10``, ``test/accuracy``; the ROC AUC of ``(label, p_yes)`` for ``test/auc``)::

    T    = (1/S) Σ_s [ f(x_s) − f(y_s) ]                                  point estimate ("diff")
    T*_b = (1/S) Σ_s [ f(x_s[I_sb]) − f(y_s[I_sb]) ],   b = 1..B            bootstrap replicates

where ``I_sb`` are ``n_s`` indices drawn uniformly with replacement from the stratum's rows, independently per
stratum and replicate, and identical for method and reference. With ``w_sb`` the multiplicities of ``I_sb``,
mean-type replicates are one matrix product, ``T*_b = (1/S) Σ_s (1/n_s) Σ_i w_sbi (x_si − y_si)``, and the AUC of a
weighted sample is rank based, ``Σ_{i pos} Σ_{j neg} w_i w_j (1[p_i > p_j] + ½·1[p_i = p_j]) / (W_pos W_neg)``.
The interval is the percentile interval ``[q_{α/2}, q_{1−α/2}]`` of ``T*_1..T*_B`` (α = 0.05; replicates whose AUC
is undefined, one class drawn, are dropped). Randomness: ``numpy.random.default_rng(boot_seed)`` afresh for every
cell, strata drawn in seed order, so the result is a function of the inputs, ``n_boot`` and ``boot_seed``.

Fallback, when a run of the cell or its reference has no ``test_outputs.parquet`` (older runs) or no column for the
metric: Welch's t interval over the seed-level values of ``metrics.json``::

    diff = x̄ − ȳ,  se² = s_x²/n_x + s_y²/n_y,  ν = se⁴ / [ (s_x²/n_x)²/(n_x − 1) + (s_y²/n_y)²/(n_y − 1) ],
    interval = diff ± t_{ν, 1−α/2} · se        (s = sample std, ddof=1; needs n ≥ 2 seeds on each side)

It measures spread across training seeds, not test-sample noise, and is marked ``†`` in the tables.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from goracs.evaluation.records import FILENAME, RANKED, RANK_COLUMNS, auc, floats as _floats, sample_values
from goracs.report.tables import (BETTER, BUDGETLESS_METHODS, FALLBACK, FULL_COLUMN, WORSE, Cell, Interval, Table,
                                  budgetless_rows)

log = logging.getLogger("goracs.report")  # the CLI's logger: same name in messages and for filtering

LEVEL = 0.95
_IDENTITY = ("row", "user", "item", "label")  # columns that must agree between record files of one table
_CHUNK_ENTRIES = 1 << 22  # resample-matrix entries per chunk (bounds memory for large test sets)


def attach_intervals(tables: Sequence[Table], reference: str, n_boot: int = 2000, boot_seed: int = 0,
                     explicit: bool = True) -> None:
    """Fill ``intervals`` / ``interval_notes`` (caption sentences) of every table, comparing with ``reference``.

    ``reference`` must be a row value (a method) of some table, else a ``ValueError`` naming ``--reference`` and the
    methods present; with ``explicit=False`` (the default reference) that is a warning and no intervals. Record
    files of one table with different test rows are a ``ValueError`` naming both files.
    """
    if n_boot < 1:
        raise ValueError(f"--n-boot {n_boot}: must be at least 1")
    present = list(dict.fromkeys(row for table in tables for row in table.rows))
    if tables and reference not in present:
        message = f"--reference {reference}: no such {tables[0].row_key} in the sweep (present: {', '.join(present)})"
        if explicit:
            raise ValueError(message)
        log.warning("%s; no intervals", message)
        return
    store = RecordStore()
    for table in tables:
        _attach(table, reference, store, n_boot, boot_seed)
    if store.missing:
        log.warning("%d run(s) have no %s (older runs?): no bootstrap for their cells, a seed-level Welch interval "
                    "(%s) where both sides have >= 2 seeds, else none; e.g. %s", len(store.missing), FILENAME,
                    FALLBACK, store.missing[0])


def paired_bootstrap(method: Sequence[np.ndarray], reference: Sequence[np.ndarray], n_boot: int = 2000,
                     seed: int = 0, labels: Sequence[np.ndarray] | None = None, level: float = LEVEL
                     ) -> Interval | None:
    """Percentile interval of ``T = (1/S) Σ_s [f(x_s) − f(y_s)]`` by resampling rows within each stratum.

    ``method[s]`` / ``reference[s]`` are the aligned per-sample values of stratum s (NaN = null, excluded pairwise).
    Without ``labels`` f is the mean; with ``labels[s]`` (0/1) the values are scores and f is the ROC AUC. Returns
    ``None`` when no stratum has a row left or the point estimate is undefined.
    """
    rng = np.random.default_rng(seed)
    replicates, point, n_rows, strata = np.zeros(n_boot), 0.0, 0, 0
    for s, (x, y) in enumerate(zip(method, reference, strict=True)):
        columns = [x, y] if labels is None else [x, y, labels[s]]
        columns = [np.asarray(c, dtype=np.float64) for c in columns]
        keep = ~np.any(np.isnan(np.stack(columns)), axis=0)
        if not keep.any():
            continue
        stratum = [c[keep] for c in columns]
        point += _statistic(*stratum)
        n = int(keep.sum())
        chunk = max(1, _CHUNK_ENTRIES // n)
        for start in range(0, n_boot, chunk):
            stop = min(n_boot, start + chunk)
            replicates[start:stop] += _statistic(*stratum, weights=_resample_counts(rng, n, stop - start))
        n_rows, strata = n_rows + n, strata + 1
    if strata == 0 or math.isnan(point):
        return None
    replicates = replicates[~np.isnan(replicates)] / strata
    if replicates.size == 0:
        return None
    low, high = np.quantile(replicates, [(1 - level) / 2, (1 + level) / 2])
    return Interval(point / strata, float(low), float(high), n_rows, strata, "bootstrap")


def _statistic(x: np.ndarray, y: np.ndarray, labels: np.ndarray | None = None, weights: np.ndarray | None = None):
    """``f(x) − f(y)`` of one stratum (f = mean, or AUC with ``labels``); with ``weights`` (resample multiplicities,
    shape ``(B, n)``) one value per resample: ``w @ (x − y) / n`` or the weighted AUC difference."""
    if weights is None:
        return float(np.mean(x - y)) if labels is None else auc(labels, x) - auc(labels, y)
    if labels is None:
        return weights @ (x - y) / len(x)
    return _weighted_auc(weights, labels, x) - _weighted_auc(weights, labels, y)


def welch_interval(x: Cell, y: Cell, level: float = LEVEL) -> Interval | None:
    """Welch's t interval of ``x.mean − y.mean`` from seed-level mean, sample std and count (formula above);
    ``None`` unless both sides have at least 2 seeds."""
    nx, ny = len(x.seeds), len(y.seeds)
    if nx < 2 or ny < 2:
        return None
    vx, vy = x.std ** 2 / nx, y.std ** 2 / ny
    diff, se = x.mean - y.mean, math.sqrt(vx + vy)
    if se == 0:
        return Interval(diff, diff, diff, 0, 0, "welch")
    from scipy.stats import t  # lazy: only the fallback needs it

    dof = se ** 4 / (vx ** 2 / (nx - 1) + vy ** 2 / (ny - 1))
    half = float(t.ppf((1 + level) / 2, dof)) * se
    return Interval(diff, diff - half, diff + half, 0, 0, "welch")


def backing(metric: str) -> str | None:
    """How per-sample records back ``metric``: ``"mean"`` (mean of per-sample values), ``"auc"`` or ``None``."""
    name = metric.removeprefix("test/")
    if not metric.startswith("test/"):
        return None
    if name == "auc":
        return "auc"
    ranked = RANKED.fullmatch(name)
    if name in ("loss", "logloss", "accuracy", "exact_match") or (ranked and ranked[3] in RANK_COLUMNS):
        return "mean"
    return None


class RecordStore:
    """``test_outputs.parquet`` per ``metrics.json`` path, read once and sorted by ``row``; ``missing`` lists the
    runs without one. :meth:`check_rows` enforces equal test rows among the files of one table."""

    def __init__(self) -> None:
        self._frames: dict[str, pd.DataFrame | None] = {}
        self._checked: set[tuple[str, ...]] = set()
        self.missing: list[str] = []

    def get(self, metrics_path: str) -> pd.DataFrame | None:
        if metrics_path not in self._frames:
            path = Path(metrics_path).parent / FILENAME
            frame = None
            if path.is_file():
                try:
                    frame = pd.read_parquet(path)
                except (OSError, ValueError) as err:
                    raise ValueError(f"{path} is not a readable parquet file ({err})") from err
                if "row" not in frame.columns:
                    raise ValueError(f"{path} has no 'row' column (the stable test-row id)")
                frame = frame.sort_values("row", kind="stable").reset_index(drop=True)
            else:
                self.missing.append(metrics_path)
            self._frames[metrics_path] = frame
        return self._frames[metrics_path]

    def check_rows(self, metrics_paths: Sequence[str]) -> None:
        """``ValueError`` naming both files when two record files differ in their ``row`` ids or, for one id, in
        ``user`` / ``item`` / ``label`` (e.g. runs with different ``data_seed``)."""
        key = tuple(sorted(set(metrics_paths)))
        if key in self._checked:
            return
        present = [(Path(p).parent / FILENAME, f) for p in key if (f := self.get(p)) is not None]
        for path, frame in present[1:]:
            _compare_rows(present[0][0], present[0][1], path, frame)
        self._checked.add(key)


def _attach(table: Table, reference: str, store: RecordStore, n_boot: int, boot_seed: int) -> None:
    """Intervals of every cell of ``table`` against ``reference`` (pairing rules in the module docstring)."""
    if reference not in table.rows:
        table.interval_notes.append(f"No intervals: the reference {reference} has no run in this table.")
        return
    kind = backing(table.metric)
    if kind is None:
        table.interval_notes.append(f"No intervals: {table.metric} has no per-sample values.")
        return
    table.reference = reference
    store.check_rows([p for cell in table.cells.values() for p in cell.paths])
    budgetless = budgetless_rows(table)
    ref_budgetless = budgetless and reference in BUDGETLESS_METHODS
    lacking: dict[str, list[str]] = defaultdict(list)
    for row, col in table.applicable:
        cell = table.cells.get((row, col))
        ref = table.cells.get((reference, FULL_COLUMN if ref_budgetless else col))
        if row == reference or cell is None:
            continue
        if budgetless and col == FULL_COLUMN and not ref_budgetless:
            lacking[f"budget-less, the reference {reference} is budgeted"].append(row)
            continue
        if ref is None:
            continue  # the reference's gap is listed among the table's problems
        interval, reason = _cell_interval(cell, ref, table.metric, kind, store, n_boot, boot_seed)
        if interval is None:
            lacking[reason].append(f"{row} @ {col}")
        else:
            table.intervals[(row, col)] = interval
    table.interval_notes += _notes(table, n_boot, boot_seed, lacking)


def _cell_interval(cell: Cell, ref: Cell, metric: str, kind: str, store: RecordStore, n_boot: int,
                   boot_seed: int) -> tuple[Interval | None, str]:
    """The bootstrap interval of one cell, or the Welch fallback when records are missing; with a reason if none."""
    refs = dict(zip(ref.seeds, ref.paths))
    pairs = ([(p, ref.paths[0]) for p in cell.paths] if len(ref.seeds) == 1
             else [(p, refs[s]) for s, p in zip(cell.seeds, cell.paths) if s in refs])
    if not pairs:
        return None, "no seed shared with the reference"
    strata = []
    for method_path, ref_path in pairs:
        frames = store.get(method_path), store.get(ref_path)
        values = [None if f is None else sample_values(f, metric) for f in frames]
        if any(v is None for v in values):
            interval = welch_interval(cell, ref)
            return interval, f"no {FILENAME} with {metric} and < 2 seeds on a side"
        strata.append((*values, _floats(frames[0], "label") if kind == "auc" else None))
    method, reference, labels = zip(*strata)
    interval = paired_bootstrap(method, reference, n_boot, boot_seed, labels if kind == "auc" else None)
    return interval, "no paired non-null test row (or a single label class)"


def _notes(table: Table, n_boot: int, boot_seed: int, lacking: dict[str, list[str]]) -> list[str]:
    """Caption sentences: the interval legend, the method behind it, the fallback and the cells without one."""
    ref, kinds = table.reference, {ci.kind for ci in table.intervals.values()}
    notes = []
    if kinds:
        notes.append(f"[low, high]: {LEVEL:.0%} interval of the difference method − {ref}; {BETTER} / {WORSE}: "
                     f"it excludes 0, better / worse than {ref}; (ref): the reference.")
    if "bootstrap" in kinds:
        notes.append(f"Paired bootstrap over test rows, seeds as strata ({n_boot} resamples, boot seed {boot_seed}): "
                     f"test-sample noise given the trained seeds.")
    if "welch" in kinds:
        notes.append(f"{FALLBACK}: Welch t interval over seed means (no per-sample {FILENAME}: older runs), "
                     f"measures training noise across seeds.")
    notes += [f"No interval for {', '.join(cells)} ({reason})." for reason, cells in lacking.items()]
    return notes


def _weighted_auc(weights: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC AUC per row of ``weights`` (multiplicities, shape ``(B, n)``), ties counted half; NaN if a class is
    absent. Rank based: scores sorted once, weights summed per distinct score, negatives below by cumulative sum."""
    order = np.argsort(scores, kind="stable")
    sorted_scores, positive = scores[order], labels[order] == 1
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    w = weights[:, order].astype(np.float64)
    pos = np.add.reduceat(np.where(positive, w, 0.0), starts, axis=1)
    neg = np.add.reduceat(np.where(positive, 0.0, w), starts, axis=1)
    num = (pos * (np.cumsum(neg, axis=1) - 0.5 * neg)).sum(axis=1)
    den = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def _resample_counts(rng: np.random.Generator, n: int, b: int) -> np.ndarray:
    """Multiplicities ``(b, n)`` of ``b`` draws of ``n`` row indices with replacement."""
    idx = rng.integers(0, n, size=(b, n)) + (np.arange(b) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=b * n).reshape(b, n)


def _compare_rows(path_a: Path, a: pd.DataFrame, path_b: Path, b: pd.DataFrame) -> None:
    if len(a) != len(b) or not np.array_equal(a["row"].to_numpy(), b["row"].to_numpy()):
        only = sorted(set(a["row"]) ^ set(b["row"]))
        raise ValueError(f"{path_a} and {path_b} have different test rows ({len(a)} vs {len(b)} rows; "
                         f"row {only[0] if only else '?'} is in one only): runs with different data_seed?")
    for column in _IDENTITY[1:]:
        if column in a.columns and column in b.columns:
            differ = a[column].astype("string").ne(b[column].astype("string")).fillna(True).to_numpy()
            differ &= ~(a[column].isna() & b[column].isna()).to_numpy()
            if differ.any():
                i = int(np.flatnonzero(differ)[0])
                raise ValueError(f"{path_a} and {path_b} have different test rows: row {a['row'].iloc[i]} has "
                                 f"{column} {a[column].iloc[i]!r} vs {b[column].iloc[i]!r} (different data_seed?)")
