// heaprelay dashboard: charts (uPlot, served by the relay) and the live debugger (SSE).
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
};
const when = (t) => (t ? new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) : "");
const badge = (state, text) => el("span", { class: `state ${state}` }, text || state);

// --- overview: charts ---------------------------------------------------------------------

async function charts() {
  const answer = await fetch("/ui/api/overview", { credentials: "same-origin" });
  if (!answer.ok || typeof uPlot === "undefined") return;
  const { series } = await answer.json();
  for (const node of document.querySelectorAll("[data-chart]")) {
    const s = series[node.dataset.chart];
    if (!s || s.t.length < 2) {
      node.textContent = "Charts appear after a few samples (every few seconds).";
      node.className = "chart muted";
      continue;
    }
    node.textContent = "";
    const colours = { received: "#4a55d6", delivered: "#1f8a4c", skipped: "#805ad5", dead: "#c53030" };
    const opts = {
      width: Math.max(320, node.clientWidth - 10), height: 200,
      scales: { x: { time: true } },
      series: [{}, ...Object.entries(colours).map(([label, stroke]) => ({ label: `${label}/s`, stroke, width: 2 }))],
      axes: [{}, { label: "events/s" }],
    };
    new uPlot(opts, [s.t, s.received, s.delivered, s.skipped, s.dead], node);
  }
}

// --- the debugger: live events ------------------------------------------------------------

const rows = new Map(); // "source\0messageId" -> {row, detail, dests: Map(destination -> cell)}

function messageRow(ev) {
  const key = `${ev.source}\u0000${ev.messageId}`;
  let entry = rows.get(key);
  if (entry && ev.kind === "received" && entry.received) {
    // the same messageId again (a resend): a row of its own
    rows.delete(key);
    entry = undefined;
  }
  if (!entry) {
    const row = el("tr", { class: "live-row", "data-message-id": ev.messageId || "" });
    const detail = el("tr", { class: "detail", hidden: "" }, el("td", { colspan: "7" }));
    const cells = Array.from({ length: 7 }, () => el("td"));
    cells[5].textContent = ev.messageId || "";
    row.append(...cells);
    row.addEventListener("click", () => detail.toggleAttribute("hidden"));
    const body = $("#live");
    body.prepend(detail);
    body.prepend(row);
    entry = { row, detail, cells, dests: new Map(), received: false };
    rows.set(key, entry);
    while (body.children.length > 600) body.lastElementChild.remove();
  }
  return entry;
}

function destCell(entry, destination) {
  let cell = entry.dests.get(destination);
  if (!cell) {
    cell = el("span", { class: "dest", "data-destination": destination });
    entry.cells[6].append(cell);
    entry.dests.set(destination, cell);
  }
  return cell;
}

function setState(entry, destination, state, text, title) {
  const cell = destCell(entry, destination);
  cell.textContent = `${destination}: `;
  const b = badge(state, text || state);
  b.setAttribute("data-state", state);
  if (title) b.title = title;
  cell.append(b);
}

function onEvent(ev) {
  if (ev.kind === "refused") {
    const row = el("tr", { class: "refused" },
      el("td", {}, when(ev.at)), el("td", {}, ev.route), el("td", {}, badge("refused", `refused ${ev.status}`)),
      el("td", { colspan: "4", class: "reason" }, `${ev.code}: ${ev.message}`));
    $("#live").prepend(row);
    return;
  }
  const entry = messageRow(ev);
  if (ev.kind === "received") {
    entry.received = true;
    const c = entry.cells;
    c[0].textContent = when(ev.at);
    c[1].textContent = `${ev.source} (${ev.route})`;
    c[2].textContent = ev.type || "";
    c[3].textContent = ev.event || "";
    c[4].textContent = [ev.userId, ev.anonymousId].filter((x) => x !== null && x !== undefined).join(" / ");
    for (const d of ev.destinations) if (!entry.dests.has(d)) setState(entry, d, "pending");
    entry.detail.firstChild.append(el("div", {}, el("strong", {}, "Message as stored"), el("pre", {}, JSON.stringify(ev.payload, null, 2))));
  } else if (ev.kind === "requests") {
    const box = el("div", { class: "heap-requests", "data-destination": ev.destination },
      el("strong", {}, `Heap request(s) for ${ev.destination} (job `), el("a", { href: `/ui/jobs/${ev.job}` }, String(ev.job)), ")");
    for (const r of ev.requests) box.append(el("pre", {}, `${r.method} ${r.url}\n${JSON.stringify(r.body, null, 2)}`));
    entry.detail.firstChild.append(box);
    if (!entry.dests.has(ev.destination)) setState(entry, ev.destination, "pending");
  } else if (ev.kind === "state") {
    let text = ev.state;
    if (ev.reason) text += ` (${ev.reason})`;
    setState(entry, ev.destination, ev.state, text, [ev.detail, ev.answer].filter(Boolean).join(" — "));
    if (ev.state === "dead" || ev.state === "skipped" || ev.state === "retry") {
      entry.detail.firstChild.append(el("p", { class: "reason" },
        `${ev.destination}: ${ev.state} ${ev.reason}${ev.detail ? ": " + ev.detail : ""}${ev.answer ? " — Heap answered " + ev.answer : ""}`));
    }
  }
}

function live() {
  const status = $("#live-status");
  const source = new EventSource("/ui/api/stream");
  source.onopen = () => { status.textContent = "connected"; status.dataset.state = "connected"; };
  source.onerror = () => { status.textContent = "reconnecting…"; status.dataset.state = "reconnecting"; };
  source.onmessage = (message) => onEvent(JSON.parse(message.data));
}

// --- dead letters: confirm is a page of its own (works without script too) -----------------

document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page;
  if (page === "overview") charts();
  if (page === "debugger") live();
});
