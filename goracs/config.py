"""Stage config nodes whose ``_target_`` constructor is their schema (as every other group's node).

The ``features``, ``trainer`` and ``eval`` nodes name in ``_target_`` the class (for ``eval``, with ``_partial_: true``,
the function) that consumes them: the node's keys are that constructor's parameters, and the parameters without a
default must be given. :func:`build` instantiates such a node, and :func:`construct` builds a class from a plain
mapping (tests, library use, a nested node). Both check the keys against the signature before the constructor runs,
so an unknown or a missing key is a :class:`~goracs.errors.ConfigError` that names it
(``features.projection_dim: unknown option; expected one of [...]``) rather than a ``TypeError`` from deep inside
Hydra, and so is a value of the wrong type for the parameter's annotation (:mod:`goracs.option_types`:
``trainer.lr='abc': expected a number``). Ranges and choices are the constructor's to check (the frozen
dataclasses' ``__post_init__``), naming key and value.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

from goracs.errors import ConfigError, UserError
from goracs.option_types import check_types

HYDRA_KEYS = frozenset({"_target_", "_partial_", "_convert_", "_recursive_", "_args_"})  # instantiate's own keys


def options(node: Mapping[str, Any]) -> dict[str, Any]:
    """The node's keys for its constructor: without Hydra's ``_target_``-style keys."""
    return {k: v for k, v in node.items() if k not in HYDRA_KEYS}


def check_options(target: Callable, node: Mapping[str, Any], name: str, *, partial: bool = False) -> None:
    """A :class:`ConfigError` naming the keys of ``node`` that ``target`` does not take, or (unless ``partial``: the
    caller supplies the rest) the parameters without a default that ``node`` lacks. ``name``: the node's path."""
    params = inspect.signature(target).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return  # **kwargs: the constructor takes any key
    named = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    given = set(options(node))
    unknown = sorted(given - set(named))
    if unknown:
        keys = ", ".join(f"{name}.{k}" for k in unknown)
        expected = f"expected one of {sorted(named)}" if named else f"{_qualname(target)} takes no options"
        raise ConfigError(f"{keys}: unknown option{'s' if len(unknown) > 1 else ''}; {expected}")
    missing = [] if partial else [n for n in named if params[n].default is params[n].empty and n not in given]
    if missing:
        keys = ", ".join(f"{name}.{k}" for k in missing)
        raise ConfigError(f"{keys}: missing; {_qualname(target)} needs {missing}")


def construct(cls: Callable, node: Mapping[str, Any] | None, name: str) -> Any:
    """``cls(**node)`` (Hydra keys dropped), its keys checked first (:func:`check_options`)."""
    node = options(node or {})
    check_options(cls, node, name)
    check_types(cls, node, name)
    return cls(**node)


def build(node: Mapping[str, Any], name: str) -> Any:
    """Instantiate the ``_target_`` node at config path ``name``, keys checked first (:func:`check_options`). Nested
    nodes reach the constructor as plain containers (not instantiated: e.g. ``trainer.lightning`` is built later,
    with callbacks); a :class:`~goracs.errors.UserError` the constructor raises comes out as itself."""
    from hydra.errors import InstantiationException
    from hydra.utils import get_object, instantiate
    from omegaconf import DictConfig, OmegaConf

    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    if not isinstance(node, Mapping) or "_target_" not in node:
        raise ConfigError(f"{name} must be a node with a _target_ (the class its keys configure), got {node!r}")
    target = get_object(node["_target_"])
    check_options(target, node, name, partial=bool(node.get("_partial_", False)))
    check_types(target, options(node), name)
    try:
        return instantiate(dict(node), _recursive_=False, _convert_="all")
    except InstantiationException as err:
        if isinstance(err.__cause__, UserError):
            raise err.__cause__ from None
        raise


def _qualname(target: Callable) -> str:
    return f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', target)}".lstrip(".")
