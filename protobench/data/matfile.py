"""MATLAB files (Stanford Cars' devkit), read with scipy after a check that they cannot blow up memory.

scipy allocates a struct or cell array from the size its header declares before it reads the
elements, so a 344-byte file that declares a 1 x 50 000 000 struct costs 760 MB, and a compressed
variable can inflate a thousandfold. `load_variable` therefore refuses a file over MAT_BYTES, and
walks the headers of a v5 file (compressed parts inflated, at most INFLATED_BYTES in all) first:
every struct or cell array must hold at least one 8-byte element tag per element it declares,
and every element must be of a known type, in the number the array's flags announce (scipy's
compiled reader crashed the interpreter on an unknown type or a missing imaginary part).
"""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

from protobench.errors import DataError

MAT_BYTES = 16 << 20  # the devkit's files are under 1 MB
INFLATED_BYTES = 64 << 20
MAX_DEPTH = 32  # structs in structs: the devkit has one level
MI_INT8, MI_INT32, MI_UINT32, MI_MATRIX, MI_COMPRESSED = 1, 5, 6, 14, 15
# The data types of the format: numbers (miINT8 .. miUINT64, no 8, 10, 11) and text (miUTF8/16/32).
# scipy's compiled reader looks a type up in a table without a bounds check: type 1540 crashed it.
DATA_TYPES = frozenset({1, 2, 3, 4, 5, 6, 7, 9, 12, 13, 16, 17, 18})
CELL, STRUCT, OBJECT, SPARSE, LAST_CLASS = 1, 2, 3, 5, 15  # 16 and 17: function handles, opaque objects
COMPLEX = 0x800  # array flag: an imaginary part follows the real one


class _Bad(Exception):
    """What is wrong with the file, as a phrase."""


