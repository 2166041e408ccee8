"""``goracs-run``: the only module that reads the composed config; it wires the stages together.

    data -> samples -> (lazy, cached) features -> selection -> LoRA fine-tuning -> evaluation -> metrics.json
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("goracs.run")

USER_ERRORS = (ValueError, FileNotFoundError, KeyError)
# conf/ sits beside the package (editable install); an absolute path works for `goracs-run` and `python -m`.
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Console entry; user mistakes end with a one-paragraph message and exit code 2, not a traceback."""
    try:
        metrics = run(cfg)
    except Exception as e:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            log.error("job failed, the sweep goes on: %s: %s", type(e).__name__, e)
            return math.inf  # recorded as failed in metrics.json; the worst objective for a minimising sweeper
        if isinstance(e, USER_ERRORS):
            log.error("%s: %s", type(e).__name__, e)
            raise SystemExit(2) from None
        raise
    return objective(metrics)


def objective(metrics: dict | None) -> float:
    """What a Hydra sweeper minimises: the job's best validation loss (``train/best_val_loss``), never a test
    metric, so tuning cannot leak the test set. ``+inf`` (the worst value, never the best trial) when the job failed
    or did not validate (``selection=none``, an empty validation split): Optuna 2.x refuses a NaN objective and would
    end the whole search."""
    value = (metrics or {}).get("train/best_val_loss")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.inf


def run(cfg: DictConfig) -> dict:
    """Run one job and return its metrics.json content (also written to the job folder)."""
    from goracs.run_record import RunRecord
    from goracs import tracking

    hc = HydraConfig.get()
    out_dir = Path(cfg.paths.output_dir)
    choices = hc.runtime.choices
    identity = {"data": cfg.data.name, "task": cfg.task.name, "model": cfg.model.name,
                "selection": choices.get("selection"), "budget": int(cfg.budget), "seed": int(cfg.seed),
                "experiment": cfg.experiment_name, "variant": _variant(hc.overrides.task)}
    job_config = OmegaConf.to_container(cfg, resolve=True)
    record = RunRecord(out_dir, identity, job_config, list(hc.overrides.task), Path(cfg.paths.root))
    previous = record.finished_before() if cfg.resume and cfg.stage == "all" else None
    if previous is not None:
        log.info("skipping %s: metrics.json already says ok for this config (resume=false to rerun)", out_dir)
        return previous
    record.write()
    loggers: list = []
    failed = True
    try:
        metrics = _stages(cfg, record, out_dir, loggers, job_config)
        failed = False
        return metrics
    except Exception as e:
        # A user mistake gets its one-paragraph message from main(); the traceback is only for debugging.
        log.log(logging.DEBUG if isinstance(e, USER_ERRORS) else logging.ERROR, "job failed", exc_info=True)
        record.update({"status": "failed", "error": f"{type(e).__name__}: {e}"})
        raise
    finally:
        tracking.finish(loggers, failed=failed)
        _free_accelerator()


