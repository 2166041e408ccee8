"""GORACS: choose S minimising the Proxy Optimization Objective ``POO(S) = OT_C(μ_S, μ_V)`` (Mei et al., KDD 2025).

``C`` is the min-max normalised ``d̂ - λ ĝ`` (see :mod:`.cost`); selection is ITRA: greedy facility-location
initialisation (:mod:`.greedy`) then exchange refinement (:mod:`.refine`). For classification pools (CTR) the
label-enhanced variant selects per class (:mod:`.label_enhanced`).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from goracs.selection.goracs.cost import build_cost
from goracs.selection.goracs.fill import FILLS, ot_fill
from goracs.selection.goracs.greedy import greedy_init, saturation_point
from goracs.selection.goracs.label_enhanced import select_by_class
from goracs.selection.goracs.ot import ExactOT, make_solver
from goracs.selection.goracs.refine import refine as refine_subset
from goracs.selection.goracs.warm import TransportState
from goracs.selection.pool import Pool, SelectionResult, check_budget, whole_pool

log = logging.getLogger(__name__)


class GoracsSelector:
    """The constructor takes exactly the keys of ``conf/selection/goracs.yaml`` (see there for units)."""

    def __init__(
        self,
        lam: float = 0.1,
        max_iters: int = 100,
        cut_num: int = 30,
        solver: str = "exact",
        blur: float = 0.01,
        scaling: float = 0.5,
        pruning: str = "official",
        screen: bool = True,
        pair_order: str = "product",
        duals: str = "emd",
        init: str = "greedy",
        greedy_fill: str = "index",
        refine: bool = True,
        dist_feature: str = "text_emb",
        grad_feature: str = "grad_norm",
        normalize_dist: bool = True,
        ctr_normalize_dist: bool = False,
        label_enhanced: str | bool = "auto",
        chunk_size: int = 4096,
        device: str = "auto",
    ):
        if lam < 0:
            raise ValueError(f"selection.lam must be >= 0 (weight of the gradient-norm term), got {lam}")
        for name, value in (("max_iters", max_iters), ("cut_num", cut_num), ("chunk_size", chunk_size)):
            if int(value) != value or (value < 0 if name == "max_iters" else value < 1):
                raise ValueError(f"selection.{name} must be a {'non-negative' if name == 'max_iters' else 'positive'} "
                                 f"integer, got {value!r}")
        _check_choice("pruning", pruning, ("official", "corrected"))
        _check_choice("pair_order", pair_order, ("product", "bound"))
        _check_choice("duals", duals, ("emd", "warm"))
        _check_choice("init", init, ("greedy", "random"))
        _check_choice("greedy_fill", greedy_fill, FILLS)
        _check_choice("label_enhanced", str(label_enhanced).lower(), ("auto", "true", "false"))
        _check_choice("device", device, ("auto", "cpu", "cuda"))
        self.solver = make_solver(solver, blur, scaling)
        if pair_order == "bound" and not self.solver.exact:
            raise ValueError("selection.pair_order=bound needs solver=exact (Sinkhorn potentials give no bound)")
        self.lam, self.max_iters, self.cut_num = float(lam), int(max_iters), int(cut_num)
        self.pruning, self.screen, self.pair_order, self.duals = pruning, bool(screen), pair_order, duals
        self.init, self.greedy_fill, self.refine = init, greedy_fill, bool(refine)
        self.dist_feature, self.grad_feature = dist_feature, grad_feature
        self.normalize_dist, self.ctr_normalize_dist = bool(normalize_dist), bool(ctr_normalize_dist)
        self.label_enhanced = str(label_enhanced).lower()
        self.chunk_size = int(chunk_size)
        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("selection.device=cuda but CUDA is not available; use device=auto or cpu")
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   ("cpu" if device == "auto" else device))

    def select(self, pool: Pool, budget: int, *, seed: int) -> SelectionResult:
        start = time.perf_counter()
        n = check_budget(budget, pool.size)
        if n >= pool.size:
            return whole_pool(pool.size, time_s=time.perf_counter() - start)
        train = _feature(pool, self.dist_feature, "train", "dist_feature", ndim=2, rows=pool.size)
        valid = _feature(pool, self.dist_feature, "valid", "dist_feature", ndim=2)
        grads = _feature(pool, self.grad_feature, "train", "grad_feature", ndim=1, rows=pool.size)
        if len(valid) == 0:
            raise ValueError(f"GORACS needs a non-empty validation set: feature {self.dist_feature!r} has 0 "
                             "validation rows")
        if train.shape[1] != valid.shape[1]:
            raise ValueError(f"feature {self.dist_feature!r}: train dim {train.shape[1]} != valid dim {valid.shape[1]}")
        if grads.min() < 0 or grads.max() <= 0:
            raise ValueError(f"feature {self.grad_feature!r} must be non-negative norms with a positive max, got "
                             f"range [{grads.min()}, {grads.max()}]")
        ready = time.perf_counter()  # features fetched (computed here when the store is lazy and cold)
        train_t = torch.as_tensor(np.ascontiguousarray(train, dtype=np.float32), device=self.device)
        valid_t = torch.as_tensor(np.ascontiguousarray(valid, dtype=np.float32), device=self.device)
        grad_t = torch.as_tensor(np.asarray(grads, dtype=np.float32), device=self.device)
        grad_hat = grad_t / grad_t.max()  # global max, also in the label-enhanced case (as the official code)
        rng = np.random.default_rng(seed)
        if self._use_labels(pool):
            def block(train_rows: np.ndarray, valid_rows: np.ndarray, n_k: int):
                tr = torch.as_tensor(train_rows, device=self.device)
                va = torch.as_tensor(valid_rows, device=self.device)
                return self._select_block(train_t[tr], valid_t[va], grad_hat[tr], n_k, self.ctr_normalize_dist, rng)

            indices, stats, traces = select_by_class(np.asarray(pool.labels), np.asarray(pool.valid_labels), n, block)
        else:
            indices, stats, traces = self._select_block(train_t, valid_t, grad_hat, n, self.normalize_dist, rng)
        stats["time_s"] = time.perf_counter() - start
        log.info("GORACS selected %d of %d in %.1f s, plus %.1f s getting its features (POO %.6f -> %.6f)",
                 len(indices), pool.size, time.perf_counter() - ready, ready - start,
                 stats.get("poo_greedy", float("nan")), stats.get("poo_final", float("nan")))
        return SelectionResult(indices=np.asarray(indices, dtype=np.int64), stats=stats, traces=traces)

    def _use_labels(self, pool: Pool) -> bool:
        have = pool.labels is not None and pool.valid_labels is not None
        if self.label_enhanced == "true" and not have:
            raise ValueError("selection.label_enhanced=true but the pool has no labels/valid_labels (SeqRec pool?)")
        return have and self.label_enhanced != "false"

    def _select_block(self, train: torch.Tensor, valid: torch.Tensor, grad_hat: torch.Tensor, n: int,
                      normalize_dist: bool, rng: np.random.Generator) -> tuple[np.ndarray, dict, dict]:
        """ITRA on one (train, valid) block; returns block-local row ids, stats and the POO trace."""
        t0 = time.perf_counter()
        cost = build_cost(train, valid, grad_hat, self.lam, normalize_dist=normalize_dist,
                          chunk_size=self.chunk_size).values
        poo_init = saturated = init_state = None
        fill_s = 0.0
        if self.init == "greedy":
            rows = greedy_init(cost, n, chunk_size=self.chunk_size, stop_when_saturated=self.greedy_fill == "ot")
            if len(rows) < n:  # saturated prefix: greedy_fill=ot chooses the rest
                saturated, t_fill = len(rows), time.perf_counter()
                rows, init_state = ot_fill(cost, rows, n, chunk_size=self.chunk_size)
                poo_init = init_state.value
                fill_s = time.perf_counter() - t_fill
            else:  # picks after which every greedy gain was 0 (None: never, and greedy_fill changes nothing)
                saturated = saturation_point(cost, rows, self.chunk_size)
        else:
            rows = rng.choice(cost.shape[0], size=n, replace=False).tolist()
        exact = ExactOT()
        state = None
        if self.solver.exact:  # the one fresh network simplex; every later OT is re-optimised from it (warm.py)
            state = init_state if init_state is not None else TransportState.uniform(_host(cost, rows))
            poo_init = state.value
        elif poo_init is None:
            poo_init = exact.solve(cost[torch.as_tensor(rows, device=cost.device)])[0]
        t1 = time.perf_counter()
        stats = {"poo_greedy": poo_init, "time_greedy_s": t1 - t0, "exchanges_accepted": 0, "exchanges_tried": 0,
                 "greedy_saturated_at": -1 if saturated is None else saturated, "time_fill_s": fill_s}
        traces = {"poo_trace": [poo_init]}
        log.info("GORACS %s init: POO %.6f (%.1f s)", self.init, poo_init, t1 - t0)
        if self.refine and self.max_iters > 0:
            out = refine_subset(cost, rows, self.solver, max_iters=self.max_iters, cut_num=self.cut_num,
                                pruning=self.pruning, screen=self.screen, pair_order=self.pair_order,
                                chunk_size=self.chunk_size, duals=self.duals, state=state)
            rows = out.selected
            traces["poo_trace"] = out.trace
            stats.update(exchanges_accepted=out.accepted, exchanges_tried=out.tried, exchanges_screened=out.screened,
                         pass_at_1=out.first_try / max(out.accepted, 1), time_prune_s=out.time_prune_s,
                         time_solve_s=out.time_solve_s, exchanges_abandoned=out.abandoned,
                         fresh_emds=out.fresh_solves, time_fresh_emd_s=out.time_fresh_s)
        if not (self.refine and self.max_iters > 0):
            poo_final = poo_init
        elif self.solver.exact:
            poo_final = traces["poo_trace"][-1]  # exact: the re-optimised optimum (tests: equal to a fresh EMD)
        else:  # entropic acceptance: report the exact POO of the result
            poo_final = exact.solve(cost[torch.as_tensor(rows, device=cost.device)])[0]
        stats.update(poo_final=poo_final, time_refine_s=time.perf_counter() - t1)
        log.info("GORACS POO trace: %s", " ".join(f"{v:.6f}" for v in traces["poo_trace"]))
        return np.asarray(rows, dtype=np.int64), stats, traces


def _host(cost: torch.Tensor, rows: list[int]) -> np.ndarray:
    """The subset's (n, M) float32 cost rows on the host (the exact OT runs on the CPU)."""
    return np.ascontiguousarray(cost[torch.as_tensor(rows, device=cost.device)].cpu().numpy())


def _check_choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"selection.{key} must be one of {list(allowed)}, got {value!r}")


def _feature(pool: Pool, name: str, split: str, key: str, *, ndim: int, rows: int | None = None) -> np.ndarray:
    """Fetch ``pool.features.get(name, split)`` and check shape and finiteness, naming the yaml key on failure."""
    try:
        arr = np.asarray(pool.features.get(name, split))
    except KeyError as err:
        raise ValueError(f"selection.{key}={name!r}: {err.args[0] if err.args else err}") from None
    if arr.ndim != ndim or (rows is not None and arr.shape[0] != rows):
        want = f"({rows if rows is not None else 'M'}{', d' if ndim == 2 else ''})"
        raise ValueError(f"feature {name!r} ({split}) has shape {arr.shape}, expected {want}")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise ValueError(f"feature {name!r} ({split}) has {bad} NaN/inf values; fix the feature stage or its cache")
    return arr
