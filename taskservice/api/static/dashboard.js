// taskservice dashboard: polls GET /overview about once a second and draws it.
// Plain DOM, no build step; text goes in with textContent, never as markup.
"use strict";

const POLL_MS = 1000;
const RETRY_MS = 2000;
const TICK_MS = 250;
const TOKEN_KEY = "taskservice.token";
const STATUSES = ["In Queue", "Run", "Completed", "Failed", "Cancelled"];
const SVG = "http://www.w3.org/2000/svg";

const urls = { overview: document.body.dataset.overviewUrl, tasks: document.body.dataset.tasksUrl };
let latest = null; // the last snapshot and when it arrived, for the progress bars
let receivedAt = 0;
let timer = null;
let polls = 0; // numbers each poll: only the latest one draws and schedules the next

function $(selector) {
  return document.querySelector(selector);
}

function element(tag, text, attributes) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, value);
  return node;
}

function svg(tag, attributes, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function seconds(value) {
  if (value === null || value === undefined) return "–";
  if (value < 9.995) return `${value.toFixed(2)} s`;
  if (value < 119.95) return `${value.toFixed(1)} s`;
  const whole = Math.round(value);
  return `${Math.floor(whole / 60)} min ${whole % 60} s`;
}

// Seconds since the epoch of one of the service's ISO 8601 times. They carry
// microseconds; ECMAScript defines only milliseconds, so the rest is cut off.
function epoch(iso) {
  return Date.parse(iso.replace(/(\.\d{3})\d+/, "$1")) / 1000;
}

function time(iso) {
  return new Date(epoch(iso) * 1000).toLocaleTimeString();
}

// Seconds on the server's clock now: the snapshot's time plus what has passed here.
function serverNow() {
  return epoch(latest.time) + (performance.now() - receivedAt) / 1000;
}

// --- talking to the service -------------------------------------------------

function headers(extra) {
  const token = localStorage.getItem(TOKEN_KEY);
  return token ? { ...extra, Authorization: `Bearer ${token}` } : { ...extra };
}

async function call(method, url, json) {
  const init = { method, headers: headers(json === undefined ? {} : { "Content-Type": "application/json" }) };
  if (json !== undefined) init.body = JSON.stringify(json);
  const response = await fetch(url, init);
  if (response.status === 401) $("#token-form").hidden = false;
  const answer = await response.json().catch(() => ({ message: response.statusText }));
  return { ok: response.ok, status: response.status, body: answer };
}

function errorText(answer) {
  const fields = (answer.body.errors && answer.body.errors.json) || {};
  const details = Object.entries(fields).map(([name, problems]) => `${name}: ${[].concat(problems).join(" ")}`);
  return [answer.body.message || `HTTP ${answer.status}`, ...details].join(" ");
}

// Poll now (an action calls it to show its result at once); an answer that
// arrives after a later poll started is dropped, so an older snapshot never
// replaces a newer one and only one chain of polls goes on.
async function poll() {
  clearTimeout(timer);
  const mine = ++polls;
  let next = POLL_MS;
  if (!document.hidden) {
    try {
      const answer = await call("GET", urls.overview);
      if (mine !== polls) return;
      if (!answer.ok) throw new Error(errorText(answer));
      latest = answer.body;
      receivedAt = performance.now();
      render();
      connection("live", `live · ${time(latest.time)}`);
    } catch (error) {
      if (mine !== polls) return;
      connection("down", `not updating: ${error.message}`);
      next = RETRY_MS;
    }
  }
  timer = setTimeout(poll, next);
}

function connection(state, text) {
  const badge = $("#connection");
  badge.className = `connection ${state}`;
  badge.textContent = text;
}

// --- drawing ------------------------------------------------------------------

function render() {
  renderCounts();
  renderSlots();
  renderQueue();
  renderRecent();
  renderReplicas();
  renderTimeline();
}

function renderCounts() {
  const tiles = STATUSES.map((status) => {
    const tile = element("div", null, { class: "count", "data-status": status });
    tile.append(element("span", latest.counts[status] ?? 0, { class: "number" }), element("span", status));
    return tile;
  });
  $("#counts").replaceChildren(...tiles);
}

function renderSlots() {
  // One task per slot; any other task in Run is listed below the slots, as
  // something is wrong (a slot running two tasks, or a task left by another process).
  const running = new Map();
  const misplaced = [];
  for (const task of latest.running) {
    const fits = task.slot >= 1 && task.slot <= latest.concurrency && !running.has(task.slot);
    if (fits) running.set(task.slot, task);
    else misplaced.push(task);
  }
  $("#limit").textContent = `${running.size} of ${latest.concurrency} slots busy`;
  const cards = [];
  for (let slot = 1; slot <= latest.concurrency; slot++) {
    const task = running.get(slot);
    const card = element("div", null, { class: task ? "slot" : "slot idle", "data-slot": slot });
    const title = element("div", null, { class: "title" });
    if (!task) {
      title.append(element("span", `Slot ${slot}`), element("span", "idle"));
      card.append(title);
    } else {
      card.dataset.taskId = task.id;
      title.append(
        element("span", `Slot ${slot} · #${task.id} ${task.name ?? ""}`),
        element("span", "", { class: "elapsed" }),
      );
      const bar = element("div", null, { class: "bar", role: "progressbar" });
      bar.append(element("span"));
      card.append(title, bar);
    }
    cards.push(card);
  }
  for (const task of misplaced) {
    const where = task.slot === null ? "without a slot" : `in slot ${task.slot}`;
    cards.push(element("div", `#${task.id} is in Run ${where} as well`, { class: "slot misplaced" }));
  }
  $("#slots").replaceChildren(...cards);
  tick();
}

// Move the progress bars between snapshots: elapsed against the task's run time.
function tick() {
  if (!latest) return;
  const now = serverNow();
  for (const card of document.querySelectorAll(".slot[data-task-id]")) {
    const task = latest.running.find((t) => String(t.id) === card.dataset.taskId);
    if (!task || !card.querySelector(".bar")) continue;
    const planned = task.duration * latest.time_scale;
    const elapsed = Math.max(0, now - epoch(task.start_time));
    const share = planned > 0 ? Math.min(1, elapsed / planned) : 1;
    card.querySelector(".bar > span").style.width = `${(share * 100).toFixed(1)}%`;
    card.querySelector(".bar").setAttribute("aria-valuenow", Math.round(share * 100));
    card.querySelector(".elapsed").textContent = `${seconds(elapsed)} of ${seconds(planned)}`;
  }
}

function renderQueue() {
  const now = serverNow();
  const queued = latest.counts["In Queue"] ?? 0;
  $("#queue-caption").textContent = queued > latest.queue_head.length ? `(first ${latest.queue_head.length} of ${queued})` : "";
  const tbody = $("#queue tbody");
  const shown = [...tbody.querySelectorAll("tr[data-task-id]")].map((row) => row.dataset.taskId);
  if (shown.join() === latest.queue_head.map((task) => task.id).join() && shown.length) {
    // The same tasks: only their waits change. Rebuilding the rows would
    // replace a Cancel button the user may be pressing at that moment.
    latest.queue_head.forEach((task, index) => {
      tbody.rows[index].cells[4].textContent = seconds(now - epoch(task.create_time));
    });
    return;
  }
  const rows = latest.queue_head.map((task) => {
    const row = element("tr", null, { "data-task-id": task.id, "data-status": task.status });
    const cancel = element("button", "Cancel", { type: "button", class: "cancel", "aria-label": `Cancel task ${task.id}` });
    cancel.addEventListener("click", () => cancelTask(task.id, cancel));
    const cell = element("td");
    cell.append(cancel);
    row.append(
      element("td", task.id),
      element("td", task.name ?? "", { title: task.name ?? "" }),
      element("td", task.priority),
      element("td", seconds(task.duration)),
      element("td", seconds(now - epoch(task.create_time))),
      element("td", task.source, { class: "source" }),
      cell,
    );
    return row;
  });
  if (!rows.length) rows.push(emptyRow(7, "The queue is empty."));
  tbody.replaceChildren(...rows);
}

function renderRecent() {
  const rows = latest.recent.map((task) => {
    const waited = task.start_time ? epoch(task.start_time) - epoch(task.create_time) : null;
    const row = element("tr", null, { "data-task-id": task.id, "data-status": task.status });
    row.append(
      element("td", task.id),
      element("td", task.name ?? "", { title: task.name ?? "" }),
      element("td", task.status, { class: "status", "data-status": task.status, title: task.error ?? "" }),
      element("td", seconds(waited)),
      element("td", seconds(task.time_to_execute)),
      element("td", time(task.finish_time)),
      element("td", task.source, { class: "source" }),
    );
    return row;
  });
  if (!rows.length) rows.push(emptyRow(7, "Nothing has finished yet."));
  $("#recent tbody").replaceChildren(...rows);
}

// The replicas on a shared PostgreSQL database; SQLite has none, and the panel stays hidden.
function renderReplicas() {
  const panel = $("#replicas-panel");
  panel.hidden = !latest.replicas.length;
  if (panel.hidden) return;
  const now = serverNow();
  const rows = latest.replicas.map((replica) => {
    const held = latest.slots.filter((slot) => slot.replica_id === replica.id);
    const row = element("tr", null, { "data-replica-id": replica.id });
    row.append(
      element("td", replica.id, { class: "replica" }),
      element("td", `${replica.host}:${replica.pid}`, { title: replica.host }),
      element("td", replica.runs_tasks ? "runs tasks" : "API only"),
      element("td", `${seconds(Math.max(now - epoch(replica.heartbeat_at), 0))} ago`),
      element("td", held.map((slot) => `${slot.slot} (#${slot.task_id})`).join(", ") || "none"),
    );
    return row;
  });
  $("#replicas tbody").replaceChildren(...rows);
}

function emptyRow(columns, text) {
  const row = element("tr");
  row.append(element("td", text, { colspan: columns, class: "muted" }));
  return row;
}

// One lane per slot, one bar per task from its start to its end (or now).
function renderTimeline() {
  // Drawn at the size it is shown, so that its text keeps the page's size.
  const width = Math.max($("#timeline").clientWidth, 300), laneHeight = 30, top = 4, left = 56, axis = 18;
  const lanes = latest.concurrency;
  const height = top + lanes * laneHeight + axis;
  const end = epoch(latest.time);
  const start = epoch(latest.timeline_since);
  const span = Math.max(end - start, 1);
  const x = (t) => left + ((Math.max(t, start) - start) / span) * (width - left);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "Tasks per slot over time" });

  for (let slot = 1; slot <= lanes; slot++) {
    const y = top + (slot - 1) * laneHeight;
    chart.append(
      svg("rect", { class: "lane", x: left, y, width: width - left, height: laneHeight - 4 }),
      svg("text", { class: "label", x: 0, y: y + laneHeight / 2 + 2 }, `Slot ${slot}`),
    );
  }
  const step = span > 120 ? 30 : span > 40 ? 10 : 5;
  for (let ago = step; ago < span; ago += step) {
    const at = x(end - ago);
    chart.append(
      svg("line", { class: "grid", x1: at, x2: at, y1: top, y2: top + lanes * laneHeight }),
      svg("text", { class: "tick", x: at, y: height - 4, "text-anchor": "middle" }, ago % 60 ? `−${ago} s` : `−${ago / 60} min`),
    );
  }
  const bars = [
    ...latest.timeline.map((t) => ({ ...t, from: epoch(t.start_time), to: epoch(t.finish_time) })),
    ...latest.running.map((t) => ({ ...t, from: epoch(t.start_time), to: end })),
  ].map((bar) => ({ ...bar, to: Math.max(bar.to, bar.from) }));
  for (const bar of bars.filter((t) => t.slot >= 1 && t.slot <= lanes)) {
    const from = x(bar.from);
    const rect = svg("rect", {
      x: from, y: top + (bar.slot - 1) * laneHeight + 2, height: laneHeight - 8,
      width: Math.max(x(bar.to) - from, 1.5), "data-status": bar.status, "data-task-id": bar.id,
    });
    rect.append(svg("title", {}, `#${bar.id} ${bar.status}`));
    chart.append(rect);
  }
  $("#timeline").replaceChildren(chart);
  $("#timeline-caption").textContent = `(last ${seconds(span)})`;
  const peak = mostAtOnce(bars);
  const note = $("#peak");
  note.className = peak > latest.concurrency ? "peak over" : "peak";
  note.textContent = `Most running at once in this window: ${peak} (limit ${latest.concurrency}).`;
}

