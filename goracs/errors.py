"""Errors that mean "the user asked for something wrong", as opposed to a bug.

``goracs-run`` reports a :class:`UserError` as one paragraph and exits with status 2; every other exception keeps its
traceback. Both subclasses are also the built-in types callers already expect (``ValueError``,
``FileNotFoundError``), so catching those still works.
"""

from __future__ import annotations

from typing import Any


class UserError(Exception):
    """A mistake in the config or the inputs; the message names the option or file and what was expected."""


class ConfigError(UserError, ValueError):
    """An option with a value that cannot work (``budget=abc``, an unknown choice, a negative size)."""


class InputNotFound(UserError, FileNotFoundError):
    """A file or folder the config points to (data, weights, adapter, encoder) does not exist or is incomplete."""


def integer_option(value: Any, key: str, expected: str) -> int:
    """``int(value)`` for a top-level option, or a :class:`ConfigError` that names the key (``budget=abc: expected
    an integer number of samples``); booleans and non-integral floats are refused too."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}={value}: expected {expected}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value}: expected {expected}") from None
    if isinstance(value, float) and number != value:
        raise ConfigError(f"{key}={value}: expected {expected}")
    return number
