"""Heavy descriptors: the wire form of an array, and their validation (pure, no I/O).

Two forms (docs/PROTOCOL.md, "Descriptor")::

    {seg, off, len, dtype, shape, strides, gen}     an array in a shared-memory segment
    {inline, dtype, shape}                          a small array carried in the message

A descriptor is untrusted input: `parse` checks every field and raises HeavyError with the
reason. The bounds against the actual segment (its size, its generation) are checked by the
caller that opens it (`HeavyStore.validate`, `HeavyReader.open_array`), through `Layout`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from pipeline.errors import HeavyError
from pipeline.heavy import names

MAX_NDIM = 32
MAX_INT = 1 << 62
SEGMENT_KEYS = frozenset({"seg", "off", "len", "dtype", "shape", "strides", "gen"})
INLINE_KEYS = frozenset({"inline", "dtype", "shape"})
OPTIONAL_KEYS = frozenset({"ns"})

_ALLOWED = (
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "complex64", "complex128",
)
ALLOWED_DTYPES: dict[str, np.dtype] = {np.dtype(t).str: np.dtype(t) for t in _ALLOWED}


class Layout(NamedTuple):
    """A checked array layout: dtype, shape, strides, byte extent."""

    dtype: np.dtype
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    nbytes: int


class SegmentRef(NamedTuple):
    """A checked segment descriptor (bounds against the file still to be checked)."""

    seg: str
    off: int
    length: int
    gen: int
    layout: Layout


def check_dtype(value: object) -> np.dtype:
    """The numpy dtype a descriptor names, if it is on the allow-list."""
    if not isinstance(value, str):
        raise HeavyError(f"dtype must be a string, got {type(value).__name__}")
    dt = ALLOWED_DTYPES.get(value)
    if dt is None:
        raise HeavyError(f"dtype {value[:32]!r} is not allowed (numeric dtypes only, "
                         f"native byte order: {', '.join(sorted(ALLOWED_DTYPES))})")
    return dt


def dtype_of(array: np.ndarray) -> str:
    """The wire dtype string of an array; HeavyError if its dtype is not allowed."""
    check_dtype(array.dtype.str)
    return str(array.dtype.str)


def _check_int(what: str, value: object, low: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise HeavyError(f"{what} must be an integer, got {type(value).__name__}")
    if value < low:
        raise HeavyError(f"{what} is negative ({value})")
    if value > MAX_INT:
        raise HeavyError(f"{what} is too large ({value})")
    return value


def _check_ints(what: str, values: list[Any] | tuple[Any, ...]) -> tuple[int, ...]:
    """Every element a non-negative integer within MAX_INT. The loop is the fast path (one
    descriptor is parsed three times per update: vetting, commit, each reader); the error
    names the first bad element."""
    for v in values:
        if type(v) is not int or not 0 <= v <= MAX_INT:
            return tuple(_check_int(f"{what}[{i}]", v) for i, v in enumerate(values))
    return tuple(values)


def check_shape(value: object) -> tuple[int, ...]:
    """A shape: a list of at most MAX_NDIM non-negative integers."""
    if not isinstance(value, list | tuple):
        raise HeavyError(f"shape must be a list of integers, got {type(value).__name__}")
    if len(value) > MAX_NDIM:
        raise HeavyError(f"too many dimensions ({len(value)} > {MAX_NDIM})")
    return _check_ints("shape", value)


def _check_strides(value: object, shape: tuple[int, ...], dtype: np.dtype,
                   length: int) -> tuple[int, ...]:
    if not isinstance(value, list | tuple) or len(value) != len(shape):
        raise HeavyError(f"strides must be a list of {len(shape)} integers")
    strides = _check_ints("strides", value)
    for i, s in enumerate(strides):
        if s % dtype.itemsize:
            raise HeavyError(f"strides[{i}] = {s} is not a multiple of itemsize {dtype.itemsize}")
    if math.prod(shape):
        extent = sum((n - 1) * s for n, s in zip(shape, strides, strict=True)) + dtype.itemsize
        if extent > length:
            raise HeavyError(f"strides reach byte {extent}, past the array's length {length}")
    return strides


def _check_keys(desc: Mapping[str, Any], required: frozenset[str]) -> None:
    if len(desc) == len(required) and required.issuperset(desc):
        return  # exactly the required keys: the common case
    missing = required - desc.keys()
    if missing:
        raise HeavyError(f"descriptor lacks {', '.join(sorted(missing))}")
    extra = desc.keys() - required - OPTIONAL_KEYS
    if extra:
        raise HeavyError(f"descriptor has unexpected fields {sorted(map(str, extra))[:5]}")


def is_inline(desc: object) -> bool:
    """True for the inline form (a dict with an `inline` field)."""
    return isinstance(desc, Mapping) and "inline" in desc


def check_namespace_field(desc: Mapping[str, Any], namespace: str) -> None:
    """Refuse a descriptor that says it belongs to another namespace."""
    ns = desc.get("ns", namespace)
    if ns != namespace:
        raise HeavyError(f"descriptor belongs to namespace {str(ns)[:64]!r}, not {namespace!r}")


def parse_segment(desc: object, max_bytes: int) -> SegmentRef:
    """Check a segment descriptor's fields; bounds against the segment come later."""
    if not isinstance(desc, Mapping):
        raise HeavyError(f"descriptor must be a map, got {type(desc).__name__}")
    _check_keys(desc, SEGMENT_KEYS)
    seg = names.check_segment_name(desc["seg"])
    dtype = check_dtype(desc["dtype"])
    shape = check_shape(desc["shape"])
    off, length, gen = desc["off"], desc["len"], desc["gen"]
    if not (type(off) is type(length) is type(gen) is int
            and 0 <= off <= MAX_INT and 0 <= length <= MAX_INT and 1 <= gen <= MAX_INT):
        off = _check_int("off", off)
        length = _check_int("len", length)
        gen = _check_int("gen", gen, low=1)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > max_bytes:
        raise HeavyError(f"array of {nbytes} bytes exceeds the limit of {max_bytes}")
    if length != nbytes:
        raise HeavyError(f"len {length} does not match shape x itemsize = {nbytes}")
    if off % dtype.itemsize:
        raise HeavyError(f"off {off} is not aligned to itemsize {dtype.itemsize}")
    strides = _check_strides(desc["strides"], shape, dtype, length)
    return SegmentRef(seg, off, length, gen, Layout(dtype, shape, strides, nbytes))


