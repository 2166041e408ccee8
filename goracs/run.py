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

from goracs.errors import ConfigError, UserError, integer_option
from goracs.sweep_summary import write_outcome

log = logging.getLogger("goracs.run")

# Hydra's config_path, absolute (works for `goracs-run`, `python -m` and any cwd): a checkout (editable install) uses
# the repository's conf/ beside the package; a wheel install uses the copy shipped inside it as goracs/conf/
# (pyproject.toml: package goracs.conf = conf/*.yaml). A checkout is told by its pyproject.toml, so a stray top-level
# conf/ folder in site-packages is never taken for ours.
_CHECKOUT = Path(__file__).resolve().parents[1]
_IN_CHECKOUT = (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "conf" / "config.yaml").is_file()
CONF_DIR = str(_CHECKOUT / "conf" if _IN_CHECKOUT else Path(__file__).resolve().parent / "conf")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Console entry. A :class:`~goracs.errors.UserError` (a mistake in the config or inputs) ends a single run with
    a one-paragraph message and exit status 2; any other exception keeps its traceback. In a multirun a failed job
    is logged (with its traceback unless a user error) and the sweep goes on; ``goracs.sweep_summary`` then prints
    every job's outcome and exits 1 when one failed."""
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    job_dir = HydraConfig.get().runtime.output_dir
    try:
        metrics = run(cfg)
    except Exception as e:
        if not multirun:
            if isinstance(e, UserError):
                log.error("%s", e)
                raise SystemExit(2) from None
            raise
        if isinstance(e, UserError):
            log.error("job failed, the sweep goes on: %s", e)
        else:
            log.exception("job failed, the sweep goes on")
        write_outcome(job_dir, "failed", e)
        return math.inf  # recorded as failed in metrics.json; the worst objective for a minimising sweeper
    if multirun:
        write_outcome(job_dir, "skipped" if metrics.get("skipped") else "ok")
    return objective(metrics)


def objective(metrics: dict | None) -> float:
    """What a Hydra sweeper minimises: the job's best validation loss (``train/best_val_loss``), never a test
    metric, so tuning cannot leak the test set. ``+inf`` (the worst value, never the best trial) when the job failed
    or did not validate (``selection=none``, an empty validation split): Optuna 2.x refuses a NaN objective and would
    end the whole search."""
    value = (metrics or {}).get("train/best_val_loss")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.inf


