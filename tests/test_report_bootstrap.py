"""Paired-bootstrap intervals of goracs-report against independent truth.

* the statistics on synthetic per-sample values: the width matches the normal theory 2·1.96·σ/√n, a zero difference
  is covered ≈95% of the time, identical inputs give [0, 0], the weighted AUC equals scikit-learn's on explicit
  resamples, the per-sample vectors average to the task's ``metrics``;
* the CLI end to end on sweep folders written here (metrics.json + test_outputs.parquet per job): markers, CSV
  bounds, ``--reference none``, and every bad input (unknown reference, unequal test rows, missing records).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import task_named
from goracs.evaluation.records import FILENAME, auc
from goracs.report.cli import main
from goracs.report.statistics import _resample_counts, _weighted_auc, backing, paired_bootstrap, sample_values
from goracs.report.tables import sanitise

N_ROWS = 300
# (selection, budget) -> shift of the per-sample loss and of the ranks against the shared per-row baseline
EFFECTS = {("random", 64): (0.0, 0), ("random", 128): (-0.05, 0), ("goracs", 64): (0.0, 0),
           ("goracs", 128): (-0.35, -6), ("none", 0): (0.6, 12)}


# ---------------------------------------------------------------- the statistic on synthetic per-sample values

def test_width_matches_normal_theory():
    """method loss = ref loss + N(δ, σ²) per row, one seed: width ≈ 2·1.96·σ/√n (within 10%)."""
    rng = np.random.default_rng(1)
    n, delta, sigma = 400, 0.1, 0.5
    ref = rng.normal(2.0, 1.0, n)
    method = ref + rng.normal(delta, sigma, n)
    ci = paired_bootstrap([method], [ref], n_boot=2000, seed=0)
    assert ci.high - ci.low == pytest.approx(2 * 1.96 * sigma / math.sqrt(n), rel=0.10)
    assert ci.diff == pytest.approx(float(np.mean(method - ref)))
    assert ci.low < ci.diff < ci.high and (ci.n_rows, ci.n_strata, ci.kind) == (n, 1, "bootstrap")
    # over fresh data sets the width is unbiased: the mean ratio to 2·1.96·σ/√n is 1 within 3%
    ratios = []
    for rep in range(20):
        ref = rng.normal(2.0, 1.0, n)
        ci = paired_bootstrap([ref + rng.normal(delta, sigma, n)], [ref], n_boot=1000, seed=rep)
        ratios.append((ci.high - ci.low) / (2 * 1.96 * sigma / math.sqrt(n)))
    assert np.mean(ratios) == pytest.approx(1.0, abs=0.03)


def test_zero_difference_is_covered_about_95_percent():
    """200 fresh data sets (2 seed strata, true difference 0): the interval covers 0 in [90%, 99%] of them."""
    rng = np.random.default_rng(2)
    covered = 0
    for rep in range(200):
        ref = [rng.normal(1.0, 1.0, 150) for _ in range(2)]
        method = [r + rng.normal(0.0, 0.7, 150) for r in ref]
        ci = paired_bootstrap(method, ref, n_boot=500, seed=rep)
        covered += ci.low <= 0.0 <= ci.high
    assert 0.90 <= covered / 200 <= 0.99


def test_identical_inputs_give_a_zero_width_interval_at_zero():
    rng = np.random.default_rng(3)
    x = [rng.normal(size=200), rng.normal(size=200)]
    ci = paired_bootstrap(x, x, n_boot=300, seed=0)
    assert (ci.diff, ci.low, ci.high) == (0.0, 0.0, 0.0)
    labels = [rng.integers(0, 2, 200), rng.integers(0, 2, 200)]
    scores = [rng.random(200), rng.random(200)]
    ci = paired_bootstrap(scores, scores, n_boot=300, seed=0, labels=labels)
    assert (ci.diff, ci.low, ci.high) == (0.0, 0.0, 0.0)


def test_nulls_are_excluded_pairwise_and_results_are_deterministic():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=100), rng.normal(size=100)
    x[:10], y[5:20] = np.nan, np.nan  # 20 rows have a null on one side or both
    ci = paired_bootstrap([x], [y], n_boot=400, seed=7)
    assert ci.n_rows == 80 and ci.diff == pytest.approx(float(np.nanmean(x[20:] - y[20:])))
    assert paired_bootstrap([x], [y], n_boot=400, seed=7) == ci
    assert paired_bootstrap([x], [y], n_boot=400, seed=8) != ci
    assert paired_bootstrap([x[:10]], [y[:10]], n_boot=10) is None  # no pair left


def test_weighted_auc_equals_sklearn_on_explicit_resamples():
    rng = np.random.default_rng(5)
    labels, scores = rng.integers(0, 2, 80), np.round(rng.random(80), 1)  # rounded: many ties
    idx = rng.integers(0, 80, size=(6, 80))
    weights = np.stack([np.bincount(i, minlength=80) for i in idx])
    fast = _weighted_auc(weights, labels, scores)
    assert fast == pytest.approx([auc(labels[i], scores[i]) for i in idx])
    assert _resample_counts(np.random.default_rng(0), 80, 5).sum(axis=1).tolist() == [80] * 5
    assert np.isnan(_weighted_auc(np.ones((1, 3)), np.array([1, 1, 1]), np.array([0.1, 0.2, 0.3])))[0]


def test_bootstrap_is_fast():
    """A cell with n = 500 rows, 2 seeds, 2000 resamples: mean-type and AUC each well under a second."""
    rng = np.random.default_rng(6)
    x, y = [rng.random(500) for _ in range(2)], [rng.random(500) for _ in range(2)]
    labels = [rng.integers(0, 2, 500) for _ in range(2)]
    for kwargs in ({}, {"labels": labels}):
        start = time.perf_counter()
        paired_bootstrap(x, y, n_boot=2000, seed=0, **kwargs)
        assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("task", ["seqrec", "ctr"])
def test_per_sample_values_average_to_the_record_metrics(task):
    """The vectors the bootstrap resamples are the single metric definitions of records.py, sample by sample."""
    records = make_records(np.random.default_rng(7), task, "random", (0.0, 0))
    reported = task_named(task).metrics(records, (5, 10))
    for name, value in reported.items():
        if name == "auc":
            assert backing("test/auc") == "auc"
            continue
        values = sample_values(records, f"test/{name}")
        assert backing(f"test/{name}") == "mean" and float(np.nanmean(values)) == pytest.approx(value), name
    assert backing("select/time_s") is None and backing("test/unknown") is None


# ---------------------------------------------------------------- the CLI on synthetic sweeps


def make_records(rng: np.random.Generator, task: str, selection: str, effect: tuple[float, int],
                 base: np.random.Generator | None = None) -> pd.DataFrame:
    """Per-sample records: a per-row baseline shared by every job (``base``, fixed seed) plus the job's effect."""
    base = base or np.random.default_rng(99)
    rows = np.arange(N_ROWS)
    frame = pd.DataFrame({"row": rows, "user": [f"u{i}" for i in rows], "item": [f"i{i % 50}" for i in rows]})
    if task == "ctr":
        label = base.integers(0, 2, N_ROWS)
        logit = (2 * label - 1) * (1.0 + 4 * effect[0]) + base.normal(0, 1.5, N_ROWS) + rng.normal(0, 0.3, N_ROWS)
        p = 1 / (1 + np.exp(-logit))
        return frame.assign(label=label, p_yes=p, loss=-(label * np.log(p) + (1 - label) * np.log(1 - p)))
    loss = base.gamma(4.0, 0.5, N_ROWS) + effect[0] + rng.normal(0, 0.3, N_ROWS)
    rank0 = base.integers(0, 40, N_ROWS)
    ranks = {c: np.clip(rank0 + effect[1] + rng.integers(-3, 4, N_ROWS), 0, 99)
             for c in ("rank", "rank_full", "rank_ll")}
    full = pd.array(ranks["rank_full"], dtype="Int64")
    full[rows % (3 if selection == "random" else 4) == 0] = pd.NA  # ranked on a subset, differing by method
    exact = pd.Series(rng.random(N_ROWS) < 0.3 - effect[0] / 4, dtype=object)
    exact[rows % 7 == 0] = None
    return frame.assign(loss=loss, rank=pd.array(ranks["rank"], dtype="Int64"), rank_full=full,
                        rank_ll=pd.array(ranks["rank_ll"], dtype="Int64"),
                        generated=[None if e is None else "title" for e in exact], exact=exact)


