"""Teacher-forced likelihoods of responses: the per-sample test loss and likelihood ranking of candidates.

* ``response_losses``: per-sample test loss of SeqRec, the mean next-token cross-entropy (nats) of the **response
  tokens only** (the quoted target title and EOS) given the *training* prompt, teacher-forced:
  ``ℓ_i = −(1/|R_i|) Σ_{t∈R_i} log p(y_t | y_<t)``. This is the loss the POO bounds (spec ``goracs.md`` §2.1).
  One forward per sample (batched, sorted by length to save padding; results come back in input order).
* ``candidate_scores``: for one *inference* prompt and candidate responses ``r_c = '"Title"' + EOS``, the mean
  log-probability ``s_c = (1/|r_c|) Σ_t log p(r_c,t | prompt, r_c,<t)``. The prompt is run once and its KV cache
  is shared by every candidate (candidates batched on it, right-padded); never one full forward per candidate.
* ``likelihood_rank``: 0-based rank of the target among its negatives by those scores,
  ``#{negative ids n : s_n > s_target}`` (strictly greater; a negative whose title equals the target's is the target
  and does not count, as in grounding). Several targets: the best-ranked one counts.

Candidate tokens are ``tokenizer(response, add_special_tokens=False) + [EOS]``, appended to the prompt's tokens
(``encode_prompt``: an over-long prompt keeps its end). With byte-level BPE the prompt's final ``"\\n"`` and the
response's opening quote are separate pre-tokens, so this equals tokenising the concatenation.
"""

from __future__ import annotations

import copy
import inspect
import math
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from goracs.models.encoding import IGNORE, collate_left, encode_lm, encode_prompt, lm_loss_per_sample


@torch.no_grad()
def response_losses(model, tokenizer, prompts: Sequence[str], responses: Sequence[str], *, batch_size: int,
                    cutoff_len: int) -> np.ndarray:
    """(N,) float64 per-sample response cross-entropy (module docstring); NaN where ``cutoff_len`` truncated the
    whole response away."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    enc = [encode_lm(tokenizer, p, r, cutoff_len=cutoff_len, train_on_inputs=False) for p, r in zip(prompts, responses)]
    device = next(model.parameters()).device
    pad = _pad_id(tokenizer)
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
    forward and its KV cache."""
    if candidate_batch_size < 1:
        raise ValueError(f"eval.candidate_batch_size={candidate_batch_size}: expected >= 1")
    device = next(model.parameters()).device
    prompt_ids = torch.tensor([encode_prompt(tokenizer, prompt, cutoff_len=cutoff_len)["input_ids"]], device=device)
    out = model(input_ids=prompt_ids, use_cache=True, logits_to_keep=1)
    cache_kw = _cache_keyword(model)
    cache, first = getattr(out, cache_kw), torch.log_softmax(out.logits[0, -1].float(), dim=-1)
    n_prompt = prompt_ids.shape[1]
    tokens = [candidate_tokens(tokenizer, r) for r in responses]
    scores = np.empty(len(tokens))
    for start in range(0, len(tokens), candidate_batch_size):
        chunk = tokens[start:start + candidate_batch_size]
        width = max(len(t) for t in chunk)
        ids = torch.full((len(chunk), width), _pad_id(tokenizer), dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.bool)
        for j, t in enumerate(chunk):
            ids[j, :len(t)] = torch.tensor(t)
            mask[j, :len(t)] = True
        ids, mask = ids.to(device), mask.to(device)
        shared = copy.deepcopy(cache)  # the forward appends to the cache: each chunk starts from the prompt's
        shared.batch_repeat_interleave(len(chunk))
        # Right padding: a pad only follows a candidate's tokens, so causal attention never lets it change them.
        attention = torch.ones((len(chunk), n_prompt + width), dtype=torch.long, device=device)
        logits = model(input_ids=ids, attention_mask=attention, use_cache=True, **{cache_kw: shared}).logits
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # position t predicts candidate token t + 1
        token_lp = torch.cat([first[ids[:, 0]].unsqueeze(1),
                              logp.gather(2, ids[:, 1:].unsqueeze(2)).squeeze(2)], dim=1)
        total = (token_lp * mask).sum(dim=1) / mask.sum(dim=1)
        scores[start:start + len(chunk)] = total.double().cpu().numpy()
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


def _cache_keyword(model) -> str:
    """``cache`` (transformers >= 5.2x) or ``past_key_values`` (earlier 5.x): the KV-cache argument and output name."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
