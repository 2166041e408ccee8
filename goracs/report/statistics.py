"""Intervals and verdicts of ``method − reference`` for ``goracs-report``: a seed-aware t interval (the verdict),
Holm within each table, and a secondary test-noise interval (user-clustered bootstrap over the shared test rows).

:func:`attach_intervals` is the entry point: it fills ``Table.intervals``, ``Table.interval_notes`` and
``Table.components`` of every table from the ``metrics.json`` values and the ``test_outputs.parquet`` beside each
(schema: :mod:`goracs.evaluation.records`). The statistics are :func:`t_test`, :func:`row_terms`,
:func:`influence` / :func:`auc_influence`, :func:`holm` and :func:`noise_interval`; ``docs/statistics.md`` explains
them for readers, with the calibration that shows they hold at 3–10 seeds.

Model. The metric of job (method m, seed s) on the shared test rows is ``Y_ms = μ_m + b_ms + e_ms``: ``μ_m`` the
method's population value, ``b_ms`` training randomness (coreset draw, data order, dropout; independent across
jobs), ``e_ms`` test-row noise (the test rows are one sample of users; ``e`` is shared by all jobs through the rows,
partly method-specific). The cell compares ``D = Ȳ_m − Ȳ_r`` (means of the cells' ``metrics.json`` values) with
the reference r::

    Var(D) = seed_var + row_var
    seed_var = s²_pool (1/n_m + 1/n_r)           pooled: s²_pool = Σ_k (n_k − 1) s_k² / Σ_k (n_k − 1) over the
                                                 trained methods of the column, df_seed = Σ_k (n_k − 1)
             or s_m²/n_m + s_r²/n_r              pair: each side its own sample variance, df n_m − 1 and n_r − 1
    row_var  = max(0, P − η_m/n_m − η_r/n_r)     test rows, clustered by user, df G − 1

A seed-less reference (``none``: no training) has no ``1/n_r`` seed term. The user-level influence of a job is
``φ_ms,u = Σ_{i ∈ u} (x_msi − Y_ms) / N`` for a mean-type metric (N non-null rows) and the DeLong placement
deviation for the AUC (:func:`auc_influence`); with ``ψ_u = mean_s φ_ms,u − mean_s φ_rs,u`` and G users::

    P   = G/(G − 1) Σ_u (ψ_u − ψ̄)²                                 sandwich variance of D over users
    η_k = G/(G − 1) Σ_s Σ_u (φ_ks,u − φ̄_k,u)² / (n_k − 1)         per-job seed × row noise (0 when n_k = 1)

``P`` alone would count the seed × row part of the noise twice (it is already in ``s²``), hence the subtraction.
The interval is ``D ± t_{ν, 0.975} · se`` with ``se² = seed_var + row_var`` and Satterthwaite's
``ν = se⁴ / Σ_j (v_j² / df_j)`` over the variance terms; ``p = 2 · t_ν.sf(|D| / se)``. ``auto`` (default) pools
below ``POOL_BELOW`` seeds per cell and uses the pair's own variances from there on. Without per-sample records
the row term is dropped (``seed-only``, ``†``). A comparison whose ``se`` is 0 gets no interval (never a
zero-width one).

Verdict: ``▲`` / ``▼`` when the Holm-adjusted p-value (family: every comparison of the table) is below 0.05 and both
cells have at least ``--min-seeds`` seeds (a seed-less reference counts as enough).

Test-noise interval (secondary; ``noise_low`` / ``noise_high``): B replicates, each one draw of G users with
replacement shared by every job of the table (all seeds, all methods); job metric ``Y*_msb`` on the resampled rows
(weighted mean, or weighted AUC), ``D*_b = mean_s Y*_msb − mean_s Y*_rsb``, percentile interval. It holds the
trained models fixed: how much the difference would move with other test users, not with other training seeds.
``numpy.random.default_rng(boot_seed)`` draws one user-count matrix per table, so it is a function of the inputs.
"""

from __future__ import annotations

import logging
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from goracs.evaluation.records import (FILENAME, RANKED, RANK_COLUMNS, floats as _floats, read_records,
                                       sample_values)
from goracs.report.tables import (BETTER, BUDGETLESS_METHODS, FALLBACK, FULL_COLUMN, SEEDLESS_METHODS, WORSE, Cell,
                                  Interval, Table, budgetless_rows)

log = logging.getLogger("goracs.report")  # the CLI's logger: same name in messages and for filtering

