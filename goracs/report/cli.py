"""``goracs-report SWEEP_DIR...``: sweep folders of ``metrics.json`` files -> paper-style tables and plots.

Every ``metrics.json`` under the given folders (recursive) becomes one row of a DataFrame; rows with
``status == "ok"`` are kept (failed runs are logged with their errors). For each group (default ``data, task,
model``) and each metric (default: every ``test/*`` metric the group reports) one table is built: rows ``--rows``
(default ``selection``), columns ``--cols`` (default ``budget``), cells ``mean ± std`` over seeds, best per column in
bold (see :mod:`goracs.report.tables` for the exact rules). Budget-less methods (``none``: the initial adapter,
``full``: the whole pool) share one column ``all``.

Each cell also gets the seed-aware 95% interval of its difference to ``--reference`` (default ``random``): a t
interval whose variance has a between-seed term (``--seed-variance``: pooled over the column's methods below 5
seeds) and a test-row term clustered by user, from the ``test_outputs.parquet`` files beside the ``metrics.json``
files (:mod:`goracs.report.statistics`, ``docs/statistics.md``); runs without that file get the seed-only interval,
marked ``†``. Cells read ``mean ± std [low, high] ▲``, with ``▲`` / ``▼`` when the Holm-adjusted p-value within the
table (``--adjust``) is below 0.05 and both cells have ``--min-seeds`` seeds, and ``(ref)`` in the reference's
cells. The CSV adds p-values and the secondary test-noise interval (user-clustered bootstrap over test rows, the
trained seeds held fixed; ``--n-boot``, ``--boot-seed``; ``--interval test-noise`` prints it in the cells).

``--plan`` runs the seed planner (:mod:`goracs.report.planner`) on the sweep as a pilot: per table and budget, the
seeds (and test rows) needed to resolve ``--plan-diff`` (default: the table's smallest difference) with
``--power``; it writes ``plan.csv`` and prints the plan instead of the tables.

A table with a missing cell or a cell whose seeds differ from the group's seeds is refused (exit code 2, every gap
listed) unless ``--partial``: then the table starts with a line ``PARTIAL: ...``, gaps show as ``—`` and incomplete
cells say ``(n=k)``.

Outputs go to ``--out`` (default ``<first sweep dir>/report/``): ``<group>_<metric>.{md,tex,csv}`` (CSV is long
form: one line per cell with mean, std, n, seeds, missing seeds, best, diff, ci_low, ci_high, se, df, p, p_adj,
the variance terms, the noise interval, reference, significant) and the PNG plots of :mod:`goracs.report.plots`.
The Markdown is also printed to stdout. Only pandas, numpy and pyarrow are imported up front (matplotlib,
scikit-learn and scipy lazily, where needed), so the command starts fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

import pandas as pd

from goracs.errors import InputNotFound
from goracs.report.plots import write_plots
from goracs.report.statistics import (ADJUSTMENTS, MIN_SEEDS, SEED_VARIANCES, SHOWN, attach_intervals)
from goracs.report.tables import IncompleteTableError, build_tables, render_latex, render_markdown, sanitise, table_csv

log = logging.getLogger("goracs.report")  # the package's logger, shared by its modules

_STRING_KEYS = ("data", "task", "model", "selection", "experiment", "status", "error", "config_key", "created_at",
                "git_sha", "run_dir", "path")
_INT_KEYS = ("budget", "seed", "n_selected")
_METRIC_PREFIXES = ("test/", "val/", "select/", "time/")
DEFAULT_REFERENCE = "random"


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``goracs-report``; returns 0 on success and 2 on a user error (message on stderr)."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        frame = keep_ok(collect(args.sweep_dirs))
        tables = build_tables(frame, args.metric, args.rows, args.cols, args.group)
        incomplete = [t for t in tables if t.problems]
        if incomplete and not args.partial:
            lines = [f"  {t.title} {t.metric}: {p}" for t in incomplete for p in t.problems]
            raise IncompleteTableError("incomplete tables (pass --partial to write them anyway):\n" + "\n".join(lines))
        attach_intervals(tables, args.reference or DEFAULT_REFERENCE, args.n_boot, args.boot_seed,
                         explicit=args.reference is not None, adjust=args.adjust, min_seeds=args.min_seeds,
                         seed_variance=args.seed_variance, shown=args.interval)
        plan = None
        if args.plan:
            from goracs.report.planner import plan_seeds

            plan = plan_seeds(tables, args.plan_diff, args.power, args.max_seeds)
    except (ValueError, FileNotFoundError) as err:
        print(f"goracs-report: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(args.sweep_dirs[0]) / "report"
    out.mkdir(parents=True, exist_ok=True)
    if plan is not None:
        from goracs.report.planner import render_plan

        plan.to_csv(out / "plan.csv", index=False)
        print(render_plan(plan))
        log.info("wrote the seed plan (%d lines) to %s", len(plan), out / "plan.csv")
        return 0
    for table in tables:
        stem = out / f"{table.stem}_{sanitise(table.metric)}"
        markdown = render_markdown(table, args.digits)
        stem.with_suffix(".md").write_text(markdown + "\n", encoding="utf-8")
        stem.with_suffix(".tex").write_text(render_latex(table, args.digits) + "\n", encoding="utf-8")
        table_csv(table, args.digits).to_csv(stem.with_suffix(".csv"), index=False)
        print(markdown + "\n")
    if not args.no_plots:
        write_plots(frame, tables, args, out)
    log.info("wrote %d tables to %s", len(tables), out)
    return 0


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="goracs-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dirs", nargs="+", type=Path, help="folders searched recursively for metrics.json")
    parser.add_argument("--metric", action="append", help="metric key, repeatable (default: every test/* metric)")
    parser.add_argument("--rows", default="selection", help="metrics.json key for table rows (default: selection)")
    parser.add_argument("--cols", default="budget", help="metrics.json key for table columns (default: budget)")
    parser.add_argument("--group", action="append", help="key giving one table per value, repeatable "
                        "(default: data, task, model, minus --rows/--cols)")
    parser.add_argument("--out", help="output folder (default: <first sweep dir>/report)")
    parser.add_argument("--digits", type=int, default=4, help="decimals printed (default: 4)")
    parser.add_argument("--partial", action="store_true", help="write tables with gaps, marked PARTIAL")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--reference", help="row (method) every cell is compared with: seed-aware 95%% interval "
                        f"of the difference (default: {DEFAULT_REFERENCE}; e.g. full, none)")
    parser.add_argument("--adjust", choices=ADJUSTMENTS, default="holm",
                        help="multiplicity adjustment of the markers within each table (default: holm)")
    parser.add_argument("--min-seeds", type=int, default=MIN_SEEDS,
                        help=f"fewer seeds per cell: interval but no marker (default: {MIN_SEEDS})")
    parser.add_argument("--seed-variance", choices=SEED_VARIANCES, default="auto",
                        help="between-seed variance: pooled over the column's methods, each pair's own, or auto "
                        "(pooled below 5 seeds per cell; default)")
    parser.add_argument("--interval", choices=SHOWN, default="seed-aware",
                        help="interval printed in the cells: seed-aware (with markers; default) or test-noise "
                        "(bootstrap over test rows only, no markers)")
    parser.add_argument("--n-boot", type=int, default=2000, help="test-noise bootstrap resamples (default: 2000)")
    parser.add_argument("--boot-seed", type=int, default=0, help="seed of the test-noise resampling (default: 0)")
    parser.add_argument("--plan", action="store_true", help="seed planner: seeds and test rows needed per table "
                        "and budget, written to plan.csv, instead of the tables")
    parser.add_argument("--plan-diff", type=float, action="append",
                        help="difference to resolve, repeatable (default: the smallest |difference| of the table)")
    parser.add_argument("--power", type=float, default=0.8, help="planner's target power (default: 0.8)")
    parser.add_argument("--max-seeds", type=int, default=100, help="planner's largest seed count (default: 100)")
    args = parser.parse_args(argv)
    if args.group is None:
        args.group = [k for k in ("data", "task", "model") if k not in (args.rows, args.cols)]
    return args


def collect(sweep_dirs: Sequence[Path]) -> pd.DataFrame:
    """One row per ``metrics.json`` under ``sweep_dirs`` (scalar values only; lists such as traces are dropped)."""
    paths: list[Path] = []
    for folder in map(Path, sweep_dirs):
        if not folder.is_dir():
            raise InputNotFound(f"sweep dir {folder} does not exist or is not a folder")
        paths += sorted(folder.rglob("metrics.json"))
    if not paths:
        raise InputNotFound(f"no metrics.json under {', '.join(map(str, sweep_dirs))}")
    records = [_read_record(path) for path in dict.fromkeys(p.resolve() for p in paths)]
    return _typed(pd.DataFrame.from_records(records))


def keep_ok(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows with ``status == "ok"``; each other row is logged with its error."""
    ok = (frame["status"] == "ok").fillna(False).astype(bool)
    for _, row in frame[~ok].iterrows():
        log.warning("excluded %s run %s: %s", row["status"], row["path"], row.get("error", pd.NA))
    if not ok.any():
        raise ValueError(f"no metrics.json with status 'ok' among {len(frame)} files")
    return frame[ok].reset_index(drop=True)


