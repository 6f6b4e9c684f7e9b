// The console's page: three views, each filled from its JSON endpoint (docs/console.md)
// and polled while it is shown. Text from records is only ever set as text, never as
// markup: user ids, explanations and evidence come from producers.
"use strict";

const POLL_MS = 2000;
let timer = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined) node.setAttribute(name, value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }
  return node;
}

async function getJson(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  const body = await response.json().catch(() => ({}));
  return { status: response.status, body };
}

function userLink(userId) {
  return el("a", { href: "#/users/" + encodeURIComponent(userId), class: "user" }, userId);
}

function when(ms) {
  return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

function duration(ms) {
  const sign = ms < 0 ? "-" : "";
  let s = Math.floor(Math.abs(ms) / 1000);
  const d = Math.floor(s / 86400); s -= d * 86400;
  const h = Math.floor(s / 3600); s -= h * 3600;
  const m = Math.floor(s / 60);
  if (d) return `${sign}${d}d ${h}h`;
  if (h) return `${sign}${h}h ${m}m`;
  return `${sign}${m}m ${s - m * 60}s`;
}

function money(value) {
  return Number(value).toLocaleString("en", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
}

function fillRows(table, rows) {
  const body = table.querySelector("tbody");
  body.replaceChildren(...rows);
}

// ---------------------------------------------------------------- user

function decisionCard(d) {
  const whyNot = d.why_not.length
    ? el("div", { class: "why-not" }, el("h4", {}, "Why not"),
        el("ul", {}, d.why_not.map((w) =>
          el("li", { "data-reward": w.reward }, el("b", {}, w.reward), ": ", w.words,
            el("code", {}, w.code)))))
    : null;
  const factors = d.risk_factors.length
    ? el("p", { class: "factors" }, "Risk factors: ", d.risk_factors.join(", "))
    : null;
  return el("article", { class: `decision status-${d.status}`, "data-decision-id": d.decision_id },
    el("header", {},
      el("span", { class: "badge" }, d.status + (d.hold ? ` (${d.hold})` : "")),
      el("b", {}, d.action || "no reward"),
      d.status === "granted" || d.status === "held" ? ` worth ${money(d.value)}` : "",
      d.channel ? ` via ${d.channel}` : "",
      el("span", { class: "risk" }, `risk ${Number(d.risk).toFixed(2)}`),
      el("time", {}, when(d.ts))),
    el("p", { class: "explanation" }, d.explanation),
    factors,
    whyNot,
    el("details", {}, el("summary", {}, `${d.reasons.length} reason codes`),
      el("ul", { class: "codes" }, d.reasons.map((r) => el("li", {}, el("code", {}, r))))),
    el("p", { class: "ids" }, `${d.decision_id} · event ${d.event_id} · ${d.model_version}`));
}

function alertCard(a) {
  return el("article", { class: "alert", "data-alert-id": a.alert_id },
    el("header", {}, el("span", { class: "badge" }, "alert"),
      el("b", {}, `score ${Number(a.score).toFixed(2)}`), " ", a.reasons.join(", "),
      el("time", {}, when(a.ts))),
    el("dl", {}, Object.entries(a.evidence).flatMap(([code, text]) =>
      [el("dt", {}, code), el("dd", {}, text)])),
    a.related_users.length
      ? el("p", { class: "related" }, "Related accounts: ",
          a.related_users.flatMap((u, i) => (i ? [", ", userLink(u)] : [userLink(u)])))
      : null);
}

let shownUser = "";

async function showUser(userId) {
  const result = document.getElementById("user-result");
  const input = document.getElementById("user-id");
  if (document.activeElement !== input) input.value = userId;
  const { status, body } = await getJson("/api/users/" + encodeURIComponent(userId));
  // Drawn again only when something changed, so open details stay open while polling.
  const shown = JSON.stringify([userId, status, body.hold, (body.decisions || []).map((d) => d.decision_id),
    (body.alerts || []).map((a) => a.alert_id)]);
  if (shown === shownUser) return;
  shownUser = shown;
  if (status === 404) {
    result.replaceChildren(el("p", { class: "empty" }, body.error));
    return;
  }
  result.replaceChildren(...[
    el("h2", {}, body.user_id),
    body.hold ? el("p", { class: "hold-note" }, "A reward is on hold: ",
      el("a", { href: "#/queue" }, "see the review queue")) : null,
    el("div", { class: "columns user" },
      el("div", { id: "decisions" }, el("h3", {}, `Decisions, newest first (${body.decisions.length})`),
        body.decisions.map(decisionCard)),
      el("div", { id: "alerts" }, el("h3", {}, `Fraud alerts (${body.alerts.length})`),
        body.alerts.length ? body.alerts.map(alertCard) : el("p", { class: "empty" }, "None."))),
  ].filter((child) => child !== null));
}

// ---------------------------------------------------------------- queue

async function label(hold, action, row) {
  for (const button of row.querySelectorAll("button")) button.disabled = true;
  const response = await fetch(`/api/holds/${encodeURIComponent(hold.decision_id)}/label`, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-Console-Request": "1" },
    body: JSON.stringify({ user_id: hold.user_id, action }),
  });
  const body = await response.json().catch(() => ({}));
  row.querySelector(".outcome").textContent = response.status === 202
    ? "label sent, waiting for the decision…"
    : body.error || `failed (${response.status})`;
}

function holdRow(hold) {
  const warning = hold.hold !== "risk" ? null : hold.overdue ? "overdue" : hold.expires_soon ? "expiring" : null;
  const row = el("tr", { "data-decision-id": hold.decision_id, class: warning },
    el("td", {}, userLink(hold.user_id)),
    el("td", {}, hold.reward, el("small", {}, ` ${money(hold.value)}`)),
    el("td", {}, hold.hold),
    el("td", {}, Number(hold.risk).toFixed(2)),
    el("td", { class: "factors" }, hold.factors.join(", ") || "–"),
    el("td", {}, duration(hold.age_ms)),
    // A risk hold past its deadline is cancelled at the user's next event; a pending one
    // is released then.
    el("td", { class: "left" }, hold.overdue
      ? (hold.hold === "pending" ? "due at next event" : "overdue: cancelled at next event")
      : duration(hold.left_ms)),
    el("td", {},
      el("button", { class: "release", type: "button" }, "Release"),
      el("button", { class: "confirm", type: "button" }, "Confirm fraud"),
      el("span", { class: "outcome" }, hold.label_sent ? "label sent, waiting for the decision…" : "")));
  if (hold.label_sent) for (const button of row.querySelectorAll("button")) button.disabled = true;
  row.querySelector(".release").addEventListener("click", () => label(hold, "release", row));
  row.querySelector(".confirm").addEventListener("click", () => label(hold, "confirm", row));
  return row;
}

async function showQueue() {
  const kind = document.getElementById("queue-risk-only").checked ? "risk" : "all";
  const { body } = await getJson("/api/queue?kind=" + kind);
  fillRows(document.getElementById("queue"), body.holds.map(holdRow));
  document.getElementById("queue-empty").hidden = body.holds.length > 0;
}

// ---------------------------------------------------------------- program

async function showProgram() {
  const { body } = await getJson("/api/program");
  document.getElementById("program-title").textContent = `Program ${body.program}`;
  fillRows(document.getElementById("budgets"), body.budgets.left.map((b) =>
    el("tr", { "data-budget": b.budget }, el("td", {}, b.budget),
      el("td", { class: "left" }, money(b.left)),
      el("td", {}, b.limit === null ? "–" : money(b.limit)))));
  document.getElementById("budgets-as-of").textContent = body.budgets.as_of_ts
    ? `Spent ${money(body.budgets.spent_total)} ${body.currency} in all; rolling periods as of ${when(body.budgets.as_of_ts)} (event time)`
    : "Nothing spent yet.";
  fillRows(document.getElementById("stock"), body.stock.map((s) =>
    el("tr", { "data-reward": s.reward }, el("td", {}, s.reward),
      el("td", { class: "left" }, s.left), el("td", {}, s.stock))));
  const hour = body.last_hour;
  fillRows(document.getElementById("by-reward"), hour.by_reward.map((r) =>
    el("tr", { "data-reward": r.reward }, el("td", {}, r.reward),
      el("td", { class: "granted" }, r.granted), el("td", { class: "redeemed" }, r.redeemed))));
  fillRows(document.getElementById("by-status"), Object.entries(hour.decisions_by_status).map(
    ([status, n]) => el("tr", {}, el("td", {}, status), el("td", {}, n))));
  fillRows(document.getElementById("alert-reasons"), Object.entries(hour.alerts_by_reason).map(
    ([reason, n]) => el("tr", {}, el("td", {}, reason), el("td", {}, n))));
  const latency = hour.latency_ms;
  document.getElementById("latency").textContent = latency.count
    ? `event produced to decision published: p50 ${latency.p50} ms, p95 ${latency.p95} ms, p99 ${latency.p99} ms (${latency.count} decisions)`
    : "No decisions paired with their events in the last hour.";
}

// ---------------------------------------------------------------- status and routing

async function showStatus() {
  const { status, body } = await getJson("/api/status").catch(() => ({ status: 0, body: {} }));
  const line = document.getElementById("status");
  if (status !== 200) line.textContent = "console unreachable";
  else if (body.reader_error) line.textContent = "reader stopped: " + body.reader_error;
  else if (body.waiting_for_topics.length) line.textContent = "waiting for topics: " + body.waiting_for_topics.join(", ");
  else line.textContent = `${body.caught_up ? "live" : "catching up"} · ${body.records_read} records · ${body.users} users`;
}

function route() {
  const hash = location.hash || "#/users";
  const [, view, ...rest] = hash.split("/");
  const name = ["users", "queue", "program"].includes(view) ? view : "users";
  for (const section of document.querySelectorAll("main > section")) {
    section.hidden = section.id !== "view-" + name;
  }
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("active", link.id === "nav-" + name);
  }
  const userId = rest.length ? decodeURIComponent(rest.join("/")) : "";
  const refresh = {
    users: () => (userId ? showUser(userId) : Promise.resolve()),
    queue: showQueue,
    program: showProgram,
  }[name];
  clearInterval(timer);
  const tick = () => Promise.all([refresh(), showStatus()]).catch((error) => {
    document.getElementById("status").textContent = "error: " + error;
  });
  tick();
  timer = setInterval(tick, POLL_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("user-search").addEventListener("submit", (event) => {
    event.preventDefault();
    const userId = document.getElementById("user-id").value.trim();
    if (userId) location.hash = "#/users/" + encodeURIComponent(userId);
  });
  document.getElementById("queue-risk-only").addEventListener("change", showQueue);
  window.addEventListener("hashchange", route);
  route();
});
