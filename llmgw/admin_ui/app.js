// The seed's admin page, on the remote admin API (/admin/api). Values from the API are
// only ever set as text, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN = "llmgw-admin-token";

async function api(method, path, body) {
  const headers = { "Content-Type": "application/json" };
  const token = sessionStorage.getItem(TOKEN);
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(`/admin/api${path}`, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({}));
  if (response.status === 401 && path !== "/login") showLogin();
  if (!response.ok) throw new Error(data.error?.message || `HTTP ${response.status}`);
  return data;
}

function notice(message) {
  $("notice").textContent = message;
  $("notice").hidden = !message;
}

function cell(row, value, className) {
  const td = row.insertCell();
  td.textContent = value === null || value === undefined ? "-" : String(value);
  if (className) td.className = className;
  return td;
}

function button(label, action) {
  const b = document.createElement("button");
  b.textContent = label;
  b.addEventListener("click", async () => {
    try { await action(); await refresh(); } catch (e) { notice(e.message); }
  });
  return b;
}

function showLogin() {
  sessionStorage.removeItem(TOKEN);
  $("login-view").hidden = false;
  $("main-view").hidden = true;
  $("logout").hidden = true;
}

function showKey(key) {
  $("new-key-value").textContent = key;
  $("new-key").hidden = false;
}

async function refreshKeys() {
  const body = $("keys").tBodies[0];
  body.replaceChildren();
  for (const k of (await api("GET", "/keys")).data) {
    const row = body.insertRow();
    if (!k.is_active) row.className = "inactive";
    [k.id, k.key_prefix, k.user_id, k.tier, k.is_active ? "yes" : "no", k.expires_at,
     k.last_used_at, k.description].forEach((v) => cell(row, v));
    const actions = cell(row, "");
    if (k.is_active) actions.append(button("Revoke", () => api("POST", `/keys/${k.id}/revoke`)));
    actions.append(button("Rotate", async () => {
      if (confirm(`Give key ${k.id} of ${k.user_id} a new secret? The old one stops working.`)) {
        showKey((await api("POST", `/keys/${k.id}/rotate`)).key);
      }
    }));
    actions.append(button("Delete", async () => {
      if (confirm(`Delete key ${k.id} of ${k.user_id} for good?`)) await api("DELETE", `/keys/${k.id}`);
    }));
  }
}

async function refreshUsage() {
  const usage = await api("GET", `/usage?days=${$("usage-days").value}&by=user`);
  const body = $("usage").tBodies[0];
  body.replaceChildren();
  for (const g of [...usage.data, { ...usage.total, group: "total" }]) {
    const row = body.insertRow();
    cell(row, g.group);
    [g.requests, g.errors, g.rate_limited, g.prompt_tokens, g.completion_tokens,
     g.latency_p50_ms === null ? null : Math.round(g.latency_p50_ms),
     g.latency_p95_ms === null ? null : Math.round(g.latency_p95_ms)]
      .forEach((v) => cell(row, v, "num"));
  }
}

async function refreshTiers() {
  const tiers = await api("GET", "/tiers");
  $("tier").replaceChildren(...tiers.data.map((t) => {
    const option = document.createElement("option");
    option.value = t.name;
    option.textContent = `${t.name} (${t.requests_per_minute}/min, ${t.requests_per_hour}/h)`;
    option.selected = t.name === tiers.default;
    return option;
  }));
}

async function refresh() {
  await Promise.all([refreshKeys(), refreshUsage()]);
}

async function start() {
  $("login-view").hidden = true;
  $("main-view").hidden = false;
  $("logout").hidden = false;
  try { await Promise.all([refreshTiers(), refresh()]); notice(""); } catch (e) { notice(e.message); }
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    try {
      const answer = await api("POST", "/login", {
        username: form.get("username"), password: form.get("password"),
      });
      sessionStorage.setItem(TOKEN, answer.access_token);
      event.target.reset();
      await start();
    } catch (e) { notice(e.message); }
  });
  $("create-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    const body = { user_id: form.get("user_id"), tier: form.get("tier") };
    if (form.get("description")) body.description = form.get("description");
    if (form.get("expires_at")) body.expires_at = form.get("expires_at");
    try {
      showKey((await api("POST", "/keys", body)).key);
      event.target.reset();
      await refresh();
      notice("");
    } catch (e) { notice(e.message); }
  });
  $("copy-key").addEventListener("click", () => navigator.clipboard.writeText($("new-key-value").textContent));
  $("usage-days").addEventListener("change", () => refreshUsage().catch((e) => notice(e.message)));
  $("logout").addEventListener("click", showLogin);
  if (sessionStorage.getItem(TOKEN)) start(); else showLogin();
});
