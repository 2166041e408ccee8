"""Benchmark: likelihood ranking of candidates on a shared prompt KV cache vs one full forward per candidate.

For ``--rows`` ML-100K SeqRec test rows (target + 99 negatives each, the demo's data slice), both in this process, on
the same model, prompts and candidate token sequences:

* **cached** (what ``eval.ranking=likelihood`` runs, :func:`goracs.evaluation.likelihood.candidate_scores`): one
  forward of the prompt, then the candidates in batches of ``--candidate-batch-size`` on copies of its KV cache;
* **brute force**: one full forward of ``prompt + candidate`` per candidate, the same candidates batched (left
  padding) in batches of the same size, the score read at the candidate's positions.

Prints candidates per second of each, their ratio, and the largest |score difference| and rank agreement between
them. A third figure is the floor of the cached path: one plain forward of the same candidate tokens as a batch
(without the prompt), the cost the candidates' own tokens impose whatever the caching.

    python experiments/bench_eval.py --rows 5                       # SmolLM2-135M (converted copy in outputs/cache)
    python experiments/bench_eval.py --rows 5 --model tiny_llama    # random tiny Llama (seconds)
    python experiments/bench_eval.py --rows 2 --override model.backbone.dtype=float32   # fp32 SmolLM2
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from bench_common import add_common_args, load_model, load_samples, setup, sync
from goracs.data.instructions import seqrec_response
from goracs.evaluation.likelihood import candidate_scores, candidate_tokens
from goracs.models.encoding import collate_left, encode_prompt, pad_id
from goracs.tasks import SeqRecTask

log = logging.getLogger("bench_eval")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=5, help="test rows scored (100 candidates each)")
    p.add_argument("--candidate-batch-size", type=int, default=32)
    add_common_args(p)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg, device = setup(args)
    samples = load_samples(cfg)
    model, tok = load_model(cfg, samples, device)
    title = dict(zip(samples.items["item"].astype(str), samples.items["title"].astype(str)))
    rows = samples.test.to_dict("records")[:args.rows]

    cached_s = brute_s = floor_s = 0.0
    n_candidates, max_diff, same_order = 0, 0.0, 0
    for row in rows:
        prompt = SeqRecTask().prompt(row, purpose="infer")
        responses = [seqrec_response(title[str(i)]) for i in [row["item"], *row["negatives"]]]
        sync(device)
        t0 = time.perf_counter()
        fast = candidate_scores(model, tok, prompt, responses, cutoff_len=512,
                                candidate_batch_size=args.candidate_batch_size)
        sync(device)
        t1 = time.perf_counter()
        slow = brute_force(model, tok, prompt, responses, args.candidate_batch_size)
        sync(device)
        t2 = time.perf_counter()
        candidates_only(model, tok, responses, args.candidate_batch_size)
        sync(device)
        t3 = time.perf_counter()
        cached_s, brute_s, floor_s = cached_s + t1 - t0, brute_s + t2 - t1, floor_s + t3 - t2
        n_candidates += len(responses)
        max_diff = max(max_diff, float(np.max(np.abs(fast - slow))))
        same_order += int(np.array_equal(np.argsort(-fast, kind="stable"), np.argsort(-slow, kind="stable")))
    result = {
        "model": args.model, "overrides": args.override, "dtype": str(next(model.parameters()).dtype), "device": device, "threads": torch.get_num_threads(), "rows": len(rows),
        "candidates": n_candidates, "candidate_batch_size": args.candidate_batch_size,
        "cached_cand_per_s": n_candidates / cached_s, "brute_cand_per_s": n_candidates / brute_s,
        "speedup": brute_s / cached_s, "candidate_tokens_floor_cand_per_s": n_candidates / floor_s,
        "cached_vs_floor": floor_s / cached_s, "max_abs_score_diff": max_diff,
        "rows_with_identical_order": same_order,
    }
    print(json.dumps(result, indent=2))
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")


@torch.no_grad()
def brute_force(model, tok, prompt: str, responses: list[str], batch_size: int) -> np.ndarray:
    """Mean log-prob of each response from full forwards of ``prompt + response`` (left-padded batches)."""
    device = next(model.parameters()).device
    prompt_ids = encode_prompt(tok, prompt, cutoff_len=512)["input_ids"]
    pad = pad_id(tok)
    scores = []
    for start in range(0, len(responses), batch_size):
        cands = [candidate_tokens(tok, r) for r in responses[start:start + batch_size]]
        enc = [{"input_ids": prompt_ids + c, "attention_mask": [1] * (len(prompt_ids) + len(c))} for c in cands]
        batch = {k: v.to(device) for k, v in collate_left(enc, pad).items()}
        logp = torch.log_softmax(model(**batch).logits.float(), dim=-1)
        width = batch["input_ids"].shape[1]
        for j, c in enumerate(cands):
            pos = torch.arange(width - len(c) - 1, width - 1, device=device)  # positions predicting c's tokens
            scores.append(float(logp[j, pos, torch.tensor(c, device=device)].mean()))
    return np.asarray(scores)


@torch.no_grad()
def candidates_only(model, tok, responses: list[str], batch_size: int) -> None:
    """The floor: a plain forward of the candidates' own tokens, batched, no prompt and no scoring."""
    device = next(model.parameters()).device
    pad = pad_id(tok)
    for start in range(0, len(responses), batch_size):
        enc = [{"input_ids": (c := candidate_tokens(tok, r)), "attention_mask": [1] * len(c)}
               for r in responses[start:start + batch_size]]
        batch = {k: v.to(device) for k, v in collate_left(enc, pad).items()}
        model(**batch)


if __name__ == "__main__":
    main()
