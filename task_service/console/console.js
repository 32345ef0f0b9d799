// The operator's console: a page per view, each drawn from the AdminService's REST paths with the key the operator
// signed in with (kept in this tab's sessionStorage only). Text from the API is only ever set as text, never parsed
// as HTML. Buttons that change something are drawn for admin keys alone; the API refuses a viewer's anyway (403).
"use strict";

const KEY_STORAGE = "aitask-console-key";
const PAGE_SIZE = 25;
const STATUSES = ["", "pending", "processing", "completed", "failed", "cancelled"];
const TYPES = ["", "image", "video", "text"];
let caller = null;

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "onclick" || name === "onsubmit") node[name] = value;
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child !== undefined && child !== null) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(KEY_STORAGE) || ""}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const answer = await response.json().catch(() => ({ message: `HTTP ${response.status}` }));
  if (!response.ok) {
    const error = new Error(answer.message || `HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return answer;
}

const flash = (message) => { document.getElementById("flash").textContent = message; };
const isAdmin = () => caller && caller.role === "admin";
const main = () => document.getElementById("main");
const when = (timestamp) => (timestamp ? new Date(timestamp).toLocaleString() : "");
const seconds = (value) => `${Math.round(Number(value || 0))} s`;

function show(...nodes) {
  main().replaceChildren(...nodes);
}

function table(headings, rows) {
  return el("table", {}, el("thead", {}, el("tr", {}, headings.map((heading) => el("th", {}, heading)))),
    el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: headings.length }, "nothing here"))));
}

function action(label, run, className = "") {
  // Absent for a viewer: it could not do it.
  if (!isAdmin()) return null;
  return el("button", {
    type: "button", class: `action ${className}`, "data-action": label,
    onclick: async (event) => {
      event.target.disabled = true;
      flash("");
      try { await run(); } catch (error) { flash(`${label}: ${error.message}`); }
      route();
    },
  }, label);
}

async function overview() {
  const [queues, providers, failures] = await Promise.all([
    api("GET", "/api/v1/admin/queues"),
    api("GET", "/api/v1/admin/providers"),
    api("GET", "/api/v1/admin/tasks?status=failed&limit=5"),
  ]);
  const queueRows = queues.data.map((queue) => el("tr", {},
    el("td", {}, queue.priority), el("td", {}, queue.queued || 0), el("td", {}, queue.started || 0),
    el("td", {}, queue.scheduled || 0), el("td", {}, queue.failed || 0), el("td", {}, seconds(queue.oldest_age_seconds)),
    el("td", {}, queue.finished_last_hour || 0), el("td", {}, queue.paused ? "paused" : "running"),
    el("td", {}, queue.paused
      ? action("Resume", () => api("POST", `/api/v1/admin/queues/${queue.priority}/resume`, {}))
      : action("Pause", () => api("POST", `/api/v1/admin/queues/${queue.priority}/pause`, {})))));
  const byProvider = {};
  for (const instance of providers.data) (byProvider[instance.provider] ||= []).push(instance);
  const providerRows = Object.entries(byProvider).map(([name, instances]) => el("tr", {},
    el("td", {}, name), el("td", {}, instances.length),
    el("td", {}, instances.filter((i) => i.health === "serving" && !i.draining).length),
    el("td", {}, instances.filter((i) => i.circuit !== "closed").length)));
  return [el("h1", {}, "Overview"),
    el("h2", {}, "Queues"),
    table(["Priority", "Queued", "Started", "Scheduled", "Failed jobs", "Oldest wait", "Finished (1 h)", "State", ""], queueRows),
    el("h2", {}, "Providers"),
    table(["Provider", "Instances", "Taking work", "Circuits not closed"], providerRows),
    el("h2", {}, "Latest failures"),
    taskTable(failures.data.tasks || [])];
}

function taskTable(tasks) {
  return table(["Task", "User", "Type", "Provider / model", "Status", "Created"], tasks.map((task) => el("tr", {},
    el("td", { class: "wrap" }, el("a", { href: `#/task/${encodeURIComponent(task.task_id)}` }, task.task_id)),
    el("td", {}, task.user_id), el("td", {}, task.type), el("td", {}, `${task.provider} / ${task.model}`),
    el("td", { class: `status-${task.status}` }, task.status), el("td", {}, when(task.created)))));
}

