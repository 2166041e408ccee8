"""A non-editable install carries its configs: conf/ (at the repository root) ships inside the wheel as goracs/conf/,
and goracs-run from that install, in a folder outside the checkout, composes them and runs the data stage."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "goracs", "conf")  # what the build reads (pyproject: readme, packages)


def _setuptools() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_subpackage_and_config_is_shipped():
    """The package list is explicit (a mapped goracs.conf cannot be mixed with packages.find): a new subpackage of
    goracs/ must be added to it, and conf/ may only hold the *.yaml that package-data ships."""
    config = _setuptools()
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "goracs").rglob("__init__.py")}
    assert set(config["packages"]) == on_disk | {"goracs.conf"}, "update [tool.setuptools] packages in pyproject.toml"
    assert config["package-dir"] == {"goracs.conf": "conf"}
    files = [p for p in (REPO / "conf").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    others = [p for p in files if p.suffix != ".yaml"]
    assert not others, f"not shipped in the wheel (package-data takes *.yaml only): {others}"


def _build_backend_offline() -> bool:
    """--no-build-isolation needs setuptools>=68 here, and `wheel` unless setuptools has its own bdist_wheel (70.1)."""
    try:
        version = tuple(int(x) for x in importlib.metadata.version("setuptools").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
    return version >= (70, 1) or (version >= (68, 0) and importlib.util.find_spec("wheel") is not None)


@pytest.mark.slow
def test_wheel_install_runs_the_data_stage_outside_the_checkout(tmp_path):
    # Build from a copy: an in-tree build would leave build/ and a rewritten goracs.egg-info in the checkout.
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    isolation = ["--no-build-isolation"] if _build_backend_offline() else []  # else pip fetches setuptools
    built = subprocess.run([*pip, "wheel", "--no-deps", *isolation, "-w", str(tmp_path / "dist"), str(src)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("goracs-*.whl")
    with zipfile.ZipFile(wheel) as z:
        shipped = {n.removeprefix("goracs/conf/") for n in z.namelist() if n.startswith("goracs/conf/")}
    assert shipped == {p.relative_to(REPO / "conf").as_posix() for p in (REPO / "conf").rglob("*.yaml")}

    site = tmp_path / "site"
    installed = subprocess.run([*pip, "install", "--no-deps", "--no-compile", "--target", str(site), str(wheel)],
                               capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-3000:]

    # The installed copy comes first on sys.path; the editable finder of a dev environment only answers after it.
    out, cache, cwd = tmp_path / "out", tmp_path / "cache", tmp_path / "elsewhere"
    cwd.mkdir()
    code = (f"import sys; sys.path.insert(0, {str(site)!r})\n"
            "import goracs, goracs.run\n"
            "print('GORACS_FILE', goracs.__file__); print('CONF_DIR', goracs.run.CONF_DIR)\n"
            f"sys.argv = ['goracs-run', 'stage=data', 'task=ctr', 'logger=none', 'paths.root={cwd}',"
            f" 'paths.cache_dir={cache}', 'hydra.run.dir={out}']\n"
            "goracs.run.main()\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GORACS_") and k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", WANDB_MODE="disabled")
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines()
                 if line.startswith(("GORACS_FILE ", "CONF_DIR ")))
    assert Path(lines["GORACS_FILE"]).is_relative_to(site), lines
    assert Path(lines["CONF_DIR"]) == site / "goracs" / "conf", lines
    assert "ml100k / ctr" in done.stdout and "samples_train" in done.stdout and "positive_rate" in done.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["data/samples_train"] == 96  # the ml100k default cap
    assert sorted(p.name for p in cwd.iterdir()) == []  # nothing written where it ran (outputs/ defaults there)
