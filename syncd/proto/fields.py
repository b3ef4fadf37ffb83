"""Typed readers for unpacked msgpack objects, with paths in their errors.

Theory of operation
-------------------
:mod:`syncd.proto.codec` unpacks a body with msgpack (bounded lengths) into plain
Python objects, then reads each field through the functions here.  Every reader
either returns a value of the promised type or raises :class:`DecodeError` naming
the path (``changes[3].cols.status.prev``) and what was wrong — never anything else.
This module does not import msgpack: :func:`declared_length_problem` reads msgpack
headers by hand to explain why a truncated body failed (a declared length over a
limit is reported as such, not as truncation).
"""
from __future__ import annotations

import math
import re
import uuid
from typing import Any, Callable, Mapping, TypeVar

from syncd.errors import SyncdError

T = TypeVar("T")

#: Largest integer carried anywhere (PostgreSQL bigint).
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
#: Nesting depth allowed inside a column value (SPEC R4.6).
MAX_VALUE_DEPTH = 32

#: Table, column and route names (SPEC R4.3).
IDENT_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
#: Node ids and org codes (SPEC R4.3).
NODE_RE = re.compile(r"^[0-9A-Za-z_-]{1,32}$")


class DecodeError(SyncdError):
    """A body that is not the expected message.  ``code`` is ``DECODE_ERROR`` unless
    a more specific one applies (``NEGATIVE_CL``, ``UNSUPPORTED_VERSION``,
    ``BODY_TOO_LARGE``, ``VALUE_TOO_LARGE``, ``UNKNOWN_COLUMN``)."""

    def __init__(self, path: str, reason: str, code: str = "DECODE_ERROR") -> None:
        super().__init__(code, f"{path or '$'}: {reason}", details={"path": path or "$"})
        self.path = path or "$"


