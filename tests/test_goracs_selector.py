"""GoracsSelector: contract, label-enhanced budgets, ablation options, clear errors, airtight config."""

import inspect
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from goracs.selection import ArrayFeatures, Pool
from goracs.selection.goracs import GoracsSelector
from goracs.selection.goracs.label_enhanced import class_budgets

CONF = Path(__file__).parents[1] / "conf" / "selection" / "goracs.yaml"


def _pool(n=90, m=30, d=6, seed=0, labels=False, nan=False):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (rng.normal(size=(m, d)) + 0.2).astype(np.float32)
    g = rng.uniform(0.1, 2.0, n).astype(np.float32)
    if nan:
        x[3, 1] = np.nan
    kw = {}
    if labels:
        kw = dict(labels=(rng.random(n) < 0.6).astype(int), valid_labels=(rng.random(m) < 0.3).astype(int))
    return Pool(size=n, features=ArrayFeatures(train={"text_emb": x, "grad_norm": g}, valid={"text_emb": y}), **kw)


def test_contract_size_unique_deterministic():
    sel = GoracsSelector(max_iters=5, cut_num=4)
    a, b = sel.select(_pool(), 10, seed=0), sel.select(_pool(), 10, seed=1)
    assert len(a.indices) == 10 and len(np.unique(a.indices)) == 10 and a.indices.max() < 90
    np.testing.assert_array_equal(a.indices, b.indices)  # greedy + refinement use no randomness
    assert a.stats["poo_final"] <= a.stats["poo_greedy"]
    assert a.traces["poo_trace"][0] == pytest.approx(a.stats["poo_greedy"])
    assert a.traces["poo_trace"][-1] == pytest.approx(a.stats["poo_final"])
    for key in ("exchanges_accepted", "exchanges_tried", "time_greedy_s", "time_refine_s", "time_s"):
        assert key in a.stats


def test_budget_at_or_above_pool_returns_everything():
    res = GoracsSelector().select(_pool(n=20), 25, seed=0)
    np.testing.assert_array_equal(res.indices, np.arange(20))


def test_random_init_is_seeded():
    sel = GoracsSelector(init="random", refine=False)
    a, b, c = (sel.select(_pool(), 10, seed=s) for s in (0, 0, 1))
    np.testing.assert_array_equal(a.indices, b.indices)
    assert not np.array_equal(a.indices, c.indices)


def test_sinkhorn_solver_selects_a_valid_subset():
    res = GoracsSelector(solver="sinkhorn", blur=0.01, max_iters=3, cut_num=3).select(_pool(), 10, seed=0)
    assert len(np.unique(res.indices)) == 10
    assert res.stats["poo_final"] > 0  # exact POO of the final set


def test_label_enhanced_follows_validation_rates():
    pool = _pool(labels=True)
    res = GoracsSelector(max_iters=3, cut_num=3).select(pool, 20, seed=0)
    n_pos = round(pool.valid_labels.mean() * 20)
    assert int(pool.labels[res.indices].sum()) == n_pos
    assert len(res.indices) == 20 and "poo_trace_class1" in res.traces
    assert res.stats["budget_class1"] == n_pos and res.stats["budget_class0"] == 20 - n_pos
    off = GoracsSelector(max_iters=0, label_enhanced=False).select(pool, 20, seed=0)
    assert "budget_class1" not in off.stats


def test_class_budgets_rules():
    # 2 classes: n_1 = round(p_1 n) (half to even), n_0 = n - n_1
    assert class_budgets(np.array([0, 1] * 50), np.array([1] * 5 + [0] * 3), 10) == {0: 4, 1: 6}
    assert class_budgets(np.array([0, 1] * 50), np.array([1, 0, 0, 0]), 10) == {0: 8, 1: 2}  # 2.5 -> 2
    # K = 3, largest remainder: quotas 3.33/5.0/1.67 -> 3, 5, 2
    assert class_budgets(np.repeat([0, 1, 2], 20), np.array([0, 0, 1, 1, 1, 2]), 10) == {0: 3, 1: 5, 2: 2}
    # a class too small gives its excess to the others
    assert class_budgets(np.array([0] * 30 + [1] * 2), np.array([0, 1, 1, 1]), 8) == {0: 6, 1: 2}


def test_label_enhanced_true_without_labels_errors():
    with pytest.raises(ValueError, match="label_enhanced"):
        GoracsSelector(label_enhanced=True).select(_pool(), 10, seed=0)


