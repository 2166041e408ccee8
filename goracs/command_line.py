"""The command line's overrides, checked before Hydra composes them: :func:`check_command_line`.

Hydra reports an override it cannot compose (``selection=nosuch``, ``selection.lamda=0.5`` without ``+``) as a
multi-line message and exit status 1, before ``goracs-run``'s own code runs. This check composes the same overrides
first and turns such a mistake into a :class:`~goracs.errors.ConfigError` of one line that names the override and
what was expected (``selection=nosuch: no such option; expected one of [ccs, d2, ...]``), which ``goracs-run`` prints
with exit status 2, as every other user mistake. A command line with Hydra's own flags (``--help``, ``--cfg``, ...)
is left to Hydra; in a multirun (``-m``) only the group choices are checked (each value of a choice sweep).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from goracs.errors import ConfigError

_MULTIRUN_FLAGS = ("-m", "--multirun")


def check_command_line(argv: Sequence[str], conf_dir: str) -> None:
    """A :class:`ConfigError` for the first override in ``argv`` (``sys.argv[1:]``) that does not compose with
    ``conf_dir/config.yaml``."""
    flags = [a for a in argv if a.startswith("-")]
    if any(f not in _MULTIRUN_FLAGS for f in flags):
        return  # Hydra's own flags (--help, --cfg job, --config-name, ...): Hydra handles the command
    overrides = [a for a in argv if not a.startswith("-")]
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise ConfigError(_one_line(e)) from None
    for override in parsed:
        _check_group_choice(override, Path(conf_dir))
    if flags:
        return  # a sweep: its jobs are composed (and checked) one by one
    _compose(overrides, conf_dir)


def _check_group_choice(override, conf: Path) -> None:
    group = override.key_or_group
    folder = conf / group
    if group.startswith("hydra") or not folder.is_dir() or override.is_delete():
        return
    if override.is_sweep_override():
        if not hasattr(override.value(), "list"):  # glob(), range(): Hydra expands them against the folder
            return
        values = [str(v) for v in override.value().list]
    else:
        values = [str(override.value())]
    options = sorted(p.stem for p in folder.glob("*.yaml"))
    for value in values:
        if value != "null" and value not in options:
            raise ConfigError(f"{override.input_line}: no such {group} option {value!r}; expected one of {options} "
                              f"(the files in conf/{group}/)")


def _compose(overrides: list[str], conf_dir: str) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
        try:
            compose("config", overrides=overrides)
        except HydraException as e:
            raise ConfigError(_explained(e, overrides)) from None


def _explained(e: Exception, overrides: list[str]) -> str:
    text = str(e)
    if text.startswith("Could not override '") and "To append to your config use +" in text:
        key = text.split("'", 2)[1]
        given = next((o for o in overrides if o.split("=", 1)[0] == key), key)
        node, _, name = key.rpartition(".")
        return (f"{given}: {node or 'the config'} has no option {name!r}; check the spelling (the node's yaml lists "
                f"its options), or add a new key with +{given}")
    return _one_line(e)


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())
