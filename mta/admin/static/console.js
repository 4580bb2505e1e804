// The operator console: sites (limits, state, timeline, a live rate chart drawn as inline SVG),
// the live event stream with filters, one message's attempts, the Campaign side, and control.
// Plain ES module, no build step; every text goes in through textContent.

const $ = (selector) => document.querySelector(selector);
const TOKEN_KEY = "mta-admin-token";
const COLORS = ["#1f5fbf", "#c2410c", "#15803d", "#7e22ce", "#b91c1c", "#0e7490", "#a16207", "#4d7c0f"];
const HISTORY = 90; // points kept per site (one per poll)
const MAX_EVENTS = 400;
const EVENT_PAUSE = 1000; // ms between two non-empty event batches
const state = { cursor: 0, events: [], series: new Map(), last: null, filters: { delivery: "", recipient: "", kind: "" } };

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function when(seconds) {
  return seconds ? new Date(seconds * 1000).toISOString().replace("T", " ").slice(5, 19) : "";
}

function rate(value) {
  if (value === null || value === undefined) return "unlimited";
  if (value >= 1) return `${value.toPrecision(3).replace(/\.?0+$/, "")}/s`;
  if (value * 60 >= 1) return `${(value * 60).toPrecision(3).replace(/\.?0+$/, "")}/m`;
  return `${(value * 3600).toPrecision(3).replace(/\.?0+$/, "")}/h`;
}

function toast(text) {
  const box = $("#toast");
  box.textContent = text;
  box.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.hidden = true; }, 6000);
}

async function getJson(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

export async function write(url, body) {
  const headers = { "Content-Type": "application/json" };
  const token = localStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(url, { method: "POST", headers, body: JSON.stringify(body) });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) {
    toast(`Refused (${response.status}): ${answer.error || "error"}`);
    return null;
  }
  return answer;
}

// -- sites ---------------------------------------------------------------------------------

function drawChart() {
  const svg = $("#rate-chart");
  const ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  const series = [...state.series.entries()].filter(([, points]) => points.some((p) => p > 0)).slice(0, COLORS.length);
  const top = Math.max(1, ...series.flatMap(([, points]) => points));
  for (let i = 0; i <= 4; i += 1) {
    const line = document.createElementNS(ns, "line");
    const y = 10 + (i * 140) / 4;
    line.setAttribute("x1", "0"); line.setAttribute("x2", "600");
    line.setAttribute("y1", String(y)); line.setAttribute("y2", String(y));
    line.setAttribute("class", "grid");
    svg.append(line);
  }
  const legend = $("#chart-legend");
  legend.replaceChildren();
  series.forEach(([site, points], index) => {
    const path = document.createElementNS(ns, "polyline");
    const step = 600 / (HISTORY - 1);
    const offset = HISTORY - points.length;
    path.setAttribute("points", points.map((p, i) => `${((offset + i) * step).toFixed(1)},${(150 - (p / top) * 140).toFixed(1)}`).join(" "));
    path.setAttribute("stroke", COLORS[index]);
    path.setAttribute("class", "series");
    svg.append(path);
    const key = el("span", `${site} ${points[points.length - 1].toFixed(1)}/s`, "key");
    key.style.setProperty("--c", COLORS[index]);
    legend.append(key);
  });
  if (!series.length) legend.append(el("span", "deliveries per second per site appear here while mail flows", "muted"));
  else legend.append(el("span", `scale: ${top.toFixed(1)}/s`, "muted"));
}

function timeline(rows, audit) {
  const items = [];
  for (const row of rows) for (const change of row.changes) items.push({ at: change.at, site: change.site, text: `${change.what.replace("_until", "")} ${change.old ?? "∞"} → ${change.new ?? "∞"}`, why: `${change.rule}: ${change.reason}` });
  for (const action of audit) items.push({ at: action.at, site: action.target, text: `${action.action} by ${action.who}`, why: action.reason, operator: true });
  items.sort((a, b) => b.at - a.at);
  const list = $("#timeline");
  list.replaceChildren();
  for (const item of items.slice(0, 50)) {
    const li = el("li", null, item.operator ? "operator" : "");
    li.append(el("time", when(item.at)), el("b", item.site), el("span", item.text), el("small", item.why));
    list.append(li);
  }
  if (!items.length) list.append(el("li", "No change yet: AIMD cuts, suspensions, recoveries and operator actions show here.", "muted"));
}

