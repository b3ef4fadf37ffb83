"""Routing and authorisation over the real Hunan tree (HC-1, HC-16, HC-26)."""
from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path
from typing import Any

import pytest

from syncd import routing
from syncd.proto.change import Change, ColumnChange
from syncd.schema.declarations import (
    SCHEMA, TABLES, DeclarationError, Ref, Route, Table, build_schema,
)
from syncd.topology import Topology

CSV = Path(__file__).resolve().parents[2] / "syncd" / "data" / "hunan_divisions.csv"
TOPO = Topology.from_csv(CSV)
PROVINCE, CHANGSHA, FURONG, TIANXIN, ZHUZHOU, YOUXIAN = (
    "430000", "430100", "430102", "430103", "430200", "430223",
)


def change(table: str, homes: dict[str, str], origin: str, cols: dict[str, Any],
           op: str = "U", cl: int = 1) -> Change:
    return Change(
        table=table, id=uuid.uuid4(), org_code=homes["home"], op=op, cl=cl, ts=1_000,
        origin=origin, txn=1, homes=homes, cols={c: ColumnChange(v) for c, v in cols.items()},
    )


def deliveries(table: str, homes: dict[str, str], origin: str) -> set[str]:
    """Every node a change reaches when relayed hop by hop from ``origin``."""
    seen, frontier = {origin}, [(origin, None)]
    while frontier:
        node, came = frontier.pop()
        for hop in routing.next_hops(table, homes, node, TOPO, came):
            assert hop not in seen, f"{hop} got the change twice"
            seen.add(hop)
            frontier.append((hop, node))
    return seen


def test_reach_by_flow() -> None:
    assert routing.reach("members", {"home": FURONG}, TOPO) == {FURONG, CHANGSHA, PROVINCE}
    assert routing.reach("committees", {"home": PROVINCE}, TOPO) == TOPO.nodes
    assert routing.reach("activities", {"home": CHANGSHA}, TOPO) == TOPO.subtree(CHANGSHA) | {PROVINCE}
    assert routing.reach("opinion_adoptions", {"home": FURONG}, TOPO) == {FURONG}
    # a NULL reference adds nothing
    assert routing.reach("attendance", {"home": FURONG}, TOPO) == {FURONG, CHANGSHA, PROVINCE}


def test_next_hops_parent_first_children_by_reach_and_no_echo() -> None:
    homes = {"home": CHANGSHA}
    assert routing.next_hops("activities", homes, CHANGSHA, TOPO) == [PROVINCE, *TOPO.children(CHANGSHA)]
    assert routing.next_hops("activities", homes, PROVINCE, TOPO, CHANGSHA) == []
    assert routing.next_hops("members", {"home": FURONG}, CHANGSHA, TOPO, FURONG) == [PROVINCE]
    assert routing.next_hops("members", {"home": FURONG}, PROVINCE, TOPO, CHANGSHA) == []
    assert routing.next_hops("opinion_adoptions", {"home": FURONG}, FURONG, TOPO) == []
    assert deliveries("committees", {"home": PROVINCE}, PROVINCE) == TOPO.nodes


def test_hc1_attendance_reaches_organiser_and_adoption_only_report_line() -> None:
    # a 长沙市 member attends a 芙蓉区 视察: home 430100 flows up, yet 芙蓉区 receives it
    att = {"home": CHANGSHA, "organiser": FURONG}
    assert routing.reach("attendance", att, TOPO) == {CHANGSHA, PROVINCE, FURONG}
    assert deliveries("attendance", att, CHANGSHA) == {CHANGSHA, PROVINCE, FURONG}
    assert deliveries("attendance", att, FURONG) == {CHANGSHA, PROVINCE, FURONG}
    # 湖南省 adopts a 芙蓉区 report: back down to 芙蓉区 only, via 长沙市
    adoption = {"home": PROVINCE, "report": FURONG}
    assert routing.reach("opinion_adoptions", adoption, TOPO) == {PROVINCE, CHANGSHA, FURONG}
    assert routing.next_hops("opinion_adoptions", adoption, PROVINCE, TOPO) == [CHANGSHA]
    assert routing.next_hops("opinion_adoptions", adoption, CHANGSHA, TOPO, PROVINCE) == [FURONG]
    assert deliveries("opinion_adoptions", adoption, PROVINCE) == {PROVINCE, CHANGSHA, FURONG}
    # and the change is accepted at every hop: zero quarantine
    c = change("opinion_adoptions", adoption, PROVINCE, {"report_id": "r", "level": "province"}, op="I")
    assert routing.check_origin(c, None, PROVINCE, CHANGSHA, TOPO, "from_parent") == []
    assert routing.check_origin(c, None, CHANGSHA, FURONG, TOPO, "from_parent") == []
    a = change("attendance", att, FURONG, {"status": "出席"})
    assert routing.check_origin(a, None, FURONG, CHANGSHA, TOPO, "from_child") == []
    assert routing.check_origin(a, None, CHANGSHA, PROVINCE, TOPO, "from_child") == []


