"""The tables of experiments/README.md are regenerated from the committed data: a stale table fails here.

Every block ``<!-- goracs-report ARGS --> ... <!-- /goracs-report -->`` is re-run (experiments/regenerate_readme.py)
and must equal the README's text exactly; without any marked block the check is skipped, not failed. The mechanism
itself is tested on a synthetic sweep and README.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from test_report_intervals import write_sweep

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("regenerate_readme", ROOT / "experiments" / "regenerate_readme.py")
regen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(regen)

README = ROOT / "experiments" / "README.md"
MARKED = regen.blocks(README.read_text(encoding="utf-8"))


@pytest.mark.parametrize("block", MARKED or [None], ids=lambda b: b["args"] if b else "none")
def test_readme_tables_equal_the_regenerated_ones(block):
    if block is None:
        pytest.skip("experiments/README.md has no <!-- goracs-report ... --> block yet")
    assert block["body"] == regen.generate(block["args"]), (
        f"stale table in experiments/README.md for goracs-report {block['args']}: "
        "run python experiments/regenerate_readme.py")


def test_regeneration_rewrites_only_the_marked_blocks_and_detects_staleness(tmp_path):
    write_sweep(tmp_path / "sweep")
    text = ("# Results\n\nprose kept\n\n<!-- goracs-report sweep --metric test/loss --reference random -->\n"
            "| stale | table |\n<!-- /goracs-report -->\n\nclosing prose\n")
    fresh = regen.regenerate(text, root=tmp_path)
    assert fresh.startswith("# Results\n\nprose kept\n\n<!-- goracs-report sweep") and fresh.endswith(
        "<!-- /goracs-report -->\n\nclosing prose\n")
    body = regen.blocks(fresh)[0]["body"]
    assert "| stale |" not in body and "### games / seqrec / smollm2 — test/loss (lower is better)" in body
    assert regen.regenerate(fresh, root=tmp_path) == fresh  # idempotent: a current README passes the check
    with pytest.raises(ValueError, match="--reference kcenter: no such selection"):
        regen.generate("sweep --reference kcenter", root=tmp_path)
