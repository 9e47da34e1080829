// A job's rationales: a server-side paged, filterable table that fills in while the job runs.

import { api } from "./api.js";
import { TERMINAL, clear, field, h, num, select, table, tagText } from "./dom.js";
import { getJob, jobHeader } from "./job.js";
import { go, href } from "./nav.js";

const PAGE = 50;
const FILTERS = ["tag", "finish_reason", "answer", "q"];

export function signalFlags(s) {
  if (!s) return null;
  return h(
    "span",
    { class: "flags" },
    s.restates ? h("span", { class: "flag warn", title: "restates the question or answer (overlap ≥ 0.8)", text: "restates" }) : null,
    s.names_other_choice ? h("span", { class: "flag warn", title: "names an answer option other than its own", text: "names other choice" }) : null,
    h("span", { class: "flag", title: "share of content words already in the question, choices or answer", text: `overlap ${s.overlap.toFixed(2)}` }),
  );
}

export function filterForm(values, onApply, { extra = [] } = {}) {
  const tag = select("tag", [["", "any"], ["factual", "factual"], ["counterfactual", "counterfactual"]], values.tag);
  const finish = select("finish_reason", [["", "any"], ["stop", "stop"], ["length", "length"], ["error", "error"]], values.finish_reason);
  const answer = h("input", { name: "answer", type: "text", value: values.answer || "", size: 12 });
  const q = h("input", { name: "q", type: "search", value: values.q || "", size: 24, placeholder: "item id, question or rationale" });
  const form = h(
    "form",
    { class: "filters", role: "search", "aria-label": "Filter rationales" },
    extra,
    field("Tag", tag),
    field("Finish reason", finish),
    field("Answer", answer),
    field("Text", q),
    h("button", { type: "submit", class: "primary", text: "Apply" }),
    h("button", { type: "reset", text: "Clear" }),
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    onApply(Object.fromEntries(new FormData(form).entries()));
  });
  form.addEventListener("reset", (ev) => {
    ev.preventDefault();
    onApply(Object.fromEntries([...new FormData(form).keys()].map((k) => [k, FILTERS.includes(k) ? "" : form.elements[k].value])));
  });
  return form;
}

export function pager(label, total, offset, limit, goTo) {
  const last = Math.max(0, Math.ceil(total / limit) - 1);
  const page = Math.floor(offset / limit);
  const btn = (text, target, disabled) =>
    h("button", { type: "button", text, disabled, onclick: () => goTo(target * limit) });
  return h(
    "nav",
    { class: "pager", "aria-label": label },
    btn("First", 0, page === 0),
    btn("Previous", page - 1, page === 0),
    h("span", { text: `Page ${num(page + 1)} of ${num(last + 1)} · ${num(total)} rationales` }),
    btn("Next", page + 1, page >= last),
    btn("Last", last, page >= last),
  );
}

function rows(jobId, page) {
  return page.data.map(({ row, record: r, signals }) =>
    h(
      "tr",
      {},
      h("td", { class: "num", text: num(row + 1) }),
      h("th", { scope: "row" }, h("a", { href: href(["jobs", jobId, "items", r.item_id]), class: "mono", text: r.item_id })),
      h("td", {}, tagText(r.tag)),
      h("td", { text: r.answer }),
      h("td", { text: r.gold_answer }),
      h("td", { text: r.decoding.contrast_answer ?? "–" }),
      h("td", { class: "text" }, h("span", { class: "clip", text: r.rationale || "(empty)" })),
      h("td", { text: r.finish_reason }),
      h("td", { class: "num", text: num(r.completion_tokens) }),
      h("td", {}, signalFlags(signals)),
    ),
  );
}

export async function recordsView(ctx) {
  const id = ctx.parts[1];
  const params = Object.fromEntries(ctx.params.entries());
  const offset = Math.max(0, Number(params.offset) || 0);
  const query = { offset, limit: PAGE };
  for (const k of FILTERS) if (params[k]) query[k] = params[k];
  const path = `/v1/viewer/jobs/${encodeURIComponent(id)}/records`;
  let [job, page] = await Promise.all([getJob(id), api(path, { params: query })]);
  const navigate = (changes) => go(["jobs", id, "rationales"], { ...params, ...changes });
  const body = h("tbody");
  const tbl = table("", ["#", "Item", "Tag", "Answer", "Gold", "Contrast", "Rationale", "Finish", { text: "Tokens", class: "num" }, "Signals"], []);
  tbl.querySelector("tbody").replaceWith(body);
  const caption = tbl.querySelector("caption");
  const pagerBox = h("div");
  const header = h("div");
  let shown = null;
  // Refreshes leave alone whatever holds the keyboard focus (a link in the table, a page button).
  const render = () => {
    if (job.status !== shown) clear(header, jobHeader(job, "rationales", "Rationales"));
    shown = job.status;
    if (!body.contains(document.activeElement)) clear(body, rows(id, page));
    const live = TERMINAL.has(job.status) ? "" : " (the job is running: new rationales appear as shards finish)";
    caption.textContent = `Rationales ${num(page.total ? offset + 1 : 0)}–${num(offset + page.data.length)} of ${num(page.total)}${live}`;
    if (!pagerBox.contains(document.activeElement)) {
      clear(pagerBox, pager("Rationale pages", page.total, offset, PAGE, (o) => navigate({ offset: o })));
    }
  };
  render();
  clear(
    ctx.main,
    header,
    filterForm(params, (f) => navigate({ ...f, offset: 0 })),
    page.total || !TERMINAL.has(job.status) ? tbl : h("p", { class: "empty", text: "No rationale matches." }),
    pagerBox,
  );
  ctx.every(2000, async () => {
    if (TERMINAL.has(job.status) && page.source === "dataset") return;
    [job, page] = await Promise.all([getJob(id), api(path, { params: query })]);
    render();
  });
  return `Rationales of ${id}`;
}