def _stages(cfg: DictConfig, record, out_dir: Path, loggers: list, job_config: dict) -> dict:
    from goracs import tracking
    from goracs.data import prepare_samples, sample_stats

    t0 = time.perf_counter()
    samples = prepare_samples(data=_plain(cfg.data), task=_plain(cfg.task), seed=int(cfg.data_seed),
                              cache_dir=Path(cfg.paths.cache_dir))
    stats = sample_stats(samples)
    record.update({"time/data_s": time.perf_counter() - t0, **{f"data/{k}": v for k, v in stats.items()}})
    if cfg.stage == "data":
        _print_table(f"{cfg.data.name} / {cfg.task.name}", stats)
        record.update({"status": "ok"})
        return record.data

    t0 = time.perf_counter()
    pool = _build_pool(samples, cfg)
    selector = instantiate(cfg.selection)
    method = HydraConfig.get().runtime.choices.get("selection")
    result, indices_path = _select(selector, pool, cfg, method, out_dir)
    pool.features.release()  # the feature backbone is not needed for fine-tuning, which loads its own copy
    feature_s = pool.features.seconds
    select_metrics = {f"select/{k}": v for k, v in result.stats.items()}
    record.update({"time/features_s": feature_s, "time/select_s": time.perf_counter() - t0 - feature_s,
                   "n_selected": len(result.indices), **select_metrics,
                   **{f"select/{k}": v for k, v in result.traces.items()}})
    if cfg.stage == "select":
        record.update({"status": "ok"})
        _print_table(f"selection {method}, budget {cfg.budget}", {**select_metrics, "n_selected": len(result.indices)})
        return record.data

    loggers.extend(tracking.build_loggers(_plain(cfg.logger)))
    timings, test_metrics = _fine_tune_and_evaluate(samples, result.indices, cfg, loggers, out_dir)
    record.update({**timings, **test_metrics, "status": "ok"})
    tracking.log_outside_trainer(loggers, job_config, {**test_metrics, **{k: v for k, v in select_metrics.items()
                                 if isinstance(v, (int, float))}},
                                 {f"select/{k}": v for k, v in result.traces.items()}, indices_path)
    _print_table(f"{cfg.data.name} / {cfg.task.name} / {cfg.model.name} / {method} / budget {cfg.budget} "
                f"/ seed {cfg.seed}", {**test_metrics, **timings})
    return record.data


def _build_pool(samples, cfg: DictConfig):
    """The selection pool: train samples, with features computed lazily (random/full never trigger a model)."""
    from goracs.features import FeatureStore
    from goracs.selection import Pool

    store = FeatureStore(samples, instantiate(cfg.model.backbone), instantiate(cfg.model.lora), cfg.model.lora_init,
                         faithful=bool(cfg.task.faithful_prompts), config=_plain(cfg.features),
                         cache_dir=Path(cfg.paths.cache_dir))
    labels = valid_labels = None
    if cfg.task.name == "ctr":  # class labels drive GORACS's label-enhanced selection and CCS/Moderate classes
        labels = samples.train["label"].to_numpy(dtype=np.int64)
        valid_labels = samples.valid["label"].to_numpy(dtype=np.int64)
    groups = samples.train["user"].astype(str).to_numpy()
    return Pool(size=len(samples.train), features=store, labels=labels, valid_labels=valid_labels, groups=groups)


