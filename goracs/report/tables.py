"""Tables for ``goracs-report``: aggregate ok runs into one table per group and metric, check completeness, render.

* rows = ``--rows`` (default ``selection``) in a fixed method order (``METHOD_ORDER``, then others alphabetically),
  columns = ``--cols`` (default ``budget``) in numeric order;
* cell = ``mean ± std`` over seeds, where std is the *sample* standard deviation
  ``sqrt(sum_i (x_i - mean)^2 / (n - 1))`` (ddof=1, pandas' default); a table whose cells hold one seed each shows the
  mean alone, and its caption says "1 seed, no std";
* the budget-less methods ``BUDGETLESS_METHODS`` (``full`` trains on the whole pool, ``none`` evaluates the initial
  adapter without fine-tuning) have a budget that means nothing: all their runs go to a single column ``all`` (first
  column), left blank for the other methods, and their budget columns are blank (a blank is not a missing cell);
* best mean per column (compared at the printed precision, ties all marked) in bold, using ``lower_is_better``
  (logloss/loss and times lower, everything else higher); columns with a single value are not marked;
* with an :class:`Interval` per cell (filled by :mod:`goracs.report.statistics`) the cell reads
  ``mean ± std [low, high] ▲``: ``[low, high]`` the seed-aware 95% interval of ``method − reference``, ``▲`` /
  ``▼`` when the (Holm-adjusted) p-value is below 0.05 on the better / worse side (``lower_is_better`` decides),
  ``†`` after the bracket when the interval is the seed-only fallback; the reference's own cells read
  ``mean ± std (ref)``.

A cell with no run or with fewer seeds than its group is listed in ``Table.problems`` (except ``none``, whose
result does not depend on the seed: one run of it is complete); rendered tables then start with a line
``PARTIAL: ...``, gaps show as ``—`` and incomplete cells say ``(n=k)``. Two ok runs of one cell and seed are
collapsed to the latest (``created_at``) when they share a ``config_key`` (a re-run) or belong to a budget-less
method; otherwise they are a conflict and an error. Rendering: Markdown (pipe table), LaTeX (booktabs) and
long-form CSV.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from goracs.selection.pool import BUDGET_FREE_METHODS

log = logging.getLogger("goracs.report")  # the CLI's logger: same name in messages and for filtering

METHOD_ORDER = ("none", "full", "random", "grand", "el2n", "ccs", "d2", "moderate", "kcenter", "goracs")
BUDGETLESS_METHODS = BUDGET_FREE_METHODS  # budget ignored: one column FULL_COLUMN (the selection stage's list)
SEEDLESS_METHODS = frozenset({"none"})  # no training: φ₀ is fixed by features.lora_seed / lora_init, not by seed
FULL_COLUMN, GAP = "all", "—"
BETTER, WORSE, FALLBACK = "▲", "▼", "†"  # markers: adjusted p < 0.05 (better / worse); seed-only interval
_LATEX_SYMBOLS = {"±": "$\\pm$", BETTER: "$\\blacktriangle$", WORSE: "$\\blacktriangledown$",
                  FALLBACK: "$^\\dagger$", "−": "$-$", GAP: "--"}


class IncompleteTableError(ValueError):
    """A table has missing cells or unequal seed counts; the message lists every gap."""


@dataclass
class Cell:
    """Aggregate of one (row, column) over seeds: mean, sample std (ddof=1; NaN when n == 1), seeds present and
    the ``metrics.json`` path of each seed (same order)."""

    mean: float
    std: float
    seeds: tuple[int, ...]
    paths: tuple[str, ...] = ()


@dataclass
class Interval:
    """Interval and verdict of the difference ``method − reference`` of one cell (:mod:`goracs.report.statistics`).

    ``diff`` is the difference of the cell means; ``[low, high]`` the seed-aware 95% t interval ``diff ± t_{df} · se``
    with ``se² = seed_var + row_var`` (training seeds + test rows; ``kind`` ``"seed-aware"``), or with
    ``row_var = 0`` when per-sample records are missing (``"seed-only"``, marked ``†``); ``p`` its two-sided p-value
    and ``p_adj`` the p-value after the table's multiplicity adjustment. ``[noise_low, noise_high]`` is the secondary
    test-noise interval (user-clustered bootstrap over test rows, the trained seeds held fixed; NaN without records).
    ``n_rows`` / ``n_users``: test rows and users behind the row term. ``marked`` is False when the cell has fewer
    seeds than ``--min-seeds``: the interval is printed, no verdict is.
    """

    diff: float
    low: float
    high: float
    kind: str
    se: float = math.nan
    df: float = math.nan
    p: float = math.nan
    p_adj: float = math.nan
    seed_var: float = math.nan
    row_var: float = math.nan
    noise_low: float = math.nan
    noise_high: float = math.nan
    n_rows: int = 0
    n_users: int = 0
    marked: bool = True

    def significant(self, lower_better: bool, alpha: float = 0.05) -> str:
        """``better`` / ``worse`` when the adjusted p-value is below ``alpha`` and the cell may carry a verdict
        (direction from ``lower_better``), else ``none``."""
        if not self.marked or not self.p_adj < alpha:
            return "none"
        return "better" if (self.diff < 0) == lower_better else "worse"


@dataclass
class Table:
    """One metric for one group: ordered rows/columns, cells, the seeds every cell should have, and its gaps."""

    title: str
    stem: str
    metric: str
    row_key: str
    col_key: str
    rows: list[str]
    cols: list[str]
    cells: dict[tuple[str, str], Cell]
    applicable: list[tuple[str, str]]
    seeds: tuple[int, ...]
    problems: list[str] = field(default_factory=list)
    reference: str | None = None  # row the intervals compare against (None: no intervals)
    intervals: dict[tuple[str, str], Interval] = field(default_factory=dict)
    interval_notes: list[str] = field(default_factory=list)  # caption sentences on the intervals
    adjust: str = "holm"  # multiplicity adjustment of the table's family of comparisons (or "none")
    shown: str = "seed-aware"  # which interval the cells print: "seed-aware" (with markers) or "test-noise"
    components: dict[str, dict] = field(default_factory=dict)  # column -> variance components (the planner's input)

    def missing_seeds(self, row: str, col: str) -> tuple[int, ...]:
        """The table's seeds that the cell lacks; none for a present cell of a seed-less method (``none``)."""
        present = self.cells[(row, col)].seeds if (row, col) in self.cells else ()
        if present and self.row_key == "selection" and row in SEEDLESS_METHODS:
            return ()
        return tuple(s for s in self.seeds if s not in present)


