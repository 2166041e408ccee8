"""Canonical tables every source produces, and the title rules that clean them.

``interactions``: one row per (user, item) event with columns ``user`` (str), ``item`` (str), ``rating`` (float,
NaN when the source has none), ``timestamp`` (int seconds, or a per-user position for sources without time) and,
only for pre-split sources (DEALRec), ``split`` ("train" | "valid" | "test").
``items``: ``item`` (str), ``title`` (str) and optional ``brand``, ``category`` (str).
"""

from __future__ import annotations

import codecs
import html
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from goracs.errors import InputNotFound

log = logging.getLogger(__name__)

# An opening HTML tag such as `<span class="a-size-medium ...` (Amazon Magazine meta): not a usable title.
_HTML_TAG = re.compile(r"<\s*[A-Za-z!/]")


@dataclass
class Tables:
    """Raw or cleaned interactions and items tables (see module docstring for the columns)."""

    interactions: pd.DataFrame
    items: pd.DataFrame

    @property
    def presplit(self) -> bool:
        """True when the source fixes the train/valid/test split itself (``split`` column present)."""
        return "split" in self.interactions.columns


class TableSource(Protocol):
    """What a ``data.source`` node instantiates to: an object whose ``load()`` returns the raw tables."""

    def load(self) -> Tables: ...


def clean_tables(tables: Tables, *, min_title_len: int, append_brand: bool, name: str) -> Tables:
    """Apply the title rules, drop untitled items and repeated (user, item) pairs.

    Title rules, in order: strip; an HTML fragment is unusable; unescape HTML entities (``&amp;`` -> ``&``) and
    strip again; append ``" - {brand}"`` when ``append_brand`` and the brand is non-empty (Movies/Food presets);
    keep the item only if ``len(title) > min_title_len`` (1 for Games/Food, 50 for Movies, §4.1). Interactions with
    a dropped item are removed, then repeated (user, item) pairs keep their last occurrence in file order. The items
    table is restricted to items that still occur in an interaction (the catalogue negatives are drawn from).
    """
    items = tables.items.drop_duplicates("item", keep="first").copy()
    raw = items["title"].astype("object").where(items["title"].notna(), "")
    raw = raw.map(lambda t: str(t).strip())
    usable = ~raw.map(lambda t: bool(_HTML_TAG.search(t)))
    titles = raw.map(lambda t: html.unescape(t).strip())
    if append_brand and "brand" in items.columns:
        brand = items["brand"].astype("object").where(items["brand"].notna(), "").map(lambda b: str(b).strip())
        titles = titles.where(brand == "", titles + " - " + brand)
    items["title"] = titles
    items = items[usable & (titles.str.len() > min_title_len)]

    inter = tables.interactions
    inter = inter[inter["item"].isin(items["item"])]
    n_before = len(inter)
    inter = inter.drop_duplicates(["user", "item"], keep="last").reset_index(drop=True)
    if len(inter) < n_before:
        log.info("%s: dropped %d repeated (user, item) pairs", name, n_before - len(inter))
    if inter.empty:
        raise ValueError(
            f"data '{name}': no interaction is left after the title filter (titles must be non-HTML and longer than "
            f"data.min_title_len={min_title_len} characters, append_brand={append_brand}); "
            f"{len(tables.items)} items and {len(tables.interactions)} interactions were read"
        )
    items = items[items["item"].isin(inter["item"])].reset_index(drop=True)
    log.info("%s: %d interactions, %d users, %d items after cleaning", name, len(inter), inter["user"].nunique(),
             len(items))
    return Tables(interactions=inter, items=items)


def require_files(folder: str | Path | None, names: list[str], what: str) -> list[Path]:
    """Return ``folder/name`` for each name, or raise ``FileNotFoundError`` naming the folder and the files expected.

    A name ending in ``.json`` also matches ``.json.gz`` (and the reverse), as Amazon files come either way.
    """
    if folder is None or str(folder) in ("", "???"):
        raise InputNotFound(f"{what}: no path given; set data.source.path to a folder holding {', '.join(names)}")
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise InputNotFound(f"{what}: folder {folder} does not exist; expected it to hold {', '.join(names)}")
    found, missing = [], []
    for name in names:
        options = [folder / name]
        if name.endswith(".gz"):
            options.append(folder / name[:-3])
        else:
            options.append(folder / f"{name}.gz")
        hit = next((p for p in options if p.is_file()), None)
        (found if hit else missing).append(hit or name)
    if missing:
        raise InputNotFound(
            f"{what}: {folder} lacks {', '.join(map(str, missing))}; expected the files {', '.join(names)}"
        )
    return found


def check_encoding(encoding: str, option: str) -> str:
    """Raise ``ValueError`` naming the option when Python does not know the codec."""
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ValueError(f"{option}={encoding!r} is not a known text encoding (e.g. 'utf-8', 'latin-1')") from None
    return encoding


def numeric_column(values: pd.Series, path: Path, column: str, *, header_lines: int = 0) -> np.ndarray:
    """Parse a column of strings as numbers; a blank or non-numeric cell raises ``ValueError`` with file and line."""
    parsed = pd.to_numeric(values, errors="coerce")
    bad = np.flatnonzero(parsed.isna().to_numpy())
    if bad.size:
        row = int(bad[0])
        raise ValueError(
            f"{path}:{row + 1 + header_lines}: malformed line, column '{column}' should be a number, "
            f"got {values.iloc[row]!r}"
        )
    return parsed.to_numpy()


def read_table(path: Path, *, sep: str, names: list[str] | None, encoding: str, header: int | None = None,
               option: str = "data.source.encoding") -> pd.DataFrame:
    """``pandas.read_csv`` as strings, with parser and decoding errors turned into messages naming the file."""
    try:
        return pd.read_csv(path, sep=sep, names=names, header=header, dtype=str, encoding=encoding,
                           keep_default_na=False, na_values=[], quoting=0 if sep == "," else 3)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: cannot decode with {option}={encoding!r} ({err.reason} at byte {err.start}); "
                         "set the right encoding") from None
    except pd.errors.ParserError as err:
        raise ValueError(f"{path}: malformed file: {err}") from None
