"""DEALRec's influence score on the surrogate: LiSSA estimate of H⁻¹v, then one dot product per training sample.

Public entry: :func:`influence_scores`. Following DEALRec ``code/prune/influence_score.py`` with θ restricted to one
matrix (``features.influence.param``, official ``item_encoder.layer.1.attention.dense.weight``, 64×64) and the model in
eval mode (no dropout):

1. ``v = mean over batches B of ∇θ L_B`` (the training set in order, batches of ``features.surrogate.batch_size``;
   each batch's loss is its mean over transitions, and the batch gradients are averaged with equal weight).
2. LiSSA (:func:`lissa`): ``h₀ = v``, ``h_{j+1} = v + (1 − d)·h_j − H_{S_j} h_j / s`` for ``recursion_depth``
   steps, with ``H_S`` the Hessian of the mean loss over ``hvp_batch`` random samples (official: 1); averaged over
   ``repeats`` runs. Its fixed point is ``h* = s·(H + d·s·I)⁻¹ v``; like the official code we keep that scale ``s``
   (a constant factor that min–max normalisation removes). It converges when every eigenvalue λ of H satisfies
   ``−d·s < λ < (2 − d)·s``.
3. ``influence_i = h·∇θ L(z_i)`` for every sample i (per-sample gradients batched with ``torch.func.vmap``).

Deviation (also listed in ``conf/selection/dealrec.yaml``): the official code redraws each sample's negatives every
time a loss is evaluated, so v, every HVP and every per-sample gradient see different losses. Here every sample's
negatives are drawn once from ``features.influence.seed``, so all three use one well-defined loss L.
"""

from __future__ import annotations

import logging
import math
from typing import Callable

import numpy as np
import torch
from torch.func import functional_call, grad, vmap
from tqdm.auto import tqdm

from goracs.errors import ConfigError
from goracs.features.sasrec import SASRec, bce_loss
from goracs.features.sequences import SequenceData, sample_negatives

log = logging.getLogger(__name__)


def influence_scores(model: SASRec, data: SequenceData, *, param: str, damping: float, scale: float,
                     recursion_depth: int, hvp_batch: int, repeats: int, seed: int, v_batch: int,
                     batch_size: int = 1024, device: str = "cpu") -> np.ndarray:
    """(n,) float32 influence scores of the rows of ``data`` (see the module docstring)."""
    loss = RestrictedLoss(model, data, param, np.random.default_rng(seed), device)
    v = loss.batch_mean_gradient(v_batch)
    gen = np.random.default_rng([seed, 1])

    def hvp(h: torch.Tensor) -> torch.Tensor:
        return loss.hvp(h, gen.integers(0, len(data), size=hvp_batch))

    h = sum(lissa(hvp, v, damping=damping, scale=scale, depth=recursion_depth) for _ in range(repeats)) / repeats
    if not torch.isfinite(h).all():
        raise ConfigError(f"LiSSA diverged (non-finite H⁻¹v): raise features.influence.scale (now {scale}) or "
                         f"features.influence.damping (now {damping}) so that every Hessian eigenvalue lies in "
                         f"(-damping·scale, (2 - damping)·scale)")
    log.info("LiSSA: |v| = %.4g, |H^-1 v| = %.4g after %d steps", float(v.norm()), float(h.norm()), recursion_depth)
    return loss.dot_per_sample(h, batch_size).astype(np.float32)


def lissa(hvp: Callable[[torch.Tensor], torch.Tensor], v: torch.Tensor, *, damping: float, scale: float,
          depth: int) -> torch.Tensor:
    """LiSSA recursion ``h ← v + (1 − damping)·h − hvp(h)/scale`` from ``h = v``, ``depth`` times (no final
    division by ``scale``, as the official code); ``hvp`` may draw a fresh sample on every call."""
    h = v.clone()
    for step in tqdm(range(depth), desc="influence/lissa", leave=False, mininterval=2.0):
        h = v + (1.0 - damping) * h - hvp(h) / scale
        if step % 100 == 99 and not torch.isfinite(h).all():
            break  # diverged: the caller reports it; inf/NaN arithmetic would only be slow
    return h


