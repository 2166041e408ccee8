"""Plots for ``goracs-report``: ``<group>_<metric>.png`` (metric against budget per method, error bars = std,
budget-less methods ``full`` / ``none`` as horizontal lines), ``<group>_<metric>_diff.png`` (for tables with
intervals: ``method − reference`` against budget, one point per method and column with its 95% interval as the error
bar, methods side by side, a line at 0; filled markers where the table prints ▲ / ▼) and
``<group>_select_time.png`` (``select/time_s`` or ``time/select_s`` against budget).

Interval bands: where a table has intervals (:mod:`goracs.report.statistics`), each compared method gets a shaded
band in its colour spanning ``reference mean + [low, high]`` at each column (the reference mean of that column, or
of ``all`` for a budget-less reference); a budget-less method gets a horizontal band. The band is centred near the
method's own mean (``reference mean + diff``), and it is clear of the reference's line exactly where the seed-aware
interval excludes 0; with the default Holm adjustment a marker needs more than that (docs/statistics.md).

matplotlib is imported inside the functions, so importing this module (and ``goracs.report``) stays fast.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import pandas as pd

from goracs.report.tables import (BUDGETLESS_METHODS, FULL_COLUMN, Table, build_table, budgetless_rows, column_labels,
                                  direction, natural, sanitise)

log = logging.getLogger("goracs.report")  # the CLI's logger: same name in messages and for filtering

TIME_METRICS = ("select/time_s", "time/select_s")


def write_plots(frame: pd.DataFrame, tables: list[Table], args: argparse.Namespace, out: Path) -> list[Path]:
    """``<group>_<metric>.png`` per table and ``<group>_select_time.png`` per group that reports a selection time."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    written = [_plot(table, out / f"{table.stem}_{sanitise(table.metric)}.png") for table in tables]
    written += [_plot_diff(table, out / f"{table.stem}_{sanitise(table.metric)}_diff.png")
                for table in tables if table.intervals]
    frame = frame.assign(_col=column_labels(frame, args.rows, args.cols))
    groups = frame.groupby(args.group, sort=True) if args.group else [((), frame)]
    for values, group in groups:
        values = values if isinstance(values, tuple) else (values,)
        metric = next((m for m in TIME_METRICS if m in group.columns and group[m].notna().any()), None)
        if metric is None:
            log.info("no selection time in %s: no time plot", " / ".join(map(str, values)))
            continue
        table = build_table(group, metric, args.rows, args.cols, [str(v) for v in values])
        table.rows = [r for r in table.rows if r not in BUDGETLESS_METHODS]  # they select nothing
        written.append(_plot(table, out / f"{table.stem}_select_time.png", ylabel="selection time (s)"))
    return written


def _plot(table: Table, path: Path, ylabel: str | None = None) -> Path:
    """Metric against column value per row (error bars = std), budget-less rows as horizontal lines (dashed, dotted,
    ...), and the interval bands of the module docstring."""
    import matplotlib.pyplot as plt

    cols = [c for c in table.cols if c != FULL_COLUMN]
    numeric = all(natural(c)[0] == 0 for c in cols)
    x_of = {c: (float(c) if numeric else i) for i, c in enumerate(cols)}
    fig, ax = plt.subplots(figsize=(6, 4))
    flat_styles = iter(["--", ":", "-.", (0, (5, 1, 1, 1))] * len(table.rows))
    for row in table.rows:
        flat = table.cells.get((row, FULL_COLUMN))
        if flat is not None:
            line = ax.axhline(flat.mean, linestyle=next(flat_styles), color="black", label=row)
            if (band := _band(table, row, FULL_COLUMN)) is not None:
                ax.axhspan(*band, color=line.get_color(), alpha=0.12, linewidth=0)
            continue
        points = [(x_of[c], table.cells[(row, c)]) for c in cols if (row, c) in table.cells]
        if points:
            bar = ax.errorbar([x for x, _ in points], [c.mean for _, c in points], marker="o", capsize=3, label=row,
                              yerr=[0.0 if math.isnan(c.std) else c.std for _, c in points])
            bands = [(x_of[c], band) for c in cols if (band := _band(table, row, c)) is not None]
            if bands:
                ax.fill_between([x for x, _ in bands], [lo for _, (lo, _) in bands], [hi for _, (_, hi) in bands],
                                color=bar.lines[0].get_color(), alpha=0.2, linewidth=0)
    if numeric and cols and min(x_of.values()) > 0 and max(x_of.values()) >= 8 * min(x_of.values()):
        ax.set_xscale("log", base=2)  # budgets usually double
    ax.set_xticks(list(x_of.values()), cols)
    ax.minorticks_off()
    ax.set_xlabel(table.col_key)
    ax.set_ylabel(ylabel or f"{table.metric} ({direction(table)})")
    title = table.title + (" (PARTIAL)" if table.problems else "")
    bands = f"\nbands: {table.reference} + seed-aware 95% CI of the difference" if table.intervals else ""
    ax.set_title(title + bands, fontsize="medium")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _plot_diff(table: Table, path: Path) -> Path:
    """``method − reference`` per column with its interval (the module docstring); columns on a categorical axis,
    the methods compared in a column side by side so their bars do not overlap."""
    import matplotlib.pyplot as plt

    cols = [c for c in table.cols if any((r, c) in table.intervals for r in table.rows)]
    rows = [r for r in table.rows if any((r, c) in table.intervals for c in cols)]
    color = {r: f"C{i % 10}" for i, r in enumerate(rows)}
    fig, ax = plt.subplots(figsize=(min(12.0, 4.0 + 0.25 * sum(len(rows) for _ in cols)), 4))
    lower_better = direction(table) == "lower is better"
    labelled: set[str] = set()
    for j, col in enumerate(cols):
        present = [r for r in rows if (r, col) in table.intervals]
        width = 0.8 / len(present)
        for i, row in enumerate(present):
            interval = table.intervals[(row, col)]
            x = j - 0.4 + width * (i + 0.5)
            filled = interval.significant(lower_better) != "none"  # the table's marker (adjusted p)
            ax.errorbar([x], [interval.diff], yerr=[[interval.diff - interval.low], [interval.high - interval.diff]],
                        marker="o", capsize=3, color=color[row], markerfacecolor=color[row] if filled else "white",
                        label=None if row in labelled else row)
            labelled.add(row)
    ax.axhline(0.0, color="black", linewidth=1)
    ax.set_xticks(range(len(cols)), cols)
    ax.set_xlim(-0.5, len(cols) - 0.5)
    ax.set_xlabel(table.col_key)
    ax.set_ylabel(f"{table.metric} − {table.reference}\n({direction(table)})")
    ax.set_title(f"{table.title}: difference to {table.reference}\n"
                 f"seed-aware 95% interval; filled marker: ▲/▼ in the table ({table.adjust})",
                 fontsize="medium")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _band(table: Table, row: str, col: str) -> tuple[float, float] | None:
    """``reference mean + [low, high]`` of the cell's interval, or None without one."""
    interval = table.intervals.get((row, col))
    if interval is None:
        return None
    ref_col = FULL_COLUMN if budgetless_rows(table) and table.reference in BUDGETLESS_METHODS else col
    ref = table.cells[(table.reference, ref_col)].mean
    return ref + interval.low, ref + interval.high
