// One job: progress, settings, timings, usage, the manifest's quality signals (and LAS where
// computed), and downloads. Other job pages share its header and tabs.

import { api, download } from "./api.js";
import { TERMINAL, clear, fixed, h, kv, num, pct, progress, seconds, statusText, table, when } from "./dom.js";
import { decodingText } from "./jobs.js";
import { href } from "./nav.js";

export async function getJob(id) {
  return api(`/v1/jobs/${encodeURIComponent(id)}`);
}

export function jobHeader(job, tab, title) {
  const tabs = [
    ["overview", "Overview", href(["jobs", job.id])],
    ["rationales", "Rationales", href(["jobs", job.id, "rationales"])],
    ["errors", "Errors", href(["jobs", job.id, "errors"])],
    ["compare", "Compare with…", href(["compare"], { a: job.id })],
  ];
  return [
    h("h1", { tabindex: "-1" }, title, " ", h("span", { class: "muted mono", text: job.id }), " ", statusText(job.status)),
    h(
      "nav",
      { "aria-label": "Job pages" },
      h(
        "ul",
        { class: "tabs" },
        tabs.map(([key, text, link]) =>
          h("li", {}, h("a", { href: link, "aria-current": key === tab ? "page" : null, text })),
        ),
      ),
    ),
  ];
}

function settingsCard(job) {
  const d = job.decoding;
  return h(
    "section",
    { class: "card", "aria-labelledby": "settings-h" },
    h("h2", { id: "settings-h", text: "Settings" }),
    kv([
      ["model", job.model],
      ["task", job.task],
      ["decoding", decodingText(d)],
      ["mode", d.mode],
      ["perturbation", d.perturbation],
      ["lambda", String(d.lambda)],
      ["alpha", String(d.alpha)],
      ["temperature", String(d.temperature)],
      ["max new tokens", num(d.max_new_tokens)],
      ["counterfactual fraction", String(d.counterfactual_fraction)],
      ["demonstrations", num(d.num_demonstrations)],
      ["seed", String(d.seed)],
      ["stop", d.stop?.length ? d.stop.map((s) => JSON.stringify(s)).join(" ") : "–"],
      ["input file", job.input_file_id || "inline items"],
    ]),
  );
}

function statusCard(job, manifest) {
  const u = job.usage;
  return h(
    "section",
    { class: "card", "aria-labelledby": "progress-h" },
    h("h2", { id: "progress-h", text: "Progress" }),
    progress(job.request_counts, `Progress of job ${job.id}`),
    kv([
      ["status", statusText(job.status)],
      ["total", num(job.request_counts.total)],
      ["completed", num(job.request_counts.completed)],
      ["failed", num(job.request_counts.failed)],
      ["prompt tokens", num(u.prompt_tokens)],
      ["completion tokens", num(u.completion_tokens)],
      ["error", job.error || "–"],
    ]),
    h("h3", { text: "Timings" }),
    kv([
      ["created", when(job.created_at)],
      ["in progress", when(job.in_progress_at)],
      ["finalizing", when(job.finalizing_at)],
      ["completed", when(job.completed_at)],
      ["cancelled", when(job.cancelled_at)],
      ["failed", when(job.failed_at)],
      ["wall time", seconds(manifest?.wall_seconds)],
      ["engine time", seconds(manifest?.engine_seconds)],
    ]),
  );
}

function signalsTable(quality) {
  const cols = [["all", quality.signals], ...Object.entries(quality.signals_by_tag || {})];
  const line = (name, f) => h("tr", {}, h("th", { scope: "row", text: name }), cols.map(([, s]) => h("td", { class: "num", text: f(s) })));
  return table(
    "Cheap signals (docs/QUALITY.md): lower restate and other-choice rates are better",
    ["signal", ...cols.map(([k]) => ({ text: k, class: "num" }))],
    [
      line("records", (s) => num(s.records)),
      line("mean words", (s) => fixed(s.mean_words, 1)),
      line("median words", (s) => fixed(s.median_words, 1)),
      line("mean tokens", (s) => fixed(s.mean_tokens, 1)),
      line("mean overlap", (s) => fixed(s.mean_overlap, 3)),
      line("restates", (s) => pct(s.restate_rate)),
      line("names another choice", (s) => pct(s.names_other_choice_rate)),
    ],
  );
}

