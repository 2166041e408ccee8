"""One entry for the evaluation stage: ``evaluate`` (test loss; SeqRec: BIGRec grounding and/or likelihood ranking;
CTR: TALLRec P(Yes)), returning metrics and per-sample records. What a task adds to the records and the metrics it
computes from them are the task's (:meth:`goracs.task_protocol.Task.test_records`,
:meth:`goracs.task_protocol.Task.metrics`); the SeqRec records are built here (:func:`seqrec_records`) from the prompts
the task gives, the CTR ones in :mod:`goracs.evaluation.ctr`."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from goracs.cache import DiskCache, config_key
from goracs.data.instructions import seqrec_response
from goracs.errors import ConfigError
from goracs.evaluation.grounding import (catalogue_positions, clean_text, embed_texts, generate, ground_ranks,
                                         title_groups)
from goracs.evaluation.likelihood import candidate_scores, likelihood_rank, response_losses
from goracs.task_protocol import Task

log = logging.getLogger(__name__)

_ROWS_PER_CHUNK = 256  # rows of the (rows x catalogue) distance matrix held at once


RANKINGS = ("grounding", "likelihood", "both", "none")


@dataclass(frozen=True)
class Evaluation:
    """What the evaluation stage returns: ``metrics`` (keys without the ``test/`` prefix) and ``records``, one row per
    test sample (schema in :mod:`goracs.evaluation.records`; written as ``test_outputs.parquet``)."""

    metrics: dict[str, float]
    records: pd.DataFrame


def check_eval_options(options: dict) -> None:
    """The ``eval`` node's values (its keys and types are checked against :func:`evaluate`'s signature by
    :func:`goracs.config.build`): ``goracs-run`` calls this before any stage, so that a typo in an evaluation option
    fails before features, selection and fine-tuning have run. A :class:`~goracs.errors.ConfigError` names the key."""
    def count(key: str, least: int = 1) -> None:
        value = options.get(key)
        if key in options and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            raise ConfigError(f"eval.{key}={value!r}: expected an integer >= {least}")

    for key in ("num_beams", "max_new_tokens", "batch_size", "embed_batch_size", "candidate_batch_size", "cutoff_len"):
        count(key)
    ranking = options.get("ranking", "grounding")
    if ranking not in RANKINGS:
        raise ConfigError(f"eval.ranking={ranking!r}: expected one of {list(RANKINGS)}")
    if options.get("ranking_rows") is not None:
        count("ranking_rows")
    topk = options.get("topk")
    if "topk" in options and (not isinstance(topk, (list, tuple)) or not topk
                              or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in topk)):
        raise ConfigError(f"eval.topk={topk!r}: expected a non-empty list of cut-offs >= 1, e.g. [5, 10]")
    device = options.get("device")
    if device is not None and not (device in ("cpu", "cuda") or str(device).startswith("cuda:")):
        raise ConfigError(f"eval.device={device!r}: expected null (CUDA when available, else CPU), cpu, cuda or "
                          "cuda:<index>")


def evaluate(model, tokenizer, test: pd.DataFrame, items: pd.DataFrame, *, task: Task, faithful: bool,
             num_beams: int, max_new_tokens: int, batch_size: int, topk: Sequence[int], cutoff_len: int,
             embed_batch_size: int = 64, ranking: str = "grounding", ranking_rows: int | None = None,
             candidate_batch_size: int = 32, device: str | None = None, cache_dir: str | Path | None = None,
             model_key: str | None = None) -> Evaluation:
    """Test metrics and per-sample records of a fine-tuned model.

    Every task: ``loss``, the mean per-sample test loss (SeqRec: response cross-entropy given the training prompt,
    :func:`goracs.evaluation.likelihood.response_losses`; CTR: two-way logloss), on every test row.
    SeqRec ranking (``ranking``): ``grounding`` (BIGRec, the official protocol) gives ``ndcg@K``, ``hit@K``
    (sampled: target + its ``negatives``), ``ndcg@K_full``, ``hit@K_full`` (whole catalogue) and ``exact_match``;
    ``likelihood`` gives ``ndcg@K_ll``, ``hit@K_ll`` (target and negatives ranked by the model's mean
    log-probability of each candidate's response); ``both`` gives both; ``none`` gives only ``loss`` (no
    generation, no candidate scoring: the cheap setting of a study whose verdict is the test loss).
    ``ranking_rows``: rank only that many test rows (a fixed subset, the same for every job: the first rows of a
    ``default_rng(0)`` permutation of the test positions); null = all. Rows with several ``targets`` (DEALRec test) count the best-ranked target. CTR: ``auc``
    (NaN with a warning when the test labels have one class), ``logloss``, ``accuracy``.
    ``device``: where to run (None = CUDA when available, else CPU); the model is moved there (unless quantised or
    device-mapped) and set to eval mode. ``cache_dir`` + ``model_key`` (a hash of the base model's spec): cache the
    catalogue's title embeddings, which depend on the base model only (the adapter is disabled), across the jobs
    of a sweep.
    """
    if len(test) == 0:
        raise ValueError("the test set is empty: nothing to evaluate")
    if ranking not in RANKINGS:
        raise ValueError(f"eval.ranking={ranking!r}: expected one of {list(RANKINGS)}")
    if ranking_rows is not None and (isinstance(ranking_rows, bool) or int(ranking_rows) < 1):
        raise ValueError(f"eval.ranking_rows={ranking_rows!r}: expected a positive number of test rows or null (all)")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    # 8/4-bit (bitsandbytes) or device-mapped models are already placed and refuse `.to`.
    placed = any(getattr(model, a, False) for a in ("is_loaded_in_8bit", "is_loaded_in_4bit", "hf_device_map"))
    if not placed:
        model.to(device)
    model.eval()
    t0 = time.perf_counter()
    rows = test.to_dict("records")
    records = pd.DataFrame({"row": np.arange(len(rows), dtype=np.int64), "user": test["user"].astype(str).to_numpy(),
                            "item": test["item"].astype(str).to_numpy(),
                            "targets": [[str(t) for t in _targets(r)] for r in rows]})
    records = task.test_records(model, tokenizer, test, items, records, faithful=faithful, options=dict(
        num_beams=num_beams, max_new_tokens=max_new_tokens, batch_size=batch_size, topk=topk, cutoff_len=cutoff_len,
        embed_batch_size=embed_batch_size, ranking=ranking, ranking_rows=ranking_rows,
        candidate_batch_size=candidate_batch_size, cache_dir=cache_dir, model_key=model_key))
    metrics = task.metrics(records, topk)
    log.info("evaluated %d %s test samples in %.1f s: %s", len(test), task.name, time.perf_counter() - t0,
             ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return Evaluation(metrics, records)


def _targets(row: dict) -> list:
    targets = row.get("targets")
    return list(targets) if targets is not None and len(targets) else [row["item"]]


def seqrec_records(model, tokenizer, test: pd.DataFrame, items: pd.DataFrame, records: pd.DataFrame, *,
                   train_prompts: Sequence[str], infer_prompts: Sequence[str], num_beams: int, max_new_tokens: int,
                   batch_size: int, topk: Sequence[int], cutoff_len: int, embed_batch_size: int = 64,
                   ranking: str = "grounding", ranking_rows: int | None = None, candidate_batch_size: int = 32,
                   cache_dir: str | Path | None = None, model_key: str | None = None) -> pd.DataFrame:
    """SeqRec test records (:meth:`goracs.tasks.SeqRecTask.test_records`): ``records`` with the SeqRec columns added
    (``loss``; ``generated``, ``exact``, ``rank``, ``rank_full`` for grounding; ``rank_ll`` for likelihood).
    ``train_prompts`` / ``infer_prompts``: each test row's prompt with the training / inference header (the loss is
    scored after the first, generation and ranking start from the second). The options are those of
    :func:`evaluate`."""
    if not topk or any(int(k) < 1 for k in topk):
        raise ValueError(f"eval.topk={list(topk)}: expected a non-empty list of cut-offs >= 1")
    rows = test.to_dict("records")
    if not len(train_prompts) == len(infer_prompts) == len(rows):
        raise ValueError(f"{len(rows)} test rows but {len(train_prompts)} training and {len(infer_prompts)} "
                         "inference prompts")
    records["loss"] = response_losses(model, tokenizer, train_prompts, [r["output"] for r in rows],
                                      batch_size=batch_size, cutoff_len=cutoff_len)
    ranked = ranked_rows(len(rows), ranking_rows)
    candidates = _candidate_columns(rows, items)
    prompts = [infer_prompts[i] for i in ranked]
    if ranking in ("grounding", "both"):
        _ground(records, model, tokenizer, prompts, items, candidates, ranked, num_beams=num_beams,
                max_new_tokens=max_new_tokens, batch_size=batch_size, cutoff_len=cutoff_len,
                embed_batch_size=embed_batch_size,
                title_cache=(DiskCache(cache_dir), model_key) if cache_dir and model_key else None)
    if ranking in ("likelihood", "both"):
        _likelihood_ranks(records, model, tokenizer, prompts, items, candidates, ranked, cutoff_len=cutoff_len,
                          candidate_batch_size=candidate_batch_size)
    return records


def ranked_rows(n: int, limit: int | None) -> np.ndarray:
    """Sorted test positions that get ranking metrics: all of them, or the first ``limit`` of a ``default_rng(0)``
    permutation (a fixed subset for a given test size, so every method and seed ranks the same rows)."""
    if limit is None or int(limit) >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).permutation(n)[:int(limit)])


def _ground(records: pd.DataFrame, model, tokenizer, prompts: list[str], items: pd.DataFrame,
            candidates: tuple[list[np.ndarray], list[np.ndarray]], ranked: np.ndarray, *, num_beams: int,
            max_new_tokens: int, batch_size: int, cutoff_len: int, embed_batch_size: int,
            title_cache: tuple[DiskCache, str] | None) -> None:
    """BIGRec grounding on the ``ranked`` rows (``prompts``: their inference prompts): adds ``generated``, ``exact``,
    ``rank``, ``rank_full``."""
    target_cols, negative_cols = candidates
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
    for start in range(0, len(ranked), _ROWS_PER_CHUNK):
        chunk = ranked[start:start + _ROWS_PER_CHUNK]
        positions = catalogue_positions(pred_emb[start:start + _ROWS_PER_CHUNK], item_emb)
        s, f = ground_ranks(positions, [target_cols[i] for i in chunk], [negative_cols[i] for i in chunk])
        sampled.append(s)
        full.append(f)
    has_negatives = np.array([len(negative_cols[i]) > 0 for i in ranked], dtype=bool)
    if not has_negatives.all():
        log.warning("%d of %d ranked test rows have no negatives: sampled metrics use the other rows",
                    int((~has_negatives).sum()), len(ranked))
    sampled_ranks = pd.array(np.concatenate(sampled), dtype="Int64")
    sampled_ranks[~has_negatives] = pd.NA  # no candidates to rank against: not a rank of 0
    records["generated"] = pd.Series([None] * len(records), dtype="object")
    records.loc[ranked, "generated"] = generated
    records["exact"] = pd.array([pd.NA] * len(records), dtype="boolean")
    records.loc[ranked, "exact"] = [g in groups for g in generated]
    records["rank"] = _nullable(len(records), ranked, sampled_ranks)
    records["rank_full"] = _nullable(len(records), ranked, np.concatenate(full))


def _likelihood_ranks(records: pd.DataFrame, model, tokenizer, prompts: list[str], items: pd.DataFrame,
                      candidates: tuple[list[np.ndarray], list[np.ndarray]], ranked: np.ndarray, *,
                      cutoff_len: int, candidate_batch_size: int) -> None:
    """Likelihood ranking on the ``ranked`` rows (``prompts``: their inference prompts): adds ``rank_ll`` (null on
    rows without negatives)."""
    target_cols, negative_cols = candidates
    raw = items["title"].astype(str).tolist()
    clean = [clean_text(t) for t in raw]
    ranks = []
    for i, prompt in zip(tqdm(ranked, desc="likelihood ranking", unit="row", leave=False), prompts):
        # target_cols holds every id that carries a target's title, so these negatives never share one.
        own = set(target_cols[i])
        negatives = [c for c in negative_cols[i] if c not in own]
        if not negatives:
            ranks.append(pd.NA)
            continue
        # One score per distinct cleaned title (duplicates of a title are the same response), first raw spelling.
        responses: dict[str, str] = {}
        for c in [*target_cols[i], *negatives]:
            responses.setdefault(clean[c], seqrec_response(raw[c]))
        values = candidate_scores(model, tokenizer, prompt, list(responses.values()), cutoff_len=cutoff_len,
                                  candidate_batch_size=candidate_batch_size)
        score = dict(zip(responses, values))
        ranks.append(likelihood_rank([score[clean[c]] for c in target_cols[i]],
                                     [score[clean[c]] for c in negatives]))
    records["rank_ll"] = _nullable(len(records), ranked, pd.array(ranks, dtype="Int64"))


def _nullable(n: int, at: np.ndarray, values) -> pd.arrays.IntegerArray:
    out = pd.array([pd.NA] * n, dtype="Int64")
    out[np.asarray(at, dtype=np.int64)] = pd.array(values, dtype="Int64")
    return out


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
    with disk.claim("item_embeddings", key, "npy") as hit:  # parallel jobs embed the catalogue once
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
        cols = {c for t in _targets(row) for c in groups[titles[col(t, r, 'target')]]}
        target_cols.append(np.fromiter(sorted(cols), dtype=np.int64))
        negatives = row.get("negatives")
        negatives = [] if negatives is None else list(negatives)
        negative_cols.append(np.asarray([col(n, r, "negative") for n in negatives], dtype=np.int64))
    return target_cols, negative_cols
