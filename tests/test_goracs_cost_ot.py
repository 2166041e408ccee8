"""GORACS cost and OT: the POO identity against independent scipy/POT computations, Sinkhorn vs exact."""

import numpy as np
import ot
import pytest
import torch
from scipy.spatial.distance import cdist

from goracs.selection import ArrayFeatures, Pool
from goracs.selection.goracs import GoracsSelector
from goracs.selection.goracs.cost import build_cost
from goracs.selection.goracs.ot import ExactOT, SinkhornOT


def _data(seed=0, n=60, m=25, d=8):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (rng.normal(size=(m, d)) + 0.5).astype(np.float32)
    g = rng.uniform(0.2, 3.0, size=n).astype(np.float32)
    return x, y, g


def _poo_independent(x, y, g, lam, subset):
    """(W1_d̂ - λ mean ĝ_S - c_min) / (c_max - c_min) with scipy distances and POT on d̂ only."""
    dist = cdist(x.astype(np.float64), y.astype(np.float64))
    dhat = dist / dist.max()
    ghat = g.astype(np.float64) / g.max()
    c = dhat - lam * ghat[:, None]
    rows = dhat[subset]
    w1 = ot.emd2(np.full(len(subset), 1 / len(subset)), np.full(len(y), 1 / len(y)), rows)
    return (w1 - lam * ghat[subset].mean() - c.min()) / (c.max() - c.min())


def test_cost_matches_numpy_and_is_normalised():
    x, y, g = _data()
    cost = build_cost(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(g / g.max()), 0.3,
                      normalize_dist=True, chunk_size=7)
    dist = cdist(x.astype(np.float64), y.astype(np.float64))
    c = dist / dist.max() - 0.3 * (g / g.max())[:, None]
    np.testing.assert_allclose(cost.values.numpy(), (c - c.min()) / (c.max() - c.min()), atol=2e-6)
    assert cost.values.min() == 0 and cost.values.max() == 1


@pytest.mark.parametrize("lam", [0.0, 0.1, 0.5])
def test_poo_equals_separable_w1_identity(lam):
    x, y, g = _data(seed=3)
    pool = Pool(size=len(x), features=ArrayFeatures(train={"text_emb": x, "grad_norm": g}, valid={"text_emb": y}))
    result = GoracsSelector(lam=lam, refine=False).select(pool, 12, seed=0)
    expected = _poo_independent(x, y, g, lam, result.indices)
    assert result.stats["poo_final"] == pytest.approx(expected, abs=1e-6)


def test_exact_duals_are_feasible_and_tight():
    rng = np.random.default_rng(1)
    rows = torch.from_numpy(rng.random((7, 19)).astype(np.float32))
    value, u = ExactOT().solve(rows)
    c = rows.double().numpy()
    v = (c - u[:, None]).min(axis=0)  # c-transform: u_i + v_j <= C_ij by construction
    assert u.mean() + v.mean() == pytest.approx(value, abs=1e-9)
    assert value == pytest.approx(ot.emd2(np.full(7, 1 / 7), np.full(19, 1 / 19), c), abs=1e-12)


def test_sinkhorn_close_to_exact_at_small_blur():
    rng = np.random.default_rng(2)
    rows = torch.from_numpy(rng.random((15, 40)).astype(np.float32))
    exact, _ = ExactOT().solve(rows)
    blur = 0.005
    approx, f = SinkhornOT(blur=blur, scaling=0.9).solve(rows)
    # Entropic OT lies in [OT, OT + ε log min(n, M)] at convergence.
    assert exact - 1e-4 <= approx <= exact + blur * np.log(15) + 1e-4
    assert f.shape == (15,) and np.isfinite(f).all()
