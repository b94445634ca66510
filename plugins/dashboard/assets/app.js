// The dashboard page: every view is built from the broker's management API (/api/v5/...),
// which the dashboard plugin forwards with the logged-in user's credentials.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { auth: sessionStorage.getItem("auth"), session: null, timer: null, viewer: null };

function authHeader(secret) {
  return "Bearer " + secret.trim();
}

async function call(method, path, body) {
  const init = { method, headers: { Authorization: state.auth } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  if (r.status === 401) {
    logout("Your credentials were refused; log in again.");
    throw new Error("unauthorized");
  }
  const text = await r.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { json = null; }
  if (!r.ok) throw new Error((json && json.message) || ("HTTP " + r.status));
  return json;
}

function flash(text, bad) {
  const f = $("#flash");
  f.textContent = text;
  f.className = bad ? "flash bad" : "flash";
  f.hidden = false;
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => { f.hidden = true; }, 6000);
}

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text === undefined || text === null ? "-" : String(text);
  return td;
}

function button(text, cls, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.className = cls;
  b.addEventListener("click", onClick);
  return b;
}

function enc(s) { return encodeURIComponent(s); }

// Searching as one types starts a request per key: only the newest answer may fill a table.
const generations = {};
function newest(key) {
  const mine = (generations[key] || 0) + 1;
  generations[key] = mine;
  return () => generations[key] === mine;
}

function duration(ms) {
  const s = Math.floor(ms / 1000);
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  return (d ? d + "d " : "") + (h ? h + "h " : "") + m + "m " + (s % 60) + "s";
}

// ---------------------------------------------------------------- login

async function login(secret) {
  state.auth = authHeader(secret);
  const r = await fetch("/dashboard/session", { headers: { Authorization: state.auth } });
  if (!r.ok) {
    state.auth = null;
    throw new Error(r.status === 401 ? "wrong token or API key" : "HTTP " + r.status);
  }
  state.session = await r.json();
  sessionStorage.setItem("auth", state.auth);
}

function logout(message) {
  sessionStorage.removeItem("auth");
  state.auth = null;
  clearInterval(state.timer);
  stopViewer();
  $("#app").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = message || "";
}

async function start() {
  $("#login").hidden = true;
  $("#app").hidden = false;
  $("#node-name").textContent = state.session.node;
  $("#rate-minutes").textContent = state.session.history_minutes;
  if (!location.hash) location.hash = "#overview";
  route();
}

// ---------------------------------------------------------------- pages

const pages = {
  overview: { load: loadOverview, every: true },
  clients: { load: loadClients },
  subscriptions: { load: loadSubscriptions },
  retained: { load: loadRetained },
  plugins: { load: loadPlugins },
  publish: { load: async () => {} },
  viewer: { load: async () => {} },
};

function route() {
  const name = (location.hash || "#overview").slice(1);
  const page = pages[name] ? name : "overview";
  for (const p of Object.keys(pages)) {
    $("#page-" + p).hidden = p !== page;
    $("#nav-" + p).classList.toggle("active", p === page);
  }
  clearInterval(state.timer);
  const run = () => pages[page].load().catch((e) => { if (e.message !== "unauthorized") flash(e.message, true); });
  run();
  if (pages[page].every) {
    state.timer = setInterval(run, Math.max(1, state.session.sample_interval_secs) * 1000);
  }
}

async function loadOverview() {
  const [nodes, stats, plugins, rates, metrics] = await Promise.all([
    call("GET", "/api/v5/nodes"),
    call("GET", "/api/v5/stats"),
    call("GET", "/api/v5/plugins"),
    fetch("/dashboard/rates", { headers: { Authorization: state.auth } }).then((r) => r.json()),
    call("GET", "/api/v5/metrics"),
  ]);
  const n = nodes[0];
  $("#ov-node").textContent = n.node;
  $("#ov-uptime").textContent = duration(n.uptime);
  $("#ov-connections").textContent = n.connections;
  $("#ov-sessions").textContent = n.sessions;
  $("#ov-subscriptions").textContent = stats["subscriptions.count"];
  $("#ov-retained").textContent = stats["retained.count"];
  $("#ov-dropped").textContent = metrics[0]["messages.dropped"];
  $("#ov-memory").textContent = (n.memory_used / 1048576).toFixed(1) + " MiB";
  const list = $("#ov-plugins");
  list.replaceChildren();
  for (const p of plugins.plugins.filter((p) => p.state !== "not loaded")) {
    const li = document.createElement("li");
    li.textContent = p.name + ": " + p.state;
    li.className = p.state;
    list.appendChild(li);
  }
  drawRates(rates);
}

