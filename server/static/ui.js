// contextkit web UI: loads each page's server-rendered content from /ui/partial/<path> with the
// API key kept in this browser, follows links without reloading, and runs the playground and
// the search page against the JSON API. Admin actions (jobs, API keys) call the same JSON API as
// every client, marked `X-ContextKit-Client: ui` for the audit log. No framework, no build step.
"use strict";

const KEY_STORAGE = "contextkit.apiKey";
const AUTH_ON = document.body.dataset.auth === "true";
const content = document.getElementById("content");

function apiKey() {
  try {
    return localStorage.getItem(KEY_STORAGE) || "";
  } catch (_err) {
    return "";
  }
}

function authHeaders(extra) {
  const headers = Object.assign({}, extra || {});
  const key = apiKey();
  if (key) headers.Authorization = "Bearer " + key;
  return headers;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name === "class") node.className = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error) {
      const hint = body.error.details && body.error.details.hint;
      return body.error.message + (hint ? " (" + hint + ")" : "");
    }
  } catch (_err) {
    /* not JSON */
  }
  return "HTTP " + response.status;
}

function showKeyState() {
  const state = document.getElementById("key-state");
  const out = document.getElementById("sign-out");
  if (!AUTH_ON) {
    state.textContent = "auth off";
    out.hidden = true;
    return;
  }
  const key = apiKey();
  state.textContent = key ? "key " + key.split("_")[1] : "";
  out.hidden = !key;
}

function showLogin(message) {
  const template = document.getElementById("login-template");
  content.replaceChildren(template.content.cloneNode(true));
  document.title = "Sign in · contextkit";
  if (message) {
    const slot = content.querySelector('[data-slot="message"]');
    slot.textContent = message;
    slot.hidden = false;
  }
  const form = document.getElementById("login-form");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = document.getElementById("login-key").value.trim();
    if (!key) return;
    localStorage.setItem(KEY_STORAGE, key);
    showKeyState();
    load(location.pathname + location.search, false);
  });
  document.getElementById("login-key").focus();
}

function partialUrl(path) {
  const url = new URL(path, location.origin);
  const rest = url.pathname.replace(/^\/ui\/?/, "");
  return "/ui/partial/" + rest + url.search;
}

let loading = 0;
let refreshTimer = null;
let lastResult = null; // the last admin action's message, kept across the page's reloads

async function load(path, push) {
  const ticket = ++loading;
  if (push) history.pushState({}, "", path);
  let response;
  try {
    response = await fetch(partialUrl(path), { headers: authHeaders() });
  } catch (err) {
    content.replaceChildren(el("p", { class: "error", text: "The server cannot be reached: " + err }));
    return;
  }
  if (ticket !== loading) return; // a newer navigation won
  if (response.status === 401) {
    showLogin(apiKey() ? await errorMessage(response) : "");
    return;
  }
  if (!response.ok) {
    const page = el("div", { class: "page" },
      el("nav", { class: "crumbs" }, el("a", { href: "/ui", text: "Workspaces" })),
      el("h1", { text: response.status === 403 ? "Not allowed" : "Not found" }),
      el("p", { class: "error", text: await errorMessage(response) }));
    content.replaceChildren(page);
    return;
  }
  content.innerHTML = await response.text(); // server-rendered, escaped HTML
  const page = content.querySelector(".page");
  if (page && page.dataset.title) document.title = page.dataset.title;
  const kind = page && page.dataset.page;
  if (kind === "playground") initPlayground(page);
  if (kind === "search") initSearch(page);
  if (page) initActions(page);
  const here = location.pathname + location.search;
  if (lastResult && lastResult.path === here) showActionResult(lastResult);
  else lastResult = null;
  clearTimeout(refreshTimer);
  if (page && page.dataset.refresh) {
    // Queued or running jobs on the page: follow them until they finish.
    refreshTimer = setTimeout(() => {
      if (location.pathname + location.search === here) load(here, false);
    }, Number(page.dataset.refresh));
  }
  for (const form of content.querySelectorAll("form[data-nav-form]")) {
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const params = new URLSearchParams();
      for (const [name, value] of new FormData(form)) if (value) params.set(name, value);
      const query = params.toString();
      load(location.pathname + (query ? "?" + query : ""), true);
    });
  }
  if (!push) return;
  window.scrollTo(0, 0);
}

