"""The committee tree as data: parents, subtrees, depths and code aliases.

Theory of operation
-------------------
A node id is a committee's *stable id*: its division code at registration
(``430102`` 芙蓉区).  The tree is built from rows of the province-issued,
replicated ``committees`` table — ``(code, name, level, parent_code, aliases)`` —
and never from the digits of a code (HC-27): ``code[:4] + "00"`` is wrong for
仙桃 429004, 东莞 441900 and a national node ``100000``, so no method here looks
inside a code.

A renamed division keeps its stable id; every other division code it has been
known by (the code it was renamed to, or earlier codes) is listed in
``aliases``, and :meth:`Topology.resolve` maps any of them to the stable id.
Every query method accepts a stable id or an alias and answers in stable ids.

A :class:`Topology` is immutable.  Re-parenting a committee (撤县设区, a county
moved to another city) is a new ``Topology.from_rows`` over the updated rows;
every subtree check made with the new object follows the new parent.

Any depth works: a root is the one row without a parent, whatever its level.
Inconsistent rows raise :class:`TopologyError` with a named ``code``:
``UNKNOWN_NODE``, ``DUPLICATE_NODE``, ``ALIAS_CLASH``, ``DANGLING_PARENT``,
``TWO_ROOTS``, ``NO_ROOT``, ``CYCLE``.  Nothing here does I/O apart from
:meth:`Topology.from_csv` reading one file.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence


class TopologyError(ValueError):
    """The committee rows are inconsistent, or a code is unknown.

    ``code`` names the problem (``UNKNOWN_NODE``, ``CYCLE``, ``TWO_ROOTS``,
    ``DANGLING_PARENT``, ``DUPLICATE_NODE``, ``ALIAS_CLASH``, ``NO_ROOT``).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


@dataclass(frozen=True)
class Committee:
    """One row of the committees table, normalised."""

    code: str
    name: str
    level: str
    parent_code: str | None
    aliases: tuple[str, ...] = ()


def _aliases(raw: object) -> tuple[str, ...]:
    """Accept a list/tuple of codes or a string separated by commas, semicolons or spaces."""
    if raw is None:
        return ()
    if isinstance(raw, str):
        return tuple(a for a in re.split(r"[\s,;|]+", raw) if a)
    return tuple(str(a) for a in raw if a not in (None, ""))  # type: ignore[attr-defined]


def _committee(row: Mapping[str, Any] | Sequence[Any]) -> Committee:
    if isinstance(row, Mapping):
        code, name, level = row["code"], row.get("name", ""), row.get("level", "")
        parent, aliases = row.get("parent_code"), row.get("aliases")
    else:
        code, name, level, parent, *rest = row
        aliases = rest[0] if rest else None
    parent_code = str(parent) if parent not in (None, "") else None
    return Committee(str(code), str(name or ""), str(level or ""), parent_code, _aliases(aliases))


