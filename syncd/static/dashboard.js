/* syncd dashboard: reads GET /status every 5 s and draws this node, its links and its subtree.
 *
 * Vanilla JS, no build step, no network but this node's own /status (works offline).
 * ?token=… in the page URL is sent as "Authorization: Bearer …"; ?select=<id> opens a node's
 * detail on load (the same as clicking it).  Every node of the subtree is one element with
 * data-node="<id>" and class state-<state>; #node-count and #summary count them.
 * Everything from the server is inserted as text (textContent), never as HTML.
 */
"use strict";

const REFRESH_MS = 5000;
const LEVELS = { national: "全国", province: "省", city: "市州", county: "县市区" };
const NODE_STATES = { healthy: "正常", degraded: "延迟", failed: "故障", stale: "失联", missing: "缺失" };
const STATE_ORDER = ["healthy", "degraded", "failed", "stale", "missing"];
const LINK_STATES = {
  initializing: "初始化", running: "运行中", pending: "排队等待", crashing: "重试中",
  failed: "故障", stalled: "停滞",
};
// The colour class a link state is drawn with.
const LINK_COLOUR = {
  initializing: "degraded", running: "healthy", pending: "degraded", crashing: "degraded",
  failed: "failed", stalled: "failed",
};
const DIRECTIONS = { parent: "上级", child: "下级" };
const EVENTS = {
  recovered: "已恢复", running: "运行", initializing: "初始化", pending: "排队等待",
  crashing: "重试中", failed: "故障", stalled: "停滞",
};
const SEVERITY = { healthy: 0, degraded: 1, stale: 2, missing: 2, failed: 3 };

const params = new URLSearchParams(location.search);
const token = params.get("token");
const ui = { status: null, selected: params.get("select"), lastOk: null, timer: null, allLinks: false };

/* -- small helpers ------------------------------------------------------------------------ */