def write_job(root: Path, task: str, selection: str, budget: int, seed: int, records: bool = True) -> Path:
    """A job folder: metrics.json (test/* from the records, as the evaluation stage writes them) and, unless
    ``records=False``, test_outputs.parquet."""
    rng = np.random.default_rng([hash(selection) % 1000, budget, seed])
    frame = make_records(rng, task, selection, EFFECTS.get((selection, budget), EFFECTS.get((selection, 0))))
    folder = root / f"{task}_{selection}_b{budget}_s{seed}"
    folder.mkdir(parents=True)
    metrics = {f"test/{k}": v for k, v in task_named(task).metrics(frame, (5, 10)).items()}
    record = {"data": "games", "task": task, "model": "smollm2", "selection": selection, "budget": budget,
              "seed": seed, "status": "ok", "run_dir": str(folder), "config_key": f"{selection}-{budget}-{seed}",
              "created_at": "2025-01-01T00:00:00+00:00", "select/time_s": 0.5} | metrics
    (folder / "metrics.json").write_text(json.dumps(record))
    if records:
        frame.to_parquet(folder / FILENAME, index=False)
    return folder


def write_sweep(root: Path, task: str = "seqrec") -> Path:
    """random and goracs x budgets 64, 128 x seeds 0, 1, plus one `none` run (seed 0; its budget is ignored)."""
    for selection in ("random", "goracs"):
        for budget in (64, 128):
            for seed in (0, 1):
                write_job(root, task, selection, budget, seed)
    write_job(root, task, "none", 0, 0)
    return root