def sub(path: str, key: str | int) -> str:
    """``path`` extended by a map key or a list index."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def fields(obj: Any, path: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """``obj`` as a map holding every ``required`` key, perhaps ``optional`` ones, nothing else."""
    if not isinstance(obj, dict):
        raise DecodeError(path, f"expected a map, got {type_name(obj)}")
    for k in obj:
        if k not in required and k not in optional:
            raise DecodeError(sub(path, str(k)), "unknown field")
    for k in required:
        if k not in obj:
            raise DecodeError(sub(path, k), "missing field")
    return obj


def type_name(v: Any) -> str:
    """The msgpack type name of an unpacked object, for error messages."""
    if v is None:
        return "nil"
    return {bool: "bool", int: "int", float: "float", str: "str", bytes: "bin",
            list: "array", dict: "map"}.get(type(v), "ext")


def integer(v: Any, path: str, lo: int = 0, hi: int = INT64_MAX) -> int:
    if type(v) is not int:
        raise DecodeError(path, f"expected int, got {type_name(v)}")
    if not lo <= v <= hi:
        raise DecodeError(path, f"{v} is outside [{lo}, {hi}]")
    return v


def causal_length(v: Any, path: str) -> int:
    """A ``cl``: an int >= 0; a negative one is ``NEGATIVE_CL``."""
    if type(v) is int and v < 0:
        raise DecodeError(path, f"negative causal length {v}", "NEGATIVE_CL")
    return integer(v, path)


def boolean(v: Any, path: str) -> bool:
    if type(v) is not bool:
        raise DecodeError(path, f"expected bool, got {type_name(v)}")
    return v


def string(v: Any, path: str, max_len: int = 256, pattern: re.Pattern[str] | None = None,
           code: str = "DECODE_ERROR") -> str:
    if type(v) is not str:
        raise DecodeError(path, f"expected str, got {type_name(v)}")
    if len(v) > max_len:
        raise DecodeError(path, f"string longer than {max_len}")
    if pattern is not None and not pattern.match(v):
        raise DecodeError(path, f"{v[:40]!r} does not match {pattern.pattern}", code)
    return v


def binary(v: Any, path: str, size: int) -> bytes:
    if type(v) is not bytes:
        raise DecodeError(path, f"expected bin, got {type_name(v)}")
    if len(v) != size:
        raise DecodeError(path, f"expected {size} bytes, got {len(v)}")
    return v


try:  # asyncpg's uuid type: a uuid.UUID made, hashed and sent to PostgreSQL in C
    from asyncpg.pgproto.pgproto import UUID as _FastUUID
except ImportError:  # pragma: no cover - asyncpg is a dependency; the codec does not need it
    _FastUUID = None


def uuid_from_bytes(b: bytes) -> uuid.UUID:
    """``uuid.UUID(bytes=b)`` for 16 bytes already checked, as asyncpg's own subclass (what it
    returns for a uuid column): made in 0.2 µs against 2.5, hashed in 0.1 against 0.3, and
    sent as a query argument without the checks asyncpg runs on any other object.  Every
    change and snapshot row read from the wire makes one, and its id is used in sets, dicts
    and id arrays all through an apply."""
    if _FastUUID is not None:
        return _FastUUID(b)  # type: ignore[no-any-return]
    return uuid.UUID(bytes=b)


def uuid_(v: Any, path: str) -> uuid.UUID:
    return uuid_from_bytes(binary(v, path, 16))


def optional(reader: Callable[..., T]) -> Callable[..., T | None]:
    """``reader`` that also accepts nil (→ ``None``)."""
    def read(v: Any, path: str, *a: Any, **kw: Any) -> T | None:
        return None if v is None else reader(v, path, *a, **kw)
    return read


def array(v: Any, path: str, item: Callable[[Any, str], T], max_len: int) -> tuple[T, ...]:
    if type(v) is not list:
        raise DecodeError(path, f"expected array, got {type_name(v)}")
    if len(v) > max_len:
        raise DecodeError(path, f"more than {max_len} items", "BODY_TOO_LARGE")
    return tuple(item(x, sub(path, i)) for i, x in enumerate(v))


def str_map(v: Any, path: str, item: Callable[[Any, str], T], max_len: int,
            key_pattern: re.Pattern[str] = IDENT_RE, key_code: str = "DECODE_ERROR") -> dict[str, T]:
    """A map with string keys matching ``key_pattern``, each value read by ``item``."""
    if type(v) is not dict:
        raise DecodeError(path, f"expected map, got {type_name(v)}")
    if len(v) > max_len:
        raise DecodeError(path, f"more than {max_len} entries", "BODY_TOO_LARGE")
    out: dict[str, T] = {}
    for k, x in v.items():
        string(k, sub(path, str(k)), 64, key_pattern, key_code)
        out[k] = item(x, sub(path, k))
    return out


#: orjson reads an integer outside int64 (below) or u64 (above) as a float: a float this large may have been one
HUGE = 2.0 ** 63  # below -2**63 orjson reads an integer as a float too


#: what orjson reads exactly whatever its size (only a float may be an integer it could not hold)
EXACT_TYPES = frozenset((str, type(None), bool, int))


def huge(v: Any) -> bool:
    """Does ``v`` hold a float of magnitude ≥ 2**63 (at any depth)?"""
    t = type(v)
    if t is float:
        return not -HUGE < v < HUGE
    if t is dict:
        v = v.values()
    elif t is not list:
        return False
    if EXACT_TYPES.issuperset(map(type, v)):  # no float, list or map in it: one set operation
        return False
    for x in v:
        tx = type(x)
        if tx is float:
            if not -HUGE < x < HUGE:
                return True
        elif (tx is dict or tx is list) and huge(x):
            return True
    return False


def value(v: Any, path: str, depth: int = 0) -> Any:
    """A JSON-like column value: nil, bool, int64, finite float, str, array, map of str."""
    if depth > MAX_VALUE_DEPTH:
        raise DecodeError(path, f"nested deeper than {MAX_VALUE_DEPTH}")
    t = type(v)
    if v is None or t is bool or t is str:
        return v
    if t is int:
        return integer(v, path, INT64_MIN, INT64_MAX)
    if t is float:
        if not math.isfinite(v):
            raise DecodeError(path, "NaN and infinities are not JSON values")
        return v
    if t is list:
        return [value(x, sub(path, i), depth + 1) for i, x in enumerate(v)]
    if t is dict:
        out = {}
        for k, x in v.items():
            if type(k) is not str:
                raise DecodeError(path, "map keys in a value must be strings")
            out[k] = value(x, sub(path, k), depth + 1)
        return out
    raise DecodeError(path, f"{type_name(v)} is not a JSON-like value")


# -- explaining a failed unpack by reading msgpack headers -----------------------------

# first byte -> (kind, size of the length field); fixed-size types map to their size
_LEN_HEADERS: Mapping[int, tuple[str, int]] = {
    0xC4: ("bin", 1), 0xC5: ("bin", 2), 0xC6: ("bin", 4),
    0xD9: ("str", 1), 0xDA: ("str", 2), 0xDB: ("str", 4),
    0xDC: ("array", 2), 0xDD: ("array", 4), 0xDE: ("map", 2), 0xDF: ("map", 4),
    0xC7: ("ext", 1), 0xC8: ("ext", 2), 0xC9: ("ext", 4),
}
_FIXED: Mapping[int, int] = {
    0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8,
    0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8, 0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17,
}


def _header(data: bytes, i: int) -> tuple[str, int, int]:
    """(kind, declared length or payload size, index after the header) at ``i``."""
    b = data[i]
    if b <= 0x7F or b >= 0xE0:
        return ("scalar", 0, i + 1)
    if 0x80 <= b <= 0x8F:
        return ("map", b & 0x0F, i + 1)
    if 0x90 <= b <= 0x9F:
        return ("array", b & 0x0F, i + 1)
    if 0xA0 <= b <= 0xBF:
        return ("str", b & 0x1F, i + 1)
    if b in _FIXED:
        return ("scalar", _FIXED[b], i + 1)
    if b in _LEN_HEADERS:
        kind, w = _LEN_HEADERS[b]
        n = int.from_bytes(data[i + 1:i + 1 + w], "big")
        return (kind, n + (1 if kind == "ext" else 0), i + 1 + w)
    return ("invalid", 0, i + 1)


def declared_length_problem(data: bytes, limits: Mapping[str, int]) -> tuple[str, str] | None:
    """``(code, reason)`` for the first header declaring a length over ``limits``
    (keys ``str``, ``bin``, ``array``, ``map``), or ``None``.  Reads at most
    ``len(data)`` headers, so it is linear whatever the declared counts say."""
    i = 0
    while i < len(data):
        kind, n, i = _header(data, i)
        if kind in limits and n > limits[kind]:
            code = "VALUE_TOO_LARGE" if kind == "str" else "BODY_TOO_LARGE"
            return code, f"declared {kind} length {n} exceeds {limits[kind]}"
        if kind in ("str", "bin", "ext", "scalar"):
            i += n
    return None