LEVEL = 0.95
ALPHA = 1 - LEVEL
MIN_SEEDS = 3  # fewer seeds per cell: intervals but no markers (docs/statistics.md, "Minimum seed count")
POOL_BELOW = 5  # seed_variance="auto": pooled below this many seeds per cell, the pair's own variances from it on
ADJUSTMENTS = ("holm", "none")
SEED_VARIANCES = ("auto", "pooled", "pair")
SHOWN = ("seed-aware", "test-noise")
_IDENTITY = ("row", "user", "item", "label")  # columns that must agree between record files of one table
_CHUNK_ENTRIES = 1 << 22  # weight-matrix entries per chunk of the AUC bootstrap (bounds memory)


def attach_intervals(tables: Sequence[Table], reference: str, n_boot: int = 2000, boot_seed: int = 0,
                     explicit: bool = True, adjust: str = "holm", min_seeds: int = MIN_SEEDS,
                     seed_variance: str = "auto", shown: str = "seed-aware") -> None:
    """Fill ``intervals`` / ``interval_notes`` / ``components`` of every table, comparing with ``reference``.

    ``reference`` must be a row value (a method) of some table, else a ``ValueError`` naming ``--reference`` and the
    methods present; with ``explicit=False`` (the default reference) that is a warning and no intervals. Record
    files of one table with different test rows are a ``ValueError`` naming both files.
    """
    for name, value, allowed in (("--adjust", adjust, ADJUSTMENTS), ("--seed-variance", seed_variance,
                                                                      SEED_VARIANCES), ("--interval", shown, SHOWN)):
        if value not in allowed:
            raise ValueError(f"{name} {value}: expected one of {', '.join(allowed)}")
    if n_boot < 1:
        raise ValueError(f"--n-boot {n_boot}: must be at least 1")
    if min_seeds < 2:
        raise ValueError(f"--min-seeds {min_seeds}: must be at least 2 (one seed has no between-seed variance)")
    present = list(dict.fromkeys(row for table in tables for row in table.rows))
    if tables and reference not in present:
        message = f"--reference {reference}: no such {tables[0].row_key} in the sweep (present: {', '.join(present)})"
        if explicit:
            raise ValueError(message)
        log.warning("%s; no intervals", message)
        return
    store = RecordStore()
    options = dict(n_boot=n_boot, boot_seed=boot_seed, min_seeds=min_seeds, seed_variance=seed_variance)
    without_values = []
    for table in tables:
        table.adjust, table.shown = adjust, shown
        if backing(table.metric) is None and reference in table.rows:
            without_values.append(table.metric)
        _attach(table, reference, store, **options)
    for metric in dict.fromkeys(without_values):
        log.warning("--metric %s: no per-sample values in %s back it, so no interval and no marker "
                    "(only test/* metrics of goracs.evaluation.records have them)", metric, FILENAME)
    for table in tables:
        if any(not ci.marked for ci in table.intervals.values()):
            log.warning("%s: %s %s has cells with fewer than %d seeds (--min-seeds): intervals printed, no markers",
                        _folder(table), table.title, table.metric, min_seeds)
    if store.missing:
        log.warning("%d run(s) have no %s (older runs?): their cells get a seed-only interval (%s), without the "
                    "test-row term; e.g. %s", len(store.missing), FILENAME, FALLBACK, store.missing[0])


# ---------------------------------------------------------------------------------------------- the statistics


def t_test(diff, terms, dfs, level: float = LEVEL) -> tuple[np.ndarray, ...]:
    """Satterthwaite t interval of ``diff`` whose variance is the sum of independent estimated terms.

    ``diff`` (shape ``(...)``), ``terms`` and ``dfs`` (``(..., K)``: variance terms and their degrees of freedom;
    ``inf`` for a known term). Returns ``se, df, low, high, p`` with ``se² = Σ terms``,
    ``df = se⁴ / Σ (term² / df)``, ``[low, high] = diff ± t_{df, (1+level)/2} · se``, ``p = 2 · t_df.sf(|diff|/se)``.
    Vectorised over the leading axes (the calibration test runs thousands of simulated tables at once).
    """
    from scipy.stats import t  # lazy: the report imports only pandas/numpy up front

    terms = np.asarray(terms, dtype=np.float64)
    dfs = np.broadcast_to(np.asarray(dfs, dtype=np.float64), terms.shape)
    var = terms.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = var ** 2 / np.where(terms > 0, terms ** 2 / dfs, 0.0).sum(axis=-1)
        se = np.sqrt(var)
        half = t.ppf((1 + level) / 2, df) * se
        p = 2 * t.sf(np.abs(diff) / se, df)
    return se, df, diff - half, diff + half, p


