"""Seed-aware intervals of goracs-report against independent truth.

* the statistics on synthetic values: the user-clustered sandwich variance against brute-force user resampling,
  DeLong's AUC influence against scikit-learn and the bootstrap, the t test against scipy's pooled and Welch
  t-tests, Holm against a hand-computed example, the test-noise bootstrap;
* the CLI end to end on sweep folders written here (metrics.json + test_outputs.parquet per job): the interval
  recomputed by hand from the CSV's parts, markers and their family, the minimum seed count, ``--reference none``,
  CTR AUC, records inside Hydra-named folders, and every bad input.
(The calibration of the procedure on simulated sweeps is tests/test_report_calibration.py.)
"""

from __future__ import annotations

import json
import logging
import math
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from conftest import task_named
from goracs.evaluation.records import FILENAME, read_records
from goracs.report.cli import main
from goracs.report.statistics import (_weighted_auc, auc_influence, backing, holm, influence, noise_interval,
                                      sample_values, t_test)
from goracs.report.tables import sanitise

N_ROWS = 300


def metrics_from_records(records: pd.DataFrame, task: str) -> dict[str, float]:
    """The job's ``test/*`` values as the evaluation stage computes them: the task object's own metrics."""
    return task_named(task).metrics(records, (5, 10))

# (selection, budget) -> shift of the per-sample loss and of the ranks against the shared per-row baseline
EFFECTS = {("random", 64): (0.0, 0), ("random", 128): (-0.05, 0), ("goracs", 64): (0.0, 0),
           ("goracs", 128): (-0.35, -6), ("none", 0): (0.6, 12)}


# ---------------------------------------------------------------- the statistics on synthetic values

def test_clustered_variance_of_a_mean_matches_user_resampling_and_the_iid_closed_form():
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(80), rng.integers(1, 9, 80))
    x = rng.normal(0, 1, users.size) + rng.normal(0, 1, 80)[users]  # strong within-user correlation
    mean, phi = influence(x, users, 80)
    sandwich = 80 / 79 * (phi ** 2).sum()
    counts = rng.multinomial(80, np.full(80, 1 / 80), size=4000)[:, users]  # users drawn with replacement
    brute = counts @ x / counts.sum(axis=1)  # the mean over the drawn users' rows
    assert mean == pytest.approx(x.mean()) and sandwich == pytest.approx(brute.var(), rel=0.12)
    assert sandwich > 2 * x.var(ddof=1) / x.size  # clustering matters here: the iid variance is far too small
    iid = np.arange(200)  # every row its own user: the textbook var(x)/N
    y = rng.normal(size=200)
    assert 200 / 199 * (influence(y, iid, 200)[1] ** 2).sum() == pytest.approx(y.var(ddof=1) / 200)
    y[::4] = np.nan  # nulls are left out of the mean and of its influence
    assert influence(y, iid, 200)[0] == pytest.approx(np.nanmean(y))


def test_auc_influence_matches_sklearn_and_user_resampling():
    rng = np.random.default_rng(1)
    users = np.repeat(np.arange(120), 5)
    labels = rng.integers(0, 2, users.size).astype(float)
    scores = np.round(labels * 0.6 + rng.normal(0, 1, users.size) + rng.normal(0, 0.7, 120)[users], 1)  # ties
    area, phi = auc_influence(labels, scores, users, 120)
    assert area == pytest.approx(roc_auc_score(labels, scores))
    counts = rng.multinomial(120, np.full(120, 1 / 120), size=3000)[:, users]  # user resamples as row weights
    assert _weighted_auc(counts[:3], labels, scores) == pytest.approx(  # the weighted AUC is sklearn's on them
        [roc_auc_score(np.repeat(labels, c), np.repeat(scores, c)) for c in counts[:3]])
    brute = _weighted_auc(counts, labels, scores)
    assert 120 / 119 * (phi ** 2).sum() == pytest.approx(brute.var(), rel=0.15)
    assert math.isnan(auc_influence(np.ones(4), np.arange(4.0), np.arange(4), 4)[0])


