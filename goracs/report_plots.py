"""Plots for ``goracs-report``: ``<group>_<metric>.png`` (metric against budget per method, error bars = std,
``full`` as a dashed line) and ``<group>_select_time.png`` (``select/time_s`` or ``time/select_s`` against budget).

matplotlib is imported inside the functions, so importing this module (and ``goracs.report``) stays fast.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import pandas as pd

from goracs.report_tables import (FULL_COLUMN, FULL_METHOD, Table, build_table, column_labels, direction, natural,
                                  sanitise)

log = logging.getLogger("goracs.report")  # the CLI's logger: same name in messages and for filtering

TIME_METRICS = ("select/time_s", "time/select_s")


def write_plots(frame: pd.DataFrame, tables: list[Table], args: argparse.Namespace, out: Path) -> list[Path]:
    """``<group>_<metric>.png`` per table and ``<group>_select_time.png`` per group that reports a selection time."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    written = [_plot(table, out / f"{table.stem}_{sanitise(table.metric)}.png") for table in tables]
    frame = frame.assign(_col=column_labels(frame, args.rows, args.cols))
    groups = frame.groupby(args.group, sort=True) if args.group else [((), frame)]
    for values, group in groups:
        values = values if isinstance(values, tuple) else (values,)
        metric = next((m for m in TIME_METRICS if m in group.columns and group[m].notna().any()), None)
        if metric is None:
            log.info("no selection time in %s: no time plot", " / ".join(map(str, values)))
            continue
        table = build_table(group, metric, args.rows, args.cols, [str(v) for v in values])
        table.rows = [r for r in table.rows if r != FULL_METHOD]  # full selects nothing
        written.append(_plot(table, out / f"{table.stem}_select_time.png", ylabel="selection time (s)"))
    return written


def _plot(table: Table, path: Path, ylabel: str | None = None) -> Path:
    """Metric against column value per row (error bars = std); ``full`` as a dashed horizontal line."""
    import matplotlib.pyplot as plt

    cols = [c for c in table.cols if c != FULL_COLUMN]
    numeric = all(natural(c)[0] == 0 for c in cols)
    x_of = {c: (float(c) if numeric else i) for i, c in enumerate(cols)}
    fig, ax = plt.subplots(figsize=(6, 4))
    for row in table.rows:
        full = table.cells.get((row, FULL_COLUMN))
        if full is not None:
            ax.axhline(full.mean, linestyle="--", color="black", label=row)
            continue
        points = [(x_of[c], table.cells[(row, c)]) for c in cols if (row, c) in table.cells]
        if points:
            ax.errorbar([x for x, _ in points], [c.mean for _, c in points], marker="o", capsize=3, label=row,
                        yerr=[0.0 if math.isnan(c.std) else c.std for _, c in points])
    if numeric and cols and min(x_of.values()) > 0 and max(x_of.values()) >= 8 * min(x_of.values()):
        ax.set_xscale("log", base=2)  # budgets usually double
    ax.set_xticks(list(x_of.values()), cols)
    ax.minorticks_off()
    ax.set_xlabel(table.col_key)
    ax.set_ylabel(ylabel or f"{table.metric} ({direction(table)})")
    ax.set_title(table.title + (" (PARTIAL)" if table.problems else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