def test_hc1_declaration_fk_target_reaching_less_fails_validation() -> None:
    build_schema(TABLES)  # the shipped declarations are valid
    bad = Table(
        "bad_adoptions",
        columns=(SCHEMA["opinion_adoptions"].columns),
        # reports flow up from their home; an adoption flowing 'tree' from the report's
        # home would reach sibling counties that do not hold the report
        routes=(Route("home", ("org_code",), "local"),
                Route("report", ("report_id", "opinion_reports", "org_code"), "tree")),
        refs=(Ref("report_id", "opinion_reports"),),
    )
    with pytest.raises(DeclarationError, match="HC-1"):
        build_schema(TABLES + (bad,))


def test_hc11_a_cascade_across_ownership_is_rejected() -> None:
    """A joint activity deleted at 湖南省 must not cascade into county-owned attendance rows."""
    att = SCHEMA["attendance"]
    cascading = dataclasses.replace(att, refs=(Ref("activity_id", "activities", on_delete="cascade"),))
    with pytest.raises(DeclarationError, match="CASCADE across ownership.*HC-11"):
        build_schema(tuple(cascading if t.name == "attendance" else t for t in TABLES))
    # within one home (a proposal's co-signers) a cascade is allowed, as shipped
    assert any(r.on_delete == "cascade" and r.same_home for t in TABLES for r in t.refs)


def test_hc16_personal_columns_never_leave_home() -> None:
    homes = {"home": FURONG}
    c = change("members", homes, FURONG,
               {"name": "张三", "id_card_no": "430102199001011234", "mobile": "138", "address": "x",
                "work_unit": "u", "updated_at": "t"}, op="I")
    for peer in TOPO.neighbours(FURONG):
        out = routing.project(c, TOPO.behind(FURONG, peer), TOPO)
        assert out is not None and set(out.cols) == {"name", "work_unit"}
    assert routing.columns_for("members", c, FURONG, TOPO.behind(FURONG, CHANGSHA), TOPO) == (
        "name", "work_unit")
    # a change holding only personal columns does not travel at all
    assert routing.project(change("members", homes, FURONG, {"mobile": "139"}), TOPO.behind(FURONG, CHANGSHA),
                           TOPO) is None
    # 湖南省, as organiser, may not write a 芙蓉区 member's leave_reason
    w = change("attendance", {"home": FURONG, "organiser": PROVINCE}, PROVINCE, {"leave_reason": "病假"})
    refusals = routing.check_origin(w, None, CHANGSHA, FURONG, TOPO, "from_parent")
    assert [r.code for r in refusals] == [routing.FORBIDDEN_PERSONAL]
    assert "病假" not in refusals[0].reason  # refusal reasons carry no values (HC-15)
    # a leaked home column arriving at the city is refused too
    leak = change("members", homes, FURONG, {"mobile": "139"})
    assert [r.code for r in routing.check_origin(leak, None, FURONG, CHANGSHA, TOPO, "from_child")] == [
        routing.OUT_OF_REACH]


def test_hc16_narrowing_reach_purges_copies_outside() -> None:
    homes = {"home": FURONG}
    assert routing.purge_columns("members", homes, TOPO, {"work_unit": ("all", "home")}) == {
        CHANGSHA: {"work_unit"}, PROVINCE: {"work_unit"}}
    assert routing.purge_columns("members", homes, TOPO, {"work_unit": ("all", "up:1")}) == {
        PROVINCE: {"work_unit"}}
    assert routing.purge_columns("members", homes, TOPO, {"work_unit": ("up:1", "all")}) == {}


def test_up_n_columns_reach_n_ancestors() -> None:
    assert routing.column_reach("up:1", FURONG, TOPO) == {FURONG, CHANGSHA}
    assert routing.column_reach("up:0", FURONG, TOPO) == {FURONG}
    assert routing.column_reach("up:5", FURONG, TOPO) == {FURONG, CHANGSHA, PROVINCE}
    behind_province = TOPO.behind(CHANGSHA, PROVINCE)
    assert routing.columns_for("members", ["name"], FURONG, behind_province, TOPO) == ("name",)
    m = dataclasses.replace(SCHEMA["members"], columns=tuple(
        dataclasses.replace(col, reach="up:1") if col.name == "work_unit" else col
        for col in SCHEMA["members"].columns))
    assert routing.columns_for(m, ["name", "work_unit"], FURONG, behind_province, TOPO) == ("name",)
    assert routing.columns_for(m, ["name", "work_unit"], FURONG, TOPO.behind(FURONG, CHANGSHA), TOPO) == (
        "name", "work_unit")


def test_hc26_county_cannot_write_province_activity_header() -> None:
    homes = {"home": PROVINCE}
    header = change("activities", homes, YOUXIAN, {"title": "全体会议", "place": "攸县"})
    at_city = routing.check_origin(header, None, YOUXIAN, ZHUZHOU, TOPO, "from_child")
    assert {r.code for r in at_city} == {routing.FORBIDDEN_WRITER}
    assert {r.column for r in at_city} == {"title", "place"}
    at_province = routing.check_origin(header, None, ZHUZHOU, PROVINCE, TOPO, "from_child")
    assert {r.code for r in at_province} == {routing.FORBIDDEN_WRITER}
    ok = change("activities", homes, PROVINCE, {"title": "全体会议"})
    assert routing.check_origin(ok, None, PROVINCE, ZHUZHOU, TOPO, "from_parent") == []