def test_t_test_equals_scipys_pooled_and_welch_tests():
    rng = np.random.default_rng(2)
    a, b = rng.normal(0.3, 1.0, 4), rng.normal(0.0, 1.0, 6)
    pooled = ((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1)) / (a.size + b.size - 2)
    se, df, low, high, p = t_test(a.mean() - b.mean(), [pooled * (1 / 4 + 1 / 6)], [8])
    assert p == pytest.approx(stats.ttest_ind(a, b).pvalue) and df == pytest.approx(8)
    assert high - low == pytest.approx(2 * stats.t.ppf(0.975, 8) * se)
    _, df, _, _, p = t_test(a.mean() - b.mean(), [a.var(ddof=1) / 4, b.var(ddof=1) / 6], [3, 5])
    assert p == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    # a known (infinite-df) term adds variance but no uncertainty about it: the df stays the estimated term's
    assert t_test(0.5, [0.01, 0.01], [np.inf, 4])[1] == pytest.approx(4 * 0.02 ** 2 / 0.01 ** 2)
    # vectorised over leading axes
    assert t_test(np.zeros(3), np.full((3, 1), 0.04), np.full((3, 1), 10.0))[0].tolist() == [0.2] * 3


def test_holm_against_a_hand_computed_example():
    # sorted 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 -> max(0.06, 0.04) = 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])


def test_noise_interval_of_identical_cells_is_zero_and_weighted_auc_equals_sklearn():
    rng = np.random.default_rng(3)
    replicates = [rng.normal(size=500) for _ in range(3)]
    assert noise_interval(replicates, replicates) == (0.0, 0.0)
    labels, scores = rng.integers(0, 2, 80), np.round(rng.random(80), 1)
    idx = rng.integers(0, 80, size=(6, 80))
    weights = np.stack([np.bincount(i, minlength=80) for i in idx])
    assert _weighted_auc(weights, labels, scores) == pytest.approx([roc_auc_score(labels[i], scores[i])
                                                                    for i in idx])


@pytest.mark.parametrize("task", ["seqrec", "ctr"])
def test_per_sample_values_average_to_the_record_metrics(task):
    """The vectors behind the row term are the single metric definitions of records.py, sample by sample."""
    records = make_records(np.random.default_rng(7), task, "random", (0.0, 0))
    reported = metrics_from_records(records, task)
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
    frame = pd.DataFrame({"row": rows, "user": [f"u{i // 3}" for i in rows], "item": [f"i{i % 50}" for i in rows]})
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


def write_job(root: Path, task: str, selection: str, budget: int, seed: int, records: bool = True,
              name: str | None = None) -> Path:
    """A job folder: metrics.json (test/* from the records, as the evaluation stage writes them) and, unless
    ``records=False``, test_outputs.parquet."""
    rng = np.random.default_rng([zlib.crc32(selection.encode()), budget, seed])  # stable across processes
    frame = make_records(rng, task, selection, EFFECTS.get((selection, budget), EFFECTS.get((selection, 0))))
    folder = root / (name or f"{task}_{selection}_b{budget}_s{seed}")
    folder.mkdir(parents=True)
    metrics = {f"test/{k}": v for k, v in metrics_from_records(frame, task).items()}
    record = {"data": "games", "task": task, "model": "smollm2", "selection": selection, "budget": budget,
              "seed": seed, "status": "ok", "run_dir": str(folder), "config_key": f"{selection}-{budget}-{seed}",
              "created_at": "2025-01-01T00:00:00+00:00", "select/time_s": 0.5} | metrics
    (folder / "metrics.json").write_text(json.dumps(record))
    if records:
        frame.to_parquet(folder / FILENAME, index=False)
    return folder


def write_sweep(root: Path, task: str = "seqrec", seeds: int = 3) -> Path:
    """random and goracs x budgets 64, 128 x ``seeds`` seeds, plus one `none` run (seed 0; its budget is ignored)."""
    for selection in ("random", "goracs"):
        for budget in (64, 128):
            for seed in range(seeds):
                write_job(root, task, selection, budget, seed)
    write_job(root, task, "none", 0, 0)
    return root


def report(sweep: Path, *extra: str, metric: str = "test/loss") -> tuple[int, str, pd.DataFrame | None]:
    out = sweep.parent / "out"
    code = main([str(sweep), "--out", str(out), "--metric", metric, "--no-plots", "--n-boot", "400", *extra])
    stem = out / f"games_{'ctr' if 'ctr' in sweep.name else 'seqrec'}_smollm2_{sanitise(metric)}"
    if code != 0:
        return code, "", None
    return code, stem.with_suffix(".md").read_text(), pd.read_csv(stem.with_suffix(".csv"), dtype={"budget": str})


