"""Read the records of an offline W&B run file (``run-*.wandb``) without the W&B service.

The file is a 7-byte header (``:W&B``, magic 0xBEE1, version) followed by the LevelDB log format: 32 KiB blocks of
chunks, each with a 7-byte header (crc32c, length, type FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4); a block tail shorter
than a chunk header is zero padding. Each reassembled payload is a ``wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

BLOCK = 32 * 1024
HEADER = struct.Struct("<IHB")


def records(path: Path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, pending = 7, b""
    while pos + HEADER.size <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER.size:  # block padding
            pos += left
            continue
        _, length, kind = HEADER.unpack_from(data, pos)
        if kind == 0 and length == 0:  # zero padding up to the block's end (the writer pads when it flushes)
            pos += left
            continue
        chunk = data[pos + HEADER.size: pos + HEADER.size + length]
        pos += HEADER.size + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def summary_and_config(path: Path, timeout_s: float = 60.0) -> tuple[dict, dict]:
    """The run's final summary values and its config, as W&B recorded them (config from the run record and from
    later config records: which of the two carries a given update depends on the service's timing).

    The wandb-core service writes the file asynchronously and may still be appending when ``wandb.finish`` has
    returned (seen on a loaded machine: the last summary or the config missing), so the file is re-read until it
    holds the run's closing ``exit`` record, for at most ``timeout_s`` seconds.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            parsed = list(records(path))
        except Exception:  # a chunk still being written: read again
            parsed = []
        if any(r.WhichOneof("record_type") == "exit" for r in parsed):
            break
        assert time.monotonic() < deadline, f"{path} has no exit record after {timeout_s} s"
        time.sleep(0.25)
    summary, config, history = {}, {}, {}
    for record in parsed:
        kind = record.WhichOneof("record_type")
        if kind == "history":
            for item in record.history.item:
                history[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "summary":
            for item in record.summary.update:
                summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind in ("config", "run"):  # a config update sent before the run record was written rides in it
            updates = record.config.update if kind == "config" else record.run.config.update
            for item in updates:
                config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return {**history, **summary}, config
