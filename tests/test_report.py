"""goracs-report on synthetic metrics.json files with known values: table text, CSV numbers, LaTeX, gaps, plots.

These sweeps have no test_outputs.parquet (older runs), so their intervals are seed-only (†); the seed-aware
intervals with their test-row term are tested in tests/test_report_intervals.py.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from goracs.report.cli import main
from goracs.report.tables import sanitise

# (selection, budget) -> metric value per seed 0, 1; `full` runs carry a budget that means nothing.
NDCG = {
    ("random", 64): (0.10, 0.12),
    ("random", 128): (0.14, 0.18),
    ("goracs", 64): (0.13, 0.15),
    ("goracs", 128): (0.20, 0.22),
    ("full", 64): (0.30, 0.34),
}
SELECT_TIME = {"random": 0.01, "goracs": 2.5, "full": 0.0}

EXPECTED_MARKDOWN = """\
### games / seqrec / smollm2 — test/ndcg@10 (higher is better)

mean ± std over 2 seeds (sample std, ddof=1); best per column in bold. [low, high]: seed-aware 95% t interval of \
method − random: between-seed variance pooled over the column's methods (df 2). ▲ / ▼: better / worse than random \
at Holm-adjusted p < 0.05 within this table (family: its 2 comparisons with random); (ref): the reference. No \
markers where a cell has fewer than 3 seeds (--min-seeds): too few for a verdict on training randomness. †: \
seed-only interval (no per-sample test_outputs.parquet): misses the test-row term. No interval for full \
(budget-less, the reference random is budgeted).