def build_tables(frame: pd.DataFrame, metrics: Sequence[str] | None, row_key: str, col_key: str,
                 group_keys: Sequence[str]) -> list[Table]:
    """One :class:`Table` per group and metric (``metrics=None``: every ``test/*`` key the group reports)."""
    for key in [*group_keys, row_key, col_key, "seed"]:
        blank = frame[key].isna() if key in frame.columns else pd.Series(True, index=frame.index)
        if key == col_key and row_key == "selection" and col_key == "budget":
            blank &= ~frame["selection"].isin(BUDGETLESS_METHODS)  # their budget may be null
        if blank.any():
            lacking = frame.loc[blank, "path"]
            raise ValueError(f"key {key!r} (from --rows/--cols/--group or seed) is absent from {lacking.iloc[0]} "
                             f"and {len(lacking) - 1} other metrics.json files")
    frame = frame.assign(_col=column_labels(frame, row_key, col_key))
    frame = _dedupe(frame, [*group_keys, row_key, "_col", "seed"], row_key)
    tables = []
    for values, group in frame.groupby(list(group_keys), sort=True) if group_keys else [((), frame)]:
        values = values if isinstance(values, tuple) else (values,)
        wanted = metrics or sorted(k for k in group.columns if k.startswith("test/") and group[k].notna().any())
        for metric in wanted:
            if metric not in group.columns or group[metric].isna().all():
                log.info("no ok run of %s reports %s: no table", " / ".join(map(str, values)), metric)
                continue
            tables.append(build_table(group, metric, row_key, col_key, [str(v) for v in values]))
    reported = {t.metric for t in tables}
    if absent := [m for m in (metrics or []) if m not in reported]:
        raise ValueError(f"--metric {', '.join(absent)}: no ok run reports it (check the spelling, e.g. test/ndcg@10)")
    return tables


