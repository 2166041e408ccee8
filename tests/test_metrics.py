"""Evaluation: ranking metrics, CTR metrics, BIGRec grounding (toy vectors and a tiny Llama)."""

from __future__ import annotations

import importlib
import logging
import math

import numpy as np
import pandas as pd
import pytest
import torch
from peft import LoraConfig
from sklearn.metrics import roc_auc_score

from conftest import CTR, SEQREC, task_named
from goracs.evaluation.ctr import ctr_records, predict_p_yes
from goracs.evaluation.evaluate import evaluate
from goracs.evaluation.grounding import catalogue_positions, clean_text, embed_texts, ground_ranks, title_groups
from goracs.evaluation.records import classification_metrics, ranking_metrics
from goracs.models.backbone import TinyLlamaBackbone
from goracs.models.encoding import answer_token_ids
from goracs.models.lora import attach_lora

evaluate_module = importlib.import_module("goracs.evaluation.evaluate")

TITLES = ["Toy Story (1995)", "GoldenEye (1995)", "Four Rooms (1995)", "Get Shorty (1995)", "Copycat (1995)",
          "Twelve Monkeys (1995)", "Babe (1995)", "Dead Man Walking (1995)", "Richard III (1995)",
          "Seven (Se7en) (1995)"]


# --- ranking -----------------------------------------------------------------------------------------------------

RANKS = np.array([0, 1, 4, 5, 9, 12])


def _ranked(ranks, topk):
    """The SeqRec metrics of records holding only sampled ranks (and a loss), as the evaluation stage computes them."""
    return ranking_metrics(pd.DataFrame({"loss": np.zeros(len(ranks)), "rank": pd.array(ranks, dtype="Int64")}), topk)


def test_ndcg_and_hit_on_hand_made_ranks():
    # gains 1/log2(rank+2): rank 0 -> 1, 1 -> 0.6309297536, 4 -> 0.3868528072, 5 -> 0.3562071871, 9 -> 0.2890648263
    m = _ranked(RANKS, [5, 10])
    assert m["ndcg@5"] == pytest.approx((1 + 0.6309297536 + 0.3868528072) / 6, abs=1e-9)
    assert m["ndcg@10"] == pytest.approx((1 + 0.6309297536 + 0.3868528072 + 0.3562071871 + 0.2890648263) / 6,
                                         abs=1e-9)
    assert m["hit@5"] == pytest.approx(3 / 6)
    assert m["hit@10"] == pytest.approx(5 / 6)
    assert _ranked([0, 0], [1])["ndcg@1"] == 1.0 and _ranked([1], [1])["hit@1"] == 0.0


def ctr_metrics(labels, p):
    """The CTR metrics as the evaluation stage computes them: per-sample records, then their averages (and AUC)."""
    return classification_metrics(ctr_records(labels, p))


# --- CTR ---------------------------------------------------------------------------------------------------------

def test_auc_matches_sklearn_and_pairwise_count():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    p = np.round(rng.random(200), 2)  # rounding creates ties
    pos, neg = p[labels == 1], p[labels == 0]
    wins = np.sum(pos[:, None] > neg[None, :]) + 0.5 * np.sum(pos[:, None] == neg[None, :])
    pairwise = wins / (len(pos) * len(neg))
    auc = ctr_metrics(labels, p)["auc"]
    assert auc == pytest.approx(roc_auc_score(labels, p), abs=1e-12)
    assert auc == pytest.approx(pairwise, abs=1e-12)


def test_logloss_and_accuracy_hand_computed():
    m = ctr_metrics(np.array([1, 0, 1, 0]), np.array([0.8, 0.3, 0.6, 0.9]))
    # -(ln 0.8 + ln 0.7 + ln 0.6 + ln 0.1) / 4 = (0.2231435513 + 0.3566749439 + 0.5108256238 + 2.302585093) / 4
    assert m["logloss"] == pytest.approx(0.8483073030, abs=1e-9)
    assert m["accuracy"] == pytest.approx(3 / 4)