def line(csv: pd.DataFrame, selection: str, budget: str) -> pd.Series:
    return csv[(csv["selection"] == selection) & (csv["budget"] == budget)].iloc[0]


def metric_values(sweep: Path, selection: str, budget: int, seeds: int = 3, metric: str = "test/loss",
                  task: str = "seqrec") -> np.ndarray:
    return np.array([json.loads((sweep / f"{task}_{selection}_b{budget}_s{s}" / "metrics.json").read_text())[metric]
                     for s in range(seeds)])


def test_cli_interval_is_the_documented_formula_recomputed_by_hand(tmp_path):
    sweep = write_sweep(tmp_path / "sweep")
    code, markdown, csv = report(sweep)
    assert code == 0
    g, r = metric_values(sweep, "goracs", 128), metric_values(sweep, "random", 128)
    goracs = line(csv, "goracs", "128")
    assert goracs["diff"] == pytest.approx(g.mean() - r.mean())
    pooled = (g.var(ddof=1) + r.var(ddof=1)) / 2  # the column's two trained methods, 2 df each
    assert goracs["seed_var"] == pytest.approx(pooled * (1 / 3 + 1 / 3))
    assert goracs["row_var"] >= 0 and goracs["se"] == pytest.approx(math.sqrt(goracs["seed_var"] + goracs["row_var"]))
    df = (goracs["seed_var"] + goracs["row_var"]) ** 2 / (goracs["seed_var"] ** 2 / 4 + goracs["row_var"] ** 2 / 99)
    assert goracs["df"] == pytest.approx(df)  # Satterthwaite: pooled df 4, 100 users - 1
    half = stats.t.ppf(0.975, df) * goracs["se"]
    assert (goracs["ci_low"], goracs["ci_high"]) == pytest.approx((goracs["diff"] - half, goracs["diff"] + half))
    assert goracs["p"] == pytest.approx(2 * stats.t.sf(abs(goracs["diff"]) / goracs["se"], df))
    compared = csv[csv["interval"].notna()]
    assert sorted(compared["selection"] + compared["budget"]) == ["goracs128", "goracs64"]
    assert compared["p_adj"].tolist() == pytest.approx(holm(compared["p"]).tolist())  # family: this table
    assert (goracs["significant"], goracs["interval"], goracs["n_users"], goracs["adjust"]) == (
        "better", "seed-aware", 100, "holm")
    assert goracs["noise_low"] < goracs["diff"] < goracs["noise_high"]
    assert line(csv, "goracs", "64")["significant"] == "none"  # no effect at 64
    assert "Holm-adjusted p < 0.05 within this table (family: its 2 comparisons with random)" in markdown
    assert "test rows clustered by user (100 users)" in markdown and "No interval for none (budget-less" in markdown
    row = next(r for r in markdown.splitlines() if r.startswith("| goracs"))
    assert row.rstrip(" |").endswith("▲") and f"[{goracs['ci_low']:+.4f}".replace("-", "−") in row


def test_cli_adjust_none_marks_by_unadjusted_p_and_test_noise_is_printed_without_markers(tmp_path):
    sweep = write_sweep(tmp_path / "sweep")
    _, markdown, csv = report(sweep, "--adjust", "none")
    compared = csv["interval"].notna()
    assert compared.sum() == 2 and (csv.loc[compared, "p_adj"] == csv.loc[compared, "p"]).all()
    assert "unadjusted p < 0.05 (--adjust none)" in markdown
    _, noise, csv2 = report(sweep, "--interval", "test-noise")
    goracs = line(csv2, "goracs", "128")
    row = next(r for r in noise.splitlines() if r.startswith("| goracs"))
    assert f"[{goracs['noise_low']:+.4f}".replace("-", "−") in row and "▲" not in row
    assert "test-noise interval" in noise and goracs["significant"] == "better"  # the CSV keeps the verdict


def test_cli_two_seeds_print_intervals_but_no_markers_and_say_why(tmp_path, caplog):
    sweep = write_sweep(tmp_path / "sweep", seeds=2)
    code, markdown, csv = report(sweep)
    assert code == 0 and (csv["significant"] == "none").all() and csv["ci_low"].notna().sum() == 2
    assert "No markers where a cell has fewer than 3 seeds (--min-seeds)" in markdown
    assert "▲ |" not in markdown and "▼ |" not in markdown
    warning = [r.getMessage() for r in caplog.records if "--min-seeds" in r.getMessage()]
    assert len(warning) == 1 and str(sweep) in warning[0]
    assert line(report(sweep, "--min-seeds", "2")[2], "goracs", "128")["significant"] == "better"