def row_terms(phi_m: np.ndarray, phi_r: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``P``, ``η_m / n_m`` and ``η_r / n_r`` (module docstring) from user influences ``phi_m`` (``(..., n_m, G)``)
    and ``phi_r`` (``(..., n_r, G)``); the row term is ``max(0, P − η_m/n_m − η_r/n_r)``."""
    n_users = phi_m.shape[-1]
    scale = n_users / (n_users - 1)
    psi = phi_m.mean(axis=-2) - phi_r.mean(axis=-2)
    plug = scale * ((psi - psi.mean(axis=-1, keepdims=True)) ** 2).sum(axis=-1)
    return plug, seed_row_noise(phi_m) / phi_m.shape[-2], seed_row_noise(phi_r) / phi_r.shape[-2]


def seed_row_noise(phi: np.ndarray) -> np.ndarray:
    """``η`` of one cell: the per-job variance of the user-level metric not shared by the cell's seeds,
    ``G/(G − 1) Σ_s Σ_u (φ_s,u − φ̄_u)² / (n − 1)``; 0 with one seed (then it stays inside ``P``: conservative)."""
    n, n_users = phi.shape[-2], phi.shape[-1]
    if n < 2:
        return np.zeros(phi.shape[:-2])
    deviation = phi - phi.mean(axis=-2, keepdims=True)
    return n_users / (n_users - 1) * (deviation ** 2).sum(axis=(-2, -1)) / (n - 1)


def influence(values: np.ndarray, users: np.ndarray, n_users: int) -> tuple[float, np.ndarray]:
    """Mean of the non-NaN ``values`` and its user influence ``φ_u = Σ_{i ∈ u} (x_i − x̄) / N`` (``users``: integer
    codes 0..G−1 per row). ``Σ_u φ_u² ·G/(G−1)`` is the user-clustered sandwich variance of the mean."""
    keep = ~np.isnan(values)
    if not keep.any():
        return math.nan, np.zeros(n_users)
    mean = float(values[keep].mean())
    phi = np.bincount(users[keep], weights=(values[keep] - mean) / keep.sum(), minlength=n_users)
    return mean, phi


def auc_influence(labels: np.ndarray, scores: np.ndarray, users: np.ndarray, n_users: int
                  ) -> tuple[float, np.ndarray]:
    """ROC AUC (ties half) and its user influence from DeLong's placement values: a positive i contributes
    ``(V_i − A)/n_pos`` with ``V_i`` the share of negatives below it, a negative j ``(V_j − A)/n_neg`` with ``V_j``
    the share of positives above it; summed per user. NaN and zeros when a class is absent."""
    from scipy.stats import rankdata

    keep = ~(np.isnan(labels) | np.isnan(scores))
    labels, scores, users = labels[keep], scores[keep], users[keep]
    positive = labels == 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan, np.zeros(n_users)
    rank_all = rankdata(scores)
    placement = np.empty(len(scores))
    placement[positive] = (rank_all[positive] - rankdata(scores[positive])) / n_neg
    placement[~positive] = 1.0 - (rank_all[~positive] - rankdata(scores[~positive])) / n_pos
    area = float(placement[positive].mean())
    contribution = np.where(positive, (placement - area) / n_pos, (placement - area) / n_neg)
    return area, np.bincount(users, weights=contribution, minlength=n_users)


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values: ``p_(i)`` sorted ascending, ``adj_(i) = max_{j ≤ i} min(1, (m−j+1) p_(j))``;
    rejecting ``adj < α`` controls the family-wise error rate at α for any dependence between the tests."""
    p = np.asarray(p, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    steps = np.minimum(1.0, (len(p) - np.arange(len(p))) * p[order])
    adjusted = np.empty_like(p)
    adjusted[order] = np.maximum.accumulate(steps)
    return adjusted


def noise_interval(method: Sequence[np.ndarray], reference: Sequence[np.ndarray], level: float = LEVEL
                   ) -> tuple[float, float]:
    """Percentile interval of ``D*_b = mean_s Y*_msb − mean_s Y*_rsb`` from per-job replicate vectors (one per seed,
    all drawn with the same user resamples); replicates with an undefined metric are dropped."""
    replicates = np.mean(method, axis=0) - np.mean(reference, axis=0)
    replicates = replicates[~np.isnan(replicates)]
    if replicates.size == 0:
        return math.nan, math.nan
    low, high = np.quantile(replicates, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


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


# ------------------------------------------------------------------------------------------ records and the table


class RecordStore:
    """``test_outputs.parquet`` per ``metrics.json`` path, read once (hive partitioning off) and sorted by ``row``;
    ``missing`` lists the runs without one. :meth:`check_rows` enforces equal test rows within one table."""

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
                    frame = read_records(path)
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


class _Jobs:
    """Per-job metric values, user influences and test-noise replicates of one table (one user resample draw)."""

    def __init__(self, table: Table, store: RecordStore, kind: str, n_boot: int, boot_seed: int) -> None:
        self.table, self.store, self.kind, self.n_boot, self.boot_seed = table, store, kind, n_boot, boot_seed
        first = next((f for cell in table.cells.values() for p in cell.paths if (f := store.get(p)) is not None),
                     None)
        users = first["user"].astype("string").fillna("") if first is not None and "user" in first else None
        if first is None:
            self.users, self.n_users = np.zeros(0, dtype=np.int64), 0
        elif users is None:  # no user column: every row its own cluster
            self.users, self.n_users = np.arange(len(first)), len(first)
        else:
            codes, uniques = pd.factorize(users)
            self.users, self.n_users = codes.astype(np.int64), len(uniques)
        self._counts: np.ndarray | None = None
        self._cache: dict[str, tuple[float, np.ndarray, int] | None] = {}
        self._replicates: dict[str, np.ndarray] = {}

    def stats(self, path: str) -> tuple[float, np.ndarray, int] | None:
        """``(metric from the records, user influence φ, non-null rows)``, or None without records/values."""
        if path not in self._cache:
            frame = self.store.get(path)
            values = None if frame is None else sample_values(frame, self.table.metric)
            if values is None or self.n_users < 2:
                self._cache[path] = None
            elif self.kind == "auc":
                labels, scores = _floats(frame, "label"), np.asarray(values, dtype=np.float64)
                if labels is None:
                    raise ValueError(f"{Path(path).parent / FILENAME} has p_yes but no 'label' column (test/auc)")
                value, phi = auc_influence(labels, scores, self.users, self.n_users)
                self._cache[path] = (value, phi, int((~np.isnan(scores)).sum()))
            else:
                values = np.asarray(values, dtype=np.float64)
                value, phi = influence(values, self.users, self.n_users)
                self._cache[path] = (value, phi, int((~np.isnan(values)).sum()))
        return self._cache[path]

    def replicates(self, path: str) -> np.ndarray:
        """The job's metric on each of the table's ``n_boot`` user resamples (same draws for every job)."""
        if path not in self._replicates:
            if self._counts is None:  # one draw per table: G users with replacement, n_boot times
                rng = np.random.default_rng(self.boot_seed)
                self._counts = rng.multinomial(self.n_users, np.full(self.n_users, 1 / self.n_users),
                                               size=self.n_boot).astype(np.float64)
            frame = self.store.get(path)
            values = np.asarray(sample_values(frame, self.table.metric), dtype=np.float64)
            keep = ~np.isnan(values)
            if self.kind == "auc":
                labels = _floats(frame, "label")
                keep &= ~np.isnan(labels)
                weights = self._counts[:, self.users[keep]]
                chunk = max(1, _CHUNK_ENTRIES // max(1, keep.sum()))
                out = np.concatenate([_weighted_auc(weights[i:i + chunk], labels[keep], values[keep])
                                      for i in range(0, self.n_boot, chunk)])
            else:
                sums = np.bincount(self.users[keep], weights=values[keep], minlength=self.n_users)
                counts = np.bincount(self.users[keep], minlength=self.n_users)
                with np.errstate(invalid="ignore", divide="ignore"):
                    out = (self._counts @ sums) / (self._counts @ counts)
            self._replicates[path] = out
        return self._replicates[path]


def _attach(table: Table, reference: str, store: RecordStore, n_boot: int, boot_seed: int, min_seeds: int,
            seed_variance: str) -> None:
    """Intervals of every cell of ``table`` against ``reference`` (the module docstring), then Holm, then notes."""
    if reference not in table.rows:
        table.interval_notes.append(f"No intervals: the reference {reference} has no run in this table.")
        return
    kind = backing(table.metric)
    if kind is None:
        table.interval_notes.append(f"No intervals: {table.metric} has no per-sample values.")
        return
    table.reference = reference
    store.check_rows([p for cell in table.cells.values() for p in cell.paths])
    jobs = _Jobs(table, store, kind, n_boot, boot_seed)
    pooled = {col: _pooled(table, col) for col in table.cols}
    budgetless = budgetless_rows(table)
    ref_budgetless = budgetless and reference in BUDGETLESS_METHODS
    lacking: dict[str, list[str]] = defaultdict(list)
    modes: set[str] = set()
    pooled_dfs: set[int] = set()
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
        interval, reason, mode = _compare(table, row, cell, ref, pooled[col], jobs, seed_variance, min_seeds)
        if interval is None:
            lacking[reason].append(f"{row} @ {col}")
        else:
            table.intervals[(row, col)] = interval
            modes.add(mode)
            pooled_dfs |= {pooled[col][1]} if mode == "pooled" else set()
    keys = list(table.intervals)
    adjusted = holm([table.intervals[k].p for k in keys]) if table.adjust == "holm" else None
    for i, key in enumerate(keys):
        table.intervals[key].p_adj = float(adjusted[i]) if adjusted is not None else table.intervals[key].p
    table.components = {col: _components(table, col, pooled[col], jobs, reference) for col in table.cols}
    table.interval_notes += _notes(table, n_boot, boot_seed, min_seeds, jobs.n_users, modes, pooled_dfs, lacking)


def _compare(table: Table, row: str, cell: Cell, ref: Cell, pooled: tuple[float, int], jobs: _Jobs,
             seed_variance: str, min_seeds: int) -> tuple[Interval | None, str, str]:
    """One cell against its reference cell: ``(interval or None, reason when None, seed-variance mode used)``."""
    seedless = {name for name in (row, table.reference)
                if table.row_key == "selection" and name in SEEDLESS_METHODS}
    n_m, n_r = len(cell.seeds), len(ref.seeds)
    mode = seed_variance if seed_variance != "auto" else (
        "pooled" if min(n for name, n in ((row, n_m), (table.reference, n_r)) if name not in seedless) < POOL_BELOW
        else "pair")
    inverse = [0.0 if name in seedless else 1 / n for name, n in ((row, n_m), (table.reference, n_r))]
    if mode == "pooled":
        s2, df = pooled
        terms, dfs = [s2 * sum(inverse)], [df]
        if df < 1:
            return None, "no method of the column has 2 seeds: no between-seed variance", mode
    else:
        terms, dfs = [], []
        for (name, c), inv in zip(((row, cell), (table.reference, ref)), inverse):
            if inv == 0.0:
                continue
            if len(c.seeds) < 2:
                return None, "fewer than 2 seeds on a side (--seed-variance pair)", mode
            terms.append(c.std ** 2 * inv)
            dfs.append(len(c.seeds) - 1)
    seed_var, row_var = float(sum(terms)), 0.0
    stats_m = [jobs.stats(p) for p in cell.paths]
    stats_r = [jobs.stats(p) for p in ref.paths]
    kind, noise, n_rows, n_users = "seed-only", (math.nan, math.nan), 0, 0
    if all(s is not None for s in stats_m + stats_r):
        plug, eta_m, eta_r = row_terms(np.stack([s[1] for s in stats_m]), np.stack([s[1] for s in stats_r]))
        row_var = max(0.0, float(plug - eta_m - eta_r))
        terms.append(row_var)
        dfs.append(jobs.n_users - 1)
        kind, n_rows, n_users = "seed-aware", stats_m[0][2], jobs.n_users
        noise = noise_interval([jobs.replicates(p) for p in cell.paths], [jobs.replicates(p) for p in ref.paths])
    diff = cell.mean - ref.mean
    scale = max(abs(cell.mean), abs(ref.mean), 1.0)
    if not math.sqrt(seed_var + row_var) > 1e-9 * scale:  # 0 up to rounding (np.std of equal values is ~1e-17)
        return None, "zero variance across seeds and test rows (identical runs?)", mode
    se, df, low, high, p = (float(v) for v in t_test(diff, np.array(terms), np.array(dfs, dtype=np.float64)))
    marked = all(n >= min_seeds for name, n in ((row, n_m), (table.reference, n_r)) if name not in seedless)
    return Interval(diff, low, high, kind, se=se, df=df, p=p, seed_var=seed_var, row_var=row_var,
                    noise_low=noise[0], noise_high=noise[1], n_rows=n_rows, n_users=n_users, marked=marked), "", mode


def _pooled(table: Table, col: str) -> tuple[float, int]:
    """``(s²_pool, df)`` over the trained rows of column ``col`` with at least 2 seeds (seed-less rows excluded)."""
    num, df = 0.0, 0
    for row in table.rows:
        cell = table.cells.get((row, col))
        if cell is None or len(cell.seeds) < 2 or (table.row_key == "selection" and row in SEEDLESS_METHODS):
            continue
        num += (len(cell.seeds) - 1) * cell.std ** 2
        df += len(cell.seeds) - 1
    return (num / df if df else math.nan), df


def _components(table: Table, col: str, pooled: tuple[float, int], jobs: _Jobs, reference: str) -> dict:
    """The column's variance components for the planner (:mod:`goracs.report.planner`): pooled seed variance of a
    job's metric and its df, the mean per-job seed × row noise ``η`` and the mean row term ``P − η`` of the
    column's comparisons (the method × test-row part, which more seeds do not shrink), rows, users, seeds."""
    etas, rows, n_seeds, diffs = [], [], [], []
    trained = [r for r in table.rows if (r, col) in table.cells
               and not (table.row_key == "selection" and r in SEEDLESS_METHODS)]
    for row in trained:
        cell = table.cells[(row, col)]
        stats = [jobs.stats(p) for p in cell.paths]
        n_seeds.append(len(cell.seeds))
        if len(stats) >= 2 and all(s is not None for s in stats):
            etas.append(float(seed_row_noise(np.stack([s[1] for s in stats]))))
    for (row, c), ci in table.intervals.items():
        if c == col:
            diffs.append(ci.diff)
            if ci.kind == "seed-aware":
                rows.append(ci.row_var)
    return {"seed_var": pooled[0], "seed_df": pooled[1], "eta": float(np.mean(etas)) if etas else math.nan,
            "row_var": float(np.mean(rows)) if rows else math.nan, "n_users": jobs.n_users,
            "n_rows": next((ci.n_rows for (r, c), ci in table.intervals.items() if c == col and ci.n_rows), 0),
            "seeds": max(n_seeds, default=0), "methods": len(trained), "diffs": diffs,
            "reference_seedless": table.row_key == "selection" and reference in SEEDLESS_METHODS}


def _notes(table: Table, n_boot: int, boot_seed: int, min_seeds: int, n_users: int, modes: set[str],
           pooled_dfs: set[int], lacking: dict[str, list[str]]) -> list[str]:
    """Caption sentences: what the interval covers, the family of the markers, the fallbacks, the cells without."""
    ref, intervals = table.reference, table.intervals
    kinds = {ci.kind for ci in intervals.values()}
    notes = []
    if intervals and table.shown == "test-noise":
        notes.append(f"[low, high]: test-noise interval of method − {ref} (user-clustered bootstrap over test rows, "
                     f"{n_boot} resamples, boot seed {boot_seed}): the trained seeds held fixed, so no verdict is "
                     f"marked (the seed-aware interval is in the CSV).")
    elif intervals:
        spread = {"pooled": "between-seed variance pooled over the column's methods (df "
                            + "/".join(map(str, sorted(pooled_dfs))) + ")",
                  "pair": "between-seed variance of each pair"}
        sources = " and ".join(spread[m] for m in sorted(modes))
        rows = f" plus test rows clustered by user ({n_users} users)" if "seed-aware" in kinds else ""
        notes.append(f"[low, high]: seed-aware 95% t interval of method − {ref}: {sources}{rows}.")
        family = (f"Holm-adjusted p < 0.05 within this table (family: its {len(intervals)} comparisons with {ref})"
                  if table.adjust == "holm" else "unadjusted p < 0.05 (--adjust none)")
        notes.append(f"{BETTER} / {WORSE}: better / worse than {ref} at {family}; (ref): the reference.")
        if not all(ci.marked for ci in intervals.values()):
            notes.append(f"No markers where a cell has fewer than {min_seeds} seeds (--min-seeds): too few for a "
                         f"verdict on training randomness.")
        if "seed-only" in kinds:
            notes.append(f"{FALLBACK}: seed-only interval (no per-sample {FILENAME}): misses the test-row term.")
    notes += [f"No interval for {', '.join(cells)} ({reason})." for reason, cells in lacking.items()]
    return notes


def _folder(table: Table) -> str:
    """The folder holding every run of ``table`` (the sweep dir, for messages)."""
    parents = [str(Path(p).parent) for cell in table.cells.values() for p in cell.paths]
    return os.path.commonpath(parents) if parents else "?"


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