def build_table(group: pd.DataFrame, metric: str, row_key: str, col_key: str, names: list[str]) -> Table:
    """Aggregate ``metric`` of one group (rows already labelled with ``_col``) and list its gaps."""
    rows = _ordered_rows(group[row_key].astype(str).unique(), row_key)
    cols = _ordered_cols(group["_col"].unique())
    full_special = row_key == "selection" and FULL_COLUMN in cols
    applicable = [(r, c) for r in rows for c in cols
                  if not full_special or ((r in BUDGETLESS_METHODS) == (c == FULL_COLUMN))]
    present = group[group[metric].notna()]
    cells = {}
    for (row, col), cell in present.groupby([present[row_key].astype(str), "_col"]):
        cell = cell.sort_values("seed", kind="stable")
        x = cell[metric].to_numpy(dtype=float)
        std = float(np.std(x, ddof=1)) if len(x) > 1 else math.nan
        cells[(row, col)] = Cell(float(x.mean()), std, tuple(int(s) for s in cell["seed"]),
                                 tuple(str(p) for p in cell["path"]))
    table = Table(" / ".join(names), "_".join(sanitise(n) for n in names) or "all", metric, row_key, col_key,
                  rows, cols, cells, applicable, tuple(sorted(int(s) for s in group["seed"].unique())))
    for row, col in applicable:
        missing = table.missing_seeds(row, col)
        if missing and (row, col) not in cells:
            table.problems.append(f"{row} @ {col}: missing cell (no run; seeds {_join(missing)})")
        elif missing:
            table.problems.append(f"{row} @ {col}: missing seeds {_join(missing)} "
                                  f"(has {_join(cells[(row, col)].seeds)}; unequal seed counts)")
    return table


