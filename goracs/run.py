"""``goracs-run``: the only module that reads the composed config; it wires the stages together.

    data -> samples -> (lazy, cached) features -> selection -> LoRA fine-tuning -> evaluation -> metrics.json
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from goracs import tracking
from goracs.cache import config_key
from goracs.config import build
from goracs.config_dir import CONF_DIR  # Hydra's config_path: the checkout's conf/ or the wheel's copy
from goracs.data import prepare_samples, sample_stats
from goracs.command_line import check_command_line
from goracs.errors import UserError
from goracs.evaluation.records import FILENAME, write_records
from goracs.job_check import check_job
from goracs.job_devices import pin_job_device
from goracs.ranks import hand_over, process_rank, runs_several_processes, take_over
from goracs.run_record import RunRecord, selection_metrics, sweep_objective
from goracs.selection import build_pool
from goracs.selection.cache import cached_select
from goracs.sweep_summary import write_outcome

log = logging.getLogger("goracs.run")


def main() -> None:
    """Console entry (``goracs-run``). The command line's overrides are composed first
    (:func:`goracs.command_line.check_command_line`): one Hydra cannot compose ends with one line and exit status 2;
    then Hydra runs :func:`job` (once, or per sweep job)."""
    try:
        check_command_line(sys.argv[1:], CONF_DIR)
    except UserError as e:
        print(f"goracs-run: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    job()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def job(cfg: DictConfig) -> float | None:
    """One job. A :class:`~goracs.errors.UserError` (a mistake in the config or inputs) ends a single run with
    a one-paragraph message and exit status 2; any other exception keeps its traceback. In a multirun a failed job
    is logged (with its traceback unless a user error) and the sweep goes on; ``goracs.sweep_summary`` then prints
    every job's outcome and exits 1 when one failed."""
    hc = HydraConfig.get()
    multirun, job_dir = hc.mode == RunMode.MULTIRUN, hc.runtime.output_dir
    # Jobs side by side (joblib launcher): this job's process gets its own GPU, before torch touches CUDA.
    pin_job_device(hc, OmegaConf.select(cfg, "trainer.lightning.devices", default=1))
    task = get_class(cfg.task._target_)  # its objective and direction (class attributes): what the sweeper gets
    try:
        metrics = run(cfg)
        if "rank" in metrics:
            return None  # a rank > 0 of a multi-process fit: rank 0 reports the job
    except Exception as e:
        if not multirun:
            if isinstance(e, UserError):
                log.error("%s", e)
                raise SystemExit(2) from None
            raise
        # a user error in one paragraph, anything else with its traceback
        (log.error if isinstance(e, UserError) else log.exception)("job failed, the sweep goes on: %s", e)
        write_outcome(job_dir, "failed", e)
        return sweep_objective(None, task)  # recorded as failed in metrics.json; the worst objective
    if multirun:
        write_outcome(job_dir, "skipped" if metrics.get("skipped") else "ok")
    return sweep_objective(metrics, task)


def run(cfg: DictConfig) -> dict:
    """Run one job and return its metrics.json content (also written to the job folder); with ``skipped: True``
    added when ``resume`` found the job already done."""
    hc = HydraConfig.get()
    # Every option, before any stage: a typo costs milliseconds, not the features and the fit before it.
    check_job(cfg, overrides=list(hc.overrides.task), method=hc.runtime.choices.get("selection"),
              multirun=hc.mode == RunMode.MULTIRUN)
    arithmetic = {}  # dtype auto -> the dtype it means on this machine, before the job's key is taken
    if cfg.stage != "data":
        from goracs.models.arithmetic import settle_dtypes  # imports torch: not for stage=data

        arithmetic = settle_dtypes(cfg.model.backbone, cfg.features)
    job = OmegaConf.to_container(cfg, resolve=True)  # the resolved config; its nodes go to the stages as plain dicts
    # The task's keys without its class: the caches hash the keys (a task is named by its name), as before.
    job["task"] = {k: v for k, v in job["task"].items() if k != "_target_"}
    rank = process_rank()
    if rank != 0:  # a rank that the fit's launcher re-executed: it joins rank 0's fit and writes nothing
        return _join_fit(cfg, job, rank)
    identity = {"data": cfg.data.name, "task": cfg.task.name, "model": cfg.model.name,
                "selection": hc.runtime.choices.get("selection"), "budget": int(cfg.budget), "seed": int(cfg.seed),
                "experiment": cfg.experiment_name}
    record = RunRecord(Path(cfg.paths.output_dir), identity, job, list(hc.overrides.task), Path(cfg.paths.root))
    previous = record.start(resume=bool(cfg.resume) and cfg.stage == "all")
    if previous is not None:
        return previous
    record.update(arithmetic)  # run/dtype, run/cpu_capability, ...: the arithmetic the job's figures come from
    loggers: list = []
    try:
        return _stages(cfg, job, record, loggers)
    except Exception as e:
        record.fail(e)  # main() reports it (with its traceback unless a user error)
        raise
    finally:  # every stage ends with status ok; anything else (an error, Ctrl-C) closes W&B as failed
        tracking.finish(loggers, failed=record.data["status"] != "ok")
        torch = sys.modules.get("torch")  # a multirun's jobs share the process: free its accelerator memory
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()