def run(cfg: DictConfig) -> dict:
    """Run one job and return its metrics.json content (also written to the job folder); with ``skipped: True``
    added when ``resume`` found the job already done."""
    from goracs.run_record import RunRecord
    from goracs import tracking

    hc = HydraConfig.get()
    for key, expected in (("budget", "an integer number of samples"), ("seed", "an integer seed"),
                          ("data_seed", "an integer seed")):
        integer_option(cfg[key], key, expected)
    if cfg.stage not in ("data", "select", "all"):
        raise ConfigError(f"stage={cfg.stage}: expected data, select or all")
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
        return {**previous, "skipped": True}
    if record.interrupted_before():
        log.warning("%s: metrics.json says a job is running here (a killed job?); taking over the folder, and "
                    "fine-tuning resumes from its last checkpoint if it left one", out_dir)
    record.write()
    loggers: list = []
    failed = True
    try:
        metrics = _stages(cfg, record, out_dir, loggers, job_config)
        failed = False
        return metrics
    except Exception as e:
        # A user mistake gets its one-paragraph message from main(); the traceback is only for debugging.
        log.debug("job failed", exc_info=True)  # main() reports it (with its traceback unless a user error)
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

    loggers.extend(tracking.build_loggers(_plain(cfg.logger)))
    tracking.start(loggers, job_config)  # from the first stage on: a crash or stage=select still reaches W&B
    t0 = time.perf_counter()
    pool = _build_pool(samples, cfg)
    selector = instantiate(cfg.selection)
    method = HydraConfig.get().runtime.choices.get("selection")
    result, indices_path = _select(selector, pool, cfg, method, out_dir)
    if len(result.indices):  # the official training-file format, so the official scripts can train on the coreset
        from goracs.exports import write_official_coreset

        write_official_coreset(samples.train, result.indices, out_dir / "coreset_official.json", task=cfg.task.name)
    pool.features.release()  # the feature backbone is not needed for fine-tuning, which loads its own copy
    feature_s = pool.features.seconds
    select_metrics = {f"select/{k}": v for k, v in result.stats.items()}
    record.update({"time/features_s": feature_s, "time/select_s": time.perf_counter() - t0 - feature_s,
                   "n_selected": len(result.indices), **select_metrics,
                   **{f"select/{k}": v for k, v in result.traces.items()}})
    tracking.log_selection(loggers, {**select_metrics, "time/features_s": feature_s},
                           {f"select/{k}": v for k, v in result.traces.items()}, indices_path)
    if cfg.stage == "select":
        record.update({"status": "ok"})
        _print_table(f"selection {method}, budget {cfg.budget}", {**select_metrics, "n_selected": len(result.indices)})
        return record.data

    timings, test_metrics = _fine_tune_and_evaluate(samples, result.indices, cfg, loggers, out_dir)
    record.update({**timings, **test_metrics, "status": "ok"})
    tracking.log_results(loggers, {**test_metrics, **timings})
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

    budget = int(cfg.budget)
    if budget <= 0:  # checked before any feature is computed
        raise ConfigError(f"budget={budget}: expected a positive number of training samples")
    if not getattr(selector, "budget_free", False) and budget > pool.size:
        raise ConfigError(f"budget={budget} is larger than the training pool ({pool.size} samples); lower budget= "
                         f"or raise data.max_train, or use selection=full")
    # The key: what determines the picks. The model by its fingerprint (adapter by content, not path); of the
    # feature options only those that change feature values (never batch sizes, device or process count).
    store = pool.features
    spec = {k: _plain(cfg[k]) for k in ("data", "task", "selection")}
    spec.update(model=store.fingerprint, features=store.cfg.value_spec(), budget=budget, seed=int(cfg.seed),
                data_seed=int(cfg.data_seed), method=method)
    key = config_key(spec)
    cache = DiskCache(cfg.paths.cache_dir)
    with cache.claim("selections", key, "npz") as hit:  # parallel jobs with one selection: one computes, rest read
        if hit is not None:
            result = _read_selection(hit)
        else:
            result = _compute_selection(selector, pool, budget, int(cfg.seed))
            meta = json.dumps({"stats": result.stats, "traces": result.traces}, default=float)
            scores = result.scores if result.scores is not None else np.zeros(0)

            def write(p: Path) -> None:
                with open(p, "wb") as f:
                    np.savez(f, indices=result.indices, scores=scores, meta=np.array(meta))

            cache.store("selections", key, "npz", write, spec)
    indices_path = out_dir / "selected_indices.json"
    indices_path.write_text(json.dumps({"method": method, "budget": budget, "seed": int(cfg.seed),
                                        "indices": result.indices.tolist()}))

    log.info("selected %d of %d samples with %s", len(result.indices), pool.size, method)
    return result, indices_path


def _read_selection(path: Path):
    import json

    from goracs.selection import SelectionResult

    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        result = SelectionResult(indices=z["indices"], scores=z["scores"] if z["scores"].size else None,
                                 stats=meta["stats"], traces=meta["traces"])
    log.info("selection read from cache %s", path)
    return result


def _compute_selection(selector, pool, budget: int, seed: int):
    t0 = pool.features.seconds
    result = selector.select(pool, budget, seed=seed)
    # Features are computed lazily inside select(): keep them out of the method's time, which compares methods.
    if "time_s" in result.stats:
        own = max(float(result.stats["time_s"]) - (pool.features.seconds - t0), 0.0)
        result = dataclasses.replace(result, stats={**result.stats, "time_s": own})
    return result