def test_cli_reference_none_has_no_seed_term_on_its_side(tmp_path):
    sweep = write_sweep(tmp_path / "sweep")
    code, markdown, csv = report(sweep, "--reference", "none")
    assert code == 0
    none = json.loads((sweep / "seqrec_none_b0_s0" / "metrics.json").read_text())["test/loss"]
    for budget in (64, 128):
        g, r = metric_values(sweep, "goracs", budget), metric_values(sweep, "random", budget)
        pooled = (g.var(ddof=1) + r.var(ddof=1)) / 2
        for selection in ("random", "goracs"):
            cell = line(csv, selection, str(budget))
            assert cell["diff"] == pytest.approx(cell["mean"] - none)
            assert cell["seed_var"] == pytest.approx(pooled / 3)  # 1/n_m only: none does not train
            assert (cell["significant"], cell["reference"]) == ("better", "none")
    assert "| none      | " in markdown and " (ref) |" in markdown and "No interval for" not in markdown


def test_cli_ctr_auc_is_a_per_job_metric_with_a_delong_row_term(tmp_path):
    sweep = write_sweep(tmp_path / "ctr_sweep", task="ctr")
    code, markdown, csv = report(sweep, metric="test/auc")
    assert code == 0
    goracs = line(csv, "goracs", "128")
    g = metric_values(sweep, "goracs", 128, metric="test/auc", task="ctr")
    r = metric_values(sweep, "random", 128, metric="test/auc", task="ctr")
    assert goracs["diff"] == pytest.approx(g.mean() - r.mean())  # a difference of AUCs, not a mean of rows
    assert goracs["interval"] == "seed-aware" and goracs["row_var"] > 0 and goracs["significant"] == "worse"
    assert goracs["noise_low"] <= goracs["diff"] <= goracs["noise_high"]
    assert main([str(sweep), "--out", str(tmp_path / "plots"), "--metric", "test/auc", "--n-boot", "200"]) == 0
    for name in ("games_ctr_smollm2_test_auc.png", "games_ctr_smollm2_test_auc_diff.png"):
        png = (tmp_path / "plots" / name).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 1000


@pytest.mark.parametrize("task", ["seqrec", "ctr"])
def test_cli_every_test_metric_gets_seed_aware_intervals(tmp_path, task):
    sweep = write_sweep(tmp_path / f"{task}_sweep", task=task)
    assert main([str(sweep), "--out", str(tmp_path / "out"), "--no-plots", "--n-boot", "200"]) == 0
    tables = sorted((tmp_path / "out").glob("*.csv"))
    assert len(tables) == (14 if task == "seqrec" else 4)  # every test/* key of the task's metrics
    for path in tables:
        csv = pd.read_csv(path, dtype={"budget": str})
        compared = csv[csv["selection"] == "goracs"]
        assert (compared["interval"] == "seed-aware").all() and compared["ci_low"].le(compared["ci_high"]).all(), path
        assert csv.loc[csv["selection"] != "goracs", "ci_low"].isna().all()  # random is the reference, none budget-less


def test_cli_reads_records_inside_hydra_named_folders(tmp_path):
    """A job folder named like Hydra's sweep dirs: pyarrow's hive partitioning must stay off."""
    sweep = tmp_path / "sweep"
    for selection in ("random", "goracs"):
        for seed in range(3):
            write_job(sweep, "seqrec", selection, 128, seed, name=f"budget=128,seed={seed},selection={selection}")
    path = sweep / "budget=128,seed=0,selection=random" / FILENAME
    assert "budget" in pd.read_parquet(path).columns  # what pyarrow infers from the path by default
    assert list(read_records(path).columns) == list(pd.read_parquet(path, partitioning=None).columns)
    assert "budget" not in read_records(path).columns and "seed" not in read_records(path).columns
    code, _, csv = report(sweep)
    assert code == 0 and line(csv, "goracs", "128")["interval"] == "seed-aware"


