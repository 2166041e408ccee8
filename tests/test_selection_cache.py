"""The selection stage's cache and budget rule: ``SelectionResult.save/load``, ``check_budget`` (lenient for the
contract, strict for goracs-run), ``build_pool`` and ``cached_select`` (computed once, then read; the key)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from conftest import CTR, SEQREC
from goracs.cache import config_key
from goracs.errors import ConfigError
from goracs.selection import ArrayFeatures, Pool, SelectionResult, build_pool, check_budget
from goracs.selection.cache import cached_select

N = 10
IDENTITY = {"data": {"name": "toy"}, "task": {"name": "seqrec"}, "selection": {"_target_": "x.Y"}, "data_seed": 0,
            "method": "counting"}


class StoreLike(ArrayFeatures):
    """An in-memory feature source with what the cache keys on (a FeatureStore's fingerprint and value spec)."""

    def __init__(self):
        super().__init__(train={"score": np.arange(N, dtype=float)})
        self.fingerprint = {"backbone": {"backbone": "tiny"}, "lora": {"r": 8}, "adapter": None}
        self.cfg = SimpleNamespace(value_spec=lambda: {"cutoff_len": 512})
        self.seconds = 0.0


class Counting:
    """Keeps the ``budget`` highest scores; counts its calls."""

    def __init__(self):
        self.calls = 0

    def select(self, pool: Pool, budget: int, *, seed: int) -> SelectionResult:
        self.calls += 1
        scores = pool.features.get("score")
        m = check_budget(budget, pool.size)
        return SelectionResult(np.argsort(-scores)[:m], scores=scores, stats={"time_s": 0.5},
                               traces={"trace": [3.0, 2.0]})


def test_save_load_round_trip(tmp_path):
    full = SelectionResult(np.array([4, 1]), scores=np.linspace(0, 1, N), stats={"time_s": 0.25},
                           traces={"poo_trace": [1.5, 1.25]})
    bare = SelectionResult(np.array([], dtype=np.int64))
    for name, result in (("full", full), ("bare", bare)):
        result.save(tmp_path / f"{name}.npz")
        back = SelectionResult.load(tmp_path / f"{name}.npz")
        assert np.array_equal(back.indices, result.indices) and back.indices.dtype == np.int64
        assert (back.scores is None) == (result.scores is None)
        assert result.scores is None or np.array_equal(back.scores, result.scores)
        assert back.stats == result.stats and back.traces == result.traces


def test_lenient_budget_at_or_above_the_pool_is_the_whole_pool():
    assert check_budget(3, N) == 3
    assert check_budget(N, N) == N and check_budget(N + 5, N) == N


def test_strict_budget_refuses_more_than_the_pool_and_names_both_numbers():
    assert check_budget(N, N, strict=True) == N
    with pytest.raises(ConfigError, match=r"budget=11 is larger than the training pool \(10 samples\); lower budget= "
                                          r"or raise data.max_train, or use selection=full"):
        check_budget(N + 1, N, strict=True)


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("budget", [0, -3])
def test_non_positive_budget_is_a_config_error_in_both_modes(budget, strict):
    with pytest.raises(ConfigError, match=f"budget={budget}: expected a positive number of training samples"):
        check_budget(budget, N, strict=strict)
    assert issubclass(ConfigError, ValueError)  # callers catching ValueError still catch it


def test_build_pool_gives_labels_for_ctr_only():
    train = pd.DataFrame({"user": [7, 7, 9], "label": [1, 0, 1]})
    valid = pd.DataFrame({"user": [7], "label": [0]})
    ctr = build_pool(SimpleNamespace(train=train, valid=valid, task="ctr"), ArrayFeatures(), CTR)
    assert ctr.size == 3 and ctr.labels.tolist() == [1, 0, 1] and ctr.valid_labels.tolist() == [0]
    assert ctr.labels.dtype == np.int64
    seqrec = build_pool(SimpleNamespace(train=train, valid=valid, task="seqrec"), ArrayFeatures(), SEQREC)
    assert seqrec.labels is None and seqrec.valid_labels is None


def test_cached_select_computes_once_then_reads(tmp_path, caplog):
    pool, selector = Pool(size=N, features=StoreLike()), Counting()
    first = cached_select(selector, pool, 3, seed=0, identity=IDENTITY, cache_dir=tmp_path)
    with caplog.at_level("INFO", logger="goracs.selection.cache"):
        again = cached_select(selector, pool, 3, seed=0, identity=IDENTITY, cache_dir=tmp_path)
    assert selector.calls == 1 and "selection read from cache" in caplog.text
    assert np.array_equal(first.indices, [7, 8, 9]) and np.array_equal(again.indices, first.indices)
    assert again.stats == first.stats and again.traces == {"trace": [3.0, 2.0]}
    cached_select(selector, pool, 3, seed=1, identity=IDENTITY, cache_dir=tmp_path)  # another seed: computed
    cached_select(selector, pool, 3, seed=0, identity={**IDENTITY, "method": "other"}, cache_dir=tmp_path)
    assert selector.calls == 3


def test_the_key_is_the_hash_of_identity_model_features_budget_and_seed(tmp_path):
    """The key goracs-run used before the cache moved into the selection stage: old entries stay valid."""
    pool = Pool(size=N, features=StoreLike())
    cached_select(Counting(), pool, 3, seed=2, identity=IDENTITY, cache_dir=tmp_path)
    spec = {**IDENTITY, "model": pool.features.fingerprint, "features": {"cutoff_len": 512}, "budget": 3, "seed": 2}
    assert [p.name for p in (tmp_path / "selections").glob("*.npz")] == [f"{config_key(spec)}.npz"]


def test_budget_is_checked_strictly_before_selecting_unless_the_method_ignores_it(tmp_path):
    selector = Counting()
    with pytest.raises(ConfigError, match="larger than the training pool"):
        cached_select(selector, Pool(size=N, features=StoreLike()), N + 1, seed=0, identity=IDENTITY,
                      cache_dir=tmp_path)
    assert selector.calls == 0
    free = Counting()  # full / none: the budget means nothing, only its sign is checked
    result = cached_select(free, Pool(size=N, features=StoreLike()), N + 1, seed=0,
                           identity={**IDENTITY, "method": "full"}, cache_dir=tmp_path)
    assert free.calls == 1 and len(result.indices) == N


def test_method_time_excludes_feature_time(tmp_path):
    features = StoreLike()

    class Slow(Counting):
        def select(self, pool, budget, *, seed):
            features.seconds += 0.4  # as if features were computed lazily inside select()
            return super().select(pool, budget, seed=seed)

    result = cached_select(Slow(), Pool(size=N, features=features), 3, seed=0, identity=IDENTITY,
                           cache_dir=tmp_path)
    assert result.stats["time_s"] == pytest.approx(0.1)