function h(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function num(v) {
  return v === null || v === undefined ? "—" : Number(v).toLocaleString("zh-CN");
}

const TIME_FMT = new Intl.DateTimeFormat("zh-CN", {
  timeZone: "Asia/Shanghai", month: "2-digit", day: "2-digit",
  hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
});

/** A link's clock offset at the last hello; past the soft bound it says so (HC-23). */
function offsetText(ln) {
  if (ln.clock_offset_ms === null || ln.clock_offset_ms === undefined) return "—";
  return `${ln.clock_offset_ms} ms${ln.clock_skewed ? "（超出容差）" : ""}`;
}

function clock(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return isNaN(d) ? String(iso) : TIME_FMT.format(d);
}

function duration(s) {
  s = Math.max(0, Math.round(s));
  if (s < 60) return `${s} 秒`;
  const m = Math.floor(s / 60), hr = Math.floor(m / 60), d = Math.floor(hr / 24);
  if (d > 0) return `${d} 天 ${hr % 24} 小时`;
  if (hr > 0) return `${hr} 小时 ${m % 60} 分`;
  return `${m} 分 ${s % 60} 秒`;
}

function ago(iso) {
  if (!iso) return "—";
  const t = Date.parse(iso);
  if (isNaN(t)) return String(iso);
  const s = (Date.now() - t) / 1000;
  return s < 5 ? "刚刚" : `${duration(s)}前`;
}

function levelName(level) {
  return LEVELS[level] || level || "";
}

/* -- the model ------------------------------------------------------------------------------ */

function linksByPeer(status) {
  const m = new Map();
  for (const ln of status.links || []) {
    if (!m.has(ln.peer)) m.set(ln.peer, []);
    m.get(ln.peer).push(ln);
  }
  return m;
}

/* The state a node is drawn in: its roll-up state, raised by this node's own link to it
 * (a child behind a failed link is "failed" here, not merely "stale": the link needs action). */
function displayState(n, peerLinks) {
  let state = NODE_STATES[n.state] ? n.state : "missing";
  for (const ln of peerLinks || []) {
    if (ln.direction !== "child") continue;
    const raised = ln.state === "failed" ? "failed"
      : (ln.state === "crashing" || ln.state === "stalled") ? "degraded" : null;
    if (raised && SEVERITY[raised] > SEVERITY[state]) state = raised;
  }
  return state;
}

function buildTree(status) {
  const nodes = status.subtree || [];
  const byId = new Map(nodes.map((n) => [n.node, n]));
  const kids = new Map();
  const selfId = status.node && status.node.id;
  let root = byId.get(selfId) || nodes.find((n) => !byId.has(n.parent)) || null;
  const orphans = [];
  for (const n of nodes) {
    if (root && n.node === root.node) continue;
    if (byId.has(n.parent)) {
      if (!kids.has(n.parent)) kids.set(n.parent, []);
      kids.get(n.parent).push(n);
    } else {
      orphans.push(n);
    }
  }
  for (const list of kids.values()) list.sort((a, b) => String(a.node).localeCompare(String(b.node)));
  return { root, kids, orphans, byId };
}

/* -- rendering ---------------------------------------------------------------------------- */

function metrics(n) {
  const m = (label, v, cls, title) => h("span", {
    class: `m ${cls}${v ? "" : " zero"}`, title,
  }, `${label} ${num(v)}`);
  return h("span", { class: "metrics" },
    m("滞后", n.lag_changes, "lag", "未确认的变更数"),
    m("冲突", n.conflicts_open, "cf", "未解决的冲突"),
    m("隔离", n.quarantined, "qr", "被隔离的变更"));
}

function stateNote(n, state, peerLinks) {
  if (state === "healthy") return null;
  const down = (peerLinks || []).find((ln) => ln.direction === "child" && ln.state !== "running");
  let note = NODE_STATES[state];
  if (down) {
    note = `链路${LINK_STATES[down.state] || down.state}`;
    if (down.last_error && down.last_error.code) note += ` ${down.last_error.code}`;
    note += ` · ${ago(down.since)}`;
  } else if (state === "stale") {
    note += n.received_at ? ` ${duration((Date.now() - Date.parse(n.received_at)) / 1000)}` : "";
  } else if (state === "missing") note += " · 从未上报";
  else if (n.links_down) note += ` · ${n.links_down} 条链路中断`;
  return h("span", { class: "note" }, note);
}

/* Nodes needing attention, worst first; stale nodes are grouped under their parent. */
function renderAttention(status, ctx) {
  const items = [];
  const staleBy = new Map();
  for (const n of status.subtree || []) {
    const state = ctx.shown.get(n.node);
    if (state === "stale" && ctx.tree.byId.has(n.parent) && ctx.shown.get(n.parent) !== "stale") {
      staleBy.set(n.parent, (staleBy.get(n.parent) || 0) + 1);
    } else if (state && state !== "healthy") {
      items.push({ id: n.node, state, text: `${n.name || ""} ${n.node} ${NODE_STATES[state]}` });
    }
  }
  for (const [parent, count] of staleBy) {
    const p = ctx.tree.byId.get(parent);
    items.push({ id: parent, state: "stale", text: `${p.name || ""}下 ${count} 个节点失联` });
  }
  items.sort((a, b) => SEVERITY[b.state] - SEVERITY[a.state] || a.id.localeCompare(b.id));
  const box = document.getElementById("attention");
  if (!items.length) {
    box.replaceChildren(h("span", { class: "label" }, "需要关注"), h("span", { class: "all-ok" }, "全部正常"));
    return;
  }
  box.replaceChildren(h("span", { class: "label" }, "需要关注"), ...items.map((it) => h("button", {
    class: `pill state-${it.state}`, "data-target": it.id, onclick: () => select(it.id, true),
  }, h("span", { class: "dot" }), it.text)));
}

function nodeElement(n, kind, ctx) {
  const state = displayState(n, ctx.links.get(n.node));
  ctx.counts[state] = (ctx.counts[state] || 0) + 1;
  ctx.shown.set(n.node, state);
  ctx.rendered += 1;
  const title = `${n.name || ""} ${n.node} · ${levelName(n.level)} · ${NODE_STATES[state]}` +
    (n.reported_at ? ` · 上报于 ${clock(n.reported_at)}` : "");
  const el = h("div", {
    class: `node ${kind} state-${state}${ui.selected === n.node ? " selected" : ""}`,
    "data-node": n.node, "data-level": n.level || "", tabindex: 0, role: "button", title,
    onclick: (ev) => { ev.stopPropagation(); select(n.node); },
    onkeydown: (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); select(n.node); } },
  },
  h("span", { class: "head" },
    h("span", { class: "nm" }, n.name || n.node),
    h("span", { class: "id" }, n.node),
    kind !== "leaf" ? h("span", { class: "lv" }, levelName(n.level)) : null,
    kind !== "leaf" ? h("span", { class: `badge state-${state}` }, NODE_STATES[state]) : null),
  metrics(n),
  stateNote(n, state, ctx.links.get(n.node)));
  return el;
}