def report(sweep: Path, *extra: str, metric: str = "test/loss") -> tuple[int, str, pd.DataFrame | None]:
    out = sweep.parent / "out"
    code = main([str(sweep), "--out", str(out), "--metric", metric, "--no-plots", *extra])
    stem = out / f"games_{'ctr' if 'ctr' in sweep.name else 'seqrec'}_smollm2_{sanitise(metric)}"
    if code != 0:
        return code, "", None
    return code, stem.with_suffix(".md").read_text(), pd.read_csv(stem.with_suffix(".csv"), dtype={"budget": str})


def line(csv: pd.DataFrame, selection: str, budget: str) -> pd.Series:
    return csv[(csv["selection"] == selection) & (csv["budget"] == budget)].iloc[0]


def test_cli_tables_have_intervals_markers_and_csv_bounds(tmp_path):
    sweep = write_sweep(tmp_path / "sweep")
    code, markdown, csv = report(sweep)
    assert code == 0
    assert "Paired bootstrap over test rows, seeds as strata (2000 resamples, boot seed 0)" in markdown
    assert "No interval for none (budget-less, the reference random is budgeted)." in markdown
    goracs = line(csv, "goracs", "128")
    # independent truth: the diff is the seed-averaged difference of the metrics.json values (no nulls in loss) ...
    seeds = [json.loads((sweep / f"seqrec_{m}_b128_s{s}" / "metrics.json").read_text())["test/loss"]
             for m in ("goracs", "random") for s in (0, 1)]
    assert goracs["diff"] == pytest.approx((seeds[0] + seeds[1]) / 2 - (seeds[2] + seeds[3]) / 2)
    # ... and the interval is close to the normal one: diff ± 1.96 · sqrt(Σ_s var(d_s)/n) / S
    d = [pd.read_parquet(sweep / f"seqrec_goracs_b128_s{s}" / FILENAME)["loss"]
         - pd.read_parquet(sweep / f"seqrec_random_b128_s{s}" / FILENAME)["loss"] for s in (0, 1)]
    half = 1.96 * math.sqrt(sum(x.var(ddof=0) / N_ROWS for x in d)) / 2
    assert (goracs["ci_high"] - goracs["ci_low"]) / 2 == pytest.approx(half, rel=0.1)
    assert (goracs["significant"], goracs["n_rows"], goracs["n_strata"]) == ("better", 2 * N_ROWS, 2)
    assert (goracs["reference"], goracs["interval"]) == ("random", "bootstrap")
    assert goracs["ci_low"] < goracs["diff"] < goracs["ci_high"] < 0  # lower loss: better
    assert line(csv, "random", "64")["significant"] == "none" and math.isnan(line(csv, "random", "64")["ci_low"])
    assert math.isnan(line(csv, "none", "all")["ci_low"])
    row = next(r for r in markdown.splitlines() if r.startswith("| goracs"))
    assert row.rstrip(" |").endswith("▲") and f"[{goracs['ci_low']:+.4f}".replace("-", "−") in row
    assert "0.0000 (ref)" not in markdown and markdown.count("(ref) |") == 2  # random's two budget cells


