"""DEALRec influence against independent truth: LiSSA vs the exact s·(H + d·s·I)⁻¹v from a dense Hessian
(``torch.linalg``), per-sample influence vs a one-sample-at-a-time loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import hessian

from goracs.features.influence import RestrictedLoss, influence_scores, lissa
from goracs.features.sasrec import SASRec
from goracs.features.sequences import SequenceData
from goracs.features.surrogate import cpu_threads

PARAM = "item_encoder.layer.1.attention.dense.weight"


@pytest.fixture(autouse=True)
def one_thread():
    with cpu_threads("cpu"):
        yield


def tiny(seed: int = 0, n: int = 12, dtype=torch.float64) -> tuple[SASRec, SequenceData]:
    """A 2-block SASRec with hidden 4 (θ = a 4×4 matrix, 16 parameters) on ``n`` random sequences."""
    torch.manual_seed(seed)
    model = SASRec(9, hidden_size=4, num_layers=2, num_heads=2, dropout=0.5, max_len=6, init_std=0.5).to(dtype)
    rng = np.random.default_rng(seed)
    inputs = rng.integers(1, 10, (n, 5))
    inputs[rng.random((n, 5)) < 0.3] = 0
    inputs = np.sort(inputs, axis=1)  # left padding: zeros first
    targets = np.where(inputs > 0, rng.integers(1, 10, inputs.shape), 0)
    inputs[0], targets[0] = 0, 0  # a sequence without transitions: zero loss and gradient
    return model.eval(), SequenceData(inputs=inputs, targets=targets, exclude=inputs, n_items=9, max_len=6)


def test_lissa_matches_the_exact_inverse_hessian_vector_product():
    model, data = tiny()
    loss = RestrictedLoss(model, data, PARAM, np.random.default_rng(0))
    every = torch.arange(len(data))
    theta = loss.theta.reshape(-1).clone()
    H = hessian(lambda t: loss.loss(t, every))(theta)
    assert torch.allclose(H, H.T, atol=1e-10)
    eig = torch.linalg.eigvalsh(H)
    # damping and scale that contract: s = 2·max|λ|, d = 0.6 puts every 1 − d − λ/s in [−0.1, 0.9]
    scale, damping = 2 * eig.abs().max().item(), 0.6
    assert -damping * scale < float(eig.min()) and float(eig.max()) < (2 - damping) * scale
    v = loss.batch_mean_gradient(5)
    exact = scale * torch.linalg.solve(H + damping * scale * torch.eye(len(H), dtype=H.dtype), v)
    estimate = lissa(lambda h: loss.hvp(h, every), v, damping=damping, scale=scale, depth=400)
    # 0.9^400 ≈ 5e-19: the recursion has converged, so the remaining error is float64 round-off
    assert float((estimate - exact).norm() / exact.norm()) < 1e-8


def test_hvp_is_the_dense_hessian_times_the_vector():
    model, data = tiny(seed=1)
    loss = RestrictedLoss(model, data, PARAM, np.random.default_rng(0))
    rows = torch.tensor([2, 5, 7])
    H = hessian(lambda t: loss.loss(t, rows))(loss.theta.reshape(-1).clone())
    h = torch.randn(loss.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(loss.hvp(h, rows), H @ h, atol=1e-10)


def test_per_sample_influence_equals_a_one_sample_at_a_time_loop():
    model, data = tiny(seed=2, n=11)
    loss = RestrictedLoss(model, data, PARAM, np.random.default_rng(0))
    h = torch.randn(loss.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    batched = loss.dot_per_sample(h, batch_size=4)  # 11 rows in 3 uneven vmap batches
    looped = np.array([float(loss.gradient(torch.tensor([i])) @ h) for i in range(len(data))])
    np.testing.assert_allclose(batched, looped, rtol=1e-9, atol=1e-12)
    assert batched[0] == 0.0  # no transitions, no gradient


def test_influence_scores_is_seeded_and_rejects_a_diverging_recursion():
    model, data = tiny(seed=3)
    opts = dict(param=PARAM, damping=0.01, scale=25.0, recursion_depth=50, hvp_batch=1, repeats=2, v_batch=5)
    first = influence_scores(model, data, seed=4, **opts)
    assert first.shape == (len(data),) and np.isfinite(first).all()
    np.testing.assert_array_equal(first, influence_scores(model, data, seed=4, **opts))
    assert not np.array_equal(first, influence_scores(model, data, seed=5, **opts))
    with pytest.raises(ValueError, match="features.influence.scale"):
        influence_scores(model, data, seed=4, **{**opts, "scale": 1e-6, "recursion_depth": 400})


def test_unknown_parameter_is_named():
    model, data = tiny()
    with pytest.raises(ValueError, match="features.influence.param"):
        RestrictedLoss(model, data, "item_encoder.layer.7.attention.dense.weight", np.random.default_rng(0))