def _stages(cfg: DictConfig, job: dict, record: RunRecord, loggers: list) -> dict:
    t0, out_dir, cache_dir = time.perf_counter(), Path(cfg.paths.output_dir), Path(cfg.paths.cache_dir)
    task = build(cfg.task, "task")  # its _target_ class (goracs.tasks); every stage receives it (prompts, encoding, loss, metrics)
    samples = prepare_samples(data=job["data"], task=task, seed=int(cfg.data_seed), cache_dir=cache_dir)
    stats = sample_stats(samples, task)
    record.update({"time/data_s": time.perf_counter() - t0, **{f"data/{k}": v for k, v in stats.items()}})
    if cfg.stage == "data":
        return record.done(f"{cfg.data.name} / {cfg.task.name}", stats)

    loggers.extend(tracking.build_loggers(job["logger"]))
    tracking.start(loggers, job)  # from the first stage on: a crash or stage=select still reaches W&B
    t0 = time.perf_counter()
    from goracs.exports import export_selection  # torch, peft: imported here, their import time in time/select_s
    from goracs.features import FeatureStore
    # The stage nodes' _target_s (FeatureConfig, TrainerConfig, a partial evaluate), built before any feature is
    # computed, so that a mistyped key of a later stage fails now.
    features, trainer, evaluate = (build(job[name], name) for name in ("features", "trainer", "eval"))
    store = FeatureStore(samples, instantiate(cfg.model.backbone), instantiate(cfg.model.lora), cfg.model.lora_init,
                         faithful=task.faithful_prompts, config=features, cache_dir=cache_dir,
                         task=task)
    pool, selector = build_pool(samples, store, task), instantiate(cfg.selection)  # features: computed when asked
    method = HydraConfig.get().runtime.choices.get("selection")
    identity = {**{k: job[k] for k in ("data", "task", "selection")}, "data_seed": int(cfg.data_seed),
                "method": method}  # with the model, feature values, budget and seed: the selection cache's key
    result = cached_select(selector, pool, int(cfg.budget), seed=int(cfg.seed), identity=identity, cache_dir=cache_dir)
    indices_path = export_selection(out_dir, samples.train, result.indices, method=method, budget=cfg.budget,
                                    seed=cfg.seed, task=task)
    store.release()  # the feature backbone is not needed for fine-tuning, which loads its own copy
    record.update(selection_metrics(result, features_s=store.seconds,
                                    select_s=time.perf_counter() - t0 - store.seconds))
    tracking.log_selection(loggers, result, store.seconds, indices_path)
    if cfg.stage == "select":
        summary = {**{f"select/{k}": v for k, v in result.stats.items()}, "n_selected": len(result.indices)}
        return record.done(f"selection {method}, budget {cfg.budget}", summary)

    if runs_several_processes(trainer.lightning):  # the other ranks, re-executed by the fit, train on these rows
        hand_over(out_dir, record.data["config_key"], result.indices)
    t0 = time.perf_counter()
    backbone = instantiate(cfg.model.backbone)
    model, tokenizer, fit = _fit(cfg, backbone, samples, result.indices, task, trainer, loggers)
    t1 = time.perf_counter()
    evaluation = evaluate(model, tokenizer, samples.test, samples.items, task=task,
                          faithful=task.faithful_prompts, cache_dir=cfg.paths.cache_dir,
                          # The base model only (the adapter is off for title embeddings): the fingerprint's backbone.
                          model_key=config_key(backbone.spec()))
    write_records(evaluation.records, out_dir / FILENAME)
    timings = {"time/train_s": t1 - t0, "time/eval_s": time.perf_counter() - t1, **fit}
    test_metrics = {f"test/{k}": v for k, v in evaluation.metrics.items()}
    record.update({**timings, **test_metrics})
    tracking.log_results(loggers, {**test_metrics, **timings})
    return record.done(f"{cfg.data.name} / {cfg.task.name} / {cfg.model.name} / {method} / budget {cfg.budget} "
                       f"/ seed {cfg.seed}", {**test_metrics, **timings})


def _join_fit(cfg: DictConfig, job: dict, rank: int) -> dict:
    """Rank ``rank`` > 0 of a multi-process fit (:mod:`goracs.ranks`): the samples from the cache rank 0 filled,
    the selection rank 0 handed over, then the fit, in rank 0's process group. Rank 0 owns every output (exports,
    adapter, evaluation, ``metrics.json``); this rank writes none of them and returns ``{"rank": rank}``."""
    from goracs.run_record import job_key

    out_dir, cache_dir = Path(cfg.paths.output_dir), Path(cfg.paths.cache_dir)
    log.info("rank %d: joining rank 0's fit in %s (rank 0 owns data, features, selection and the outputs)", rank,
             out_dir)
    task = build(cfg.task, "task")
    samples = prepare_samples(data=job["data"], task=task, seed=int(cfg.data_seed), cache_dir=cache_dir)
    indices = np.asarray(take_over(out_dir, job_key(job)), dtype=np.int64)
    _fit(cfg, instantiate(cfg.model.backbone), samples, indices, task, build(job["trainer"], "trainer"), None,
         owner=False)
    log.info("rank %d: fit done; rank 0 saves the adapter and evaluates", rank)
    return {"rank": rank}


def _fit(cfg: DictConfig, backbone, samples, indices, task, trainer, loggers: list | None, owner: bool = True):
    """:func:`goracs.models.coreset_training.train_on_coreset` with the job's LoRA, adapter start, seeds, output
    folder and resume option: the one fit that rank 0 (``owner``) and the other ranks of a multi-process fit run."""
    from goracs.models.coreset_training import train_on_coreset

    return train_on_coreset(
        backbone, samples, indices, lora=instantiate(cfg.model.lora), lora_init=cfg.model.lora_init,
        lora_seed=int(cfg.features.lora_seed), task=task, faithful=task.faithful_prompts, trainer=trainer,
        loggers=loggers, out_dir=Path(cfg.paths.output_dir), seed=int(cfg.seed), resume=bool(cfg.resume),
        owner=owner)


if __name__ == "__main__":
    main()