def _read_record(path: Path) -> dict:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from err
    if not isinstance(record, dict) or "status" not in record:
        raise ValueError(f"{path} is not a metrics.json object with a 'status' key")
    scalars = {k: v for k, v in record.items() if v is None or isinstance(v, (str, int, float, bool))}
    return scalars | {"path": str(path)}


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    """Explicit dtypes: identity keys ``string``, budget/seed ``Int64``, metric keys ``float64``."""
    for key in frame.columns:
        if key in _INT_KEYS:
            values = pd.to_numeric(frame[key], errors="coerce")
            bad = (values.isna() & frame[key].notna()) | (values.notna() & (values % 1 != 0))
            _raise_if_bad(frame, key, bad, "an integer")
            frame[key] = values.astype("Int64")
        elif key.startswith(_METRIC_PREFIXES):
            values = pd.to_numeric(frame[key], errors="coerce")
            _raise_if_bad(frame, key, values.isna() & frame[key].notna(), "a number")
            frame[key] = values.astype("float64")
        elif key in _STRING_KEYS:
            frame[key] = frame[key].astype("string")
    return frame


def _raise_if_bad(frame: pd.DataFrame, key: str, bad: pd.Series, expected: str) -> None:
    if bad.any():
        row = frame[bad].iloc[0]
        raise ValueError(f"{row['path']}: {key} = {row[key]!r}, expected {expected}")


