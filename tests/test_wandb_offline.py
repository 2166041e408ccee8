"""W&B offline: a run writes its offline run folder; the metrics logged there equal metrics.json."""

from __future__ import annotations

import json

import pytest

from conftest import compose_run_config
from wandb_records import summary_and_config


def test_offline_run_holds_the_test_metrics(tmp_path, monkeypatch):
    from goracs.run import run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "job"
    cfg = compose_run_config(["model=tiny_llama", "selection=random", "budget=8", "data.max_train=32",
                              "data.max_valid=8", "data.max_test=8", "trainer.lightning.max_epochs=1",
                              "eval.max_new_tokens=4", "eval.num_beams=1", "logger=wandb",
                              "logger.wandb.mode=offline", "experiment_name=wandb_test"], out, tmp_path / "cache")
    metrics = run(cfg)
    runs = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1, "expected exactly one offline W&B run in the job folder"
    summary, config = summary_and_config(runs[0])
    on_disk = json.loads((out / "metrics.json").read_text())
    test_keys = [k for k in on_disk if k.startswith("test/")]
    assert test_keys and metrics["status"] == "ok"
    for key in test_keys:
        assert summary[key] == pytest.approx(on_disk[key], rel=1e-9, abs=1e-12), key
    assert config["budget"] == 8 and config["experiment_name"] == "wandb_test"
    assert "select/time_s" in summary


def test_stage_select_reaches_wandb_with_config_and_poo_trace(tmp_path, monkeypatch):
    """The W&B run opens at job start: a job that stops after selection is logged with its config and trace."""
    from goracs.run import run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "job"
    cfg = compose_run_config(["model=tiny_llama", "selection=goracs", "budget=6", "data.max_train=24",
                              "data.max_valid=8", "data.max_test=8", "stage=select", "logger=wandb",
                              "logger.wandb.mode=offline", "experiment_name=wandb_select"], out, tmp_path / "cache")
    assert run(cfg)["status"] == "ok"
    runs = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    summary, config = summary_and_config(runs[0])
    assert config["budget"] == 6 and config["experiment_name"] == "wandb_select"
    assert "select/poo_final" in summary and "select/poo_trace" in summary