async function tasks(query) {
  const filters = ["task_id", "user_id", "status", "type", "provider", "model", "created_after", "created_before"];
  const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
  for (const name of [...filters, "page_token"]) if (query.get(name)) params.set(name, query.get(name));
  const page = (await api("GET", `/api/v1/admin/tasks?${params}`)).data;
  const field = (name) => {
    if (name === "status" || name === "type") {
      return el("select", { name }, (name === "status" ? STATUSES : TYPES).map((value) =>
        el("option", { value, selected: query.get(name) === value }, value || "any")));
    }
    return el("input", { name, value: query.get(name) || "", size: name.endsWith("_id") ? 28 : 16,
      placeholder: name.startsWith("created") ? "2026-12-01T00:00:00Z" : "" });
  };
  const form = el("form", { class: "filters", id: "task-search", onsubmit: (event) => {
    event.preventDefault();
    const chosen = new URLSearchParams();
    for (const [name, value] of new FormData(event.target)) if (value) chosen.set(name, value);
    location.hash = `#/tasks?${chosen}`;
  } }, filters.map((name) => el("label", {}, name.replace("_", " "), field(name))), el("button", { type: "submit" }, "Search"));
  const next = new URLSearchParams(query);
  next.set("page_token", page.next_page_token || "");
  return [el("h1", {}, "Tasks"), form, taskTable(page.tasks || []),
    page.next_page_token ? el("p", {}, el("a", { href: `#/tasks?${next}`, id: "next-page" }, "Next page →")) : null];
}

function preview(task) {
  if (task.image_url || task.image_base64) {
    return el("img", { alt: "the task's image", src: task.image_url || `data:image/png;base64,${task.image_base64}` });
  }
  if (task.video_url) return el("video", { controls: true, preload: "metadata", src: task.video_url });
  if (task.text_result) return el("pre", {}, task.text_result);
  return el("p", {}, "no output yet");
}

async function taskDetail(taskId) {
  const { task, events } = (await api("GET", `/api/v1/admin/task/${encodeURIComponent(taskId)}/timeline`)).data;
  const final = ["completed", "failed", "cancelled"].includes(task.status);
  const fields = ["task_id", "user_id", "type", "status", "provider", "model", "served_provider", "served_model",
    "attempts", "error_message", "cancel_reason", "created", "updated", "prompt"];
  const buttons = [
    final ? null : action("Cancel", () => api("POST", `/api/v1/ai/task/${taskId}/cancel`, {}), "danger"),
    task.status === "failed" ? action("Retry", async () => {
      const retried = await api("POST", `/api/v1/admin/task/${taskId}/retry`, {});
      location.hash = `#/task/${retried.data.task_id}`;
    }) : null,
    action("Delete", async () => {
      if (!confirm(`Delete task ${taskId} and its outputs?`)) return;
      await api("DELETE", `/api/v1/ai/task/${taskId}`);
      location.hash = "#/tasks";
    }, "danger"),
  ];
  const rows = events.map((event) => el("tr", {},
    el("td", {}, when(event.time)), el("td", { class: "event" }, event.event),
    el("td", { class: "wrap" }, Object.entries(event.detail || {}).map(([name, value]) => `${name}: ${value}`).join(", "))));
  return [el("h1", {}, `Task ${taskId}`), el("p", {}, buttons),
    el("dl", { class: "fields" }, fields.filter((name) => task[name] !== undefined && task[name] !== "").map((name) =>
      [el("dt", {}, name), el("dd", { class: name === "status" ? `status-${task.status}` : "" },
        name === "created" || name === "updated" ? when(task[name]) : task[name])])),
    el("h2", {}, "Output"), el("div", { class: "preview" }, preview(task)),
    el("h2", {}, "Timeline"), table(["Time", "Event", "Details"], rows)];
}

async function providersView() {
  const instances = (await api("GET", "/api/v1/admin/providers")).data;
  const rows = instances.map((instance) => el("tr", { "data-instance": instance.instance_id },
    el("td", {}, instance.provider), el("td", {}, instance.instance_id), el("td", {}, instance.address),
    el("td", { class: `health-${instance.health}` }, instance.health),
    el("td", { class: `circuit-${instance.circuit}` }, instance.circuit, " ", (instance.open_circuits || []).join("; ")),
    el("td", {}, instance.in_flight || 0), el("td", {}, instance.models || 0),
    el("td", { class: "draining" }, instance.draining ? "drained" : "taking work"),
    el("td", {}, instance.draining
      ? action("Undrain", () => api("POST", `/api/v1/admin/providers/${instance.instance_id}/undrain`, {}))
      : action("Drain", () => api("POST", `/api/v1/admin/providers/${instance.instance_id}/drain`, {}), "danger"))));
  return [el("h1", {}, "Providers"),
    table(["Provider", "Instance", "Address", "Health", "Circuit", "In flight", "Models", "State", ""], rows)];
}

