"""D2 Pruning (Maharana, Yadav, Bansal; ICLR 2024): message passing on a kNN graph balances difficulty and diversity.

As in the official ``GraphDensitySampler`` (``graph`` coreset mode):

1. Hard cutoff of the ``floor(β·N)`` hardest samples (as CCS).
2. Symmetric kNN graph over the embeddings: j ∈ N(i) when j is one of i's ``n_neighbors`` nearest (Euclidean, self
   excluded) or i one of j's.
3. Forward message passing, with γ_f = 1 and unsquared distances as in the code, ``w_ij = exp(-d_ij)·max(s_j, 1e-7)``:
   ``sum``: ρ_i = s_i + Σ_{j∈N(i)} w_ij;  ``product``: ρ_i = s_i · Σ_{j∈N(i)} w_ij.
4. Reverse message passing, repeated ``budget`` times: pick u = argmax ρ (ties: lowest index), then for j ∈ N(u)
   ``weighted``: ρ_j -= exp(-γ_r·d_uj)·ρ_u;  ``absolute``: ρ_j -= ρ_u;  u is never picked again.

The reference code builds dense N×N distance and adjacency matrices; here the kNN search runs over blocks of
``block_size`` rows (each block pair once, both directions) and the graph is CSR, so memory is O(N·k + block²).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
from tqdm import tqdm

from goracs.selection.pool import Pool, SelectionResult, check_budget, whole_pool
from goracs.selection.sampling import hard_cutoff, uniform_sample
from goracs.selection.scored import read_embedding, read_score

log = logging.getLogger(__name__)

EPS = 1e-7  # floor on neighbour importances in the edge weights (official)


class D2Selector:
    """D2 Pruning on the text embeddings, weighted by an importance score.

    Args:
        score: per-sample importance feature (``el2n``, ``grad_norm`` or ``loss``).
        embedding: (N, d) feature the kNN graph is built on.
        n_neighbors: k of the kNN graph.
        gamma: γ_r, decay of the reverse message with distance (``weighted`` mode).
        graph_mode: forward aggregation, ``sum`` or ``product``.
        sampling_mode: reverse update, ``weighted`` or ``absolute``.
        hard_fraction: β, fraction of the whole pool cut as "too hard" before building the graph.
        drop_highest: the hard end is the highest score (true) or the lowest.
        block_size: rows per block of the kNN search (memory ~ 4·block_size² bytes per block).
    """

    def __init__(self, score: str, embedding: str, n_neighbors: int, gamma: float, graph_mode: str,
                 sampling_mode: str, hard_fraction: float, drop_highest: bool, block_size: int):
        if graph_mode not in ("sum", "product"):
            raise ValueError(f"selection.graph_mode must be 'sum' or 'product', got {graph_mode!r}")
        if sampling_mode not in ("weighted", "absolute"):
            raise ValueError(f"selection.sampling_mode must be 'weighted' or 'absolute', got {sampling_mode!r}")
        if n_neighbors < 1 or block_size < 1:
            raise ValueError(f"selection.n_neighbors and block_size must be >= 1, got {n_neighbors}, {block_size}")
        if not 0.0 <= hard_fraction < 1.0:
            raise ValueError(f"selection.hard_fraction must be in [0, 1), got {hard_fraction}")
        self.score, self.embedding = str(score), str(embedding)
        self.n_neighbors, self.gamma = int(n_neighbors), float(gamma)
        self.graph_mode, self.sampling_mode = graph_mode, sampling_mode
        self.hard_fraction, self.drop_highest = float(hard_fraction), bool(drop_highest)
        self.block_size = int(block_size)

    def select(self, pool: Pool, budget: int, *, seed: int) -> SelectionResult:
        start = time.perf_counter()
        m = check_budget(budget, pool.size)
        scores = read_score(pool, self.score)
        emb = read_embedding(pool, self.embedding)
        if m == pool.size:
            return whole_pool(pool.size, time_s=time.perf_counter() - start)
        kept = hard_cutoff(scores, self.hard_fraction, keep_at_least=m, drop_highest=self.drop_highest)
        density = np.full(pool.size, np.nan)
        if len(kept) <= self.n_neighbors:  # official fallback: too few nodes for a graph
            picked = kept[uniform_sample(len(kept), m, np.random.default_rng(seed))]
            return SelectionResult(indices=picked, stats={"time_s": time.perf_counter() - start})
        nbr, dist = knn_graph(emb[kept], self.n_neighbors, self.block_size)
        indptr, cols, dists = symmetric_csr(nbr, dist)
        density[kept] = forward_density(indptr, cols, dists, scores[kept], self.graph_mode)
        order = reverse_message_passing(density[kept], indptr, cols, dists, m, self.gamma, self.sampling_mode)
        elapsed = time.perf_counter() - start
        log.info("d2 on %s/%s: %d of %d samples (%d cut, %d edges) in %.1f s", self.score, self.embedding, m,
                 pool.size, pool.size - len(kept), len(cols), elapsed)
        stats = {"time_s": elapsed, "n_cut": float(pool.size - len(kept)), "n_edges": float(len(cols))}
        return SelectionResult(indices=kept[order], scores=density, stats=stats)


def knn_graph(x: np.ndarray, k: int, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest neighbours of every row of ``x`` (Euclidean, self excluded), nearest first.

    Returns ``(neighbors, distances)``, both (N, k). Squared distances ``|a|² + |b|² − 2a·b`` are computed once per
    block pair (I ≤ J) and folded into the running top-k of both I's and J's rows, which halves the O(N²·d) work.
    The kept neighbours' distances are then recomputed directly, because the expansion loses precision near 0.
    """
    n = len(x)
    k = min(k, n - 1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
    sq = (xt * xt).sum(1)
    best_d = torch.full((n, k), float("inf"), device=device)
    best_i = torch.zeros((n, k), dtype=torch.int64, device=device)
    starts = list(range(0, n, block_size))
    pairs = [(a, b) for ai, a in enumerate(starts) for b in starts[ai:]]
    for a, b in tqdm(pairs, desc="d2 kNN blocks", disable=len(pairs) < 50):
        ea, eb = min(a + block_size, n), min(b + block_size, n)
        d2 = torch.addmm(sq[a:ea, None] + sq[None, b:eb], xt[a:ea], xt[b:eb].T, alpha=-2.0)
        if a == b:
            d2.fill_diagonal_(float("inf"))
        _merge_topk(best_d, best_i, a, ea, d2, b)
        if a != b:
            _merge_topk(best_d, best_i, b, eb, d2.T, a)
    neighbors = best_i.cpu().numpy()
    distances = np.empty((n, k), dtype=np.float64)
    for a in range(0, n, block_size):
        diff = xt[a:a + block_size, None, :] - xt[best_i[a:a + block_size]]
        distances[a:a + block_size] = torch.linalg.vector_norm(diff, dim=2).cpu().numpy()
    return neighbors, distances


def _merge_topk(best_d: torch.Tensor, best_i: torch.Tensor, lo: int, hi: int, d2: torch.Tensor, col0: int) -> None:
    """Fold the k smallest entries of each row of ``d2`` (columns offset by ``col0``) into rows lo:hi of the best."""
    k = best_d.shape[1]
    vals, pos = torch.topk(d2, min(k, d2.shape[1]), dim=1, largest=False)
    cand_d = torch.cat([best_d[lo:hi], vals], dim=1)
    cand_i = torch.cat([best_i[lo:hi], pos + col0], dim=1)
    keep_d, keep_pos = torch.topk(cand_d, k, dim=1, largest=False)
    best_d[lo:hi] = keep_d
    best_i[lo:hi] = torch.gather(cand_i, 1, keep_pos)


def symmetric_csr(neighbors: np.ndarray, distances: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR arrays ``(indptr, cols, dists)`` of the undirected graph: edge i–j when either is in the other's kNN.

    Zero distances (duplicate embeddings) are kept as edges, which a scipy sparse matrix would silently drop.
    """
    n, k = neighbors.shape
    rows = np.repeat(np.arange(n, dtype=np.int64), k)
    cols = neighbors.ravel().astype(np.int64)
    d = distances.ravel()
    keys = np.concatenate([rows * n + cols, cols * n + rows])
    uniq, first = np.unique(keys, return_index=True)  # sorted by (row, col); both directions share one distance
    all_d = np.concatenate([d, d])
    r, c = uniq // n, uniq % n
    indptr = np.concatenate([[0], np.cumsum(np.bincount(r, minlength=n))]).astype(np.int64)
    return indptr, c, all_d[first]


def forward_density(indptr: np.ndarray, cols: np.ndarray, dists: np.ndarray, scores: np.ndarray,
                    graph_mode: str) -> np.ndarray:
    """ρ_i = s_i + Σ_j exp(-d_ij)·max(s_j, 1e-7) (``sum``) or s_i · Σ_j exp(-d_ij)·max(s_j, 1e-7) (``product``)."""
    rows = np.repeat(np.arange(len(scores)), np.diff(indptr))
    weights = np.exp(-dists) * np.maximum(scores[cols], EPS)
    incoming = np.bincount(rows, weights=weights, minlength=len(scores))
    return scores + incoming if graph_mode == "sum" else scores * incoming


def reverse_message_passing(density: np.ndarray, indptr: np.ndarray, cols: np.ndarray, dists: np.ndarray,
                            budget: int, gamma: float, sampling_mode: str,
                            return_density: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Greedy picks in order: u = argmax ρ, then ρ_j -= exp(-γ·d_uj)·ρ_u (or ρ_u) for the neighbours j of u.

    With ``return_density``, also the final ρ (the reverse-passed scores; −inf at the picks).

    The official code re-marks picked nodes with ``min(ρ) − 1`` after every pick; marking them −inf yields the same
    sequence (they are never the argmax and their value is never read again) at O(deg) instead of O(N) per pick.
    """
    rho = np.array(density, dtype=np.float64)
    order = np.empty(budget, dtype=np.int64)
    for t in tqdm(range(budget), desc="d2 reverse message passing", disable=budget < 5000):
        u = int(np.argmax(rho))
        nbrs = cols[indptr[u]:indptr[u + 1]]
        if sampling_mode == "weighted":
            rho[nbrs] -= np.exp(-gamma * dists[indptr[u]:indptr[u + 1]]) * rho[u]
        else:
            rho[nbrs] -= rho[u]
        rho[u] = -np.inf
        order[t] = u
    return (order, rho) if return_density else order
