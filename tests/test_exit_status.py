"""Exit status and messages: a user mistake is one paragraph and exit 2; a multirun prints every job's outcome and
exits 1 when any job failed (in subprocesses, as a user runs goracs-run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = ["model=tiny_llama", "data.max_train=20", "data.max_valid=4", "data.max_test=4", "logger=none", "stage=select",
        "selection=random"]


def _goracs(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "goracs.run", *args, *TINY, f"paths.cache_dir={tmp_path / 'cache'}",
           f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_a_bad_value_names_the_key_and_exits_2(tmp_path):
    done = _goracs(tmp_path, "budget=abc")
    out = done.stdout + done.stderr
    assert done.returncode == 2, out[-2000:]
    assert "budget=abc: expected an integer number of samples" in out and "Traceback" not in out


def test_multirun_with_failed_jobs_prints_a_summary_and_exits_1(tmp_path):
    done = _goracs(tmp_path, "-m", "budget=4,1000")
    out = done.stdout + done.stderr
    assert done.returncode == 1, out[-3000:]
    assert "1 ok, 0 skipped (already done), 1 failed" in out
    assert "budget=1000 is larger than the training pool" in out
    outcomes = {p.parent.name.split(",")[0]: json.loads(p.read_text())["status"]
                for p in (tmp_path / "sweep").rglob("job_outcome.json")}
    assert outcomes == {"budget=4": "ok", "budget=1000": "failed"}


def test_multirun_whose_jobs_all_succeed_exits_0(tmp_path):
    done = _goracs(tmp_path, "-m", "budget=4,6")
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "2 ok, 0 skipped (already done), 0 failed" in done.stdout
