"""Cache identity: the model fingerprint (adapter by content) keys features and selections; options that do not
change values (feature batch size) never invalidate a selection; parallel misses compute an entry once."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import torch

from conftest import compose_run_config

SLICE = ["data.max_train=24", "data.max_valid=8", "data.max_test=8", "model=tiny_llama", "logger=none", "budget=6",
         "stage=select", "selection=el2n"]


def _select(tmp_path: Path, name: str, extra: list[str]):
    from goracs.run import run

    cfg = compose_run_config(SLICE + extra, tmp_path / name, tmp_path / "cache")
    return run(cfg), cfg


def _entries(tmp_path: Path, kind: str) -> set[str]:
    return {p.name for p in (tmp_path / "cache" / kind).glob("*.npy*") if not p.name.endswith(".json")} | \
        {p.name for p in (tmp_path / "cache" / kind).glob("*.npz")}


def _write_adapter(cfg, folder: Path, seed: int) -> None:
    from hydra.utils import instantiate

    from goracs.data import prepare_samples
    from goracs.exports import save_adapter
    from goracs.models.encoding import tokenizer_corpus
    from goracs.models.lora import attach_lora
    from omegaconf import OmegaConf

    plain = lambda n: OmegaConf.to_container(n, resolve=True)  # noqa: E731
    samples = prepare_samples(plain(cfg.data), instantiate(cfg.task), int(cfg.data_seed), Path(cfg.paths.cache_dir))
    model, _ = instantiate(cfg.model.backbone).load(tokenizer_corpus(samples))
    model = attach_lora(model, instantiate(cfg.model.lora), seed=0)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    save_adapter(model, folder)


def test_adapter_replaced_in_place_gives_new_features_and_selection(tmp_path):
    _, cfg = _select(tmp_path, "plain", [])
    adapter = tmp_path / "adapter"
    _write_adapter(cfg, adapter, seed=1)
    first, _ = _select(tmp_path, "a1", [f"model.lora_init={adapter}"])
    features, selections = _entries(tmp_path, "features"), _entries(tmp_path, "selections")
    _write_adapter(cfg, adapter, seed=2)  # same path, same file sizes, other weights
    second, _ = _select(tmp_path, "a2", [f"model.lora_init={adapter}"])
    assert _entries(tmp_path, "features") > features  # new features for the new adapter
    assert _entries(tmp_path, "selections") > selections  # and a new selection
    assert first["select/time_s"] >= 0 and second["status"] == "ok"

    # The same adapter copied elsewhere is the same model: everything comes from the cache.
    import shutil

    copy = tmp_path / "elsewhere"
    shutil.copytree(adapter, copy)
    features, selections = _entries(tmp_path, "features"), _entries(tmp_path, "selections")
    _select(tmp_path, "copy", [f"model.lora_init={copy}"])
    assert _entries(tmp_path, "features") == features and _entries(tmp_path, "selections") == selections


def test_feature_batch_size_and_device_do_not_invalidate_a_selection(tmp_path, caplog):
    import logging

    _select(tmp_path, "first", ["features.batch_size=4"])
    selections = _entries(tmp_path, "selections")
    with caplog.at_level(logging.INFO, logger="goracs.selection.cache"):
        _select(tmp_path, "second", ["features.batch_size=3", "features.embed_batch_size=5", "features.device=cpu"])
    assert _entries(tmp_path, "selections") == selections
    assert any("selection read from cache" in r.getMessage() for r in caplog.records)
    _select(tmp_path, "third", ["features.dropout_seed=9"])  # a value-determining option: a new selection
    assert len(_entries(tmp_path, "selections")) == len(selections) + 1


def _compute_locked(root: str, key: str, log_path: str) -> None:
    from goracs.cache import DiskCache

    cache = DiskCache(root)
    if cache.lookup("features", key, "npy") is None:
        with cache.lock("features", key):
            if cache.lookup("features", key, "npy") is None:
                with open(log_path, "a") as f:
                    f.write("computed\n")
                time.sleep(1.0)  # a slow computation: the other process must wait, then read

                def write(p: Path) -> None:
                    p.write_bytes(b"x" * 10)

                cache.store("features", key, "npy", write, spec={"k": key})


def test_two_processes_compute_a_missing_entry_once(tmp_path):
    log_path = tmp_path / "log.txt"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_compute_locked, args=(str(tmp_path / "cache"), "abc", str(log_path)))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    assert log_path.read_text().count("computed") == 1
    assert (tmp_path / "cache" / "features" / "abc.npy").read_bytes() == b"x" * 10
