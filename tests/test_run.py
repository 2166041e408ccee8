"""End to end: goracs-run on a small real ML-100K slice with tiny_llama, both tasks (the composed config, in-process)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from conftest import compose_run_config

SLICE = ["data.max_train=48", "data.max_valid=16", "data.max_test=16", "model=tiny_llama", "trainer=cpu",
         "trainer.lightning.max_epochs=1", "eval.max_new_tokens=8", "eval.num_beams=1", "logger=none", "budget=8"]


def _run(overrides, tmp_path, name="job", base=SLICE):
    from goracs.run import run

    cfg = compose_run_config(base + overrides, tmp_path / name, tmp_path / "cache")
    return run(cfg), cfg


@pytest.mark.parametrize("task, expected", [
    ("seqrec", ["test/ndcg@5", "test/hit@5", "test/ndcg@10", "test/hit@10", "test/exact_match"]),
    ("ctr", ["test/auc", "test/logloss"]),
])
def test_end_to_end_writes_metrics_and_indices(tmp_path, task, expected):
    metrics, cfg = _run([f"task={task}", "selection=random"], tmp_path)
    on_disk = json.loads((tmp_path / "job" / "metrics.json").read_text())
    assert on_disk["status"] == "ok"
    for key in ["data", "task", "model", "selection", "budget", "seed", "git_sha", "versions", "config_key",
                "time/data_s", "time/select_s", "time/train_s", "time/eval_s", "n_selected", *expected]:
        assert key in on_disk, key
    assert on_disk["task"] == task and on_disk["selection"] == "random" and on_disk["budget"] == 8
    import torch  # the arithmetic the figures come from: tiny_llama is built in float32 (goracs.models.arithmetic)

    assert on_disk["run/dtype"] == "float32"
    assert on_disk["run/cpu_capability"].split()[0] == torch.backends.cpu.get_cpu_capability()
    records = pd.read_parquet(tmp_path / "job" / "test_outputs.parquet", partitioning=None)  # one row per sample
    assert list(records["row"]) == list(range(16)) and records["loss"].notna().all()
    assert on_disk["test/loss"] == pytest.approx(records["loss"].mean())
    assert {"user", "item", "targets"} <= set(records.columns)
    assert ({"rank", "rank_full", "generated"} if task == "seqrec" else {"label", "p_yes"}) <= set(records.columns)
    for key in expected:
        if key != "test/auc":  # AUC is NaN only when the test slice holds one class; ml-100k has both
            assert math.isfinite(on_disk[key]), key
    assert math.isfinite(on_disk.get("test/auc", 0.0))
    indices = json.loads((tmp_path / "job" / "selected_indices.json").read_text())["indices"]
    assert len(indices) == 8 == on_disk["n_selected"] and len(set(indices)) == 8


def test_same_seed_same_selection_and_resume_skips(tmp_path):
    _run(["selection=random", "seed=3"], tmp_path, "a")
    _run(["selection=random", "seed=3"], tmp_path, "b")
    a = json.loads((tmp_path / "a" / "selected_indices.json").read_text())["indices"]
    b = json.loads((tmp_path / "b" / "selected_indices.json").read_text())["indices"]
    assert a == b
    before = (tmp_path / "a" / "metrics.json").read_text()
    metrics, _ = _run(["selection=random", "seed=3"], tmp_path, "a")  # same folder, same config: skipped
    assert (tmp_path / "a" / "metrics.json").read_text() == before and metrics["status"] == "ok"


@pytest.mark.parametrize("budget", [0, 10_000])
def test_bad_budget_is_a_clear_error(tmp_path, budget):
    with pytest.raises(ValueError, match="budget"):
        _run(["selection=random", f"budget={budget}", "stage=select"], tmp_path)
    if budget == 0:  # wrong whatever the data: refused before any stage (goracs.job_check), no metrics.json
        assert not (tmp_path / "job" / "metrics.json").exists()
    else:  # larger than the pool: known once the data stage has run, before any feature is computed
        assert json.loads((tmp_path / "job" / "metrics.json").read_text())["status"] == "failed"


def test_data_stage_prints_statistics(tmp_path, capsys):
    metrics, _ = _run(["stage=data", "task=ctr"], tmp_path)
    out = capsys.readouterr().out
    assert "ml100k / ctr" in out and metrics["status"] == "ok"


@pytest.mark.parametrize("method", sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "selection").glob("*.yaml")))
def test_every_selection_method_runs_the_whole_pipeline(tmp_path, method):
    """Each conf/selection/*.yaml, end to end on tiny_llama (features shared through one cache per test)."""
    # A budget-free method given budget= explicitly is refused (goracs.job_check): its jobs leave the budget out.
    base = [o for o in SLICE if o != "budget=8"] if method in ("full", "none") else SLICE
    metrics, _ = _run([f"selection={method}", "task=seqrec"], tmp_path, base=base)
    assert metrics["status"] == "ok" and metrics["selection"] == method
    # full ignores the budget (the whole capped pool), none selects nothing and evaluates the initial adapter
    expected = {"full": 48, "none": 0}.get(method, 8)
    assert metrics["n_selected"] == expected and math.isfinite(metrics["test/ndcg@10"])
    assert math.isfinite(metrics["test/loss"]) and metrics["test/loss"] > 0
    if method == "none":
        assert metrics["train/steps"] == 0 and not (tmp_path / "job" / "checkpoints").exists()