def test_cli_noise_interval_is_deterministic_in_the_boot_seed(tmp_path):
    sweep = write_sweep(tmp_path / "sweep")
    first = report(sweep, "--n-boot", "300", "--boot-seed", "5")[2]
    again = report(sweep, "--n-boot", "300", "--boot-seed", "5")[2]
    other = report(sweep, "--n-boot", "300", "--boot-seed", "6")[2]
    pd.testing.assert_frame_equal(first, again)
    assert not first["noise_low"].equals(other["noise_low"]) and first["ci_low"].equals(other["ci_low"])


def test_cli_unknown_reference_is_an_error_listing_the_methods(tmp_path, capsys):
    sweep = write_sweep(tmp_path / "sweep")
    assert report(sweep, "--reference", "kcenter")[0] == 2
    err = capsys.readouterr().err.strip()
    assert err == ("goracs-report: error: --reference kcenter: no such selection in the sweep "
                   "(present: none, random, goracs)")


@pytest.mark.parametrize("change, expected", [
    (lambda f: f[f["row"] != 17], "different test rows (300 vs 299 rows; row 17 is in one only)"),
    (lambda f: f.assign(user=f["user"].where(f["row"] != 5, "someone")), "row 5 has user 'u1' vs 'someone'"),
])
def test_cli_unequal_test_rows_name_both_files(tmp_path, capsys, change, expected):
    sweep = write_sweep(tmp_path / "sweep")
    path = sweep / "seqrec_goracs_b64_s1" / FILENAME
    change(read_records(path)).to_parquet(path, index=False)
    assert report(sweep)[0] == 2
    err = capsys.readouterr().err
    assert err.startswith("goracs-report: error: ") and len(err.strip().splitlines()) == 1
    assert expected in err and str(path) in err and str(sweep / "seqrec_goracs_b128_s0" / FILENAME) in err


def test_cli_metric_without_per_sample_values_is_one_warning_line(tmp_path, caplog):
    sweep = write_sweep(tmp_path / "sweep")
    code, markdown, csv = report(sweep, metric="select/time_s")
    assert code == 0 and csv["ci_low"].isna().all() and "No intervals: select/time_s has no per-sample" in markdown
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("--metric select/time_s: no per-sample values")


@pytest.mark.parametrize("argv, expected", [
    (["--min-seeds", "1"], "--min-seeds 1: must be at least 2"),
    (["--n-boot", "0"], "--n-boot 0: must be at least 1"),
])
def test_cli_bad_options_are_one_line(tmp_path, capsys, argv, expected):
    sweep = write_sweep(tmp_path / "sweep")
    assert report(sweep, *argv)[0] == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"goracs-report: error: {expected}") and len(err.splitlines()) == 1


def test_cli_missing_records_give_a_seed_only_interval_and_say_so(tmp_path, caplog):
    sweep = write_sweep(tmp_path / "sweep")
    (sweep / "seqrec_goracs_b128_s1" / FILENAME).unlink()
    code, markdown, csv = report(sweep)
    assert code == 0
    goracs = line(csv, "goracs", "128")
    assert goracs["interval"] == "seed-only" and goracs["row_var"] == 0 and goracs["n_users"] == 0
    assert goracs["ci_high"] - goracs["ci_low"] > 0
    assert line(csv, "goracs", "64")["interval"] == "seed-aware"  # only the cell with the missing file falls back
    assert "†: seed-only interval (no per-sample test_outputs.parquet)" in markdown
    assert "]† " in next(r for r in markdown.splitlines() if r.startswith("| goracs")) + " "
    assert "1 run(s) have no test_outputs.parquet" in caplog.text and "seqrec_goracs_b128_s1" in caplog.text


def test_cli_zero_variance_gives_no_interval_never_a_zero_width_one(tmp_path):
    """Old runs (no records) whose seeds agree exactly: the seed-only interval would have width 0."""
    sweep = tmp_path / "sweep"
    for selection, value in (("random", 0.5), ("goracs", 0.4)):
        for seed in range(3):
            folder = sweep / f"{selection}_{seed}"
            folder.mkdir(parents=True)
            (folder / "metrics.json").write_text(json.dumps({
                "data": "games", "task": "seqrec", "model": "smollm2", "selection": selection, "budget": 64,
                "seed": seed, "status": "ok", "test/loss": value}))
    code, markdown, csv = report(sweep)
    assert code == 0 and csv["ci_low"].isna().all() and (csv["significant"] == "none").all()
    assert "No interval for goracs @ 64 (zero variance across seeds and test rows (identical runs?))" in markdown
