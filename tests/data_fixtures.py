"""Helpers for the data-stage tests: compose a ``conf/data`` preset as the run would, build samples once.

The ``shared_data`` fixture itself comes from ``tests/conftest.py``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from omegaconf import OmegaConf

from conftest import task_named
from goracs.data import prepare_samples

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def data_config(preset: str, **overrides) -> dict:
    """``conf/data/<preset>.yaml`` resolved with ``paths.shared_data`` = ``SHARED``, uncapped, then ``overrides``
    (top-level keys, or ``"source.<key>"`` passed through ``**{...}``)."""
    preset_yaml = OmegaConf.load(REPO / "conf" / "data" / f"{preset}.yaml")
    cfg = OmegaConf.create({"paths": {"shared_data": str(SHARED)}, "data": preset_yaml})
    data = OmegaConf.to_container(cfg.data, resolve=True)
    # Tests check the whole data set: drop the demo's CPU caps (ml100k) unless a test sets its own.
    data.update(max_train=None, max_valid=None, max_test=None)
    for key, value in overrides.items():
        if key.startswith("source."):
            data["source"][key.split(".", 1)[1]] = value
        else:
            data[key] = value
    return data


@lru_cache(maxsize=8)
def built(preset: str, task: str, seed: int = 0, overrides: tuple = ()):
    """Samples for a preset (memoised across tests; never cached on disk)."""
    return prepare_samples(data_config(preset, **dict(overrides)), task_named(task), seed, None)