| selection |             all |                                      64 |                                     128 |
|:----------|----------------:|----------------------------------------:|----------------------------------------:|
| full      | 0.3200 ± 0.0283 |                                         |                                         |
| random    |                 |                   0.1100 ± 0.0141 (ref) |                   0.1600 ± 0.0283 (ref) |
| goracs    |                 | **0.1400 ± 0.0141** [−0.0308, +0.0908]† | **0.2100 ± 0.0141** [−0.0462, +0.1462]† |"""
# Seed-only interval by hand (pooled over random and goracs of the column, df 1 + 1 = 2, t_{2, .975} = 4.3027):
# 64: s² = (0.0002 + 0.0002)/2, seed_var = s² (1/2 + 1/2) = 0.0002, se = 0.01414 -> 0.03 ± 0.0608;
# 128: s² = (0.0008 + 0.0002)/2 = 0.0005 = seed_var, se = 0.02236 -> 0.05 ± 0.0962.


def write_run(root: Path, selection: str, budget: int, seed: int, status: str = "ok", **values) -> Path:
    """One job folder with its metrics.json, following the schema of the run stage."""
    folder = root / f"{values.get('data', 'games')}_{selection}_b{budget}_s{seed}_{status}"
    folder.mkdir(parents=True)
    record = {"data": "games", "task": "seqrec", "model": "smollm2", "selection": selection, "budget": budget,
              "seed": seed, "experiment": "budget_sweep", "status": status,
              "config_key": f"{selection}-{budget}-{seed}", "created_at": "2025-01-01T00:00:00+00:00",
              "select/poo_trace": [3.0, 2.0], "overrides": [f"selection={selection}"], "versions": {"pandas": "3"}}
    (folder / "metrics.json").write_text(json.dumps(record | values))
    return folder


def write_sweep(root: Path, skip: tuple = ()) -> Path:
    """The 2 methods x 2 budgets x 2 seeds sweep plus `full`; `skip` lists (selection, budget, seed) left out."""
    for (selection, budget), per_seed in NDCG.items():
        for seed, value in enumerate(per_seed):
            if (selection, budget, seed) not in skip:
                write_run(root, selection, budget, seed, **{"test/ndcg@10": value, "test/hit@5": 2 * value,
                                                             "select/time_s": SELECT_TIME[selection] * budget})
    return root


def test_markdown_table_text_is_exact(tmp_path, capsys):
    sweep = write_sweep(tmp_path / "sweep")
    assert main([str(sweep), "--metric", "test/ndcg@10", "--no-plots"]) == 0
    written = (sweep / "report" / "games_seqrec_smollm2_test_ndcg_at10.md").read_text()
    assert written == EXPECTED_MARKDOWN + "\n"
    assert EXPECTED_MARKDOWN in capsys.readouterr().out


def test_csv_holds_hand_computed_means_and_sample_stds(tmp_path):
    sweep = write_sweep(tmp_path / "sweep")
    assert main([str(sweep), "--out", str(tmp_path / "out"), "--no-plots"]) == 0
    csv = pd.read_csv(tmp_path / "out" / "games_seqrec_smollm2_test_ndcg_at10.csv", dtype={"budget": str})
    assert len(csv) == 5  # full's single column + 2 methods x 2 budgets
    for (selection, budget), (a, b) in NDCG.items():
        column = "all" if selection == "full" else str(budget)
        line = csv[(csv["selection"] == selection) & (csv["budget"] == column)].iloc[0]
        assert line["mean"] == pytest.approx((a + b) / 2)
        assert line["std"] == pytest.approx(abs(a - b) / math.sqrt(2))  # ddof=1 with two seeds
        assert line["std"] == pytest.approx(statistics.stdev([a, b]))
        assert line["n"] == 2 and pd.isna(line["missing_seeds"])  # nothing missing
    assert set(csv.loc[csv["best"], "selection"]) == {"goracs"}
    # the default metric set is every test/* key: hit@5 gets its own table
    assert (tmp_path / "out" / "games_seqrec_smollm2_test_hit_at5.md").exists()


def test_latex_bolds_the_best_cell_per_column(tmp_path):
    sweep = write_sweep(tmp_path / "sweep")
    assert main([str(sweep), "--metric", "test/ndcg@10", "--no-plots"]) == 0
    tex = (sweep / "report" / "games_seqrec_smollm2_test_ndcg_at10.tex").read_text()
    assert (r"goracs &  & \textbf{0.1400 $\pm$ 0.0141} [$-$0.0308, +0.0908]$^\dagger$ & "
            r"\textbf{0.2100 $\pm$ 0.0141} [$-$0.0462, +0.1462]$^\dagger$ \\") in tex
    assert r"random &  & 0.1100 $\pm$ 0.0141 (ref) & 0.1600 $\pm$ 0.0283 (ref) \\" in tex
    assert tex.count(r"\textbf") == 2 and r"\begin{tabular}{lrrr}" in tex


def test_lower_is_better_metrics_bold_the_minimum(tmp_path):
    sweep = tmp_path / "sweep"
    for seed in (0, 1):
        write_run(sweep, "random", 64, seed, **{"test/logloss": 0.70 + seed / 100, "test/auc": 0.60})
        write_run(sweep, "goracs", 64, seed, **{"test/logloss": 0.50 + seed / 100, "test/auc": 0.65})
    assert main([str(sweep), "--no-plots"]) == 0
    logloss = (sweep / "report" / "games_seqrec_smollm2_test_logloss.md").read_text()
    auc = (sweep / "report" / "games_seqrec_smollm2_test_auc.md").read_text()
    assert "**0.5050 ± 0.0071**" in logloss and "**0.7050" not in logloss and "lower is better" in logloss
    assert "**0.6500 ± 0.0000**" in auc and "**0.6000" not in auc


def test_missing_cell_is_refused_with_exit_code_2_and_listed(tmp_path, capsys):
    sweep = write_sweep(tmp_path / "sweep", skip=(("goracs", 128, 0), ("goracs", 128, 1)))
    assert main([str(sweep), "--metric", "test/ndcg@10", "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert "goracs @ 128: missing cell (no run; seeds 0, 1)" in err
    assert "games / seqrec / smollm2 test/ndcg@10" in err and "--partial" in err
    assert not (sweep / "report").exists()  # nothing written when refused


def test_unequal_seed_counts_are_refused(tmp_path, capsys):
    sweep = write_sweep(tmp_path / "sweep", skip=(("random", 64, 1),))
    assert main([str(sweep), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert "random @ 64: missing seeds 1 (has 0; unequal seed counts)" in err
    assert err.count("random @ 64") == 2  # once per default metric (hit@5, ndcg@10)


def test_partial_writes_marked_tables_with_gaps(tmp_path):
    sweep = write_sweep(tmp_path / "sweep", skip=(("goracs", 128, 0), ("goracs", 128, 1), ("random", 64, 1)))
    assert main([str(sweep), "--metric", "test/ndcg@10", "--partial", "--no-plots"]) == 0
    text = (sweep / "report" / "games_seqrec_smollm2_test_ndcg_at10.md").read_text()
    assert text.startswith("PARTIAL: 2 incomplete cell(s): ")
    goracs_line = next(line for line in text.splitlines() if line.startswith("| goracs"))
    random_line = next(line for line in text.splitlines() if line.startswith("| random"))
    assert goracs_line.rstrip(" |").endswith("—")
    assert "0.1000 (n=1)" in random_line  # one seed left: no std, count shown
    tex = (sweep / "report" / "games_seqrec_smollm2_test_ndcg_at10.tex").read_text()
    assert tex.startswith("% PARTIAL:") and "& -- \\\\" in tex


def test_single_seed_shows_mean_only_and_groups_make_separate_tables(tmp_path):
    sweep = tmp_path / "sweep"
    write_run(sweep, "random", 64, 0, **{"test/ndcg@10": 0.25})
    write_run(sweep, "goracs", 64, 0, **{"test/ndcg@10": 0.5})
    write_run(sweep, "random", 64, 0, data="movies", task="ctr", **{"test/auc": 0.7, "test/ndcg@10": None})
    write_run(sweep, "goracs", 64, 0, data="movies", task="ctr", **{"test/auc": 0.8})
    assert main([str(sweep), "--no-plots"]) == 0
    games = (sweep / "report" / "games_seqrec_smollm2_test_ndcg_at10.md").read_text().splitlines()
    assert games[2].startswith("1 seed, no std; best per column in bold.")
    assert "No interval for goracs @ 64 (no method of the column has 2 seeds: no between-seed variance)" in games[2]
    assert games[-2:] == ["| random    | 0.2500 (ref) |", "| goracs    |   **0.5000** |"]
    assert sorted(p.name for p in (sweep / "report").glob("*.md")) == [
        "games_seqrec_smollm2_test_ndcg_at10.md", "movies_ctr_smollm2_test_auc.md"]


def test_failed_runs_are_excluded(tmp_path, caplog):
    sweep = write_sweep(tmp_path / "sweep")
    write_run(sweep, "random", 64, 2, status="failed", error="CUDA out of memory", **{"test/ndcg@10": 0.99})
    assert main([str(sweep), "--metric", "test/ndcg@10", "--no-plots"]) == 0
    assert (sweep / "report" / "games_seqrec_smollm2_test_ndcg_at10.md").read_text() == EXPECTED_MARKDOWN + "\n"
    assert "CUDA out of memory" in caplog.text


def test_rerun_with_same_config_keeps_latest_and_conflict_is_an_error(tmp_path, capsys):
    sweep = write_sweep(tmp_path / "sweep")
    rerun = write_run(sweep / "again", "random", 64, 0, **{"test/ndcg@10": 0.10})
    record = json.loads((rerun / "metrics.json").read_text())
    (rerun / "metrics.json").write_text(json.dumps(record | {"created_at": "2025-02-01T00:00:00+00:00"}))
    assert main([str(sweep), "--metric", "test/ndcg@10", "--no-plots"]) == 0
    assert (sweep / "report" / "games_seqrec_smollm2_test_ndcg_at10.md").read_text() == EXPECTED_MARKDOWN + "\n"
    (rerun / "metrics.json").write_text(json.dumps(record | {"config_key": "other", "test/ndcg@10": 0.5}))
    assert main([str(sweep), "--metric", "test/ndcg@10", "--no-plots"]) == 2
    assert "conflicting runs" in capsys.readouterr().err


def test_plots_are_written_as_png(tmp_path):
    sweep = write_sweep(tmp_path / "sweep")
    assert main([str(sweep), "--metric", "test/ndcg@10"]) == 0
    for name in ("games_seqrec_smollm2_test_ndcg_at10.png", "games_seqrec_smollm2_select_time.png"):
        png = (sweep / "report" / name).read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000


@pytest.mark.parametrize("argv, expected", [
    (["does-not-exist"], "does not exist"),
    (["{sweep}", "--metric", "test/auc"], "--metric test/auc: no ok run reports it"),
    (["{sweep}", "--rows", "optimizer"], "key 'optimizer'"),
])
def test_user_errors_exit_2_with_a_message(tmp_path, capsys, argv, expected):
    sweep = write_sweep(tmp_path / "sweep")
    assert main([a.format(sweep=sweep) for a in argv] + ["--no-plots"]) == 2
    assert expected in capsys.readouterr().err


def test_sanitise_makes_file_names():
    assert sanitise("test/ndcg@10") == "test_ndcg_at10"
    assert sanitise("select/time_s") == "select_time_s"


def test_report_import_chain_has_no_torch_and_wrapper_runs(tmp_path):
    code = "import sys, goracs.report; assert 'torch' not in sys.modules and 'lightning' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    sweep = write_sweep(tmp_path / "sweep")
    script = Path(__file__).parents[1] / "experiments" / "make_tables.py"
    done = subprocess.run([sys.executable, str(script), str(sweep), "--metric", "test/ndcg@10", "--no-plots"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert EXPECTED_MARKDOWN in done.stdout
