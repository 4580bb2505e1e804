// The inbox page: list, search, one message, delete, live arrival (server-sent events).
// Plain ES module, no build step; every text goes in through textContent (never innerHTML).

const $ = (selector) => document.querySelector(selector);
const state = { query: "", start: 0, limit: 50, total: 0, selected: null, seen: new Set(), first: true };
const TOKEN_KEY = "mta-sim-token";

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function when(seconds) {
  return new Date(seconds * 1000).toISOString().replace("T", " ").slice(0, 19);
}

function toast(text) {
  const box = $("#toast");
  box.textContent = text;
  box.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.hidden = true; }, 5000);
}

function badge(result) {
  return el("span", result || "none", `badge ${result || "none"}`);
}

async function getJson(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

async function write(method, url, body) {
  const headers = { "Content-Type": "application/json" };
  const token = localStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(url, { method, headers, body: body ? JSON.stringify(body) : undefined });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) {
    toast(`Refused (${response.status}): ${answer.error || "error"}`);
    return null;
  }
  return answer;
}

async function load() {
  const params = new URLSearchParams({ query: state.query, start: state.start, limit: state.limit });
  let page;
  try {
    page = await getJson(`/sim/v1/search?${params}`);
  } catch (error) {
    $("#total").textContent = `cannot list: ${error.message}`;
    return;
  }
  state.total = page.total;
  const body = $("#messages tbody");
  body.replaceChildren();
  if (!page.messages.length) {
    const row = el("tr");
    const cell = el("td", state.query ? "Nothing matches this search." : "No message yet: mail the personas accepted shows here as it arrives.", "empty");
    cell.colSpan = 6;
    row.append(cell);
    body.append(row);
  }
  for (const message of page.messages) {
    const row = el("tr");
    row.dataset.id = message.id;
    if (!state.first && !state.seen.has(message.id)) row.classList.add("new");
    state.seen.add(message.id);
    if (message.id === state.selected) row.classList.add("selected");
    const to = message.recipients.join(", ");
    const received = el("td");
    received.append(el("span", when(message.time).slice(5, 11), "day"), when(message.time).slice(11));
    received.title = `${when(message.time)} UTC`;
    row.append(
      received,
      el("td", message.persona),
      el("td", message.header_from || message.mail_from),
      el("td", to),
      el("td", message.subject || "(no subject)"),
    );
    const dkim = el("td");
    dkim.append(badge(message.dkim_result));
    row.append(dkim);
    row.title = `${message.subject}\nto ${to}${message.delivery_id ? `\ndelivery ${message.delivery_id}` : ""}`;
    row.addEventListener("click", () => { location.hash = `#/${message.id}`; });
    body.append(row);
  }
  state.first = false;
  const last = Math.min(state.start + page.count, page.total);
  const plural = page.total === 1 ? "" : "s";
  $("#total").textContent = `${page.total} message${plural}${state.query ? ` match${plural ? "" : "es"}` : ""}`;
  $("#page").textContent = page.total ? `${state.start + 1}–${last} of ${page.total}` : "";
  $("#newer").disabled = state.start === 0;
  $("#older").disabled = last >= page.total;
}

function showTab(name) {
  for (const button of document.querySelectorAll(".tabs button")) {
    button.classList.toggle("active", button.dataset.tab === name);
  }
  for (const tab of document.querySelectorAll(".tab")) tab.hidden = tab.id !== `tab-${name}`;
  if (name === "raw" && state.selected && !$("#tab-raw").textContent) {
    fetch(`/sim/v1/message/${state.selected}/raw`).then((r) => r.text()).then((text) => {
      $("#tab-raw").textContent = text;
    });
  }
}

function verdict(title, result, detail) {
  const box = el("div", null, "verdict");
  box.append(el("span", `${title}: `), el("b", result, result));
  if (detail) box.append(el("small", detail));
  return box;
}

async function open(id) {
  state.selected = id;
  for (const row of document.querySelectorAll("#messages tbody tr")) {
    row.classList.toggle("selected", row.dataset.id === id);
  }
  let message;
  try {
    message = await getJson(`/sim/v1/message/${id}`);
  } catch (error) {
    toast(error.message);
    location.hash = "";
    return;
  }
  $("main").classList.add("detail");
  $("main").classList.remove("single");
  $("#detail-pane").hidden = false;
  $("#subject").textContent = message.subject || "(no subject)";
  const summary = $("#summary");
  summary.replaceChildren();
  const rows = [
    ["From", message.header_from], ["To", message.to], ["Envelope", `${message.mail_from || "<>"} → ${message.recipients.join(", ")}`],
    ["ISP", message.persona], ["Received", `${when(message.time)} UTC (the simulation's clock)`],
    ["Delivery", message.delivery_id || "—"], ["Message-ID", message.message_id], ["Size", `${message.size} bytes`], ["Id", message.id],
  ];
  for (const [name, value] of rows) summary.append(el("dt", name), el("dd", value));
  const signatures = message.dkim.signatures.map((s) => `d=${s.domain} s=${s.selector}: ${s.result}${s.reason ? ` (${s.reason})` : ""}`);
  const dmarc = message.dmarc;
  $("#verdicts").replaceChildren(
    verdict("DKIM", message.dkim.result, signatures.join("; ") || "no signature"),
    verdict("DMARC", dmarc.result, `From ${dmarc.from_domain || "?"}: alignment ${dmarc.alignment}${dmarc.dkim_domains.length ? ` (d=${dmarc.dkim_domains.join(", ")})` : ""}; SPF not evaluated`),
  );
  $("#tab-text").textContent = message.text || "(no text part)";
  const frame = $("#html-frame");
  frame.src = message.html ? `/sim/v1/message/${id}/html` : "about:blank";
  const headers = $("#tab-headers tbody");
  headers.replaceChildren();
  for (const header of message.headers) {
    const row = el("tr");
    row.append(el("td", header.name), el("td", header.value));
    headers.append(row);
  }
  $("#tab-raw").textContent = "";
  const smtp = $("#tab-smtp tbody");
  smtp.replaceChildren();
  for (const [stage, reply] of message.transcript) {
    const row = el("tr");
    row.append(el("td", stage), el("td", reply));
    smtp.append(row);
  }
  if (!message.transcript.length) {
    const row = el("tr");
    row.append(el("td", "—"), el("td", "not kept for this message (Maildir store)"));
    smtp.append(row);
  }
  const list = $("#attachments");
  list.replaceChildren();
  for (const part of message.attachments) {
    const item = el("li");
    const link = el("a", `${part.filename} (${part.content_type}, ${part.size} bytes)`);
    link.href = `/sim/v1/message/${id}/part/${part.index}`;
    item.append(link);
    list.append(item);
  }
  showTab(message.html ? "html" : "text");
}

