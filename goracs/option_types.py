"""Option values checked against the type hints of the constructor they configure: the signature is the schema.

A config node names in ``_target_`` the class (or function) that consumes it, and that constructor's annotations say
what each key takes (``lr: float``, ``topk: Sequence[int]``, ``dtype: str | None``, ``precision: Literal[...]``).
:func:`check_types` compares every given value with its parameter's hint and raises a
:class:`~goracs.errors.ConfigError` naming the key, the value and what the hint expects
(``trainer.lr='abc': expected a number``). Only plain config types are judged (``bool``, ``int``, ``float``,
``str``, ``None``, ``Literal``, lists, mappings, dataclasses); a hint that names another class (``Accelerator``,
``Path``) makes its parameter accept anything, and so does an annotation that does not evaluate. Booleans are strict:
``resume=no`` is a string, not ``False``, and an integer is not a boolean (nor a boolean an integer).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import types
import typing
from typing import Any, Callable, Mapping

from goracs.errors import ConfigError

_UNJUDGED = object()  # a hint this module does not judge: any value passes


def check_types(target: Callable, node: Mapping[str, Any], name: str) -> None:
    """A :class:`ConfigError` for the first key of ``node`` whose value does not fit ``target``'s hint for it.

    Nested ``_target_`` nodes are built later by their own constructor and are not judged here; a mapping given for a
    dataclass-typed parameter is checked against that dataclass's fields (``features.surrogate.epochs``)."""
    hints = parameter_hints(target)
    for key, value in node.items():
        hint = hints.get(key, _UNJUDGED)
        if hint is _UNJUDGED or (isinstance(value, Mapping) and "_target_" in value):
            continue
        nested = _dataclass_in(hint)
        if nested is not None and isinstance(value, Mapping):
            check_types(nested, value, f"{name}.{key}")
            continue
        if not fits(value, hint):
            raise ConfigError(f"{name}.{key}={_show(value)}: expected {describe(hint)}")


def parameter_hints(target: Callable) -> dict[str, Any]:
    """Parameter name -> evaluated type hint of ``target`` (a class: its ``__init__``, a dataclass: its fields);
    ``{}`` when the annotations do not evaluate (third-party forward references)."""
    fn = target.__init__ if inspect.isclass(target) and not dataclasses.is_dataclass(target) else target
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        return {}
    try:
        names = set(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        return {}
    return {k: v for k, v in hints.items() if k in names}


def fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` (a plain config value) fits ``hint``; True for hints this module does not judge."""
    if hint is Any or hint is _UNJUDGED:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if any(_judged(a) is None for a in args):
            return True  # one arm names a class we cannot judge from a config value
        return any(fits(value, a) for a in args)
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) or (isinstance(a, float) and _number(value) and value == a)
                   for a in args)
    if hint is type(None) or hint is None:
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return _number(value)
    if hint is str:
        return isinstance(value, str)
    container = origin or hint
    if container in (list, tuple, set, frozenset, collections.abc.Sequence, collections.abc.Collection,
                     collections.abc.Iterable):
        if not isinstance(value, (list, tuple)):
            return False
        inner = [a for a in args if a is not Ellipsis]
        return len(inner) != 1 or all(fits(v, inner[0]) for v in value)
    if container in (dict, collections.abc.Mapping, collections.abc.MutableMapping):
        return isinstance(value, Mapping)
    if dataclasses.is_dataclass(hint):
        return isinstance(value, (Mapping, hint))
    return True  # any other class: not judged from a config value


def describe(hint: Any) -> str:
    """``hint`` in words: ``a number``, ``null or an integer``, ``one of ['a', 'b']``, ``a list of integers``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        none = type(None) in args
        rest = [describe(a) for a in args if a is not type(None)]
        words = " or ".join(dict.fromkeys(rest))
        return f"null or {words}" if none else words
    if origin is typing.Literal:
        return f"one of {list(args)}"
    simple = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    if hint in simple:
        return simple[hint]
    container = origin or hint
    if container in (list, tuple, set, frozenset, collections.abc.Sequence, collections.abc.Collection,
                     collections.abc.Iterable):
        inner = [a for a in args if a is not Ellipsis]
        return f"a list of {_plural(describe(inner[0]))}" if len(inner) == 1 else "a list"
    if container in (dict, collections.abc.Mapping, collections.abc.MutableMapping) or dataclasses.is_dataclass(hint):
        return "a mapping of options"
    return getattr(hint, "__name__", str(hint))


def _judged(hint: Any) -> Any:
    """``hint`` when :func:`fits` judges it, None for a class it cannot judge from a config value."""
    origin = typing.get_origin(hint) or hint
    plain = (bool, int, float, str, type(None), None, Any, typing.Literal, typing.Union, types.UnionType, list, tuple,
             set, frozenset, dict, collections.abc.Sequence, collections.abc.Collection, collections.abc.Iterable,
             collections.abc.Mapping, collections.abc.MutableMapping)
    return hint if origin in plain or dataclasses.is_dataclass(hint) else None


def _dataclass_in(hint: Any) -> type | None:
    if dataclasses.is_dataclass(hint):
        return hint
    candidates = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]
    return candidates[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) and candidates else None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _plural(words: str) -> str:
    for single, many in (("an integer", "integers"), ("a number", "numbers"), ("a string", "strings"),
                         ("true or false", "booleans")):
        words = words.replace(single, many)
    return words


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value).replace("True", "true").replace("False", "false") \
        .replace("None", "null")
