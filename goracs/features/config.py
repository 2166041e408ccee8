"""The feature-stage options (``conf/features/default.yaml``), validated once.

The store receives the ``features`` config subtree as a plain mapping; :meth:`FeatureConfig.from_mapping` turns it
into a frozen dataclass, rejecting unknown keys and bad values with a message that names the option.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from goracs.errors import ConfigError

ENCODERS = ("minilm", "roberta_base", "llm")
PROJECTIONS = ("none", "countsketch", "gaussian")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = (None, "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class FeatureConfig:
    text_encoder: str = "minilm"  # minilm | roberta_base | llm
    encoder_path: str | None = None  # HF folder of roberta-base (text_encoder=roberta_base)
    embed_batch_size: int = 32  # texts per encoder forward
    embed_max_length: int | None = None  # tokens; None = encoder limit (MiniLM 256, RoBERTa 512, llm cutoff_len)
    batch_size: int = 8  # samples per forward+backward of the gradient pass
    cutoff_len: int = 512  # tokens per sample, as BIGRec/TALLRec
    grad_params: str = r"layers\.{last}\.self_attn\.v_proj\.lora_B\."  # regex over LoRA parameter names
    dropout: bool = True  # LoRA dropout during the gradient pass (official code: on)
    dropout_seed: int = 0  # seeds the per-sample dropout masks
    lora_seed: int = 0  # seeds the fresh LoRA initialisation (A matrices) when lora_init is null
    projection: str = "none"  # grad_proj: none (raw gradient) | countsketch | gaussian
    proj_dim: int = 1024  # grad_proj dimension when projected
    proj_seed: int = 0  # seeds the projection
    device: str = "auto"  # auto | cpu | cuda
    num_processes: int = 1  # >1: Lightning predict over that many processes/devices
    dtype: str | None = None  # weights of the model passes: None = the backbone's dtype | float32 | bfloat16

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any] | None) -> "FeatureConfig":
        config = dict(config or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ConfigError(f"features config: unknown option(s) {unknown}; expected a subset of {sorted(known)} "
                             "(see conf/features/default.yaml)")
        cfg = cls(**config)
        cfg._check()
        return cfg

    def _check(self) -> None:
        def bad(option: str, expected: str) -> ConfigError:
            return ConfigError(f"features.{option}={getattr(self, option)!r}: expected {expected}")

        if self.text_encoder not in ENCODERS:
            raise bad("text_encoder", f"one of {list(ENCODERS)}")
        if self.projection not in PROJECTIONS:
            raise bad("projection", f"one of {list(PROJECTIONS)}")
        if self.device not in DEVICES:
            raise bad("device", f"one of {list(DEVICES)}")
        if self.dtype not in DTYPES:
            raise bad("dtype", "null (the backbone's dtype), float32, bfloat16 or float16")
        for option in ("embed_batch_size", "batch_size", "cutoff_len", "proj_dim", "num_processes"):
            value = getattr(self, option)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(option, "a positive integer")
        if self.embed_max_length is not None and (not isinstance(self.embed_max_length, int)
                                                  or self.embed_max_length < 1):
            raise bad("embed_max_length", "null or a positive integer")
        if self.text_encoder == "roberta_base" and not self.encoder_path:
            raise bad("encoder_path", "the folder of a Hugging Face roberta-base checkpoint when text_encoder="
                                      "roberta_base (it is not shipped; download it on a machine with network)")

    def gradient_spec(self) -> dict:
        """Options that change the loss/gradient values (not batch size, device or process count)."""
        spec = {"cutoff_len": self.cutoff_len, "grad_params": self.grad_params, "dropout": self.dropout,
                "dropout_seed": self.dropout_seed if self.dropout else None, "lora_seed": self.lora_seed}
        if self.dtype is not None:  # absent when null, so caches made before the option keep their keys
            spec["dtype"] = self.dtype
        return spec

    def value_spec(self) -> dict:
        """Every option that changes some feature's values: what a cache of anything computed from the features
        (a selection) must key on. Batch sizes, device and process count are left out."""
        return {**self.embedding_spec(), **self.gradient_spec(), **self.projection_spec()}

    def projection_spec(self) -> dict:
        if self.projection == "none":
            return {"projection": "none"}
        return {"projection": self.projection, "proj_dim": self.proj_dim, "proj_seed": self.proj_seed}

    def embedding_spec(self) -> dict:
        llm = {"cutoff_len": self.cutoff_len, **({"dtype": self.dtype} if self.dtype is not None else {})}
        return {"text_encoder": self.text_encoder, "encoder_path": self.encoder_path,
                "embed_max_length": self.embed_max_length, **(llm if self.text_encoder == "llm" else {})}
