"""Feature stage: exact batched per-sample gradients, projections, losses/EL2N, the disk cache and MiniLM."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from peft import LoraConfig

from conftest import CTR, SEQREC, task_named
from goracs.features import FeatureStore, GradientExtractor, make_projection, select_lora_params
from goracs.features.gradients import encode_split
from goracs.models.backbone import TinyLlamaBackbone
from goracs.models.encoding import IGNORE, answer_token_ids
from goracs.models.lora import attach_lora

TITLES = ["Toy Story (1995)", "Heat", "The Good, the Bad and the Ugly (1966)", "Babe (1995)", "Casino",
          "Dead Man Walking (1995)", "Twelve Monkeys (a.k.a. 12 Monkeys) (1995)", "Fargo (1996)", "Alien"]


def make_samples(task: str, n_train: int = 7, n_valid: int = 4) -> SimpleNamespace:
    """Hand-built samples in the common schema; history lengths vary so batches need padding."""
    def frame(n: int, offset: int) -> pd.DataFrame:
        rows = []
        for i in range(n):
            k = offset + i
            history = [TITLES[(k + j) % len(TITLES)] for j in range(1 + (k * 3) % 6)]
            target = TITLES[(k * 5 + 2) % len(TITLES)]
            label = int(k % 3 != 0)
            if task == "seqrec":
                inp = "The user has watched the following movies before:" + ", ".join(f'"{t}"' for t in history)
                out = f'"{target}"'
                instr = "Given a list of movies the user has watched before, recommend a new movie."
            else:
                inp = f'User Preference: {", ".join(history)}\nUser Unpreference: \nWhether the user will like "{target}"?'
                out = "Yes" if label else "No"
                instr = 'Identify whether the user will like the target movie by answering "Yes" or "No".'
            rows.append({"user": f"u{k % 4}", "item": str(k), "rating": 4.0 if label else 2.0, "timestamp": k,
                         "history": history, "history_ratings": [4.0] * len(history), "label": label,
                         "instruction": instr, "input": inp, "output": out, "negatives": [], "targets": [str(k)]})
        return pd.DataFrame(rows)

    return SimpleNamespace(train=frame(n_train, 0), valid=frame(n_valid, 100), test=frame(2, 200), task=task,
                           domain="movies")


LORA = dict(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"], bias="none",
            task_type="CAUSAL_LM")


def tiny_model(samples, *, random_b: bool):
    from goracs.models.encoding import tokenizer_corpus

    model, tok = TinyLlamaBackbone().load(tokenizer_corpus(samples))
    model = attach_lora(model, LoraConfig(**LORA))
    if random_b:  # as after lora_init: every layer's LoRA changes the forward, so all dropout masks matter
        gen = torch.Generator().manual_seed(1)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.data = torch.randn(p.shape, generator=gen) * 0.05
    return model, tok


def reference_grads(model, fn: GradientExtractor, items, params) -> tuple[np.ndarray, np.ndarray]:
    """One sample at a time, unpadded, through ordinary ``loss.backward()`` and ``param.grad``."""
    losses, grads = [], []
    for item in items:
        batch = fn.collate([item])
        fn._lengths, fn._index = [len(item["input_ids"])], [item["index"]]  # what __call__ gives the dropout hooks
        for p in params.values():
            p.weight.grad = None
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        loss = fn.task.logits_losses(out.logits, batch, answer_ids=fn.yes_no)[0][0]
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.weight.grad.flatten() for p in params.values()]).numpy())
    return np.array(losses), np.stack(grads)


@pytest.mark.parametrize("task", ["seqrec", "ctr"])
@pytest.mark.parametrize("pattern, dropout, random_b", [
    (r"layers\.{last}\.self_attn\.v_proj\.lora_B\.", True, False),  # the paper's default, official dropout on
    (r"v_proj\.lora_[AB]", True, True),  # several matrices, both kinds, in every layer
    (r"q_proj\.lora_B", False, True),
])
def test_batched_per_sample_gradients_equal_one_at_a_time_loop(task, pattern, dropout, random_b):
    samples = make_samples(task)
    model, tok = tiny_model(samples, random_b=random_b)
    items = encode_split(samples.train, task_named(task), tok, cutoff_len=512, faithful=True)
    lengths = {len(it["input_ids"]) for it in items}
    assert len(lengths) > 2  # the batch really is padded
    yes_no = answer_token_ids(tok) if task == "ctr" else None
    fn = GradientExtractor(model, task_named(task), pattern, pad_id=tok.pad_token_id, yes_no=yes_no, dropout=dropout,
                           dropout_seed=3, projection=None, want=["loss", "grad_norm", "grad_proj", "el2n"])
    fn.prepare(torch.device("cpu"))
    batched = fn(fn.collate(items))
    params = select_lora_params(model, pattern)
    ref_loss, ref_grad = reference_grads(model, fn, items, params)
    assert batched["grad_proj"].shape == (len(items), sum(p.weight.numel() for p in params.values()))
    np.testing.assert_allclose(batched["loss"], ref_loss, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(batched["grad_proj"], ref_grad, rtol=1e-3, atol=1e-6 * np.abs(ref_grad).max())
    np.testing.assert_allclose(batched["grad_norm"], np.linalg.norm(ref_grad, axis=1), rtol=1e-4)
    assert np.all(batched["grad_norm"] > 0)


def test_dropout_masks_change_the_gradient_and_are_seeded():
    samples = make_samples("seqrec")
    model, tok = tiny_model(samples, random_b=False)
    items = encode_split(samples.train, SEQREC, tok, cutoff_len=512, faithful=True)

    def norms(dropout: bool, seed: int) -> np.ndarray:
        fn = GradientExtractor(model, SEQREC, r"layers\.{last}\.self_attn\.v_proj\.lora_B\.",
                               pad_id=tok.pad_token_id, yes_no=None, dropout=dropout, dropout_seed=seed,
                               projection=None, want=["grad_norm"])
        fn.prepare(torch.device("cpu"))
        out = fn(fn.collate(items))["grad_norm"]
        fn.release()
        return out

    a, b, off = norms(True, 0), norms(True, 1), norms(False, 0)
    np.testing.assert_array_equal(a, norms(True, 0))
    assert not np.allclose(a, b) and not np.allclose(a, off)


def test_pattern_matching_nothing_lists_lora_parameters():
    samples = make_samples("seqrec")
    model, _ = tiny_model(samples, random_b=False)
    with pytest.raises(ValueError, match=r"matches no LoRA parameter(.|\n)*layers\.1\.self_attn\.q_proj\.lora_A"):
        select_lora_params(model, r"o_proj\.lora_B")
    assert list(select_lora_params(model, r"layers\.{last}\.self_attn\.v_proj\.lora_B\.")) == [
        "base_model.model.model.layers.1.self_attn.v_proj.lora_B.default.weight"]


@pytest.mark.parametrize("kind", ["countsketch", "gaussian"])
def test_projection_preserves_inner_products_and_is_seeded(kind):
    rng = np.random.default_rng(0)
    p, k = 5000, 2048  # gaussian: 5000*2048*4 B > one 16 MB block, so several blocks are combined
    x = torch.from_numpy(rng.standard_normal((12, p)).astype(np.float32))
    x[1] = 0.6 * x[0] + 0.4 * x[1]  # one strongly correlated pair
    proj = make_projection(kind, p, k, seed=7)
    y = proj(x)
    true, est = (x @ x.T).numpy(), (y @ y.T).numpy()
    sq = np.diag(true)
    sd = np.sqrt((np.outer(sq, sq) + true ** 2) / k)  # standard deviation of the sketched inner product
    assert np.all(np.abs(est - true) < 6 * sd)
    assert abs(np.mean((est - true) / sd)) < 1.0  # unbiased: no systematic drift
    np.testing.assert_array_equal(y.numpy(), make_projection(kind, p, k, seed=7)(x).numpy())
    np.testing.assert_allclose(proj(x[3:4]).numpy(), y[3:4].numpy(), rtol=1e-5, atol=1e-4)  # batch-independent
    assert not np.allclose(y.numpy(), make_projection(kind, p, k, seed=8)(x).numpy())
    assert make_projection("none", p, k, seed=7) is None


def test_el2n_matches_brute_force_definition():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=gen)
    labels = torch.tensor([[IGNORE, 1, 2, 3, 4], [IGNORE, IGNORE, 5, 6, 0]])
    response = torch.tensor([[0, 0, 0, 1, 1], [0, 0, 0, 0, 0]])  # sample 2: response cut off -> all counted tokens
    got = SEQREC.logits_losses(logits, {"labels": labels, "response": response}, answer_ids=None, want_el2n=True)[1]
    got = got.numpy()
    p = torch.softmax(logits, -1).numpy()

    def err(b, t):  # position t predicts label t+1
        onehot = np.eye(7)[labels[b, t + 1]]
        return np.linalg.norm(p[b, t] - onehot)

    np.testing.assert_allclose(got, [np.mean([err(0, 2), err(0, 3)]), np.mean([err(1, 1), err(1, 2), err(1, 3)])],
                               rtol=1e-5)
    ctr = CTR.logits_losses(logits, {"label": torch.tensor([1, 0])}, answer_ids=(2, 4), want_el2n=True)[1].numpy()
    pair = torch.softmax(logits[:, -1, [2, 4]], -1).numpy()
    np.testing.assert_allclose(ctr, [np.linalg.norm(pair[0] - [1, 0]), np.linalg.norm(pair[1] - [0, 1])], rtol=1e-5)


class CountingBackbone:
    """A tiny_llama backbone that counts loads (and can forbid them)."""

    def __init__(self, forbid: bool = False):
        self.inner, self.forbid, self.loads = TinyLlamaBackbone(), forbid, 0

    def spec(self):
        return self.inner.spec()

    def load(self, texts=None):
        if self.forbid:
            raise AssertionError("the backbone was loaded although every feature was cached")
        self.loads += 1
        return self.inner.load(texts)


def _store(samples, cache, backbone, **config):
    return FeatureStore(samples, backbone, LoraConfig(**LORA), None, faithful=True, config=config, cache_dir=cache,
                        task=task_named(samples.task))


def test_cache_reuse_truncation_and_keys(tmp_path):
    samples = make_samples("ctr")
    first = _store(samples, tmp_path, CountingBackbone(), batch_size=3)
    norms = first.get("grad_norm")
    assert set(first.computed) == {("grad_norm", "train"), ("loss", "train"), ("el2n", "train")}
    assert first.model_loads == 1 and norms.shape == (len(samples.train),) and norms.dtype == np.float32
    np.testing.assert_allclose(first.get("el2n"), math.sqrt(2) * (1 - np.exp(-first.get("loss"))), rtol=1e-4)
    assert len(first.computed) == 3  # el2n and loss came from the same pass

    second = _store(samples, tmp_path, CountingBackbone(forbid=True), batch_size=5)  # batch size is not in the key
    np.testing.assert_array_equal(second.get("grad_norm"), norms)
    assert second.computed == [] and not second.model_loaded

    path = tmp_path / "features" / f"{second.key('grad_norm', 'train')}.npy"
    path.write_bytes(path.read_bytes()[:-7])  # truncated
    third = _store(samples, tmp_path, CountingBackbone())
    np.testing.assert_allclose(third.get("grad_norm"), norms, rtol=1e-5)  # seeded dropout: same values
    assert third.computed == [("grad_norm", "train")]

    changed = _store(samples, tmp_path, CountingBackbone(), dropout_seed=5)
    assert changed.key("grad_norm", "train") != second.key("grad_norm", "train")
    assert changed.key("text_emb", "train") == second.key("text_emb", "train")  # minilm ignores the backbone
    assert second.key("grad_norm", "valid") != second.key("grad_norm", "train")
    proj = _store(samples, tmp_path, CountingBackbone(), projection="countsketch", proj_dim=64)
    assert proj.key("grad_proj", "train") != second.key("grad_proj", "train")
    assert proj.key("grad_norm", "train") == second.key("grad_norm", "train")
    assert proj.get("grad_proj").shape == (len(samples.train), 64) and proj.computed == [("grad_proj", "train")]


def test_store_errors(tmp_path):
    samples = make_samples("ctr")
    store = _store(samples, tmp_path, CountingBackbone(forbid=True))
    with pytest.raises(KeyError, match="grad_norms"):
        store.get("grad_norms")
    with pytest.raises(ValueError, match=r"features\.projection_dim: unknown option"):
        _store(samples, tmp_path, CountingBackbone(), projection_dim=4)
    with pytest.raises(ValueError, match="features.projection='pca'"):
        _store(samples, tmp_path, CountingBackbone(), projection="pca")


def test_minilm_embeddings_similarity_and_manual_mean_pool(tmp_path):
    from transformers import AutoModel, AutoTokenizer

    from goracs.features.text_embedding import minilm_folder, sentence_encoder

    texts = ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Quarterly interest rates rose sharply."]
    enc = sentence_encoder("minilm", None, None)
    enc.prepare(torch.device("cpu"))
    emb = enc(enc.collate([{"text": t, "index": i} for i, t in enumerate(texts)]))["text_emb"]
    assert emb.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2 and emb[0] @ emb[1] > emb[1] @ emb[2] + 0.2

    tok = AutoTokenizer.from_pretrained(minilm_folder())
    model = AutoModel.from_pretrained(minilm_folder()).eval()
    with torch.no_grad():  # manual: one text at a time (no padding), plain mean over its tokens, then L2
        manual = [model(**tok(t, return_tensors="pt")).last_hidden_state[0].mean(0).numpy() for t in texts]
    manual = np.stack([m / np.linalg.norm(m) for m in manual])
    np.testing.assert_allclose(emb, manual, atol=1e-5)

    samples = make_samples("seqrec")
    store = _store(samples, tmp_path, CountingBackbone(forbid=True))
    valid = store.get("text_emb", "valid")
    assert valid.shape == (len(samples.valid), 384) and store.computed == [("text_emb", "valid")]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("task", ["seqrec", "ctr"])
def test_batched_gradients_on_cuda_match_cpu_loop(task):
    samples = make_samples(task)
    model, tok = tiny_model(samples, random_b=True)
    items = encode_split(samples.train, task_named(task), tok, cutoff_len=512, faithful=True)
    yes_no = answer_token_ids(tok) if task == "ctr" else None
    pattern = r"v_proj\.lora_[AB]"
    fn = GradientExtractor(model, task_named(task), pattern, pad_id=tok.pad_token_id, yes_no=yes_no, dropout=False,
                           dropout_seed=0, projection=None,
                           want=["loss", "grad_proj"])
    fn.prepare(torch.device("cpu"))
    ref_loss, ref_grad = reference_grads(model, fn, items, select_lora_params(model, pattern))
    fn.prepare(torch.device("cuda"))
    got = fn(fn.collate(items))
    np.testing.assert_allclose(got["loss"], ref_loss, rtol=1e-3)
    np.testing.assert_allclose(got["grad_proj"], ref_grad, rtol=1e-2, atol=1e-3 * np.abs(ref_grad).max())


def test_llm_text_embedding_is_last_token_final_hidden_state(tmp_path):
    samples = make_samples("ctr")
    store = _store(samples, tmp_path, CountingBackbone(), text_encoder="llm", embed_batch_size=3)
    emb = store.get("text_emb", "valid")
    model, tok = store._load()
    from goracs.features.text_embedding import embedding_texts

    with torch.no_grad():  # one text at a time, unpadded: hidden state after the final norm at the last token
        manual = [model(**tok(t, return_tensors="pt"), output_hidden_states=True).hidden_states[-1][0, -1].numpy()
                  for t in embedding_texts(samples.valid, CTR, faithful=True)]
    np.testing.assert_allclose(emb, np.stack(manual), rtol=1e-4, atol=1e-5)
    other = _store(samples, tmp_path, CountingBackbone(), text_encoder="minilm")
    assert other.key("text_emb", "valid") != store.key("text_emb", "valid")
    with pytest.raises(ValueError, match="features.encoder_path=None"):
        _store(samples, tmp_path, CountingBackbone(), text_encoder="roberta_base")


def test_seeded_repeats_for_averaged_grand(tmp_path):
    """grad_norm@r: another LoRA draw (lora_seed + r) and dropout seed; @0 is the plain feature; GraNd averages."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from goracs.selection import Pool

    samples = make_samples("seqrec")
    store = _store(samples, tmp_path, CountingBackbone(), batch_size=4)
    plain, r0, r1 = store.get("grad_norm"), store.get("grad_norm@0"), store.get("grad_norm@1")
    np.testing.assert_array_equal(plain, r0)
    assert not np.allclose(plain, r1)  # a different initial adapter gives different norms
    again = _store(samples, tmp_path, CountingBackbone(forbid=True)).get("grad_norm@1")  # cached
    np.testing.assert_array_equal(again, r1)
    with pytest.raises(KeyError, match="non-negative integer"):
        store.get("grad_norm@x")

    grand = instantiate(OmegaConf.create({"_target_": "goracs.selection.scored.TopScoreSelector",
                                          "features": ["grad_norm@0", "grad_norm@1"], "largest": True, "offset": 0}))
    k = 3
    picked = grand.select(Pool(size=len(samples.train), features=store), k, seed=0).indices
    expected = np.sort(np.argsort(-(plain + r1) / 2, kind="stable")[:k])
    np.testing.assert_array_equal(picked, expected)