async function pollSites() {
  let answer;
  let audit = [];
  try {
    answer = await getJson("/api/v1/queue/sites");
    audit = (await getJson("/api/v1/audit").catch(() => ({ actions: [] }))).actions;
  } catch (error) {
    $("#status-line").textContent = `cannot read the sites: ${error.message}`;
    return;
  }
  const now = performance.now() / 1000;
  const rows = answer.sites;
  const delivered = new Map();
  for (const row of rows) delivered.set(row.site, (delivered.get(row.site) || 0) + row.delivered);
  if (state.last) {
    const seconds = Math.max(0.001, now - state.last.at);
    for (const [site, count] of delivered) {
      const before = state.last.delivered.get(site) ?? count;
      const points = state.series.get(site) || [];
      points.push(Math.max(0, (count - before) / seconds));
      while (points.length > HISTORY) points.shift();
      state.series.set(site, points);
    }
  }
  state.last = { at: now, delivered };
  const body = $("#sites tbody");
  body.replaceChildren();
  for (const row of rows) {
    const tr = el("tr");
    tr.dataset.site = row.site;
    const name = el("td");
    name.append(el("b", row.site), el("small", `${row.domains.join(", ") || "no mail queued"}${row.binding !== "-" ? ` · via ${row.binding}` : ""}`));
    if (row.last_reason) name.append(el("small", `${when(row.last_change_at)} ${row.last_reason}`, "change"));
    const status = el("td");
    status.append(el("span", row.state, `badge ${row.state}`));
    if (row.until) status.append(el("small", `until ${when(row.until).slice(6)}`));
    const manage = el("td");
    const button = el("button", "Control", "small");
    button.type = "button";
    button.addEventListener("click", () => openControl(row));
    manage.append(button);
    const done = el("td", `${row.delivered} · ${row.deferred + row.throttled} · ${row.bounced}`);
    done.title = `delivered ${row.delivered}, deferred ${row.deferred}, throttled ${row.throttled}, bounced ${row.bounced}`;
    tr.append(
      name, status, el("td", row.in_flight ? `${row.queued} (${row.in_flight})` : row.queued),
      el("td", row.configured_rate !== row.rate ? `${rate(row.rate)} of ${rate(row.configured_rate)}` : rate(row.rate)),
      el("td", `${row.concurrency}/${row.max_connections}`), done, manage,
    );
    body.append(tr);
  }
  if (!rows.length) {
    const tr = el("tr");
    const td = el("td", "No site yet: a site appears once mail is queued for one of its domains.", "muted");
    td.colSpan = 7;
    tr.append(td);
    body.append(tr);
  }
  timeline(rows, audit);
  drawChart();
}

function openControl(row) {
  $("#control").hidden = false;
  $("#control-target").value = row.domains[0] || row.site;
  $("#control-site").textContent = row.site;
  $("#control-target").focus({ preventScroll: true });
}

// -- events --------------------------------------------------------------------------------

function matches(event) {
  const f = state.filters;
  if (f.kind && event.kind !== f.kind) return false;
  if (f.delivery && (event.delivery_id || "") !== f.delivery) return false;
  if (f.recipient && !(event.recipient || "").toLowerCase().includes(f.recipient.toLowerCase())) return false;
  return true;
}

function renderEvents() {
  const body = $("#events tbody");
  body.replaceChildren();
  const shown = state.events.filter(matches).slice(-150).reverse();
  for (const event of shown) {
    const tr = el("tr", null, event.kind);
    const reply = event.smtp ? `${event.smtp.code ?? ""} ${event.smtp.enhanced ?? ""} ${event.smtp.text ?? ""}`.trim() : (event.operator ? event.operator.reason : "");
    const recipient = el("td");
    const link = el("a", event.recipient);
    link.href = `#message/${event.queue_id}`;
    recipient.append(link);
    tr.append(el("td", when(event.at)), el("td", event.kind), recipient, el("td", event.delivery_id || ""), el("td", reply));
    tr.title = event.failure ? `${event.failure.type} · ${event.failure.reason}` : "";
    body.append(tr);
  }
  if (!shown.length) {
    const tr = el("tr");
    const td = el("td", state.events.length ? "No event matches the filters." : "Waiting for events…", "muted");
    td.colSpan = 5;
    tr.append(td);
    body.append(tr);
  }
}

async function followEvents() {
  const live = $("#live");
  for (;;) {
    try {
      const answer = await getJson(`/api/v1/events?after=${state.cursor}&limit=500&wait=20`);
      live.classList.add("on");
      if (answer.events.length) {
        state.events.push(...answer.events);
        if (state.events.length > MAX_EVENTS) state.events.splice(0, state.events.length - MAX_EVENTS);
        state.cursor = answer.next;
        renderEvents();
        // busy: at most one batch a second, so an open console costs the MTA little
        await new Promise((resolve) => { setTimeout(resolve, EVENT_PAUSE); });
      }
    } catch (error) {
      live.classList.remove("on");
      await new Promise((resolve) => { setTimeout(resolve, 2000); });
    }
  }
}

