"""The chunked LM-head loss equals the full-logits loss: values, EL2N and gradients, for any chunk size."""

from __future__ import annotations

import pytest
import torch
from conftest import SEQREC
from goracs.features.gradients import collate, encode_split
from goracs.models.encoding import lm_loss_per_sample
from goracs.models.lm_head import lm_losses, losses_from_logits, split_head, token_nll
from tests.test_features import make_samples, tiny_model


def batch_and_model(dtype=torch.float32):
    samples = make_samples("seqrec")
    model, tok = tiny_model(samples, random_b=True)
    model = model.to(dtype).eval()
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    items = encode_split(samples.train, SEQREC, tok, cutoff_len=512, faithful=True)
    batch = collate(items, tok.pad_token_id)
    assert len({len(it["input_ids"]) for it in items}) > 2  # padded
    return model, batch


def full_logits(model, batch):
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    return out.logits


def grads(model, loss) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("chunk", [1, 3, None])
def test_chunked_loss_el2n_and_gradients_equal_full_logits(chunk, monkeypatch):
    model, batch = batch_and_model()
    if chunk is not None:  # force the chunk size through the default lookup
        from goracs.models import lm_head

        monkeypatch.setitem(lm_head.CHUNK_ELEMENTS, "cpu", chunk * model.config.vocab_size)
    assert split_head(model) is not None
    fused = lm_losses(model, batch["input_ids"], batch["attention_mask"], batch["labels"],
                      response=batch["response"], want_el2n=True)
    g_fused = grads(model, fused.loss)
    logits = full_logits(model, batch)
    ref_loss = lm_loss_per_sample(logits, batch["labels"])
    g_ref = grads(model, ref_loss)
    ref = losses_from_logits(logits.detach(), batch["labels"], response=batch["response"], want_el2n=True)
    torch.testing.assert_close(fused.loss.detach(), ref_loss.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused.el2n, ref.el2n, rtol=1e-5, atol=1e-6)
    assert set(g_fused) == set(g_ref) and g_ref
    for name in g_ref:
        torch.testing.assert_close(g_fused[name], g_ref[name], rtol=1e-4, atol=1e-6 * g_ref[name].abs().max().item())


def test_el2n_falls_back_to_all_counted_tokens_without_a_response():
    model, batch = batch_and_model()
    response = batch["response"].clone()
    response[0] = 0  # sample 0's response "cut off"
    got = lm_losses(model, batch["input_ids"], batch["attention_mask"], batch["labels"], response=response,
                    want_el2n=True).el2n
    everything = lm_losses(model, batch["input_ids"], batch["attention_mask"], batch["labels"], response=None,
                           want_el2n=True).el2n
    torch.testing.assert_close(got[0], everything[0])
    assert not torch.allclose(got[1:], everything[1:])


def test_bfloat16_chunked_matches_full_logits_within_bf16_rounding():
    model, batch = batch_and_model(torch.bfloat16)
    fused = lm_losses(model, batch["input_ids"], batch["attention_mask"], batch["labels"]).loss
    ref = lm_loss_per_sample(full_logits(model, batch), batch["labels"])
    torch.testing.assert_close(fused.detach(), ref.detach(), rtol=1e-2, atol=1e-2)


def test_models_without_a_plain_frozen_head_use_the_full_logits():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50, n_positions=64)).eval()
    assert split_head(gpt2) is None  # not on the allow-list of plain heads
    ids = torch.randint(0, 50, (2, 7))
    labels = ids.clone()
    labels[:, 0] = -100
    got = lm_losses(gpt2, ids, torch.ones_like(ids), labels).loss
    torch.testing.assert_close(got, lm_loss_per_sample(gpt2(input_ids=ids).logits, labels))

    model, _ = batch_and_model()
    model.get_base_model().get_output_embeddings().weight.requires_grad_(True)  # a trainable head
    assert split_head(model) is None
    with pytest.raises(ValueError, match="frozen LM head"):
        token_nll(torch.zeros(2, 4), torch.zeros(5, 4, requires_grad=True), torch.zeros(2, dtype=torch.long))


def test_no_gradient_pass_returns_plain_values():
    model, batch = batch_and_model()
    with torch.no_grad():
        out = lm_losses(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    assert not out.loss.requires_grad and out.el2n is None
    torch.testing.assert_close(out.loss, lm_loss_per_sample(full_logits(model, batch), batch["labels"]).detach())
