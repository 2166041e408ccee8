"""Optimal transport between the uniform measure on the selected rows and the uniform validation measure.

A solver maps the (n, M) cost rows of the current subset to ``(value, u)``: the OT value (dimensionless, the cost is
in [0, 1]) and the (n,) row dual potentials used by the pruning step. Two solvers exist:

- :class:`ExactOT`: POT ``ot.emd2`` (network simplex, uniform masses, 300,000 iterations as the official code), the
  exact value ``min_π Σ π_ij C_ij``; its duals satisfy ``u_i + v_j <= C_ij`` so they also give lower bounds.
- :class:`SinkhornOT`: geomloss ``SamplesLoss("sinkhorn", backend="tensorized", debias=False)`` with
  ``ε = blur`` (p = 1), returning the entropic value ``<a, f> + <b, g>`` and its potential ``f``. It is within
  about ``ε log(nM)`` of the exact value; potentials are not exactly dual-feasible, so no bound screening uses them.
"""

from __future__ import annotations

import logging
import warnings
from typing import Protocol

import numpy as np
import ot
import torch

log = logging.getLogger(__name__)

EMD_MAX_ITERS = 300_000  # as the official code; enough at n≈1000, M=5000


class OTSolver(Protocol):
    """``solve(rows) -> (value, u)`` for an (n, M) cost tensor; ``exact`` says whether duals are feasible."""

    exact: bool

    def solve(self, rows: torch.Tensor) -> tuple[float, np.ndarray]: ...


class ExactOT:
    """Network-simplex EMD with uniform weights (POT)."""

    exact = True

    def solve(self, rows: torch.Tensor) -> tuple[float, np.ndarray]:
        cost = rows.detach().to("cpu", torch.float64).numpy()
        n, m = cost.shape
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # iteration-limit warnings are reported via result_code
            value, info = ot.emd2(np.full(n, 1.0 / n), np.full(m, 1.0 / m), cost, numItermax=EMD_MAX_ITERS, log=True)
        if info.get("result_code", 1) != 1:
            log.warning("EMD on %dx%d did not reach optimality (%s)", n, m, info.get("warning"))
        return float(value), np.asarray(info["u"], dtype=np.float64)


class SinkhornOT:
    """Entropic OT by geomloss (tensorized backend); ``blur`` = ε in cost units, ``scaling`` = ε-annealing ratio."""

    exact = False

    def __init__(self, blur: float, scaling: float):
        from geomloss import SamplesLoss  # imported lazily: only this solver needs it

        if blur <= 0:
            raise ValueError(f"selection.blur must be > 0 (entropic temperature in cost units), got {blur}")
        if not 0 < scaling < 1:
            raise ValueError(f"selection.scaling must be in (0, 1), got {scaling}")
        self._table: torch.Tensor | None = None
        # The cost is given as a matrix, not as points: samples carry their row (negative codes) or column index and
        # the cost callable looks the entry up, which keeps geomloss exact and avoids any (n, M, D) tensor.
        self._loss = SamplesLoss(
            loss="sinkhorn", p=1, blur=blur, scaling=scaling, diameter=1.0, debias=False, potentials=True,
            backend="tensorized", cost=self._lookup,
        )

    def _lookup(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        assert self._table is not None
        xi, yi = x[..., 0], y[..., 0]
        if bool((xi < 0).all()):  # rows -> columns
            return self._table[(-xi - 1).long()[..., :, None], yi.long()[..., None, :]]
        return self._table[(-yi - 1).long()[..., None, :], xi.long()[..., :, None]]  # columns -> rows

    def solve(self, rows: torch.Tensor) -> tuple[float, np.ndarray]:
        n, m = rows.shape
        self._table = rows.float()
        dev = rows.device
        x = -(torch.arange(n, device=dev, dtype=torch.float32) + 1).unsqueeze(1)
        y = torch.arange(m, device=dev, dtype=torch.float32).unsqueeze(1)
        a = torch.full((n,), 1.0 / n, device=dev)
        b = torch.full((m,), 1.0 / m, device=dev)
        try:
            f, g = self._loss(a, x, b, y)
        finally:
            self._table = None
        f, g = f.reshape(-1), g.reshape(-1)  # geomloss adds a batch dimension
        value = float((a * f).sum() + (b * g).sum())
        return value, f.detach().double().cpu().numpy()


def rows_of(cost: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """The (len(rows), M) cost rows of a subset, gathered on the cost's device."""
    return cost[torch.as_tensor(rows, dtype=torch.long, device=cost.device)]


def make_solver(solver: str, blur: float, scaling: float) -> OTSolver:
    """The solver named in ``selection.solver``."""
    if solver == "exact":
        return ExactOT()
    if solver == "sinkhorn":
        return SinkhornOT(blur, scaling)
    raise ValueError(f"selection.solver must be 'exact' or 'sinkhorn', got {solver!r}")
