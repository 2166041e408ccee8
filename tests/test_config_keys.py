"""Every key of every config group option is read by the code it configures.

Each option of each group (``conf/<group>/<option>.yaml``) is composed into ``conf/config.yaml`` as ``goracs-run``
would, and its node is checked: a ``_target_`` node's keys must be parameters of the constructor it names (nested
nodes too: ``_target_`` nodes, lists of them, and mappings whose parameter is annotated with a dataclass); a node that
its consumer reads as a plain mapping must hold only the keys that consumer reads. So a key that nothing reads (a
typo, a leftover) fails here, before any run silently ignores it.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_object
from omegaconf import OmegaConf

from goracs.config import HYDRA_KEYS

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
# Not stage nodes: Hydra's own settings, and the global override files (their keys belong to the groups above, and
# tests/test_configs.py composes every one of them into valid stage options).
NOT_NODES = ("hydra", "experiment", "hparams_search")
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in NOT_NODES)
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]


def _source(*parts: str) -> str:
    return "\n".join(p.read_text() for part in parts for p in sorted(REPO.glob(part)))


def _referenced(prefix: str) -> typing.Callable[[str], bool]:
    """A key of a plain-mapping node is read when ``goracs/`` says ``cfg.<prefix>.<key>`` or a config interpolates
    ``${<prefix>.<key>}``."""
    code, yaml = _source("goracs/**/*.py"), _source("conf/**/*.yaml")
    dotted = re.escape(f"{prefix}." if prefix else "")
    return lambda key: bool(re.search(rf"\bcfg\.{dotted}{re.escape(key)}\b", code)
                            or re.search(rf"\$\{{{dotted}{re.escape(key)}[.}}]", yaml))


def _data_keys() -> set[str]:
    from goracs.data import prepare

    return set(prepare._TABLE_KEYS) | set(prepare._OPTION_KEYS)  # what prepare_samples reads (and accepts)


def _node_path(group: str) -> str:
    return {"lora": "model.lora", "selection_task": "selection"}.get(group, group)


def _overrides(group: str, option: str) -> list[str]:
    if group == "lora":
        return [f"lora@model.lora={option}"]
    if group == "selection_task":  # optional selection_task: ${selection}_${task}
        selection, task = option.rsplit("_", 1)
        return [f"selection={selection}", f"task={task}"]
    return [f"{group}={option}"]


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides)


def _parameters(target) -> tuple[set[str] | None, dict[str, typing.Any]]:
    """The keyword names ``target`` takes (None: it takes ``**kwargs``) and their type hints."""
    params = inspect.signature(target).parameters
    try:  # a dataclass's hints are its fields'; another class's are its __init__'s
        hints = typing.get_type_hints(target.__init__ if inspect.isclass(target)
                                      and not dataclasses.is_dataclass(target) else target)
    except Exception:  # third-party annotations that do not evaluate here: no nested dataclass to follow
        hints = {}
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return None, hints
    return {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}, hints


def unread_keys(node, path: str, target=None) -> list[str]:
    """``path.key`` of every key in ``node`` (a composed, unresolved container) that nothing reads."""
    if isinstance(node, list):
        return [k for i, v in enumerate(node) for k in unread_keys(v, f"{path}[{i}]")]
    if not isinstance(node, dict):
        return []
    if "_target_" in node:
        target = get_object(node["_target_"])
    if target is None:
        return [k for key, value in node.items() for k in unread_keys(value, f"{path}.{key}")]
    names, hints = _parameters(target)
    unread = [f"{path}.{key}" for key in node if key not in HYDRA_KEYS and names is not None and key not in names]
    for key, value in node.items():
        hint = hints.get(key)
        nested = hint if isinstance(value, dict) and dataclasses.is_dataclass(hint) else None
        unread += unread_keys(value, f"{path}.{key}", nested)
    return unread


def check_node(group: str, node: dict) -> list[str]:
    """The unread keys of ``group``'s composed node."""
    path = _node_path(group)
    if "_target_" in node or group == "logger":  # the logger node: a mapping of named _target_ nodes
        return unread_keys(node, path)
    if group == "data":  # prepare_samples reads these; data.source is a _target_ node
        readers = _data_keys()
        unread = [f"data.{k}" for k in node if k not in readers]
        return unread + unread_keys(node.get("source"), "data.source")
    if group in ("model", "paths", "task"):  # read as cfg.<group>.<key> by goracs-run, or interpolated by configs
        read = _referenced(group)
        unread = [f"{group}.{k}" for k in node if not read(k)]
        return unread + [k for key, value in node.items() for k in unread_keys(value, f"{group}.{key}")]
    raise AssertionError(f"conf/{group}/: no rule says who reads this group's keys; add one to this test")


def _node(cfg, path: str) -> dict:
    return OmegaConf.to_container(OmegaConf.select(cfg, path), resolve=False)


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_key_of_a_group_option_is_read(group, option):
    cfg = _compose(_overrides(group, option))
    assert check_node(group, _node(cfg, _node_path(group))) == []


def test_every_top_level_key_is_read():
    cfg = _compose([])
    read = _referenced("")
    top = [k for k in cfg if not OmegaConf.is_dict(cfg[k])]  # the group nodes are checked above
    assert top and [k for k in top if not read(k)] == []


@pytest.mark.parametrize(("group", "path", "key"), [
    ("features", "features", "foo"),                     # a _target_ node (FeatureConfig)
    ("features", "features.surrogate", "foo"),           # a nested dataclass node (SurrogateConfig)
    ("trainer", "trainer.lightning", "max_epoch"),       # a nested _target_ node (lightning.pytorch.Trainer)
    ("eval", "eval", "num_beam"),                        # a partial function (evaluate)
    ("model", "model.lora", "rank"),                     # the lora group (peft.LoraConfig)
    ("model", "model", "lora_int"),                      # a plain mapping read by goracs-run
    ("data", "data", "max_trian"),                       # a plain mapping read by prepare_samples
    ("paths", "paths", "outputs"),                       # a plain mapping read through interpolations
    ("selection", "selection", "lamda"),                 # a selector's constructor
])
def test_a_key_nothing_reads_fails(group, path, key):
    cfg = _compose([])
    node = _node(cfg, group)
    inner = node
    for part in path.split(".")[1:]:
        inner = inner[part]
    inner[key] = 1
    assert check_node(group, node) == [f"{path}.{key}"]
