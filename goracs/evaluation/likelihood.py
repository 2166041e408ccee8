"""Teacher-forced likelihoods of responses: the per-sample test loss and likelihood ranking of candidates.

* ``response_losses``: per-sample test loss of SeqRec, the mean next-token cross-entropy (nats) of the **response
  tokens only** (the quoted target title and EOS) given the *training* prompt, teacher-forced:
  ``ℓ_i = −(1/|R_i|) Σ_{t∈R_i} log p(y_t | y_<t)``. This is the loss the POO bounds (spec ``goracs.md`` §2.1).
  One forward per sample (batched, sorted by length to save padding; results come back in input order).
* ``candidate_scores``: for one *inference* prompt and candidate responses ``r_c = '"Title"' + EOS``, the mean
  log-probability ``s_c = (1/|r_c|) Σ_t log p(r_c,t | prompt, r_c,<t)``. The prompt is run once and its KV cache
  is shared by every candidate (candidates laid end to end after it under a block mask); never one full forward
  per candidate.
* ``likelihood_rank``: 0-based rank of the target among its negatives by those scores,
  ``#{negative ids n : s_n > s_target}`` (strictly greater; a negative whose title equals the target's is the target
  and does not count, as in grounding). Several targets: the best-ranked one counts.

Candidate tokens are ``tokenizer(response, add_special_tokens=False) + [EOS]``, appended to the prompt's tokens
(``encode_prompt``: an over-long prompt keeps its end). With byte-level BPE the prompt's final ``"\\n"`` and the
response's opening quote are separate pre-tokens, so this equals tokenising the concatenation.
"""

from __future__ import annotations

import copy
import math
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from goracs.models.encoding import IGNORE, collate_left, encode_lm, encode_prompt, lm_loss_per_sample, pad_id
from goracs.models.lm_head import token_logprobs
from goracs.models.kv_cache import cache_keyword


@torch.no_grad()
def response_losses(model, tokenizer, prompts: Sequence[str], responses: Sequence[str], *, batch_size: int,
                    cutoff_len: int) -> np.ndarray:
    """(N,) float64 per-sample response cross-entropy (module docstring); NaN where ``cutoff_len`` truncated the
    whole response away."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    enc = [encode_lm(tokenizer, p, r, cutoff_len=cutoff_len, train_on_inputs=False) for p, r in zip(prompts, responses)]
    device = next(model.parameters()).device
    pad = pad_id(tokenizer)
    out = np.full(len(enc), math.nan)
    order = np.argsort([len(e["input_ids"]) for e in enc], kind="stable")  # similar lengths share a batch
    for start in tqdm(range(0, len(order), batch_size), desc="test loss", unit="batch", leave=False):
        idx = order[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collate_left([enc[i] for i in idx], pad).items()}
        labels = batch.pop("labels")
        counted = (labels[:, 1:] != IGNORE).sum(dim=1)
        # Left padding puts every response at the end: logits of the last (longest response + 1) positions suffice.
        width = int(counted.max().item()) + 1 if counted.numel() else 1
        width = min(width, labels.shape[1])
        logits = model(**batch, logits_to_keep=width).logits
        loss = lm_loss_per_sample(logits, labels[:, -width:]).double().cpu().numpy()
        loss[counted.cpu().numpy() == 0] = math.nan
        out[idx] = loss
    return out


@torch.no_grad()
def candidate_scores(model, tokenizer, prompt: str, responses: Sequence[str], *, cutoff_len: int,
                     candidate_batch_size: int = 32) -> np.ndarray:
    """(C,) float64 mean log-probability of each response given ``prompt`` (module docstring), via one prompt
    forward and its KV cache.

    The candidates of a chunk are laid end to end in a single row after the cached prompt, each with positions
    continuing the prompt's and a block mask: a candidate token attends to the whole prompt and to the earlier tokens
    of its own candidate only. That is exactly its own forward on the prompt, without copying the prompt's cache once
    per candidate (the cost of a batched layout) or padding candidates to a common length.
    """
    if candidate_batch_size < 1:
        raise ValueError(f"eval.candidate_batch_size={candidate_batch_size}: expected >= 1")
    device = next(model.parameters()).device
    prompt_ids = torch.tensor([encode_prompt(tokenizer, prompt, cutoff_len=cutoff_len)["input_ids"]], device=device)
    out = model(input_ids=prompt_ids, use_cache=True, logits_to_keep=1)
    cache_kw = cache_keyword(model)
    cache, first = getattr(out, cache_kw), torch.log_softmax(out.logits[0, -1].float(), dim=-1)
    n_prompt = prompt_ids.shape[1]
    dtype = model.get_input_embeddings().weight.dtype
    tokens = [candidate_tokens(tokenizer, r) for r in responses]
    scores = np.empty(len(tokens))
    for start in range(0, len(tokens), candidate_batch_size):
        chunk = tokens[start:start + candidate_batch_size]
        lengths = torch.tensor([len(t) for t in chunk], device=device)
        flat = torch.tensor([t for c in chunk for t in c], device=device)
        owner = torch.repeat_interleave(torch.arange(len(chunk), device=device), lengths)
        offset = torch.arange(len(flat), device=device) - (torch.cumsum(lengths, 0) - lengths)[owner]
        own = (owner[:, None] == owner[None, :]) & (offset[None, :] <= offset[:, None])
        allowed = torch.cat([torch.ones((len(flat), n_prompt), dtype=torch.bool, device=device), own], dim=1)
        mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, torch.finfo(dtype).min)
        # Position j predicts token j + 1 of the same candidate; a candidate's first token comes from the prompt.
        inner = torch.nonzero(offset[1:] > 0).squeeze(1)
        logp = token_logprobs(model, torch.zeros_like(inner), inner, flat[inner + 1], input_ids=flat[None],
                              attention_mask=mask[None, None], position_ids=(n_prompt + offset)[None],
                              use_cache=True, **{cache_kw: copy.deepcopy(cache)})  # a copy: the forward appends
        token_lp = first[flat].float()
        token_lp[inner + 1] = logp
        total = torch.zeros(len(chunk), dtype=torch.float64, device=device).index_add_(0, owner, token_lp.double())
        scores[start:start + len(chunk)] = (total / lengths).cpu().numpy()
    return scores


def candidate_tokens(tokenizer, response: str) -> list[int]:
    """Token ids of a candidate response as scored: the response's own tokens, then EOS."""
    ids = list(tokenizer(response, add_special_tokens=False)["input_ids"])
    return ids + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])


def likelihood_rank(target_scores: Sequence[float], negative_scores: Sequence[float]) -> int:
    """0-based rank of the best target: ``#{n : s_n > max_t s_t}`` over the negatives' scores (the caller leaves out
    negatives that share a target's title)."""
    best = max(target_scores)
    return int(np.sum(np.asarray(negative_scores, dtype=np.float64) > best))
