"""hparams_search=goracs_lam: two real Optuna trials over GORACS's λ on tiny_llama, in a subprocess."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]


def test_optuna_searches_lam_on_validation_loss(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="needs the optuna extra")
    sweep = tmp_path / "sweep"
    args = [sys.executable, "-m", "goracs.run", "-m", "hparams_search=goracs_lam", "hydra.sweeper.n_trials=2",
            "hydra.sweeper.sampler.seed=47",  # first draws λ ≈ 0.11 and 0.97: two different coresets of 8 from 32
            "model=tiny_llama", "data.max_train=32", "data.max_valid=8", "data.max_test=8", "budget=8",
            "trainer.lightning.max_epochs=1", "trainer.warmup_steps=0",  # the one step would otherwise have lr 0
            "eval.max_new_tokens=4", "eval.num_beams=1", "logger=none",
            f"hydra.sweep.dir={sweep}", f"paths.cache_dir={tmp_path / 'cache'}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = sweep / "optimization_results.yaml"
    first = results.read_text()

    runs = [json.loads(f.read_text()) for f in sorted(sweep.rglob("metrics.json"))]
    assert len(runs) == 2
    assert all(r["status"] == "ok" and r["selection"] == "goracs" and r["experiment"] == "hparams_goracs_lam"
               for r in runs)
    lams = [float(o.split("=", 1)[1]) for r in runs for o in r["overrides"] if o.startswith("selection.lam=")]
    assert len(lams) == 2 and lams[0] != lams[1] and all(0.0 <= lam <= 1.0 for lam in lams)
    selected = [json.loads((f.parent / "selected_indices.json").read_text())["indices"]
                for f in sorted(sweep.rglob("metrics.json"))]
    assert selected[0] != selected[1]
    losses = [r["train/best_val_loss"] for r in runs]
    assert all(math.isfinite(v) for v in losses) and losses[0] != losses[1], losses  # else "best" is a tie

    best = OmegaConf.to_container(OmegaConf.load(results))
    assert best["best_value"] == pytest.approx(min(losses), rel=1e-9)  # the validation loss, not a test metric
    assert best["best_params"]["selection.lam"] == pytest.approx(lams[losses.index(min(losses))])

    # Re-launching replays the same seeded λ draws: both jobs are skipped (resume) and the result is the same.
    again = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (again.stdout + again.stderr).count("skipping") == 2
    assert len(list(sweep.rglob("metrics.json"))) == 2 and results.read_text() == first