function estimate(e) {
  return e ? `${fixed(e.value)} [${fixed(e.low)}, ${fixed(e.high)}]` : "–";
}

export function lasList(las) {
  if (!las) return h("p", { class: "muted", text: "No LAS in this job's manifest (`contrail eval <job id>` computes it on your machine)." });
  return kv([
    ["LAS (95% CI)", estimate(las.las)],
    ["leak rate", estimate(las.leak_rate)],
    ["accuracy Q+R", estimate(las.acc_qr)],
    ["accuracy Q", estimate(las.acc_q)],
    ["simulator", las.simulator],
    ["scored records", num(las.scored)],
  ]);
}

function qualityCard(manifest) {
  const q = manifest?.quality;
  return h(
    "section",
    { class: "card wide", "aria-labelledby": "quality-h" },
    h("h2", { id: "quality-h", text: "Quality" }),
    q
      ? [
          kv([
            ["records", num(q.records)],
            ["error records", num(q.error_records)],
            ...Object.entries(q.counts_by_tag || {}).map(([t, n]) => [t, num(n)]),
          ]),
          signalsTable(q),
          h("h3", { text: "LAS" }),
          lasList(q.las),
        ]
      : h("p", { class: "muted", text: "The quality summary is written when the job is finalized." }),
  );
}

function downloadsCard(job, manifest) {
  const id = encodeURIComponent(job.id);
  const button = (text, path, file, enabled = true) =>
    h("button", {
      type: "button",
      disabled: !enabled,
      text,
      onclick: async (ev) => {
        const btn = ev.currentTarget;
        btn.disabled = true;
        try {
          await download(path, file);
        } catch (err) {
          document.getElementById("status").textContent = `Download failed: ${err.message}`;
        } finally {
          btn.disabled = false;
        }
      },
    });
  return h(
    "section",
    { class: "card", "aria-labelledby": "downloads-h" },
    h("h2", { id: "downloads-h", text: "Downloads" }),
    h(
      "div",
      { class: "actions" },
      button("Rationales (JSONL)", `/v1/jobs/${id}/results`, `${job.id}.jsonl`),
      button("Rationales (Parquet)", `/v1/viewer/jobs/${id}/dataset.parquet`, `${job.id}.parquet`, Boolean(manifest)),
      button("Errors (JSONL)", `/v1/jobs/${id}/errors`, `${job.id}.errors.jsonl`),
    ),
    h("p", {
      class: "muted",
      text: manifest ? "The finished dataset." : "JSONL holds what is finished so far; Parquet comes with finalization.",
    }),
  );
}

export async function jobView(ctx) {
  const id = ctx.parts[1];
  const [job, mv] = await Promise.all([getJob(id), api(`/v1/viewer/jobs/${encodeURIComponent(id)}/manifest`)]);
  let current = job;
  let manifest = mv.manifest;
  const body = h("div", { class: "cards" });
  const render = () => clear(body, statusCard(current, manifest), settingsCard(current), downloadsCard(current, manifest), qualityCard(manifest));
  render();
  const header = h("div", {}, jobHeader(current, "overview", "Job"));
  clear(ctx.main, header, body);
  ctx.every(1500, async () => {
    if (TERMINAL.has(current.status) && manifest) return;
    const before = current.status;
    current = await getJob(id);
    if (TERMINAL.has(current.status)) manifest = (await api(`/v1/viewer/jobs/${encodeURIComponent(id)}/manifest`)).manifest;
    if (current.status !== before) clear(header, jobHeader(current, "overview", "Job"));
    if (body.contains(document.activeElement)) return; // do not pull the page from under a keyboard user
    render();
  });
  return `Job ${id}`;
}
