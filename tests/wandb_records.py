"""Read the records of an offline W&B run file (``run-*.wandb``) without the W&B service.

The file is a 7-byte header (``:W&B``, magic 0xBEE1, version) followed by the LevelDB log format: 32 KiB blocks of
chunks, each with a 7-byte header (crc32c, length, type FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4); a block tail shorter
than a chunk header is zero padding. Each reassembled payload is a ``wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
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


def summary_and_config(path: Path) -> tuple[dict, dict]:
    """The run's final summary values and its config, as W&B recorded them (config from the run record and from
    later config records: which of the two carries a given update depends on the service's timing).

    A summary value W&B has not written as a summary record yet is its last logged history value (what the summary
    defaults to): the service writes the final summary record asynchronously, and a run file read right after
    ``wandb.finish`` sometimes lacks it.
    """
    summary, config, history = {}, {}, {}
    for record in records(path):
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
