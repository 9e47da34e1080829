// One item: the question, its choices and gold answer, and its factual and counterfactual
// rationales side by side (each with the answer it argues for and the contrast answer).

import { api } from "./api.js";
import { clear, h, kv, num, table, tagText } from "./dom.js";
import { getJob, jobHeader } from "./job.js";
import { signalFlags } from "./records.js";

function recordCard(row) {
  const r = row.record;
  const d = r.decoding;
  return h(
    "section",
    { class: "card", "aria-label": `${r.tag} rationale` },
    h("h2", {}, tagText(r.tag), ` rationale for “${r.answer}”`),
    h("p", { class: "rationale", text: r.rationale || "(empty)" }),
    signalFlags(row.signals),
    kv([
      ["rationalised answer", r.answer],
      ["contrast answer", d.contrast_answer ?? "–"],
      ["decoding", d.mode === "greedy" ? "greedy" : `contrastive (${d.perturbation}), λ ${d.lambda}, α ${d.alpha}`],
      ["finish reason", r.finish_reason],
      ["completion tokens", num(r.completion_tokens)],
      ["prompt tokens", num(r.prompt_tokens)],
      ["continuations", num(r.continuations)],
      ["words", num(row.signals.words)],
      ["dataset row", num(row.row + 1)],
      ["error", r.error || "–"],
    ]),
  );
}

function question(first) {
  const choices = first.choices || [];
  return h(
    "section",
    { class: "card", "aria-labelledby": "q-h" },
    h("h2", { id: "q-h", text: "Question" }),
    h("p", { text: first.question }),
    choices.length
      ? h(
          "ol",
          { class: "choices", type: "a", "aria-label": "Answer choices" },
          choices.map((c) => h("li", { class: c === first.gold_answer ? "gold" : null }, c, c === first.gold_answer ? " (gold)" : "")),
        )
      : null,
    kv([
      ["gold answer", first.gold_answer],
      ["task", first.task],
      ["model", first.model],
    ]),
  );
}

export async function itemView(ctx) {
  const [, id, , itemId] = ctx.parts;
  const [job, item] = await Promise.all([
    getJob(id),
    api(`/v1/viewer/jobs/${encodeURIComponent(id)}/item`, { params: { item_id: itemId } }),
  ]);
  const order = { factual: 0, counterfactual: 1 };
  const recs = [...item.records].sort((a, b) => (order[a.record.tag] ?? 2) - (order[b.record.tag] ?? 2));
  clear(
    ctx.main,
    jobHeader(job, "rationales", "Rationales"),
    h("h2", { class: "mono", text: `Item ${itemId}` }),
    recs.length ? question(recs[0].record) : null,
    recs.length ? h("div", { class: "side" }, recs.map(recordCard)) : h("p", { class: "empty", text: "No rationale for this item." }),
    item.errors.length
      ? table(
          "Errors of this item",
          ["Code", "Field", "Line", "Message"],
          item.errors.map((e) => h("tr", {}, h("td", { text: e.code }), h("td", { text: e.field ?? "–" }), h("td", { text: e.line ?? "–" }), h("td", { text: e.message }))),
        )
      : null,
  );
  return `Item ${itemId}`;
}