// -- one message ---------------------------------------------------------------------------

async function showMessage(queueId) {
  $("#queue-id").value = queueId;
  const head = $("#attempts thead");
  const body = $("#attempts tbody");
  body.replaceChildren();
  let answer;
  try {
    answer = await getJson(`/api/v1/messages/${encodeURIComponent(queueId)}`);
  } catch (error) {
    head.replaceChildren();
    const tr = el("tr");
    tr.append(el("td", `${queueId}: ${error.message}`, "muted"));
    body.append(tr);
    return;
  }
  const columns = Object.keys(answer.attempts[0] || {});
  const tr = el("tr");
  for (const column of columns) tr.append(el("th", column.replaceAll("_", " ")));
  head.replaceChildren(tr);
  for (const attempt of answer.attempts) {
    const row = el("tr");
    for (const column of columns) {
      const value = attempt[column];
      row.append(el("td", typeof value === "number" && column.endsWith("_at") ? when(value) : (value ?? "")));
    }
    body.append(row);
  }
  $("#message-pane").scrollIntoView({ block: "nearest" });
}

// -- campaign ------------------------------------------------------------------------------

async function pollCampaign() {
  let answer;
  try {
    answer = await getJson("/api/v1/campaign");
  } catch (error) {
    return;
  }
  const pane = $("#campaign-pane");
  pane.hidden = !answer.available;
  if (!answer.available) return;
  const kpis = $("#kpis");
  kpis.replaceChildren();
  for (const delivery of answer.deliveries || []) {
    const card = el("div", null, "kpi");
    card.append(el("b", delivery.delivery_id), el("span", `${delivery.total} recipients · Success ${delivery.success_pct.toFixed(1)} %`));
    for (const [status, count] of Object.entries(delivery.by_status || {})) card.append(el("span", `${status}: ${count}`));
    kpis.append(card);
  }
  const lines = answer.lines || [];
  const columns = lines.length ? Object.keys(lines[0]) : [];
  const tr = el("tr");
  for (const column of columns) tr.append(el("th", column.replaceAll("_", " ")));
  $("#deliveries thead").replaceChildren(tr);
  const body = $("#deliveries tbody");
  body.replaceChildren();
  for (const line of lines.slice(0, 200)) {
    const row = el("tr");
    for (const column of columns) row.append(el("td", column.endsWith("_at") ? when(line[column]) : (line[column] ?? "")));
    body.append(row);
  }
}

// -- control -------------------------------------------------------------------------------

for (const button of document.querySelectorAll("#control-form button[data-action]")) {
  button.addEventListener("click", async () => {
    const target = $("#control-target").value.trim();
    if (!target) { toast("Say which domain or site"); return; }
    const action = button.dataset.action;
    const body = { target, reason: $("#control-reason").value.trim() || "operator" };
    if (action === "suspend") body.duration = $("#control-duration").value.trim();
    if (action === "bounce" && !confirm(`Bounce every queued recipient of ${target}?`)) return;
    const answer = await write(`/api/v1/control/${action}`, body);
    if (answer) { toast(answer.message || `${action}: done`); pollSites(); }
  });
}

$("#event-filters").addEventListener("input", () => {
  state.filters = { delivery: $("#filter-delivery").value.trim(), recipient: $("#filter-recipient").value.trim(), kind: $("#filter-kind").value };
  renderEvents();
});
$("#event-filters").addEventListener("submit", (event) => event.preventDefault());
$("#message-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const id = $("#queue-id").value.trim();
  if (id) location.hash = `#message/${id}`;
});
window.addEventListener("hashchange", () => {
  const match = location.hash.match(/^#message\/(.+)$/);
  if (match) showMessage(decodeURIComponent(match[1]));
});
$("#token-button").addEventListener("click", () => {
  const token = prompt("Write token (MTA_ADMIN_TOKEN); empty to forget it:", localStorage.getItem(TOKEN_KEY) || "");
  if (token === null) return;
  if (token) localStorage.setItem(TOKEN_KEY, token); else localStorage.removeItem(TOKEN_KEY);
});

getJson("/api/v1/console").then((links) => {
  if (links.inbox_url) { $("#inbox-link").href = links.inbox_url; $("#inbox-link").hidden = false; }
}).catch(() => {});
const first = location.hash.match(/^#message\/(.+)$/);
if (first) showMessage(decodeURIComponent(first[1]));
pollSites();
setInterval(pollSites, 1000);
pollCampaign();
setInterval(pollCampaign, 3000);
renderEvents();
followEvents();
