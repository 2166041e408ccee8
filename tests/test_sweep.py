"""A real multirun (2 methods x 2 budgets on tiny_llama) in a subprocess, then goracs-report, then a resumed launch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


def _launch(sweep: Path, cache: Path, axes=("selection=random,grand", "budget=4,8")) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "goracs.run", "-m", "experiment_name=test_sweep", *axes, "model=tiny_llama", "data.max_train=32", "data.max_valid=8", "data.max_test=8",
            "trainer.lightning.max_epochs=1", "eval.max_new_tokens=4", "eval.num_beams=1", "logger=none",
            f"hydra.sweep.dir={sweep}", f"paths.cache_dir={cache}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_multirun_report_and_resume(tmp_path, shared_data):
    sweep, cache = tmp_path / "sweep", tmp_path / "cache"
    first = _launch(sweep, cache)
    assert first.returncode == 0, first.stderr[-3000:]
    files = sorted(sweep.rglob("metrics.json"))
    assert len(files) == 4
    runs = [json.loads(f.read_text()) for f in files]
    assert {(r["selection"], r["budget"]) for r in runs} == {("random", 4), ("random", 8), ("grand", 4), ("grand", 8)}
    assert all(r["status"] == "ok" and r["experiment"] == "test_sweep" for r in runs)

    out = tmp_path / "report"
    report = subprocess.run([sys.executable, "-m", "goracs.report", str(sweep), "--out", str(out), "--metric",
                             "test/ndcg@10"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    csv = pd.read_csv(next(out.glob("*test_ndcg_at10.csv")))
    assert len(csv) == 4 and set(csv["selection"]) == {"random", "grand"}
    for r in runs:  # one seed per cell: the table's mean is the run's own value
        cell = csv[(csv["selection"] == r["selection"]) & (csv["budget"] == r["budget"])]
        assert cell["mean"].item() == pytest.approx(r["test/ndcg@10"], abs=1e-9)
    assert list(out.glob("*.png")) and list(out.glob("*.md"))

    stamps = {f: f.stat().st_mtime_ns for f in files}
    second = _launch(sweep, cache)  # the same sweep again: every job is already ok
    assert second.returncode == 0, second.stderr[-3000:]
    assert {f: f.stat().st_mtime_ns for f in files} == stamps
    assert (second.stdout + second.stderr).count("skipping") == 4


@pytest.mark.slow
def test_a_failing_job_is_recorded_and_the_sweep_goes_on(tmp_path, shared_data):
    sweep = tmp_path / "sweep"
    done = _launch(sweep, tmp_path / "cache", axes=("selection=random", "budget=100000,4", "stage=select"))
    assert done.returncode == 0, done.stderr[-3000:]
    runs = {r["budget"]: r for r in (json.loads(f.read_text()) for f in sweep.rglob("metrics.json"))}
    assert runs[100000]["status"] == "failed" and "larger than the training pool" in runs[100000]["error"]
    assert runs[4]["status"] == "ok" and runs[4]["n_selected"] == 4
