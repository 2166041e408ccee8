"""DEALRec / BIGRec sequential format: ``sequences_{train,valid,test}.txt`` + ``items.tsv`` (see the data README).

Each sequence line is ``user_id item_id item_id ...`` (chronological, 1-based ids). The files carry no ratings or
times, so ``rating`` is NaN and ``timestamp`` is the item's position in the user's train+valid+test sequence; the
``split`` column keeps DEALRec's own split, whose sample semantics ``goracs.data.samples`` applies.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from goracs.data.tables import Tables, check_encoding, require_files

_SPLITS = ("train", "valid", "test")


class DealRecSequences:
    """Folder ``path`` with the three sequence files and ``items.tsv`` (``item_id<TAB>title``, no header)."""

    def __init__(self, path: str, encoding: str = "utf-8"):
        self.path = path
        self.encoding = check_encoding(encoding, "data.source.encoding")

    def load(self) -> Tables:
        names = [f"sequences_{s}.txt" for s in _SPLITS] + ["items.tsv"]
        *seq_paths, items_path = require_files(self.path, names, "DEALRec sequences")
        users, items, splits, positions = [], [], [], []
        offset: dict[str, int] = {}  # items seen so far per user, so positions continue across the splits
        for split, path in zip(_SPLITS, seq_paths):
            for number, line in enumerate(self._lines(path), start=1):
                fields = line.split()
                if not fields:
                    continue
                if not all(f.isdigit() for f in fields):
                    raise ValueError(f"{path}:{number}: malformed line, expected 'user_id item_id ...' as integers, "
                                     f"got {line[:80]!r}")
                user, seq = fields[0], fields[1:]
                start = offset.get(user, 0)
                offset[user] = start + len(seq)
                users.extend([user] * len(seq))
                items.extend(seq)
                splits.extend([split] * len(seq))
                positions.extend(range(start, start + len(seq)))
        interactions = pd.DataFrame({
            "user": users, "item": items, "rating": np.full(len(items), np.nan),
            "timestamp": np.asarray(positions, dtype=np.int64), "split": splits,
        })
        ids, titles = [], []
        for number, line in enumerate(self._lines(items_path), start=1):
            if not line:
                continue
            if "\t" not in line:
                raise ValueError(f"{items_path}:{number}: malformed line, expected 'item_id<TAB>title', "
                                 f"got {line[:80]!r}")
            item, title = line.split("\t", 1)  # titles may start or end with spaces: split on the first TAB only
            ids.append(item)
            titles.append(title)
        return Tables(interactions=interactions, items=pd.DataFrame({"item": ids, "title": titles}))

    def _lines(self, path: Path) -> list[str]:
        try:
            return path.read_text(encoding=self.encoding).split("\n")
        except UnicodeDecodeError as err:
            raise ValueError(f"{path}: cannot decode with data.source.encoding={self.encoding!r} "
                             f"({err.reason})") from None
