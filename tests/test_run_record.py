"""metrics.json facts kept by goracs.run_record: the ``variant`` axis, the sweep objective, the CLI summary."""

from __future__ import annotations

import math

from goracs.run_record import RunRecord, summary_table, sweep_objective, variant


def test_variant_is_the_overrides_beyond_the_table_axes():
    assert variant(["budget=8", "seed=1", "selection=goracs", "+experiment=x", "logger=none"]) == "default"
    assert variant(["selection.lam=0.0", "budget=8", "+features.cutoff_len=256", "~resume"]) == \
        "+features.cutoff_len=256,selection.lam=0.0"


def test_record_carries_the_variant_after_the_identity(tmp_path):
    record = RunRecord(tmp_path, {"data": "ml100k", "experiment": "e"}, {"seed": 0}, ["selection.lam=0.5"],
                       tmp_path)
    assert list(record.data)[:4] == ["data", "experiment", "variant", "status"]
    assert record.data["variant"] == "selection.lam=0.5" and record.data["status"] == "running"


def test_sweep_objective_is_the_validation_loss_or_inf():
    assert sweep_objective({"train/best_val_loss": 0.5, "test/loss": 0.1}) == 0.5
    assert sweep_objective({"train/best_val_loss": math.nan}) == math.inf
    assert sweep_objective(None) == math.inf


def test_summary_table_text():
    text = summary_table("selection el2n, budget 4", {"select/time_s": 0.00041, "n_selected": 4, "trace": [1.0]})
    assert text == ("\nselection el2n, budget 4\n-------------------------\nselect/time_s  0.0004\nn_selected     4")


def test_job_key_ignores_how_nodes_are_built_but_not_their_values():
    from goracs.run_record import job_key

    job = {"features": {"batch_size": 8, "cutoff_len": 512}, "selection": {"lam": 0.1}, "cutoff_len": 512}
    built = {"features": {"_target_": "goracs.features.config.FeatureConfig", "batch_size": 8, "cutoff_len": 512},
             "selection": {"_target_": "x.Y", "_partial_": True, "lam": 0.1}}
    assert job_key(job) == job_key(built)
    assert job_key(job) != job_key({**job, "selection": {"lam": 0.2}})
