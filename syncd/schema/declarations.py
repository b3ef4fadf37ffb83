"""The replicated tables of the 政协云 domain, declared once.

Theory of operation
-------------------
Every replicated table has an immutable ``id uuid`` primary key and an immutable
``org_code``: the committee that owns the row (its *home*).  This module says, for
each table and in one place only:

* **routes** — the column paths whose homes the row reaches, each with a flow:
  ``up`` (home and its ancestors), ``down`` (home and its descendants), ``tree``
  (both) or ``local`` (the home only).  A row reaches the union of its routes.
* **writers per column** — by default only the home writes a column; a few named
  columns also accept the home of another route (the organiser of an activity may
  record the attendance status of another committee's member).
* **merge rule per column** — ``lww`` or ``workflow`` (rank ``(round, stage)``).
* **reach per column** — ``all``, ``home`` (personal data: never leaves the home)
  or ``up:N`` (the home and N levels above it).
* **local columns** — maintained by the application (``updated_at``), never shipped
  and never diffed.
* **natural keys** — for tables where two levels may record the same fact, the id is
  derived from the key (:func:`natural_id`), so both make the same row.

The database schema (types, constraints) lives in ``migrations/*.sql``; a test checks
that the two agree.  Nothing here does I/O.
"""
from __future__ import annotations

import functools
import hashlib
import uuid
from dataclasses import dataclass, field
from typing import Literal, Mapping

Flow = Literal["up", "down", "tree", "local"]
MergeRule = Literal["lww", "workflow"]

FLOWS: tuple[str, ...] = ("local", "up", "down", "tree")
HOME = "home"

#: Namespace of derived ids (RFC 9562 UUIDv8, name-based over SHA-256).
NATURAL_ID_NAMESPACE = uuid.UUID("6f1c2c1e-5a0b-4f8e-9d0e-2a1c0d3e4b5f")


class DeclarationError(ValueError):
    """A table declaration is inconsistent (named in the message)."""


@dataclass(frozen=True)
class Workflow:
    """A staged workflow column: later stages beat earlier ones of the same round.

    ``round_starters`` are values that begin a new round (重新办理, 退回, 改办): a
    legitimate move backwards that must still win everywhere.
    """

    stages: tuple[str, ...]
    round_starters: frozenset[str] = frozenset()

    def stage(self, value: object) -> int:
        """Index of ``value`` among the stages; unknown values rank lowest (-1)."""
        try:
            return self.stages.index(str(value))
        except ValueError:
            return -1


@dataclass(frozen=True)
class Column:
    name: str
    merge: MergeRule = "lww"
    reach: str = "all"  # 'all' | 'home' | 'up:N'
    writers: tuple[str, ...] = (HOME,)  # route names whose home may write the column
    local: bool = False  # app-maintained (updated_at): never shipped, never diffed
    derived_from: str | None = None  # computed by the home daemon when emitting (id hash)
    workflow: Workflow | None = None

    @property
    def personal(self) -> bool:
        return self.reach != "all"


@dataclass(frozen=True)
class Route:
    """The row reaches the home found at ``path`` with ``flow``.

    ``path`` is ``("org_code",)`` for the row's own home, or
    ``(fk_column, target_table, "org_code")`` for the home of a referenced row.
    """

    name: str
    path: tuple[str, ...]
    flow: Flow


@dataclass(frozen=True)
class Ref:
    """A reference to another replicated table.

    ``enforced`` references are foreign-key constraints and must satisfy the reach
    rule (the target reaches everywhere the referencing row does); soft references
    are plain uuid columns (a county may record the attendance of a member it does
    not hold).  ``same_home``: the referencing row always has the target's home.
    """

    column: str
    table: str
    enforced: bool = True
    same_home: bool = False
    on_delete: Literal["restrict", "cascade"] = "restrict"


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    routes: tuple[Route, ...]
    refs: tuple[Ref, ...] = ()
    natural_key: tuple[str, ...] = ()
    version: int = 1  # merge-rule version of the table (HC-13)

    def column(self, name: str) -> Column:
        try:
            return self._columns_by_name[name]
        except KeyError:
            raise KeyError(f"{self.name}.{name}") from None

    @functools.cached_property
    def _columns_by_name(self) -> dict[str, Column]:
        return {c.name: c for c in self.columns}

    @functools.cached_property
    def shipped(self) -> tuple[Column, ...]:
        """Columns that travel in change records (everything not ``local``)."""
        return tuple(c for c in self.columns if not c.local)

    @functools.cached_property
    def shipped_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.shipped)

    @functools.cached_property
    def shipped_set(self) -> frozenset[str]:
        return frozenset(self.shipped_names)

    @functools.cached_property
    def local_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.local)

    def route(self, name: str) -> Route:
        for r in self.routes:
            if r.name == name:
                return r
        raise KeyError(f"{self.name} route {name}")

    def ref(self, column: str) -> Ref | None:
        for r in self.refs:
            if r.column == column:
                return r
        return None


