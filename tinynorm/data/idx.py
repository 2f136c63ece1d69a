"""Reading IDX files, the simple format MNIST and Fashion-MNIST are published in.

An IDX file is a 4-byte magic number, one 4-byte size per dimension, then the data, all
big-endian:

    magic:  0x00 0x00 <type code> <number of dimensions>
    sizes:  ndim unsigned 32-bit integers
    data:   prod(sizes) items of the type below, row-major

The files are usually gzip-compressed; `read_idx` looks at the first two bytes (gzip's magic
0x1f 0x8b) rather than trusting the file name. Anything that does not add up raises `IDXError`
with the file's name and what is wrong, so a truncated download never passes for data.
"""

from __future__ import annotations

import gzip
import zlib
from math import prod
from os import PathLike
from pathlib import Path

import numpy as np

GZIP_MAGIC = b"\x1f\x8b"

# IDX type code -> big-endian NumPy dtype
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),  # unsigned byte
    0x09: np.dtype(">i1"),  # signed byte
    0x0B: np.dtype(">i2"),  # short
    0x0C: np.dtype(">i4"),  # int
    0x0D: np.dtype(">f4"),  # float
    0x0E: np.dtype(">f8"),  # double
}


class IDXError(ValueError):
    """An IDX file that cannot be read: bad gzip stream, wrong magic, wrong length, ..."""


def read_idx(path: str | PathLike[str]) -> np.ndarray:
    """The array stored in the IDX file `path` (gzip-compressed or raw), in native byte order."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise IDXError(f"{path}: not a valid gzip file ({err})") from None
    return parse_idx(raw, name=str(path))


def parse_idx(raw: bytes, name: str = "<bytes>") -> np.ndarray:
    """The array held by the uncompressed IDX bytes `raw`; `name` is used in error messages."""
    if len(raw) < 4:
        raise IDXError(f"{name}: only {len(raw)} bytes, too short for an IDX header")
    magic = int.from_bytes(raw[:4], "big")
    if raw[0] != 0 or raw[1] != 0:
        raise IDXError(f"{name}: wrong magic 0x{magic:08X}, not an IDX file")
    code, ndim = raw[2], raw[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise IDXError(f"{name}: unknown IDX type code 0x{code:02X} (known: {known})")
    if ndim == 0:
        raise IDXError(f"{name}: the header declares 0 dimensions")

    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IDXError(
            f"{name}: truncated header: {ndim} dimensions need {header} bytes, found {len(raw)}"
        )
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = prod(shape) * dtype.itemsize
    found = len(raw) - header
    if found < expected:
        raise IDXError(
            f"{name}: truncated: expected {expected} bytes of data for shape {shape}, found {found}"
        )
    if found > expected:
        raise IDXError(
            f"{name}: {found - expected} trailing bytes: expected {expected} bytes of data "
            f"for shape {shape}, found {found}"
        )
    data = np.frombuffer(raw, dtype=dtype, count=prod(shape), offset=header)
    return data.reshape(shape).astype(dtype.newbyteorder("="))