class RestrictedLoss:
    """The surrogate's loss as a function of one parameter matrix θ (all other weights fixed, eval mode), on the rows
    of ``data`` with negatives drawn once from ``rng``."""

    def __init__(self, model: SASRec, data: SequenceData, param: str, rng: np.random.Generator, device: str = "cpu"):
        params = dict(model.named_parameters())
        if param not in params:
            raise ValueError(f"features.influence.param={param!r} is not a surrogate parameter; choose one of "
                             f"{sorted(params)}")
        self.model = model.to(device).eval()
        self.name = param
        self.theta = params[param].detach()
        # every other weight enters as a constant: autograd then records only the paths through θ
        self.fixed = {k: v.detach() for k, v in params.items() if k != param}
        self.inputs = torch.as_tensor(data.inputs, device=device)
        self.pos = torch.as_tensor(data.targets, device=device)
        self.neg = torch.as_tensor(sample_negatives(data, rng), device=device)
        self.device = device

    @property
    def dim(self) -> int:
        return self.theta.numel()

    def loss(self, theta: torch.Tensor, idx) -> torch.Tensor:
        """Mean loss over the transitions of rows ``idx`` at the flat ``theta`` (the official batch loss)."""
        out = functional_call(self.model, {**self.fixed, self.name: theta.view_as(self.theta)}, (self.inputs[idx],))
        return bce_loss(self.model, out, self.pos[idx], self.neg[idx])

    def batch_mean_gradient(self, batch_size: int) -> torch.Tensor:
        """v: the flat gradient of each consecutive batch's loss, averaged over batches with equal weight."""
        grads = [self.gradient(torch.arange(s, min(s + batch_size, len(self.inputs)), device=self.device))
                 for s in range(0, len(self.inputs), batch_size)]
        return torch.stack(grads).mean(0)

    def gradient(self, idx) -> torch.Tensor:
        theta = self.theta.reshape(-1).clone().requires_grad_(True)
        (g,) = torch.autograd.grad(self.loss(theta, idx), theta)
        return g

    def hvp(self, h: torch.Tensor, idx) -> torch.Tensor:
        """H_S h for the mean loss over rows ``idx`` (double backward)."""
        theta = self.theta.reshape(-1).clone().requires_grad_(True)
        (g,) = torch.autograd.grad(self.loss(theta, idx), theta, create_graph=True)
        (hv,) = torch.autograd.grad(g @ h, theta)
        return hv

    def per_sample_gradients(self, idx) -> torch.Tensor:
        """(len(idx), dim) gradients of each row's own loss (one forward/backward for the batch via vmap)."""
        def one(theta, inputs, pos, neg):
            out = functional_call(self.model, {**self.fixed, self.name: theta.view_as(self.theta)}, (inputs[None],))
            return bce_loss(self.model, out, pos[None], neg[None])

        flat = self.theta.reshape(-1)
        return vmap(grad(one), in_dims=(None, 0, 0, 0))(flat, self.inputs[idx], self.pos[idx], self.neg[idx])

    def dot_per_sample(self, h: torch.Tensor, batch_size: int) -> np.ndarray:
        """``h·∇θ L(z_i)`` for every row, ``batch_size`` rows per vmap call."""
        out = np.empty(len(self.inputs), dtype=np.float64)
        n_chunks = max(1, math.ceil(len(self.inputs) / batch_size))
        for chunk in tqdm(torch.arange(len(self.inputs)).split(batch_size), total=n_chunks,
                          desc="influence/samples", leave=False):
            with torch.no_grad():
                out[chunk.numpy()] = (self.per_sample_gradients(chunk.to(self.device)) @ h).double().cpu().numpy()
        return out
