"""A real multirun (2 methods x 2 budgets x 2 seeds on tiny_llama) in a subprocess, then goracs-report with paired
intervals vs random, then a resumed launch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


def _launch(sweep: Path, cache: Path, axes=("selection=random,grand", "budget=4,8", "seed=0,1")) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "goracs.run", "-m", "experiment_name=test_sweep", *axes, "model=tiny_llama", "data.max_train=32", "data.max_valid=8", "data.max_test=8",
            "trainer.lightning.max_epochs=1", "trainer.warmup_steps=0", "eval.max_new_tokens=4", "eval.num_beams=1",
            "logger=none",
            f"hydra.sweep.dir={sweep}", f"paths.cache_dir={cache}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_multirun_report_and_resume(tmp_path):
    sweep, cache = tmp_path / "sweep", tmp_path / "cache"
    first = _launch(sweep, cache)
    assert first.returncode == 0, first.stderr[-3000:]
    files = sorted(sweep.rglob("metrics.json"))
    assert len(files) == 8
    runs = [json.loads(f.read_text()) for f in files]
    # warmup 0: the one optimiser step of a job moves the adapter (a warmup step has lr 0), so seeds differ
    assert len({r["test/loss"] for r in runs}) > 1
    assert {(r["selection"], r["budget"], r["seed"]) for r in runs} == {
        (m, b, s) for m in ("random", "grand") for b in (4, 8) for s in (0, 1)}
    assert all(r["status"] == "ok" and r["experiment"] == "test_sweep" for r in runs)
    for f in files:  # one record per test sample, the same row ids for every job (paired comparisons)
        records = pd.read_parquet(f.parent / "test_outputs.parquet", partitioning=None)  # hive folder names off
        assert list(records["row"]) == list(range(8))

    out = tmp_path / "report"
    report = subprocess.run([sys.executable, "-m", "goracs.report", str(sweep), "--out", str(out), "--metric",
                             "test/ndcg@10", "--metric", "test/loss", "--reference", "random", "--n-boot", "500"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    csv = pd.read_csv(next(out.glob("*test_ndcg_at10.csv")))
    assert len(csv) == 4 and set(csv["selection"]) == {"random", "grand"}
    for (method, budget), cell in csv.groupby(["selection", "budget"]):  # two seeds per cell: mean of the runs
        values = [r["test/ndcg@10"] for r in runs if (r["selection"], r["budget"]) == (method, budget)]
        assert cell["mean"].item() == pytest.approx(sum(values) / 2, abs=1e-9)
    loss = pd.read_csv(next(out.glob("*test_loss.csv")))
    grand = loss[loss["selection"] == "grand"]
    assert grand["ci_low"].notna().all() and (grand["ci_low"] <= grand["diff"]).all()
    assert (grand["diff"] <= grand["ci_high"]).all() and set(grand["reference"]) == {"random"}
    markdown = next(out.glob("*test_loss.md")).read_text()
    assert "(ref)" in markdown and "[" in markdown  # the reference row, and intervals in the other cells
    assert list(out.glob("*.png")) and list(out.glob("*.md"))

    stamps = {f: f.stat().st_mtime_ns for f in files}
    second = _launch(sweep, cache)  # the same sweep again: every job is already ok
    assert second.returncode == 0, second.stderr[-3000:]
    assert {f: f.stat().st_mtime_ns for f in files} == stamps
    assert (second.stdout + second.stderr).count("skipping") == 8


@pytest.mark.slow
def test_a_failing_job_is_recorded_and_the_sweep_goes_on(tmp_path):
    sweep = tmp_path / "sweep"
    done = _launch(sweep, tmp_path / "cache", axes=("selection=random", "budget=100000,4", "stage=select"))
    assert done.returncode == 1, done.stderr[-3000:]  # every job ran, and the exit status reports the failure
    assert "1 ok, 0 skipped (already done), 1 failed" in done.stdout
    runs = {r["budget"]: r for r in (json.loads(f.read_text()) for f in sweep.rglob("metrics.json"))}
    assert runs[100000]["status"] == "failed" and "larger than the training pool" in runs[100000]["error"]
    assert runs[4]["status"] == "ok" and runs[4]["n_selected"] == 4
