"""DEALRec's selection step on hand-made scores: normalisation, hard prune, right-closed strata, water filling."""

from __future__ import annotations

import numpy as np
import pytest

from goracs.errors import ConfigError
from goracs.selection import ArrayFeatures, Pool
from goracs.selection.dealrec import DEALRecSelector, min_max
from goracs.selection.sampling import allocate_budget, equal_width_strata


def selector(**kw) -> DEALRecSelector:
    return DEALRecSelector(**{"influence": "influence", "effort": "grad_norm", "lam": 0.5, "hard_prune": 0.1,
                              "n_strata": 4, **kw})


def pool(influence, effort) -> Pool:
    return Pool(size=len(influence), features=ArrayFeatures(train={"influence": np.asarray(influence, float),
                                                                   "grad_norm": np.asarray(effort, float)}))


def test_overall_score_is_minmax_influence_plus_lam_minmax_effort():
    p = pool([2.0, 4.0, 6.0], [10.0, 30.0, 20.0])
    np.testing.assert_allclose(selector(lam=0.5).score(p), [0.0, 0.5 + 0.5, 1.0 + 0.25])
    np.testing.assert_allclose(selector(lam=0.0).score(p), [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(min_max(np.full(3, 7.0), "x"), np.zeros(3))  # official: 0/0


def test_stratum_counts_on_a_hand_made_score_vector():
    # 20 samples, effort off: overall = influence / 19. hard_prune 0.1 drops the 2 highest (19, 18); the 18 left
    # span [0, 17] in 4 right-closed groups of width 4.25: [0, 4.25] -> 5, (4.25, 8.5] -> 4, (8.5, 12.75] -> 4,
    # (12.75, 17] -> 5 samples.
    influence = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19], float)
    influence[[0, 5]] = influence[[5, 0]]  # positions must not matter
    p = pool(influence, np.ones(20))
    result = selector(lam=0.0).select(p, 10, seed=0)
    assert result.traces["stratum_sizes"] == [5.0, 4.0, 4.0, 5.0]
    # water filling, smallest first: 10 // 4 = 2, 8 // 3 = 2, 6 // 2 = 3, 3 // 1 = 3 (ties by group order)
    assert result.traces["per_stratum"] == [3.0, 2.0, 2.0, 3.0]
    assert allocate_budget(np.array([5, 4, 4, 5]), 10).tolist() == [3, 2, 2, 3]
    chosen = influence[result.indices]
    assert chosen.max() <= 17 and result.stats["n_cut"] == 2
    assert ((chosen <= 4.25).sum(), ((chosen > 4.25) & (chosen <= 8.5)).sum()) == (3, 2)


def test_right_closed_bins_put_a_boundary_score_in_the_lower_group():
    s = np.array([0.0, 2.0, 4.0, 6.0, 8.0])  # width 2: [0, 2], (2, 4], (4, 6], (6, 8]
    assert equal_width_strata(s, 4, right_closed=True).tolist() == [0, 0, 1, 2, 3]
    assert equal_width_strata(s, 4).tolist() == [0, 1, 2, 3, 3]  # CCS's left-closed bins, unchanged


def test_selection_is_seeded_and_budget_sized():
    rng = np.random.default_rng(0)
    p = pool(rng.normal(size=200), rng.gamma(2.0, size=200))
    first, again = selector().select(p, 30, seed=3), selector().select(p, 30, seed=3)
    assert len(first.indices) == 30 and np.array_equal(first.indices, again.indices)
    assert not np.array_equal(first.indices, selector().select(p, 30, seed=4).indices)


def test_hard_prune_is_capped_so_the_budget_is_met():
    p = pool(np.arange(10.0), np.zeros(10))
    result = selector(hard_prune=0.5).select(p, 8, seed=0)  # would leave 5 < 8
    assert len(result.indices) == 8 and result.stats["n_cut"] == 2


@pytest.mark.parametrize("kw, key", [({"lam": -0.1}, "selection.lam"), ({"hard_prune": 1.0}, "empty pool"),
                                     ({"hard_prune": -0.2}, "selection.hard_prune"),
                                     ({"n_strata": 0}, "selection.n_strata")])
def test_bad_options_name_the_key(kw, key):
    with pytest.raises(ConfigError, match=key):
        selector(**kw)


def test_missing_influence_feature_is_named():
    p = Pool(size=5, features=ArrayFeatures(train={"grad_norm": np.ones(5)}))
    with pytest.raises(KeyError, match="influence"):
        selector().select(p, 2, seed=0)
