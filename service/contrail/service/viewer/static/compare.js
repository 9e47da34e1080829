// Two jobs over the same items, record by record (e.g. greedy vs contrastive, or two lambdas),
// with their settings and quality signals side by side: how a user picks a decoding setting.

import { api } from "./api.js";
import { clear, field, fixed, h, num, pct, table, tagText } from "./dom.js";
import { decodingText } from "./jobs.js";
import { go, href } from "./nav.js";
import { filterForm, pager, signalFlags } from "./records.js";

const PAGE = 20;

function jobSelect(name, jobs, value) {
  const options = [h("option", { value: "", text: "choose a job" })];
  for (const j of jobs) {
    const text = `${j.id} · ${j.task} · ${decodingText(j.decoding)} · ${num(j.request_counts.completed)} done`;
    options.push(h("option", { value: j.id, selected: j.id === value }, text));
  }
  if (value && !jobs.some((j) => j.id === value)) options.push(h("option", { value, selected: true, text: value }));
  return h("select", { name, required: true }, options);
}

function summary(a, b, ma, mb, cmp) {
  const q = (m) => m?.manifest?.quality;
  const sig = (m, f) => (q(m) ? f(q(m).signals) : "not finalized");
  const las = (m) => (q(m)?.las ? `${fixed(q(m).las.las.value)} [${fixed(q(m).las.las.low)}, ${fixed(q(m).las.las.high)}]` : "–");
  const line = (name, fa, fb) =>
    h("tr", {}, h("th", { scope: "row", text: name }), h("td", { text: fa }), h("td", { text: fb }));
  return table(
    `Settings and quality signals · ${num(cmp.shared_items)} items in both jobs, ${num(cmp.only_a_items)} only in A, ${num(cmp.only_b_items)} only in B`,
    ["Measure", "A", "B"],
    [
      line("job", a.id, b.id),
      line("model", a.model, b.model),
      line("decoding", decodingText(a.decoding), decodingText(b.decoding)),
      line("max new tokens", num(a.decoding.max_new_tokens), num(b.decoding.max_new_tokens)),
      line("status", a.status, b.status),
      line("rationales", num(cmp.a_records), num(cmp.b_records)),
      line("mean words", sig(ma, (s) => fixed(s.mean_words, 1)), sig(mb, (s) => fixed(s.mean_words, 1))),
      line("restates", sig(ma, (s) => pct(s.restate_rate)), sig(mb, (s) => pct(s.restate_rate))),
      line("names another choice", sig(ma, (s) => pct(s.names_other_choice_rate)), sig(mb, (s) => pct(s.names_other_choice_rate))),
      line("LAS (95% CI)", las(ma), las(mb)),
    ],
  );
}

function side(row) {
  if (!row) return h("td", { class: "empty", text: "no record" });
  const r = row.record;
  return h(
    "td",
    { class: "text" },
    h("span", { class: "muted", text: `for “${r.answer}” vs “${r.decoding.contrast_answer ?? "–"}” · ${r.finish_reason} · ${num(r.completion_tokens)} tokens` }),
    h("p", { class: "rationale", text: r.rationale || "(empty)" }),
    signalFlags(row.signals),
  );
}

export async function compareView(ctx) {
  const params = Object.fromEntries(ctx.params.entries());
  const offset = Math.max(0, Number(params.offset) || 0);
  const jobs = (await api("/v1/jobs", { params: { limit: 100 } })).data;
  const form = filterForm(params, (f) => go(["compare"], { ...f, offset: 0 }), {
    extra: [field("Job A", jobSelect("a", jobs, params.a)), field("Job B", jobSelect("b", jobs, params.b))],
  });
  const parts = [h("h1", { tabindex: "-1", text: "Compare two jobs" }), form];
  if (!params.a || !params.b) {
    parts.push(h("p", { class: "muted", text: "Choose two jobs over the same input, e.g. greedy and contrastive decoding, or two values of lambda." }));
    clear(ctx.main, parts);
    return "Compare";
  }
  const query = { a: params.a, b: params.b, offset, limit: PAGE };
  for (const k of ["tag", "finish_reason", "answer", "q"]) if (params[k]) query[k] = params[k];
  const enc = encodeURIComponent;
  const [cmp, a, b, ma, mb] = await Promise.all([
    api("/v1/viewer/compare", { params: query }),
    api(`/v1/jobs/${enc(params.a)}`),
    api(`/v1/jobs/${enc(params.b)}`),
    api(`/v1/viewer/jobs/${enc(params.a)}/manifest`),
    api(`/v1/viewer/jobs/${enc(params.b)}/manifest`),
  ]);
  const rows = cmp.data.map((p) => {
    const q = (p.a || p.b).record;
    return h(
      "tr",
      {},
      h(
        "th",
        { scope: "row" },
        h("a", { href: href(["jobs", params.a, "items", p.item_id]), class: "mono", text: p.item_id }),
        " ",
        tagText(p.tag),
        h("p", { class: "clip", text: q.question }),
        h("span", { class: "muted", text: `gold: ${q.gold_answer}` }),
      ),
      side(p.a),
      side(p.b),
    );
  });
  parts.push(
    summary(a, b, ma, mb, cmp),
    h("h2", { text: "Item by item" }),
    cmp.total
      ? [
          table(`Records ${num(offset + 1)}–${num(offset + cmp.data.length)} of ${num(cmp.total)} in A, each beside B's record of the same item and tag`, ["Item", `A · ${decodingText(a.decoding)}`, `B · ${decodingText(b.decoding)}`], rows, { class: "compare" }),
          pager("Comparison pages", cmp.total, offset, PAGE, (o) => go(["compare"], { ...params, offset: o })),
        ]
      : h("p", { class: "empty", text: "No record of A matches." }),
  );
  clear(ctx.main, parts);
  return "Compare";
}
