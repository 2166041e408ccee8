"""Seeded random projections of per-sample gradients, ``R^P -> R^k``, preserving inner products in expectation.

* :class:`CountSketch`: each input coordinate ``j`` goes to bucket ``h(j)`` with sign ``s(j)``:
  ``(Sx)_b = Σ_{j: h(j)=b} s(j) x_j``. Unbiased, ``E<Sx, Sy> = <x, y>``, variance about ``(|x|²|y|² + <x,y>²)/k``.
  Stores two length-P vectors, costs O(P) per sample.
* :class:`GaussianProjection`: ``Rx`` with ``R_ij ~ N(0, 1/k)`` i.i.d. (Johnson–Lindenstrauss), same expectation and
  variance. ``R`` is generated in row blocks of at most ~16 MB, each from its own seed ``(seed, block)``, so the
  ``P × k`` matrix is never materialised; blocks are kept in memory only while the whole matrix stays under
  ``_KEEP_BYTES`` (otherwise regenerated per call — identical numbers either way).

Both are deterministic given ``seed`` and independent of the batch they are applied to.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np
import torch

_BLOCK_BYTES = 16 << 20  # one generated block of R (float32)
_KEEP_BYTES = 256 << 20  # keep all blocks of R in memory below this total size


class Projection(Protocol):
    in_dim: int
    dim: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


def make_projection(kind: str, in_dim: int, dim: int, seed: int) -> Projection | None:
    """``kind`` = none | countsketch | gaussian (``features.projection``); None for ``none``."""
    if kind == "none":
        return None
    if kind == "countsketch":
        return CountSketch(in_dim, dim, seed)
    if kind == "gaussian":
        return GaussianProjection(in_dim, dim, seed)
    raise ValueError(f"features.projection={kind!r}: expected one of none, countsketch, gaussian")


class CountSketch:
    def __init__(self, in_dim: int, dim: int, seed: int):
        self.in_dim, self.dim = in_dim, dim
        rng = np.random.default_rng(seed)
        self.buckets = torch.from_numpy(rng.integers(0, dim, size=in_dim, dtype=np.int64))
        self.signs = torch.from_numpy(rng.integers(0, 2, size=in_dim).astype(np.float32) * 2 - 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(n, P) -> (n, k)."""
        _check_width(x, self.in_dim)
        x = x.float()
        out = x.new_zeros(x.shape[0], self.dim)
        out.index_add_(1, self.buckets.to(x.device), x * self.signs.to(x.device))
        return out


class GaussianProjection:
    def __init__(self, in_dim: int, dim: int, seed: int):
        self.in_dim, self.dim, self.seed = in_dim, dim, seed
        self.rows = max(1, _BLOCK_BYTES // (4 * dim))  # input coordinates per block
        self._keep = in_dim * dim * 4 <= _KEEP_BYTES
        self._blocks: dict[int, torch.Tensor] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(n, P) -> (n, k) = x @ R, accumulated block by block."""
        _check_width(x, self.in_dim)
        x = x.float()
        out = x.new_zeros(x.shape[0], self.dim)
        for b, start in enumerate(range(0, self.in_dim, self.rows)):
            stop = min(start + self.rows, self.in_dim)
            out += x[:, start:stop] @ self._block(b, stop - start).to(x.device)
        return out

    def _block(self, b: int, rows: int) -> torch.Tensor:
        if b in self._blocks:
            return self._blocks[b]
        # Generated on the CPU: the numbers do not depend on the device the projection runs on.
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, b]).generate_state(1)[0]))
        block = torch.randn(rows, self.dim, generator=gen) / math.sqrt(self.dim)
        if self._keep:
            self._blocks[b] = block
        return block


def _check_width(x: torch.Tensor, in_dim: int) -> None:
    if x.ndim != 2 or x.shape[1] != in_dim:
        raise ValueError(f"projection expects (n, {in_dim}) inputs, got {tuple(x.shape)}")
