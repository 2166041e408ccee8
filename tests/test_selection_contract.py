"""The selection contract, checked for every method that exists, i.e. every ``conf/selection/*.yaml``."""

from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate

from goracs.selection import ArrayFeatures, Pool

CONF = Path(__file__).parents[1] / "conf" / "selection"
METHODS = sorted(p.stem for p in CONF.glob("*.yaml"))
N, M, D = 40, 12, 8
BUDGET = 7


def make_pool(labels: bool) -> Pool:
    rng = np.random.default_rng(123)
    centres = rng.normal(0, 3, (4, D))
    emb = (centres[rng.integers(4, size=N)] + rng.normal(0, 1, (N, D))).astype(np.float32)
    valid = (centres[rng.integers(4, size=M)] + rng.normal(0, 1, (M, D))).astype(np.float32)
    train = {"text_emb": emb, "grad_norm": rng.gamma(2.0, 0.5, N), "el2n": rng.uniform(0, 1.4, N),
             "loss": rng.gamma(2.0, 1.0, N),
             # DEALRec's; its own stream, so the other features and the labels stay as they were
             "influence": np.random.default_rng(7).normal(0, 1e-3, N)}
    features = ArrayFeatures(train=train, valid={"text_emb": valid})
    if not labels:
        return Pool(size=N, features=features)
    return Pool(size=N, features=features, labels=rng.integers(0, 2, N), valid_labels=rng.integers(0, 2, M))


def selector(name: str):
    """The method as goracs-run builds it: composed by Hydra (a yaml may extend another through its defaults)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF.parent), version_base="1.3"):
        node = compose("config", overrides=[f"selection={name}"]).selection
    return instantiate(node)


def expected_size(name: str, budget: int) -> int:
    # `full` and `none` ignore the budget by definition: the whole pool, and nothing (no fine-tuning)
    return {"full": N, "none": 0}.get(name, min(budget, N))


def test_the_config_group_is_not_empty():
    assert {"full", "random", "grand", "el2n", "ccs", "d2", "moderate", "kcenter"} <= set(METHODS)


@pytest.mark.parametrize("labels", [False, True], ids=["seqrec", "ctr"])
@pytest.mark.parametrize("name", METHODS)
def test_budget_unique_in_range_and_seeded(name, labels):
    pool = make_pool(labels)
    first = selector(name).select(pool, BUDGET, seed=3)
    again = selector(name).select(pool, BUDGET, seed=3)
    idx = np.asarray(first.indices)
    assert len(idx) == expected_size(name, BUDGET)
    assert len(np.unique(idx)) == len(idx)
    assert idx.size == 0 or (idx.min() >= 0 and idx.max() < N)
    assert np.array_equal(idx, again.indices)
    assert "time_s" in first.stats and first.stats["time_s"] >= 0
    if first.scores is not None:
        assert np.shape(first.scores) == (N,)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("budget", [N, N + 5])
def test_budget_covering_the_pool_selects_everything(name, budget):
    result = selector(name).select(make_pool(False), budget, seed=0)
    expected = np.arange(expected_size(name, budget))
    assert np.array_equal(np.sort(result.indices), expected)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("budget", [0, -3])
def test_non_positive_budget_is_a_clear_error(name, budget):
    with pytest.raises(ValueError, match="budget"):
        selector(name).select(make_pool(False), budget, seed=0)
