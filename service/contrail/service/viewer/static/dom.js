// DOM helpers. Every text goes in through textContent (never innerHTML), so data cannot inject markup.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = String(v);
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function num(n) {
  return n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US");
}

export function pct(x) {
  return x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)}%`;
}

export function fixed(x, digits = 3) {
  return x === null || x === undefined ? "–" : Number(x).toFixed(digits);
}

export function when(ts) {
  if (!ts) return "–";
  return new Date(ts * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
}

export function age(ts) {
  if (!ts) return "–";
  const s = Math.max(0, Math.round(Date.now() / 1000 - ts));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

export function seconds(s) {
  if (s === null || s === undefined) return "–";
  return s < 120 ? `${Number(s).toFixed(1)} s` : `${(s / 60).toFixed(1)} min`;
}

export const TERMINAL = new Set(["completed", "failed", "cancelled"]);

export function statusText(status) {
  return h("span", { class: `st ${status}`, text: status.replace("_", " ") });
}

export function tagText(tag) {
  return h("span", { class: `tag ${tag}`, text: tag });
}

// A progress bar with its numbers: completed (green) and failed (red) out of total.
export function progress(counts, label) {
  const { total, completed, failed } = counts;
  const done = completed + failed;
  const width = (n) => `${total > 0 ? Math.min(100, (100 * n) / total) : 0}%`;
  const ok = h("span", { class: "done" });
  const bad = h("span", { class: "fail" });
  ok.style.width = width(completed); // CSSOM, allowed by the style-src policy
  bad.style.width = width(failed);
  const text = `${num(completed)} completed, ${num(failed)} failed of ${num(total)}`;
  return h(
    "div",
    { class: "barline" },
    h(
      "div",
      {
        class: "bar",
        role: "progressbar",
        "aria-label": label,
        "aria-valuemin": 0,
        "aria-valuemax": total,
        "aria-valuenow": Math.min(done, total),
        "aria-valuetext": text,
      },
      ok,
      bad,
    ),
    h("span", { class: "muted", text }),
  );
}

export function kv(pairs) {
  return h(
    "dl",
    { class: "kv" },
    pairs.flatMap(([k, v]) => [h("dt", { text: k }), h("dd", {}, v ?? "–")]),
  );
}

export function table(caption, headers, rows, opts = {}) {
  return h(
    "table",
    opts,
    h("caption", { text: caption }),
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        headers.map((c) =>
          typeof c === "string"
            ? h("th", { scope: "col", text: c })
            : h("th", { scope: "col", class: c.class, text: c.text }),
        ),
      ),
    ),
    h("tbody", {}, rows),
  );
}

// Form fields always carry a visible label tied to the control.
let uid = 0;
export function field(labelText, control) {
  const id = control.id || `f${++uid}`;
  control.id = id;
  return h("div", { class: "field" }, h("label", { for: id, text: labelText }), control);
}

export function select(name, options, value) {
  return h(
    "select",
    { name },
    options.map(([v, t]) => h("option", { value: v, selected: v === (value ?? "") }, t)),
  );
}
