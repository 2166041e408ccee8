"""The DEALRec ``influence`` feature: a cached SASRec surrogate trained on the pool's sequences, then LiSSA.

Public entry: :func:`influence_feature` (what :class:`goracs.features.FeatureStore` calls) and :func:`surrogate_spec`
(what the surrogate's cache key hashes). The surrogate is cached apart from the feature, under
``<cache_dir>/surrogates/<key>.pt``, keyed by the training sequences (digest of every train sample's history and
item), the catalogue, the valid sequences when ``checkpoint=best``, and ``features.surrogate``; so changing only
``features.influence`` (LiSSA) re-scores without retraining. The device is not in the key.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from goracs.cache import DiskCache, config_key
from goracs.errors import ConfigError
from goracs.features.config import FeatureConfig, SurrogateConfig
from goracs.features.influence import influence_scores
from goracs.features.sasrec import SASRec, TrainLog, train_sasrec
from goracs.features.sequences import SequenceData, catalogue_digest, sequence_data, sequence_digest

log = logging.getLogger(__name__)

# The surrogate's tensors are tiny (a batch is 500 x 10 x 64): on CPU one intra-op thread avoids the OpenMP
# hand-off cost that dominates them. Measured on the 2-core machine while other jobs ran: a training step took
# 0.12 s on 1 thread vs 1.17 s on 2, a 12-row softmax 0.015 ms vs 0.76 ms (docs/bench_selection.md, "DEALRec").
CPU_THREADS = 1


def influence_feature(samples: Any, cfg: FeatureConfig, cache: DiskCache, device: str) -> np.ndarray:
    """(n_train,) float32 DEALRec influence scores of ``samples.train`` (see :mod:`goracs.features.influence`)."""
    train = train_sequences(samples, cfg.surrogate)
    with cpu_threads(device):
        model, _ = cached_surrogate(samples, cfg.surrogate, cache, device, train=train)
        c = cfg.influence
        t0 = time.perf_counter()
        scores = influence_scores(model, train, param=c.param, damping=c.damping, scale=c.scale,
                                  recursion_depth=c.recursion_depth, hvp_batch=c.hvp_batch, repeats=c.repeats,
                                  seed=c.seed, v_batch=cfg.surrogate.batch_size, batch_size=c.batch_size,
                                  device=device)
    log.info("influence of %d samples in %.1f s", len(scores), time.perf_counter() - t0)
    return scores


def train_sequences(samples: Any, options: SurrogateConfig) -> SequenceData:
    """The pool's sequences; raises a :class:`ConfigError` when none has a transition to learn."""
    data = sequence_data(samples.train, _catalogue(samples), mode=options.sequence, max_len=options.max_len)
    if data.n_positions == 0:
        lengths = [len(h) for h in samples.train["history"]]
        raise ConfigError(
            f"sequences too short for the DEALRec surrogate: none of the {len(samples.train)} train samples gives a "
            f"(item, next item) pair with features.surrogate.sequence={options.sequence!r} (longest history "
            f"{max(lengths, default=0)} items; 'history' needs >= 2 history items). Raise data.history_len or "
            f"data.min_history, or set features.surrogate.sequence=history_and_target")
    empty = int(((data.targets > 0).sum(1) == 0).sum())
    if empty:
        log.info("%d of %d train sequences have no transition: loss and influence 0 (as the official code)", empty,
                 len(data))
    return data


def surrogate_spec(samples: Any, options: SurrogateConfig) -> dict:
    """Everything that determines the trained surrogate's weights (the device aside)."""
    spec = {"model": "sasrec", "train": sequence_digest(samples.train), "items": catalogue_digest(_catalogue(samples)),
            **options.spec()}
    if options.checkpoint == "best":
        spec["valid"] = sequence_digest(samples.valid)
    return spec


def cached_surrogate(samples: Any, options: SurrogateConfig, cache: DiskCache, device: str,
                     train: SequenceData | None = None) -> tuple[SASRec, TrainLog]:
    """The trained surrogate, read from the cache or trained and stored (under a file lock: parallel jobs train
    it once)."""
    spec = surrogate_spec(samples, options)
    key = config_key(spec)
    model = build_sasrec(len(samples.items), options)
    with cache.claim("surrogates", key, "pt") as hit:
        if hit is not None:
            state = torch.load(hit, map_location="cpu", weights_only=True)
            model.load_state_dict(state["weights"])
            record = TrainLog(losses=state["losses"], valid=dict(state["valid"]), kept_epoch=state["kept_epoch"],
                              seconds=state["seconds"])
            log.info("surrogate read from %s (trained %d epochs, kept epoch %d)", hit, len(record.losses),
                     record.kept_epoch)
            return model.eval(), record
        train = train if train is not None else train_sequences(samples, options)
        valid = None
        if options.checkpoint == "best":
            if samples.valid is None or len(samples.valid) == 0:
                raise ConfigError("features.surrogate.checkpoint=best needs validation samples, but samples.valid is "
                                  "empty; use checkpoint=last or a data set with a valid split")
            valid = sequence_data(samples.valid, _catalogue(samples), mode=options.sequence, max_len=options.max_len,
                                  with_target_as_last=True)
        log.info("training the SASRec surrogate on %d sequences (%d transitions), %d epochs on %s", len(train),
                 train.n_positions, options.epochs, device)
        record = train_sasrec(model, train, epochs=options.epochs, batch_size=options.batch_size, lr=options.lr,
                              weight_decay=options.weight_decay, seed=options.seed, checkpoint=options.checkpoint,
                              valid=valid, eval_every=options.eval_every, device=device)
        log.info("surrogate trained in %.1f s (%.2f s/epoch), final loss %.4f, kept epoch %d", record.seconds,
                 record.seconds / max(options.epochs, 1), record.losses[-1], record.kept_epoch)
        state = {"weights": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "losses": record.losses,
                 "valid": list(record.valid.items()), "kept_epoch": record.kept_epoch, "seconds": record.seconds}

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                torch.save(state, f)

        cache.store("surrogates", key, "pt", write, spec=spec)
    return model.eval(), record


def build_sasrec(n_items: int, options: SurrogateConfig) -> SASRec:
    """A freshly initialised surrogate (initialisation seeded by ``options.seed``, global RNG left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        return SASRec(n_items, hidden_size=options.hidden_size, num_layers=options.num_layers,
                      num_heads=options.num_heads, dropout=options.dropout, max_len=options.max_len,
                      activation=options.activation, init_std=options.init_std)


@contextlib.contextmanager
def cpu_threads(device: str):
    """Run the block with :data:`CPU_THREADS` intra-op threads on CPU (restored afterwards); a no-op on CUDA."""
    before = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(CPU_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _catalogue(samples: Any) -> list[str]:
    return samples.items["item"].astype(str).tolist()
