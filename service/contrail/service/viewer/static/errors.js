// A job's per-item errors (items that could not be rationalised), paged on the server.

import { api } from "./api.js";
import { TERMINAL, clear, h, num, table } from "./dom.js";
import { getJob, jobHeader } from "./job.js";
import { go, href } from "./nav.js";
import { pager } from "./records.js";

const PAGE = 50;

export async function errorsView(ctx) {
  const id = ctx.parts[1];
  const offset = Math.max(0, Number(ctx.params.get("offset")) || 0);
  const path = `/v1/viewer/jobs/${encodeURIComponent(id)}/errors`;
  const [job, page] = await Promise.all([getJob(id), api(path, { params: { offset, limit: PAGE } })]);
  const rows = page.data.map((e) =>
    h(
      "tr",
      {},
      h("th", { scope: "row" }, e.item_id ? h("a", { href: href(["jobs", id, "items", e.item_id]), class: "mono", text: e.item_id }) : "–"),
      h("td", { text: e.code }),
      h("td", { text: e.field ?? "–" }),
      h("td", { class: "num", text: e.line ?? "–" }),
      h("td", { text: e.message }),
    ),
  );
  clear(
    ctx.main,
    jobHeader(job, "errors", "Errors"),
    page.total
      ? [
          table(`Errors ${num(offset + 1)}–${num(offset + page.data.length)} of ${num(page.total)}`, ["Item", "Code", "Field", { text: "Line", class: "num" }, "Message"], rows),
          pager("Error pages", page.total, offset, PAGE, (o) => go(["jobs", id, "errors"], { offset: o })),
        ]
      : h("p", { class: "empty", text: TERMINAL.has(job.status) ? "This job has no errors." : "No errors so far." }),
  );
  return `Errors of ${id}`;
}