// The largest number of bars that overlap: a sweep over their starts and ends.
function mostAtOnce(bars) {
  const events = [];
  for (const bar of bars) events.push([bar.from, 1], [bar.to, -1]);
  events.sort((a, b) => a[0] - b[0] || a[1] - b[1]); // an end before a start at the same moment
  let running = 0, peak = 0;
  for (const [, change] of events) peak = Math.max(peak, (running += change));
  return peak;
}

// --- actions --------------------------------------------------------------------

async function createTask(event) {
  event.preventDefault();
  const form = event.target;
  const result = $("#create-result");
  const fields = { priority: form.priority.value };
  if (form.name.value.trim()) fields.name = form.name.value.trim();
  if (form.duration.validity.badInput) {
    // The browser gives "" for text that is not a number, which would mean a random duration.
    result.className = "error";
    result.textContent = "The duration is not a number.";
    return;
  }
  if (form.duration.value !== "") fields.duration = Number(form.duration.value);
  try {
    const answer = await call("POST", urls.tasks, fields);
    result.className = answer.ok ? "" : "error";
    result.textContent = answer.ok ? `Task #${answer.body.id} created.` : errorText(answer);
    if (answer.ok) form.name.value = "";
  } catch (error) {
    result.className = "error";
    result.textContent = `Not sent: ${error.message}`;
  }
  poll();
}

async function cancelTask(id, button) {
  button.disabled = true;
  const result = $("#cancel-result");
  try {
    const answer = await call("DELETE", `${urls.tasks}/${id}`);
    result.className = answer.ok ? "" : "error";
    result.textContent = answer.ok ? `Task #${id} cancelled.` : errorText(answer);
    button.disabled = answer.ok; // a row that stays (same queue head) can be tried again
  } catch (error) {
    result.className = "error";
    result.textContent = `Not sent: ${error.message}`;
    button.disabled = false;
  }
  poll();
}

function useToken(event) {
  event.preventDefault();
  localStorage.setItem(TOKEN_KEY, $("#token").value);
  $("#token").value = "";
  $("#token-form").hidden = true;
  poll();
}

$("#create-form").addEventListener("submit", createTask);
$("#token-form").addEventListener("submit", useToken);
document.addEventListener("visibilitychange", () => document.hidden || poll());
setInterval(tick, TICK_MS);
poll();