def load_variable(path: Path, key: str):
    """Variable `key` of the MATLAB file at `path` (squeezed, structs as records); DataError, naming
    the file, for a missing, huge, malformed or non-MATLAB file or a missing variable."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DataError("reading Stanford Cars' .mat annotations needs scipy: pip install scipy") from None
    if not path.is_file():
        raise DataError(f"{path} is not a file: expected the Stanford Cars devkit's MATLAB file")
    if path.stat().st_size > MAT_BYTES:
        raise DataError(f"{path} is {path.stat().st_size / 2**20:.0f} MiB, more than an annotation file may be "
                        f"({MAT_BYTES >> 20} MiB): is it the Stanford Cars devkit file?")
    try:
        check(path.read_bytes())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy's notes on odd files: what it returns is checked instead
            data = loadmat(str(path), squeeze_me=True, variable_names=[key])
    except _Bad as err:
        raise DataError(f"{path} is not a MATLAB file protobench can read safely ({err})") from None
    except Exception as err:  # noqa: BLE001 - scipy raises many types for a file that is not MATLAB
        raise DataError(f"{path} is not a readable MATLAB file ({type(err).__name__}: {err})") from None
    if key not in data:
        raise DataError(f"{path} has no variable {key!r}: is it the Stanford Cars devkit file?")
    return data[key]


def check(raw: bytes) -> None:
    """_Bad unless every array a v5 file declares fits in the bytes it holds (v4 files hold
    plain numeric matrices that scipy reads no further than the file; v7.3 scipy refuses)."""
    if len(raw) < 128 or 0 in raw[:4]:
        return  # v4 (scipy's test): plain matrices, read no further than the file
    major = raw[125] if raw[126] == ord("I") else raw[124]  # as scipy tells the version
    if major != 1:
        return  # v7.3 (HDF5) and unknown versions: scipy refuses them
    order = "<" if raw[126:128] == b"IM" else ">"
    budget = [INFLATED_BYTES]
    pos = 128
    while pos + 8 <= len(raw):
        mdtype, start, size, end = _tag(raw, pos, len(raw), order)
        if mdtype == MI_COMPRESSED:
            body = _inflate(raw[start:start + size], budget)
            _matrix(body, 0, len(body), order, 0)
        elif mdtype == MI_MATRIX:
            _matrix(raw, pos, start + size, order, 0)
        pos = start + size  # top-level elements are not padded


def _inflate(data: bytes, budget: list[int]) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, budget[0] + 1)
    except zlib.error as err:
        raise _Bad(f"corrupt compressed data: {err}") from None
    if len(out) > budget[0]:
        raise _Bad(f"its compressed variables inflate to more than {INFLATED_BYTES >> 20} MiB")
    budget[0] -= len(out)
    return out


def _tag(buf: bytes, pos: int, end: int, order: str) -> tuple[int, int, int, int]:
    """(data type, data start, data bytes, next element, padded to 8) of the element at pos."""
    if pos + 8 > end:
        raise _Bad("an element runs past its end")
    first, second = struct.unpack_from(order + "II", buf, pos)
    if first >> 16:  # small element: type and size in one word, data in the next 4 bytes
        if first >> 16 > 4:
            raise _Bad(f"a small element of {first >> 16} bytes (at most 4)")
        return first & 0xFFFF, pos + 4, first >> 16, pos + 8
    if pos + 8 + second > end:
        raise _Bad("an element runs past its end")
    return first, pos + 8, second, pos + 8 + (second + 7) // 8 * 8


def _matrix(buf: bytes, pos: int, end: int, order: str, depth: int) -> int:
    """Check the miMATRIX element at pos (and what it holds); the position after it."""
    mdtype, start, size, after = _tag(buf, pos, end, order)
    if mdtype != MI_MATRIX:
        raise _Bad(f"expected a matrix element, found type {mdtype}")
    if depth > MAX_DEPTH:
        raise _Bad(f"arrays nested more than {MAX_DEPTH} deep")
    if size == 0:
        return after  # an empty matrix
    stop = start + size
    flags = _sub(buf, start, stop, order, MI_UINT32)
    dims = _sub(buf, flags[2], stop, order, MI_INT32)
    flag_word = struct.unpack_from(order + "I", flags[0])[0]
    kind = flag_word & 0xFF
    shape = struct.unpack(order + f"{len(dims[0]) // 4}i", dims[0][:len(dims[0]) // 4 * 4])
    if any(d < 0 for d in shape):
        raise _Bad(f"negative dimensions {shape}")
    if not 1 <= kind <= LAST_CLASS:
        raise _Bad(f"array class {kind}: not numbers, text, a cell, struct or object")
    p = _data(buf, dims[2], stop, order, {MI_INT8})[3]  # the array name
    if kind not in (CELL, STRUCT, OBJECT):
        _parts(buf, p, stop, order, (3 if kind == SPARSE else 1) + bool(flag_word & COMPLEX))
        return after
    fields = 1
    if kind in (STRUCT, OBJECT):
        if kind == OBJECT:
            p = _data(buf, p, stop, order, {MI_INT8})[3]  # the class name
        length_data, _, p = _sub(buf, p, stop, order, MI_INT32)
        length = struct.unpack_from(order + "i", length_data)[0]  # bytes per field name
        names = _data(buf, p, stop, order, {MI_INT8})
        fields, p = (names[2] // length if length > 0 else 0), names[3]
    count = 1
    for d in shape:
        count *= d
    if count * fields * 8 > stop - p:
        raise _Bad(f"a {'x'.join(map(str, shape))} array with {fields} field(s) in {stop - p} bytes")
    for _ in range(count * fields):
        p = _matrix(buf, p, stop, order, depth + 1)
    return after


def _parts(buf: bytes, pos: int, stop: int, order: str, expected: int) -> None:
    """The data parts of numbers, text or a sparse array: exactly as many as the flags say (scipy
    reads an imaginary part the complex flag promises from whatever follows: a crash), of data types."""
    count = 0
    while pos < stop:
        pos = _data(buf, pos, stop, order, DATA_TYPES)[3]
        count += 1
    if count != expected:
        raise _Bad(f"an array with {count} data part(s) where its flags say {expected}")


def _data(buf: bytes, pos: int, end: int, order: str, allowed: set[int] | frozenset[int]):
    """_tag of a data element whose type must be one of `allowed`."""
    found = _tag(buf, pos, end, order)
    if found[0] not in allowed:
        raise _Bad(f"a data element of type {found[0]} where {'/'.join(map(str, sorted(allowed)))} belongs")
    return found


def _sub(buf: bytes, pos: int, end: int, order: str, expected: int) -> tuple[bytes, int, int]:
    """(data, its start, next element) of a subelement that must be of type `expected`."""
    mdtype, start, size, after = _tag(buf, pos, end, order)
    if mdtype != expected or size < 4:
        raise _Bad(f"expected a type {expected} subelement, found type {mdtype} of {size} bytes")
    return bytes(buf[start:start + size]), start, after