/* One block per child of the root (a 市州 with its 县市区); deeper levels nest inside. */
function groupElement(n, ctx) {
  const children = ctx.tree.kids.get(n.node) || [];
  const body = h("div", { class: "chips" });
  const leaves = [];
  for (const c of children) {
    if ((ctx.tree.kids.get(c.node) || []).length) body.append(groupElement(c, ctx));
    else leaves.push(c);
  }
  for (const c of leaves) body.append(nodeElement(c, "leaf", ctx));
  const head = nodeElement(n, "group-head", ctx);
  const st = [...head.classList].find((c) => c.startsWith("state-"));
  return h("div", { class: `group ${st}` }, head, children.length ? body : null);
}

function renderTree(status) {
  const tree = buildTree(status);
  const ctx = { tree, links: linksByPeer(status), counts: {}, rendered: 0, shown: new Map() };
  const out = document.getElementById("tree");
  const frag = document.createDocumentFragment();
  if (tree.root) {
    frag.append(nodeElement(tree.root, "root", ctx));
    const children = tree.kids.get(tree.root.node) || [];
    const groups = children.filter((c) => (tree.kids.get(c.node) || []).length);
    const leaves = children.filter((c) => !(tree.kids.get(c.node) || []).length);
    if (leaves.length) {
      const label = groups.length ? "直属" : `下级${levelName(leaves[0].level)}`;
      frag.append(h("div", { class: "group direct" },
        h("div", { class: "group-label" }, label),
        h("div", { class: "chips" }, leaves.map((c) => nodeElement(c, "leaf", ctx)))));
    }
    if (groups.length) frag.append(h("div", { class: "groups" }, groups.map((g) => groupElement(g, ctx))));
  }
  if (tree.orphans.length) {
    frag.append(h("div", { class: "group direct" },
      h("div", { class: "group-label" }, "上级不在本子树中"),
      h("div", { class: "chips" }, tree.orphans.map((c) => nodeElement(c, "leaf", ctx)))));
  }
  out.replaceChildren(frag);
  document.getElementById("node-count").textContent = String(ctx.rendered);
  renderAttention(status, ctx);
  const summary = document.getElementById("summary");
  summary.replaceChildren(...STATE_ORDER.map((s) => h("span", {
    class: `count state-${s}${ctx.counts[s] ? "" : " zero"}`, "data-state": s,
  }, h("span", { class: "dot" }), `${NODE_STATES[s]} `, h("b", {}, String(ctx.counts[s] || 0)))));
}

