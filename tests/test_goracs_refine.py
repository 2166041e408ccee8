"""ITRA refinement: monotone POO, exact acceptance, sound bound screening, pruning modes, determinism."""

import itertools

import numpy as np
import ot
import pytest
import torch

from goracs.selection.goracs.greedy import greedy_init
from goracs.selection.goracs.ot import ExactOT
from goracs.selection.goracs.pruning import prune_candidates, removal_potentials
from goracs.selection.goracs.refine import _pair_bounds, refine


def _cost(seed=0, n_rows=120, n_cols=40):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_rows, 5))
    y = rng.normal(size=(n_cols, 5)) + 0.3
    c = np.linalg.norm(x[:, None] - y[None], axis=2) - 0.2 * rng.random(n_rows)[:, None]
    return torch.from_numpy(((c - c.min()) / (c.max() - c.min())).astype(np.float32))


def _emd(cost, rows):
    c = cost[rows].double().numpy()
    return ot.emd2(np.full(len(rows), 1 / len(rows)), np.full(c.shape[1], 1 / c.shape[1]), c)


@pytest.mark.parametrize("pruning", ["official", "corrected"])
@pytest.mark.parametrize("seed", [0, 1])
def test_refinement_monotone_exact_and_sized(pruning, seed):
    cost = _cost(seed)
    start = greedy_init(cost, 10, chunk_size=32)
    out = refine(cost, start, ExactOT(), max_iters=8, cut_num=4, pruning=pruning, screen=True, pair_order="product",
                 chunk_size=32)
    assert len(out.selected) == 10 and len(set(out.selected)) == 10
    assert all(b < a for a, b in zip(out.trace, out.trace[1:])), "every accepted swap strictly lowers the POO"
    assert out.trace[-1] == pytest.approx(_emd(cost, out.selected), abs=1e-9)  # the trace is the true EMD value
    assert len(out.trace) == out.accepted + 1 and out.accepted <= 8


@pytest.mark.parametrize("pruning", ["official", "corrected"])
def test_screening_does_not_change_the_result(pruning):
    cost = _cost(4, n_rows=150, n_cols=50)
    start = greedy_init(cost, 12, chunk_size=64)
    kw = dict(max_iters=6, cut_num=5, pruning=pruning, pair_order="product", chunk_size=64)
    plain = refine(cost, start, ExactOT(), screen=False, **kw)
    fast = refine(cost, start, ExactOT(), screen=True, **kw)
    assert fast.selected == plain.selected and fast.trace == plain.trace
    # the same pairs were considered, fewer were solved
    assert fast.screened > 0 and fast.tried + fast.screened == plain.tried


def test_pair_bounds_are_lower_bounds():
    cost = _cost(7, n_rows=60, n_cols=30)
    rows = list(range(0, 60, 6))  # an arbitrary subset of 10 rows
    _, u = ExactOT().solve(cost[rows])
    inner, outer = rows[:4], [1, 7, 13, 33, 59]
    bounds = _pair_bounds(cost, rows, u, inner, outer)
    for (a, i), (b, o) in itertools.product(enumerate(inner), enumerate(outer)):
        swapped = [r for r in rows if r != i] + [o]
        assert bounds[a, b] <= _emd(cost, swapped) + 1e-12


def test_removal_potentials_brute_force():
    rng = np.random.default_rng(3)
    cost_s = torch.from_numpy(rng.random((6, 9)))
    u = torch.from_numpy(rng.random(6))
    cost_s[4], u[4] = cost_s[1], u[1]  # a column minimum attained twice: removing either row leaves it in place
    w = removal_potentials(cost_s, u, torch.arange(6)).numpy()
    shifted = cost_s.numpy() - u.numpy()[:, None]
    for p in range(6):
        np.testing.assert_allclose(w[p], np.delete(shifted, p, axis=0).min(axis=0))


