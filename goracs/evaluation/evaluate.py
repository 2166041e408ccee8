"""One entry for the evaluation stage: ``evaluate`` (SeqRec: BIGRec grounding; CTR: TALLRec P(Yes))."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from goracs.cache import DiskCache, config_key
from goracs.evaluation.ctr import ctr_metrics, predict_p_yes
from goracs.evaluation.grounding import (catalogue_positions, clean_text, embed_texts, generate, ground_ranks,
                                         title_groups)
from goracs.evaluation.ranking import hit_at_k, ndcg_at_k
from goracs.models.encoding import prompt_text

log = logging.getLogger(__name__)

_ROWS_PER_CHUNK = 256  # rows of the (rows x catalogue) distance matrix held at once


def evaluate(model, tokenizer, test: pd.DataFrame, items: pd.DataFrame, *, task: str, faithful: bool,
             num_beams: int, max_new_tokens: int, batch_size: int, topk: Sequence[int], cutoff_len: int,
             embed_batch_size: int = 64, device: str | None = None, cache_dir: str | Path | None = None,
             model_key: str | None = None) -> dict[str, float]:
    """Test metrics of a fine-tuned model, keys without the ``test/`` prefix.

    SeqRec: ``ndcg@K``, ``hit@K`` (sampled protocol: target + its ``negatives``), ``ndcg@K_full``, ``hit@K_full``
    (whole catalogue) for each K in ``topk``, and ``exact_match`` (share of cleaned generations equal to a catalogue
    title). Rows with several ``targets`` (DEALRec test) count the best-ranked target. CTR: ``auc`` (NaN with a
    warning when the test labels have one class), ``logloss``, ``accuracy``.
    ``device``: where to run (None = CUDA when available, else CPU); the model is moved there (unless quantised or
    device-mapped) and set to eval mode. ``cache_dir`` + ``model_key`` (a hash of the base model's spec): cache the
    catalogue's title embeddings, which depend on the base model only (the adapter is disabled), across the jobs
    of a sweep.
    """
    if len(test) == 0:
        raise ValueError("the test set is empty: nothing to evaluate")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    # 8/4-bit (bitsandbytes) or device-mapped models are already placed and refuse `.to`.
    placed = any(getattr(model, a, False) for a in ("is_loaded_in_8bit", "is_loaded_in_4bit", "hf_device_map"))
    if not placed:
        model.to(device)
    model.eval()
    t0 = time.perf_counter()
    if task == "seqrec":
        metrics = _seqrec(model, tokenizer, test, items, faithful=faithful, num_beams=num_beams,
                          max_new_tokens=max_new_tokens, batch_size=batch_size, topk=topk, cutoff_len=cutoff_len,
                          embed_batch_size=embed_batch_size,
                          title_cache=(DiskCache(cache_dir), model_key) if cache_dir and model_key else None)
    elif task == "ctr":
        prompts = [prompt_text(r, "ctr", purpose="infer", faithful=faithful) for r in test.to_dict("records")]
        p = predict_p_yes(model, tokenizer, prompts, batch_size=batch_size, cutoff_len=cutoff_len)
        metrics = ctr_metrics(test["label"].to_numpy(), p)
    else:
        raise ValueError(f"task={task!r}: expected 'seqrec' or 'ctr'")
    log.info("evaluated %d %s test samples in %.1f s: %s", len(test), task, time.perf_counter() - t0,
             ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return metrics


def _seqrec(model, tokenizer, test: pd.DataFrame, items: pd.DataFrame, *, faithful: bool, num_beams: int,
            max_new_tokens: int, batch_size: int, topk: Sequence[int], cutoff_len: int,
            embed_batch_size: int, title_cache: tuple[DiskCache, str] | None) -> dict[str, float]:
    if not topk or any(int(k) < 1 for k in topk):
        raise ValueError(f"eval.topk={list(topk)}: expected a non-empty list of cut-offs >= 1")
    rows = test.to_dict("records")
    target_cols, negative_cols = _candidate_columns(rows, items)

    prompts = [prompt_text(r, "seqrec", purpose="infer", faithful=faithful) for r in rows]
    generated = [clean_text(t) for t in generate(model, tokenizer, prompts, num_beams=num_beams,
                                                 max_new_tokens=max_new_tokens, batch_size=batch_size,
                                                 cutoff_len=cutoff_len)]
    log.info("example generations: %s", generated[:3])

    # Duplicate titles share one embedding: embed each distinct title once, then spread it over its ids.
    groups = title_groups(items["title"].astype(str).tolist())
    distinct = list(groups)
    title_emb = _title_embeddings(model, tokenizer, distinct, embed_batch_size, title_cache)
    item_emb = torch.empty(len(items), title_emb.shape[1])
    for g, title in enumerate(distinct):
        item_emb[groups[title]] = title_emb[g]
    pred_emb = embed_texts(model, tokenizer, generated, batch_size=embed_batch_size, desc="embedding generations")

    sampled, full = [], []
    for start in range(0, len(rows), _ROWS_PER_CHUNK):
        stop = start + _ROWS_PER_CHUNK
        positions = catalogue_positions(pred_emb[start:stop], item_emb)
        s, f = ground_ranks(positions, target_cols[start:stop], negative_cols[start:stop])
        sampled.append(s)
        full.append(f)
    sampled_ranks, full_ranks = np.concatenate(sampled), np.concatenate(full)

    has_negatives = np.array([len(n) > 0 for n in negative_cols])
    metrics: dict[str, float] = {}
    for k in sorted(int(k) for k in topk):
        if has_negatives.any():
            metrics[f"ndcg@{k}"] = ndcg_at_k(sampled_ranks[has_negatives], k)
            metrics[f"hit@{k}"] = hit_at_k(sampled_ranks[has_negatives], k)
        else:
            metrics[f"ndcg@{k}"] = metrics[f"hit@{k}"] = math.nan
    if not has_negatives.all():
        log.warning("%d of %d test rows have no negatives: sampled metrics use the other rows (NaN if none)",
                    int((~has_negatives).sum()), len(rows))
    for k in sorted(int(k) for k in topk):
        metrics[f"ndcg@{k}_full"] = ndcg_at_k(full_ranks, k)
        metrics[f"hit@{k}_full"] = hit_at_k(full_ranks, k)
    metrics["exact_match"] = float(np.mean([g in groups for g in generated]))
    return metrics


def _title_embeddings(model, tokenizer, titles: list[str], batch_size: int,
                      cache: tuple[DiskCache, str] | None) -> torch.Tensor:
    """Base-model embeddings of the distinct catalogue titles, read from / written to the cache when given."""
    if cache is None:
        return embed_texts(model, tokenizer, titles, batch_size=batch_size, desc="embedding titles")
    disk, model_key = cache
    digest = hashlib.sha256("\n".join(titles).encode("utf-8")).hexdigest()
    # The vocabulary joins the key: a tokenizer trained on the data (tiny_llama) changes the model with the data.
    vocab = hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode("utf-8")).hexdigest()
    key = config_key({"model": model_key, "vocab": vocab, "titles": digest})
    hit = disk.lookup("item_embeddings", key, "npy")
    if hit is not None:
        log.info("title embeddings read from %s", hit)
        return torch.from_numpy(np.load(hit, allow_pickle=False))
    emb = embed_texts(model, tokenizer, titles, batch_size=batch_size, desc="embedding titles")

    def write(p: Path) -> None:
        with open(p, "wb") as f:
            np.save(f, emb.float().cpu().numpy(), allow_pickle=False)

    disk.store("item_embeddings", key, "npy", write, spec={"model": model_key, "titles": digest, "n": len(titles)})
    return emb


def _candidate_columns(rows: list[dict], items: pd.DataFrame) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Catalogue columns of each row's targets (with their duplicate-title ids) and of its negatives."""
    if not {"item", "title"} <= set(items.columns):
        raise ValueError(f"items table needs the columns 'item' and 'title', has {list(items.columns)}")
    column = {str(i): j for j, i in enumerate(items["item"].astype(str))}
    groups = title_groups(items["title"].astype(str).tolist())
    titles = [clean_text(t) for t in items["title"].astype(str)]

    def col(item_id, r: int, what: str) -> int:
        try:
            return column[str(item_id)]
        except KeyError:
            raise ValueError(f"test row {r}: {what} item id {item_id!r} is not in the items table") from None

    target_cols, negative_cols = [], []
    for r, row in enumerate(rows):
        targets = list(row.get("targets") if row.get("targets") is not None else []) or [row["item"]]
        cols = {c for t in targets for c in groups[titles[col(t, r, 'target')]]}
        target_cols.append(np.fromiter(sorted(cols), dtype=np.int64))
        negatives = row.get("negatives")
        negatives = [] if negatives is None else list(negatives)
        negative_cols.append(np.asarray([col(n, r, "negative") for n in negatives], dtype=np.int64))
    return target_cols, negative_cols
