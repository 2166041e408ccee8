"""One identity of the initial model φ₀, shared by every cache whose values depend on it.

``model_fingerprint(backbone, lora, lora_init)`` = the backbone's ``spec()`` (what determines its weights and its
tokenizer: SmolLM2's GGUF file and dtype, an HF model's name and revision; tiny_llama trains its tokenizer on the
data's texts, which every key covers through the samples), the LoRA config without bookkeeping fields, and a
**content hash** of the initial adapter's files (never its path or modification time: an adapter replaced in place
gets a new fingerprint, the same adapter copied elsewhere keeps it). The feature, selection and title-embedding
caches all key on it; title embeddings run the base model with the adapter off, so they take its ``backbone`` part.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from goracs.cache import file_sha256
from goracs.errors import InputNotFound

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
_LORA_KEYS_IGNORED = ("peft_version", "inference_mode", "base_model_name_or_path", "revision")
_HASHES: dict[tuple, str] = {}  # (path, size, mtime) -> content hash: an unchanged file is read once per process


def model_fingerprint(backbone: Any, lora: Any, lora_init: str | None) -> dict:
    """``{"backbone": spec, "lora": config, "adapter": content hash or None}`` (module docstring)."""
    return {"backbone": backbone.spec(), "lora": lora_spec(lora), "adapter": adapter_digest(lora_init)}


def lora_spec(lora: Any) -> Any:
    """JSON-stable view of a LoRA config (sets sorted; version and bookkeeping fields dropped)."""
    d = lora.to_dict() if hasattr(lora, "to_dict") else dict(lora)
    return _stable({k: v for k, v in d.items() if k not in _LORA_KEYS_IGNORED})


def adapter_digest(lora_init: str | None) -> str | None:
    """SHA-256 over the names and contents of the adapter files in ``lora_init`` (a folder); None without one.
    A hub id is hashed by the files of its snapshot in the local hub cache (:func:`goracs.models.lora.resolve_adapter`),
    so a folder and the same adapter by id share their caches."""
    if not lora_init:
        return None
    folder = Path(lora_init).expanduser()
    if not folder.is_dir():
        from goracs.models.lora import resolve_adapter  # peft and torch: only when an adapter is given

        folder = resolve_adapter(lora_init)
    files = [folder / name for name in ADAPTER_FILES if (folder / name).is_file()]
    if not files:
        raise InputNotFound(f"model.lora_init={lora_init!r}: the folder holds none of {list(ADAPTER_FILES)}")
    h = hashlib.sha256()
    for path in files:
        h.update(path.name.encode())
        h.update(_file_hash(path).encode())
    return h.hexdigest()


def _file_hash(path: Path) -> str:
    st = path.stat()
    memo = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _HASHES:
        _HASHES[memo] = file_sha256(path)
    return _HASHES[memo]


def _stable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _stable(v) for k, v in x.items()}
    if isinstance(x, (set, frozenset)):
        return sorted(_stable(v) for v in x)
    if isinstance(x, (list, tuple)):
        return [_stable(v) for v in x]
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)