def test_cli_higher_is_better_metric_pairs_non_null_rows_and_latex(tmp_path):
    sweep = write_sweep(tmp_path / "sweep")
    code, markdown, csv = report(sweep, metric="test/ndcg@10_full")
    assert code == 0
    goracs = line(csv, "goracs", "128")
    both = sum(1 for i in range(N_ROWS) if i % 3 and i % 4)  # rank_full null on every 3rd (random), 4th (goracs)
    assert goracs["n_rows"] == 2 * both and goracs["significant"] == "better" and goracs["ci_low"] > 0
    tex = (tmp_path / "out" / "games_seqrec_smollm2_test_ndcg_at10_full.tex").read_text()
    assert r"$\blacktriangle$ \\" in tex and r"difference method $-$ random;" in tex and "test/ndcg@10\\_full" in tex


def test_cli_reference_none_compares_every_cell_with_its_single_cell(tmp_path):
    sweep = write_sweep(tmp_path / "sweep")
    code, markdown, csv = report(sweep, "--reference", "none")
    assert code == 0
    none = json.loads((sweep / "seqrec_none_b0_s0" / "metrics.json").read_text())["test/loss"]
    for selection in ("random", "goracs"):
        for budget in ("64", "128"):
            cell = line(csv, selection, budget)
            assert cell["diff"] == pytest.approx(cell["mean"] - none)  # one reference seed, paired with each seed
            assert (cell["significant"], cell["n_strata"], cell["reference"]) == ("better", 2, "none")
    assert "| none      | " in markdown and " (ref) |" in markdown and "No interval for" not in markdown
    assert markdown.count("▲") == 4 + 1  # four cells plus the legend