function renderSelf(status) {
  const n = status.node || {};
  const cap = status.capture || {};
  const capOk = cap.healthy !== false;
  const item = (label, value, cls) => h("span", { class: `item ${cls || ""}` }, h("span", { class: "label" }, label), value);
  document.getElementById("self").replaceChildren(
    h("span", { class: "who", "data-self": n.id },
      h("span", { class: "nm" }, n.name || n.id || "?"), h("span", { class: "id" }, n.id || ""),
      h("span", { class: "lv" }, levelName(n.level))),
    item("版本", n.version || "—"),
    item("运行", n.uptime_s === undefined ? "—" : duration(n.uptime_s)),
    item("日志位置", num(n.log_position)),
    item("纪元", num(n.epoch)),
    item("采集", capOk ? `正常 · 积压 ${num(cap.backlog ?? n.capture_backlog)}`
      : `异常 ${(cap.problems || []).length} 项`, capOk ? "ok" : "bad"),
    // columns a newer release added that this node keeps until its own upgrade (HC-13)
    ...(status.awaiting_upgrade || []).map((a) => item("待升级列", `${a.table}.${a.column} · ${num(a.rows)} 行`,
      "warn")));
  const local = document.getElementById("local-counts");
  const c = (label, v) => h("span", { class: `lc${v ? " nonzero" : ""}` }, label, " ", h("b", {}, num(v)));
  local.replaceChildren(h("span", { class: "label" }, "本节点"),
    c("未解决冲突", status.conflicts_open), c("暂存", status.parked), c("隔离", status.quarantined));
  const capEl = document.getElementById("capture");
  capEl.replaceChildren(...(cap.problems || []).map((p) => h("div", { class: "problem" },
    h("code", {}, p.code || "?"), " ", p.table ? h("b", {}, p.table) : null, " ", p.detail || "")));
}

// With many links (a province has 14), running child links fold into one row.
const FOLD_LINKS_OVER = 6;

function lagText(ln) {
  const secs = ln.lag_seconds;
  if (secs === null || secs === undefined) return `${num(ln.lag_changes)} 条`;
  return `${num(ln.lag_changes)} 条 / ${secs >= 120 ? duration(secs) : `${Number(secs).toFixed(1)} 秒`}`;
}

function linkRow(ln, names) {
  const err = ln.last_error;
  return h("tr", {
    class: `link link-${ln.state}${ui.selected === ln.peer ? " selected" : ""}`, "data-peer": ln.peer,
    onclick: () => select(ln.peer),
  },
  h("td", {}, h("span", { class: "nm" }, names.get(ln.peer) || (ln.direction === "parent" ? "上级节点" : "")),
    " ", h("span", { class: "id" }, ln.peer)),
  h("td", {}, DIRECTIONS[ln.direction] || ln.direction),
  h("td", {}, h("span", { class: `badge state-${LINK_COLOUR[ln.state] || "missing"}` },
    LINK_STATES[ln.state] || ln.state)),
  h("td", { title: clock(ln.since) }, ago(ln.since)),
  h("td", { class: "n" }, num(ln.cursor)),
  h("td", { class: "n" }, lagText(ln)),
  h("td", { class: `n${ln.consecutive_errors ? " bad" : ""}` }, num(ln.consecutive_errors)),
  h("td", { class: "err" }, err ? [h("code", {}, err.code || "?"), " ", err.reason || ""] : "—"),
  h("td", { class: `n${ln.clock_skewed ? " bad" : ""}`, title: ln.clock_skewed ? "超出时钟偏差容差（clock_soft_ms）" : "" },
    offsetText(ln)));
}