document.addEventListener("click", (event) => {
  const anchor = event.target.closest("a");
  if (!anchor || event.defaultPrevented || event.button !== 0) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const href = anchor.getAttribute("href") || anchor.getAttribute("xlink:href");
  if (!href || !href.startsWith("/ui") || href.startsWith("/ui/static")) return;
  event.preventDefault();
  load(href, true);
});

window.addEventListener("popstate", () => load(location.pathname + location.search, false));

document.getElementById("sign-out").addEventListener("click", () => {
  localStorage.removeItem(KEY_STORAGE);
  showKeyState();
  showLogin("Signed out.");
});

// -- admin actions ----------------------------------------------------------------------------
// Forms and buttons marked data-action call the JSON API (the server checks the key's role and
// records the action in the audit log); the page then reloads to show the new state.
function initActions(page) {
  for (const form of page.querySelectorAll("form[data-action]")) {
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      runAction(form.dataset.action, form, form.querySelector("button[type=submit]"));
    });
  }
  for (const button of page.querySelectorAll("button[data-action]")) {
    button.addEventListener("click", () => runAction(button.dataset.action, button, button));
  }
}

function actionRequest(action, source) {
  const data = source.tagName === "FORM" ? new FormData(source) : null;
  if (action === "trigger") {
    const view = data.get("view");
    return ["/v1/jobs", { workspace: source.dataset.workspace, views: view ? [view] : null,
                          full: data.get("full") === "on" }];
  }
  if (action === "cancel" || action === "retry") {
    return ["/v1/jobs/" + encodeURIComponent(source.dataset.job) + "/" + action, {}];
  }
  if (action === "create-key") {
    const days = data.get("expires_days");
    return ["/v1/access/keys", {
      name: String(data.get("name")).trim(), workspace: data.get("workspace"),
      role: data.get("role"), kind: data.get("kind"), description: data.get("description") || "",
      expires_in_s: days ? Math.round(Number(days) * 86400) : null,
    }];
  }
  if (action === "revoke-key") {
    return ["/v1/access/keys/" + encodeURIComponent(source.dataset.key) + "/revoke", {}];
  }
  throw new Error("unknown action " + action);
}

function actionMessage(action, result) {
  if (action === "trigger") {
    return "Queued: " + result.jobs.map((j) =>
      j.view + " (job " + j.id + (j.started ? "" : ", already queued or running") + ")").join(", ");
  }
  if (action === "cancel") return "Cancel requested for job " + result.id + " (" + result.display_status + ").";
  if (action === "retry") return "Job " + result.id + " queued again.";
  if (action === "create-key") {
    return "Created key " + result.record.id + " for " + result.record.principal + " (" +
      result.record.role + " in " + result.record.workspace + "):";
  }
  if (action === "revoke-key") return "Revoked key " + result.id + " of " + result.principal + ".";
  return "Done.";
}

async function runAction(action, source, button) {
  const [url, body] = actionRequest(action, source);
  const path = location.pathname + location.search;
  if (button) button.disabled = true;
  let response;
  try {
    response = await fetch(url, {
      method: "POST",
      headers: authHeaders({ "content-type": "application/json", "x-contextkit-client": "ui" }),
      body: JSON.stringify(body),
    });
  } catch (err) {
    if (button) button.disabled = false;
    return showActionResult({ path, message: "The server cannot be reached: " + err, error: true });
  }
  if (response.status === 401) return showLogin(await errorMessage(response));
  if (!response.ok) {
    if (button) button.disabled = false;
    return showActionResult({ path, message: await errorMessage(response), error: true });
  }
  const result = await response.json();
  lastResult = { path, message: actionMessage(action, result), error: false,
                 secret: action === "create-key" ? result.key : null };
  await load(path, false);
}

function showActionResult(found) {
  lastResult = found;
  let slot = content.querySelector('[data-slot="action-result"]');
  if (!slot) {
    slot = el("p", { "data-slot": "action-result" });
    (content.querySelector(".page") || content).prepend(slot);
  }
  slot.className = "action-result " + (found.error ? "error" : "ok");
  slot.hidden = false;
  slot.replaceChildren(found.message);
  if (found.secret) {
    slot.append(" ", el("code", { class: "new-key", text: found.secret }),
      el("span", { class: "muted small", text: " copy it now: it is shown only once" }));
  }
}

// -- the playground ---------------------------------------------------------------------------
function formatAge(seconds) {
  const s = Math.round(seconds);
  if (s < 120) return s + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  if (s < 172800) return Math.round(s / 3600) + " h";
  return Math.round(s / 86400) + " days";
}

