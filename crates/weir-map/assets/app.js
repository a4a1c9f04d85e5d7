// weir's map page. Works offline (the map's data in the #weir-data block, the SVG already in the page) and live
// (the aggregator serves /ui/map.svg, /ui/map.json and the alert stream). Names from the cluster are untrusted:
// they are only ever written with textContent, never as markup.

const $ = (id) => document.getElementById(id);
const live = document.body.dataset.mode === "live";
let map = { title: "", nodes: [], edges: [] };
let nodesById = new Map();
let edgesById = new Map();
let selected = null;
// Live only: namespaces left open while the rest are folded, and workloads shown pod by pod.
const openNamespaces = new Set();
const expanded = new Set();
let alertsStarted = false;

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
  p.set("collapse", c ? c.value : "auto");
  if (openNamespaces.size) p.set("open", [...openNamespaces].join(","));
  if (expanded.size) p.set("expand", [...expanded].join(","));
  return p.toString();
}

function signIn(message) {
  const body = $("details-body");
  const input = el("input");
  input.type = "password";
  input.id = "token";
  input.autocomplete = "current-password";
  const go = el("button", "Sign in");
  go.type = "button";
  const submit = async () => {
    const r = await fetch("/ui/session", { method: "POST", body: input.value });
    if (r.ok) { $("details").hidden = true; loadLive(); return; }
    let message = "That is not the read token.";
    try { message = (await r.json()).error || message; } catch { /* not JSON: keep the plain message */ }
    signIn(message);
  };
  go.addEventListener("click", submit);
  input.addEventListener("keydown", (ev) => { if (ev.key === "Enter") submit(); });
  body.replaceChildren(el("h2", "Sign in"), el("p", message), input, go);
  $("details").hidden = false;
  input.focus();
}

async function loadLive() {
  let response;
  try { response = await fetch(`/ui/map.json?${query()}`); } catch { $("counts").textContent = "aggregator unreachable"; return; }
  if (response.status === 401) {
    signIn("This aggregator asks readers for its read token (--read-token-file).");
    return;
  }
  if (!response.ok) { $("counts").textContent = `map: HTTP ${response.status}`; return; }
  const data = await response.json();
  setData(data);
  const doc = new DOMParser().parseFromString(data.svg, "image/svg+xml");
  const svg = document.importNode(doc.documentElement, true);
  $("map").replaceChildren(svg);
  for (const id of [...expanded]) if (!data.expanded.includes(id)) expanded.delete(id);
  bind();
  applyFilters();
  if (selected) reselect();
  if (!alertsStarted) { alertsStarted = true; startAlerts(); }
}

// `80,443/TCP` and `ICMP` against `443`, `tcp`, `443/tcp`.
function portMatches(ports, wanted) {
  if (!wanted) return true;
  const w = wanted.trim().toLowerCase();
  return ports.toLowerCase().split(" ").some((entry) => {
    const [numbers, proto] = entry.includes("/") ? entry.split("/") : ["", entry];
    return numbers.split(",").some((n) => n === w || `${n}/${proto}` === w) || proto === w;
  });
}

function applyFilters() {
  const ns = $("f-namespace").value;
  const verdicts = new Set([...document.querySelectorAll("#f-verdicts input:checked")].map((i) => i.value));
  const tierBoxes = [...document.querySelectorAll("#f-tiers input")];
  const tiers = new Set(tierBoxes.filter((i) => i.checked).map((i) => i.value));
  const tierFiltering = tiers.size < tierBoxes.length;
  const port = $("f-port").value;
  const search = $("f-search").value.trim().toLowerCase();
  const shown = new Set();
  let edgesShown = 0;
  for (const path of document.querySelectorAll("path.edge")) {
    const from = nodesById.get(path.dataset.from);
    const to = nodesById.get(path.dataset.to);
    const inNs = !ns || (from && from.group === ns) || (to && to.group === ns);
    const tierOk = !tierFiltering || (path.dataset.tiers || "").split(" ").some((t) => tiers.has(t));
    const ok = inNs && verdicts.has(path.dataset.verdict) && tierOk && portMatches(path.dataset.ports, port);
    path.classList.toggle("hidden", !ok);
    if (ok) { shown.add(path.dataset.from); shown.add(path.dataset.to); edgesShown++; }
  }
  const groupsShown = new Set();
  for (const g of document.querySelectorAll("g.node")) {
    const node = nodesById.get(g.dataset.node);
    const edgeFiltering = Boolean(port) || verdicts.size < 5 || tierFiltering;
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
  return n.kind === "workload" || n.kind === "service" || n.kind === "pod" ? `${n.group}/${n.name}` : n.name;
}

// The nodes an alert's end is drawn as: itself, its pods when shown pod by pod, or its folded namespace.
function drawnAs(id) {
  const ids = new Set([id]);
  for (const n of map.nodes) if (n.parent === id) ids.add(n.id);
  const slash = id.indexOf("/");
  if (id.startsWith("pod:") && slash > 0) ids.add(`namespace:${id.slice(4, slash)}`);
  if (id.startsWith("service:") && slash > 0) ids.add(`namespace:${id.slice(8, slash)}`);
  return ids;
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
    list("Decision chain", e.chains || []),
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
    dl([["kind", n.kind], ["pods", n.pods], ["workloads", n.members], ["pod of", n.parent ? name(n.parent) : null]]),
  );
  if (live) body.append(...actions(n));
  body.append(
    list("Labels", n.labels || []),
    list("Policies selecting it", n.policies || []),
    list("Observed ingress", ingress, showEdge),
    list("Observed egress", egress, showEdge),
  );
  if (n.kind === "workload") body.append(...suggestion(n));
  $("details").hidden = false;
}