def test_cli_ctr_auc_interval_and_plot_bands(tmp_path):
    sweep = write_sweep(tmp_path / "ctr_sweep", task="ctr")
    code, markdown, csv = report(sweep, metric="test/auc")
    assert code == 0
    goracs = line(csv, "goracs", "128")
    assert goracs["interval"] == "bootstrap" and goracs["significant"] == "worse"  # noisier logits: lower AUC
    assert goracs["diff"] == pytest.approx(goracs["mean"] - line(csv, "random", "128")["mean"])
    assert main([str(sweep), "--out", str(tmp_path / "plots"), "--metric", "test/auc", "--n-boot", "200"]) == 0
    png = (tmp_path / "plots" / "games_ctr_smollm2_test_auc.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000
    diff = (tmp_path / "plots" / "games_ctr_smollm2_test_auc_diff.png").read_bytes()  # method − reference view
    assert diff.startswith(b"\x89PNG") and len(diff) > 1000


@pytest.mark.parametrize("task", ["seqrec", "ctr"])
def test_cli_every_test_metric_gets_bootstrap_intervals(tmp_path, task):
    sweep = write_sweep(tmp_path / f"{task}_sweep", task=task)
    assert main([str(sweep), "--out", str(tmp_path / "out"), "--no-plots", "--n-boot", "200"]) == 0
    tables = sorted((tmp_path / "out").glob("*.csv"))
    assert len(tables) == (14 if task == "seqrec" else 4)  # every test/* key of the task's metrics
    for path in tables:
        csv = pd.read_csv(path, dtype={"budget": str})
        compared = csv[csv["selection"] == "goracs"]
        assert (compared["interval"] == "bootstrap").all() and compared["ci_low"].le(compared["ci_high"]).all(), path
        assert csv.loc[csv["selection"] != "goracs", "ci_low"].isna().all()  # random is the reference, none budget-less


def test_cli_options_are_deterministic(tmp_path):
    sweep = write_sweep(tmp_path / "sweep")
    first = report(sweep, "--n-boot", "300", "--boot-seed", "5")[2]
    again = report(sweep, "--n-boot", "300", "--boot-seed", "5")[2]
    other = report(sweep, "--n-boot", "300", "--boot-seed", "6")[2]
    pd.testing.assert_frame_equal(first, again)
    assert not first["ci_low"].equals(other["ci_low"])


def test_cli_unknown_reference_is_an_error_listing_the_methods(tmp_path, capsys):
    sweep = write_sweep(tmp_path / "sweep")
    assert report(sweep, "--reference", "kcenter")[0] == 2
    err = capsys.readouterr().err.strip()
    assert err == ("goracs-report: error: --reference kcenter: no such selection in the sweep "
                   "(present: none, random, goracs)")


@pytest.mark.parametrize("change, expected", [
    (lambda f: f[f["row"] != 17], "different test rows (300 vs 299 rows; row 17 is in one only)"),
    (lambda f: f.assign(user=f["user"].where(f["row"] != 5, "someone")), "row 5 has user 'u5' vs 'someone'"),
])
def test_cli_unequal_test_rows_name_both_files(tmp_path, capsys, change, expected):
    sweep = write_sweep(tmp_path / "sweep")
    path = sweep / "seqrec_goracs_b64_s1" / FILENAME
    change(pd.read_parquet(path)).to_parquet(path, index=False)
    assert report(sweep)[0] == 2
    err = capsys.readouterr().err
    assert err.startswith("goracs-report: error: ") and len(err.strip().splitlines()) == 1
    assert expected in err and str(path) in err and str(sweep / "seqrec_goracs_b128_s0" / FILENAME) in err


def test_cli_missing_records_fall_back_to_welch_and_say_so(tmp_path, caplog):
    sweep = write_sweep(tmp_path / "sweep")
    (sweep / "seqrec_goracs_b128_s1" / FILENAME).unlink()
    code, markdown, csv = report(sweep)
    assert code == 0
    goracs = line(csv, "goracs", "128")
    assert goracs["interval"] == "welch" and goracs["n_rows"] == 0
    assert line(csv, "goracs", "64")["interval"] == "bootstrap"  # only the cell with the missing file falls back
    assert "†: Welch t interval over seed means (no per-sample test_outputs.parquet: older runs)" in markdown
    assert "]† " in next(r for r in markdown.splitlines() if r.startswith("| goracs")) + " "
    assert "1 run(s) have no test_outputs.parquet" in caplog.text and "seqrec_goracs_b128_s1" in caplog.text