function renderLinks(status) {
  const body = document.querySelector("#links tbody");
  const names = new Map((status.subtree || []).map((n) => [n.node, n.name]));
  const links = [...(status.links || [])].sort((a, b) =>
    (a.direction === "parent" ? -1 : 0) - (b.direction === "parent" ? -1 : 0)
    || (a.state === "running") - (b.state === "running")
    || String(a.peer).localeCompare(String(b.peer)));
  if (!links.length) {
    body.replaceChildren(h("tr", {}, h("td", { colspan: 9, class: "muted" }, "没有配置链路")));
    return;
  }
  const fold = !ui.allLinks && links.length > FOLD_LINKS_OVER;
  const quiet = (ln) => ln.direction === "child" && ln.state === "running" && !ln.consecutive_errors
    && !ln.clock_skewed && ln.peer !== ui.selected;
  const shown = fold ? links.filter((ln) => !quiet(ln)) : links;
  const folded = links.length - shown.length;
  const rows = shown.map((ln) => linkRow(ln, names));
  if (folded) {
    rows.push(h("tr", { class: "folded", onclick: () => { ui.allLinks = true; renderLinks(status); } },
      h("td", { colspan: 9 }, h("span", { class: "badge state-healthy" }, "运行中"),
        ` 其余 ${folded} 条下级链路运行正常 `, h("a", { href: "#", onclick: (ev) => ev.preventDefault() }, "全部展开"))));
  } else if (links.length > FOLD_LINKS_OVER) {
    rows.push(h("tr", { class: "folded", onclick: () => { ui.allLinks = false; renderLinks(status); } },
      h("td", { colspan: 9 }, h("a", { href: "#", onclick: (ev) => ev.preventDefault() }, "收起运行正常的链路"))));
  }
  body.replaceChildren(...rows);
}

function field(label, value, cls) {
  return [h("dt", {}, label), h("dd", { class: cls || "" }, value)];
}

function linkDetail(ln, name) {
  const err = ln.last_error;
  const history = [...(ln.history || [])].reverse();
  return h("div", { class: `link-detail link-${ln.state}`, "data-link": `${ln.direction}:${ln.peer}` },
    h("h3", {}, `${DIRECTIONS[ln.direction] || ln.direction}链路 · ${name || ""} ${ln.peer} `,
      h("span", { class: `badge state-${LINK_COLOUR[ln.state] || "missing"}` }, LINK_STATES[ln.state] || ln.state)),
    h("dl", {},
      field("状态自", `${clock(ln.since)}（${ago(ln.since)}）`),
      field("游标", num(ln.cursor)),
      field("滞后", lagText(ln)),
      field("连续错误", num(ln.consecutive_errors), ln.consecutive_errors ? "bad" : ""),
      field("时钟偏差", offsetText(ln), ln.clock_skewed ? "bad" : ""),
      ln.reason ? field("停滞原因", ln.reason, "bad") : null),
    err ? h("div", { class: "last-error" },
      h("div", { class: "code" }, h("span", { class: "label" }, "最近错误 "), h("code", {}, err.code || "?")),
      h("div", { class: "reason" }, err.reason || ""),
      err.hint ? h("div", { class: "hint" }, h("span", { class: "label" }, "处理建议 "), err.hint) : null)
      : h("div", { class: "muted" }, "没有错误记录"),
    h("h4", {}, `最近事件（${history.length}）`),
    history.length ? h("ol", { class: "history" }, history.map((ev) => h("li", { class: "hist-row" },
      h("span", { class: "at", title: ev.at }, clock(ev.at)),
      h("span", { class: `ev ev-${ev.event}` }, EVENTS[ev.event] || ev.event),
      h("span", { class: "dt" }, ev.detail || ""))))
      : h("div", { class: "muted" }, "暂无事件"));
}