def _select(selector, pool, cfg: DictConfig, method: str, out_dir: Path):
    """Select (or read the cached selection for the same samples, features, method, budget and seed)."""
    import json

    from goracs.cache import DiskCache, config_key
    from goracs.selection import SelectionResult

    budget = int(cfg.budget)
    if budget <= 0:  # checked before any feature is computed
        raise ValueError(f"budget={budget}: expected a positive number of training samples")
    if not getattr(selector, "budget_free", False) and budget > pool.size:
        raise ValueError(f"budget={budget} is larger than the training pool ({pool.size} samples); lower budget= "
                         f"or raise data.max_train, or use selection=full")
    spec = {k: _plain(cfg[k]) for k in ("data", "task", "features", "selection")}
    spec.update(model={k: _plain(cfg.model[k]) for k in ("backbone", "lora")} | {"lora_init": cfg.model.lora_init},
                budget=budget, seed=int(cfg.seed), data_seed=int(cfg.data_seed), method=method)
    key = config_key(spec)
    cache = DiskCache(cfg.paths.cache_dir)
    hit = cache.lookup("selections", key, "npz")
    if hit is not None:
        with np.load(hit, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            result = SelectionResult(indices=z["indices"], scores=z["scores"] if z["scores"].size else None,
                                     stats=meta["stats"], traces=meta["traces"])
        log.info("selection read from cache %s", hit)
    else:
        t0 = pool.features.seconds
        result = selector.select(pool, budget, seed=int(cfg.seed))
        # Features are computed lazily inside select(): keep them out of the method's time, which compares methods.
        if "time_s" in result.stats:
            own = max(float(result.stats["time_s"]) - (pool.features.seconds - t0), 0.0)
            result = dataclasses.replace(result, stats={**result.stats, "time_s": own})

        def write(p: Path) -> None:
            meta = json.dumps({"stats": result.stats, "traces": result.traces}, default=float)
            scores = result.scores if result.scores is not None else np.zeros(0)
            with open(p, "wb") as f:
                np.savez(f, indices=result.indices, scores=scores, meta=np.array(meta))

        cache.store("selections", key, "npz", write, spec)
    indices_path = out_dir / "selected_indices.json"
    indices_path.write_text(json.dumps({"method": method, "budget": budget, "seed": int(cfg.seed),
                                        "indices": result.indices.tolist()}))
    log.info("selected %d of %d samples with %s", len(result.indices), pool.size, method)
    return result, indices_path


def _fine_tune_and_evaluate(samples, indices: np.ndarray, cfg: DictConfig, loggers: list, out_dir: Path):
    import lightning

    from goracs.evaluation.evaluate import evaluate
    from goracs.models.finetune import fine_tune
    from goracs.models.encoding import tokenizer_corpus
    from goracs.models.lora import attach_lora

    lightning.seed_everything(int(cfg.seed), workers=True, verbose=False)
    t0 = time.perf_counter()
    model, tokenizer = instantiate(cfg.model.backbone).load(tokenizer_corpus(samples))
    # Same phi_0 as the gradient features (features.lora_seed), as the paper starts both from the Alpaca LoRA.
    model = attach_lora(model, instantiate(cfg.model.lora), cfg.model.lora_init, seed=int(cfg.features.lora_seed))
    timings = {"train/epochs": 0, "train/steps": 0, "train/best_val_loss": math.nan}
    if len(indices):
        # The official --seed only shuffles the coreset order; the selected rows themselves are fixed by the selection.
        order = np.random.default_rng(int(cfg.seed)).permutation(indices)
        train = samples.train.iloc[order].reset_index(drop=True)
        fit = fine_tune(model, tokenizer, train, samples.valid, task=cfg.task.name,
                        faithful=bool(cfg.task.faithful_prompts), trainer=_plain(cfg.trainer), logger=loggers or None,
                        out_dir=out_dir, seed=int(cfg.seed))
        timings = {"train/best_val_loss": fit.best_val_loss, "train/epochs": fit.epochs, "train/steps": fit.steps}
    else:
        log.info("no training sample selected: evaluating the initial adapter as it is")
    t1 = time.perf_counter()
    from goracs.cache import config_key
    from goracs.evaluation.records import FILENAME, write_records

    result = evaluate(model, tokenizer, samples.test, samples.items, task=cfg.task.name,
                      faithful=bool(cfg.task.faithful_prompts), cache_dir=cfg.paths.cache_dir,
                      model_key=config_key(_plain(cfg.model.backbone)), **_plain(cfg.eval))
    write_records(result.records, out_dir / FILENAME)
    t2 = time.perf_counter()
    timings = {"time/train_s": t1 - t0, "time/eval_s": t2 - t1, **timings}
    return timings, {f"test/{k}": v for k, v in result.metrics.items()}


def _print_table(title: str, values: dict) -> None:
    """The CLI's final summary (stdout)."""
    rows = [(k, f"{v:.4f}" if isinstance(v, float) else v) for k, v in values.items() if not isinstance(v, list)]
    width = max((len(k) for k, _ in rows), default=10)
    print(f"\n{title}\n" + "-" * max(len(title), width + 12))
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def _variant(overrides) -> str:
    """The job's overrides beyond the table axes, e.g. "selection.lam=0.0" (report rows for ablations)."""
    axes = {"budget", "seed", "selection", "data", "task", "model", "experiment", "experiment_name", "resume",
            "stage", "logger", "hparams_search"}
    rest = sorted(o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in axes)
    return ",".join(rest) or "default"


def _plain(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if node is not None else {}


def _free_accelerator() -> None:
    import sys

    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
