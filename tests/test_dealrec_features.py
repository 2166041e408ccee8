"""The ``influence`` feature in the feature store: computed once, cached by what determines it, the surrogate cached
apart (LiSSA options re-score without retraining), and clear errors for unusable sequences."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import SEQREC
from goracs.data.samples import Samples
from goracs.errors import ConfigError
from goracs.features import FeatureStore
from goracs.features.config import FeatureConfig

SMALL = {"surrogate": {"hidden_size": 8, "epochs": 2, "batch_size": 16},
         "influence": {"recursion_depth": 20, "batch_size": 8}, "device": "cpu"}


def toy_samples(n: int = 30, length: int = 5, seed: int = 0) -> Samples:
    rng = np.random.default_rng(seed)
    items = pd.DataFrame({"item": [str(i) for i in range(1, 21)], "title": [f"t{i}" for i in range(1, 21)]})

    def frame(rows: int) -> pd.DataFrame:
        hist = [[str(x) for x in rng.integers(1, 21, rng.integers(0, length + 1))] for _ in range(rows)]
        return pd.DataFrame({"user": [str(u) for u in range(rows)], "history": hist,
                             "item": [str(x) for x in rng.integers(1, 21, rows)]})

    return Samples(train=frame(n), valid=frame(10), test=frame(5), items=items, task="seqrec", domain="generic",
                   name="toy")


def store(samples: Samples, cache: Path, surrogate: dict | None = None, influence: dict | None = None) -> FeatureStore:
    config = {**SMALL, "surrogate": {**SMALL["surrogate"], **(surrogate or {})},
              "influence": {**SMALL["influence"], **(influence or {})}}
    return FeatureStore(samples, None, None, None, faithful=True, config=config, cache_dir=cache, task=SEQREC)


def files(cache: Path, kind: str) -> set[str]:
    return {p.name for p in (cache / kind).glob("*") if p.suffix in (".npy", ".pt")}


def test_influence_is_computed_once_then_read_from_the_cache(tmp_path):
    samples = toy_samples()
    first = store(samples, tmp_path)
    values = first.get("influence")
    assert values.shape == (30,) and values.dtype == np.float32 and np.isfinite(values).all()
    assert first.computed == [("influence", "train")]
    again = store(samples, tmp_path)
    np.testing.assert_array_equal(again.get("influence"), values)
    assert again.computed == []


def test_lissa_options_rescore_without_retraining_the_surrogate(tmp_path):
    samples = toy_samples()
    base = store(samples, tmp_path).get("influence")
    surrogates = files(tmp_path, "surrogates")
    assert len(surrogates) == 1
    other = store(samples, tmp_path, influence={"seed": 1}).get("influence")
    assert files(tmp_path, "surrogates") == surrogates and len(files(tmp_path, "features")) == 2
    assert not np.array_equal(base, other)
    store(samples, tmp_path, surrogate={"epochs": 3}).get("influence")
    assert len(files(tmp_path, "surrogates")) == 2


def test_keys_follow_the_values(tmp_path):
    samples = toy_samples()
    key = store(samples, tmp_path).key("influence", "train")
    assert store(samples, tmp_path, influence={"batch_size": 3}).key("influence", "train") == key  # memory only
    assert store(samples, tmp_path, surrogate={"seed": 1}).key("influence", "train") != key
    assert store(samples, tmp_path, surrogate={"checkpoint": "best"}).key("influence", "train") != key
    assert store(toy_samples(seed=1), tmp_path).key("influence", "train") != key
    spec = FeatureConfig.from_mapping(SMALL).value_spec()  # a cached selection depends on them too
    assert spec["surrogate"]["epochs"] == 2 and spec["influence"]["recursion_depth"] == 20


def test_best_checkpoint_trains_with_validation(tmp_path):
    values = store(toy_samples(), tmp_path, surrogate={"checkpoint": "best", "eval_every": 1}).get("influence")
    assert np.isfinite(values).all()


def test_sequences_too_short_name_the_options(tmp_path):
    samples = toy_samples()
    samples.train["history"] = [[h[0]] if h else [] for h in samples.train["history"]]  # <= 1 history item
    with pytest.raises(ConfigError, match="data.history_len.*history_and_target"):
        store(samples, tmp_path).get("influence")
    assert np.isfinite(store(samples, tmp_path, surrogate={"sequence": "history_and_target"}).get("influence")).all()


def test_influence_is_a_train_feature(tmp_path):
    with pytest.raises(KeyError, match="train split"):
        store(toy_samples(), tmp_path).get("influence", "valid")


@pytest.mark.parametrize("node, option, value", [("surrogate", "checkpoint", "middle"),
                                                 ("surrogate", "epochs", 0), ("influence", "scale", 0.0),
                                                 ("influence", "damping", 1.5), ("surrogate", "hidden_size", 63)])
def test_bad_surrogate_options_name_the_key(node, option, value):
    with pytest.raises(ConfigError, match=rf"features\.{node}\.{option}"):
        FeatureConfig.from_mapping({node: {option: value}})
