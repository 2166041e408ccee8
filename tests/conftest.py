"""Shared fixtures: offline environment, the real data beside the repo, and Hydra composition for runs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# No network: hub calls would stall ~50 s before failing; W&B is off unless a test turns it on.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The per-machine bf16 probe (goracs.models.arithmetic) writes to the test session's own folder, not the user's home.
os.environ.setdefault("GORACS_CACHE_HOME", tempfile.mkdtemp(prefix="goracs-test-home-"))
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one pytest-xdist worker per core: one math thread each, or the workers fight for the cores.
    # Set before any test module imports torch (numpy, MKL and OpenMP read these once, at load).
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("GORACS_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _intra_op_threads_handed_back():
    """Code that changes torch's intra-op thread count must give it back: a count left raised makes every later
    matmul of the process (a test worker, a user's notebook) compete with its neighbours for the cores."""
    import torch

    before = torch.get_num_threads()
    yield
    after = torch.get_num_threads()
    if after != before:
        torch.set_num_threads(before)
        pytest.fail(f"torch's intra-op threads were left at {after} (was {before})")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data sets in ../shared/data (present in CI); tests that need them skip when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


def task_named(name: str, **keys):
    """The task of ``conf/task/<name>.yaml``: its ``_target_`` class built from the file's keys, ``keys`` replacing
    them. The tests' one way from a task's name to a task object (``goracs-run`` builds it from the composed config;
    no stage looks a task up)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    return instantiate(OmegaConf.load(REPO_ROOT / "conf" / "task" / f"{name}.yaml"), **keys)


SEQREC, CTR = task_named("seqrec"), task_named("ctr")  # the two built-in tasks as their yaml files build them


def compose_run_config(overrides: list[str], out_dir: Path, cache_dir: Path):
    """Compose conf/config.yaml as `goracs-run` would, with outputs and caches under the given folders."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.root = str(REPO_ROOT)
        cfg.paths.output_dir = str(out_dir)
        cfg.paths.cache_dir = str(cache_dir)
        cfg.hydra.runtime.output_dir = str(out_dir)
        cfg.hydra.runtime.cwd = str(REPO_ROOT)
    HydraConfig.instance().set_config(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    return cfg
