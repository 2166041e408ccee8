"""Content-addressed on-disk cache for expensive stages (samples, features, selections).

A key is the SHA-256 of a canonical JSON of the config subtree that determines the artefact, so a change of an
unrelated option (budget, selection method) never invalidates it. Files are written to a temporary name in the
same folder and renamed into place (atomic on POSIX), with a sidecar ``.json`` manifest written last: an entry
without its manifest, or whose manifest disagrees with the data file's size, is treated as missing. ``lock`` serialises
the computation of one entry across processes (parallel sweep jobs on a cold cache compute it once).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

log = logging.getLogger(__name__)


def config_key(spec: Any, length: int = 16) -> str:
    """Stable hex key of a JSON-serialisable spec (dict keys sorted; Paths and tuples normalised)."""
    text = json.dumps(spec, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then rename to ``path``; the temporary file is removed on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o644)  # mkstemp creates 0600; caches are meant to be shared and read by other users
    try:
        write(tmp_path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


class DiskCache:
    """Entries ``<root>/<kind>/<key>.<suffix>`` with manifests ``<key>.<suffix>.json`` (spec, size, sha256)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, kind: str, key: str, suffix: str) -> Path:
        return self.root / kind / f"{key}.{suffix}"

    def lookup(self, kind: str, key: str, suffix: str) -> Path | None:
        """Return the data file if a complete, intact entry exists; otherwise None (and drop a broken one)."""
        data = self.path(kind, key, suffix)
        manifest = data.with_name(data.name + ".json")
        if not data.exists() or not manifest.exists():
            return None
        try:
            meta = json.loads(manifest.read_text())
            intact = meta["size"] == data.stat().st_size and meta["sha256"] == file_sha256(data)
        except (OSError, ValueError, KeyError):
            intact = False
        if not intact:
            log.warning("cache entry %s is corrupt or incomplete; recomputing", data)
            data.unlink(missing_ok=True)
            manifest.unlink(missing_ok=True)
            return None
        return data

    def lock(self, kind: str, key: str, timeout: float = -1):
        """Inter-process lock for computing entry ``key`` (a ``filelock.FileLock`` on ``<kind>/<key>.lock``): take it
        on a cache miss, look the entry up again, and compute only if it is still missing."""
        from filelock import FileLock

        path = self.root / kind / f"{key}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(path), timeout=timeout)

    @contextlib.contextmanager
    def claim(self, kind: str, key: str, suffix: str) -> Iterator[Path | None]:
        """Yield the entry's path when it is there. Otherwise take the entry's :meth:`lock`, look again (another
        process may have stored it meanwhile) and yield that, or None: the caller then computes and stores the entry
        while holding the lock, so parallel jobs on a cold cache compute it once."""
        hit = self.lookup(kind, key, suffix)
        if hit is not None:
            yield hit
            return
        with self.lock(kind, key):
            yield self.lookup(kind, key, suffix)

    def store(self, kind: str, key: str, suffix: str, write: Callable[[Path], None], spec: Any = None) -> Path:
        """Write an entry atomically (data first, manifest last) and return its path."""
        data = self.path(kind, key, suffix)
        atomic_write(data, write)
        meta = {"spec": spec, "size": data.stat().st_size, "sha256": file_sha256(data)}
        manifest = data.with_name(data.name + ".json")
        atomic_write(manifest, lambda p: p.write_text(json.dumps(meta, indent=1, sort_keys=True, default=str)))
        return data


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (cache manifests, the adapter fingerprint)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