def test_hc26_organiser_and_member_committee_both_write_status() -> None:
    homes = {"home": FURONG, "organiser": PROVINCE}
    assert set(routing.writable_columns("attendance", homes, PROVINCE, TOPO)) == {
        "activity_id", "member_id", "status", "sign_in_at", "sign_in_method", "spoke", "written_speech"}
    assert "leave_reason" in routing.writable_columns("attendance", homes, FURONG, TOPO)
    assert routing.writable_columns("attendance", homes, TIANXIN, TOPO) == ()
    by_org = change("attendance", homes, PROVINCE, {"status": "请假", "sign_in_at": None})
    by_home = change("attendance", homes, FURONG, {"status": "出席"})
    assert routing.check_origin(by_org, None, PROVINCE, CHANGSHA, TOPO, "from_parent") == []
    assert routing.check_origin(by_org, None, CHANGSHA, FURONG, TOPO, "from_parent") == []
    assert routing.check_origin(by_home, None, FURONG, CHANGSHA, TOPO, "from_child") == []
    assert routing.check_origin(by_home, None, CHANGSHA, PROVINCE, TOPO, "from_child") == []
    other = change("attendance", homes, TIANXIN, {"status": "出席"})
    assert [r.code for r in routing.check_origin(other, None, TIANXIN, CHANGSHA, TOPO, "from_child")] == [
        routing.FORBIDDEN_WRITER]
    # the organiser may not delete the row: deletes come from the home only
    dele = change("attendance", homes, PROVINCE, {}, op="D", cl=2)
    assert [r.code for r in routing.check_origin(dele, None, CHANGSHA, FURONG, TOPO, "from_parent")] == [
        routing.FORBIDDEN_DELETE]


def test_check_origin_scope_shape_and_unknowns() -> None:
    homes = {"home": FURONG}
    c = change("members", homes, FURONG, {"name": "x"})
    # from a child the origin must be in the child's subtree
    assert [r.code for r in routing.check_origin(c, None, TIANXIN, CHANGSHA, TOPO, "from_child")] == [
        routing.FORBIDDEN_SCOPE]
    # from the parent the origin must lie outside my subtree (a forged "own" change)
    assert [r.code for r in routing.check_origin(c, None, PROVINCE, CHANGSHA, TOPO, "from_parent")] == [
        routing.FORBIDDEN_SCOPE]
    assert [r.code for r in routing.check_origin(c, None, FURONG, PROVINCE, TOPO, "from_child")] == [
        routing.NOT_A_NEIGHBOUR]
    assert [r.code for r in routing.check_origin(c, None, PROVINCE, FURONG, TOPO, "from_parent")] == [
        routing.NOT_A_NEIGHBOUR]
    mismatch = c.replace(homes={"home": TIANXIN})
    assert routing.HOME_MISMATCH in {
        r.code for r in routing.check_origin(mismatch, None, FURONG, CHANGSHA, TOPO, "from_child")}
    local = change("members", homes, FURONG, {"updated_at": "now"})
    assert [r.code for r in routing.check_origin(local, None, FURONG, CHANGSHA, TOPO, "from_child")] == [
        routing.LOCAL_COLUMN]
    for op, cl in (("U", 2), ("D", 3), ("I", 0)):
        bad = change("members", homes, FURONG, {}, op=op, cl=cl)
        assert [r.code for r in routing.check_origin(bad, None, FURONG, CHANGSHA, TOPO, "from_child")] == [
            routing.BAD_CAUSAL_LENGTH]
    ghost = c.replace(origin="439999")
    assert [r.code for r in routing.check_origin(ghost, None, FURONG, CHANGSHA, TOPO, "from_child")] == [
        routing.UNKNOWN_NODE]
    table = c.replace(table="nope")
    assert [r.code for r in routing.check_origin(table, None, FURONG, CHANGSHA, TOPO, "from_child")] == [
        routing.UNKNOWN_TABLE]
    # an undeclared (newer) column travels like 'all' but only its home writes it (HC-13)
    newer = change("members", homes, FURONG, {"wechat_id": "w"})
    assert routing.check_origin(newer, None, FURONG, CHANGSHA, TOPO, "from_child") == []
    assert routing.columns_for("members", newer, FURONG, TOPO.behind(FURONG, CHANGSHA), TOPO) == ("wechat_id",)


def test_routing_follows_alias_codes() -> None:
    topo = Topology.from_rows([
        ("430000", "湖南省", "province", None, []),
        ("430100", "长沙市", "city", "430000", []),
        ("430124", "宁乡市", "county", "430100", ["430182"]),
    ])
    assert routing.reach("members", {"home": "430182"}, topo) == {"430124", "430100", "430000"}
    c = change("members", {"home": "430124"}, "430182", {"name": "x"})
    assert routing.check_origin(c, None, "430182", "430100", topo, "from_child") == []
