"""hydra/launcher=submitit_local: a real two-job multirun through submitit's local executor (each job its own
process, launched and awaited by submitit), on the cheap data stage."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_submitit_local_runs_both_jobs(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs the sweep extra")
    sweep, cache, cwd = tmp_path / "sweep", tmp_path / "cache", tmp_path / "cwd"
    cwd.mkdir()  # the default paths.root: nothing may land there (nor in the checkout)
    args = [sys.executable, "-m", "goracs.run", "-m", "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=5", "hydra.launcher.cpus_per_task=1", "hydra.launcher.gpus_per_node=0",
            "stage=data", "seed=0,1", "experiment_name=test_launcher", "logger=none",
            f"hydra.sweep.dir={sweep}", f"paths.cache_dir={cache}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GORACS_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", WANDB_MODE="disabled")
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    runs = {r["seed"]: r for r in (json.loads(f.read_text()) for f in sweep.rglob("metrics.json"))}
    assert sorted(runs) == [0, 1], sorted(runs)
    for seed, record in runs.items():
        assert record["status"] == "ok" and record["experiment"] == "test_launcher", record
        assert record["data"] == "ml100k" and record["data/samples_train"] == 96  # the ml100k default cap
        assert f"seed={seed}" in record["overrides"]
    # Two jobs went through submitit, each with its own folder (named by its process id), log and pickled result;
    # ".submitit/%j" only holds the pickles staged before the ids were known.
    job_dirs = [d for d in (sweep / ".submitit").iterdir() if d.is_dir() and d.name != "%j"]
    assert len(job_dirs) == 2, job_dirs
    for d in job_dirs:
        assert list(d.glob("*_result.pkl")) and list(d.glob("*_log.out")), sorted(p.name for p in d.iterdir())
    assert list(cwd.iterdir()) == []