def test_single_class_auc_is_nan_with_warning(caplog):
    with caplog.at_level(logging.WARNING):
        m = ctr_metrics(np.array([1, 1, 1]), np.array([0.2, 0.9, 0.5]))
    assert math.isnan(m["auc"]) and "AUC is undefined" in caplog.text
    assert math.isfinite(m["logloss"])


# --- grounding on toy vectors --------------------------------------------------------------------------------------

def test_ground_ranks_duplicate_titles_take_min_rank():
    titles = ['"A"', "B", " A ", "C", "D"]            # "A" twice (columns 0 and 2) once cleaned
    groups = title_groups(titles)
    assert list(groups["A"]) == [0, 2]
    items = torch.tensor([[2.0], [1.0], [2.0], [3.0], [0.5]])
    pred = torch.tensor([[2.0], [1.1]])
    positions = catalogue_positions(pred, items)
    # row 0: distances 0, 1, 0, 1, 1.5 -> order 0, 2, 1, 3, 4 (ties by column)
    # row 1: distances 0.9, 0.1, 0.9, 1.9, 0.6 -> order 1, 4, 0, 2, 3
    assert positions.tolist() == [[0, 2, 1, 3, 4], [2, 0, 3, 4, 1]]
    targets = [groups["A"], groups["A"]]              # target id = column 2; its duplicate column 0 counts too
    negatives = [np.array([1, 3, 4]), np.array([0, 1, 3])]  # column 0 in row 1 is the target's own title: ignored
    sampled, full = ground_ranks(positions, targets, negatives)
    assert full.tolist() == [0, 2]                    # min(position of col 0, col 2)
    assert sampled.tolist() == [0, 1]                 # row 1: only column 1 (position 0) is before position 2


def test_clean_text_strips_quotes_and_spaces():
    assert clean_text('  "Babe (1995)"\n') == "Babe (1995)"


# --- grounding and CTR scoring with a tiny Llama ---------------------------------------------------------------------

def _tiny_peft(texts):
    model, tok = TinyLlamaBackbone(seed=0).load(texts)
    model = attach_lora(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                                          task_type="CAUSAL_LM"))
    model.eval()
    return model, tok


def _set_lora_b(model, value: float | None):
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.zeros_like(p) if value is None else value * torch.randn(p.shape, generator=gen))


def test_title_embedding_ranks_its_own_title_first_and_ignores_adapter():
    model, tok = _tiny_peft(TITLES + ["Recommend a movie."])
    _set_lora_b(model, 0.5)                           # an adapter that changes the outputs
    emb = embed_texts(model, tok, TITLES, batch_size=4)
    positions = catalogue_positions(emb, emb)
    assert np.all(np.diag(positions) == 0)            # each title is nearest to itself
    # left padding: a text embedded alone equals the same text embedded in a batch of longer ones
    alone = embed_texts(model, tok, [TITLES[1]], batch_size=1)
    assert torch.allclose(alone[0], emb[1], atol=1e-4)
    # the adapter is disabled: same embeddings as with a zero LoRA (= the base model)
    _set_lora_b(model, None)
    assert torch.allclose(embed_texts(model, tok, TITLES, batch_size=4), emb, atol=1e-5)


