"""Per-domain instruction / input / output texts of the SeqRec and CTR samples (spec ``goracs.md`` §1.3).

Faithful mode reproduces the official strings byte for byte, quirks included: the "movies ad TVs" typo, no space
after the colon of the SeqRec input and its ``"\\n "`` ending. ``faithful=False`` fixes those three. The ``generic``
domain (gift cards, RecBole data, ...) follows the same pattern with neutral wording.
"""

from __future__ import annotations

from dataclasses import dataclass

DOMAINS = ("games", "movies", "food", "generic")


@dataclass(frozen=True)
class DomainText:
    seqrec_instruction: str
    seqrec_prefix: str  # the SeqRec input starts with this, then the quoted history titles
    ctr_noun: str  # "game" in "identify whether the user will like the target game"
    ctr_question: str  # last input line, with {title} for the target


_TEXTS = {
    "games": DomainText(
        "Given a list of video games the user has played before, please recommend a new video game that the user "
        "likes to the user.",
        "The user has played the following video games before:",
        "game",
        'Whether the user will like the target game "{title}"?',
    ),
    "movies": DomainText(
        "Given a list of movies ad TVs the user has watched before, please recommend the title of a new movie or TV "
        "that the user will like to watch in the following time.",
        "The user has watched the following movies and TVs before:",
        "movie",
        'Whether the user will like the target movie titled "{title}"?',
    ),
    "food": DomainText(
        "Given a list of food the user has purchased before, please recommend the name of a new food that the user "
        "will like to purchase in the following time.",
        "The user has purchased the following food before:",
        "food product",
        'Whether the user will like the target food product named "{title}"?',
    ),
    "generic": DomainText(
        "Given a list of items the user has interacted with before, please recommend a new item that the user will "
        "like.",
        "The user has interacted with the following items before:",
        "item",
        'Whether the user will like the target item "{title}"?',
    ),
}


def domain_text(domain: str) -> DomainText:
    """Texts of one domain; ``ValueError`` names ``data.domain`` when unknown."""
    if domain not in _TEXTS:
        raise ValueError(f"data.domain={domain!r} is unknown; expected one of {list(DOMAINS)}")
    return _TEXTS[domain]


def seqrec_response(title: str) -> str:
    """The SeqRec response (training target, and each candidate of likelihood ranking): the title in quotes."""
    return f'"{title}"'


def seqrec_fields(text: DomainText, history: list[str], target: str, *, faithful: bool) -> tuple[str, str, str]:
    """(instruction, input, output): input = prefix + ``"T1", "T2", ...`` (+ ``"\\n "`` faithful), output ``"T"``."""
    titles = ", ".join(f'"{t}"' for t in history)
    if faithful:
        return text.seqrec_instruction, f"{text.seqrec_prefix}{titles}\n ", seqrec_response(target)
    instruction = text.seqrec_instruction.replace("movies ad TVs", "movies and TVs")
    return instruction, f"{text.seqrec_prefix} {titles}".rstrip(), seqrec_response(target)


def ctr_fields(text: DomainText, liked: list[str], disliked: list[str], target: str,
               label: int) -> tuple[str, str, str]:
    """(instruction, input, output) of TALLRec: liked/disliked history lists, then the question; output Yes/No."""
    instruction = (f"Given the user's preference and unpreference, identify whether the user will like the target "
                   f'{text.ctr_noun} by answering "Yes" or "No".')
    pref = ", ".join(f'"{t}"' for t in liked)
    unpref = ", ".join(f'"{t}"' for t in disliked)
    question = text.ctr_question.format(title=target)
    return instruction, f"User Preference: {pref}\nUser Unpreference: {unpref}\n{question}", "Yes" if label else "No"