def render_markdown(table: Table, digits: int) -> str:
    """Heading, caption line and a pipe table; ``PARTIAL: ...`` first when the table has gaps."""
    best = _best(table, digits)
    header = [table.row_key, *table.cols]
    body = [[row, *(_cell_text(table, row, col, digits, best, "**{}**") for col in table.cols)]
            for row in table.rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    rule = "|" + "|".join([":" + "-" * (widths[0] + 1)] + ["-" * (w + 1) + ":" for w in widths[1:]]) + "|"
    lines = [f"### {table.title} — {table.metric} ({direction(table)})", "", _caption(table), "",
             _pipe(header, widths), rule, *(_pipe(line, widths) for line in body)]
    return "\n".join(([_partial_line(table), ""] if table.problems else []) + lines)


def render_latex(table: Table, digits: int) -> str:
    """A booktabs ``table`` environment, best per column in ``\\textbf{}``; ``±``, ``▲``, ``▼``, ``†``, ``−``
    become ``$\\pm$``, ``$\\blacktriangle$``, ``$\\blacktriangledown$``, ``$^\\dagger$``, ``$-$`` (the triangles
    need ``\\usepackage{amssymb}``)."""
    best = _best(table, digits)
    esc = _latex_text
    lines = [f"% {esc(_partial_line(table))}"] if table.problems else []
    if table.intervals:
        lines.append("% needs \\usepackage{amssymb} (\\blacktriangle)")
    caption = f"{esc(table.title)}: {esc(table.metric)} ({direction(table)}). {esc(_caption(table))}"
    lines += ["\\begin{table}[t]", "\\centering", "\\caption{" + caption + "}",
              f"\\begin{{tabular}}{{l{'r' * len(table.cols)}}}", "\\toprule",
              " & ".join(esc(h) for h in [table.row_key, *table.cols]) + " \\\\", "\\midrule"]
    for row in table.rows:
        cells = [_latex_symbols(_cell_text(table, row, col, digits, best, "\\textbf{{{}}}")) for col in table.cols]
        lines.append(" & ".join([esc(row), *cells]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines)


def table_csv(table: Table, digits: int) -> pd.DataFrame:
    """Long form: one line per applicable cell with mean, std (ddof=1), n, seeds, missing seeds, best flag and the
    comparison with the reference (:class:`Interval`; NaN / empty without one): ``diff``, ``ci_low``, ``ci_high``
    (seed-aware interval), ``se``, ``df``, ``p``, ``p_adj``, ``adjust``, ``seed_var``, ``row_var`` (the two
    variance terms of ``se²``), ``noise_low``, ``noise_high`` (test-noise interval), ``n_rows``, ``n_users``,
    ``interval`` (``seed-aware`` / ``seed-only`` / empty), ``reference`` and ``significant`` (``better`` /
    ``worse`` / ``none``: the verdict the marker prints)."""
    best = _best(table, digits)
    lower = lower_is_better(table.metric)
    records = []
    for row, col in table.applicable:
        cell = table.cells.get((row, col))
        ci = table.intervals.get((row, col))
        value = (lambda name: getattr(ci, name)) if ci else (lambda name: math.nan)
        records.append({table.row_key: row, table.col_key: col, "metric": table.metric,
                        "mean": cell.mean if cell else math.nan, "std": cell.std if cell else math.nan,
                        "n": len(cell.seeds) if cell else 0, "seeds": _join(cell.seeds) if cell else "",
                        "missing_seeds": _join(table.missing_seeds(row, col)), "best": (row, col) in best,
                        "diff": value("diff"), "ci_low": value("low"), "ci_high": value("high"), "se": value("se"),
                        "df": value("df"), "p": value("p"), "p_adj": value("p_adj"),
                        "adjust": table.adjust if ci else "", "seed_var": value("seed_var"),
                        "row_var": value("row_var"), "noise_low": value("noise_low"),
                        "noise_high": value("noise_high"), "n_rows": ci.n_rows if ci else 0,
                        "n_users": ci.n_users if ci else 0, "interval": ci.kind if ci else "",
                        "reference": table.reference or "", "significant": ci.significant(lower) if ci else "none"})
    floats = ("mean", "std", "diff", "ci_low", "ci_high", "se", "df", "p", "p_adj", "seed_var", "row_var",
              "noise_low", "noise_high")
    return pd.DataFrame.from_records(records).astype(
        {**dict.fromkeys(floats, "float64"), "n": "int64", "best": "bool", "n_rows": "int64", "n_users": "int64"})


def lower_is_better(metric: str) -> bool:
    """logloss / loss and times (``time`` in the name or a ``_s`` unit) are lower-is-better; all else higher."""
    name = metric.split("/")[-1]
    return "loss" in name or "time" in metric or name.endswith("_s")


def direction(table: Table) -> str:
    """``lower is better`` or ``higher is better`` for the table's metric."""
    return "lower is better" if lower_is_better(table.metric) else "higher is better"


def column_labels(frame: pd.DataFrame, row_key: str, col_key: str) -> pd.Series:
    """Column label per run: ``all`` for the budget-less methods when columns are budgets, else the value as str."""
    labels = frame[col_key].astype(str)
    if row_key == "selection" and col_key == "budget":
        labels = labels.where(~frame["selection"].isin(BUDGETLESS_METHODS), FULL_COLUMN)
    return labels


def budgetless_rows(table: Table) -> bool:
    """Whether the table puts the budget-less methods into the single column ``all`` (rows selection, cols budget)."""
    return table.row_key == "selection" and FULL_COLUMN in table.cols


def natural(value: str) -> tuple:
    """Sort key: numbers first in numeric order, then strings alphabetically."""
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def sanitise(text: str) -> str:
    """File-name-safe form of a metric or group value: ``test/ndcg@10`` -> ``test_ndcg_at10``."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text.replace("@", "_at")).strip("_")


def _dedupe(frame: pd.DataFrame, keys: list[str], row_key: str) -> pd.DataFrame:
    """Keep the latest run per cell and seed when duplicates are re-runs (same config_key) or budget-less."""
    frame = frame.assign(_t=pd.to_datetime(frame.get("created_at"), utc=True, errors="coerce", format="ISO8601"))
    frame = frame.sort_values("_t", kind="stable", na_position="first")
    dup = frame.duplicated(keys, keep=False)
    for key_values, runs in frame[dup].groupby(keys, sort=True):
        config_keys = runs["config_key"].dropna().unique() if "config_key" in runs else []
        if len(config_keys) > 1 and runs[row_key].iloc[0] not in BUDGETLESS_METHODS:
            raise ValueError(f"conflicting runs for {dict(zip(keys, key_values))} with different config_key "
                             f"(report them separately or add --group): {', '.join(runs['path'])}")
        log.info("%d runs for %s: keeping the latest, %s", len(runs), key_values, runs["path"].iloc[-1])
    return frame.drop_duplicates(keys, keep="last").drop(columns="_t")


def _ordered_rows(values, row_key: str) -> list[str]:
    if row_key != "selection":
        return sorted(values, key=natural)
    known = [m for m in METHOD_ORDER if m in set(values)]
    return known + sorted(v for v in values if v not in METHOD_ORDER)


def _ordered_cols(values) -> list[str]:
    return ([FULL_COLUMN] if FULL_COLUMN in set(values) else []) + sorted(
        (v for v in values if v != FULL_COLUMN), key=natural)


def _join(seeds: Sequence[int]) -> str:
    return ", ".join(map(str, seeds))


def _best(table: Table, digits: int) -> set[tuple[str, str]]:
    """Cells whose mean, rounded to ``digits``, is the column's best; columns with < 2 values get none."""
    sign = -1.0 if lower_is_better(table.metric) else 1.0
    best = set()
    for col in table.cols:
        scores = {r: sign * round(table.cells[(r, col)].mean, digits) for r in table.rows if (r, col) in table.cells}
        if len(scores) >= 2:
            top = max(scores.values())
            best |= {(r, col) for r, score in scores.items() if score == top}
    return best


def _cell_text(table: Table, row: str, col: str, digits: int, best: set, bold: str) -> str:
    """``mean ± std`` (bold when best), `` (n=k)`` when seeds are missing, then `` [low, high]`` with ``†`` for the
    seed-only fallback and `` ▲`` / `` ▼`` for the verdict, or `` (ref)`` in the reference's cells; with
    ``table.shown == "test-noise"`` the test-noise interval instead, without a marker."""
    if (row, col) not in table.applicable:
        return ""
    cell = table.cells.get((row, col))
    if cell is None:
        return GAP
    text = f"{cell.mean:.{digits}f}" + ("" if math.isnan(cell.std) else f" ± {cell.std:.{digits}f}")
    text = bold.format(text) if (row, col) in best else text
    text += f" (n={len(cell.seeds)})" if table.missing_seeds(row, col) else ""
    if row == table.reference:
        return text + " (ref)"
    if ci := table.intervals.get((row, col)):
        if table.shown == "test-noise":  # the secondary interval, no verdict (it ignores training randomness)
            return text + ("" if math.isnan(ci.noise_low)
                           else f" [{_signed(ci.noise_low, digits)}, {_signed(ci.noise_high, digits)}]")
        text += f" [{_signed(ci.low, digits)}, {_signed(ci.high, digits)}]" + (FALLBACK if ci.kind == "seed-only"
                                                                               else "")
        marker = {"better": BETTER, "worse": WORSE}.get(ci.significant(lower_is_better(table.metric)))
        text += f" {marker}" if marker else ""
    return text


def _signed(value: float, digits: int) -> str:
    """``+0.0123`` / ``−0.0123`` (typographic minus; ``$-$`` in LaTeX)."""
    return f"{value:+.{digits}f}".replace("-", "−")


def _caption(table: Table) -> str:
    n = len(table.seeds)
    spread = "1 seed, no std" if n == 1 else f"mean ± std over {n} seeds (sample std, ddof=1)"
    seedless = [r for (r, c), cell in table.cells.items()
                if table.row_key == "selection" and r in SEEDLESS_METHODS and len(cell.seeds) < n]
    notes = [f"{', '.join(seedless)}: fewer seeds suffice (no training: the result does not depend on the seed)."]
    return " ".join([f"{spread}; best per column in bold.", *notes[:len(seedless) > 0], *table.interval_notes])


def _partial_line(table: Table) -> str:
    return f"PARTIAL: {len(table.problems)} incomplete cell(s): " + "; ".join(table.problems)


def _pipe(cells: list[str], widths: list[int]) -> str:
    """Row label left-aligned, values right-aligned, padded to the column widths."""
    padded = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
    return "| " + " | ".join(padded) + " |"


def _latex_text(text: str) -> str:
    """Free text (names, captions) for LaTeX: specials escaped, then the report's symbols typeset."""
    return _latex_symbols(re.sub(r"([_%&#$])", r"\\\1", text))


def _latex_symbols(text: str) -> str:
    """The report's symbols (``±``, markers, minus, gap) as LaTeX; cell texts need no escaping (numbers only)."""
    for symbol, latex in _LATEX_SYMBOLS.items():
        text = text.replace(symbol, latex)
    return text