function button(text, onClick) {
  const b = el("button", text, "action");
  b.type = "button";
  b.addEventListener("click", onClick);
  return b;
}

// What a node can be opened into or folded back to (live only: the server draws the map again).
function actions(n) {
  const out = [];
  const reload = (change) => () => { change(); selected = null; $("details").hidden = true; loadLive(); };
  if (n.kind === "namespace") out.push(button("Open namespace", reload(() => openNamespaces.add(n.group))));
  if (n.kind === "workload") out.push(button("Show pods", reload(() => expanded.add(n.id))));
  if (n.kind === "pod" && n.parent) out.push(button("Back to workload", reload(() => expanded.delete(n.parent))));
  if (openNamespaces.has(n.group) && n.kind !== "namespace") {
    out.push(button("Fold namespace", reload(() => openNamespaces.delete(n.group))));
  }
  return out;
}

// Live, suggestions are worked out when a workload is opened, and kept a minute.
const suggestions = new Map();

function suggestion(n) {
  const out = [el("h3", "Suggested least-privilege policy")];
  let s = n.suggestion ? n : null;
  if (live) {
    const cached = suggestions.get(n.id);
    if (cached && cached.answer && Date.now() - cached.at < 60000) s = cached.answer;
    else if (!cached || (cached.answer && Date.now() - cached.at >= 60000)) {
      suggestions.set(n.id, { at: Date.now(), answer: null });
      fetch(`/ui/workload?id=${encodeURIComponent(n.id)}`)
        .then((r) => (r.ok ? r.json() : { suggestion: null, suggestion_denies: [] }))
        .catch(() => ({ suggestion: null, suggestion_denies: [] }))
        .then((answer) => {
          suggestions.set(n.id, { at: Date.now(), answer });
          if (selected && selected.node === n.id) showNode(n.id);
        });
    }
    if (!s) {
      const pending = suggestions.get(n.id);
      if (pending && !pending.answer) { out.push(el("p", "Working it out from the observed traffic…", "pending")); return out; }
    }
  }
  if (!s || !s.suggestion) { out.push(el("p", "none: no observed traffic calls for one")); return out; }
  const copy = el("button", "Copy YAML");
  copy.type = "button";
  copy.addEventListener("click", async () => {
    try { await navigator.clipboard.writeText(s.suggestion); copy.textContent = "Copied"; } catch { copy.textContent = "Select and copy"; }
  });
  out.push(copy, el("pre", s.suggestion), list("It would deny, among the observed flows", s.suggestion_denies || []));
  return out;
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

// A new or updated alert goes on top; the ones already raised when the page opened (`older`) go below.
function addAlert(alert, older = false) {
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
    const froms = drawnAs(from);
    const tos = drawnAs(to);
    let found = null;
    for (const p of document.querySelectorAll("path.edge")) {
      if (froms.has(p.dataset.from) && (tos.has(p.dataset.to) || alert.type === "scan")) found = found || p.dataset.edge;
    }
    if (found) {
      showEdge(found);
      const path = document.querySelector(`path.edge[data-edge="${CSS.escape(found)}"]`);
      if (path) path.scrollIntoView({ block: "center", inline: "center", behavior: "smooth" });
    } else clearSelection();
    for (const p of document.querySelectorAll("path.edge")) {
      if (froms.has(p.dataset.from) && (tos.has(p.dataset.to) || alert.type === "scan")) p.classList.add("highlight");
    }
    li.classList.add("chosen");
    for (const other of $("alert-list").children) if (other !== li) other.classList.remove("chosen");
  });
  const same = [...list.children].find((c) => c.dataset.id === String(alert.id));
  if (same && older) return;
  if (same) same.replaceWith(li); else if (older) list.append(li); else list.prepend(li);
  li.dataset.id = String(alert.id);
  while (list.children.length > 200) list.lastChild.remove();
}

// Subscribe first, then list what was raised before: nothing falls in between.
function startAlerts() {
  const source = new EventSource("/api/v1/alerts/stream");
  source.addEventListener("alert", (ev) => {
    try { addAlert(JSON.parse(ev.data)); } catch { /* a malformed event is skipped */ }
    scheduleReload();
  });
  fetch("/api/v1/alerts")
    .then((r) => (r.ok ? r.json() : { alerts: [] }))
    .then((body) => { for (const a of body.alerts.slice(0, 200)) addAlert(a, true); })
    .catch(() => {});
}

let reloadTimer = null;
function scheduleReload() {
  if (reloadTimer) return;
  reloadTimer = setTimeout(() => { reloadTimer = null; loadLive(); }, 1500);
}

for (const id of ["f-namespace", "f-port", "f-search"]) $(id).addEventListener("input", applyFilters);
$("f-verdicts").addEventListener("change", applyFilters);
$("f-tiers").addEventListener("change", applyFilters);
$("close").addEventListener("click", () => { $("details").hidden = true; selected = null; clearSelection(); });

if (live) {
  for (const id of ["f-window", "f-collapse"]) $(id).addEventListener("change", loadLive);
  loadLive();
  setInterval(loadLive, 10000);
} else {
  setData(JSON.parse($("weir-data").textContent));
  bind();
  applyFilters();
}
