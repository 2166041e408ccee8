"""BIGRec bi-step grounding: generate a title with the fine-tuned LoRA, then ground it in the catalogue.

1. Beam search with the adapter on; keep the first (best) beam's text after the prompt, whitespace and quotes
   stripped (``clean_text``).
2. Embed the generated texts and every item title with the *base* model (adapter disabled): the last layer's
   hidden state at the last token, left padding (``embed_texts``).
3. L2 distance between each generated text and each item id; ``positions[r, j]`` = place of item ``j`` in row ``r``'s
   ascending-distance order (0 = nearest; ties by catalogue order).
4. Ranks (``ground_ranks``), 0-based: the target's ids are all ids whose title equals a target's title (duplicate
   titles: the official code takes the minimum rank over ids); ``best`` = min over them of ``positions``.
   Full-catalogue rank = ``best``. Sampled rank (target + 99 negatives) = number of negative ids, other than the
   target's own ids, placed before ``best``. Several targets (DEALRec test rows): the best-ranked one counts.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from goracs.models.encoding import collate_left, encode_prompt, pad_id
from goracs.models.kv_cache import cache_keyword
from goracs.models.lm_head import final_hidden_states

log = logging.getLogger(__name__)


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], *, num_beams: int, max_new_tokens: int, batch_size: int,
             cutoff_len: int) -> list[str]:
    """Best-beam continuation of each prompt (decoded, special tokens dropped, not yet cleaned)."""
    if num_beams < 1 or max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"num_beams={num_beams}, max_new_tokens={max_new_tokens}, batch_size={batch_size}: "
                         "each must be >= 1")
    device = next(model.parameters()).device
    pad = pad_id(tokenizer)
    texts: list[str] = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="generating", unit="batch", leave=False):
        enc = [encode_prompt(tokenizer, p, cutoff_len=cutoff_len) for p in prompts[start:start + batch_size]]
        batch = {k: v.to(device) for k, v in collate_left(enc, pad).items()}
        extra = _shared_prefill(model, batch, num_beams) if num_beams > 1 else {}
        out = model.generate(**batch, **extra, num_beams=num_beams, num_return_sequences=1, do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
        # Left padding: every prompt ends at the same column, so the continuation starts there.
        new = out[:, batch["input_ids"].shape[1]:]
        texts.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    return texts


def _shared_prefill(model, batch: dict[str, torch.Tensor], num_beams: int) -> dict:
    """A KV cache of every prompt token but the last, computed once per prompt and repeated per beam.

    Beam search otherwise copies each prompt ``num_beams`` times before its first forward, so the prompt (most of
    the tokens) would be processed once per beam. Positions are the ones ``generate`` derives from the attention
    mask (``cumsum − 1``, 0 on padding), so the continuation sees exactly what a plain ``generate`` computes;
    ``generate`` then runs the last prompt token itself and goes on from the cache.
    """
    ids, mask = batch["input_ids"], batch["attention_mask"]
    if ids.shape[1] < 2:
        return {}
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    keyword = cache_keyword(model)
    out = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1], use_cache=True,
                logits_to_keep=1)
    cache = getattr(out, keyword)
    cache.batch_repeat_interleave(num_beams)
    return {keyword: cache}


def clean_text(text: str) -> str:
    """Strip surrounding whitespace, then the quotes BIGRec puts around titles, then whitespace again."""
    return text.strip().strip('"').strip()


@torch.no_grad()
def embed_texts(model, tokenizer, texts: Sequence[str], *, batch_size: int, desc: str = "embedding") -> torch.Tensor:
    """(N, H) float32 CPU tensor: the base model's last-layer hidden state at each text's last token.

    Texts are batched in order of length (results come back in input order), so batches carry little padding.

    The LoRA adapter is switched off (``disable_adapter``) when ``model`` has one: grounding uses the base model.
    """
    device = next(model.parameters()).device
    pad = pad_id(tokenizer)
    if not texts:
        return torch.empty(0, model.config.hidden_size)
    # One tokenizer call for all texts; an empty text still gets a token.
    ids = [t or [pad] for t in tokenizer(list(texts), add_special_tokens=True)["input_ids"]]
    order = np.argsort([len(t) for t in ids], kind="stable")  # similar lengths share a batch: little padding
    out_rows = torch.empty(len(ids), model.config.hidden_size)
    no_adapter = model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
    with no_adapter:
        for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False):
            idx = order[start:start + batch_size]
            enc = [{"input_ids": ids[i], "attention_mask": [1] * len(ids[i])} for i in idx]
            batch = {k: v.to(device) for k, v in collate_left(enc, pad).items()}
            hidden = final_hidden_states(model, **batch)
            out_rows[torch.from_numpy(idx)] = hidden[:, -1, :].float().cpu()
    return out_rows


def catalogue_positions(pred: torch.Tensor, items: torch.Tensor) -> np.ndarray:
    """(N, I) int64: position of item ``j`` in row ``r``'s order of ascending L2 distance ``‖pred_r - items_j‖``."""
    dist = torch.cdist(pred.float(), items.float(), p=2)
    order = torch.argsort(dist, dim=1, stable=True)
    positions = torch.empty_like(order)
    positions.scatter_(1, order, torch.arange(items.shape[0]).expand_as(order).contiguous())
    return positions.numpy()


def ground_ranks(positions: np.ndarray, target_cols: Sequence[np.ndarray],
                 negative_cols: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(sampled ranks, full-catalogue ranks), 0-based, one per row (definitions in the module docstring).

    ``target_cols[r]``: catalogue columns of row ``r``'s target ids, duplicates of their titles included;
    ``negative_cols[r]``: columns of its negatives (may be empty: the sampled rank is then 0).
    """
    sampled = np.empty(len(positions), dtype=np.int64)
    full = np.empty(len(positions), dtype=np.int64)
    for r, (targets, negatives) in enumerate(zip(target_cols, negative_cols)):
        best = positions[r, targets].min()
        negatives = np.setdiff1d(negatives, targets)  # a negative that shares the target's title is the target
        full[r] = best
        sampled[r] = int(np.sum(positions[r, negatives] < best))
    return sampled, full


def title_groups(titles: Sequence[str]) -> dict[str, np.ndarray]:
    """Cleaned title -> catalogue columns carrying it (several when titles repeat)."""
    groups: dict[str, list[int]] = {}
    for j, t in enumerate(titles):
        groups.setdefault(clean_text(t), []).append(j)
    return {t: np.asarray(cols, dtype=np.int64) for t, cols in groups.items()}
