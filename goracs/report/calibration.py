"""Simulated sweeps with known variance components, to calibrate the report's seed-aware test (and to compute its
power): ``tests/test_report_calibration.py`` and ``experiments/calibrate_report.py`` use it.

One simulated table column has ``methods`` methods (method 0 the reference), ``seeds`` seeds each, and one shared
test set of ``users`` users with ``1 + Poisson(rows_per_user − 1)`` rows each. The per-row value of method m, seed
s, row i of user u is::

    x_msi = a_i + α_mi + b_ms + η_msi + effect · 1[m > 0]

``a`` the row baseline (shared by every job), ``α`` the method × row interaction (stable across seeds; sd
``method_row_sd``), ``b`` the seed effect (``seed_sd``), ``η`` seed × row noise (``seed_row_sd``); ``α``, ``η`` and
``a`` are user-clustered: a share ``user_share`` of their variance is a per-user term. ``α`` is drawn afresh with
population mean 0 in every simulation, so the null "method = reference" holds for the population of test users,
not for the one test set drawn: exactly the target of the report's interval. Everything is simulated at the user
level (per-user sums), which is exact for mean-type metrics and keeps thousands of sweeps in memory.
"""

from __future__ import annotations

import numpy as np

from goracs.report.statistics import ALPHA, POOL_BELOW, row_terms, t_test


def simulate(rng: np.random.Generator, sims: int, methods: int, seeds: int, users: int = 100,
             seed_sd: float = 0.003, method_row_sd: float = 0.012, seed_row_sd: float = 0.014,
             user_share: float = 0.5, effect: float = 0.0, rows_per_user: float = 5.0
             ) -> tuple[np.ndarray, np.ndarray]:
    """Job metrics ``Y`` (``(sims, methods, seeds)``) and user influences ``φ`` (``(sims, methods, seeds, users)``,
    ``φ_u = (S_u − m_u Y) / N`` with ``S_u`` the user's row sum, ``m_u`` its rows, N all rows)."""
    m = 1 + rng.poisson(rows_per_user - 1, size=(sims, 1, 1, users))
    n_rows = m.sum(axis=-1, keepdims=True)

    def clustered(shape, sd):  # per-user sums of rows with sd `sd`, a share `user_share` of it per user
        shared = rng.standard_normal(shape) * sd * np.sqrt(user_share) * m
        own = rng.standard_normal(shape) * sd * np.sqrt(1 - user_share) * np.sqrt(m)
        return shared + own

    shift = np.zeros((1, methods, 1, 1))
    shift[:, 1:] = effect
    sums = (clustered((sims, 1, 1, users), 0.5) + clustered((sims, methods, 1, users), method_row_sd)
            + clustered((sims, methods, seeds, users), seed_row_sd)
            + (rng.standard_normal((sims, methods, seeds, 1)) * seed_sd + shift) * m)
    y = sums.sum(axis=-1) / n_rows[..., 0]
    return y, (sums - m * y[..., None]) / n_rows


def seed_aware_column(y: np.ndarray, phi: np.ndarray, seed_variance: str = "auto") -> dict[str, np.ndarray]:
    """The report's test of methods 1.. against method 0 in every simulated column: ``diff``, ``se``, ``df``,
    ``low``, ``high``, ``p`` (each ``(sims, methods − 1)``), as :mod:`goracs.report.statistics` computes them."""
    sims, methods, seeds, users = phi.shape
    mode = seed_variance if seed_variance != "auto" else ("pooled" if seeds < POOL_BELOW else "pair")
    s2 = y.var(axis=-1, ddof=1)  # (sims, methods)
    diff = y[:, 1:].mean(axis=-1) - y[:, :1].mean(axis=-1)
    if mode == "pooled":
        seed_terms = np.broadcast_to((s2.mean(axis=-1) * 2 / seeds)[:, None, None], (sims, methods - 1, 1))
        seed_dfs = np.full((1, 1, 1), methods * (seeds - 1))
    else:
        seed_terms = np.stack([s2[:, 1:] / seeds, np.broadcast_to(s2[:, :1] / seeds, diff.shape)], axis=-1)
        seed_dfs = np.full((1, 1, 2), seeds - 1)
    plug, eta_m, eta_r = row_terms(phi[:, 1:], phi[:, :1])
    row = np.maximum(0.0, plug - eta_m - eta_r)[..., None]
    terms = np.concatenate([seed_terms, row], axis=-1)
    dfs = np.concatenate([np.broadcast_to(seed_dfs, seed_terms.shape), np.full(row.shape, users - 1.0)], axis=-1)
    se, df, low, high, p = t_test(diff, terms, dfs)
    return {"diff": diff, "se": se, "df": df, "low": low, "high": high, "p": p}


def calibrate(rng: np.random.Generator, sims: int, methods: int, seeds: int, effect: float = 0.0,
              seed_variance: str = "auto", alpha: float = ALPHA, **components) -> dict[str, float]:
    """Rejection rate at ``alpha`` (the false-positive rate when ``effect == 0``, else the power), coverage of the
    true ``effect`` by the 95% interval, and the median df, over ``sims`` simulated columns."""
    y, phi = simulate(rng, sims, methods, seeds, effect=effect, **components)
    out = seed_aware_column(y, phi, seed_variance)
    covered = (out["low"] <= effect) & (effect <= out["high"])
    return {"reject": float((out["p"] < alpha).mean()), "coverage": float(covered.mean()),
            "df": float(np.median(out["df"]))}
