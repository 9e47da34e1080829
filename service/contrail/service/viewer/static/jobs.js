// The jobs list: newest first, 20 a page (the API's cursor pagination), live progress while any
// job on the page runs, cancel from the list.

import { api } from "./api.js";
import { TERMINAL, age, clear, h, num, progress, statusText, table } from "./dom.js";
import { href } from "./nav.js";

const PAGE = 20;
const cursors = []; // cursors of the pages before this one, for "Previous page"

export function decodingText(d) {
  if (d.mode === "greedy") return "greedy";
  return `contrastive, ${d.perturbation}, λ ${d.lambda}`;
}

function cells(job, onCancel) {
  const running = !TERMINAL.has(job.status);
  const cancel =
    running && job.status !== "cancelling"
      ? h("button", {
          type: "button",
          class: "danger",
          "aria-label": `Cancel job ${job.id}`,
          text: "Cancel",
          onclick: () => onCancel(job),
        })
      : h("span", { class: "muted", text: "–" });
  const tokens = job.usage.prompt_tokens + job.usage.completion_tokens;
  return {
    status: [statusText(job.status)],
    progress: [progress(job.request_counts, `Progress of job ${job.id}`)],
    tokens: [num(tokens)],
    age: [age(job.created_at)],
    actions: [h("div", { class: "actions" }, h("a", { href: href(["jobs", job.id, "rationales"]), text: "Rationales" }), cancel)],
  };
}

function row(job, onCancel) {
  const c = cells(job, onCancel);
  const td = (key, cls) => h("td", { class: cls, dataset: { cell: key } }, c[key]);
  return h(
    "tr",
    { dataset: { job: job.id } },
    h("th", { scope: "row" }, h("a", { href: href(["jobs", job.id]), class: "mono", text: job.id })),
    td("status"),
    h("td", { text: job.model }),
    h("td", { text: job.task }),
    h("td", { text: decodingText(job.decoding) }),
    td("progress"),
    td("tokens", "num"),
    td("age"),
    td("actions"),
  );
}

// Refresh the live cells of a row in place, so keyboard focus elsewhere on the page stays put.
function update(tr, job, onCancel) {
  const c = cells(job, onCancel);
  for (const [key, content] of Object.entries(c)) {
    const cell = tr.querySelector(`[data-cell="${key}"]`);
    const fresh = h("td", {}, content);
    if (cell.textContent === fresh.textContent && key !== "progress") continue;
    const hadFocus = cell.contains(document.activeElement);
    clear(cell, content);
    // A pressed Cancel button goes away with the cancel: keep the keyboard in this row.
    if (hadFocus) (cell.querySelector("a, button") || tr.querySelector("a"))?.focus();
  }
}

export async function jobsView(ctx) {
  const after = ctx.params.get("after") || "";
  if (!after) cursors.length = 0;
  const load = () => api("/v1/jobs", { params: { limit: PAGE, after } });
  let list = await load();
  const onCancel = async (job) => {
    if (!window.confirm(`Cancel job ${job.id}? Finished rationales stay downloadable.`)) return;
    try {
      const updated = await api(`/v1/jobs/${encodeURIComponent(job.id)}/cancel`, { method: "POST" });
      ctx.status(`Job ${job.id}: ${updated.status}`);
      refresh();
    } catch (err) {
      ctx.status(`Cancel failed: ${err.message}`);
    }
  };
  const body = h("tbody");
  const rows = new Map();
  const render = () => {
    for (const job of list.data) {
      const tr = rows.get(job.id);
      if (tr) update(tr, job, onCancel);
      else {
        const fresh = row(job, onCancel);
        rows.set(job.id, fresh);
        body.append(fresh);
      }
    }
  };
  const refresh = async () => {
    list = await load();
    render();
  };
  render();
  const tbl = table(
    `Jobs of this API key, newest first${after ? " (a later page)" : ""}`,
    ["Job", "Status", "Model", "Task", "Decoding", "Progress", { text: "Tokens", class: "num" }, "Age", "Actions"],
    [],
  );
  tbl.querySelector("tbody").replaceWith(body);
  const prev = cursors.length ? cursors[cursors.length - 1] : null;
  const pager = h(
    "nav",
    { class: "pager", "aria-label": "Job pages" },
    after ? h("a", { class: "button", href: href(["jobs"]), text: "First page" }) : null,
    after && prev !== null
      ? h("a", {
          class: "button",
          href: href(["jobs"], { after: prev }),
          text: "Previous page",
          onclick: () => cursors.pop(),
        })
      : null,
    list.has_more
      ? h("a", {
          class: "button",
          href: href(["jobs"], { after: list.last_id }),
          text: "Next page",
          onclick: () => cursors.push(after),
        })
      : null,
  );
  clear(
    ctx.main,
    h("h1", { tabindex: "-1", text: "Jobs" }),
    list.data.length
      ? tbl
      : h("p", { class: "empty", text: "No jobs yet: submit one with `contrail submit` or the SDK." }),
    pager,
  );
  ctx.every(1500, async () => {
    if (list.data.some((j) => !TERMINAL.has(j.status))) await refresh();
  });
  return "Jobs";
}