async function keysView() {
  const keys = (await api("GET", "/api/v1/admin/keys")).data;
  const rows = keys.map((key) => el("tr", {},
    el("td", {}, key.key_id), el("td", {}, key.user_id), el("td", {}, key.role), el("td", {}, key.name || ""),
    el("td", {}, when(key.created)), el("td", {}, key.revoked ? when(key.revoked) : "active"),
    el("td", {}, key.rate_limit === undefined ? "default" : key.rate_limit),
    el("td", {}, key.revoked ? null : action("Revoke", () => api("POST", `/api/v1/admin/keys/${key.key_id}/revoke`, {}), "danger"))));
  const created = el("p", { id: "created-key", class: "notice", hidden: true });
  const form = isAdmin() ? el("form", { class: "filters", id: "create-key", onsubmit: async (event) => {
    event.preventDefault();
    const values = Object.fromEntries(new FormData(event.target));
    try {
      const answer = await api("POST", "/api/v1/admin/keys", values);
      await keysView();
      const shown = document.getElementById("created-key");
      shown.replaceChildren("New key (shown this once): ", el("code", {}, answer.data.api_key));
      shown.hidden = false;
    } catch (error) { flash(`Create key: ${error.message}`); }
  } }, el("label", {}, "user id", el("input", { name: "user_id", required: true })),
  el("label", {}, "role", el("select", { name: "role" }, ["user", "viewer", "admin"].map((role) => el("option", {}, role)))),
  el("label", {}, "name", el("input", { name: "name" })), el("button", { type: "submit" }, "Create key")) : null;
  return [el("h1", {}, "API keys"), form, created,
    table(["Key", "User", "Role", "Name", "Created", "Revoked", "Rate limit", ""], rows)];
}

async function auditView(query) {
  const offset = Number(query.get("offset") || 0);
  const entries = (await api("GET", `/api/v1/admin/audit?limit=${PAGE_SIZE}&offset=${offset}`)).data;
  const rows = entries.map((entry) => el("tr", {},
    el("td", {}, when(entry.time)), el("td", {}, entry.action), el("td", {}, entry.target),
    el("td", {}, entry.user_id), el("td", {}, entry.key_id), el("td", {}, entry.source)));
  return [el("h1", {}, "Audit log"), table(["Time", "Action", "Target", "User", "Key", "From"], rows),
    entries.length === PAGE_SIZE ? el("p", {}, el("a", { href: `#/audit?offset=${offset + PAGE_SIZE}` }, "Older →")) : null];
}

async function route() {
  const hash = location.hash;
  const [path, search] = (hash.slice(1) || "/overview").split("?");
  const query = new URLSearchParams(search || "");
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("current", path.startsWith(link.getAttribute("href").slice(1)));
  }
  let nodes;
  try {
    if (path.startsWith("/task/")) nodes = await taskDetail(decodeURIComponent(path.slice("/task/".length)));
    else if (path === "/tasks") nodes = await tasks(query);
    else if (path === "/providers") nodes = await providersView();
    else if (path === "/keys") nodes = await keysView();
    else if (path === "/audit") nodes = await auditView(query);
    else nodes = await overview();
  } catch (error) {
    if (error.status === 401) return signOut();
    nodes = [el("p", { class: "error", role: "alert" }, error.message)];
  }
  // A slow view answered after the operator went elsewhere is dropped, not drawn over the newer one.
  if (location.hash === hash) show(...nodes);
}

function signOut() {
  sessionStorage.removeItem(KEY_STORAGE);
  location.reload();
}

async function signIn(key) {
  sessionStorage.setItem(KEY_STORAGE, key);
  try {
    caller = (await api("GET", "/api/v1/admin/me")).data;
  } catch (error) {
    sessionStorage.removeItem(KEY_STORAGE);
    throw error.status === 403 ? new Error("This key is a user key: the console needs an admin or viewer key.") : error;
  }
  document.getElementById("nav").hidden = false;
  document.getElementById("logout").hidden = false;
  document.getElementById("caller").textContent = `${caller.role}${caller.user_id ? ` · ${caller.user_id}` : ""}`;
  window.addEventListener("hashchange", route);
  await route();
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("logout").onclick = signOut;
  document.getElementById("login").onsubmit = async (event) => {
    event.preventDefault();
    try {
      await signIn(document.getElementById("key").value.trim());
    } catch (error) {
      document.getElementById("login-error").textContent = error.message;
    }
  };
  const saved = sessionStorage.getItem(KEY_STORAGE);
  if (saved !== null) signIn(saved).catch(() => {});
});
