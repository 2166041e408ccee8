"""Alpaca prompt templates as the official GORACS/BIGRec/TALLRec code writes them.

The official code uses three slightly different headers (spec ``goracs.md`` §1.3, quirk (d)):

* ``train``: SeqRec fine-tuning and gradient features, one space after "request." (BIGRec ``train.py``);
* ``infer``: SeqRec inference and the SeqRec text embedding, two spaces after "request." (``inference.py``);
* ``ctr``: CTR (TALLRec) training, evaluation and embedding, no space after "request.".

``faithful=False`` (option ``task.faithful_prompts``) uses the ``train`` header everywhere, the corrected behaviour.
"""

from __future__ import annotations

from typing import Literal

Header = Literal["train", "infer", "ctr"]

_PREAMBLE = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)
# The whitespace after "request." is the only difference between the three official headers.
_TRAILING = {"train": " ", "infer": "  ", "ctr": ""}


def alpaca_prompt(instruction: str, input: str, *, header: Header = "train", faithful: bool = True) -> str:
    """Return the prompt text up to and including ``"### Response:\\n"`` (the model continues from there)."""
    if header not in _TRAILING:
        raise ValueError(f"unknown prompt header {header!r}; expected one of {sorted(_TRAILING)}")
    space = _TRAILING[header] if faithful else _TRAILING["train"]
    return (
        f"{_PREAMBLE}{space}\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
    )


def alpaca_example(instruction: str, input: str, output: str, *, header: Header = "train", faithful: bool = True) -> str:
    """Full training text: prompt followed by the response (the caller appends EOS when tokenising)."""
    return alpaca_prompt(instruction, input, header=header, faithful=faithful) + output
