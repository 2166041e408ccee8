"""Write a real selection pool's GORACS features as .npy files, for ``bench_goracs.py --fill --real DIR``.

    python experiments/dump_pool.py outputs/bench/real_ml100k_500 --budget 128 [hydra overrides ...]

Composes ``conf/config.yaml`` with the overrides exactly as ``goracs-run`` does, builds the samples and the feature
store (reading the feature cache, computing what is missing) and writes ``train_emb.npy``, ``valid_emb.npy`` (the
``text_emb`` feature) and ``grad_norm.npy`` of the train split, plus ``budget.txt`` and ``meta.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--budget", type=int, required=True, help="budget the bench selects (written to budget.txt)")
    p.add_argument("overrides", nargs="*", help="hydra overrides, as for goracs-run")
    args = p.parse_intermixed_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from goracs.data import prepare_samples
    from goracs.features import FeatureStore

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=args.overrides, return_hydra_config=True)
    with open_dict(cfg):  # resolve paths without a Hydra run: the checkout is the root
        cfg.paths.root = str(ROOT)
        cfg.paths.output_dir = str(args.out)
    plain = lambda node: OmegaConf.to_container(node, resolve=True)  # noqa: E731
    cache = Path(cfg.paths.cache_dir)
    task = instantiate(cfg.task)
    samples = prepare_samples(data=plain(cfg.data), task=task, seed=int(cfg.data_seed), cache_dir=cache)
    store = FeatureStore(samples, instantiate(cfg.model.backbone), instantiate(cfg.model.lora), cfg.model.lora_init,
                         faithful=bool(cfg.task.faithful_prompts), config=plain(cfg.features), cache_dir=cache,
                         task=task)
    args.out.mkdir(parents=True, exist_ok=True)
    np.save(args.out / "train_emb.npy", store.get("text_emb", "train"))
    np.save(args.out / "valid_emb.npy", store.get("text_emb", "valid"))
    np.save(args.out / "grad_norm.npy", store.get("grad_norm", "train"))
    (args.out / "budget.txt").write_text(str(args.budget))
    meta = {"overrides": args.overrides, "data": cfg.data.name, "model": cfg.model.name,
            "n_train": len(samples.train), "n_valid": len(samples.valid), "computed": store.computed}
    (args.out / "meta.json").write_text(json.dumps(meta, indent=1))
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
