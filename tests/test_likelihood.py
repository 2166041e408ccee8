"""Test loss and likelihood ranking against brute force (one full forward per candidate / per sample) on a tiny Llama,
and the per-sample records against hand-computed metrics."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from goracs.data.instructions import seqrec_response
from goracs.evaluation.evaluate import evaluate, ranked_rows
from goracs.evaluation.likelihood import candidate_scores, candidate_tokens, likelihood_rank, response_losses
from goracs.evaluation.records import metrics_from_records, ndcg_gain
from goracs.models.encoding import encode_prompt, prompt_text
from test_metrics import TITLES, _set_lora_b, _test_frame, _texts, _tiny_peft


def _brute_force_score(model, tok, prompt: str, response: str, cutoff_len: int) -> float:
    """Mean log-prob of the response tokens from ONE full forward of prompt + response (no cache)."""
    prompt_ids = encode_prompt(tok, prompt, cutoff_len=cutoff_len)["input_ids"]
    cand = candidate_tokens(tok, response)
    ids = torch.tensor([prompt_ids + cand])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    n = len(prompt_ids)
    return float(np.mean([logp[n - 1 + t, tok_id].item() for t, tok_id in enumerate(cand)]))


@pytest.fixture(scope="module")
def tiny():
    test, items = _test_frame("seqrec")
    model, tok = _tiny_peft(_texts(test, "seqrec"))
    _set_lora_b(model, 0.5)  # a non-trivial adapter: the cached path must run it too
    return model, tok, test, items


@pytest.mark.parametrize("chunk", [1, 3, 32])
def test_kv_cache_scores_equal_one_forward_per_candidate(tiny, chunk):
    model, tok, test, _ = tiny
    responses = [seqrec_response(t) for t in TITLES]
    for row in test.to_dict("records")[:3]:
        prompt = prompt_text(row, "seqrec", purpose="infer")
        fast = candidate_scores(model, tok, prompt, responses, cutoff_len=256, candidate_batch_size=chunk)
        slow = np.array([_brute_force_score(model, tok, prompt, r, 256) for r in responses])
        assert np.max(np.abs(fast - slow)) < 1e-4
        assert np.array_equal(np.argsort(-fast, kind="stable"), np.argsort(-slow, kind="stable"))


def test_likelihood_ranks_equal_brute_force_through_evaluate(tiny):
    model, tok, test, items = tiny
    result = evaluate(model, tok, test, items, task="seqrec", faithful=True, num_beams=1, max_new_tokens=1,
                      batch_size=4, topk=[1, 3], cutoff_len=256, ranking="likelihood", device="cpu")
    title = dict(zip(items["item"], items["title"]))
    for row, got in zip(test.to_dict("records"), result.records["rank_ll"]):
        prompt = prompt_text(row, "seqrec", purpose="infer")
        target = _brute_force_score(model, tok, prompt, seqrec_response(title[row["item"]]), 256)
        negatives = [_brute_force_score(model, tok, prompt, seqrec_response(title[n]), 256) for n in row["negatives"]]
        assert got == sum(s > target for s in negatives)
    ranks = result.records["rank_ll"].to_numpy(dtype=float)
    assert result.metrics["hit@3_ll"] == pytest.approx(np.mean(ranks < 3))
    assert result.metrics["ndcg@3_ll"] == pytest.approx(np.mean(ndcg_gain(ranks, 3)))
    assert "ndcg@3" not in result.metrics and "generated" not in result.records  # no grounding was asked for


def test_response_loss_equals_per_sample_forward_and_keeps_row_order(tiny):
    model, tok, test, _ = tiny
    rows = test.to_dict("records")
    prompts = [prompt_text(r, "seqrec") for r in rows]
    responses = [r["output"] for r in rows]
    prompts[2] = prompts[2] * 2  # unequal lengths: batches are sorted by length, results must come back in order
    got = response_losses(model, tok, prompts, responses, batch_size=4, cutoff_len=512)
    for p, r, value in zip(prompts, responses, got):
        want = -_brute_force_score(model, tok, p, r, 512)  # response tokens (title + EOS) given the prompt
        assert value == pytest.approx(want, abs=1e-4)
    # a response cut away by cutoff_len has no loss (NaN), not 0
    short = response_losses(model, tok, prompts[:1], responses[:1], batch_size=1, cutoff_len=8)
    assert math.isnan(short[0])


def test_likelihood_rank_is_strictly_greater_count():
    assert likelihood_rank([0.5], [0.1, 0.7, 0.5, 0.9]) == 2     # ties do not count against the target
    assert likelihood_rank([0.2, 0.8], [0.1, 0.7, 0.9]) == 1     # several targets: the best one counts
    assert likelihood_rank([0.0], []) == 0


def test_both_rankings_write_one_record_per_row_and_subset_is_fixed(tiny):
    model, tok, test, items = tiny
    result = evaluate(model, tok, test, items, task="seqrec", faithful=True, num_beams=1, max_new_tokens=2,
                      batch_size=4, topk=[5], cutoff_len=256, ranking="both", ranking_rows=4, device="cpu")
    rec = result.records
    assert len(rec) == len(test) and list(rec["row"]) == list(range(len(test)))
    assert list(rec["user"]) == list(test["user"]) and list(rec["item"]) == list(test["item"])
    ranked = ranked_rows(len(test), 4)
    assert len(ranked) == 4 and np.array_equal(ranked, ranked_rows(len(test), 4))  # the same subset every time
    for column in ("rank", "rank_full", "rank_ll", "generated", "exact"):
        present = rec[column].notna().to_numpy()
        assert np.array_equal(np.flatnonzero(present), ranked), column
    assert rec["loss"].notna().all()  # the test loss covers every row
    assert result.metrics == pytest.approx(metrics_from_records(rec, "seqrec", [5]), nan_ok=True)
    assert {"loss", "ndcg@5", "hit@5_full", "ndcg@5_ll", "exact_match"} <= set(result.metrics)


def test_ranking_none_gives_the_test_loss_only(tiny):
    model, tok, test, items = tiny
    result = evaluate(model, tok, test, items, task="seqrec", faithful=True, num_beams=1, max_new_tokens=2,
                      batch_size=4, topk=[5], cutoff_len=256, ranking="none", device="cpu")
    rec = result.records
    assert rec["loss"].notna().all() and len(rec) == len(test)
    assert not {"rank", "rank_full", "rank_ll", "generated"} & set(rec.columns)  # nothing generated or ranked
    assert set(result.metrics) == {"loss"}
    assert result.metrics["loss"] == pytest.approx(float(rec["loss"].mean()))
    both = evaluate(model, tok, test, items, task="seqrec", faithful=True, num_beams=1, max_new_tokens=2,
                    batch_size=4, topk=[5], cutoff_len=256, ranking="both", ranking_rows=2, device="cpu")
    assert np.allclose(both.records["loss"], rec["loss"])  # the same per-row loss as with any ranking


def test_unknown_ranking_is_a_clear_error(tiny):
    model, tok, test, items = tiny
    with pytest.raises(ValueError, match=r"eval.ranking='beam'.*grounding"):
        evaluate(model, tok, test, items, task="seqrec", faithful=True, num_beams=1, max_new_tokens=1,
                 batch_size=4, topk=[5], cutoff_len=256, ranking="beam", device="cpu")
    with pytest.raises(ValueError, match="eval.ranking_rows=0"):
        evaluate(model, tok, test, items, task="seqrec", faithful=True, num_beams=1, max_new_tokens=1,
                 batch_size=4, topk=[5], cutoff_len=256, ranking_rows=0, device="cpu")


def test_candidate_missing_from_items_names_the_row(tiny):
    model, tok, test, items = tiny
    bad = test.copy()
    bad.at[1, "negatives"] = ["1", "4242"]
    with pytest.raises(ValueError, match="test row 1: negative item id '4242' is not in the items table"):
        evaluate(model, tok, bad, items, task="seqrec", faithful=True, num_beams=1, max_new_tokens=1,
                 batch_size=4, topk=[5], cutoff_len=256, ranking="likelihood", device="cpu")


def test_metrics_from_records_hand_computed():
    rec = pd.DataFrame({"loss": [1.0, 2.0, 3.0, np.nan], "rank": pd.array([0, 3, None, 12], dtype="Int64"),
                        "exact": pd.array([True, False, None, False], dtype="boolean")})
    m = metrics_from_records(rec, "seqrec", [1, 5])
    assert m["loss"] == pytest.approx(2.0)                                 # NaN rows are left out
    assert m["hit@1"] == pytest.approx(1 / 3) and m["hit@5"] == pytest.approx(2 / 3)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / math.log2(5)) / 3)
    assert m["exact_match"] == pytest.approx(1 / 3)
    ctr = pd.DataFrame({"label": [1, 0, 1, 0], "p_yes": [0.8, 0.3, 0.6, 0.9], "loss": [0.1, 0.2, 0.3, 0.4]})
    c = metrics_from_records(ctr, "ctr")
    assert c["auc"] == pytest.approx(2 / 4) and c["accuracy"] == pytest.approx(3 / 4)  # pairs (0.8|0.6 vs 0.3|0.9)
    assert c["loss"] == c["logloss"] == pytest.approx(0.25)


@pytest.mark.parametrize("num_beams", [2, 3])
def test_beam_search_with_the_shared_prompt_prefill_equals_plain_generate(tiny, monkeypatch, num_beams):
    """The prompt is prefilled once and its cache repeated per beam: the generations (padded batch) must be those of
    a plain ``generate`` that prefills every beam itself."""
    from goracs.evaluation import grounding

    model, tok, test, _ = tiny
    prompts = [prompt_text(r, "seqrec", purpose="infer") for r in test.to_dict("records")][:5]
    assert len({len(encode_prompt(tok, p, cutoff_len=512)["input_ids"]) for p in prompts}) > 1  # padding
    kwargs = dict(num_beams=num_beams, max_new_tokens=6, batch_size=5, cutoff_len=512)
    shared = grounding.generate(model, tok, prompts, **kwargs)
    monkeypatch.setattr(grounding, "_shared_prefill", lambda *a: {})
    assert shared == grounding.generate(model, tok, prompts, **kwargs)
