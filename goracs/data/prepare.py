"""``prepare_samples``: the data stage's entry point (config dicts in, cached ``Samples`` out)."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from goracs.cache import DiskCache, config_key
from goracs.data.samples import SampleOptions, Samples, build_samples, validate_options
from goracs.data.store import read_samples, write_samples
from goracs.data.tables import clean_tables
from goracs.errors import ConfigError
from goracs.option_types import check_types
from goracs.task_protocol import Task

log = logging.getLogger(__name__)

_TABLE_KEYS = {"name", "domain", "source", "min_title_len", "append_brand"}
_OPTION_KEYS = {f.name for f in dataclasses.fields(SampleOptions)}


def prepare_samples(data: dict[str, Any], task: Task, seed: int,
                    cache_dir: str | Path | None) -> Samples:
    """Load, clean and window the data set described by ``data``, for the task described by ``task``.

    ``data`` (``OmegaConf.to_container(cfg.data, resolve=True)``): ``name``, ``domain``, ``source`` (a node with
    ``_target_`` giving a ``TableSource``), the title rules ``min_title_len`` (keep titles longer than this, default
    1) and ``append_brand`` (default false), and the ``SampleOptions`` keys. ``task``: a
    :class:`goracs.task_protocol.Task`, whose ``name``, ``faithful_prompts`` and ``like_threshold`` (label = rating >
    it) matter here. The result is cached under ``cache_dir/samples/<key>.jsonl.gz``, the key
    hashing ``data``, those three task keys and ``seed`` (``cache_dir=None`` disables the cache).
    """
    options = check_data_options(data)
    task_name, faithful, like_threshold = task.name, bool(task.faithful_prompts), float(task.like_threshold)
    spec = {"data": data, "task": {"name": task_name, "faithful_prompts": faithful, "like_threshold": like_threshold},
            "seed": int(seed)}
    cache = DiskCache(cache_dir) if cache_dir is not None else None
    key = config_key(spec)
    if cache is not None and (hit := cache.lookup("samples", key, "jsonl.gz")) is not None:
        log.info("samples for %s/%s: cache hit %s", data["name"], task_name, hit)
        return read_samples(hit, like_threshold=like_threshold, faithful=faithful, task=task)

    start = time.perf_counter()
    source = _instantiate(data["source"])
    tables = clean_tables(source.load(), min_title_len=int(data.get("min_title_len", 1)),
                          append_brand=bool(data.get("append_brand", False)), name=data["name"])
    samples = build_samples(tables, task=task, domain=data["domain"], name=data["name"],
                            like_threshold=like_threshold, faithful=faithful, options=options, seed=int(seed))
    log.info("samples for %s/%s built in %.1f s: %d train, %d valid, %d test", data["name"], task_name,
             time.perf_counter() - start, len(samples.train), len(samples.valid), len(samples.test))
    if cache is not None:
        path = cache.store("samples", key, "jsonl.gz", lambda p: write_samples(samples, p), spec=spec)
        log.info("samples cached at %s", path)
    return samples


def check_data_options(data: dict[str, Any]) -> SampleOptions:
    """The ``data`` node's keys, types and values, checked without reading a file (``goracs-run`` calls it before
    any stage; :func:`prepare_samples` again); returns its :class:`SampleOptions`. A mistake is a
    :class:`~goracs.errors.ConfigError` naming the key (``data.max_train=0; expected a positive sample count``)."""
    unknown = set(data) - _TABLE_KEYS - _OPTION_KEYS
    if unknown:
        raise ConfigError(f"{', '.join(f'data.{k}' for k in sorted(unknown))}: unknown data option"
                          f"{'s' if len(unknown) > 1 else ''}; expected one of {sorted(_TABLE_KEYS | _OPTION_KEYS)}")
    for required in ("name", "domain", "source"):
        if required not in data:
            raise ConfigError(f"data.{required} is missing from the data config")
    check_types(_table_options, {k: v for k, v in data.items() if k in _TABLE_KEYS - {"source"}}, "data")
    values = {k: v for k, v in data.items() if k in _OPTION_KEYS}
    check_types(SampleOptions, values, "data")
    options = SampleOptions(**values)
    try:
        validate_options(options, domain=data["domain"])
    except ValueError as e:  # the checks name the key (data.domain=..., data.max_train=...)
        raise ConfigError(str(e)) from None
    return options


def _table_options(name: str, domain: str, min_title_len: int = 1, append_brand: bool = False) -> None:
    """The table-level keys of ``data`` (besides ``source``) and their types: the schema :func:`check_data_options`
    holds them to (``clean_tables`` and the prompts read them)."""


def _instantiate(node: dict[str, Any]):
    """``hydra.utils.instantiate`` with a user mistake in the constructor re-raised as itself, not wrapped."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    if not isinstance(node, dict) or "_target_" not in node:
        raise ValueError(f"data.source must be a node with a _target_ (a loader class), got {node!r}")
    try:
        source = instantiate(node)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, (ValueError, FileNotFoundError, TypeError)):
            raise type(cause)(f"data.source ({node['_target_']}): {cause}") from None
        raise
    if not callable(getattr(source, "load", None)):
        raise ValueError(f"data.source._target_={node['_target_']!r} gives no object with a load() method")
    return source
