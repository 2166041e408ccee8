"""The feature store: named per-sample features of a sample set, computed on demand and cached on disk.

``FeatureStore(...).get(name, split)`` implements the selection stage's ``FeatureSource``. Features:

========== ============ ===================================================================================
name       shape        meaning
========== ============ ===================================================================================
text_emb   (n, d) f32   sentence embedding of the prompt text (:mod:`goracs.features.text_embedding`)
grad_norm  (n,) f32     ‖∇_θ ℓ_i‖₂ over the LoRA parameters ``features.grad_params`` at the initial adapter
grad_proj  (n, k) f32   that gradient projected to ``proj_dim`` (or raw, P = #parameters, with projection none)
loss       (n,) f32     the task loss ℓ_i whose gradient is taken (:mod:`goracs.tasks`)
el2n       (n,) f32     EL2N error norm (:mod:`goracs.tasks`)   
influence  (n,) f32     DEALRec influence (H⁻¹v)ᵀ∇θL(z_i) on a SASRec surrogate (:mod:`goracs.features.surrogate`);
                        train split only
========== ============ ===================================================================================

Cache: ``<cache_dir>/features/<key>.npy`` via :class:`goracs.cache.DiskCache` (atomic, manifest-checked; a truncated
or corrupt file is dropped and recomputed). The key hashes the split's samples (instruction, input, output, label),
the task and prompt mode, and the options that change the values: for model features the model fingerprint
(:mod:`goracs.models.fingerprint`: backbone spec, LoRA config, content hash of ``lora_init``) and
:meth:`FeatureConfig.gradient_spec` (plus the projection for ``grad_proj``); for ``text_emb`` only the encoder
options, unless the encoder is the ``llm``; for ``influence`` the train samples' (history, item) ids, the catalogue
and ``features.surrogate`` + ``features.influence`` (no LLM: the surrogate is its own model, itself cached under
``surrogates/`` by the sequences and ``features.surrogate`` only). Batch sizes, device and process count are not in
the key: they do not change the values (dropout masks are drawn on the CPU, so CUDA and CPU draw the same ones).
A cache miss is computed under a file lock, so parallel jobs compute a feature once.

One gradient pass yields ``loss``, ``el2n``, ``grad_norm`` (and ``grad_proj`` when asked for), so the first request
of any of them computes and caches those still missing. The backbone is loaded lazily, once per store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from goracs.cache import DiskCache, config_key
from goracs.features.config import FeatureConfig
from goracs.features.gradients import GRADIENT_FEATURES, GradientExtractor, encode_split
from goracs.features.projection import make_projection
from goracs.features.sharded import run_batches
from goracs.features.text_embedding import LastTokenEncoder, embedding_texts, sentence_encoder
from goracs.models.encoding import pad_id, tokenizer_corpus
from goracs.models.fingerprint import model_fingerprint
from goracs.task_protocol import Task

log = logging.getLogger(__name__)

FEATURES = ("text_emb",) + GRADIENT_FEATURES + ("influence",)
TRAIN_ONLY = ("influence",)
SPLITS = ("train", "valid")


class FeatureStore:
    """Lazily computed, disk-cached features of ``samples.train`` / ``samples.valid`` (see the module docstring).

    ``task``: the samples' task (:class:`goracs.task_protocol.Task`); it decides the texts, the encoding and the loss,
    and which features exist.

    Attributes:
        computed: ``(feature, split)`` pairs this store computed (rather than read from the cache), in order.
        model_loads: how many times the backbone was loaded (one per gradient repeat used).
        seconds: wall time spent computing or reading features.
    """

    def __init__(self, samples: Any, backbone: Any, lora: Any, lora_init: str | None, *, faithful: bool,
                 config: FeatureConfig | Mapping[str, Any] | None, cache_dir: str | Path, task: Task):
        self.samples, self.task, self.backbone, self.lora, self.lora_init = samples, task, backbone, lora, lora_init
        self.faithful = faithful
        self.cfg = config if isinstance(config, FeatureConfig) else FeatureConfig.from_mapping(config)
        self.cache = DiskCache(cache_dir)
        self.computed: list[tuple[str, str]] = []
        self.model_loads = 0
        self.seconds = 0.0  # wall time spent computing or reading features (excluded from selection times)
        self._memo: dict[tuple[str, str], np.ndarray] = {}
        self._digests: dict[str, str] = {}
        self._model = self._tokenizer = None
        self._repeat = 0
        self._fingerprint: dict | None = None

    def get(self, name: str, split: str = "train") -> np.ndarray:
        if split not in SPLITS:
            raise KeyError(f"unknown split {split!r}; expected one of {SPLITS}")
        base, _ = split_repeat(name)
        if base not in FEATURES or (name != base and base not in GRADIENT_FEATURES):
            raise KeyError(f"feature {name!r} is not available; available: {list(FEATURES)} (gradient features also "
                           f"as <name>@<r>: repeat r with LoRA seed lora_seed+r and dropout seed dropout_seed+r)")
        if not self.task.supports_feature(base):
            raise KeyError(f"feature {name!r} is not available for task {self.task.name!r}")
        if base in TRAIN_ONLY and split != "train":
            raise KeyError(f"feature {name!r} is defined for the train split (the pool) only, not {split!r}")
        if (name, split) not in self._memo:
            t0 = time.perf_counter()
            self._memo[(name, split)] = self._fetch(name, split)
            self.seconds += time.perf_counter() - t0
        return self._memo[(name, split)]

    def key(self, name: str, split: str) -> str:
        """Cache key of a cached feature (hash of :meth:`spec`)."""
        return config_key(self.spec(name, split))

    def spec(self, name: str, split: str) -> dict:
        """Everything that determines the values of feature ``name`` on ``split``."""
        name, repeat = split_repeat(name)
        if name == "influence":  # sequences only: neither the prompts nor the LLM change it
            from goracs.features.surrogate import surrogate_spec

            return {"feature": name, "surrogate": surrogate_spec(self.samples, self.cfg.surrogate),
                    "influence": self.cfg.influence.spec()}
        spec = {"feature": name, "task": self.task.name, "faithful": self.faithful, "samples": self._digest(split)}
        if repeat:
            spec["repeat"] = repeat  # repeat 0 is the plain feature: same key, same cache entry
        if name == "text_emb":
            spec.update(self.cfg.embedding_spec())
            if self.cfg.text_encoder == "llm":
                spec.update(self._model_spec())
            return spec
        spec.update(self._model_spec())
        spec.update(self.cfg.gradient_spec())
        if name == "grad_proj":
            spec.update(self.cfg.projection_spec())
        return spec

    @property
    def fingerprint(self) -> dict:
        """The model fingerprint (:mod:`goracs.models.fingerprint`) the model features are keyed by."""
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.backbone, self.lora, self.lora_init)
        return self._fingerprint

    @property
    def model_loaded(self) -> bool:
        return self._model is not None

    # -- computing ---------------------------------------------------------------------------------------------

    def _fetch(self, name: str, split: str) -> np.ndarray:
        # Another process may be computing the same feature (parallel jobs on a cold cache): wait for it, then read.
        with self.cache.claim("features", self.key(name, split), "npy") as hit:
            if hit is not None:
                return self._load_cached(name, split, hit)
            return self._compute(name, split)

    def _compute(self, name: str, split: str) -> np.ndarray:
        base, repeat = split_repeat(name)
        if name == "text_emb":
            results = {"text_emb": self._embed(split)}
        elif name == "influence":
            from goracs.features.surrogate import influence_feature

            results = {"influence": influence_feature(self.samples, self.cfg, self.cache, self._device())}
        elif repeat:
            values = self._gradient_pass(split, [base], repeat)[base]
            results = {name: values}
        else:
            missing = [f for f in ("loss", "el2n", "grad_norm") if f != name and self._read(f, split) is None]
            results = self._gradient_pass(split, [name] + missing)
        for feature, values in results.items():
            self._write(feature, split, values)
            self._memo[(feature, split)] = values
            self.computed.append((feature, split))
        return results[name]

    def _embed(self, split: str) -> np.ndarray:
        texts = embedding_texts(self._frame(split), self.task, faithful=self.faithful)
        items = [{"text": t, "index": i} for i, t in enumerate(texts)]
        if self.cfg.text_encoder == "llm":
            model, tokenizer = self._load()
            fn = LastTokenEncoder(model, tokenizer, max_length=self.cfg.embed_max_length or self.cfg.cutoff_len)
        else:
            fn = sentence_encoder(self.cfg.text_encoder, self.cfg.encoder_path, self.cfg.embed_max_length)
        log.info("embedding %d %s texts with %s", len(texts), split, self.cfg.text_encoder)
        out = run_batches(fn, items, batch_size=self.cfg.embed_batch_size, device=self.cfg.device,
                          num_processes=self.cfg.num_processes, desc=f"text_emb/{split}")
        return out["text_emb"].astype(np.float32)

    def _gradient_pass(self, split: str, want: list[str], repeat: int = 0) -> dict[str, np.ndarray]:
        model, tokenizer = self._load(repeat)
        cfg = self.cfg
        items = encode_split(self._frame(split), self.task, tokenizer, cutoff_len=cfg.cutoff_len,
                             faithful=self.faithful)
        yes_no = self.task.answer_ids(tokenizer)
        fn = GradientExtractor(model, self.task, cfg.grad_params, pad_id=pad_id(tokenizer), yes_no=yes_no,
                               dropout=cfg.dropout, dropout_seed=cfg.dropout_seed + repeat, projection=None, want=want)
        if "grad_proj" in want:
            fn.projection = make_projection(cfg.projection, fn.param_dim(), cfg.proj_dim, cfg.proj_seed)
        log.info("gradient pass over %d %s samples for %s", len(items), split, want)
        try:
            out = run_batches(fn, items, batch_size=cfg.batch_size, device=cfg.device,
                              num_processes=cfg.num_processes, desc=f"gradients/{split}")
        finally:
            fn.release()
        return {k: v.astype(np.float32) for k, v in out.items()}

    def _load(self, repeat: int = 0):
        """The backbone with its initial LoRA; repeat r draws a fresh adapter with seed lora_seed + r (one at a time)."""
        if self._model is None or self._repeat != repeat:
            from goracs.models.lora import attach_lora

            self._model = None  # free the previous copy before loading the next
            model, tokenizer = self.backbone.load(tokenizer_corpus(self.samples))
            dtype = self.cfg.effective_dtype()
            if dtype is not None:  # features.dtype: e.g. exact fp32 features from a bf16 backbone
                model = model.to(getattr(torch, dtype))
            self._model = attach_lora(model, self.lora, self.lora_init, seed=self.cfg.lora_seed + repeat)
            self._tokenizer, self._repeat = tokenizer, repeat
            self.model_loads += 1
        return self._model, self._tokenizer

    def _device(self) -> str:
        if self.cfg.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.cfg.device

    def release(self) -> None:
        """Drop the backbone (features already computed stay available)."""
        self._model = self._tokenizer = None

    # -- cache ---------------------------------------------------------------------------------------------------

    def _read(self, name: str, split: str) -> np.ndarray | None:
        if (name, split) in self._memo:
            return self._memo[(name, split)]
        path = self.cache.lookup("features", self.key(name, split), "npy")
        return None if path is None else self._load_cached(name, split, path)

    def _load_cached(self, name: str, split: str, path: Path) -> np.ndarray:
        log.info("feature %s/%s read from %s", name, split, path)
        values = np.load(path, allow_pickle=False)
        self._memo[(name, split)] = values
        return values

    def _write(self, name: str, split: str, values: np.ndarray) -> None:
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: np.save(path) would append ".npy" to the temporary name
                np.save(f, values, allow_pickle=False)

        self.cache.store("features", self.key(name, split), "npy", write, spec=self.spec(name, split))

    def _frame(self, split: str):
        df = getattr(self.samples, split, None)
        if df is None or len(df) == 0:
            raise ValueError(f"samples.{split} is empty: no {split} features can be computed")
        return df

    def _digest(self, split: str) -> str:
        if split not in self._digests:
            cols = ["instruction", "input", "output", "label"]
            rows = self._frame(split)[cols].to_numpy().tolist()
            text = json.dumps([[str(a), str(b), str(c), int(d)] for a, b, c, d in rows], ensure_ascii=False)
            self._digests[split] = hashlib.sha256(text.encode("utf-8")).hexdigest()
        return self._digests[split]

    def _model_spec(self) -> dict:
        return {"model": self.fingerprint}


def split_repeat(name: str) -> tuple[str, int]:
    """``"grad_norm@2"`` -> ``("grad_norm", 2)``; ``"grad_norm"`` -> ``("grad_norm", 0)``."""
    base, sep, rep = name.partition("@")
    if not sep:
        return name, 0
    if not rep.isdigit():
        raise KeyError(f"feature {name!r}: the repeat after '@' must be a non-negative integer")
    return base, int(rep)