@pytest.mark.parametrize(
    "kwargs, pool_kw, match",
    [
        (dict(lam=-0.1), None, "lam must be >= 0"),
        (dict(dist_feature="sbert"), {}, r"dist_feature='sbert'.*available: \['grad_norm', 'text_emb'\]"),
        (dict(), dict(nan=True), "NaN"),
        (dict(solver="lp"), None, "solver must be"),
        (dict(pruning="fast"), None, "pruning must be"),
    ],
)
def test_clear_errors(kwargs, pool_kw, match):
    with pytest.raises(ValueError, match=match):
        GoracsSelector(**kwargs).select(_pool(**pool_kw), 10, seed=0) if pool_kw is not None else \
            GoracsSelector(**kwargs)


def test_empty_validation_set_errors():
    x = np.zeros((10, 3), np.float32)
    pool = Pool(size=10, features=ArrayFeatures(train={"text_emb": x, "grad_norm": np.ones(10)},
                                                valid={"text_emb": np.zeros((0, 3), np.float32)}))
    with pytest.raises(ValueError, match="non-empty validation"):
        GoracsSelector().select(pool, 5, seed=0)


def test_config_is_airtight_and_instantiates():
    from hydra.utils import instantiate

    cfg = OmegaConf.load(CONF)
    params = set(inspect.signature(GoracsSelector.__init__).parameters) - {"self"}
    assert set(cfg.keys()) - {"_target_"} == params
    sel = instantiate(cfg)
    assert isinstance(sel, GoracsSelector) and sel.lam == cfg.lam and sel.pruning == "official"
    for line in CONF.read_text().splitlines()[2:]:
        assert "#" in line, f"every key needs a comment: {line!r}"


def _arrays_pool(x, y, g):
    return Pool(size=len(x), features=ArrayFeatures(train={"text_emb": x, "grad_norm": g}, valid={"text_emb": y}))


@pytest.mark.parametrize("where", ["train", "valid", "grad"])
def test_non_finite_features_are_one_clear_error(where):
    rng = np.random.default_rng(1)
    x, y, g = rng.normal(size=(40, 4)), rng.normal(size=(12, 4)), rng.uniform(0.1, 1, 40)
    {"train": x, "valid": y, "grad": g[:, None]}[where][2, 0] = np.inf
    with pytest.raises(ValueError, match="NaN/inf"):
        GoracsSelector(max_iters=3, cut_num=3).select(_arrays_pool(x, y, g), 5, seed=0)


def test_zero_variance_cost_is_a_clear_error():
    """Identical embeddings and a flat gradient norm: every cost entry ties, the min-max map is undefined."""
    x, y = np.ones((30, 4), np.float32), np.zeros((10, 4), np.float32)
    with pytest.raises(ValueError, match="cost matrix is constant"):
        GoracsSelector(max_iters=3, cut_num=3).select(_arrays_pool(x, y, np.ones(30)), 5, seed=0)


@pytest.mark.parametrize("budget, match", [(0, "positive number"), (-3, "positive number"), (2.5, "integer")])
def test_infeasible_budgets_are_one_clear_error(budget, match):
    with pytest.raises(ValueError, match=match):
        GoracsSelector(max_iters=3, cut_num=3).select(_pool(), budget, seed=0)


@pytest.mark.parametrize("config", [dict(), dict(pruning="corrected", pair_order="bound", duals="warm",
                                                greedy_fill="ot")])
def test_degenerate_pool_terminates_with_an_exact_poo(config):
    """Duplicate rows and validation points tied to them (a saturated, highly degenerate transport) finish, and the
    reported POO is a fresh EMD's."""
    import ot

    rng = np.random.default_rng(4)
    base = rng.normal(size=(6, 3)).astype(np.float32)
    x = np.repeat(base, 8, axis=0)  # 48 rows, 6 distinct
    y = np.repeat(base[:3], 5, axis=0)  # 15 columns on 3 of them
    res = GoracsSelector(lam=0.0, max_iters=5, cut_num=4, **config).select(_arrays_pool(x, y, np.ones(48)), 10,
                                                                          seed=0)
    assert len(set(res.indices.tolist())) == 10
    d = np.linalg.norm(x[res.indices][:, None] - y[None], axis=2)
    c = d / np.linalg.norm(x[:, None] - y[None], axis=2).max()
    full = np.linalg.norm(x[:, None] - y[None], axis=2) / np.linalg.norm(x[:, None] - y[None], axis=2).max()
    c = (c - full.min()) / (full.max() - full.min())
    assert res.stats["poo_final"] == pytest.approx(ot.emd2(np.full(10, 0.1), np.full(15, 1 / 15), c), abs=1e-6)
