// The viewer's shell: sign-in, hash routing (#/jobs, #/jobs/<id>, .../rationales, .../items/<item>,
// .../errors, #/compare), polling of live views, and the page state tests and benchmarks wait on
// (<body data-state="loading|ready|error">).

import { api, clearKey, getKey, setKey } from "./api.js";
import { clear, field, h } from "./dom.js";
import { compareView } from "./compare.js";
import { errorsView } from "./errors.js";
import { itemView } from "./item.js";
import { jobView } from "./job.js";
import { jobsView } from "./jobs.js";
import { recordsView } from "./records.js";

const main = document.getElementById("main");
const statusEl = document.getElementById("status");
const signOut = document.getElementById("sign-out");
let active = null; // the view on screen: its timers stop when the route changes
let navigated = false;

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/jobs";
  const [path, query = ""] = raw.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { parts, params: new URLSearchParams(query) };
}

class Ctx {
  constructor(route) {
    this.parts = route.parts;
    this.params = route.params;
    this.main = main;
    this.timers = new Set();
    this.alive = true;
  }
  // Re-run `fn` every `ms` milliseconds while this view is on screen (never two at once).
  every(ms, fn) {
    const tick = async () => {
      if (!this.alive) return;
      try {
        await fn();
      } catch (err) {
        this.status(`refresh failed: ${err.message}`);
      }
      if (this.alive) this.timers.add(setTimeout(tick, ms));
    };
    this.timers.add(setTimeout(tick, ms));
  }
  stop() {
    this.alive = false;
    for (const t of this.timers) clearTimeout(t);
  }
  status(text) {
    statusEl.textContent = text;
  }
  ready() {
    document.body.dataset.state = "ready";
  }
}

function setTitle(title) {
  document.title = `${title} · contrail viewer`;
}

function markNav(parts) {
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === (parts[0] || "jobs")) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

function loginView(message) {
  setTitle("Sign in");
  signOut.hidden = true;
  const input = h("input", {
    type: "password",
    name: "key",
    autocomplete: "current-password",
    required: true,
    spellcheck: "false",
  });
  const note = h("p", { class: "error", role: "alert", text: message || "" });
  const form = h(
    "form",
    { class: "login", "aria-labelledby": "login-title" },
    h("h1", { id: "login-title", tabindex: "-1", text: "Sign in" }),
    h("p", {
      text: "Paste an API key of this deployment. It stays in this browser tab only (cleared when the tab closes) and is sent to this server alone.",
    }),
    field("API key", input),
    h("button", { type: "submit", class: "primary", text: "Sign in" }),
    note,
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const key = input.value.trim();
    try {
      await api("/v1/jobs", { params: { limit: 1 }, key });
    } catch (err) {
      note.textContent = err.status === 401 ? "This key was refused." : `Cannot sign in: ${err.message}`;
      input.focus();
      return;
    }
    setKey(key);
    route();
  });
  clear(main, form);
  document.body.dataset.state = "ready";
  input.focus();
}

const ROUTES = [
  [(p) => p.length === 1 && p[0] === "jobs", jobsView],
  [(p) => p.length === 2 && p[0] === "jobs", jobView],
  [(p) => p.length === 3 && p[0] === "jobs" && p[2] === "rationales", recordsView],
  [(p) => p.length === 3 && p[0] === "jobs" && p[2] === "errors", errorsView],
  [(p) => p.length === 4 && p[0] === "jobs" && p[2] === "items", itemView],
  [(p) => p.length === 1 && p[0] === "compare", compareView],
];

async function route() {
  if (location.hash && !location.hash.startsWith("#/")) return; // in-page anchors (skip link)
  active?.stop();
  document.body.dataset.state = "loading";
  statusEl.textContent = "";
  const r = parseHash();
  markNav(r.parts);
  if (!getKey()) {
    active = null;
    loginView();
    return;
  }
  signOut.hidden = false;
  const ctx = new Ctx(r);
  active = ctx;
  const view = ROUTES.find(([match]) => match(r.parts))?.[1];
  try {
    if (!view) throw new Error(`no page ${location.hash}`);
    const title = await view(ctx);
    if (!ctx.alive) return;
    setTitle(title || "contrail");
    ctx.ready();
  } catch (err) {
    if (!ctx.alive || err.status === 401) return;
    setTitle("Error");
    clear(
      main,
      h("h1", { tabindex: "-1", text: err.status === 404 ? "Not found" : "Something went wrong" }),
      h("p", { class: "error", role: "alert", text: err.message }),
      h("p", {}, h("a", { href: "#/jobs", text: "Back to the jobs" })),
    );
    document.body.dataset.state = "error";
  }
  // After an in-app navigation, move focus to the new page's heading (as a page load would
  // reset it); on the first load leave it at the document's start, where the skip link is.
  if (navigated) main.querySelector("h1")?.focus();
  navigated = true;
}

signOut.addEventListener("click", () => {
  clearKey();
  active?.stop();
  loginView("Signed out.");
});
window.addEventListener("contrail:signed-out", (ev) => {
  active?.stop();
  loginView(`Signed out: ${ev.detail}`);
});
window.addEventListener("hashchange", route);
route();
