"""DEALRec (Lin et al., SIGIR 2024, "Data-efficient Fine-tuning for LLM-based Recommendation"), as its
``code/prune/prune.py`` selects:

1. Scores: ``influence`` (feature of that name: LiSSA influence on a SASRec surrogate, computed and cached by the
   feature stage, :mod:`goracs.features.surrogate`) and ``effort`` (feature ``grad_norm``: ‖∇ LoRA-B ℓ_LLM(z_i)‖₂).
2. Min–max normalise each, ``overall = infl_norm + λ·effort_norm``.
3. Hard prune: drop the ``floor(hard_prune·N)`` highest overall scores.
4. Coverage-enhanced sampling: ``n_strata`` equal-width groups over the remaining range, right-closed as the
   official ``s <= upper`` test (``sampling.equal_width_strata(right_closed=True)``); then repeatedly take the
   smallest non-empty group, ``budget = min(|G|, floor(m / #groups))``, sample that many uniformly, ``m -= budget``.
   That loop is exactly ``sampling.allocate_budget`` (smallest stratum first, ties by stratum order, empties skipped),
   so ``sampling.stratified_sample`` is reused unchanged apart from the bin closure.

``variant``:

- ``official`` (default) reproduces ``prune.py`` of Linxyhaha/DEALRec at 8bd1d9c index for index
  (``tests/test_official_fixtures.py``): the normalisation, the overall score, the group bounds
  ``min(s_min + j·(s_max − s_min)/k, s_max)`` in float32 torch arithmetic, the hard prune by ``torch.sort``, the groups
  visited smallest first (ties by group index, as python's stable ``sorted``), and in each group
  ``random.Random(seed).sample`` of its members listed by descending overall score: the official selection when the
  global ``random`` is seeded with ``random.seed(seed)`` right before the loop.
- ``corrected``: the same steps in float64 with ``numpy.random.default_rng(seed)`` sampling (independent of python's
  ``random`` algorithm); group bounds can then differ from the official ones by one float32 rounding.

Where both differ from the official code, and why:
- The hard prune is capped at ``N - budget`` so that exactly ``min(budget, N)`` samples come back (the selection
  contract); the official code would return fewer. Logged when it happens.
- A constant score vector (max = min) normalises to zeros (official: 0/0 = NaN).
"""

from __future__ import annotations

import logging
import random
import time

import numpy as np
import torch

from goracs.errors import ConfigError
from goracs.selection.pool import Pool, SelectionResult, check_budget, whole_pool
from goracs.selection.sampling import allocate_budget, equal_width_strata, hard_cutoff, stratified_sample
from goracs.selection.scored import read_score

log = logging.getLogger(__name__)

VARIANTS = ("official", "corrected")