def _c(name: str, **kw: object) -> Column:
    return Column(name, **kw)  # type: ignore[arg-type]


def _home(flow: Flow) -> Route:
    return Route(HOME, ("org_code",), flow)


#: 提案 workflow (DOMAIN.md §2). Stage order is the forward order within a round.
PROPOSAL_WORKFLOW = Workflow(
    stages=(
        "草稿", "征集联名", "已提交", "审查中", "不立案", "转社情民意", "并案", "立案",
        "交办", "办理中", "已答复", "已评价", "办结",
    ),
    round_starters=frozenset({"重新办理", "退回", "改办"}),
)
# 重新办理 / 退回 / 改办 are stages too: they sit just before 交办 in the new round.
PROPOSAL_WORKFLOW = Workflow(
    stages=PROPOSAL_WORKFLOW.stages[:8] + ("退回", "改办", "重新办理") + PROPOSAL_WORKFLOW.stages[8:],
    round_starters=PROPOSAL_WORKFLOW.round_starters,
)

ATTENDANCE_WRITERS = (HOME, "organiser")

TABLES: tuple[Table, ...] = (
    Table(
        "committees",
        columns=(
            _c("code"), _c("name"), _c("level"), _c("parent_code"), _c("aliases"),
        ),
        routes=(_home("down"),),
        natural_key=("code",),
    ),
    Table(
        "sectors",
        columns=(_c("code"), _c("name"), _c("national_code")),
        routes=(_home("tree"),),
        natural_key=("org_code", "code"),
    ),
    Table(
        "members",
        columns=(
            _c("name"), _c("gender"), _c("ethnicity"), _c("birth_month"),
            _c("id_card_no", reach="home"),
            _c("id_card_hash", derived_from="id_card_no"),
            _c("mobile", reach="home"), _c("address", reach="home"),
            _c("party"), _c("sector_code"), _c("work_unit"), _c("title"), _c("role"),
            _c("term"), _c("special_committee"), _c("status"),
            _c("updated_at", local=True),
        ),
        routes=(_home("up"),),
    ),
    Table(
        "activities",
        columns=(
            _c("parent_activity_id"), _c("kind"), _c("title"), _c("starts_at"),
            _c("ends_at"), _c("place"), _c("online"), _c("half_days"), _c("status"),
            _c("updated_at", local=True),
        ),
        routes=(_home("tree"),),
        refs=(Ref("parent_activity_id", "activities", enforced=False),),
    ),
    Table(
        "attendance",
        columns=(
            _c("activity_id", writers=ATTENDANCE_WRITERS),
            _c("member_id", writers=ATTENDANCE_WRITERS),
            _c("status", writers=ATTENDANCE_WRITERS),
            _c("sign_in_at", writers=ATTENDANCE_WRITERS),
            _c("sign_in_method", writers=ATTENDANCE_WRITERS),
            _c("spoke", writers=ATTENDANCE_WRITERS),
            _c("written_speech", writers=ATTENDANCE_WRITERS),
            _c("leave_reason", reach="home"),
            _c("updated_at", local=True),
        ),
        routes=(_home("up"), Route("organiser", ("activity_id", "activities", "org_code"), "up")),
        refs=(
            Ref("activity_id", "activities"),
            Ref("member_id", "members", enforced=False),
        ),
        natural_key=("activity_id", "member_id"),
    ),
    Table(
        "proposals",
        columns=(
            _c("term"), _c("session"), _c("seq"), _c("title"), _c("body"), _c("category"),
            _c("proposer_id"), _c("kind"),
            _c("status", merge="workflow", workflow=PROPOSAL_WORKFLOW),
            _c("key_flag"), _c("supervised"), _c("excellent"), _c("submitted_at"),
            _c("updated_at", local=True),
        ),
        routes=(_home("up"),),
        refs=(Ref("proposer_id", "members", enforced=False),),
        natural_key=("org_code", "term", "session", "seq"),
    ),
    Table(
        "proposal_cosigners",
        columns=(_c("proposal_id"), _c("member_id"), _c("confirmed")),
        routes=(_home("up"),),
        refs=(
            Ref("proposal_id", "proposals", same_home=True, on_delete="cascade"),
            Ref("member_id", "members", enforced=False),
        ),
        natural_key=("proposal_id", "member_id"),
    ),
    Table(
        "proposal_handlings",
        columns=(
            _c("proposal_id"), _c("handling_unit"), _c("role"), _c("answer_category"),
            _c("answer_text"), _c("answered_at"), _c("evaluation"),
        ),
        routes=(_home("up"),),
        refs=(Ref("proposal_id", "proposals", same_home=True),),
    ),
    Table(
        "opinion_reports",
        columns=(
            _c("author_id"), _c("title"), _c("body"), _c("submitted_at"), _c("status"),
            _c("contact_phone", reach="home"),
        ),
        routes=(_home("up"),),
        refs=(Ref("author_id", "members", enforced=False),),
    ),
    Table(
        "opinion_adoptions",
        columns=(
            _c("report_id"), _c("level"), _c("adopted_at"), _c("instruction_level"),
            _c("instruction_text"),
        ),
        routes=(_home("local"), Route("report", ("report_id", "opinion_reports", "org_code"), "up")),
        refs=(Ref("report_id", "opinion_reports"),),
        natural_key=("report_id", "level"),
    ),
    Table(
        "micro_suggestions",
        columns=(
            _c("member_id"), _c("title"), _c("body"), _c("submitted_at"), _c("adopted"),
            _c("submitter_phone", reach="home"),
        ),
        routes=(_home("up"),),
        refs=(Ref("member_id", "members", enforced=False),),
    ),
    Table(
        "score_rules",
        columns=(_c("rule_version"), _c("event"), _c("points"), _c("cap"), _c("valid_from")),
        routes=(_home("down"),),
        natural_key=("org_code", "rule_version", "event"),
    ),
    Table(
        "member_score_summaries",
        columns=(
            _c("member_id"), _c("year"), _c("total"), _c("by_category"),
            _c("rule_version"), _c("inputs_digest"), _c("computed_at"),
        ),
        routes=(_home("up"),),
        refs=(Ref("member_id", "members", same_home=True),),
        natural_key=("member_id", "year"),
    ),
)


