"""Exact OT re-optimised from the previous optimum: successive shortest paths on reduced costs (numba).

**Integer form.** The POO problem ships mass ``1/n`` from each of n rows to ``1/M`` per column. With ``g = gcd(n, M)``
each row ships ``A = M/g`` units and each column receives ``B = n/g``; ``T = nA = MB`` units in all, and a plan
``x`` (integers) is the transport plan ``π = x / T``. Slots may carry other integer supplies (the fill's extra row
ships ``(n - s)A``); only ``Σ supply = M·B = T`` is required.

**Invariant.** The state holds an integer plan and duals ``(u, v)`` with reduced costs ``c̄_ij = C_ij - u_i - v_j
>= 0`` everywhere and ``= 0`` where ``x_ij > 0``. Any feasible ``(u, v)`` gives the lower bound ``(Σ_i s_i u_i +
B Σ_j v_j) / T`` on the OT value (weak duality; ``s_i`` the slot supplies of the *target* problem); once every
excess is routed, primal cost = that bound, so the plan is optimal.

**An exchange** (slot p: row r out, row a in) keeps every dual but ``u_p``: r's flow is removed (its columns get a
deficit of ``x_rj`` units), ``u_p = min_j (C_aj - v_j)`` keeps row a's reduced costs non-negative, and a's ``A`` units
are routed by successive shortest paths: Dijkstra from p over the residual graph (row → column on every pair, cost
``c̄ >= 0``; column → row back along ``x_ij > 0``, cost 0), to the nearest column with a deficit (or row with a
negative excess), then the potentials move by ``(D - d)^+`` (``u += ``, ``v -= ``), which keeps ``c̄ >= 0`` and makes
the path tight, and the bottleneck is pushed. Only ``A`` units move, so a few Dijkstra passes replace a full network
simplex. The dual bound rises with every pass: an exchange whose bound exceeds a given limit (the current POO) is
abandoned early, and then cannot improve it.

Dijkstra is dense over columns (every row → column edge exists): O(rows reached × M) per pass.
"""

from __future__ import annotations

import logging
import math
import warnings

import numba
import numpy as np
import ot

log = logging.getLogger(__name__)

EMD_MAX_ITERS = 300_000  # fresh solves only: as the official code

DONE, ABANDONED, INFEASIBLE = 0, 1, 2


