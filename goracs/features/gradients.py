"""Exact per-sample gradients of the task loss w.r.t. chosen LoRA matrices, with ONE backward pass per batch.

Every LoRA matrix is a bias-free linear map ``y_t = W a_t`` applied at each token ``t``. For the summed batch loss
``L = Σ_i ℓ_i`` the samples do not interact (attention stays inside a sample), so ``∂L/∂y_{i,t} = ∂ℓ_i/∂y_{i,t}`` and

    ∇_W ℓ_i = Σ_t (∂ℓ_i/∂y_{i,t}) a_{i,t}ᵀ          (out × in; padding rows have zero gradient)

A forward hook on each chosen module keeps its input ``a`` and output ``y``; one ``torch.autograd.grad(L, [y…])``
gives every ``∂L/∂y``; an ``einsum`` recovers all per-sample gradients. The LoRA scaling ``α/r`` sits after ``y`` in
the graph, so it is part of ``∂L/∂y`` automatically; the LoRA dropout sits before ``a``, so the captured ``a`` already
carries the mask. Only the chosen parameters require grad, so autograd records nothing below the first chosen layer
(for the default, the last layer's ``v_proj``): the backward is cheap and lower-layer activations are not kept.

Dropout (``features.dropout``, the official code runs with it on): the model runs in eval mode and a forward hook on
each relevant ``lora_dropout`` module applies a Bernoulli mask drawn from a generator seeded by
``(dropout_seed, sample index, module number)`` over that sample's real tokens, drawn on the CPU and moved to the
model's device. Masks therefore do not depend on the batch composition, the padding, the process count or the device. Modules whose
``lora_B`` is zero (a fresh adapter) contribute nothing to the output, so only the chosen modules' dropout is applied.
"""

from __future__ import annotations

import logging
import re
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from goracs.features.projection import Projection
from goracs.models.encoding import collate_left
from goracs.task_protocol import Task

log = logging.getLogger(__name__)

GRADIENT_FEATURES = ("loss", "el2n", "grad_norm", "grad_proj")


def encode_split(df: pd.DataFrame, task: Task, tokenizer, *, cutoff_len: int, faithful: bool) -> list[dict]:
    """Token ids of each sample for the gradient pass (:meth:`~goracs.task_protocol.Task.encode` with the prompt
    counted and a response mask; SeqRec: prompt+output+EOS; CTR: the prompt and its 0/1 label), with ``index`` = row position in
    the split."""
    items = []
    for i, row in enumerate(df.to_dict("records")):
        item = task.encode(tokenizer, row, faithful=faithful, cutoff_len=cutoff_len, train_on_inputs=True,
                           response_mask=True)
        item["index"] = i
        items.append(item)
    return items