function drawRates(samples) {
  const w = 600, h = 160;
  const span = (state.session.history_minutes || 15) * 60 * 1000;
  const now = samples.length ? samples[samples.length - 1].ts_ms : Date.now();
  const peak = Math.max(1, ...samples.map((s) => Math.max(s.received_per_sec, s.sent_per_sec)));
  const points = (key) => samples
    .map((s) => {
      const x = w - ((now - s.ts_ms) / span) * w;
      const y = h - 4 - (s[key] / peak) * (h - 8);
      return x.toFixed(1) + "," + y.toFixed(1);
    })
    .join(" ");
  $("#rate-in").setAttribute("points", points("received_per_sec"));
  $("#rate-out").setAttribute("points", points("sent_per_sec"));
  const last = samples[samples.length - 1] || { received_per_sec: 0, sent_per_sec: 0, dropped_per_sec: 0 };
  $("#rate-last-in").textContent = Math.round(last.received_per_sec);
  $("#rate-last-out").textContent = Math.round(last.sent_per_sec);
  $("#rate-last-dropped").textContent = Math.round(last.dropped_per_sec);
  $("#rate-peak").textContent = Math.round(peak);
}

async function loadClients() {
  const q = new URLSearchParams({ limit: "500" });
  if ($("#client-search").value) q.set("like_clientid", $("#client-search").value);
  if ($("#client-state").value) q.set("conn_state", $("#client-state").value);
  const current = newest("clients");
  const page = await call("GET", "/api/v5/clients?" + q);
  if (!current()) return;
  const body = $("#clients-table tbody");
  body.replaceChildren();
  for (const c of page.data) {
    const tr = document.createElement("tr");
    tr.dataset.clientid = c.clientid;
    const id = cell(c.clientid);
    id.className = "link";
    id.addEventListener("click", () => showClient(c.clientid));
    tr.append(id, cell(c.username), cell(c.connected ? "connected" : "offline"),
      cell(c.ip_address ? c.ip_address + ":" + c.port : null), cell(c.proto_ver),
      cell(c.subscriptions_cnt), cell(c.mqueue_len));
    const actions = document.createElement("td");
    if (c.connected) {
      actions.appendChild(button("Kick", "danger kick", () => kick(c.clientid)));
    }
    actions.appendChild(button("Details", "details", () => showClient(c.clientid)));
    tr.appendChild(actions);
    body.appendChild(tr);
  }
  $("#clients-count").textContent = page.meta.count + " client(s)";
}

async function showClient(id) {
  const [c, subs] = await Promise.all([
    call("GET", "/api/v5/clients/" + enc(id)),
    call("GET", "/api/v5/clients/" + enc(id) + "/subscriptions"),
  ]);
  const box = $("#client-detail");
  box.replaceChildren();
  const h = document.createElement("h2");
  h.textContent = c.clientid;
  const pre = document.createElement("pre");
  pre.textContent = JSON.stringify(c, null, 2);
  const list = document.createElement("ul");
  for (const s of subs) {
    const li = document.createElement("li");
    li.textContent = s.topic + " (QoS " + s.qos + ")";
    list.appendChild(li);
  }
  box.append(h, pre, list);
  box.hidden = false;
}

async function kick(id) {
  try {
    await call("DELETE", "/api/v5/clients/" + enc(id));
    flash("Client " + id + " kicked.");
  } catch (e) {
    flash(e.message, true);
  }
  await loadClients();
}

async function loadSubscriptions() {
  const q = new URLSearchParams({ limit: "1000" });
  if ($("#subs-match").value) q.set("match_topic", $("#subs-match").value);
  const current = newest("subscriptions");
  const page = await call("GET", "/api/v5/subscriptions?" + q);
  if (!current()) return;
  const body = $("#subs-table tbody");
  body.replaceChildren();
  for (const s of page.data) {
    const tr = document.createElement("tr");
    tr.append(cell(s.clientid), cell(s.topic), cell(s.qos), cell(s.nl), cell(s.rap), cell(s.rh));
    body.appendChild(tr);
  }
  $("#subs-count").textContent = page.meta.count + " subscription(s)";
}

async function loadRetained() {
  const q = new URLSearchParams({ limit: "1000" });
  if ($("#retained-filter").value) q.set("topic", $("#retained-filter").value);
  const current = newest("retained");
  let page;
  try {
    page = await call("GET", "/api/v5/mqtt/retainer/messages?" + q);
  } catch (e) {
    $("#retained-count").textContent = e.message;
    return;
  }
  if (!current()) return;
  const body = $("#retained-table tbody");
  body.replaceChildren();
  for (const m of page.data) {
    const tr = document.createElement("tr");
    tr.dataset.topic = m.topic;
    tr.append(cell(m.topic), cell(m.qos), cell(m.payload_size), cell(m.publish_at));
    const actions = document.createElement("td");
    actions.appendChild(button("Show", "show", () => showRetained(m.topic)));
    actions.appendChild(button("Delete", "danger delete", () => deleteRetained(m.topic)));
    tr.appendChild(actions);
    body.appendChild(tr);
  }
  $("#retained-count").textContent = page.meta.count + " retained message(s)";
}

async function showRetained(topic) {
  const m = await call("GET", "/api/v5/mqtt/retainer/message/" + enc(topic));
  const bytes = Uint8Array.from(atob(m.payload || ""), (c) => c.charCodeAt(0));
  const pre = $("#retained-payload");
  pre.textContent = topic + "\n" + new TextDecoder().decode(bytes);
  pre.hidden = false;
}

