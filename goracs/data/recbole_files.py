"""RecBole atomic files: ``<dataset>.inter`` and ``<dataset>.item``, TAB-separated with ``name:type`` headers.

``.inter`` needs ``user_id``, ``item_id`` and optionally ``rating`` (NaN when absent) and ``timestamp`` (0 when
absent); ``.item`` needs ``item_id`` and the title field. The ``recbole`` wheel is never imported: its example
folder is located through ``importlib.util.find_spec`` (importing it fails on its pinned dependencies).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

from goracs.data.tables import Tables, check_encoding, numeric_column, read_table, require_files
from goracs.errors import InputNotFound


class RecBoleAtomic:
    """Read ``path/<dataset>.inter`` and ``path/<dataset>.item`` (``dataset`` defaults to the folder name).

    ``year_field`` (e.g. ``release_year``) is appended to the title as ``"Title (year)"`` when the year is a
    number, which reproduces the GroupLens MovieLens titles.
    """

    def __init__(self, path: str, dataset: str | None = None, title_field: str = "title",
                 year_field: str | None = None, encoding: str = "utf-8"):
        self.path = path
        self.dataset = dataset
        self.title_field = title_field
        self.year_field = year_field
        self.encoding = check_encoding(encoding, "data.source.encoding")

    def load(self) -> Tables:
        name = self.dataset or Path(str(self.path)).name
        inter_path, item_path = require_files(self.path, [f"{name}.inter", f"{name}.item"], "RecBole atomic files")
        inter = _strip_types(read_table(inter_path, sep="\t", names=None, header=0, encoding=self.encoding))
        items = _strip_types(read_table(item_path, sep="\t", names=None, header=0, encoding=self.encoding))
        needs = ((inter, inter_path, ["user_id", "item_id"]), (items, item_path, ["item_id", self.title_field]))
        for df, path, need in needs:
            missing = [c for c in need if c not in df.columns]
            if missing:
                raise ValueError(f"{path}:1: header lacks field(s) {missing} (data.source.title_field="
                                 f"{self.title_field!r}); fields present: {list(df.columns)}")
        n = len(inter)
        interactions = pd.DataFrame({
            "user": inter["user_id"].astype(str),
            "item": inter["item_id"].astype(str),
            "rating": (numeric_column(inter["rating"], inter_path, "rating", header_lines=1).astype(float)
                       if "rating" in inter else np.full(n, np.nan)),
            "timestamp": (numeric_column(inter["timestamp"], inter_path, "timestamp", header_lines=1).astype(np.int64)
                          if "timestamp" in inter else np.zeros(n, dtype=np.int64)),
        })
        title = items[self.title_field].astype(str)
        if self.year_field:
            if self.year_field not in items.columns:
                raise ValueError(f"{item_path}:1: no field {self.year_field!r} (data.source.year_field)")
            year = items[self.year_field].astype(str)
            title = title.where(~year.str.fullmatch(r"\d{4}"), title.str.strip() + " (" + year + ")")
        return Tables(interactions=interactions, items=pd.DataFrame({"item": items["item_id"].astype(str),
                                                                     "title": title}))


def recbole_example_dir(dataset: str) -> Path:
    """Folder ``recbole/dataset_example/<dataset>`` of the installed wheel, found without importing ``recbole``."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise InputNotFound(
            f"data.source.path is null, so the {dataset} copy inside the 'recbole' wheel is used, but that wheel is "
            "not installed; run `pip install --no-deps recbole==1.2.1` (see README) or set data.source.path"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "dataset_example" / dataset
    if not folder.is_dir():
        raise InputNotFound(f"the installed recbole wheel has no {folder}; set data.source.path")
    return folder


def _strip_types(df: pd.DataFrame) -> pd.DataFrame:
    """``user_id:token`` -> ``user_id``."""
    return df.rename(columns=lambda c: str(c).split(":", 1)[0])
