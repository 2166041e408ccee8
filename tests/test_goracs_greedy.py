"""Lazy greedy == dense brute-force facility-location greedy (spec §3.1), including the zero-mass filtering."""

import numpy as np
import pytest
import torch

from goracs.selection.goracs.greedy import greedy_init


def brute_force_greedy(cost: np.ndarray, n: int) -> tuple[list[int], int]:
    """Literal spec §3.1 in float64 on a dense matrix: returns (subset, number of picks made)."""
    n_rows, n_cols = cost.shape
    sel = [int(np.argmin(cost.sum(axis=1)))]
    flag = len(np.unique(np.argmin(cost, axis=0))) > n
    while True:
        if len(sel) >= n:
            owners = np.asarray(sel)[np.argmin(cost[sel], axis=0)]  # argmin over S in S order (first on ties)
            with_mass = [k for k in sel if k in set(owners.tolist())]
            if len(with_mass) >= n or not flag:
                return (with_mass if flag else sel), len(sel)
        if len(sel) == n_rows:
            raise OverflowError("every row picked")
        m = cost[sel].min(axis=0)
        gain = cost.sum(axis=1) - np.abs(m[None, :] - cost).sum(axis=1)
        gain[sel] = np.inf
        sel.append(int(np.argmin(gain)))


@pytest.mark.parametrize("seed", range(6))
def test_lazy_greedy_matches_brute_force_random(seed):
    rng = np.random.default_rng(seed)
    cost = rng.random((150, 40)) ** 2
    cost32 = cost.astype(np.float32)
    expected, _ = brute_force_greedy(cost32.astype(np.float64), 12)
    got = greedy_init(torch.from_numpy(cost32), 12, chunk_size=17, batch=5)
    assert got == expected and len(got) == 12


@pytest.mark.parametrize("seed", range(8))
def test_lazy_greedy_matches_brute_force_with_ties(seed):
    # Costs on a coarse dyadic grid make many exact ties; they must break toward the lowest row index.
    rng = np.random.default_rng(100 + seed)
    cost = (rng.integers(0, 6, size=(80, 30)) / 8).astype(np.float32)  # dyadic: sums are exact
    expected, _ = brute_force_greedy(cost.astype(np.float64), 20)
    assert greedy_init(torch.from_numpy(cost), 20, chunk_size=13, batch=3) == expected


def test_tied_costs_exhausting_the_pool_are_padded():
    # Columns share minimisers, so fewer than n rows can ever own a column (the official code fails here).
    rng = np.random.default_rng(100)
    cost = (rng.integers(0, 6, size=(80, 30)) / 8).astype(np.float32)  # dyadic: sums are exact
    with pytest.raises(OverflowError):
        brute_force_greedy(cost.astype(np.float64), 9)
    got = greedy_init(torch.from_numpy(cost), 9, chunk_size=13, batch=3)
    assert len(got) == 9 and len(set(got)) == 9


@pytest.mark.parametrize("seed", range(5))
def test_filtering_case_matches(seed):
    # A hub row amid the clusters has the smallest row sum, is picked first, and loses all its columns once each
    # of the 5 clusters has its own pick: with n = 6 the greedy must run one step past the budget and drop the hub.
    rng = np.random.default_rng(seed)
    angles = 2 * np.pi * np.arange(5) / 5
    centers = 5 * np.stack([np.cos(angles), np.sin(angles)], axis=1)  # the hub (origin) is 5 from each
    train = np.concatenate([np.zeros((1, 2)), np.repeat(centers, 30, axis=0) + 0.1 * rng.normal(size=(150, 2))])
    valid = np.repeat(centers, 12, axis=0) + 0.1 * rng.normal(size=(60, 2))
    cost = np.linalg.norm(train[:, None] - valid[None], axis=2).astype(np.float32)
    expected, picks = brute_force_greedy(cost.astype(np.float64), 6)
    assert picks > 6 and 0 not in expected  # the filtering branch ran and removed the hub
    got = greedy_init(torch.from_numpy(cost), 6, chunk_size=64, batch=8)
    assert got == expected and len(set(got)) == 6


def test_no_flag_returns_budget_even_without_mass():
    # 3 distinct nearest rows only (flag false): the greedy stops at exactly n picks, zero-mass rows included.
    cost = np.ones((20, 6), dtype=np.float32)
    cost[0, :2] = 0.0
    cost[1, 2:4] = 0.0
    cost[2, 4:] = 0.0
    expected, _ = brute_force_greedy(cost.astype(np.float64), 5)
    got = greedy_init(torch.from_numpy(cost), 5, chunk_size=4)
    assert got == expected and len(got) == 5


def test_budget_out_of_range():
    with pytest.raises(ValueError, match="budget"):
        greedy_init(torch.zeros(5, 3), 5, chunk_size=2)
