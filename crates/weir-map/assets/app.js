// weir's map page. Works offline (the map's data in the #weir-data block, the SVG already in the page) and live
// (the aggregator serves /ui/map.svg, /ui/map.json and the alert stream). Names from the cluster are untrusted:
// they are only ever written with textContent, never as markup.

const $ = (id) => document.getElementById(id);
const live = document.body.dataset.mode === "live";
let map = { title: "", nodes: [], edges: [] };
let nodesById = new Map();
let edgesById = new Map();
let selected = null;

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function bytes(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function setData(data) {
  map = data;
  nodesById = new Map(map.nodes.map((n) => [n.id, n]));
  edgesById = new Map(map.edges.map((e) => [e.id, e]));
  const select = $("f-namespace");
  const current = select.value;
  const groups = [...new Set(map.nodes.map((n) => n.group))].sort();
  select.replaceChildren(el("option", "all"));
  select.firstChild.value = "";
  for (const g of groups) {
    const o = el("option", g);
    o.value = g;
    select.append(o);
  }
  select.value = groups.includes(current) ? current : "";
  $("title").textContent = map.title;
}

function query() {
  const p = new URLSearchParams();
  const w = $("f-window");
  if (w && w.value) p.set("window", w.value);
  const c = $("f-collapse");
  if (c && c.checked) p.set("collapse", "auto");
  return p.toString();
}

async function loadLive() {
  const q = query();
  const [data, svgText] = await Promise.all([
    fetch(`/ui/map.json?${q}`).then((r) => r.json()),
    fetch(`/ui/map.svg?${q}`).then((r) => r.text()),
  ]);
  setData(data);
  const doc = new DOMParser().parseFromString(svgText, "image/svg+xml");
  const svg = document.importNode(doc.documentElement, true);
  $("map").replaceChildren(svg);
  bind();
  applyFilters();
  if (selected) reselect();
}

function portMatches(ports, wanted) {
  if (!wanted) return true;
  const w = wanted.trim().toLowerCase();
  return ports.toLowerCase().split(" ").some((p) => p === w || p.startsWith(`${w}/`) || p.endsWith(`/${w}`));
}

function applyFilters() {
  const ns = $("f-namespace").value;
  const verdicts = new Set([...document.querySelectorAll("#f-verdicts input:checked")].map((i) => i.value));
  const port = $("f-port").value;
  const search = $("f-search").value.trim().toLowerCase();
  const shown = new Set();
  let edgesShown = 0;
  for (const path of document.querySelectorAll("path.edge")) {
    const from = nodesById.get(path.dataset.from);
    const to = nodesById.get(path.dataset.to);
    const inNs = !ns || (from && from.group === ns) || (to && to.group === ns);
    const ok = inNs && verdicts.has(path.dataset.verdict) && portMatches(path.dataset.ports, port);
    path.classList.toggle("hidden", !ok);
    if (ok) { shown.add(path.dataset.from); shown.add(path.dataset.to); edgesShown++; }
  }
  const groupsShown = new Set();
  for (const g of document.querySelectorAll("g.node")) {
    const node = nodesById.get(g.dataset.node);
    const edgeFiltering = Boolean(port) || verdicts.size < 5;
    const ok = shown.has(g.dataset.node) || (!edgeFiltering && (!ns || g.dataset.group === ns));
    g.classList.toggle("hidden", !ok);
    if (ok) groupsShown.add(g.dataset.group);
    const hit = search && node && (node.name.toLowerCase().includes(search) || node.id.toLowerCase().includes(search) ||
      (node.pods || []).some((p) => p.toLowerCase().includes(search)));
    g.classList.toggle("match", Boolean(hit));
    g.classList.toggle("dim", Boolean(search) && !hit);
  }
  for (const g of document.querySelectorAll("g.group")) g.classList.toggle("hidden", !groupsShown.has(g.dataset.group));
  const denied = map.edges.filter((e) => e.verdict === "denied").length;
  $("counts").textContent = `${map.nodes.length} endpoints · ${edgesShown} of ${map.edges.length} edges shown · ${denied} denied`;
}

function dl(rows) {
  const d = el("dl");
  for (const [k, v, cls] of rows) {
    if (v === undefined || v === null || v === "" || (Array.isArray(v) && !v.length)) continue;
    d.append(el("dt", k), el("dd", Array.isArray(v) ? v.join(", ") : v, cls));
  }
  return d;
}

function list(title, items, onClick) {
  const frag = document.createDocumentFragment();
  frag.append(el("h3", title));
  if (!items.length) { frag.append(el("p", "none")); return frag; }
  const ul = el("ul");
  for (const item of items) {
    const li = el("li", typeof item === "string" ? item : item.text);
    if (onClick && item.id) { li.tabIndex = 0; li.addEventListener("click", () => onClick(item.id)); }
    ul.append(li);
  }
  frag.append(ul);
  return frag;
}

function name(id) {
  const n = nodesById.get(id);
  if (!n) return id;
  return n.kind === "workload" || n.kind === "service" ? `${n.group}/${n.name}` : n.name;
}

function clearSelection() {
  for (const e of document.querySelectorAll(".selected, .highlight")) e.classList.remove("selected", "highlight");
}

function showEdge(id) {
  const e = edgesById.get(id);
  if (!e) return;
  selected = { edge: id };
  clearSelection();
  for (const p of document.querySelectorAll("path.edge")) if (p.dataset.edge === id) p.classList.add("selected");
  const body = $("details-body");
  body.replaceChildren(
    el("h2", `${name(e.from)} → ${name(e.to)}`),
    dl([
      ["verdict", e.verdict.replace("-", " "), `verdict ${e.verdict}`],
      ["ports", e.ports],
      ["connections", e.flows],
      ["bytes", bytes(e.bytes)],
      ["first seen", e.first],
      ["last seen", e.last],
      ["new", e.new ? "yes: not seen while the baseline was learned" : null],
      ["via", e.services],
      ["reported by", e.nodes],
    ]),
    list("Deciding policies", e.policies || []),
    list("Why", e.explanation || []),
    list("Alerts", e.alerts || []),
  );
  $("details").hidden = false;
}

function showNode(id) {
  const n = nodesById.get(id);
  if (!n) return;
  selected = { node: id };
  clearSelection();
  for (const g of document.querySelectorAll("g.node")) if (g.dataset.node === id) g.classList.add("selected");
  const edgeItem = (e, other) => ({ id: e.id, text: `${name(other)} · ${e.ports.join(" ")} · ${e.verdict.replace("-", " ")} · ${e.flows}` });
  const ingress = map.edges.filter((e) => e.to === id).map((e) => edgeItem(e, e.from));
  const egress = map.edges.filter((e) => e.from === id).map((e) => edgeItem(e, e.to));
  const body = $("details-body");
  body.replaceChildren(
    el("h2", name(n.id)),
    dl([["kind", n.kind], ["pods", n.pods]]),
    list("Labels", n.labels || []),
    list("Policies selecting it", n.policies || []),
    list("Observed ingress", ingress, showEdge),
    list("Observed egress", egress, showEdge),
  );
  if (n.suggestion) {
    body.append(el("h3", "Suggested least-privilege policy"));
    const pre = el("pre", n.suggestion);
    const copy = el("button", "Copy YAML");
    copy.type = "button";
    copy.addEventListener("click", async () => {
      try { await navigator.clipboard.writeText(n.suggestion); copy.textContent = "Copied"; } catch { copy.textContent = "Select and copy"; }
    });
    body.append(copy, pre, list("It would deny, among the observed flows", n.suggestion_denies || []));
  }
  $("details").hidden = false;
}

function reselect() {
  if (selected && selected.edge && edgesById.has(selected.edge)) showEdge(selected.edge);
  else if (selected && selected.node && nodesById.has(selected.node)) showNode(selected.node);
}

function bind() {
  const svg = document.querySelector("#map svg");
  if (!svg) return;
  svg.addEventListener("click", (ev) => {
    const edge = ev.target.closest("path.edge");
    if (edge) return showEdge(edge.dataset.edge);
    const node = ev.target.closest("g.node");
    if (node) return showNode(node.dataset.node);
  });
  svg.addEventListener("keydown", (ev) => {
    const node = ev.target.closest && ev.target.closest("g.node");
    if (node && ev.key === "Enter") showNode(node.dataset.node);
  });
}

function endpointId(ep) {
  return `${ep.kind}:${ep.namespace ? `${ep.namespace}/` : ""}${ep.name}`;
}

function addAlert(alert) {
  const list = $("alert-list");
  const li = el("li", null, alert.type);
  const from = endpointId(alert.source);
  const to = endpointId(alert.destination || alert.source);
  li.dataset.from = from;
  li.dataset.to = to;
  li.append(
    el("span", alert.type, "type"),
    el("span", `${alert.source.namespace ? `${alert.source.namespace}/` : ""}${alert.source.name} → ${alert.destination ? `${alert.destination.namespace ? `${alert.destination.namespace}/` : ""}${alert.destination.name}` : ""}${alert.port ? `:${alert.port}` : ""}`, "what"),
    el("span", `×${alert.count || 1}`, "count"),
    el("span", alert.last_seen || "", "when"),
  );
  li.addEventListener("click", () => {
    clearSelection();
    let found = null;
    for (const p of document.querySelectorAll("path.edge")) {
      if (p.dataset.from === from && (p.dataset.to === to || alert.type === "scan")) { p.classList.add("highlight"); found = found || p.dataset.edge; }
    }
    if (found) showEdge(found);
  });
  const same = [...list.children].find((c) => c.dataset.id === String(alert.id));
  if (same) same.replaceWith(li); else list.prepend(li);
  li.dataset.id = String(alert.id);
  while (list.children.length > 200) list.lastChild.remove();
}

function startAlerts() {
  const source = new EventSource("/api/v1/alerts/stream?existing=true");
  source.addEventListener("alert", (ev) => {
    try { addAlert(JSON.parse(ev.data)); } catch { /* a malformed event is skipped */ }
    if (live) scheduleReload();
  });
}

let reloadTimer = null;
function scheduleReload() {
  if (reloadTimer) return;
  reloadTimer = setTimeout(() => { reloadTimer = null; loadLive(); }, 1500);
}

for (const id of ["f-namespace", "f-port", "f-search"]) $(id).addEventListener("input", applyFilters);
$("f-verdicts").addEventListener("change", applyFilters);
$("close").addEventListener("click", () => { $("details").hidden = true; selected = null; clearSelection(); });

if (live) {
  for (const id of ["f-window", "f-collapse"]) $(id).addEventListener("change", loadLive);
  loadLive().then(startAlerts);
  setInterval(loadLive, 10000);
} else {
  setData(JSON.parse($("weir-data").textContent));
  bind();
  applyFilters();
}