function close() {
  state.selected = null;
  $("#detail-pane").hidden = true;
  $("main").classList.remove("detail");
  $("main").classList.add("single");
  for (const row of document.querySelectorAll("#messages tbody tr")) row.classList.remove("selected");
}

function route() {
  const id = decodeURIComponent(location.hash.replace(/^#\/?/, ""));
  if (id) open(id); else close();
}

let pending = null;
function refreshSoon() {
  if (pending) return;
  pending = setTimeout(() => { pending = null; load(); }, 150);
}

function live() {
  const indicator = $("#live");
  if (!window.EventSource) {
    setInterval(load, 1500);
    return;
  }
  const source = new EventSource("/sim/v1/stream");
  source.addEventListener("hello", () => indicator.classList.add("on"));
  source.addEventListener("changed", refreshSoon);
  source.onerror = () => indicator.classList.remove("on");
}

$("#search").addEventListener("submit", (event) => {
  event.preventDefault();
  state.query = $("#query").value.trim();
  state.start = 0;
  load();
});
$("#newer").addEventListener("click", () => { state.start = Math.max(0, state.start - state.limit); load(); });
$("#older").addEventListener("click", () => { state.start += state.limit; load(); });
$("#back").addEventListener("click", () => { location.hash = ""; });
for (const button of document.querySelectorAll(".tabs button")) {
  button.addEventListener("click", () => showTab(button.dataset.tab));
}
$("#token-button").addEventListener("click", () => {
  const token = prompt("Write token (MTA_ADMIN_TOKEN); empty to forget it:", localStorage.getItem(TOKEN_KEY) || "");
  if (token === null) return;
  if (token) localStorage.setItem(TOKEN_KEY, token); else localStorage.removeItem(TOKEN_KEY);
});
$("#delete-one").addEventListener("click", async () => {
  if (!state.selected) return;
  if (await write("DELETE", `/sim/v1/message/${state.selected}`)) {
    location.hash = "";
    load();
  }
});
$("#delete-all").addEventListener("click", async () => {
  if (!confirm("Delete every message the personas accepted?")) return;
  const answer = await write("DELETE", "/sim/v1/messages");
  if (answer) { toast(`Deleted ${answer.deleted} messages`); location.hash = ""; load(); }
});
const consoleLink = $("#console");
if (!consoleLink.dataset.url || consoleLink.dataset.url.startsWith("{{")) consoleLink.hidden = true;

// -- chaos ---------------------------------------------------------------------------------

async function loadChaos() {
  let answer;
  try { answer = await getJson("/sim/v1/chaos"); } catch (error) { return; }
  const select = $("#chaos-persona");
  const chosen = select.value;
  select.replaceChildren(...Object.keys(answer.personas).map((name) => el("option", name)));
  if (chosen) select.value = chosen;
  showChaos(answer.personas[select.value]);
}

function showChaos(current) {
  if (!current) return;
  const reply = current.reply ? `answers "${current.reply.reply}" at ${current.reply.stage} to ${Math.round(current.reply.share * 100)} %` : "no injected answer";
  $("#chaos-state").textContent = `${$("#chaos-persona").value}: ${reply}; ${current.rate ? `at most ${current.rate} messages/s per IP` : "no rate limit"}; RCPT latency ${current.latency.rcpt}s; greylisting ${current.greylisting ? "on" : "off"}`;
}

async function putChaos(update) {
  const answer = await write("PUT", `/sim/v1/chaos/${$("#chaos-persona").value}`, update);
  if (answer) { showChaos(answer.state); toast(`${answer.persona} changed`); }
}

$("#chaos-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const update = {};
  const reply = $("#chaos-reply").value.trim();
  if (reply) update.reply = { stage: $("#chaos-stage").value, reply, share: Number($("#chaos-share").value || 1) };
  if ($("#chaos-rate").value !== "") update.rate = Number($("#chaos-rate").value);
  if ($("#chaos-latency").value !== "") update.latency = { rcpt: Number($("#chaos-latency").value) };
  if ($("#chaos-grey").value) update.greylisting = $("#chaos-grey").value === "on";
  if (!Object.keys(update).length) { toast("Nothing to change"); return; }
  putChaos(update);
});
$("#chaos-clear").addEventListener("click", () => putChaos({ reply: null }));
$("#chaos-persona").addEventListener("change", loadChaos);
$("#chaos").addEventListener("toggle", loadChaos);

window.addEventListener("hashchange", route);
const params = new URLSearchParams(location.search);
if (params.get("query")) { state.query = params.get("query"); $("#query").value = state.query; }
load().then(route);
live();