class DEALRecSelector:
    """Influence + λ·effort, hard prune, coverage-enhanced stratified sampling (module docstring).

    Args:
        influence: per-sample influence feature (``influence``).
        effort: per-sample effort feature (``grad_norm``).
        lam: λ, weight of the normalised effort score (>= 0).
        hard_prune: fraction of the whole pool dropped from the top of the overall score, in [0, 1).
        n_strata: k, number of equal-width groups.
        variant: ``official`` (float32 arithmetic and python ``random`` as the authors) or ``corrected`` (module
            docstring).
    """

    def __init__(self, influence: str, effort: str, lam: float, hard_prune: float, n_strata: int,
                 variant: str = "official"):
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not np.isfinite(lam) or lam < 0:
            raise ConfigError(f"selection.lam={lam!r}: expected a number >= 0 (the weight of the effort score; "
                              "official Games 0.3, MicroLens-50K and Book 1.0)")
        if isinstance(hard_prune, bool) or not isinstance(hard_prune, (int, float)) or not 0.0 <= hard_prune < 1.0:
            raise ConfigError(f"selection.hard_prune={hard_prune!r}: expected a fraction in [0, 1); 1 or more would "
                              "leave an empty pool after hard pruning (official 0.1)")
        if isinstance(n_strata, bool) or not isinstance(n_strata, int) or n_strata < 1:
            raise ConfigError(f"selection.n_strata={n_strata!r}: expected a positive integer (official k = 50)")
        if variant not in VARIANTS:
            raise ConfigError(f"selection.variant={variant!r}: expected one of {', '.join(VARIANTS)}")
        self.variant = variant
        self.influence, self.effort = str(influence), str(effort)
        self.lam, self.hard_prune, self.n_strata = float(lam), float(hard_prune), int(n_strata)

    def score(self, pool: Pool) -> np.ndarray:
        """(N,) overall score ``minmax(influence) + λ·minmax(effort)``."""
        influence = min_max(read_score(pool, self.influence), self.influence)
        if self.lam == 0:
            return influence
        return influence + self.lam * min_max(read_score(pool, self.effort), self.effort)

    def select(self, pool: Pool, budget: int, *, seed: int) -> SelectionResult:
        start = time.perf_counter()
        m = check_budget(budget, pool.size)
        if m == pool.size:
            return whole_pool(pool.size, time_s=time.perf_counter() - start)
        scores = self.score(pool)
        scored = time.perf_counter()  # the features are computed lazily by the first score read
        n_drop = int(np.floor(self.hard_prune * pool.size))
        kept = hard_cutoff(scores, self.hard_prune, keep_at_least=m, drop_highest=True)
        if len(kept) == 0:
            raise ConfigError(f"selection.hard_prune={self.hard_prune} leaves an empty pool of {pool.size} samples")
        if pool.size - len(kept) < n_drop:
            log.warning("dealrec: hard_prune=%.3f would drop %d of %d samples, leaving fewer than the budget %d; "
                        "dropping only %d", self.hard_prune, n_drop, pool.size, m, pool.size - len(kept))
        if self.variant == "official":
            scores, kept, strata, picked = self._official(pool, m, seed)
        else:
            strata = equal_width_strata(scores[kept], self.n_strata, right_closed=True)
            picked = kept[stratified_sample(scores[kept], m, self.n_strata, np.random.default_rng(seed),
                                            right_closed=True)]
        per_stratum = np.bincount(strata[np.searchsorted(kept, picked)], minlength=self.n_strata)
        elapsed = time.perf_counter() - start
        log.info("dealrec: %d of %d samples (%d hard-pruned, %d of %d groups non-empty, lam %.2f) in %.3f s after "
                 "the scores", m, pool.size, pool.size - len(kept),
                 int((np.bincount(strata, minlength=self.n_strata) > 0).sum()), self.n_strata, self.lam,
                 time.perf_counter() - scored)
        stats = {"time_s": elapsed, "n_cut": float(pool.size - len(kept))}
        return SelectionResult(indices=picked, scores=scores, stats=stats,
                               traces={"per_stratum": per_stratum.astype(float).tolist(),
                                       "stratum_sizes": np.bincount(strata, minlength=self.n_strata).astype(float)
                                       .tolist()})


    def _official(self, pool: Pool, m: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """prune.py's steps in its float32 torch arithmetic: (overall score, sorted kept positions, group of each
        kept position, sorted picks)."""
        def norm(name: str) -> torch.Tensor:
            x = torch.as_tensor(read_score(pool, name).astype(np.float32))
            if x.max() == x.min():  # official 0/0 = NaN; zeros as in the corrected variant (logged there)
                return torch.as_tensor(min_max(x.numpy(), name))
            return (x - torch.min(x)) / (torch.max(x) - torch.min(x))

        overall = norm(self.influence)
        if self.lam != 0:
            overall = overall + self.lam * norm(self.effort)
        ranked, order = torch.sort(overall, descending=True)
        n_drop = min(int(np.floor(self.hard_prune * pool.size)), pool.size - m)
        ranked, order = ranked[n_drop:], order[n_drop:].numpy()
        s_min, s_max = torch.min(ranked), torch.max(ranked)
        interval = (s_max - s_min) / self.n_strata
        bounds = torch.stack([torch.minimum(s_min + interval * j, s_max) for j in range(1, self.n_strata + 1)])
        group = torch.searchsorted(bounds, ranked, side="left").numpy()  # the first group whose bound is >= s
        budgets = allocate_budget(np.bincount(group, minlength=self.n_strata), m)
        rng = random.Random(seed)
        picked = []
        for g in np.argsort(np.bincount(group, minlength=self.n_strata), kind="stable"):  # the official visit order
            if budgets[g]:
                picked += rng.sample(order[group == g].tolist(), int(budgets[g]))
        kept = np.sort(order)
        strata = np.empty(len(kept), dtype=np.int64)
        strata[np.searchsorted(kept, order)] = group
        return overall.numpy().astype(np.float64), kept, strata, np.sort(np.array(picked, dtype=np.int64))


def min_max(values: np.ndarray, name: str) -> np.ndarray:
    """``(x − min) / (max − min)``; a constant vector maps to zeros (logged) instead of the official 0/0."""
    lo, hi = float(values.min()), float(values.max())
    if hi == lo:
        log.warning("dealrec: feature %r is constant (%g) over the pool; its normalised score is 0", name, lo)
        return np.zeros_like(values)
    return (values - lo) / (hi - lo)
