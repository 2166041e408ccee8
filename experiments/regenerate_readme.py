"""Rewrite the generated tables of ``experiments/README.md`` from the committed data (or check that they are current).

    python experiments/regenerate_readme.py            # rewrite every marked block in place
    python experiments/regenerate_readme.py --check    # exit 1 and print a diff when a block is stale

A block is enclosed in two HTML comments that name the exact ``goracs-report`` invocation::

    <!-- goracs-report experiments/results/cpu_compare --reference random --metric test/loss -->
    ...generated Markdown, replaced wholesale...
    <!-- /goracs-report -->

The arguments are split like a shell command line (``shlex``) and run from the repository root with ``--no-plots``
and a temporary ``--out`` added; the block's content becomes the Markdown tables ``goracs-report`` prints. Text
outside the markers is never touched. ``tests/test_readme_tables.py`` runs the check in the default suite.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import io
import logging
import re
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "experiments" / "README.md"
BLOCK = re.compile(r"(<!-- goracs-report (?P<args>[^\n]*?) -->\n)(?P<body>.*?)(<!-- /goracs-report -->)", re.S)


def blocks(text: str) -> list[re.Match]:
    """The marked blocks of ``text``, in order."""
    return list(BLOCK.finditer(text))


def generate(args: str, root: Path = ROOT) -> str:
    """The Markdown ``goracs-report <args>`` prints, run from ``root`` (``--no-plots``, a temporary ``--out``)."""
    import os

    from goracs.report.cli import main

    argv = shlex.split(args)
    logger = logging.getLogger("goracs.report")
    level = logger.level
    with tempfile.TemporaryDirectory() as out, contextlib.chdir(root):
        buffer = io.StringIO()
        logger.setLevel(logging.ERROR)  # the report's warnings belong to its own runs, not to the README
        try:
            with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(io.StringIO()) as err:
                code = main([*argv, "--no-plots", "--out", os.path.join(out, "report")])
        finally:
            logger.setLevel(level)
    if code != 0:
        raise ValueError(f"goracs-report {args}: exit code {code}: {err.getvalue().strip()}")
    return buffer.getvalue().strip() + "\n"


def regenerate(text: str, root: Path = ROOT) -> str:
    """``text`` with every marked block's body replaced by its freshly generated tables."""
    return BLOCK.sub(lambda m: m.group(1) + generate(m.group("args"), root) + m.group(4), text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="regenerate_readme", description=__doc__.split("\n\n")[0])
    parser.add_argument("readme", nargs="?", type=Path, default=README, help="default: experiments/README.md")
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 with a diff when stale")
    args = parser.parse_args(argv)
    text = args.readme.read_text(encoding="utf-8")
    if not blocks(text):
        print(f"{args.readme}: no <!-- goracs-report ... --> block")
        return 0
    try:
        fresh = regenerate(text)
    except ValueError as err:
        print(f"regenerate_readme: error: {err}", file=sys.stderr)
        return 2
    if args.check:
        if fresh == text:
            return 0
        sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), fresh.splitlines(True),
                                                   str(args.readme), "regenerated"))
        return 1
    args.readme.write_text(fresh, encoding="utf-8")
    print(f"rewrote {len(blocks(text))} block(s) of {args.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