def collate(items: Sequence[Mapping], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad a list of :func:`encode_split` items into tensors (``response`` padded with 0)."""
    keys = ("input_ids", "attention_mask", "labels")
    batch = collate_left([{k: it[k] for k in keys if k in it} for it in items], pad_id)
    width = batch["input_ids"].shape[1]
    if "response" in items[0]:
        batch["response"] = torch.tensor([[0] * (width - len(it["response"])) + it["response"] for it in items])
    if "label" in items[0]:
        batch["label"] = torch.tensor([it["label"] for it in items], dtype=torch.long)
    batch["index"] = torch.tensor([it["index"] for it in items], dtype=torch.long)
    return batch


def select_lora_params(model: nn.Module, pattern: str) -> dict[str, nn.Linear]:
    """LoRA parameters whose name matches the regex ``pattern`` (``{last}`` = index of the last layer), mapped to
    their bias-free ``nn.Linear`` module. Raises ValueError listing the LoRA parameter names when nothing matches."""
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    regex = re.compile(pattern.replace("{last}", str(n_layers - 1 if n_layers else "{last}")))
    lora_names = [n for n, _ in model.named_parameters() if "lora_" in n]
    chosen = {}
    for name in lora_names:
        if not regex.search(name):
            continue
        module = model.get_submodule(name.rsplit(".", 1)[0]) if name.endswith(".weight") else None
        if not isinstance(module, nn.Linear) or module.bias is not None:
            raise ValueError(f"features.grad_params={pattern!r} matches {name}, which is not the weight of a "
                             "bias-free linear LoRA matrix (lora_A / lora_B); per-sample gradients need one")
        chosen[name] = module
    if not chosen:
        listing = "\n  ".join(lora_names) or "(none: is a LoRA attached?)"
        raise ValueError(f"features.grad_params={pattern!r} (regex; {{last}}={n_layers - 1 if n_layers else '?'}) "
                         f"matches no LoRA parameter. The LoRA parameters are:\n  {listing}")
    return chosen


class GradientExtractor:
    """Batch function of the gradient pass: ``prepare(device)``, then ``self(batch) -> {feature: (B, ...) array}``.

    ``want`` lists the features to return (subset of :data:`GRADIENT_FEATURES`). ``grad_proj`` is the projected
    gradient, or the raw flattened one (P = Σ out·in) when ``projection`` is None.
    """

    def __init__(self, model: nn.Module, task: Task, pattern: str, *, pad_id: int,
                 yes_no: tuple[int, int] | None, dropout: bool, dropout_seed: int, projection: Projection | None,
                 want: Sequence[str]):
        self.model, self.task, self.pattern, self.pad_id, self.yes_no = model, task, pattern, pad_id, yes_no
        self.dropout, self.dropout_seed, self.projection = dropout, dropout_seed, projection
        self.want = tuple(want)
        self._hooks: list = []

    def collate(self, items: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        return collate(items, self.pad_id)

    def param_dim(self) -> int:
        return sum(m.weight.numel() for m in select_lora_params(self.model, self.pattern).values())

    def prepare(self, device: torch.device) -> None:
        """Move to ``device``, freeze all but the chosen parameters, register hooks (idempotent)."""
        self.release()
        self.model.to(device).eval()
        self.device = device
        self._chosen = select_lora_params(self.model, self.pattern)
        chosen_ids = {id(m) for m in self._chosen.values()}
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._captured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._hooks = []
        for name, module in self._chosen.items():
            module.weight.requires_grad_(True)
            self._hooks.append(module.register_forward_hook(self._capture(name)))
        if self.dropout:
            number = 0
            for lora_layer in self.model.modules():
                drop = getattr(lora_layer, "lora_dropout", None)
                if not isinstance(drop, nn.ModuleDict):
                    continue
                for adapter, module in drop.items():
                    p = getattr(module, "p", 0.0)
                    own = {id(lora_layer.lora_A[adapter]), id(lora_layer.lora_B[adapter])}
                    matters = bool(own & chosen_ids) or bool(lora_layer.lora_B[adapter].weight.detach().any())
                    if p > 0 and matters:
                        self._hooks.append(module.register_forward_hook(self._masked_dropout(p, number)))
                    number += 1

    def __call__(self, batch: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
        batch = {k: v.to(self.device) for k, v in batch.items()}
        mask = batch["attention_mask"]
        self._lengths, self._index = mask.sum(dim=1).tolist(), batch["index"].tolist()
        self._captured.clear()
        position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)  # as if each sample were alone, unpadded
        with torch.enable_grad():
            # The task's loss and EL2N, without (B, T, vocab) logits (SeqRec: through the head in chunks; CTR: only
            # the last position's logits).
            losses, errors = self.task.losses(self.model, batch, answer_ids=self.yes_no, position_ids=position_ids,
                                              want_el2n="el2n" in self.want)
            names = list(self._chosen)
            outputs = [self._captured[n][1] for n in names]
            grads_out = torch.autograd.grad(losses.sum(), outputs)
        per_sample = [torch.einsum("bto,bti->boi", g.float(), self._captured[n][0].float()).flatten(1)
                      for n, g in zip(names, grads_out)]
        grads = torch.cat(per_sample, dim=1)  # (B, P), parameter order = model order of the chosen names
        result = {"loss": losses.detach(), "grad_norm": grads.norm(dim=1)}
        if errors is not None:
            result["el2n"] = errors
        if "grad_proj" in self.want:
            result["grad_proj"] = self.projection(grads) if self.projection is not None else grads
        self._captured.clear()
        return {k: v.detach().float().cpu().numpy() for k, v in result.items() if k in self.want}

    def release(self) -> None:
        """Remove the hooks (the model can then be used for other passes)."""
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def _capture(self, name: str):
        def hook(module, inputs, output):
            self._captured[name] = (inputs[0].detach(), output)
        return hook

    def _masked_dropout(self, p: float, number: int):
        def hook(module, inputs, output):
            x = inputs[0]
            mask = torch.ones_like(x)
            width = x.shape[1]
            for b, (n, idx) in enumerate(zip(self._lengths, self._index)):
                seed = int(np.random.SeedSequence([self.dropout_seed, idx, number]).generate_state(1)[0])
                # Drawn on the CPU and moved: CUDA generators give other numbers, and the key has no device.
                gen = torch.Generator().manual_seed(seed)
                keep = torch.rand((n, x.shape[-1]), generator=gen) >= p
                mask[b, width - n:] = keep.to(device=x.device, dtype=x.dtype) / (1.0 - p)
            return x * mask  # eval mode: the module itself returned x unchanged
        return hook
