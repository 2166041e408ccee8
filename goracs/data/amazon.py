"""Amazon review data: 5-core reviews plus item metadata, one record per line (``.json`` or ``.json.gz``).

* 2018 release (Ni et al.): strict JSON lines (``line_format: json``).
* 2014 release (McAuley): the metadata are Python dict literals (single quotes); ``line_format: python`` tries
  ``json.loads`` and falls back to ``ast.literal_eval`` (never ``eval``).

Reviews give ``reviewerID``, ``asin``, ``overall`` (1-5 stars) and ``unixReviewTime`` (s); metadata give ``asin``,
``title``, ``brand`` and ``category`` (2018, a list) or ``categories`` (2014, a list of lists; the first path is
kept). Reviews lacking one of the four fields are skipped (as the official notebooks do) and counted in the log.
"""

from __future__ import annotations

import ast
import gzip
import json
import logging
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
from tqdm import tqdm

from goracs.data.tables import Tables, check_encoding, require_files

log = logging.getLogger(__name__)

_REVIEW_KEYS = ("reviewerID", "asin", "overall", "unixReviewTime")


class AmazonReviews:
    """Reviews file + meta file in folder ``path``; see the module docstring for the two line formats."""

    def __init__(self, path: str, reviews: str, meta: str, line_format: str = "json", encoding: str = "utf-8"):
        if line_format not in ("json", "python"):
            raise ValueError(f"data.source.line_format={line_format!r}; expected 'json' (2018) or 'python' (2014)")
        self.path = path
        self.reviews = reviews
        self.meta = meta
        self.line_format = line_format
        self.encoding = check_encoding(encoding, "data.source.encoding")

    def load(self) -> Tables:
        rev_path, meta_path = require_files(self.path, [self.reviews, self.meta], "Amazon reviews + metadata")
        users, items, ratings, times = [], [], [], []
        skipped = 0
        for record in self._records(rev_path):
            if any(k not in record for k in _REVIEW_KEYS):
                skipped += 1
                continue
            users.append(str(record["reviewerID"]))
            items.append(str(record["asin"]))
            ratings.append(float(record["overall"]))
            times.append(int(record["unixReviewTime"]))
        if skipped:
            log.warning("%s: skipped %d reviews lacking one of %s", rev_path, skipped, _REVIEW_KEYS)
        interactions = pd.DataFrame({"user": users, "item": items, "rating": np.asarray(ratings, dtype=float),
                                     "timestamp": np.asarray(times, dtype=np.int64)})
        rows = [(str(m["asin"]), m.get("title"), m.get("brand"), _category(m))
                for m in self._records(meta_path) if "asin" in m]
        meta = pd.DataFrame(rows, columns=["item", "title", "brand", "category"], dtype=object)
        return Tables(interactions=interactions, items=meta)

    def _records(self, path: Path) -> Iterator[dict[str, Any]]:
        """Yield one dict per non-blank line; a line that does not parse raises ``ValueError`` with file:line."""
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding=self.encoding) as f:
            number = 0
            try:
                for number, line in enumerate(tqdm(f, desc=path.name, unit=" lines", mininterval=2, leave=False), 1):
                    if line.strip():
                        yield self._parse(line, path, number)
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}:{number + 1}: cannot decode with data.source.encoding={self.encoding!r} "
                                 f"({err.reason})") from None

    def _parse(self, line: str, path: Path, number: int) -> dict[str, Any]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if self.line_format != "python":
                raise ValueError(f"{path}:{number}: malformed JSON line ({err.msg} at column {err.colno}); "
                                 "if this is the 2014 python-dict format set data.source.line_format=python") from None
            try:
                record = ast.literal_eval(line)
            except (ValueError, SyntaxError, MemoryError, RecursionError) as err2:
                raise ValueError(f"{path}:{number}: malformed line, neither JSON nor a Python dict literal "
                                 f"({type(err2).__name__}: {err2})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: malformed line, expected one object per line, "
                             f"got {type(record).__name__}")
        return record


def _category(meta: dict[str, Any]) -> str | None:
    """2018 ``category`` list or the first 2014 ``categories`` path, joined with " > "."""
    cat = meta.get("category")
    if cat is None and meta.get("categories"):
        cat = meta["categories"][0]
    if isinstance(cat, list):
        return " > ".join(str(c) for c in cat) or None
    return None if cat is None else str(cat)