function renderDetail(status) {
  const panel = document.getElementById("detail");
  const id = ui.selected;
  if (!id) { panel.hidden = true; panel.replaceChildren(); return; }
  const tree = buildTree(status);
  const n = tree.byId.get(id);
  const isSelf = status.node && status.node.id === id;
  const links = (status.links || []).filter((ln) => ln.peer === id || (isSelf && ln.direction === "parent"));
  if (!n && !links.length) { ui.selected = null; panel.hidden = true; return; }
  const state = n ? displayState(n, links) : null;
  const parts = [h("button", { class: "close", title: "关闭", onclick: () => select(null) }, "×")];
  if (n) {
    parts.push(h("h2", { "data-detail": id }, h("span", { class: "nm" }, n.name || id), " ",
      h("span", { class: "id" }, id), " ", h("span", { class: "lv" }, levelName(n.level)), " ",
      h("span", { class: `badge state-${state}` }, NODE_STATES[state])));
    const parent = n.parent && tree.byId.get(n.parent);
    parts.push(h("dl", {},
      field("上级", parent ? `${parent.name} ${parent.node}` : (n.parent || "—")),
      field("汇总状态", NODE_STATES[n.state] || n.state),
      field("上报时间", n.reported_at ? `${clock(n.reported_at)}（${ago(n.reported_at)}）` : "从未上报"),
      field("接收时间", n.received_at ? `${clock(n.received_at)}（${ago(n.received_at)}）` : "—"),
      field("滞后变更", num(n.lag_changes)),
      field("未解决冲突", num(n.conflicts_open), n.conflicts_open ? "bad" : ""),
      field("隔离", num(n.quarantined), n.quarantined ? "bad" : ""),
      field("暂存", num(n.parked)),
      field("中断链路", num(n.links_down), n.links_down ? "bad" : "")));
    if (state === "stale") parts.push(h("p", { class: "explain" },
      "失联：这个节点的汇总只能经由一条已中断的链路到达，显示的是最后一次收到的数据。"));
    if (state === "missing") parts.push(h("p", { class: "explain" },
      "缺失：拓扑中应有此节点，但从未收到它的汇总。请确认它已部署、已配置为其上级的下级节点。"));
  } else {
    parts.push(h("h2", { "data-detail": id }, h("span", { class: "id" }, id)));
  }
  if (links.length) parts.push(...links.map((ln) => linkDetail(ln, ln.peer === id && n ? n.name : "")));
  else if (n && !isSelf) parts.push(h("p", { class: "muted" }, "本节点与它没有直接链路；链路详情请在它的上级节点查看。"));
  panel.replaceChildren(...parts);
  panel.hidden = false;
}

function render(status) {
  renderSelf(status);
  renderLinks(status);
  renderTree(status);
  renderDetail(status);
  document.title = `syncd · ${status.node ? `${status.node.name} ${status.node.id}` : ""}`;
}

function select(id, reveal) {
  ui.selected = id;
  const url = new URL(location.href);
  if (id) url.searchParams.set("select", id); else url.searchParams.delete("select");
  history.replaceState(null, "", url);
  if (ui.status) render(ui.status);
  const el = reveal && id && document.querySelector(`[data-node="${CSS.escape(id)}"]`);
  if (el) el.scrollIntoView({ block: "center", behavior: "smooth" });
}

/* -- refresh loop ------------------------------------------------------------------------- */

function showBanner(text) {
  const b = document.getElementById("banner");
  b.textContent = text || "";
  b.hidden = !text;
  document.body.classList.toggle("offline", Boolean(text));
}

async function refresh() {
  clearTimeout(ui.timer);
  try {
    const headers = { Accept: "application/json" };
    if (token) headers.Authorization = `Bearer ${token}`;
    const resp = await fetch(new URL("status", location.href), { headers, cache: "no-store" });
    if (resp.status === 401) {
      let hint = "";
      try { hint = (await resp.json()).hint || ""; } catch (e) { /* not JSON */ }
      throw new Error(`需要读取令牌（HTTP 401）：请在地址后加 ?token=<[status] read_token>。${hint}`);
    }
    if (!resp.ok) throw new Error(`/status 返回 HTTP ${resp.status}`);
    const status = await resp.json();
    ui.status = status;
    ui.lastOk = new Date();
    render(status);
    showBanner(null);
    document.getElementById("refreshed").textContent = `刷新于 ${TIME_FMT.format(ui.lastOk)}`;
  } catch (e) {
    const since = ui.lastOk ? `；显示的是 ${TIME_FMT.format(ui.lastOk)} 的数据` : "";
    showBanner(`无法读取本节点状态：${e.message || e}${since}`);
  } finally {
    ui.timer = setTimeout(refresh, REFRESH_MS);
  }
}

document.addEventListener("keydown", (ev) => { if (ev.key === "Escape") select(null); });
refresh();
