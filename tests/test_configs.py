"""Every prepared experiment composes, and the GPU groups build valid stage options."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from goracs.config import build
from goracs.features.config import FeatureConfig
from goracs.models.finetune import TrainerConfig

CONF = Path(__file__).resolve().parents[1] / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_into_valid_stage_options(experiment):
    # The paper runs need the user's RoBERTa folder (see their header comment); any path passes validation.
    extra = ["features.encoder_path=/models/roberta-base"] if experiment.startswith("paper_") else []
    cfg = _compose([f"experiment={experiment}", *extra])
    job = OmegaConf.to_container(cfg, resolve=False)
    for name in ("features", "trainer", "eval"):  # interpolations resolved against the whole config
        job[name] = OmegaConf.to_container(cfg[name], resolve=True)
    assert isinstance(build(job["features"], "features"), FeatureConfig)
    assert isinstance(build(job["trainer"], "trainer"), TrainerConfig)
    assert callable(build(job["eval"], "eval"))
    if experiment.startswith("paper_"):  # GPU runs: the GPU feature and evaluation groups
        assert cfg.features.device == "cuda" and cfg.features.batch_size == 64
        assert cfg.eval.device == "cuda" and cfg.eval.candidate_batch_size == 100
        assert cfg.eval.batch_size == 8  # the official generation batch is kept


def test_gpu_groups_only_change_batches_and_device():
    cpu, gpu = _compose([]), _compose(["features=gpu", "eval=gpu", "trainer=gpu"])
    changed = {k for k in cpu.features if cpu.features[k] != gpu.features[k]}
    assert changed == {"batch_size", "embed_batch_size", "device"}  # none is a cache key
    changed = {k for k in cpu.eval if cpu.eval[k] != gpu.eval[k]}
    assert changed == {"embed_batch_size", "candidate_batch_size", "device"}
    lightning = gpu.trainer.lightning
    assert lightning.precision == "bf16-mixed" and gpu.trainer.batch_size * lightning.accumulate_grad_batches == 128
