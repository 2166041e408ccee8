"""Going around a causal LM's head: per-sample losses in chunks, never holding the (tokens x vocab) logits, and the
final hidden states without the head.

For a hidden state ``h_t`` after the final norm and the head ``W`` (V x H), the logits are ``z_t = W h_t`` and a
counted token with target ``y_t`` costs ``ℓ_t = logsumexp(z_t) − z_{t,y_t}`` nats, with gradient
``∂ℓ_t/∂h_t = Wᵀ (softmax(z_t) − e_{y_t})``. The per-sample loss is the mean over the sample's counted tokens,
``ℓ_i = Σ_t ℓ_t / #{t counted}`` (the definition of :func:`goracs.models.encoding.lm_loss_per_sample`).

Why: the full-logits path holds B·T·V floats several times over (logits, their fp32 copy, log-softmax, its
gradient, the zero-filled slice gradient): for SmolLM2 at batch 8 x 220 tokens that is 350 MB each. On a CPU every
fresh buffer that large is new memory from the kernel, and the page faults alone took about a second per training
step (the ``sys`` time of the demo). Here counted tokens go through the head ``chunk`` rows at a time, and
``∂ℓ/∂h`` is formed in the forward pass from the same softmax and kept (N x H floats), so the backward only scales
it by the incoming gradient. The head's matmul runs in the model's dtype and its output is rounded to that dtype
before the fp32 softmax, as the Hugging Face head does, so the values match the full-logits path up to rounding
(checked in ``tests/test_lm_head.py``).

The same pass gives each token's EL2N error norm ``e_t = ‖softmax(z_t) − e_{y_t}‖₂ = √(Σ_v p_v² − 2 p_{y_t} + 1)``
(the SeqRec EL2N feature, :meth:`goracs.tasks.SeqRecTask.losses`).

Only models whose forward is ``logits = lm_head(decoder(...))`` take this path (:func:`split_head`: Llama, Mistral,
Qwen2/3 with a bias-free, frozen head, not sharded by FSDP); any other model falls back to the full logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from goracs.models.encoding import IGNORE

# Model types whose causal-LM forward is exactly ``lm_head(model(...).last_hidden_state)`` (no logit scaling or
# soft-capping), so that going through the decoder and the head weight ourselves changes nothing.
PLAIN_HEAD_TYPES = ("llama", "mistral", "qwen2", "qwen3")
# Elements of one chunk's fp32 logits: 4 M (16 MB) keeps CPU buffers below glibc's mmap threshold (32 MB), so they
# are reused rather than faulted in again; a GPU has no such cost and prefers large products.
CHUNK_ELEMENTS = {"cpu": 1 << 22, "cuda": 1 << 28}


@dataclass(frozen=True)
class LMLoss:
    """``loss`` (B,) per-sample mean token cross-entropy (differentiable); ``el2n`` (B,) mean token error norm over
    the ``response`` tokens (all counted tokens where a sample has none), or None when not asked for."""

    loss: torch.Tensor
    el2n: torch.Tensor | None = None


def lm_losses(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, *,
              position_ids: torch.Tensor | None = None, response: torch.Tensor | None = None,
              want_el2n: bool = False) -> LMLoss:
    """Per-sample causal-LM loss of a batch (module docstring), chunked through the head when the model allows it.

    ``labels`` (B, T) with -100 on uncounted tokens; ``response`` (B, T) 0/1 marks the response tokens for EL2N.
    """
    parts = split_head(model)
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
    if position_ids is not None:
        kwargs["position_ids"] = position_ids
    if parts is None:
        return losses_from_logits(model(**kwargs).logits, labels, response=response, want_el2n=want_el2n)
    decoder, head = parts
    hidden = decoder(**kwargs).last_hidden_state
    rows, cols, targets = _counted(labels)
    # Position t predicts token t + 1: only counted positions go through the head.
    nll, err = token_nll(hidden[:, :-1][rows, cols], head.weight, targets, want_err=want_el2n)
    return _per_sample(labels, response, rows, cols, nll, err)


def losses_from_logits(logits: torch.Tensor, labels: torch.Tensor, *, response: torch.Tensor | None = None,
                       want_el2n: bool = False) -> LMLoss:
    """The same quantities from full logits (B, T, V): models without a plain head, and the reference in tests."""
    rows, cols, targets = _counted(labels)
    z = logits[:, :-1][rows, cols].float()  # (K, V): only the counted positions
    lse = torch.logsumexp(z, dim=1, keepdim=True)
    nll = (lse - z.gather(1, targets.unsqueeze(1))).squeeze(1)
    err = _error_norm(torch.exp(z.detach() - lse.detach()), targets.unsqueeze(1)) if want_el2n else None
    return _per_sample(labels, response, rows, cols, nll, err)


def token_logprobs(model: nn.Module, rows: torch.Tensor, cols: torch.Tensor, targets: torch.Tensor,
                   **forward) -> torch.Tensor:
    """(K,) fp32 ``log p(targets[k] | tokens up to (rows[k], cols[k]))`` from one forward of ``model(**forward)``,
    through the head in chunks when the model allows it (no (B, T, vocab) logits), else from the full logits."""
    parts = split_head(model)
    if parts is None:
        logits = model(**forward).logits[rows, cols].float()
        return logits.gather(1, targets.unsqueeze(1)).squeeze(1) - torch.logsumexp(logits, dim=1)
    decoder, head = parts
    hidden = decoder(**forward).last_hidden_state
    return -token_nll(hidden[rows, cols], head.weight, targets)[0]


def token_nll(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *, want_err: bool = False,
              chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(N,) fp32 ``ℓ_t`` of each row of ``hidden`` (N, H) under the head ``weight`` (V, H), and (N,) ``e_t`` when
    ``want_err``. Differentiable w.r.t. ``hidden`` only (the head must be frozen). ``chunk`` rows per head product
    (default: :data:`CHUNK_ELEMENTS` of the device / V)."""
    if weight.requires_grad:
        raise ValueError("token_nll needs a frozen LM head (its gradient is not formed); use the full-logits loss")
    if chunk is None:
        chunk = max(1, CHUNK_ELEMENTS.get(hidden.device.type, 1 << 26) // weight.shape[0])
    nll, err = _ChunkedHeadNLL.apply(hidden, weight, targets, int(chunk), bool(want_err))
    return nll, (err if want_err else None)


def final_hidden_states(model: nn.Module, **forward) -> torch.Tensor:
    """(B, T, H) hidden states after the final norm (what the head reads), from the decoder alone when the model has
    a plain one (:func:`split_head`'s conditions on the model): asking the whole model for ``output_hidden_states``
    keeps every layer's states alive (31 x B x T x H for SmolLM2), which on a CPU costs a fresh allocation per batch."""
    decoder = _plain_decoder(model)
    if decoder is not None:
        return decoder(**forward).last_hidden_state
    return model(**forward, output_hidden_states=True, logits_to_keep=1).hidden_states[-1]


def split_head(model: nn.Module) -> tuple[nn.Module, nn.Linear] | None:
    """(decoder, head) of a causal LM (PEFT-wrapped or not) whose logits are ``head(decoder(...))`` with a frozen,
    bias-free linear head; None otherwise (the caller then uses the model's own logits)."""
    decoder = _plain_decoder(model)
    if decoder is None:
        return None
    head = _base(model).get_output_embeddings()
    if not isinstance(head, nn.Linear) or head.bias is not None or head.weight.requires_grad:
        return None
    return decoder, head


def _base(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _plain_decoder(model: nn.Module) -> nn.Module | None:
    """The decoder of a model on :data:`PLAIN_HEAD_TYPES` that FSDP does not shard (FSDP gathers the root's
    parameters only inside its own forward, so the decoder cannot be called on its own); None otherwise."""
    base = _base(model)
    if getattr(getattr(base, "config", None), "model_type", None) not in PLAIN_HEAD_TYPES:
        return None
    if not hasattr(base, "get_decoder") or _sharded(base):
        return None
    return base.get_decoder()


def _sharded(module: nn.Module) -> bool:
    return any(type(m).__name__ in ("FullyShardedDataParallel", "FSDPModule") or type(m).__name__.startswith("FSDP")
               for m in module.modules())


def _counted(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row and column (position t, predicting token t + 1) of every counted token, and its target id."""
    shifted = labels[:, 1:]
    rows, cols = (shifted != IGNORE).nonzero(as_tuple=True)
    return rows, cols, shifted[rows, cols]


def _per_sample(labels, response, rows, cols, nll, err) -> LMLoss:
    """Token values -> per-sample means: the loss over counted tokens; EL2N over the response tokens, or over all
    counted tokens for a sample whose response was cut off."""
    n = labels.shape[0]
    counted = torch.zeros(n, dtype=nll.dtype, device=nll.device).index_add(0, rows, torch.ones_like(nll))
    loss = torch.zeros(n, dtype=nll.dtype, device=nll.device).index_add(0, rows, nll) / counted.clamp(min=1)
    if err is None:
        return LMLoss(loss)
    marks = response if response is not None else (labels != IGNORE).long()
    in_response = marks[:, 1:].bool()[rows, cols]
    has_response = torch.zeros(n, dtype=torch.bool, device=nll.device).index_fill(0, rows[in_response], True)
    use = (in_response | ~has_response[rows]).to(err.dtype)
    err_sum = torch.zeros(n, dtype=err.dtype, device=err.device).index_add(0, rows, err * use)
    err_n = torch.zeros(n, dtype=err.dtype, device=err.device).index_add(0, rows, use)
    return LMLoss(loss, err_sum / err_n.clamp(min=1))


def _error_norm(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(K,) ``‖p − e_y‖₂ = √(Σ_v p_v² − 2 p_y + 1)`` of softmax rows ``p`` (K, V) and targets ``y`` (K, 1)."""
    return ((p * p).sum(dim=1) - 2 * p.gather(1, y).squeeze(1) + 1).clamp(min=0).sqrt()


class _ChunkedHeadNLL(torch.autograd.Function):
    """Forward: per-row NLL (and error norm) chunk by chunk, plus ``∂ℓ_t/∂h_t`` when ``hidden`` needs a gradient.
    Backward: that stored gradient times the incoming one."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk, want_err):
        n = hidden.shape[0]
        nll = torch.empty(n, dtype=torch.float32, device=hidden.device)
        err = torch.empty(n, dtype=torch.float32, device=hidden.device) if want_err else None
        need_grad = ctx.needs_input_grad[0]
        grad = torch.empty((n, hidden.shape[1]), dtype=torch.float32, device=hidden.device) if need_grad else None
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            h, y = hidden[start:stop], targets[start:stop].unsqueeze(1)
            z = (h @ weight.t()).float()  # rounded to the model dtype first, like the HF head's output
            z_y = z.gather(1, y)
            top = z.amax(dim=1, keepdim=True)
            total = z.sub_(top).exp_().sum(dim=1, keepdim=True)  # in place: one (chunk, V) buffer throughout
            nll[start:stop] = (top + total.log() - z_y).squeeze(1)
            if not (need_grad or want_err):
                continue
            p = z.div_(total)  # softmax
            if want_err:
                err[start:stop] = _error_norm(p, y)
            if need_grad:
                p.scatter_add_(1, y, torch.full_like(y, -1, dtype=p.dtype))  # softmax − onehot
                grad[start:stop] = (p.to(weight.dtype) @ weight).float()
        ctx.save_for_backward(grad)
        ctx.hidden_dtype = hidden.dtype
        err = err if err is not None else torch.empty(0, device=hidden.device)
        ctx.mark_non_differentiable(err)
        return nll, err

    @staticmethod
    def backward(ctx, grad_nll, _grad_err):
        (grad,) = ctx.saved_tensors
        if grad is None:
            return None, None, None, None, None
        return (grad * grad_nll.unsqueeze(1)).to(ctx.hidden_dtype), None, None, None, None
