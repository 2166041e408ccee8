"""What the benchmark scripts share: the composed run config, the real samples and model, device and clock.

Not a test helper: benchmarks only (``experiments/bench_*.py``), run from the repository root.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

REPO = Path(__file__).resolve().parents[1]


def add_common_args(p: argparse.ArgumentParser) -> None:
    """``--model``, ``--device``, ``--threads``, ``--override`` (repeatable Hydra override) and ``--json-out``."""
    p.add_argument("--model", default="smollm2", help="conf/model option (smollm2 | tiny_llama)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--override", action="append", default=[],
                   help="extra Hydra override, repeatable (e.g. model.backbone.dtype=float32)")
    p.add_argument("--json-out", default=None)


def setup(args: argparse.Namespace) -> tuple[DictConfig, str]:
    """The run config of ``args`` (paths under this repository) and the device; applies ``--threads``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else (
        "cpu" if args.device == "auto" else args.device)
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"model={args.model}", f"paths.root={REPO}",
                                           f"paths.cache_dir={REPO / 'outputs' / 'cache'}",
                                           f"paths.shared_data={REPO.parent / 'shared' / 'data'}",
                                           *args.override])
    return cfg, device


def plain(node) -> dict:
    return OmegaConf.to_container(node, resolve=True)


def load_samples(cfg: DictConfig):
    """The run's samples (data slice, task and data seed of ``cfg``), from the sample cache when present."""
    from goracs.data import prepare_samples

    return prepare_samples(plain(cfg.data), instantiate(cfg.task), int(cfg.data_seed), Path(cfg.paths.cache_dir))


def load_model(cfg: DictConfig, samples, device: str):
    """The backbone with the run's initial LoRA (seed ``features.lora_seed``), on ``device``, in eval mode."""
    from goracs.models.encoding import tokenizer_corpus
    from goracs.models.lora import attach_lora

    model, tok = instantiate(cfg.model.backbone).load(tokenizer_corpus(samples))
    model = attach_lora(model, instantiate(cfg.model.lora), cfg.model.lora_init, seed=int(cfg.features.lora_seed))
    return model.to(device).eval(), tok


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str):
    """(result, seconds) of ``fn()``, the device synchronised on both ends."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0