def parse_inline(desc: object, max_bytes: int) -> np.ndarray:
    """Check an inline descriptor and return its array (read-only, no copy of the bytes)."""
    if not isinstance(desc, Mapping):
        raise HeavyError(f"descriptor must be a map, got {type(desc).__name__}")
    _check_keys(desc, INLINE_KEYS)
    data = desc["inline"]
    if not isinstance(data, bytes):
        raise HeavyError(f"inline data must be bytes, got {type(data).__name__}")
    dtype = check_dtype(desc["dtype"])
    shape = check_shape(desc["shape"])
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > max_bytes:
        raise HeavyError(f"array of {nbytes} bytes exceeds the limit of {max_bytes}")
    if len(data) != nbytes:
        raise HeavyError(f"inline data has {len(data)} bytes, shape x itemsize = {nbytes}")
    arr = np.frombuffer(data, dtype=dtype).reshape(shape)
    arr.flags.writeable = False
    return arr


def encode_inline(array: np.ndarray) -> dict[str, Any]:
    """The inline descriptor of a (small) array: C-order bytes, dtype, shape."""
    dtype = dtype_of(array)
    return {"inline": np.ascontiguousarray(array).tobytes(), "dtype": dtype,
            "shape": list(array.shape)}


def encode_segment(seg: str, gen: int, off: int, array: np.ndarray) -> dict[str, Any]:
    """The segment descriptor of `array`, which lies at byte `off` of segment `seg`."""
    return {"seg": seg, "off": off, "len": array.nbytes, "dtype": dtype_of(array),
            "shape": list(array.shape), "strides": list(array.strides), "gen": gen}


def check_bounds(ref: SegmentRef, size: int, gen: int, header: int) -> None:
    """Check a parsed descriptor against the segment's actual size and generation."""
    if gen != ref.gen:
        raise HeavyError(f"stale generation: descriptor has gen {ref.gen}, segment {ref.seg} "
                         f"is at gen {gen} (it was freed and reused)")
    if ref.off < header:
        raise HeavyError(f"off {ref.off} points into the segment header ({header} bytes)")
    if ref.off + ref.length > size:
        raise HeavyError(f"off {ref.off} + len {ref.length} runs past the end of segment "
                         f"{ref.seg} ({size} bytes)")
