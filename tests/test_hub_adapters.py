"""Hub adapters and the 8-bit training path: ``model.lora_init`` given as a hub id loads from the local Hugging Face
cache without network (a tiny cached repository is built in a temporary HF_HOME); a missing id names the id, the
cache folder and the fetch command; a k-bit base goes through PEFT's ``prepare_model_for_kbit_training``."""

from __future__ import annotations

import shutil

import pytest
import torch
from peft import LoraConfig
from transformers import LlamaConfig, LlamaForCausalLM

from goracs.errors import InputNotFound
from goracs.exports import save_adapter
from goracs.models import backbone as backbone_module
from goracs.models.backbone import HFBackbone, prepare_for_training, train_bpe_tokenizer
from goracs.models.fingerprint import adapter_digest
from goracs.models.lora import attach_lora, hub_cache_dir, resolve_adapter

LORA = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
REVISION = "0123456789abcdef0123456789abcdef01234567"


def _tiny(seed: int = 0, dtype=torch.float32) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    return LlamaForCausalLM(config).to(dtype)


def _lora_state(model) -> dict[str, torch.Tensor]:
    return {k.replace(".default", ""): v.clone() for k, v in model.state_dict().items() if "lora_" in k}


def _cache_on_hub(tmp_path, monkeypatch, repo_id: str = "someone/tiny-lora"):
    """A trained-looking adapter saved into HF_HOME/hub as `hf download` leaves it (refs/main -> snapshot)."""
    source = attach_lora(_tiny(), LORA, seed=1)
    with torch.no_grad():
        for name, p in source.named_parameters():
            if "lora_B" in name:
                p.normal_()  # B starts at 0: give the adapter a content of its own
    folder = save_adapter(source, tmp_path / "adapter")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    repo = tmp_path / "hf" / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REVISION)
    shutil.copytree(folder, repo / "snapshots" / REVISION)
    return source, folder


def test_a_cached_hub_id_loads_offline(tmp_path, monkeypatch):
    source, folder = _cache_on_hub(tmp_path, monkeypatch)
    assert resolve_adapter("someone/tiny-lora") == tmp_path / "hf" / "hub" / "models--someone--tiny-lora" / \
        "snapshots" / REVISION
    loaded = attach_lora(_tiny(), LORA, "someone/tiny-lora", seed=5)
    expected, got = _lora_state(source), _lora_state(loaded)
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    # The hub id and the folder it came from are one adapter to the caches (hashed by content).
    assert adapter_digest("someone/tiny-lora") == adapter_digest(str(folder))


def test_a_missing_hub_id_names_the_id_the_cache_and_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(InputNotFound) as err:
        resolve_adapter("tloen/alpaca-lora-7b")
    message = str(err.value)
    assert "tloen/alpaca-lora-7b" in message and str(tmp_path / "hf" / "hub") in message
    assert "hf download tloen/alpaca-lora-7b" in message


def test_a_missing_folder_is_not_taken_for_a_hub_id(tmp_path):
    with pytest.raises(InputNotFound, match="no such folder"):
        resolve_adapter(str(tmp_path / "nowhere"))


def test_hub_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "c"))
    assert hub_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "h"))
    assert hub_cache_dir() == tmp_path / "h" / "hub"


@pytest.mark.parametrize("checkpointing", [True, False])
def test_a_kbit_base_is_prepared_as_peft_documents(checkpointing):
    model = _tiny(dtype=torch.float16)
    model.is_loaded_in_8bit = True  # what bitsandbytes loading sets (the int8 layers themselves need CUDA)
    prepared = prepare_for_training(model, quantized=True, gradient_checkpointing=checkpointing)
    assert all(p.dtype == torch.float32 for p in prepared.parameters())  # norms and head in fp32 for training
    assert not any(p.requires_grad for p in prepared.parameters())  # the base frozen; LoRA adds the trainable ones
    assert prepared.is_gradient_checkpointing is checkpointing
    peft_model = attach_lora(prepared, LORA, seed=0)
    peft_model.train()
    ids = torch.randint(0, 64, (2, 8))
    peft_model(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is not None for n, p in peft_model.named_parameters() if "lora_B" in n)


def test_a_full_precision_base_gets_gradient_checkpointing_only_when_asked():
    plain = prepare_for_training(_tiny(dtype=torch.bfloat16), quantized=False, gradient_checkpointing=False)
    assert not plain.is_gradient_checkpointing and next(plain.parameters()).dtype == torch.bfloat16
    checkpointed = prepare_for_training(_tiny(), quantized=False, gradient_checkpointing=True)
    assert checkpointed.is_gradient_checkpointing


def test_the_8bit_backbone_goes_through_kbit_preparation(tmp_path, monkeypatch):
    folder = tmp_path / "model"
    _tiny().save_pretrained(folder)
    train_bpe_tokenizer(["a tiny corpus", "of two texts"], 64).save_pretrained(folder)
    import transformers

    original = backbone_module.AutoModelForCausalLM.from_pretrained
    calls = {}

    def int8_from_pretrained(path, **kwargs):
        calls.update(kwargs)
        kwargs.pop("quantization_config")
        model = original(path, **kwargs)
        model.is_loaded_in_8bit = True
        return model

    monkeypatch.setattr(transformers, "BitsAndBytesConfig", lambda **kw: ("bnb", kw))
    monkeypatch.setattr(backbone_module.AutoModelForCausalLM, "from_pretrained", int8_from_pretrained)
    model, _ = HFBackbone(str(folder), dtype="float16", load_in_8bit=True, gradient_checkpointing=True).load()
    assert calls["quantization_config"] == ("bnb", {"load_in_8bit": True})
    assert model.is_gradient_checkpointing and all(p.dtype == torch.float32 for p in model.parameters())
