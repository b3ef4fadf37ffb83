"""Messages as JSON-able values, for test vectors and operator tools (SPEC §12).

uuids become their canonical text, bytes lower-case hex, a :class:`Version` its
5-list, tuples lists; dataclasses and changes become maps keyed by field name.  The form is
one-way (for comparison and display); the wire form is :mod:`syncd.proto.codec`'s.
"""
from __future__ import annotations

import dataclasses
import uuid
from typing import Any, Mapping

from syncd.proto.change import Change, ColumnChange, Version
from syncd.proto.messages import StoredRow


def to_json(x: Any) -> Any:
    """A JSON-able rendering of a message or any part of one."""
    if isinstance(x, Version):
        return x.as_list()
    if isinstance(x, StoredRow):  # rendered as the SnapshotRow it equals
        return {"id": str(x.id), "org_code": x.org_code, "cl": x.cl, "homes": to_json(x.homes),
                "cols": to_json(x.cols), "prevs": to_json(x.prevs)}
    if isinstance(x, ColumnChange):
        return {k: to_json(v) for k, v in x._asdict().items()}
    if isinstance(x, Change):
        return {name: to_json(getattr(x, name)) for name in Change.FIELDS}
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {fd.name: to_json(getattr(x, fd.name)) for fd in dataclasses.fields(x)}
    if isinstance(x, uuid.UUID):
        return str(x)
    if isinstance(x, bytes):
        return x.hex()
    if isinstance(x, Mapping):
        return {str(k): to_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_json(v) for v in x]
    return x