def test_official_pruning_matches_literal_formula():
    cost = _cost(2, n_rows=80, n_cols=30)
    rows = greedy_init(cost, 8, chunk_size=16)
    _, u = ExactOT().solve(cost[rows])
    c = cost.numpy().astype(np.float32)
    v = (c[rows] - u[:, None]).astype(np.float32).min(axis=0)
    r = int(np.ceil(30 / 8))
    y = np.sort(c - v, axis=1)[:, -r]  # R-th largest
    f = np.minimum(c - y[:, None] - v, 0).mean(axis=1) + y / 8
    out_rows = np.setdiff1d(np.arange(80), rows)
    expected_outer = out_rows[np.argsort(f[out_rows], kind="stable")[:3]].tolist()
    expected_inner = np.asarray(rows)[np.argsort(f[rows], kind="stable")[-3:]].tolist()
    inner, outer = prune_candidates(cost, rows, u, cut_num=3, mode="official", chunk_size=16)
    assert outer == expected_outer
    assert set(inner) == set(expected_inner)  # S rows differ only by the official C - u + u float32 rounding


def test_bound_order_reaches_no_worse_with_exact_acceptance():
    cost = _cost(5)
    start = greedy_init(cost, 10, chunk_size=32)
    out = refine(cost, start, ExactOT(), max_iters=5, cut_num=5, pruning="corrected", screen=True,
                 pair_order="bound", chunk_size=32)
    assert out.trace[-1] <= out.trace[0]
    assert all(b < a for a, b in zip(out.trace, out.trace[1:]))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_sel,cut_num", [(8, 3), (20, 6), (4, 30)])
def test_corrected_outer_ranking_equals_scoring_every_row(seed, n_sel, cut_num):
    """The bound-pruned outer list equals a literal ranking of F on every row (ties to the lowest id)."""
    cost = _cost(seed, n_rows=300, n_cols=45)
    if seed == 2:  # duplicated rows: exact ties in F across rows
        cost = torch.cat([cost[:150], cost[:150]])
    rows = greedy_init(cost, n_sel, chunk_size=64)
    _, u = ExactOT().solve(cost[rows])
    c = cost.numpy().astype(np.float32)
    v = (c[rows].astype(np.float64) - u[:, None]).min(axis=0).astype(np.float32)
    r = int(np.ceil(45 / n_sel))
    low = np.sort((c - v).astype(np.float32), axis=1)[:, :r].astype(np.float64)  # R smallest, as float64
    f = (low - low[:, -1:]).sum(axis=1) / 45 + low[:, -1] / n_sel
    out_rows = np.setdiff1d(np.arange(len(c)), rows)
    expected = out_rows[np.argsort(f[out_rows], kind="stable")[:cut_num]].tolist()
    _, outer = prune_candidates(cost, rows, u, cut_num=cut_num, mode="corrected", chunk_size=7)
    assert outer == expected


class _FreshEMD:
    """A fresh POT EMD for every candidate (the pre-warm-start refinement); ``exact=False`` selects that loop."""

    exact = False

    def solve(self, rows):
        return ExactOT().solve(rows)


@pytest.mark.parametrize("pruning,order", [("official", "product"), ("corrected", "product")])
@pytest.mark.parametrize("seed", [2, 3])
def test_warm_refinement_follows_the_fresh_emd_trajectory(pruning, order, seed):
    """Re-optimised swaps (duals=emd) accept the same swaps, with the same values, as a fresh EMD per swap."""
    cost = _cost(seed, n_rows=90, n_cols=35)
    start = greedy_init(cost, 9, chunk_size=32)
    kw = dict(max_iters=10, cut_num=4, pruning=pruning, pair_order=order, chunk_size=32)
    fresh = refine(cost, start, _FreshEMD(), screen=False, **kw)
    warm = refine(cost, start, ExactOT(), screen=False, duals="emd", **kw)
    assert warm.selected == fresh.selected
    assert warm.trace == pytest.approx(fresh.trace, abs=1e-9)
    assert warm.tried == fresh.tried and warm.fresh_solves == warm.accepted


@pytest.mark.parametrize("pruning", ["official", "corrected"])
def test_warm_duals_refinement_is_exact_and_monotone(pruning):
    cost = _cost(6, n_rows=100, n_cols=45)
    start = greedy_init(cost, 11, chunk_size=32)
    out = refine(cost, start, ExactOT(), max_iters=8, cut_num=5, pruning=pruning, screen=True, pair_order="bound",
                 chunk_size=32, duals="warm")
    assert out.fresh_solves == 0 and out.accepted > 0
    assert all(b < a for a, b in zip(out.trace, out.trace[1:]))
    assert out.trace[-1] == pytest.approx(_emd(cost, out.selected), abs=1e-9)
    assert out.state.value == pytest.approx(out.trace[-1], abs=1e-12)