@dataclass(frozen=True)
class Schema:
    """A validated set of table declarations, in foreign-key order."""

    tables: tuple[Table, ...]
    by_name: Mapping[str, Table] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Table:
        return self.by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self.by_name

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tables)


_FLOW_COVERS: dict[str, frozenset[str]] = {
    "local": frozenset({"local"}),
    "up": frozenset({"local", "up"}),
    "down": frozenset({"local", "down"}),
    "tree": frozenset({"local", "up", "down", "tree"}),
}


def flow_covers(outer: str, inner: str) -> bool:
    """True when a row flowing ``outer`` from a home reaches everywhere ``inner`` does."""
    return inner in _FLOW_COVERS[outer]


def _validate_reach(reach: str, where: str) -> list[str]:
    if reach in ("all", "home"):
        return []
    if reach.startswith("up:") and reach[3:].isdigit():
        return []
    return [f"{where}: reach {reach!r} is not 'all', 'home' or 'up:N'"]


def _validate_table(t: Table, by_name: Mapping[str, Table]) -> list[str]:
    errors: list[str] = []
    names = {c.name for c in t.columns} | {"id", "org_code"}
    route_names = {r.name for r in t.routes}
    if not any(r.path == ("org_code",) for r in t.routes):
        errors.append(f"{t.name}: no route on its own org_code")
    for r in t.routes:
        if r.flow not in FLOWS:
            errors.append(f"{t.name}.route {r.name}: unknown flow {r.flow!r}")
        if len(r.path) == 3:
            ref = t.ref(r.path[0])
            if ref is None or ref.table != r.path[1] or r.path[2] != "org_code":
                errors.append(f"{t.name}.route {r.name}: path {r.path} does not follow a declared ref")
        elif r.path != ("org_code",):
            errors.append(f"{t.name}.route {r.name}: bad path {r.path}")
    for c in t.columns:
        where = f"{t.name}.{c.name}"
        errors += _validate_reach(c.reach, where)
        for w in c.writers:
            if w not in route_names:
                errors.append(f"{where}: writer {w!r} is not a route of {t.name}")
        if c.merge == "workflow" and c.workflow is None:
            errors.append(f"{where}: workflow merge without a workflow")
        if c.personal and c.writers != (HOME,):
            errors.append(f"{where}: a reach-limited column is written by its home only (HC-16)")
        if c.derived_from is not None and c.derived_from not in names:
            errors.append(f"{where}: derived from unknown column {c.derived_from!r}")
    for k in t.natural_key:
        if k not in names:
            errors.append(f"{t.name}: natural key column {k!r} is not declared")
    for ref in t.refs:
        where = f"{t.name}.{ref.column}"
        if ref.column not in names:
            errors.append(f"{where}: ref column is not declared")
        target = t if ref.table == t.name else by_name.get(ref.table)
        if target is None:
            errors.append(f"{where}: ref to unknown or later table {ref.table!r}")
            continue
        if ref.on_delete == "cascade" and not ref.same_home:
            errors.append(f"{where}: ON DELETE CASCADE across ownership is not allowed (HC-11)")
        if ref.enforced:
            errors += _validate_ref_reach(t, ref, target)
    return errors


