"""Minimal safetensors reader/writer over numpy memmaps.

Why not the `safetensors` package: its numpy backend has no bfloat16, and we want lazy, slice-wise reads so a
checkpoint is streamed tensor by tensor (and shard by shard) into device memory without ever being held whole
on the host. The format is tiny: 8-byte little-endian header size, a JSON header, then raw little-endian data.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping

import ml_dtypes
import numpy as np

_DTYPES = {
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F64": np.dtype(np.float64),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in _DTYPES.items()}


class SafetensorsError(ValueError):
    """A safetensors file is missing, truncated or malformed (the message names the file)."""


class SafetensorsFile:
    """Lazy view of one .safetensors file: `keys()`, `shape(name)`, `get(name)` -> read-only memmap view."""

    def __init__(self, path: str):
        self.path = path
        try:
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise SafetensorsError(
                        f"{path}: not a safetensors file (shorter than its 8-byte header size)"
                    )
                (n,) = struct.unpack("<Q", head)
                if n <= 0 or 8 + n > size:
                    raise SafetensorsError(
                        f"{path}: corrupt safetensors header (declares {n} header bytes, file has {size})"
                    )
                header = json.loads(f.read(n).decode("utf-8"))
        except FileNotFoundError:
            raise SafetensorsError(f"{path}: file not found") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SafetensorsError(f"{path}: corrupt safetensors header ({e})") from None
        self.metadata = header.pop("__metadata__", {}) or {}
        self._data_start = 8 + n
        self._entries: dict[str, tuple[np.dtype, tuple[int, ...], int, int]] = {}
        data_size = size - self._data_start
        for name, info in header.items():
            try:
                dtype = _DTYPES[info["dtype"]]
                shape = tuple(int(s) for s in info["shape"])
                begin, end = (int(o) for o in info["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise SafetensorsError(
                    f"{path}: corrupt header entry for tensor {name!r}: {info!r}"
                ) from None
            expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if end - begin != expected or end > data_size or begin < 0:
                raise SafetensorsError(
                    f"{path}: tensor {name!r} needs bytes [{begin}, {end}) of {data_size} "
                    f"(expected {expected} bytes for {info['dtype']}{list(shape)}); the file is truncated or corrupt"
                )
            self._entries[name] = (dtype, shape, begin, end)
        self._mm: np.memmap | None = None

    def keys(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][1]

    def dtype(self, name: str) -> np.dtype:
        return self._entries[name][0]

    def get(self, name: str) -> np.ndarray:
        """A read-only view; nothing is read from disk until it is sliced or copied."""
        dtype, shape, begin, end = self._entries[name]
        if self._mm is None:
            self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")
        raw = self._mm[self._data_start + begin : self._data_start + end]
        return raw.view(dtype).reshape(shape)


def save_file(
    tensors: Mapping[str, np.ndarray], path: str, metadata: Mapping[str, str] | None = None
) -> None:
    """Write tensors to `path` (atomically: temp file + rename)."""
    header: dict = {}
    offset = 0
    arrays = []
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        if arr.dtype not in _NAMES:
            raise TypeError(f"tensor {name!r}: dtype {arr.dtype} cannot be stored in safetensors")
        nbytes = arr.nbytes
        header[name] = {
            "dtype": _NAMES[arr.dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
        arrays.append(arr)
    if metadata:
        header["__metadata__"] = dict(metadata)
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * ((8 - len(blob) % 8) % 8)  # data aligned to 8 bytes, as the reference writer does
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for arr in arrays:
            f.write(arr.tobytes(order="C"))
    os.replace(tmp, path)
