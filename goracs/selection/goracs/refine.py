"""ITRA stage 2: refinement by single exchanges, first improvement, with candidate pruning (spec §3.2–§3.5).

Each iteration prunes to ``cut_num`` rows to remove (inner) and to add (outer), then tries the pairs and accepts the
first swap whose exact OT value is strictly lower; it stops after ``max_iters`` accepted swaps or a round without one.

Speed without changing the answer: before paying for an OT solve, a pair is checked against a dual lower bound
(exact solver only). With the current optimal duals ``u`` (rows of S) and ``w^(i)_j = min_{k∈S∖{i}} (C_kj - u_k)``,
every ``y`` gives a feasible dual of the swapped problem, hence (a = 1/n, b = 1/M)::

    OT(S - i + o) >= a (Σ_{k∈S} u_k - u_i) + b Σ_j w^(i)_j + max_y [a y + b Σ_j min(0, C_oj - y - w^(i)_j)]

and the max sits at ``y`` = the ceil(M/n)-th smallest of ``C_o - w^(i)``. A pair whose bound is not below the current
value cannot improve, so skipping it leaves the accepted sequence, and thus the result, identical.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numba
import numpy as np
import torch
from tqdm import tqdm

from goracs.selection.goracs.ot import ExactOT, OTSolver, rows_of
from goracs.selection.goracs.pruning import prune_candidates
from goracs.selection.goracs.warm import TransportState

log = logging.getLogger(__name__)

BOUND_TOL = 1e-10  # slack for float rounding in the bound; pairs within it are solved, never skipped


@dataclass
class RefineOutcome:
    """The refined subset (row order as maintained by the exchanges) and what it cost."""

    selected: list[int]
    trace: list[float] = field(default_factory=list)  # OT value after init, then after each accepted exchange
    accepted: int = 0
    tried: int = 0  # OT evaluations of candidate swaps (warm re-optimisations for the exact solver)
    screened: int = 0  # pairs skipped by the lower bound
    abandoned: int = 0  # of the tried: stopped early once their rising dual bound passed the current value
    fresh_solves: int = 0  # full network-simplex EMDs (duals=emd: one per accepted exchange)
    time_fresh_s: float = 0.0  # of time_solve_s: those fresh EMDs
    first_try: int = 0  # iterations whose first solved pair was accepted (the official "pass@1")
    time_prune_s: float = 0.0
    time_solve_s: float = 0.0
    state: TransportState | None = None  # exact solver: the final optimal plan and duals


def refine(
    cost: torch.Tensor,
    selected: list[int],
    solver: OTSolver,
    *,
    max_iters: int,
    cut_num: int,
    pruning: str,
    screen: bool,
    pair_order: str,
    chunk_size: int,
    duals: str = "warm",
    state: TransportState | None = None,
) -> RefineOutcome:
    """Exchange refinement of ``selected`` (row ids of ``cost``) under ``solver``; never increases its value.

    Exact solver: every candidate swap is re-optimised from the current optimum (:mod:`.warm`), abandoned as soon as
    its dual bound passes the current value. ``duals`` says which optimal duals the pruning ranks by: ``warm`` (the
    re-optimised ones) or ``emd`` (a fresh POT network simplex after each accepted swap, the duals the official code
    ranks by; optimal duals are not unique, so only these reproduce its candidate lists). ``state``: the optimal
    plan of ``selected`` when the caller has it (slot k = ``selected[k]``).
    """
    if duals not in ("warm", "emd"):
        raise ValueError(f"selection.duals must be 'warm' or 'emd', got {duals!r}")
    rows = list(selected)
    if not solver.exact:
        value, duals_now = solver.solve(rows_of(cost, rows))
        return _refine_loop(cost, rows, value, duals_now, None, solver, max_iters=max_iters, cut_num=cut_num,
                            pruning=pruning, screen=screen, pair_order=pair_order, chunk_size=chunk_size,
                            duals=duals)
    if state is None:
        state = TransportState.uniform(rows_of(cost, rows).cpu().numpy())  # slot order = rows: u is POT's
    value = state.value
    duals_now = state.u[: len(rows)].copy()  # slot k = rows[k] at the start (a fill state has one more, empty slot)
    return _refine_loop(cost, rows, value, duals_now, state, solver, max_iters=max_iters, cut_num=cut_num,
                        pruning=pruning, screen=screen, pair_order=pair_order, chunk_size=chunk_size, duals=duals)


def _refine_loop(cost, rows, value, duals_now, state, solver, *, max_iters, cut_num, pruning, screen, pair_order,
                 chunk_size, duals) -> RefineOutcome:
    out = RefineOutcome(selected=rows, trace=[value], state=state)
    slot_of = {r: k for k, r in enumerate(rows)}
    use_bound = solver.exact and (screen or pair_order == "bound")
    cache: dict = {}  # the corrected pruning's row minima, reused across rounds
    progress = tqdm(total=max_iters, desc="goracs refine", leave=False, disable=max_iters < 5)
    while out.accepted < max_iters:
        t0 = time.perf_counter()
        inner, outer = prune_candidates(cost, rows, duals_now, cut_num=cut_num, mode=pruning, chunk_size=chunk_size,
                                        cache=cache)
        pairs = [(i, o) for i in inner for o in outer]  # inner-major, as itertools.product in the official code
        bounds = _pair_bounds(cost, rows, duals_now, inner, outer).reshape(-1) if use_bound else None
        if pair_order == "bound" and bounds is not None:
            order = np.argsort(bounds, kind="stable")
            pairs, bounds = [pairs[k] for k in order], bounds[order]
        outer_rows = _host_rows(cost, outer) if state is not None else None
        out.time_prune_s += time.perf_counter() - t0
        improved, solved_here = False, 0
        for k, (i, o) in enumerate(pairs):
            if screen and bounds is not None and bounds[k] > value + BOUND_TOL:
                out.screened += 1
                continue
            trial = [r for r in rows if r != i] + [o]  # remove + append keeps the official row order
            t0 = time.perf_counter()
            if state is None:
                new_value, new_duals = solver.solve(rows_of(cost, trial))
            else:
                new_value = state.try_exchange(slot_of[i], outer_rows[outer.index(o)], value + BOUND_TOL)
                if new_value is None or not new_value < value:
                    state.revert()
                    out.abandoned += new_value is None
                else:
                    state.commit()
                    slot_of[o] = slot_of.pop(i)
                    if duals == "emd":  # the official code's duals, for its pruning ranking
                        t_fresh = time.perf_counter()
                        pot_value, new_duals = ExactOT().solve(rows_of(cost, trial))
                        out.fresh_solves += 1
                        out.time_fresh_s += time.perf_counter() - t_fresh
                        if abs(pot_value - new_value) > 1e-9:
                            log.warning("re-optimised POO %.12f != fresh EMD %.12f", new_value, pot_value)
                    else:
                        new_duals = state.u[[slot_of[r] for r in trial]]
            out.time_solve_s += time.perf_counter() - t0
            out.tried += 1
            solved_here += 1
            if new_value is not None and new_value < value:
                out.first_try += solved_here == 1
                rows, value, duals_now = trial, new_value, new_duals
                out.accepted += 1
                out.trace.append(value)
                progress.update(1)
                log.info("exchange %d: -%d +%d, POO %.6f (%d solves this round)", out.accepted, i, o, value,
                         solved_here)
                improved = True
                break
        if not improved:
            log.info("refinement stopped early: no improving pair among %d candidates", len(pairs))
            break
    progress.close()
    out.selected = rows
    return out


def _host_rows(cost: torch.Tensor, ids: list[int]) -> np.ndarray:
    """(len(ids), M) float32 cost rows on the host, for the CPU re-optimisation."""
    return np.ascontiguousarray(rows_of(cost, ids).cpu().numpy())


def _pair_bounds(
    cost: torch.Tensor, rows: list[int], duals: np.ndarray, inner: list[int], outer: list[int]
) -> np.ndarray:
    """(len(inner), len(outer)) dual lower bounds on the OT value after swapping inner i for outer o."""
    pos = {k: p for p, k in enumerate(rows)}
    cost_s = rows_of(cost, rows).cpu().numpy()
    outer_rows = rows_of(cost, outer).cpu().numpy()
    return pair_bounds(cost_s, np.asarray(duals, dtype=np.float64), np.asarray([pos[i] for i in inner]),
                       outer_rows, math.ceil(cost.shape[1] / len(rows)))


@numba.njit(cache=True)
def pair_bounds(cost_s, u, inner_pos, outer_rows, r):
    """Module docstring's bound for every (inner position, outer row); float64 throughout.

    ``w^(i)`` is the column minimum of ``C_kj - u_k`` over S, or the second minimum where row i is the argmin; the
    maximiser over y is the r-th smallest of ``z = C_o - w^(i)``, and ``Σ_j min(0, z_j - y)`` is the sum over the r
    smallest.
    """
    n, m = cost_s.shape
    a, b = 1.0 / n, 1.0 / m
    first = np.full(m, np.inf)
    second = np.full(m, np.inf)
    arg = np.zeros(m, dtype=np.int64)
    for k in range(n):
        for j in range(m):
            z = np.float64(cost_s[k, j]) - u[k]
            if z < first[j]:
                second[j] = first[j]
                first[j] = z
                arg[j] = k
            elif z < second[j]:
                second[j] = z
    out = np.empty((len(inner_pos), outer_rows.shape[0]))
    w = np.empty(m)
    low = np.empty(r)  # the r smallest so far, ascending (low[r-1] is the r-th smallest)
    u_sum = u.sum()
    for q in range(len(inner_pos)):
        p = inner_pos[q]
        w_sum = 0.0
        for j in range(m):
            w[j] = second[j] if arg[j] == p else first[j]
            w_sum += w[j]
        base = a * (u_sum - u[p]) + b * w_sum
        for o in range(outer_rows.shape[0]):
            low[:] = np.inf
            for j in range(m):
                z = np.float64(outer_rows[o, j]) - w[j]
                if z < low[r - 1]:
                    t = r - 1
                    while t > 0 and low[t - 1] > z:
                        low[t] = low[t - 1]
                        t -= 1
                    low[t] = z
            y = low[r - 1]
            out[q, o] = base + (low.sum() - r * y) * b + y * a
    return out
