"""Time and memory of DEALRec's surrogate training and influence scoring on a real data set (all train users).

    python experiments/bench_dealrec.py                                  # DEALRec Games, the yaml defaults
    python experiments/bench_dealrec.py --epochs 20 --cache /tmp/dealrec_cache
    python experiments/bench_dealrec.py --override data.max_train=2000 --epochs 5

It runs the feature stage's own code path (``goracs.features.surrogate.influence_feature`` through a
``FeatureStore``), so a second run with the same options reads the cached surrogate and feature (the warm numbers).
Prints one markdown table: seconds per surrogate epoch, training, LiSSA + scoring, total, the process's peak resident
memory (``ru_maxrss``), and the validation Recall@5 of the kept surrogate.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # compose_run_config: the run's config composition without a Hydra app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="dealrec_games")
    parser.add_argument("--epochs", type=int, default=None, help="features.surrogate.epochs (default: the yaml's)")
    parser.add_argument("--cache", default="/tmp/goracs_bench_dealrec",
                        help="cache folder (samples, surrogate, feature)")
    parser.add_argument("--override", action="append", default=[], help="extra Hydra overrides")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from conftest import compose_run_config
    from goracs.data import prepare_samples
    from goracs.features import FeatureStore
    from goracs.features.sasrec import VALID_K, recall_at_k
    from goracs.features.sequences import sequence_data
    from goracs.features.surrogate import cached_surrogate, cpu_threads

    overrides = [f"data={args.data}", "selection=dealrec", *args.override]
    if args.epochs is not None:
        overrides.append(f"features.surrogate.epochs={args.epochs}")
    cache = Path(args.cache)
    cfg = compose_run_config(overrides, cache / "run", cache)
    plain = lambda node: OmegaConf.to_container(node, resolve=True)  # noqa: E731
    task = instantiate(cfg.task)
    samples = prepare_samples(plain(cfg.data), task, int(cfg.data_seed), cache)
    store = FeatureStore(samples, None, None, None, faithful=True, config=plain(cfg.features), cache_dir=cache,
                         task=task)
    t0 = time.perf_counter()
    influence = store.get("influence")
    total = time.perf_counter() - t0
    model, record = cached_surrogate(samples, store.cfg.surrogate, store.cache, store._device())
    catalogue = samples.items["item"].astype(str).tolist()
    valid = sequence_data(samples.valid, catalogue, mode=store.cfg.surrogate.sequence,
                          max_len=store.cfg.surrogate.max_len, with_target_as_last=True)
    with cpu_threads("cpu"):
        recall = recall_at_k(model, valid, VALID_K)
    warm = ("influence", "train") not in store.computed
    trained_now = any(p.stat().st_mtime >= time.time() - total - 1 for p in (cache / "surrogates").glob("*.pt"))
    epochs = len(record.losses)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n| data | train users | epochs | s/epoch | training (s) | LiSSA + scoring (s) | feature total (s) | "
          f"peak RSS (MiB) | valid Recall@{VALID_K} | cache |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    scoring = total - record.seconds if trained_now else total
    print(f"| {args.data} | {len(samples.train):,} | {epochs} | {record.seconds / max(epochs, 1):.2f} | "
          f"{record.seconds:.1f} | {scoring:.1f} | {total:.1f} | {peak:,.0f} | {recall:.4f} | "
          f"{'warm' if warm else 'cold'} |")
    print(f"influence: min {influence.min():.4g}, max {influence.max():.4g}, zeros {(influence == 0).sum()}; "
          f"final loss {record.losses[-1]:.4f}")


if __name__ == "__main__":
    main()
