"""The seed planner (goracs-report --plan): its power formula against simulated sweeps, and the CLI's plan.csv."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from goracs.report.calibration import calibrate
from goracs.report.cli import main
from goracs.report.planner import power_of
from test_report_intervals import write_sweep

# Variance of a mean over the simulator's test set per unit row variance: users have 1 + Poisson(4) rows (E m = 5,
# E m² = 29), half of the variance shared within a user: G (0.5 E m² + 0.5 E m) / (G E m)² = 17 / 2500.
DESIGN = 17 / 2500
SEED_SD, METHOD_ROW_SD, SEED_ROW_SD = 0.003, 0.012, 0.014


@pytest.mark.parametrize("seeds, delta", [(3, 0.004), (5, 0.004), (5, 0.008)])
def test_planner_power_matches_the_rejection_rate_of_simulated_sweeps(seeds, delta):
    parts = {"seed_var": SEED_SD ** 2 + DESIGN * SEED_ROW_SD ** 2, "eta": DESIGN * SEED_ROW_SD ** 2,
             "row_var": 2 * DESIGN * METHOD_ROW_SD ** 2, "n_users": 100, "methods": 6, "reference_seedless": False}
    planned = power_of(parts, seeds, 1, delta, 0.05)
    simulated = calibrate(np.random.default_rng(seeds), 1000, 6, seeds, effect=delta, seed_sd=SEED_SD,
                          method_row_sd=METHOD_ROW_SD, seed_row_sd=SEED_ROW_SD)["reject"]
    assert planned == pytest.approx(simulated, abs=0.05)
    assert power_of(parts, 2 * seeds, 1, delta, 0.05) > planned  # more seeds, more power
    assert power_of(parts, seeds, 4, delta, 0.05) > planned  # more rows too, but less than seeds: the seed term


def test_cli_plan_writes_a_csv_per_budget_and_reaches_the_power(tmp_path, capsys):
    sweep = write_sweep(tmp_path / "sweep")
    out = tmp_path / "out"
    assert main([str(sweep), "--metric", "test/loss", "--plan", "--out", str(out), "--no-plots"]) == 0
    plan = pd.read_csv(out / "plan.csv", dtype={"budget": str})
    assert plan["budget"].tolist() == ["64", "128"] and (plan["diff_source"] == "smallest in table").all()
    csv_diff = plan["diff"].iloc[0]
    assert (plan["pilot_seeds"] == 3).all() and (plan["pilot_users"] == 100).all() and (plan["methods"] == 2).all()
    assert plan["alpha"].tolist() == pytest.approx([0.025, 0.025])  # Holm, 2 comparisons: 0.05 / 2 at step 1
    assert csv_diff > 0 and (plan["seeds_needed"].dropna() >= 2).all()
    printed = capsys.readouterr().out
    assert printed.startswith("### seed plan: games / seqrec / smollm2") and "seeds_needed" in printed
    assert main([str(sweep), "--metric", "test/loss", "--plan", "--plan-diff", "0.5", "--plan-diff", "1e-6",
                 "--out", str(out), "--no-plots"]) == 0
    plan = pd.read_csv(out / "plan.csv", dtype={"budget": str})
    big, tiny = plan[plan["diff"] == 0.5], plan[plan["diff"] == 1e-6]
    assert (big["seeds_needed"] == 2).all() and tiny["seeds_needed"].isna().all()  # > --max-seeds 100
    assert tiny["rows_needed"].isna().all()  # no number of test rows makes up for the seed term


@pytest.mark.parametrize("argv, expected", [
    (["--power", "1.5"], "--power 1.5: expected a number between 0 and 1"),
    (["--plan-diff", "-0.1"], "--plan-diff -0.1: differences must be positive"),
])
def test_cli_plan_bad_options_are_one_line(tmp_path, capsys, argv, expected):
    sweep = write_sweep(tmp_path / "sweep")
    assert main([str(sweep), "--metric", "test/loss", "--plan", "--no-plots", *argv]) == 2
    assert capsys.readouterr().err.strip() == f"goracs-report: error: {expected}"
