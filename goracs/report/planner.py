"""The seed planner of ``goracs-report DIR --plan``: how many seeds (and test rows) a comparison needs.

A pilot sweep gives, per table and column (budget), the variance components of :mod:`goracs.report.statistics`
(``Table.components``): the pooled between-seed variance of a job's metric ``s²`` at the pilot's ``N₀`` test rows,
its seed × test-row part ``η`` (which shrinks with more rows) and the method × test-row term ``R`` of a comparison
(which more seeds do not shrink). With ``n`` seeds per method and ``f · N₀`` test rows (``f · G₀`` users, the same
rows per user), the variance of a difference to the reference is::

    V(n, f) = (σ²_b + η / f) (1/n + ρ/n) + R / f,      σ²_b = max(0, s² − η),   ρ = 0 for a seed-less reference

with the df of the report's test (pooled ``k (n − 1)`` below 5 seeds, the pair's ``2 (n − 1)`` from 5 on,
Satterthwaite with the row term's ``f G₀ − 1``). The power to resolve a difference Δ at two-sided level α is
``P(|T| > t_{ν, 1 − α/2})`` for ``T`` noncentral t with ν df and noncentrality ``Δ / √V``. With Holm (the report's
default) α is ``0.05 / m`` for the table's ``m`` comparisons: the first Holm step, so the plan is conservative.

Per line of ``plan.csv``: the smallest ``n ≤ --max-seeds`` reaching ``--power`` at the pilot's rows
(``seeds_needed``) and at 4× the rows (``seeds_needed_4x_rows``), and the smallest row count reaching it at the
pilot's seed count (``rows_needed``; empty when even infinitely many rows would not, because the seed term alone is
too large). Δ defaults to the smallest |difference| of the table; ``--plan-diff`` adds others.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from goracs.report.statistics import ALPHA, POOL_BELOW
from goracs.report.tables import Table

_ROW_FACTORS = (1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)


def plan_seeds(tables: Sequence[Table], diffs: Sequence[float] | None = None, power: float = 0.8,
               max_seeds: int = 100) -> pd.DataFrame:
    """One line per table, column with comparisons and difference Δ (columns: module docstring)."""
    if not 0 < power < 1:
        raise ValueError(f"--power {power}: expected a number between 0 and 1")
    if max_seeds < 2:
        raise ValueError(f"--max-seeds {max_seeds}: must be at least 2")
    if diffs and any(not d > 0 for d in diffs):
        raise ValueError(f"--plan-diff {', '.join(map(str, diffs))}: differences must be positive")
    lines = []
    for table in tables:
        if not table.intervals:
            continue
        alpha = ALPHA / len(table.intervals) if table.adjust == "holm" else ALPHA
        observed = [abs(ci.diff) for ci in table.intervals.values() if ci.diff != 0]
        targets = [(d, "--plan-diff") for d in diffs or []] or (
            [(min(observed), "smallest in table")] if observed else [])
        for col, parts in table.components.items():
            if not parts.get("diffs") or not parts["seed_var"] >= 0:
                continue
            for delta, source in targets:
                lines.append({"group": table.title, "metric": table.metric, table.col_key: col,
                              "reference": table.reference, "diff": delta, "diff_source": source,
                              **_plan(parts, delta, alpha, power, max_seeds)})
    if not lines:
        raise ValueError("--plan: no table has comparisons with the reference (seed-aware intervals) to plan from")
    return pd.DataFrame.from_records(lines)


def power_of(parts: dict, n: int, f: float, delta: float, alpha: float) -> float:
    """Power of the report's two-sided test at ``n`` seeds per method and ``f`` × the pilot's test rows."""
    from scipy.stats import nct, norm, t

    variance, df = _variance(parts, n, f)
    if not variance > 0:
        return 1.0
    critical = t.ppf(1 - alpha / 2, df)
    shift = delta / math.sqrt(variance)
    with np.errstate(all="ignore"):
        power = float(nct.sf(critical, df, shift) + nct.cdf(-critical, df, shift))
    if math.isnan(power):  # scipy's noncentral t fails far in the tail (power ≈ 1): the normal limit there
        power = float(norm.sf(critical - shift) + norm.cdf(-critical - shift))
    return power


def render_plan(plan: pd.DataFrame) -> str:
    """The plan as a Markdown pipe table (the CLI prints it; ``plan.csv`` has every column)."""
    shown = [c for c in plan.columns if c not in ("group", "diff_source")]
    lines = []
    for group, part in plan.groupby("group", sort=False):
        lines += [f"### seed plan: {group}", "", "| " + " | ".join(shown) + " |",
                  "|" + "|".join("---:" if plan[c].dtype.kind in "fi" else ":---" for c in shown) + "|"]
        lines += ["| " + " | ".join(_text(row[c]) for c in shown) + " |" for _, row in part.iterrows()]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _plan(parts: dict, delta: float, alpha: float, power: float, max_seeds: int) -> dict:
    """Pilot summary, power at the pilot's design and the seed / row counts reaching ``power``."""
    n0, rows0, users0 = parts["seeds"], parts["n_rows"], parts["n_users"]
    eta = parts["eta"] if parts["eta"] >= 0 else 0.0
    row_var = parts["row_var"] if parts["row_var"] >= 0 else 0.0

    def seeds_at(f: float) -> int | None:
        return next((n for n in range(2, max_seeds + 1) if power_of(parts, n, f, delta, alpha) >= power), None)

    rows_needed = None
    if n0 >= 2:
        factor = next((f for f in _ROW_FACTORS if power_of(parts, n0, f, delta, alpha) >= power), None)
        rows_needed = None if factor is None or not rows0 else int(math.ceil(factor * rows0))
    return {"pilot_seeds": n0, "pilot_rows": rows0, "pilot_users": users0, "methods": parts["methods"],
            "seed_sd": math.sqrt(parts["seed_var"]), "seed_sd_training": math.sqrt(max(0.0, parts["seed_var"] - eta)),
            "row_sd": math.sqrt(row_var * rows0) if rows0 else math.nan, "alpha": alpha,
            "power_at_pilot": power_of(parts, n0, 1, delta, alpha) if n0 >= 2 else math.nan,
            "seeds_needed": _or_na(seeds_at(1)), "seeds_needed_4x_rows": _or_na(seeds_at(4)),
            "rows_needed": _or_na(rows_needed)}


def _variance(parts: dict, n: int, f: float) -> tuple[float, float]:
    """``V(n, f)`` and its Satterthwaite df (module docstring)."""
    eta = parts["eta"] if parts["eta"] >= 0 else 0.0
    training = max(0.0, parts["seed_var"] - eta)
    per_job = training + eta / f
    ratio = 0.0 if parts["reference_seedless"] else 1.0
    seed_term = per_job * (1 + ratio) / n
    seed_df = max(1, parts["methods"]) * (n - 1) if n < POOL_BELOW else (1 + ratio) * (n - 1)
    row_term = (parts["row_var"] if parts["row_var"] >= 0 else 0.0) / f
    row_df = max(1.0, f * parts["n_users"] - 1)
    variance = seed_term + row_term
    df = variance ** 2 / (seed_term ** 2 / seed_df + row_term ** 2 / row_df) if variance > 0 else math.inf
    return variance, df


def _or_na(value: int | None):
    return pd.NA if value is None else value


def _text(value) -> str:
    if value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return str(value)