def _test_frame(task: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    items = pd.DataFrame({"item": [str(i + 1) for i in range(len(TITLES))], "title": TITLES})
    rows = []
    for r in range(6):
        target = (r + 3) % len(TITLES)
        history = [str((target + j) % len(TITLES) + 1) for j in (1, 2)]
        rows.append({
            "user": f"u{r}", "item": str(target + 1), "rating": 4.0 if r % 2 else 2.0, "timestamp": r,
            "history": history, "history_ratings": [4.0, 4.0], "label": r % 2,
            "instruction": "Given a list of movies the user has watched before, recommend a new movie.",
            "input": "The user has watched:" + ", ".join(f'"{TITLES[int(h) - 1]}"' for h in history) + "\n ",
            "output": f'"{TITLES[target]}"' if task == "seqrec" else ("Yes" if r % 2 else "No"),
            "negatives": [i for i in items["item"] if i != str(target + 1)][:5] if task == "seqrec" else [],
            "targets": [str(target + 1)]})
    return pd.DataFrame(rows), items


def _texts(frame: pd.DataFrame, task: str) -> list[str]:
    return [task_named(task).prompt(r) + r["output"] for r in frame.to_dict("records")] + TITLES


def test_evaluate_seqrec_perfect_generation_gives_perfect_metrics(monkeypatch):
    test, items = _test_frame("seqrec")
    model, tok = _tiny_peft(_texts(test, "seqrec"))
    truth = iter([f'"{TITLES[int(t) - 1]}"' for t in test["item"]])
    # Replace beam search by the right answers: grounding must then put every target first.
    monkeypatch.setattr(evaluate_module, "generate", lambda m, t, prompts, **kw: [next(truth) for _ in prompts])
    metrics = evaluate(model, tok, test, items, task=SEQREC, faithful=True, num_beams=1, max_new_tokens=2,
                       batch_size=4, topk=[1, 5], cutoff_len=256, device="cpu").metrics
    assert set(metrics) == {"loss", "ndcg@1", "hit@1", "ndcg@5", "hit@5", "ndcg@1_full", "hit@1_full", "ndcg@5_full",
                            "hit@5_full", "exact_match"}
    assert all(v == pytest.approx(1.0) for k, v in metrics.items() if k != "loss")
    assert metrics["loss"] > 0


def test_evaluate_seqrec_with_generation_returns_bounded_metrics():
    test, items = _test_frame("seqrec")
    model, tok = _tiny_peft(_texts(test, "seqrec"))
    metrics = evaluate(model, tok, test.iloc[:3], items, task=SEQREC, faithful=True, num_beams=2, max_new_tokens=3,
                       batch_size=3, topk=[5, 10], cutoff_len=256, device="cpu").metrics
    assert {"ndcg@5", "hit@10", "ndcg@10_full", "hit@10_full", "exact_match"} <= set(metrics)
    assert all(0.0 <= v <= 1.0 for k, v in metrics.items() if k != "loss")
    assert metrics["hit@10"] == 1.0                   # 1 target + 5 negatives: always within the top 10


def test_evaluate_seqrec_unknown_target_is_a_clear_error():
    test, items = _test_frame("seqrec")
    model, tok = _tiny_peft(_texts(test, "seqrec"))
    test.at[0, "targets"] = ["999"]
    with pytest.raises(ValueError, match="'999' is not in the items table"):
        evaluate(model, tok, test, items, task=SEQREC, faithful=True, num_beams=1, max_new_tokens=1,
                 batch_size=2, topk=[5], cutoff_len=64, device="cpu")


def test_ctr_p_yes_batched_equals_unpadded_forward():
    test, items = _test_frame("ctr")
    model, tok = _tiny_peft(_texts(test, "ctr"))
    _set_lora_b(model, 0.5)
    prompts = [CTR.prompt(r) for r in test.to_dict("records")]
    p = predict_p_yes(model, tok, prompts, batch_size=4, cutoff_len=512)
    yes, no = answer_token_ids(tok)
    with torch.no_grad():
        for prompt, got in zip(prompts, p):
            ids = torch.tensor([tok(prompt)["input_ids"]])
            z = model(input_ids=ids).logits[0, -1, [yes, no]]
            assert got == pytest.approx(float(torch.softmax(z, -1)[0]), abs=1e-5)
    result = evaluate(model, tok, test, items, task=CTR, faithful=True, num_beams=1, max_new_tokens=1,
                      batch_size=4, topk=[5], cutoff_len=512, device="cpu")
    metrics = result.metrics
    assert metrics["auc"] == pytest.approx(roc_auc_score(test["label"], p), abs=1e-9)
    assert set(metrics) == {"loss", "auc", "logloss", "accuracy"}
    assert metrics["loss"] == metrics["logloss"] == pytest.approx(ctr_metrics(test["label"].to_numpy(), p)["logloss"])
    records = result.records  # one row per test sample: label, P(Yes), per-sample logloss
    assert list(records["row"]) == list(range(len(test))) and list(records["label"]) == list(test["label"])
    assert np.allclose(records["p_yes"], p)
    y = test["label"].to_numpy()
    assert np.allclose(records["loss"], -(y * np.log(p) + (1 - y) * np.log(1 - p)))