async function deleteRetained(topic) {
  try {
    await call("DELETE", "/api/v5/mqtt/retainer/message/" + enc(topic));
    flash("Retained message on " + topic + " deleted.");
  } catch (e) {
    flash(e.message, true);
  }
  await loadRetained();
}

async function loadPlugins() {
  const list = await call("GET", "/api/v5/plugins");
  const body = $("#plugins-table tbody");
  body.replaceChildren();
  for (const p of list.plugins) {
    const tr = document.createElement("tr");
    tr.dataset.plugin = p.name;
    const s = p.stats || {};
    tr.append(cell(p.name), cell(p.state), cell(p.version), cell(s.calls), cell(s.errors),
      cell(s.p99_us === undefined ? null : s.p99_us.toFixed(1)));
    const actions = document.createElement("td");
    if (p.state === "not loaded") {
      actions.appendChild(button("Load", "plugin-load", () => pluginAction(p.name, "load")));
    } else {
      actions.appendChild(button("Reload", "plugin-reload", () => pluginAction(p.name, "reload")));
      if (p.name !== "dashboard") {
        actions.appendChild(button("Unload", "danger plugin-unload", () => pluginAction(p.name, "unload")));
      }
    }
    tr.appendChild(actions);
    body.appendChild(tr);
  }
}

async function pluginAction(name, action) {
  try {
    const r = await call("POST", "/api/v5/plugins/" + enc(name) + "/" + action);
    flash(r.message);
  } catch (e) {
    flash(e.message, true);
  }
  await loadPlugins();
}

async function publish(event) {
  event.preventDefault();
  const body = {
    topic: $("#pub-topic").value,
    payload: $("#pub-payload").value,
    qos: Number($("#pub-qos").value),
    retain: $("#pub-retain").checked,
  };
  try {
    const r = await call("POST", "/api/v5/publish", body);
    $("#pub-result").textContent = "Published (id " + r.id + "): queued for " + r.delivered + " session(s).";
  } catch (e) {
    $("#pub-result").textContent = e.message;
  }
}

// ---------------------------------------------------------------- live topic viewer

function viewerUrl() {
  if (state.session.ws_url) return state.session.ws_url;
  const ws = state.session.ws;
  if (!ws) return null;
  return ws.scheme + "://" + location.hostname + ":" + ws.port + ws.path;
}

async function startViewer() {
  stopViewer();
  const url = viewerUrl();
  if (!url) {
    $("#viewer-status").textContent = "the broker has no WebSocket listener";
    return;
  }
  const client = new window.MiniMqtt(url, {
    clientId: "dashboard-" + Math.random().toString(16).slice(2, 10),
    username: $("#viewer-user").value,
    password: $("#viewer-pass").value,
  });
  state.viewer = client;
  client.onMessage = (m) => {
    const tr = document.createElement("tr");
    tr.append(cell(new Date().toLocaleTimeString()), cell(m.topic), cell(m.qos),
      cell(m.retain ? "yes" : ""), cell(new TextDecoder().decode(m.payload)));
    const body = $("#viewer-messages");
    body.prepend(tr);
    while (body.children.length > 200) body.lastChild.remove();
  };
  client.onClose = () => { if (state.viewer === client) $("#viewer-status").textContent = "disconnected"; };
  $("#viewer-status").textContent = "connecting to " + url;
  try {
    await client.connect();
    const filter = $("#viewer-filter").value || "#";
    const granted = await client.subscribe(filter);
    $("#viewer-status").textContent = granted === 0x80
      ? "subscription to " + filter + " refused"
      : "subscribed to " + filter;
  } catch (e) {
    $("#viewer-status").textContent = e.message;
  }
}

function stopViewer() {
  if (state.viewer) {
    const v = state.viewer;
    state.viewer = null;
    v.close();
    $("#viewer-status").textContent = "not connected";
  }
}

// ---------------------------------------------------------------- wiring

document.addEventListener("DOMContentLoaded", () => {
  $("#login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      await login($("#token").value);
      $("#token").value = "";
      await start();
    } catch (err) {
      $("#login-error").textContent = err.message;
    }
  });
  $("#logout").addEventListener("click", () => logout(""));
  $("#client-refresh").addEventListener("click", () => loadClients());
  $("#client-search").addEventListener("input", () => loadClients());
  $("#client-state").addEventListener("change", () => loadClients());
  $("#subs-refresh").addEventListener("click", () => loadSubscriptions());
  $("#subs-match").addEventListener("input", () => loadSubscriptions());
  $("#retained-refresh").addEventListener("click", () => loadRetained());
  $("#retained-filter").addEventListener("change", () => loadRetained());
  $("#pub-form").addEventListener("submit", publish);
  $("#viewer-connect").addEventListener("click", startViewer);
  $("#viewer-stop").addEventListener("click", stopViewer);
  window.addEventListener("hashchange", () => { if (state.session) route(); });
  if (state.auth) {
    fetch("/dashboard/session", { headers: { Authorization: state.auth } })
      .then((r) => (r.ok ? r.json() : Promise.reject(new Error("expired"))))
      .then((s) => { state.session = s; return start(); })
      .catch(() => logout(""));
  }
});