class Topology:
    """An immutable committee tree.  Build it with :meth:`from_rows` or :meth:`from_csv`."""

    def __init__(self, committees: Iterable[Committee]) -> None:
        self._rows: dict[str, Committee] = {}
        self._alias: dict[str, str] = {}
        for c in committees:
            self._add(c)
        self._parent: dict[str, str | None] = {
            code: self._parent_of(c) for code, c in self._rows.items()
        }
        self._children: dict[str, list[str]] = {code: [] for code in self._rows}
        for code, parent in self._parent.items():
            if parent is not None:
                self._children[parent].append(code)
        for kids in self._children.values():
            kids.sort()
        self._root = self._find_root()
        self._depth = self._compute_depths()
        self._subtree_cache: dict[str, frozenset[str]] = {}
        #: memo for pure functions of this tree (syncd.routing); dropped with the tree
        self.memo: dict[object, object] = {}

    # -- construction ---------------------------------------------------------------

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any] | Sequence[Any]]) -> "Topology":
        """Rows are dicts with keys code, name, level, parent_code, aliases (optional),
        or tuples ``(code, name, level, parent_code[, aliases])``."""
        return cls(_committee(r) for r in rows)

    @classmethod
    def from_csv(cls, path: str | Path) -> "Topology":
        """Read a CSV with header ``code,name,level,parent_code[,aliases]``."""
        with open(path, newline="", encoding="utf-8") as fh:
            return cls.from_rows(list(csv.DictReader(fh)))

    def _add(self, c: Committee) -> None:
        if c.code in self._rows:
            raise TopologyError("DUPLICATE_NODE", f"committee {c.code} is listed twice")
        if c.code in self._alias:
            raise TopologyError("ALIAS_CLASH", f"{c.code} is already an alias of {self._alias[c.code]}")
        self._rows[c.code] = c
        for a in c.aliases:
            if a == c.code:
                continue
            owner = self._alias.get(a)
            if a in self._rows or (owner is not None and owner != c.code):
                raise TopologyError("ALIAS_CLASH", f"alias {a} of {c.code} is already taken")
            self._alias[a] = c.code

    def _parent_of(self, c: Committee) -> str | None:
        if c.parent_code is None:
            return None
        parent = c.parent_code if c.parent_code in self._rows else self._alias.get(c.parent_code)
        if parent is None:
            raise TopologyError("DANGLING_PARENT", f"{c.code}'s parent {c.parent_code} is not a committee")
        if parent == c.code:
            raise TopologyError("CYCLE", f"{c.code} is its own parent")
        return parent

    def _find_root(self) -> str:
        roots = sorted(code for code, p in self._parent.items() if p is None)
        if len(roots) > 1:
            raise TopologyError("TWO_ROOTS", f"more than one committee without a parent: {roots}")
        if not roots:
            raise TopologyError("NO_ROOT" if not self._rows else "CYCLE",
                                "no committee without a parent (empty table or a cycle)")
        return roots[0]

    def _compute_depths(self) -> dict[str, int]:
        depth = {self._root: 0}
        stack = [self._root]
        while stack:
            node = stack.pop()
            for kid in self._children[node]:
                depth[kid] = depth[node] + 1
                stack.append(kid)
        missing = sorted(set(self._rows) - set(depth))
        if missing:
            raise TopologyError("CYCLE", f"committees not under the root (a parent cycle): {missing}")
        return depth

    # -- queries ----------------------------------------------------------------------

    @property
    def root(self) -> str:
        return self._root

    @property
    def nodes(self) -> frozenset[str]:
        return frozenset(self._rows)

    def __contains__(self, code: object) -> bool:
        return isinstance(code, str) and (code in self._rows or code in self._alias)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._rows, key=lambda c: (self._depth[c], c)))

    def __len__(self) -> int:
        return len(self._rows)

    def resolve(self, code: str) -> str:
        """The stable id for a stable id or an alias; raises ``UNKNOWN_NODE``."""
        code = str(code)
        if code in self._rows:
            return code
        try:
            return self._alias[code]
        except KeyError:
            raise TopologyError("UNKNOWN_NODE", f"no committee with code or alias {code}") from None

    def committee(self, code: str) -> Committee:
        return self._rows[self.resolve(code)]

    def name(self, code: str) -> str:
        return self.committee(code).name

    def level(self, code: str) -> str:
        return self.committee(code).level

    def aliases(self, code: str) -> tuple[str, ...]:
        return self.committee(code).aliases

    def parent(self, code: str) -> str | None:
        """The parent's stable id, or None at the root."""
        return self._parent[self.resolve(code)]

    def children(self, code: str) -> tuple[str, ...]:
        """Direct children, sorted by stable id."""
        return tuple(self._children[self.resolve(code)])

    def ancestors(self, code: str) -> tuple[str, ...]:
        """Ancestors, nearest first, ending with the root; empty at the root."""
        out: list[str] = []
        node = self._parent[self.resolve(code)]
        while node is not None:
            out.append(node)
            node = self._parent[node]
        return tuple(out)

    def path(self, code: str) -> tuple[str, ...]:
        """Root-first path down to ``code`` (inclusive)."""
        node = self.resolve(code)
        return tuple(reversed(self.ancestors(node))) + (node,)

    def depth(self, code: str) -> int:
        """0 at the root."""
        return self._depth[self.resolve(code)]

    def subtree(self, code: str) -> frozenset[str]:
        """``code`` and every descendant."""
        node = self.resolve(code)
        cached = self._subtree_cache.get(node)
        if cached is None:
            out, stack = {node}, [node]
            while stack:
                for kid in self._children[stack.pop()]:
                    out.add(kid)
                    stack.append(kid)
            cached = self._subtree_cache[node] = frozenset(out)
        return cached

    def in_subtree(self, node: str, root: str) -> bool:
        """True when ``node`` is ``root`` or one of its descendants."""
        n, r = self.resolve(node), self.resolve(root)
        return n == r or r in self.ancestors(n)

    def neighbours(self, code: str) -> tuple[str, ...]:
        """Parent (if any) first, then the children."""
        parent = self.parent(code)
        return ((parent,) if parent is not None else ()) + self.children(code)

    def behind(self, me: str, peer: str) -> frozenset[str]:
        """The nodes reached through the link from ``me`` to its neighbour ``peer``:
        the peer's subtree for a child, everything outside ``me``'s subtree for the parent."""
        me, peer = self.resolve(me), self.resolve(peer)
        if self._parent[peer] == me:
            return self.subtree(peer)
        if self._parent[me] == peer:
            return self.nodes - self.subtree(me)
        raise TopologyError("UNKNOWN_NODE", f"{peer} is not a neighbour of {me}")

    def rows(self) -> list[Committee]:
        """The committees, root first (depth, then code)."""
        return [self._rows[c] for c in self]