class TransportState:
    """An optimal integer plan and duals for slot-ordered cost rows (module docstring).

    Attributes:
        cost_rows: (K, M) float32 cost of each slot (a copy; slots with supply 0 are unused).
        supply: (K,) int64 units each slot ships. demand: units each column receives. total: T.
        plan_t: (M, K) int32 plan, column-major (column j's rows are contiguous for the backward edges).
        u, v: (K,) and (M,) float64 duals. cost_sum: Σ C_ij x_ij (float64); ``value = cost_sum / T``.
    """

    def __init__(self, cost_rows, supply, demand, plan_t, u, v):
        self.cost_rows = np.ascontiguousarray(cost_rows, dtype=np.float32)
        self.supply = np.asarray(supply, dtype=np.int64)
        self.demand = int(demand)
        self.total = int(self.supply.sum())
        if self.total != self.demand * self.cost_rows.shape[1]:
            raise ValueError(f"unbalanced transport: supply {self.total} != demand {self.demand} x "
                             f"{self.cost_rows.shape[1]} columns")
        self.plan_t = np.ascontiguousarray(plan_t, dtype=np.int32)
        self.u = np.asarray(u, dtype=np.float64).copy()
        self.v = np.asarray(v, dtype=np.float64).copy()
        self.cost_sum = _plan_cost(self.cost_rows, self.plan_t)
        self._log = np.empty((1024, 3), dtype=np.int64)
        self._undo = None

    # ---- construction -------------------------------------------------------------------------------------------
    @classmethod
    def uniform(cls, cost_rows: np.ndarray) -> "TransportState":
        """Fresh exact solve (POT network simplex) of the uniform problem on ``cost_rows`` (n, M)."""
        n, m = cost_rows.shape
        g = math.gcd(n, m)
        return cls.solve(cost_rows, np.full(n, m // g, dtype=np.int64), n // g)

    @classmethod
    def solve(cls, cost_rows: np.ndarray, supply: np.ndarray, demand: int) -> "TransportState":
        """Fresh exact solve with integer slot supplies; slots of supply 0 are carried but unused."""
        cost_rows = np.ascontiguousarray(cost_rows, dtype=np.float32)
        supply = np.asarray(supply, dtype=np.int64)
        k, m = cost_rows.shape
        total = int(supply.sum())
        active = np.flatnonzero(supply > 0)
        plan_t = np.zeros((m, k), dtype=np.int32)
        u = np.zeros(k, dtype=np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # iteration-limit warnings are reported via result_code
            plan, info = ot.emd(supply[active] / total, np.full(m, demand / total), cost_rows[active].astype(np.float64),
                                numItermax=EMD_MAX_ITERS, log=True)
        # A basic solution of integer marginals is integral: π·T rounds to the exact unit counts.
        x = np.rint(plan * total).astype(np.int64)
        plan_t[:, active] = x.T
        u[active] = info["u"]
        v = np.asarray(info["v"], dtype=np.float64)
        ok = (info.get("result_code", 1) == 1 and np.array_equal(x.sum(1), supply[active])
              and np.array_equal(x.sum(0), np.full(m, demand)))
        if not ok:  # iteration limit or a plan that does not round: route everything by shortest paths instead
            log.warning("EMD on %dx%d did not give an integral optimum (%s); solving by successive shortest paths",
                        len(active), m, info.get("warning"))
            plan_t[:] = 0
            v = cost_rows[active].astype(np.float64).min(axis=0)
            u[:] = 0.0
            state = cls(cost_rows, supply, demand, plan_t, u, v)
            state._route(supply.copy(), np.full(m, demand, dtype=np.int64), np.inf)
            return state
        state = cls(cost_rows, supply, demand, plan_t, u, v)
        state._tighten()
        return state

    # ---- queries ------------------------------------------------------------------------------------------------
    @property
    def value(self) -> float:
        """The OT value ``Σ π_ij C_ij`` (float64)."""
        return self.cost_sum / self.total

    def lower_bound(self) -> float:
        return float((self.supply @ self.u + self.demand * self.v.sum()) / self.total)

    def plan(self) -> np.ndarray:
        """(K, M) float64 transport plan π."""
        return self.plan_t.T / self.total

    # ---- exchanges ----------------------------------------------------------------------------------------------
    def try_exchange(self, slot: int, new_row: np.ndarray, limit: float = np.inf) -> float | None:
        """Replace slot ``slot``'s cost row by ``new_row`` and re-optimise; the new OT value, or None when the dual
        bound proved it ``> limit`` first. Follow with :meth:`commit` or :meth:`revert` (state is undefined until
        then)."""
        self._begin(slot)
        col_def = self.plan_t[:, slot].astype(np.int64)
        self.cost_sum -= float(self.cost_rows[slot].astype(np.float64) @ col_def)
        self.plan_t[:, slot] = 0
        self.cost_rows[slot] = new_row
        self.u[slot] = float(np.min(new_row.astype(np.float64) - self.v))
        excess = np.zeros(len(self.supply), dtype=np.int64)
        excess[slot] = self.supply[slot]
        status = self._route(excess, col_def, limit)
        return None if status == ABANDONED else self.value

    def commit(self) -> None:
        self._undo = None

    def revert(self) -> None:
        slot, row, col, u, v, cost_sum, n_log_start = self._undo
        _revert_log(self.plan_t, self._log, n_log_start, self._n_log)
        self.plan_t[:, slot] = col
        self.cost_rows[slot] = row
        self.u, self.v, self.cost_sum = u, v, cost_sum
        self._undo = None

    def _begin(self, slot: int) -> None:
        if self._undo is not None:
            raise RuntimeError("an exchange is pending: commit() or revert() first")
        self._n_log = 0
        self._undo = (slot, self.cost_rows[slot].copy(), self.plan_t[:, slot].copy(), self.u.copy(), self.v.copy(),
                      self.cost_sum, 0)

    # ---- general re-optimisation (the fill) -------------------------------------------------------------------
    def reoptimise(self, supply: np.ndarray, rows: dict[int, np.ndarray]) -> float:
        """New slot supplies and new cost rows (``rows``: slot -> (M,) costs), re-optimised from the current state.

        A slot whose costs only rise keeps its dual and loses its flow on the changed columns only; any other changed
        slot loses all its flow and gets ``u = min_j (C_j - v_j)``; the lost flow becomes a deficit of its columns and
        an excess of the slot. A supply change is an excess too (positive: units to send; negative: units to take
        back from its columns). Returns the new OT value.
        """
        supply = np.asarray(supply, dtype=np.int64)
        if int(supply.sum()) != self.total:
            raise ValueError("re-optimisation keeps the total number of units")
        excess = supply - self.supply
        col_def = np.zeros(self.cost_rows.shape[1], dtype=np.int64)
        rows = dict(rows)
        for slot in np.flatnonzero((self.supply == 0) & (supply > 0)):  # joining slots: no dual kept, set one
            rows.setdefault(int(slot), self.cost_rows[slot])
        for slot, new in rows.items():
            new = np.asarray(new, dtype=np.float32)
            rising = self.supply[slot] > 0 and bool(np.all(new >= self.cost_rows[slot]))  # empty slots: no dual kept
            flow = self.plan_t[:, slot].astype(np.int64)
            if rising:
                flow[new == self.cost_rows[slot]] = 0
            col_def += flow
            excess[slot] += flow.sum()
            self.plan_t[:, slot] -= flow.astype(np.int32)
            self.cost_rows[slot] = new
            if not rising:
                self.u[slot] = float(np.min(new.astype(np.float64) - self.v))
        self.supply = supply
        self._n_log = 0
        status = self._route(excess, col_def, np.inf)
        if status != DONE:
            raise RuntimeError("re-optimisation found no augmenting path (unbalanced supplies?)")
        self.cost_sum = _plan_cost(self.cost_rows, self.plan_t)  # exact re-sum: many units moved
        return self.value

    def copy(self) -> "TransportState":
        twin = TransportState.__new__(TransportState)
        twin.__dict__.update({k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in self.__dict__.items()})
        twin._undo = None
        return twin

    # ---- internals ----------------------------------------------------------------------------------------------
    def _route(self, excess: np.ndarray, col_def: np.ndarray, limit: float) -> int:
        status, delta, self._n_log, self._log = _ssp(
            self.cost_rows, self.u, self.v, self.plan_t, excess, col_def, self.supply, self.demand, self.total,
            float(limit), self._log, getattr(self, "_n_log", 0))
        if status == INFEASIBLE:
            raise RuntimeError("successive shortest paths found no route to a deficit (unbalanced transport)")
        self.cost_sum += delta
        return status

    def _tighten(self) -> None:
        """POT duals are optimal to rounding: make every reduced cost >= 0 by lowering v_j by its worst violation."""
        active = self.supply > 0
        red = self.cost_rows[active].astype(np.float64) - self.u[active, None] - self.v[None, :]
        self.v += np.minimum(red.min(axis=0), 0.0)


def _plan_cost(cost_rows: np.ndarray, plan_t: np.ndarray) -> float:
    cols, slots = np.nonzero(plan_t)
    return float(np.dot(cost_rows[slots, cols].astype(np.float64), plan_t[cols, slots].astype(np.float64)))


@numba.njit(cache=True)
def _revert_log(plan_t, log_buf, start, stop):
    for k in range(stop - 1, start - 1, -1):
        plan_t[log_buf[k, 0], log_buf[k, 1]] -= log_buf[k, 2]


@numba.njit(cache=True)
def _move(plan_t, cost_rows, log_buf, n_log, i, j, amount):
    """Add ``amount`` units (negative: take them away) to the plan's entry (row ``i``, column ``j``), log the change
    at ``log_buf[n_log]`` (for :func:`_revert_log`) and return its transport cost change, ``amount * C[i, j]``."""
    plan_t[j, i] += amount
    log_buf[n_log, 0] = j
    log_buf[n_log, 1] = i
    log_buf[n_log, 2] = amount
    return amount * np.float64(cost_rows[i, j])


@numba.njit(cache=True)
def _relax(cost_rows, u, v, i, base, dist_c, done_c, pred_c, heap_d, heap_j, size):
    """Relax row i's edges to the open columns, pushing improved columns onto the (lazy) heap; new heap size."""
    ui = u[i]
    row = cost_rows[i]
    for j in range(row.shape[0]):
        if not done_c[j]:
            r = np.float64(row[j]) - ui - v[j]
            if r < 0.0:  # rounding of a tight edge
                r = 0.0
            d = base + r
            if d < dist_c[j]:
                dist_c[j] = d
                pred_c[j] = i
                if size == heap_d.shape[0]:
                    size = _compact(heap_d, heap_j, size, dist_c, done_c)
                size = _push(heap_d, heap_j, size, d, j)
    return size


@numba.njit(cache=True)
def _push(heap_d, heap_j, size, d, j):
    k = size
    while k > 0:
        parent = (k - 1) >> 1
        if heap_d[parent] <= d:
            break
        heap_d[k] = heap_d[parent]
        heap_j[k] = heap_j[parent]
        k = parent
    heap_d[k] = d
    heap_j[k] = j
    return size + 1


@numba.njit(cache=True)
def _pop(heap_d, heap_j, size):
    """Remove the root; returns the new size (the root is read by the caller before)."""
    size -= 1
    d, j = heap_d[size], heap_j[size]
    k = 0
    while True:
        child = 2 * k + 1
        if child >= size:
            break
        if child + 1 < size and heap_d[child + 1] < heap_d[child]:
            child += 1
        if heap_d[child] >= d:
            break
        heap_d[k] = heap_d[child]
        heap_j[k] = heap_j[child]
        k = child
    if size > 0:
        heap_d[k] = d
        heap_j[k] = j
    return size


@numba.njit(cache=True)
def _compact(heap_d, heap_j, size, dist_c, done_c):
    """Drop stale entries (finalised, or superseded by a shorter distance): at most M stay; rebuild the heap."""
    kept = 0
    for k in range(size):
        j = heap_j[k]
        if not done_c[j] and heap_d[k] == dist_c[j]:
            heap_d[kept] = heap_d[k]
            heap_j[kept] = j
            kept += 1
    d_copy = heap_d[:kept].copy()
    j_copy = heap_j[:kept].copy()
    size = 0
    for k in range(kept):
        size = _push(heap_d, heap_j, size, d_copy[k], j_copy[k])
    return size


@numba.njit(cache=True)
def _ssp(cost_rows, u, v, plan_t, excess, col_def, supply, demand, total, limit, log_buf, n_log):
    """Route every positive row excess to the deficits by successive shortest paths (module docstring).

    One Dijkstra pass from a source runs until the deficits it has reached cover the source's excess; the potentials
    then move by ``(D - d)^+`` with D the farthest of those targets, which makes every tree path to them tight, and
    the targets are served in order of distance along their tree paths (each path's bottleneck taken at that time;
    paths of one tree never use an edge in opposite directions). Returns (status, change of Σ C x, log length, log
    buffer). ``log_buf`` rows are (column, slot, +units) plan changes in order, for revert; it is re-allocated when
    full. Stops early (ABANDONED) when the dual bound exceeds ``limit``. Each pass routes >= 1 unit, so it
    terminates after at most Σ excess passes.
    """
    k_slots, m = cost_rows.shape
    inf = np.inf
    dist_c = np.empty(m)
    done_c = np.zeros(m, dtype=np.bool_)
    pred_c = np.empty(m, dtype=np.int64)
    dist_r = np.empty(k_slots)
    done_r = np.zeros(k_slots, dtype=np.bool_)
    pred_r = np.empty(k_slots, dtype=np.int64)
    fin_r = np.empty(k_slots, dtype=np.int64)
    fin_c = np.empty(m, dtype=np.int64)
    targets = np.empty(m + k_slots, dtype=np.int64)  # >= 0: a column; < 0: row -(t + 1)
    heap_d = np.empty(4 * m + 4)
    heap_j = np.empty(4 * m + 4, dtype=np.int64)
    delta_cost = 0.0
    while True:
        src = -1
        for i in range(k_slots):
            if excess[i] > 0:
                src = i
                break
        if src < 0:
            return DONE, delta_cost, n_log, log_buf
        for j in range(m):
            dist_c[j] = inf
        dist_r[src] = 0.0
        done_r[src] = True
        fin_r[0] = src
        n_fr = 1
        n_fc = 0
        n_t = 0
        covered = 0
        size = _relax(cost_rows, u, v, src, 0.0, dist_c, done_c, pred_c, heap_d, heap_j, 0)
        big_d = 0.0
        while covered < excess[src]:
            jb = -1
            while size > 0:
                best, j = heap_d[0], heap_j[0]
                size = _pop(heap_d, heap_j, size)
                if not done_c[j] and best == dist_c[j]:
                    jb = j
                    break
            if jb < 0:
                break
            big_d = best
            done_c[jb] = True
            fin_c[n_fc] = jb
            n_fc += 1
            if col_def[jb] > 0:
                targets[n_t] = jb
                n_t += 1
                covered += col_def[jb]
                if covered >= excess[src]:
                    break
            col = plan_t[jb]
            for i in range(k_slots):
                if col[i] > 0 and not done_r[i]:
                    done_r[i] = True
                    dist_r[i] = big_d
                    pred_r[i] = jb
                    fin_r[n_fr] = i
                    n_fr += 1
                    if excess[i] < 0:
                        targets[n_t] = -(i + 1)
                        n_t += 1
                        covered -= excess[i]
                        if covered >= excess[src]:
                            break
                    size = _relax(cost_rows, u, v, i, big_d, dist_c, done_c, pred_c, heap_d, heap_j, size)
        if n_t == 0:
            return INFEASIBLE, delta_cost, n_log, log_buf
        # Potentials: (D - d)^+ on every finalised node (all have d <= D); others are unchanged.
        for q in range(n_fr):
            i = fin_r[q]
            u[i] += big_d - dist_r[i]
            done_r[i] = False
        for q in range(n_fc):
            j = fin_c[q]
            v[j] -= big_d - dist_c[j]
            done_c[j] = False
        for q in range(n_t):
            if excess[src] <= 0:
                break
            # Bottleneck along the tree path (target back to src), then push.
            t = targets[q]
            amount = excess[src]
            length = 0
            if t >= 0:
                if col_def[t] < amount:
                    amount = col_def[t]
                j = t
            else:
                if -excess[-t - 1] < amount:
                    amount = -excess[-t - 1]
                j = pred_r[-t - 1]
                if plan_t[j, -t - 1] < amount:
                    amount = plan_t[j, -t - 1]
                length += 1
            while True:
                i = pred_c[j]
                length += 1
                if i == src:
                    break
                j = pred_r[i]
                length += 1
                if plan_t[j, i] < amount:
                    amount = plan_t[j, i]
            if amount <= 0:
                continue
            if n_log + length > log_buf.shape[0]:
                grown = np.empty((2 * (n_log + length), 3), dtype=np.int64)
                grown[:n_log] = log_buf[:n_log]
                log_buf = grown
            if t >= 0:
                col_def[t] -= amount
                j = t
            else:
                row_t = -t - 1
                excess[row_t] += amount
                j = pred_r[row_t]
                delta_cost += _move(plan_t, cost_rows, log_buf, n_log, row_t, j, -amount)
                n_log += 1
            while True:
                i = pred_c[j]
                delta_cost += _move(plan_t, cost_rows, log_buf, n_log, i, j, amount)
                n_log += 1
                if i == src:
                    break
                j = pred_r[i]
                delta_cost += _move(plan_t, cost_rows, log_buf, n_log, i, j, -amount)
                n_log += 1
            excess[src] -= amount
        if limit < inf:
            bound = demand * v.sum()
            for i in range(k_slots):
                bound += supply[i] * u[i]
            if bound / total > limit:
                return ABANDONED, delta_cost, n_log, log_buf