def _fine_tune_and_evaluate(samples, indices: np.ndarray, cfg: DictConfig, loggers: list, out_dir: Path):
    import lightning

    from goracs.evaluation.evaluate import evaluate
    from goracs.exports import save_adapter
    from goracs.models.finetune import fine_tune
    from goracs.models.encoding import tokenizer_corpus
    from goracs.models.lora import attach_lora

    lightning.seed_everything(int(cfg.seed), workers=True, verbose=False)
    t0 = time.perf_counter()
    backbone = instantiate(cfg.model.backbone)
    model, tokenizer = backbone.load(tokenizer_corpus(samples))
    # Same phi_0 as the gradient features (features.lora_seed), as the paper starts both from the Alpaca LoRA.
    model = attach_lora(model, instantiate(cfg.model.lora), cfg.model.lora_init, seed=int(cfg.features.lora_seed))
    timings = {"train/epochs": 0, "train/steps": 0, "train/best_val_loss": math.nan}
    if len(indices):
        # The official --seed only shuffles the coreset order; the selected rows themselves are fixed by the selection.
        order = np.random.default_rng(int(cfg.seed)).permutation(indices)
        train = samples.train.iloc[order].reset_index(drop=True)
        fit = fine_tune(model, tokenizer, train, samples.valid, task=cfg.task.name,
                        faithful=bool(cfg.task.faithful_prompts), trainer=_plain(cfg.trainer), logger=loggers or None,
                        out_dir=out_dir, seed=int(cfg.seed), resume=bool(cfg.resume))  # a killed job resumes
        timings = {"train/best_val_loss": fit.best_val_loss, "train/epochs": fit.epochs, "train/steps": fit.steps,
                   "train/resumed": fit.resumed_from is not None}
        if _sharded(cfg) and fit.ckpt is not None:
            # FSDP wrapped the decoder layers in place: evaluate a fresh model carrying the best adapter.
            model = _fresh_with_adapter(backbone, samples, cfg, fit.ckpt)
        save_adapter(model, out_dir / "adapter")  # a PEFT folder: PeftModel.from_pretrained(base, out_dir/adapter)
    else:
        log.info("no training sample selected: evaluating the initial adapter as it is")
    t1 = time.perf_counter()
    from goracs.cache import config_key
    from goracs.evaluation.records import FILENAME, write_records

    result = evaluate(model, tokenizer, samples.test, samples.items, task=cfg.task.name,
                      faithful=bool(cfg.task.faithful_prompts), cache_dir=cfg.paths.cache_dir,
                      # The base model only (the adapter is off for title embeddings): the fingerprint's backbone.
                      model_key=config_key(backbone.spec()), **_plain(cfg.eval))
    write_records(result.records, out_dir / FILENAME)
    t2 = time.perf_counter()
    timings = {"time/train_s": t1 - t0, "time/eval_s": t2 - t1, **timings}
    return timings, {f"test/{k}": v for k, v in result.metrics.items()}


def _sharded(cfg: DictConfig) -> bool:
    return "fsdp" in str(cfg.trainer.lightning.get("strategy", "")).lower()


def _fresh_with_adapter(backbone, samples, cfg: DictConfig, ckpt: Path):
    """A newly loaded backbone with the adapter of checkpoint ``ckpt`` (trainable tensors only)."""
    import torch

    from goracs.models.encoding import tokenizer_corpus
    from goracs.models.lora import attach_lora
    from goracs.models.module import LoraRecModule

    model, _ = backbone.load(tokenizer_corpus(samples))
    model = attach_lora(model, instantiate(cfg.model.lora), cfg.model.lora_init, seed=int(cfg.features.lora_seed))
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]  # our own checkpoint file
    LoraRecModule(model, task=cfg.task.name, lr=1.0, answer_ids=(0, 1)).load_trainable(state)
    log.info("evaluating a fresh model with the best adapter from %s (FSDP wrapped the trained one)", ckpt)
    return model


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
