"""Read TensorFlow "V2" checkpoint bundles without TensorFlow.

A bundle is ``<prefix>.index`` + ``<prefix>.data-00000-of-0000N``. The index is an uncompressed
SSTable (LevelDB table format): data blocks of prefix-compressed ``key -> value`` entries ending in
restart points, an index block pointing at them, and a 48-byte footer with a magic number. Key
``""`` holds a ``BundleHeaderProto``; every other key is a variable name whose value is a
``BundleEntryProto`` (dtype, shape, shard_id, offset, size, crc32c) locating the raw
little-endian tensor bytes in a data shard. The few protobuf fields needed are decoded by hand.

Example:
    >>> from fusionrec.encoders.musicnn_port import musicnn_dir
    >>> tensors = read_checkpoint(str(musicnn_dir() / "MTT_musicnn") + "/")
    >>> tensors["dense/kernel"].shape
    (1506, 200)
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

_MAGIC = 0xDB4775248B80FB57  # LevelDB table magic number (little-endian in the footer)
# tensorflow/core/framework/types.proto DataType -> numpy dtype (little-endian)
_DTYPES = {1: "<f4", 2: "<f8", 3: "<i4", 4: "u1", 5: "<i2", 6: "i1", 9: "<i8", 10: "?", 14: "<u2",
           17: "<u2", 19: "<f2", 22: "<u4", 23: "<u8"}
_SKIP = ("Adam", "beta1_power", "beta2_power", "global_step")


class CheckpointError(ValueError):
    """The bundle is malformed or uses a feature this reader does not support."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _proto_fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) pairs of a serialized protobuf message (varint/fixed/bytes)."""
    out, pos = [], 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            val, pos = _varint(buf, pos)
        elif wire == 1:
            val, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            val, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            val, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        else:
            raise CheckpointError(f"unsupported protobuf wire type {wire}")
        out.append((field, val))
    return out


def _block_entries(data: bytes, offset: int, size: int) -> list[tuple[bytes, bytes]]:
    """Entries of one SSTable block (``size`` excludes the 5-byte type+crc trailer)."""
    block = data[offset:offset + size]
    if data[offset + size] != 0:
        raise CheckpointError("compressed SSTable blocks are not supported (TF bundles are uncompressed)")
    (n_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    end = len(block) - 4 - 4 * n_restarts
    entries, pos, key = [], 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        non_shared, pos = _varint(block, pos)
        vlen, pos = _varint(block, pos)
        key = key[:shared] + block[pos:pos + non_shared]
        pos += non_shared
        entries.append((key, block[pos:pos + vlen]))
        pos += vlen
    return entries


def read_index(index_path: Path) -> dict[str, dict]:
    """All ``name -> {dtype, shape, shard_id, offset, size, crc32c}`` entries of a bundle index."""
    data = Path(index_path).read_bytes()
    if len(data) < 48 or struct.unpack_from("<Q", data, len(data) - 8)[0] != _MAGIC:
        raise CheckpointError(f"{index_path}: not an SSTable (bad footer magic)")
    footer = data[-48:]
    _meta_off, pos = _varint(footer, 0)
    _meta_size, pos = _varint(footer, pos)
    idx_off, pos = _varint(footer, pos)
    idx_size, _ = _varint(footer, pos)
    entries: dict[str, dict] = {}
    for _last_key, handle in _block_entries(data, idx_off, idx_size):
        off, p = _varint(handle, 0)
        size, _ = _varint(handle, p)
        for key, value in _block_entries(data, off, size):
            if key == b"":  # BundleHeaderProto: num_shards=1, endianness=2 (0 = little), version=3
                header = dict(_proto_fields(value))
                if header.get(2, 0) != 0:
                    raise CheckpointError(f"{index_path}: big-endian bundles are not supported")
                continue
            entry: dict = {"dtype": 0, "shape": (), "shard_id": 0, "offset": 0, "size": 0, "crc32c": None}
            for field, val in _proto_fields(value):
                if field == 1:
                    entry["dtype"] = val
                elif field == 2:  # TensorShapeProto: repeated Dim (field 2) {size: 1}
                    dims = [dict(_proto_fields(d)).get(1, 0) for f, d in _proto_fields(val) if f == 2]
                    entry["shape"] = tuple(int(d) for d in dims)
                elif field in (3, 4, 5):
                    entry[{3: "shard_id", 4: "offset", 5: "size"}[field]] = val
                elif field == 6:
                    entry["crc32c"] = val
                elif field == 7:
                    raise CheckpointError(f"{index_path}: partitioned (sliced) variable {key!r} not supported")
            entries[key.decode()] = entry
    return entries


def _unmask_crc(masked: int) -> int:
    rot = (masked - 0xA282EAD8) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


def read_checkpoint(prefix: Path | str, skip_optimizer: bool = True, verify: bool = True) -> dict[str, np.ndarray]:
    """Every tensor of the bundle ``prefix`` (``prefix + '.index'``), as numpy arrays.

    ``prefix`` may be a folder ending in ``/`` when the bundle files are named ``.index`` etc.
    (as in the musicnn package). Optimizer slots (``Adam``, ``beta*_power``) are skipped by
    default. With ``verify`` and ``google_crc32c`` importable, each tensor's CRC32C is checked.
    """
    prefix = str(prefix)
    index = read_index(Path(prefix + ".index"))
    try:
        import google_crc32c  # optional (installed with kfp's google-cloud deps)
    except ImportError:
        google_crc32c = None
    n_shards = 1 + max((e["shard_id"] for e in index.values()), default=0)
    shards: dict[int, bytes] = {}
    out: dict[str, np.ndarray] = {}
    for name, e in sorted(index.items()):
        if skip_optimizer and any(s in name for s in _SKIP):
            continue
        if e["dtype"] not in _DTYPES:
            raise CheckpointError(f"{prefix}: tensor {name!r} has unsupported dtype enum {e['dtype']}")
        sid = e["shard_id"]
        if sid not in shards:
            shards[sid] = Path(f"{prefix}.data-{sid:05d}-of-{n_shards:05d}").read_bytes()
        raw = shards[sid][e["offset"]:e["offset"] + e["size"]]
        if len(raw) != e["size"]:
            raise CheckpointError(f"{prefix}: tensor {name!r} runs past the end of its data shard")
        if verify and google_crc32c is not None and e["crc32c"] is not None:
            if google_crc32c.value(raw) != _unmask_crc(e["crc32c"]):
                raise CheckpointError(f"{prefix}: CRC32C mismatch for tensor {name!r} (corrupt checkpoint)")
        out[name] = np.frombuffer(raw, dtype=_DTYPES[e["dtype"]]).reshape(e["shape"]).copy()
    return out