function formatValue(value) {
  if (value === null || value === undefined) return "null";
  if (typeof value === "number" && !Number.isInteger(value)) return String(Number(value.toPrecision(10)));
  return JSON.stringify(value);
}

function coerce(value, dtype) {
  if (value === "") return null;
  if (dtype === "int64") return /^-?\d+$/.test(value) ? Number(value) : value;
  if (dtype === "float64") return Number.isNaN(Number(value)) ? value : Number(value);
  if (dtype === "bool") return value === "true" ? true : value === "false" ? false : value;
  return value;
}

function initPlayground(page) {
  const config = JSON.parse(page.querySelector("#playground-config").textContent);
  const form = page.querySelector("#playground-form");
  if (!form) return;
  const serviceSelect = form.querySelector("#pg-service");
  const promptSelect = form.querySelector("#pg-prompt");
  const byName = Object.fromEntries(config.services.map((s) => [s.service, s]));

  function fields() {
    const service = byName[serviceSelect.value];
    const keys = form.querySelector("#pg-keys");
    keys.replaceChildren(el("legend", { text: "entity keys" }));
    for (const key of service.keys) {
      keys.append(el("label", {}, key.name + " ",
        el("input", { name: "key:" + key.name, "data-dtype": key.dtype, required: true,
                      placeholder: key.dtype, value: key.dtype === "int64" ? "1" : "" })));
    }
    if (!service.keys.length) keys.append(el("span", { class: "muted", text: "none" }));
    const request = form.querySelector("#pg-request");
    request.replaceChildren(el("legend", { text: "request context" }));
    for (const field of service.request_context) {
      request.append(el("label", {}, field.name + " ",
        el("input", { name: "rc:" + field.name, "data-dtype": field.dtype,
                      required: field.required, placeholder: field.required ? field.dtype : String(field.default) })));
    }
    request.hidden = !service.request_context.length;
    promptSelect.replaceChildren(...service.prompts.map((p) => el("option", { text: p })));
    form.querySelector("#pg-prompt-label").hidden = !service.prompts.length;
  }
  serviceSelect.addEventListener("change", fields);
  fields();

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const service = byName[serviceSelect.value];
    const body = { workspace: config.workspace, service: service.service, entities: {} };
    const context = {};
    for (const input of form.querySelectorAll("input[name^='key:'], input[name^='rc:']")) {
      const [kind, name] = input.name.split(/:(.*)/s);
      const value = coerce(input.value.trim(), input.dataset.dtype);
      if (kind === "key") body.entities[name] = value;
      else if (value !== null) context[name] = value;
    }
    if (Object.keys(context).length) body.request_context = context;
    const query = form.querySelector("#pg-query").value.trim();
    if (query) body.query = query;
    const topK = form.querySelector("#pg-top-k").value;
    if (topK) body.top_k = Number(topK);
    if (service.prompts.length) body.prompt = promptSelect.value;
    else body.render = false;
    const error = page.querySelector("#pg-error");
    error.hidden = true;
    const button = form.querySelector("#pg-run");
    button.disabled = true;
    button.textContent = "Working…";
    try {
      const response = await fetch("/v1/context", {
        method: "POST",
        headers: authHeaders({ "content-type": "application/json" }),
        body: JSON.stringify(body),
      });
      if (response.status === 401) return showLogin(await errorMessage(response));
      if (!response.ok) {
        error.textContent = await errorMessage(response);
        error.hidden = false;
        return;
      }
      showContext(page, await response.json());
    } catch (err) {
      error.textContent = String(err);
      error.hidden = false;
    } finally {
      button.disabled = false;
      button.textContent = "Get context";
    }
  });
}

