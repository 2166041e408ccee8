"""Warm-started exact OT (successive shortest paths from the previous optimum) against fresh POT ``ot.emd2``."""

import numpy as np
import ot
import pytest

from goracs.selection.goracs.warm import TransportState


def _emd(c, mass=None):
    n, m = c.shape
    a = np.full(n, 1 / n) if mass is None else mass
    return ot.emd2(a, np.full(m, 1 / m), c.astype(np.float64), numItermax=10**7)


def _instance(kind, rng):
    n_rows, n_cols = int(rng.integers(10, 40)), int(rng.integers(3, 30))
    if kind == "random":
        c = rng.random((n_rows, n_cols))
    elif kind == "integer":  # many exact ties: degenerate plans, non-unique duals
        c = rng.integers(0, 3, (n_rows, n_cols)).astype(float)
    elif kind == "duplicates":  # pairs of identical rows
        c = np.repeat(rng.random((n_rows // 2 + 1, n_cols)), 2, axis=0)[:n_rows]
    elif kind == "two_levels":  # half the columns cost 1 from every row: saturated, all plans optimal on them
        c = np.zeros((n_rows, n_cols))
        c[:, : n_cols // 2] = 1
    else:  # embeddings: the bench's structure (L2 distance, minus a row term, min-max)
        x, y = rng.normal(size=(n_rows, 4)), rng.normal(size=(n_cols, 4)) + 0.5
        c = np.linalg.norm(x[:, None] - y[None], axis=2) - 0.3 * rng.random(n_rows)[:, None]
        c = (c - c.min()) / (c.max() - c.min())
    return c.astype(np.float32)


@pytest.mark.parametrize("kind", ["random", "integer", "duplicates", "two_levels", "embedding"])
def test_exchanges_equal_a_fresh_emd(kind):
    rng = np.random.default_rng(abs(hash(kind)) % 2**32)
    for _ in range(6):
        cost = _instance(kind, rng)
        n_rows = cost.shape[0]
        budget = int(rng.integers(2, min(n_rows - 1, 12)))
        rows = list(rng.choice(n_rows, budget, replace=False))
        state = TransportState.uniform(cost[rows])
        assert state.value == pytest.approx(_emd(cost[rows]), abs=1e-12)
        for step in range(12):
            slot = int(rng.integers(budget))
            new = int(rng.choice([o for o in range(n_rows) if o not in rows]))
            trial = rows.copy()
            trial[slot] = new
            fresh = _emd(cost[trial])
            limit = state.value if step % 3 == 0 else np.inf
            value = state.try_exchange(slot, cost[new], limit)
            if value is None:  # abandoned: the bound proved it above the limit
                assert fresh > limit - 1e-12
                state.revert()
            else:
                assert value == pytest.approx(fresh, abs=1e-9)
                assert state.lower_bound() == pytest.approx(fresh, abs=1e-9)  # dual = primal: optimal
                if rng.random() < 0.6:
                    state.commit()
                    rows = trial
                else:
                    state.revert()
            # the plan keeps its marginals, duals stay feasible, complementary slackness holds
            assert (state.plan_t.sum(axis=0) == state.supply).all()
            assert (state.plan_t.sum(axis=1) == state.demand).all()
            red = state.cost_rows.astype(np.float64) - state.u[:, None] - state.v[None, :]
            assert red.min() > -1e-12 and np.abs(red.T[state.plan_t > 0]).max(initial=0) < 1e-12
        assert state.value == pytest.approx(_emd(cost[rows]), abs=1e-9)


def test_revert_restores_the_state_exactly():
    rng = np.random.default_rng(3)
    cost = _instance("embedding", rng)
    state = TransportState.uniform(cost[:8])
    before = (state.plan_t.copy(), state.u.copy(), state.v.copy(), state.value)
    state.try_exchange(2, cost[20])
    state.revert()
    assert np.array_equal(state.plan_t, before[0]) and np.array_equal(state.u, before[1])
    assert np.array_equal(state.v, before[2]) and state.value == before[3]
    with pytest.raises(RuntimeError, match="pending"):
        state.try_exchange(1, cost[21])
        state.try_exchange(1, cost[22])


def test_reoptimise_with_supplies_and_new_rows_equals_a_fresh_emd():
    """The fill's moves: rows join (supply 0 -> A), an extra row sheds units and gets a new cost row."""
    rng = np.random.default_rng(5)
    for _ in range(10):
        cost = _instance("embedding", rng)
        n_cols = cost.shape[1]
        budget, s = 9, 3
        g = np.gcd(budget, n_cols)
        a_units, b_units = n_cols // g, budget // g
        rows = np.vstack([cost[:budget], cost[budget:].min(axis=0)])  # budget slots + the extra row
        supply = np.r_[np.full(s, a_units), np.zeros(budget - s, dtype=int), (budget - s) * a_units]
        state = TransportState.solve(rows, supply, b_units)
        mass = supply / supply.sum()
        assert state.value == pytest.approx(_emd(rows[supply > 0], mass[supply > 0]), abs=1e-12)
        for step in (s, s + 2, s + 5, budget):  # insert rows s.. step-1, and the extra row's cost rises
            supply = np.r_[np.full(step, a_units), np.zeros(budget - step, dtype=int), (budget - step) * a_units]
            extra = np.maximum(rows[-1], rng.random(n_cols).astype(np.float32) * 0.2 + rows[-1])
            value = state.reoptimise(supply, {budget: extra})
            rows[-1] = extra
            mass = supply / supply.sum()
            assert value == pytest.approx(_emd(rows[supply > 0], mass[supply > 0]), abs=1e-9)


def test_unbalanced_supplies_are_refused():
    cost = np.random.default_rng(0).random((4, 6)).astype(np.float32)
    with pytest.raises(ValueError, match="unbalanced"):
        TransportState(cost, [3, 3, 3, 3], 1, np.zeros((6, 4), dtype=np.int32), np.zeros(4), np.zeros(6))
