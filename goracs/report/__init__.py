"""``goracs-report``: sweep folders of ``metrics.json`` files -> tables, intervals and plots (pandas; no torch).

* :mod:`goracs.report.cli`: the console script (collect the files, keep ok runs, write every output);
* :mod:`goracs.report.tables`: aggregation into one table per group and metric, completeness, Markdown/LaTeX/CSV;
* :mod:`goracs.report.statistics`: seed-aware intervals and Holm-adjusted verdicts of ``method − reference``, and
  the test-noise bootstrap;
* :mod:`goracs.report.planner`: the seed planner (``--plan``);
* :mod:`goracs.report.plots`: the PNG plots (matplotlib, imported lazily).
"""

from goracs.report.cli import DEFAULT_REFERENCE, collect, keep_ok, main
from goracs.report.plots import TIME_METRICS, write_plots
from goracs.report.statistics import attach_intervals, holm, t_test
from goracs.report.tables import (BUDGETLESS_METHODS, FULL_COLUMN, GAP, METHOD_ORDER, Cell, IncompleteTableError,
                                  Interval, Table, build_table, build_tables, lower_is_better, render_latex,
                                  render_markdown, sanitise, table_csv)

__all__ = ["BUDGETLESS_METHODS", "DEFAULT_REFERENCE", "FULL_COLUMN", "GAP", "METHOD_ORDER", "TIME_METRICS", "Cell",
           "IncompleteTableError", "Interval", "Table", "attach_intervals", "build_table", "build_tables", "collect",
           "holm", "keep_ok", "lower_is_better", "main", "render_latex", "render_markdown", "sanitise", "t_test",
           "table_csv", "write_plots"]