def test_feature_dtype_option_casts_the_model_and_joins_the_key(tmp_path):
    samples = make_samples("seqrec")
    plain = _store(samples, tmp_path, CountingBackbone())
    half = _store(samples, tmp_path, CountingBackbone(), dtype="bfloat16")
    assert half.key("grad_norm", "train") != plain.key("grad_norm", "train")
    assert half.key("text_emb", "train") == plain.key("text_emb", "train")  # minilm does not use the backbone
    explicit = _store(samples, tmp_path, CountingBackbone(), dtype=None)
    assert explicit.key("grad_norm", "train") == plain.key("grad_norm", "train")  # null keeps the old key
    low, exact = half.get("grad_norm"), plain.get("grad_norm")
    assert next(half._load()[0].parameters()).dtype == torch.bfloat16
    np.testing.assert_allclose(low, exact, rtol=0.1)  # same quantity, bf16 rounding
    assert not np.array_equal(low, exact)
    with pytest.raises(ValueError, match="features.dtype='float8'"):
        _store(samples, tmp_path, CountingBackbone(), dtype="float8")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_dropout_masks_are_the_same_on_cuda_and_cpu():
    """Masks come from a CPU generator, so features (not keyed by device) agree across devices with dropout on."""
    samples = make_samples("seqrec")
    model, tok = tiny_model(samples, random_b=True)
    items = encode_split(samples.train, SEQREC, tok, cutoff_len=512, faithful=True)
    fn = GradientExtractor(model, SEQREC, r"v_proj\.lora_[AB]", pad_id=tok.pad_token_id, yes_no=None,
                           dropout=True, dropout_seed=4, projection=None, want=["loss", "grad_proj"])
    fn.prepare(torch.device("cpu"))
    cpu = fn(fn.collate(items))
    fn.prepare(torch.device("cuda"))
    cuda = fn(fn.collate(items))
    np.testing.assert_allclose(cuda["loss"], cpu["loss"], rtol=1e-3)
    np.testing.assert_allclose(cuda["grad_proj"], cpu["grad_proj"], rtol=1e-2, atol=1e-3 * np.abs(cpu["grad_proj"]).max())