function showContext(page, result) {
  page.querySelector("#pg-result").hidden = false;
  const timings = (result.metadata && result.metadata.timings_ms) || {};
  page.querySelector("#pg-summary").textContent =
    "workspace " + result.workspace + " · service " + result.service +
    (timings.total !== undefined ? " · " + Number(timings.total).toFixed(1) + " ms" : "");

  const prompt = result.prompt;
  const promptOut = page.querySelector("#pg-prompt-out");
  const tokens = page.querySelector("#pg-tokens");
  if (!prompt) {
    promptOut.replaceChildren(el("p", { class: "muted", text: "This service has no prompt view." }));
    tokens.textContent = "";
  } else {
    tokens.textContent = prompt.tokens + " tokens" +
      (prompt.max_tokens ? " of " + prompt.max_tokens : "") + " · " + prompt.tokenizer +
      (prompt.truncated ? " · truncated" : "") +
      (prompt.dropped && prompt.dropped.length ? " · dropped " + prompt.dropped.length + " documents" : "");
    tokens.dataset.tokens = prompt.tokens;
    const turns = prompt.messages && prompt.messages.length
      ? prompt.messages
      : [{ role: "text", content: prompt.text || "" }];
    promptOut.replaceChildren(...turns.map((m) =>
      el("div", { class: "message role-" + m.role },
        el("div", { class: "role", text: m.role }),
        el("pre", { class: "rendered", text: m.content }))));
  }

  const features = page.querySelector("#pg-features");
  const views = Object.entries(result.features || {});
  if (!views.length) features.replaceChildren(el("p", { class: "muted", text: "none" }));
  else {
    features.replaceChildren(...views.map(([view, data]) => {
      const rows = Object.entries(data.values || {}).map(([name, value]) =>
        el("tr", {}, el("td", { text: name }),
          el("td", { class: "value", text: formatValue(value) }),
          el("td", { class: "muted", text: (data.types || {})[name] || "" })));
      const fresh = data.freshness_s !== undefined && data.freshness_s !== null
        ? " · newest value " + formatAge(data.freshness_s) + " old" : "";
      return el("div", { class: "feature-view" },
        el("h3", {}, view + " ", el("span", { class: "status status-" + (data.status === "PRESENT" ? "succeeded" : "warning"), text: data.status }),
          el("span", { class: "muted small", text: fresh })),
        el("table", { class: "grid compact" }, el("tbody", {}, ...rows)));
    }));
  }

  const documents = page.querySelector("#pg-documents");
  const searches = Object.entries(result.documents || {});
  if (!searches.length) documents.replaceChildren(el("p", { class: "muted", text: "none" }));
  else {
    documents.replaceChildren(...searches.map(([name, hits]) =>
      el("div", { class: "search-hits" }, el("h3", { text: name + " (" + hits.length + ")" }),
        ...hits.map((hit) => documentCard(hit)))));
  }
}

function documentCard(hit) {
  const meta = Object.entries(hit.metadata || {}).map(([k, v]) => k + ": " + v).join(" · ");
  return el("article", { class: "hit" },
    el("div", { class: "hit-head" },
      el("span", { class: "score", text: Number(hit.score).toFixed(4) }),
      el("code", { text: hit.id })),
    meta ? el("div", { class: "muted small", text: meta }) : null,
    el("p", { class: "hit-text", text: (hit.text || "").slice(0, 400) + ((hit.text || "").length > 400 ? "…" : "") }));
}

// -- search -----------------------------------------------------------------------------------
function initSearch(page) {
  const form = page.querySelector("#search-form");
  if (!form) return;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = page.querySelector("#s-error");
    error.hidden = true;
    const body = {
      workspace: form.dataset.workspace,
      view: form.querySelector("#s-view").value,
      mode: form.querySelector("#s-mode").value,
      query: form.querySelector("#s-query").value,
      top_k: Number(form.querySelector("#s-top-k").value || 10),
    };
    const filter = form.querySelector("#s-filter").value.trim();
    if (filter) {
      try {
        body.filter = JSON.parse(filter);
      } catch (err) {
        error.textContent = "The filter is not valid JSON: " + err.message;
        error.hidden = false;
        return;
      }
    }
    const response = await fetch("/v1/search", {
      method: "POST",
      headers: authHeaders({ "content-type": "application/json" }),
      body: JSON.stringify(body),
    });
    if (response.status === 401) return showLogin(await errorMessage(response));
    if (!response.ok) {
      error.textContent = await errorMessage(response);
      error.hidden = false;
      return;
    }
    const result = await response.json();
    const out = page.querySelector("#s-results");
    const timings = (result.metadata && result.metadata.timings_ms) || {};
    out.replaceChildren(
      el("p", { class: "summary", text: result.results.length + " results · " + result.mode +
        (timings.search !== undefined ? " · " + Number(timings.search).toFixed(1) + " ms" : "") }),
      ...result.results.map((hit) => documentCard(hit)));
  });
}

showKeyState();
if (AUTH_ON && !apiKey()) showLogin("");
else load(location.pathname + location.search, false);
