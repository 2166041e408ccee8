"""Bad model input gets a clear error: missing model path, missing GGUF, lora_init that does not fit."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file

from goracs.models.backbone import HFBackbone, SmolLM2Backbone, TinyLlamaBackbone
from goracs.models.lora import attach_lora

TEXTS = ['Below is an instruction "Toy Story (1995)"', "The user has watched", "Yes", "No"] * 5


def _lora(r=8):
    return LoraConfig(r=r, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


def test_missing_model_path_names_the_option(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model.name_or_path=.*no such folder.*config.json"):
        HFBackbone(str(tmp_path / "nowhere")).load()


def test_missing_gguf_file_names_the_option(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model.gguf_path=.*no such file"):
        SmolLM2Backbone(cache_dir=str(tmp_path), gguf_path=str(tmp_path / "missing.gguf")).load()


def test_lora_init_with_other_rank_is_a_shape_error(tmp_path):
    model, _ = TinyLlamaBackbone().load(TEXTS)
    other = get_peft_model(TinyLlamaBackbone().load(TEXTS)[0], _lora(r=4))  # rank 4 adapter for a rank 8 config
    state = {k: v for k, v in other.state_dict().items() if "lora_" in k}
    save_file(state, str(tmp_path / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match=r"lora_init=.*has shape .*in the adapter but .* in the model"):
        attach_lora(model, _lora(r=8), str(tmp_path))


def test_lora_init_round_trip_and_missing_folder(tmp_path):
    source = get_peft_model(TinyLlamaBackbone().load(TEXTS)[0], _lora())
    with torch.no_grad():
        for name, p in source.named_parameters():
            if "lora_B" in name:
                p.fill_(0.25)  # fresh B is zero: make the copied values recognisable
    state = {k: v for k, v in source.state_dict().items() if "lora_" in k}
    save_file(state, str(tmp_path / "adapter_model.safetensors"))
    loaded = attach_lora(TinyLlamaBackbone().load(TEXTS)[0], _lora(), str(tmp_path))
    b = [p for n, p in loaded.named_parameters() if "lora_B" in n]
    assert b and all(torch.all(p == 0.25) for p in b)
    with pytest.raises(FileNotFoundError, match=r"lora_init=.*no such folder"):
        attach_lora(TinyLlamaBackbone().load(TEXTS)[0], _lora(), str(tmp_path / "absent"))