def _target_flow(target: Table) -> str:
    return next(r.flow for r in target.routes if r.path == ("org_code",))


def _validate_ref_reach(t: Table, ref: Ref, target: Table) -> list[str]:
    """The FK target must reach everywhere the referencing row does (HC-1)."""
    tflow = _target_flow(target)
    errors = []
    for r in t.routes:
        through_ref = len(r.path) == 3 and r.path[0] == ref.column
        own_home = r.path == ("org_code",)
        # A route through the ref starts at the target's home; so does the row's own
        # home when it is declared the same.  Other homes lie on the target's line only
        # when the target flows both ways.
        if through_ref or (own_home and ref.same_home):
            ok = flow_covers(tflow, r.flow)
        elif own_home:
            # a row that stays home references what its home holds (the FK checks it)
            ok = r.flow == "local" or (tflow == "tree" and r.flow == "up")
        else:
            continue
        if not ok:
            errors.append(
                f"{t.name}.{ref.column}: target {target.name} flows {tflow!r} but route "
                f"{r.name} of {t.name} flows {r.flow!r}: the target does not reach "
                "everywhere the row does (HC-1)"
            )
    return errors


def build_schema(tables: tuple[Table, ...] = TABLES) -> Schema:
    """Validate declarations; raise :class:`DeclarationError` listing every problem."""
    by_name: dict[str, Table] = {}
    errors: list[str] = []
    for t in tables:
        if t.name in by_name:
            errors.append(f"{t.name}: declared twice")
        errors += _validate_table(t, by_name)
        by_name[t.name] = t
    if errors:
        raise DeclarationError("; ".join(errors))
    return Schema(tables=tables, by_name=by_name)


SCHEMA = build_schema()


def natural_id(table: str, parts: tuple[object, ...]) -> uuid.UUID:
    """Derived id of a natural-key row: UUIDv8 over SHA-256 (RFC 9562 §B.2).

    The SQL twin is ``syncd.natural_id(text, text)``; the key text is the parts'
    text forms joined by U+001F.
    """
    key = table + "\x1f" + "\x1f".join("" if p is None else str(p) for p in parts)
    digest = bytearray(hashlib.sha256(NATURAL_ID_NAMESPACE.bytes + key.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x80
    digest[8] = (digest[8] & 0x3F) | 0x80
    return uuid.UUID(bytes=bytes(digest))
