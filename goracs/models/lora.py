"""Attach a PEFT LoRA adapter to a backbone, optionally initialised from an existing adapter (``lora_init``).

The paper starts fine-tuning and gradient features from the Alpaca LoRA; ``lora_init`` is a local folder holding
``adapter_model.safetensors`` or ``adapter_model.bin``, or a Hugging Face hub id (``tloen/alpaca-lora-7b``) resolved
from the local hub cache without network (:func:`resolve_adapter`); an id that is not cached is an
:class:`~goracs.errors.InputNotFound` naming the id, the cache folder and the command that fetches it.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from transformers import PreTrainedModel

from goracs.errors import ConfigError, InputNotFound

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


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name, as the hub spells repository ids


def check_lora(node: Mapping[str, Any]) -> None:
    """The ranges of the ``model.lora`` node (``peft.LoraConfig``'s keys and types are checked against its fields by
    the caller): ``r`` a positive rank, ``lora_alpha`` > 0, ``lora_dropout`` in [0, 1), ``target_modules`` naming at
    least one module. A :class:`~goracs.errors.ConfigError` names the key; PEFT itself would only fail when the
    adapter is attached, after the data and features stages."""
    r, alpha, dropout = node.get("r", 8), node.get("lora_alpha", 8), node.get("lora_dropout", 0.0)
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ConfigError(f"model.lora.r={r!r}: expected a positive integer rank (paper: 8)")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise ConfigError(f"model.lora.lora_alpha={alpha!r}: expected a positive number (scaling alpha / r)")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ConfigError(f"model.lora.lora_dropout={dropout!r}: expected a probability in [0, 1)")
    modules = node.get("target_modules")
    if "target_modules" in node and modules is not None and not modules:
        raise ConfigError(f"model.lora.target_modules={modules!r}: expected at least one module name, e.g. "
                          "[q_proj, v_proj]")


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache this process reads: ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
    ``~/.cache/huggingface/hub`` (read from the environment at each call)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def resolve_adapter(lora_init: str) -> Path:
    """The folder of ``lora_init``: a local folder as given, or a hub id's snapshot in the local hub cache (never
    downloaded: offline). :class:`~goracs.errors.InputNotFound` when neither exists, naming the id, the cache
    folder and the command that would fetch it."""
    folder = Path(lora_init).expanduser()
    if folder.exists():
        return folder
    if not _HUB_ID.match(lora_init) or lora_init.startswith((".", "~")):
        raise InputNotFound(
            f"model.lora_init={lora_init!r}: no such folder; expected a PEFT adapter folder with "
            "adapter_model.safetensors or adapter_model.bin, or a Hugging Face hub id (owner/name) in the hub cache")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = hub_cache_dir()
    try:
        snapshot = Path(snapshot_download(lora_init, cache_dir=str(cache), local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        raise InputNotFound(
            f"model.lora_init={lora_init!r}: not a local folder and not in the Hugging Face hub cache {cache}; "
            f"fetch it where there is network with `hf download {lora_init}` (HF_HOME={cache.parent}), or give "
            "the adapter's local folder") from None
    log.info("lora_init %s: hub cache snapshot %s", lora_init, snapshot)
    return snapshot


def _read_adapter(path: str) -> dict[str, torch.Tensor]:
    folder = resolve_adapter(path)
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
