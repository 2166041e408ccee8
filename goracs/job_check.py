"""Every option of a job, checked before its first costly stage: :func:`check_job`.

``goracs-run`` calls it right after Hydra has composed the config, before the data stage, the feature cache or
``metrics.json`` see anything. A mistake is a :class:`~goracs.errors.ConfigError` (or an
:class:`~goracs.errors.InputNotFound` for a missing adapter) whose one line names the key, the value and what was
expected; ``goracs-run`` prints it and exits 2. The checks come from the code each node configures, not from a list
kept here:

* keys and value types: the signature of the node's ``_target_`` (:func:`goracs.config.check_options`,
  :mod:`goracs.option_types`), also for the nested Lightning ``Trainer``, ``peft.LoraConfig``, the data loader and
  the loggers;
* ranges and choices: the constructors' own checks (``FeatureConfig``, ``TrainerConfig``, the selectors, the
  backbones, the task) and the stage checks that need no data (``check_data_options``, ``check_eval_options``,
  ``check_lora``, ``resolve_adapter``);
* what only the job as a whole can tell: a CUDA device asked for on a machine without one, a method that ignores the
  budget given ``budget=`` on the command line, and a CTR-only option on a task without classes (SeqRec).

``stage=data`` checks the top-level options, the task and the data (the stages it runs) and imports no torch.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from goracs.config import build, check_options, options
from goracs.config_dir import CONF_DIR
from goracs.errors import ConfigError, UserError, integer_option
from goracs.option_types import check_types

log = logging.getLogger(__name__)

STAGES = ("data", "select", "all")
GROUP_NODES = ("paths", "data", "task", "model", "features", "selection", "trainer", "eval", "logger")
MODEL_KEYS = ("name", "backbone", "lora", "lora_init")
# Options that only a task with answer classes (CTR: like / dislike) reads; a task without (SeqRec) would ignore them.
CLASS_ONLY = {"selection.ctr_normalize_dist": "the distance normalisation of the per-class (label-enhanced) GORACS"}


def check_job(cfg: DictConfig, *, overrides: Sequence[str] = (), method: str | None = None, multirun: bool = False,
              cuda_devices: Callable[[], int] | None = None) -> None:
    """Raise a :class:`~goracs.errors.UserError` for the first option of ``cfg`` (the composed job config) that
    cannot work. ``overrides``: the job's command-line overrides (what the user gave explicitly); ``method``: the
    selection group's choice; ``multirun``: a sweep job (a sweep may cross budget-free methods with budgets);
    ``cuda_devices``: the number of CUDA devices here (default: torch's count)."""
    _check_missing(cfg)
    try:
        job = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        raise ConfigError(" ".join(f"{getattr(e, 'full_key', '')}: {e}".split())) from None
    job.pop("hydra", None)  # a config composed with return_hydra_config (tests, the compose API) carries Hydra's node
    _check_top(job)
    task = _check_task(job["task"])
    _check_data(job["data"])
    if job["stage"] == "data":
        return
    cuda = (cuda_devices or _cuda_devices)()
    given = _given(overrides)
    _check_model(job["model"], cuda)
    _check_features(job["features"], cuda)
    _check_selection(job["selection"], method, task, given, budget=job["budget"], multirun=multirun, cuda=cuda)
    _check_trainer(job["trainer"], cuda)
    _check_eval(job["eval"], cuda)
    _check_logger(job["logger"])


def _check_missing(cfg: DictConfig) -> None:
    missing = sorted(k for k in OmegaConf.missing_keys(cfg) if not k.startswith("hydra."))  # Hydra's own: not ours
    if missing:
        raise ConfigError(f"{missing[0]}=???: a required option has no value; give it on the command line "
                          f"({missing[0]}=...)" + (f"; also missing: {', '.join(missing[1:])}" if missing[1:] else ""))


def _check_top(job: dict) -> None:
    known = set(OmegaConf.load(Path(CONF_DIR) / "config.yaml")) - {"defaults"} | set(GROUP_NODES)
    unknown = sorted(set(job) - known)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown top-level option; expected one of {sorted(known)}")
    budget = integer_option(job["budget"], "budget", "an integer number of samples")
    for key in ("seed", "data_seed"):
        if integer_option(job[key], key, "an integer seed") < 0:
            raise ConfigError(f"{key}={job[key]}: expected an integer seed >= 0")
    if budget < 1:
        raise ConfigError(f"budget={budget}: expected a positive number of samples")
    cutoff = job["cutoff_len"]
    if isinstance(cutoff, bool) or not isinstance(cutoff, int) or cutoff < 1:
        raise ConfigError(f"cutoff_len={cutoff}: expected a positive number of tokens")
    if job["stage"] not in STAGES:
        raise ConfigError(f"stage={job['stage']}: expected data, select or all")
    if not isinstance(job["resume"], bool):
        raise ConfigError(f"resume={job['resume']}: expected true or false")
    if not isinstance(job["tags"], list) or not all(isinstance(t, str) for t in job["tags"]):
        raise ConfigError(f"tags={job['tags']}: expected a list of strings, e.g. tags=[pilot]")


def _check_task(node: dict) -> Any:
    return _built(node, "task")


def _check_data(node: dict) -> None:
    from goracs.data.prepare import check_data_options

    check_data_options(node)
    source = node["source"]
    if not isinstance(source, Mapping) or "_target_" not in source:
        raise ConfigError(f"data.source must be a node with a _target_ (a loader class), got {source!r}")
    _built(source, "data.source")


def _check_model(node: dict, cuda: int) -> None:
    from goracs.models.lora import check_lora, resolve_adapter

    unknown = sorted(set(node) - set(MODEL_KEYS))
    if unknown:
        raise ConfigError(f"model.{unknown[0]}: unknown option; expected one of {list(MODEL_KEYS)}")
    backbone = node["backbone"]
    if not isinstance(backbone, Mapping) or "_target_" not in backbone:
        raise ConfigError(f"model.backbone must be a node with a _target_ (a backbone class), got {backbone!r}")
    _built(backbone, "model.backbone")
    if backbone.get("load_in_8bit"):
        _needs_cuda(cuda, "model.backbone.load_in_8bit", True, "8-bit weights (bitsandbytes)")
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError("model.backbone.load_in_8bit=true: needs the bitsandbytes package (pip install "
                              "bitsandbytes), which is not installed here; or load_in_8bit=false")
    lora = node["lora"]
    if not isinstance(lora, Mapping) or "_target_" not in lora:
        raise ConfigError(f"model.lora must be a node with a _target_ (peft.LoraConfig), got {lora!r}")
    target = get_object(lora["_target_"])
    check_options(target, options(lora), "model.lora")
    check_types(target, options(lora), "model.lora")
    check_lora(lora)
    _built(lora, "model.lora", recursive=True)
    init = node["lora_init"]
    if init is not None:
        if not isinstance(init, str) or not init:
            raise ConfigError(f"model.lora_init={init!r}: expected null, an adapter folder or a hub id")
        resolve_adapter(init)


def _check_features(node: dict, cuda: int) -> None:
    config = _built(node, "features")
    _needs_cuda(cuda, "features.device", config.device, "feature extraction")
    if config.encoder_path and config.text_encoder == "roberta_base" and not Path(config.encoder_path).is_dir():
        from goracs.errors import InputNotFound

        raise InputNotFound(f"features.encoder_path={config.encoder_path!r}: no such folder; expected a Hugging "
                            "Face roberta-base checkpoint folder")
    if config.num_processes > 1 and config.device == "cuda" and config.num_processes > cuda:
        raise ConfigError(f"features.num_processes={config.num_processes}: more processes than the {cuda} CUDA "
                          "device(s) here")


def _check_selection(node: dict, method: str | None, task: Any, given: set[str], *, budget: int, multirun: bool,
                     cuda: int) -> None:
    from goracs.selection.pool import BUDGET_FREE_METHODS

    _built(node, "selection")
    _needs_cuda(cuda, "selection.device", node.get("device"), "the selection's transport solver")
    if method in BUDGET_FREE_METHODS and "budget" in given and not multirun:
        raise ConfigError(f"budget={budget}: selection={method} ignores the budget (it keeps "
                          f"{'every' if method == 'full' else 'no'} training sample); drop budget= or choose a "
                          "method that selects a budget")
    if getattr(task, "answers", None) is None:  # no answer classes (SeqRec): the per-class options cannot apply
        label = str(node.get("label_enhanced", "auto")).lower()
        if label == "true":
            raise ConfigError(f"selection.label_enhanced=true: task={task.name} has no answer classes to select per "
                              "class (CTR only); expected auto or false")
        for key, what in CLASS_ONLY.items():
            if key in given:
                value = json.dumps(node.get(key.split(".", 1)[1]))
                raise ConfigError(f"{key}={value}: {what}, CTR only; task={task.name} has "
                                  "no answer classes and would ignore it")


def _check_trainer(node: dict, cuda: int) -> None:
    config = _built(node, "trainer")
    lightning = config.lightning
    accelerator = lightning.get("accelerator", "auto")
    if accelerator in ("gpu", "cuda"):
        _needs_cuda(cuda, "trainer.lightning.accelerator", accelerator, "fine-tuning")
        devices = lightning.get("devices", "auto")
        if isinstance(devices, int) and not isinstance(devices, bool) and devices > cuda:
            raise ConfigError(f"trainer.lightning.devices={devices}: this machine has {cuda} CUDA device(s)")


def _check_eval(node: dict, cuda: int) -> None:
    from goracs.evaluation.evaluate import check_eval_options

    _built(node, "eval")
    opts = options(node)
    check_eval_options(opts)
    _needs_cuda(cuda, "eval.device", opts.get("device"), "evaluation")


def _check_logger(node: dict) -> None:
    if not isinstance(node, Mapping):
        raise ConfigError(f"logger={node!r}: expected a mapping of named logger nodes (logger=wandb, csv or none)")
    for name, entry in node.items():
        if entry is None:
            continue
        if not isinstance(entry, Mapping) or "_target_" not in entry:
            raise ConfigError(f"logger.{name} must be a node with a _target_ (a Lightning logger), got {entry!r}")
        target = get_object(entry["_target_"])
        check_options(target, options(entry), f"logger.{name}")
        check_types(target, options(entry), f"logger.{name}")
        mode = entry.get("mode")
        if "WandbLogger" in entry["_target_"] and mode not in (None, "offline", "online", "disabled"):
            raise ConfigError(f"logger.{name}.mode={mode!r}: expected offline, online or disabled")


def _built(node: Mapping[str, Any], name: str, *, recursive: bool = False) -> Any:
    """The node's ``_target_`` built (keys and types checked first by :func:`goracs.config.build`); a ValueError
    or TypeError its constructor raises for a value becomes a :class:`ConfigError` naming the node."""
    try:
        if recursive:
            return instantiate(dict(node))
        return build(node, name)
    except UserError:
        raise
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        if isinstance(cause, (ValueError, TypeError)):
            raise ConfigError(_named(name, cause)) from None
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(_named(name, err)) from None


def _named(name: str, err: Exception) -> str:
    text = " ".join(str(err).split())
    return text if text.startswith(name) else f"{name}: {text}"


def _needs_cuda(cuda: int, key: str, value: Any, what: str) -> None:
    wants = value is True or (isinstance(value, str) and (value in ("cuda", "gpu") or value.startswith("cuda:")))
    if wants and cuda < 1:
        shown = "true" if value is True else value
        raise ConfigError(f"{key}={shown}: {what} on CUDA, but this machine has no CUDA device; expected "
                          f"{'false' if value is True else 'cpu (or auto)'}")


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _given(overrides: Sequence[str]) -> set[str]:
    """The keys the command line set (``budget=64`` -> ``budget``; ``+selection.x=1`` -> ``selection.x``)."""
    keys = set()
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        keys.add(key.split("@", 1)[0])
    return keys
