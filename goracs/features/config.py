"""The feature-stage options (``conf/features/default.yaml``), validated once.

The ``features`` node's ``_target_`` is :class:`FeatureConfig`: its fields are the node's keys (the nested
``surrogate`` and ``influence`` nodes are :class:`SurrogateConfig` and :class:`InfluenceConfig`). ``goracs-run`` builds
it with :func:`goracs.config.build`; :meth:`FeatureConfig.from_mapping` builds it from a plain mapping. An unknown key
or a bad value is a :class:`~goracs.errors.ConfigError` naming the option.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from goracs.config import construct
from goracs.errors import ConfigError
from goracs.features.sequences import SEQUENCE_MODES

ENCODERS = ("minilm", "roberta_base", "llm")
PROJECTIONS = ("none", "countsketch", "gaussian")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = (None, "auto", "float32", "bfloat16", "float16")
ACTIVATIONS = ("relu", "gelu")
CHECKPOINTS = ("last", "best")


@dataclass(frozen=True)
class SurrogateConfig:
    """``features.surrogate``: DEALRec's SASRec surrogate (feature ``influence``); defaults = official
    ``code/prune/utils.py`` unless noted. Every option is a cache key of the surrogate and of ``influence``."""

    hidden_size: int = 64  # embedding / hidden width
    num_layers: int = 2  # transformer blocks
    num_heads: int = 2  # attention heads
    activation: str = "relu"  # relu (what modules.py hard-codes) | gelu (the unused --hidden_act default)
    dropout: float = 0.5  # hidden and attention-probability dropout
    max_len: int = 50  # positions (max_seq_length)
    init_std: float = 0.02  # N(0, init_std^2) weight initialisation (initializer_range)
    sequence: str = "history"  # history (official: train[:-1]) | history_and_target (history + [item])
    epochs: int = 200  # training epochs (official 200)
    batch_size: int = 500  # sequences per Adam step; also the batches of the influence vector v
    lr: float = 1e-3  # Adam learning rate
    weight_decay: float = 0.0  # Adam weight decay
    checkpoint: str = "last"  # last (official behaviour, spec §4 quirk) | best (valid Recall@5 every eval_every)
    eval_every: int = 5  # epochs between validations (checkpoint=best)
    seed: int = 42  # init, batch order, training negatives and dropout (official --seed 42)

    def spec(self) -> dict:
        spec = dataclasses.asdict(self)
        if self.checkpoint == "last":
            spec.pop("eval_every")  # only picks the kept epoch under checkpoint=best
        return spec


@dataclass(frozen=True)
class InfluenceConfig:
    """``features.influence``: LiSSA and the per-sample influence (official ``influence_score.py``)."""

    param: str = "item_encoder.layer.1.attention.dense.weight"  # the one matrix θ is restricted to
    damping: float = 0.01  # d in h <- v + (1 - d) h - H h / s
    scale: float = 25.0  # s
    recursion_depth: int = 5000  # LiSSA steps
    hvp_batch: int = 1  # samples per Hessian-vector product (official: one random sample)
    repeats: int = 1  # independent LiSSA runs averaged (official --iteration)
    seed: int = 0  # LiSSA sample draws and the fixed negatives of the influence loss
    batch_size: int = 1024  # samples per per-sample-gradient batch (not a cache key)

    def spec(self) -> dict:
        spec = dataclasses.asdict(self)
        spec.pop("batch_size")
        return spec


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
    dtype: str | None = None  # weights of the model passes: None = the backbone's | auto | float32 | bfloat16
    surrogate: SurrogateConfig = field(default_factory=SurrogateConfig)  # DEALRec SASRec (feature influence)
    influence: InfluenceConfig = field(default_factory=InfluenceConfig)  # LiSSA options (feature influence)

    def __post_init__(self) -> None:
        for name, node_cls in (("surrogate", SurrogateConfig), ("influence", InfluenceConfig)):
            value = getattr(self, name)
            if not isinstance(value, node_cls):  # a nested mapping (the yaml node), or null for the defaults
                object.__setattr__(self, name, construct(node_cls, value, f"features.{name}"))
        self._check()
        _check_surrogate(self.surrogate)
        _check_influence(self.influence)

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any] | None) -> "FeatureConfig":
        """The config a ``features`` mapping describes (its ``_target_``, if any, ignored)."""
        return construct(cls, config, "features")

    def _check(self) -> None:
        bad = _complaint("features", self)

        if self.text_encoder not in ENCODERS:
            raise bad("text_encoder", f"one of {list(ENCODERS)}")
        if self.projection not in PROJECTIONS:
            raise bad("projection", f"one of {list(PROJECTIONS)}")
        if self.device not in DEVICES:
            raise bad("device", f"one of {list(DEVICES)}")
        if self.dtype not in DTYPES:
            raise bad("dtype", "null (the backbone's dtype), auto (bf16 where this machine multiplies it fast), "
                               "float32, bfloat16 or float16")
        for option in ("embed_batch_size", "batch_size", "cutoff_len", "proj_dim", "num_processes"):
            if not _positive_int(getattr(self, option)):
                raise bad(option, "a positive integer")
        if self.embed_max_length is not None and (not isinstance(self.embed_max_length, int)
                                                  or self.embed_max_length < 1):
            raise bad("embed_max_length", "null or a positive integer")
        if self.text_encoder == "roberta_base" and not self.encoder_path:
            raise bad("encoder_path", "the folder of a Hugging Face roberta-base checkpoint when text_encoder="
                                      "roberta_base (it is not shipped; download it on a machine with network)")

    def effective_dtype(self) -> str | None:
        """The dtype the feature passes cast the backbone to: None (keep the backbone's, itself resolved by
        the backbone), ``auto`` resolved on this machine (:mod:`goracs.models.arithmetic`), or the explicit one."""
        if self.dtype != "auto":
            return self.dtype
        from goracs.models.arithmetic import resolve_dtype  # torch: imported only when a model runs

        device = None if self.device == "auto" else self.device
        return resolve_dtype("auto", option="features.dtype", device=device).dtype

    def gradient_spec(self) -> dict:
        """Options that change the loss/gradient values (not batch size, device or process count)."""
        spec = {"cutoff_len": self.cutoff_len, "grad_params": self.grad_params, "dropout": self.dropout,
                "dropout_seed": self.dropout_seed if self.dropout else None, "lora_seed": self.lora_seed}
        dtype = self.effective_dtype()
        if dtype is not None:  # absent when null, so caches made before the option keep their keys
            spec["dtype"] = dtype
        return spec

    def value_spec(self) -> dict:
        """Every option that changes some feature's values: what a cache of anything computed from the features
        (a selection) must key on. Batch sizes, device and process count are left out."""
        return {**self.embedding_spec(), **self.gradient_spec(), **self.projection_spec(), **self.dealrec_spec()}

    def dealrec_spec(self) -> dict:
        """The surrogate and LiSSA options (values of the ``influence`` feature)."""
        return {"surrogate": self.surrogate.spec(), "influence": self.influence.spec()}

    def projection_spec(self) -> dict:
        if self.projection == "none":
            return {"projection": "none"}
        return {"projection": self.projection, "proj_dim": self.proj_dim, "proj_seed": self.proj_seed}

    def embedding_spec(self) -> dict:
        dtype = self.effective_dtype() if self.text_encoder == "llm" else None
        llm = {"cutoff_len": self.cutoff_len, **({"dtype": dtype} if dtype is not None else {})}
        return {"text_encoder": self.text_encoder, "encoder_path": self.encoder_path,
                "embed_max_length": self.embed_max_length, **(llm if self.text_encoder == "llm" else {})}


def _positive_int(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= 1


def _complaint(prefix: str, node: Any):
    """``bad(option, expected)`` -> the ConfigError naming ``<prefix>.<option>``, its value and what was expected."""
    def bad(option: str, expected: str) -> ConfigError:
        return ConfigError(f"{prefix}.{option}={getattr(node, option)!r}: expected {expected}")

    return bad


def _check_surrogate(s: SurrogateConfig) -> None:
    bad = _complaint("features.surrogate", s)

    for option in ("hidden_size", "num_layers", "num_heads", "max_len", "epochs", "batch_size", "eval_every"):
        if not _positive_int(getattr(s, option)):
            raise bad(option, "a positive integer")
    if s.hidden_size % s.num_heads:
        raise bad("hidden_size", f"a multiple of features.surrogate.num_heads={s.num_heads}")
    if s.activation not in ACTIVATIONS:
        raise bad("activation", f"one of {list(ACTIVATIONS)}")
    if s.sequence not in SEQUENCE_MODES:
        raise bad("sequence", f"one of {list(SEQUENCE_MODES)}")
    if s.checkpoint not in CHECKPOINTS:
        raise bad("checkpoint", f"one of {list(CHECKPOINTS)}")
    if not 0.0 <= s.dropout < 1.0:
        raise bad("dropout", "a probability in [0, 1)")
    for option in ("lr", "init_std"):
        if not getattr(s, option) > 0:
            raise bad(option, "a positive number")
    if s.weight_decay < 0:
        raise bad("weight_decay", "a number >= 0")


def _check_influence(c: InfluenceConfig) -> None:
    bad = _complaint("features.influence", c)

    for option in ("recursion_depth", "hvp_batch", "repeats", "batch_size"):
        if not _positive_int(getattr(c, option)):
            raise bad(option, "a positive integer")
    if not 0.0 <= c.damping < 1.0:
        raise bad("damping", "a number in [0, 1)")
    if not c.scale > 0:
        raise bad("scale", "a positive number")
