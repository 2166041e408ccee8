"""Attach a PEFT LoRA adapter to a backbone, optionally initialised from an existing adapter (``lora_init``).

The paper starts fine-tuning and gradient features from the Alpaca LoRA; ``lora_init`` is a local folder holding
``adapter_model.safetensors`` or ``adapter_model.bin`` (or a hub id already in the offline cache).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from transformers import PreTrainedModel

from goracs.errors import InputNotFound

log = logging.getLogger(__name__)


def attach_lora(model: PreTrainedModel, lora: LoraConfig, lora_init: str | None = None,
                seed: int | None = None) -> PeftModel:
    """Wrap ``model`` with a fresh LoRA (``lora``); copy weights from ``lora_init`` when given, checking shapes.

    A fresh LoRA draws its A matrices from torch's global RNG (B starts at 0); ``seed`` fixes them, so that the
    gradient features and the fine-tuning start from the same adapter phi_0 (as the paper's fixed Alpaca LoRA).
    """
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        peft_model = get_peft_model(model, copy.deepcopy(lora))
    if lora_init:
        state = _read_adapter(lora_init)
        own = {k: v for k, v in peft_model.state_dict().items() if "lora_" in k}
        wanted = {_canonical(k): v for k, v in state.items()}
        for key, value in own.items():
            src = wanted.get(_canonical(key))
            if src is not None and tuple(src.shape) != tuple(value.shape):
                raise ValueError(
                    f"lora_init={lora_init!r}: tensor {key} has shape {tuple(src.shape)} in the adapter but "
                    f"{tuple(value.shape)} in the model; the adapter was trained for another backbone or rank")
        set_peft_model_state_dict(peft_model, state)
        missing = [k for k in own if _canonical(k) not in wanted]
        if len(missing) == len(own):
            raise ValueError(f"lora_init={lora_init!r}: none of its tensors match this model's LoRA parameters")
        log.info("initialised LoRA from %s (%d tensors, %d not in the adapter)", lora_init, len(own) - len(missing),
                 len(missing))
    return peft_model


def _read_adapter(path: str) -> dict[str, torch.Tensor]:
    folder = Path(path).expanduser()
    if not folder.exists():
        raise InputNotFound(
            f"lora_init={path!r}: no such folder; expected a PEFT adapter folder with adapter_model.safetensors "
            "or adapter_model.bin")
    st, bn = folder / "adapter_model.safetensors", folder / "adapter_model.bin"
    if st.exists():
        from safetensors.torch import load_file

        return load_file(str(st))
    if bn.exists():
        return torch.load(bn, map_location="cpu", weights_only=True)
    raise InputNotFound(f"lora_init={path!r}: neither adapter_model.safetensors nor adapter_model.bin found there")


def _canonical(key: str) -> str:
    # Adapters saved by different peft versions differ in the ".default" adapter name and the "base_model.model." prefix.
    key = key.replace(".default", "")
    while key.startswith("base_model.model."):
        key = key[len("base_model.model."):]
    return key
