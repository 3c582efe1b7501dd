// Jobs: the live list, one job with its progress and errors, and verification reports.
import { api, get, getAll, post } from "./api.js";
import { badge, can, el, errorBox, flash, fmt, plainError, progressBar, show,
  summaryBars } from "./ui.js";

const TERMINAL = ["succeeded", "failed", "cancelled"];
// Records typed in the forget form, kept in memory only for the page's life, by job id.
export const typed = { byJob: {}, verifyAfter: {} };
// Jobs the list shows (newest first); "Show more" follows the API's pages for more.
const PAGE = 100;
let shownJobs = PAGE;

export async function jobsPage(view, params) {
  const model = params.get("model");
  const filter = model ? `&model_id=${encodeURIComponent(model)}` : "";
  // one more than shown: tells whether there are more
  const limit = Math.min(shownJobs + 1, 1000);
  const jobs = await getAll(`/v1/jobs?order=desc&limit=${limit}${filter}`, shownJobs + 1);
  const more = jobs.length > shownJobs;
  jobs.splice(shownJobs);
  const rows = jobs.map((j) => el("tr", { "data-job": j.id },
    el("td", {}, el("a", { href: `#/jobs/${j.id}` }, j.id)),
    el("td", {}, j.kind), el("td", {}, el("a", { href: `#/models/${j.model_id}` }, j.model_id)),
    el("td", {}, j.version || "–"), el("td", {}, badge(j.status)),
    el("td", {}, TERMINAL.includes(j.status) && j.status !== "succeeded" ? "" : progressBar(j)),
    el("td", {}, j.error ? plainError(j.error) : ""),
    el("td", { class: "muted" }, (j.created_at || "").replace("T", " ").slice(0, 19))));
  show(view, 
    el("h1", {}, model ? `Jobs of ${model}` : "Jobs"),
    el("table", { id: "jobs-table" },
      el("thead", {}, el("tr", {}, ["Job", "Kind", "Model", "Version", "Status", "Progress",
                                    "Error", "Created"].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: 8 }, "No jobs.")))),
    more ? el("button", { id: "jobs-more", type: "button", onclick: () => {
      shownJobs += PAGE;
      jobsPage(view, params);
    } }, "Show more") : null);
  return jobs.some((j) => !TERMINAL.includes(j.status)) ? 1000 : 5000;
}

export async function jobPage(view, jobId) {
  const job = await get(`/v1/jobs/${jobId}`);
  const done = TERMINAL.includes(job.status);
  const parts = [
    el("h1", {}, `${job.kind} job `, el("span", { class: "muted" }, job.id), " ",
      el("span", { id: "job-status" }, badge(job.status))),
    el("div", { class: "card" },
      el("div", {}, el("span", { class: "muted" }, "Model "),
        el("a", { href: `#/models/${job.model_id}` }, job.model_id),
        el("span", { class: "muted" }, job.kind === "forget" ? " · base version " : " · version "),
        job.version || "–"),
      el("div", { class: "row" }, progressBar(job)),
      el("div", { class: "muted" }, `created ${job.created_at || "–"} · started ${job.started_at ||
        "–"} · finished ${job.finished_at || "–"}`),
      job.error ? errorBox(job.error) : null,
      !done && can("operator") && job.status === "queued"
        ? el("button", { class: "secondary", id: "cancel-job", onclick: () => cancel(job) }, "Cancel")
        : null),
  ];
  if (job.status === "succeeded" && job.kind === "forget") parts.push(...forgetResult(job));
  if (job.status === "succeeded" && job.kind === "verify") parts.push(...report(job));
  if (job.status === "succeeded" && job.kind === "export") {
    parts.push(el("p", {}, "Checkpoint written to ", el("code", {}, job.result.path)));
  }
  show(view, ...parts);
  return done ? null : 700;
}

async function cancel(job) {
  try { await api("DELETE", `/v1/jobs/${job.id}`); flash(`Job ${job.id} cancelled.`); }
  catch (err) { flash(err.message, true); }
  window.dispatchEvent(new HashChangeEvent("hashchange"));
}

function forgetResult(job) {
  const result = job.result || {};
  const out = [el("h2", {}, `New version ${result.version} (parent ${result.parent})`)];
  if (result.metrics) {
    out.push(el("p", { class: "muted" }, "Measured by the worker on the submitted records:"),
             summaryBars(result.metrics.before, result.metrics.after));
  }
  const records = typed.byJob[job.id];
  const holder = el("div", { id: "verify-holder", class: "card" });
  if (typed.verifyAfter[job.id]) {
    holder.append(el("a", { id: "open-report", href: `#/jobs/${typed.verifyAfter[job.id]}` },
      "Open the verification report"));
  } else if (records && can("operator")) {
    const start = async () => {
      try {
        const accepted = await post(`/v1/models/${job.model_id}/versions/${result.version}/verify`,
                                    { records });
        typed.verifyAfter[job.id] = accepted.job_id;
        typed.byJob[accepted.job_id] = records;
        window.dispatchEvent(new HashChangeEvent("hashchange"));
      } catch (err) { flash(err.message, true); }
    };
    holder.append(el("button", { id: "start-verify", onclick: start },
      "Verify this version against its parent"));
    if (typed.autoVerify && typed.autoVerify[job.id]) { delete typed.autoVerify[job.id]; start(); }
  } else {
    holder.append(el("span", { class: "muted" },
      "To verify, submit the records again from the command line or the API " +
      "(the dashboard never keeps request text)."));
  }
  out.push(holder);
  return out;
}

function report(job) {
  const r = job.result || {};
  const records = typed.byJob[job.id];
  const rows = (r.records || []).map((rec) => el("tr", { "data-record": rec.index },
    el("td", {}, `#${rec.index + 1}`),
    el("td", {}, records && records[rec.index] ? records[rec.index].prompt : el("span",
      { class: "muted" }, "(text not kept)")),
    el("td", {}, rec.forgotten ? badge("forgotten") : badge("kept", "failed")),
    el("td", {}, fmt(rec.before && rec.before.answer_probability, 3)),
    el("td", {}, fmt(rec.after && rec.after.answer_probability, 3)),
    el("td", {}, neighbours(rec))));
  const checks = (r.checks || []).map((c) => el("tr", {},
    el("td", {}, c.name), el("td", {}, fmt(c.value, 2)), el("td", {}, fmt(c.threshold, 2)),
    el("td", {}, c.passed === null ? "not measured" : (c.passed ? badge("passed") :
      badge("failed")))));
  return [
    el("h2", { id: "report" }, `Verification report: ${r.version} against ${r.parent || "itself"} `,
      r.passed ? badge("passed") : badge("not passed", "not-passed")),
    el("p", {}, `${r.forgotten} of ${r.total} facts forgotten.`),
    summaryBars(r.summary.parent, r.summary.version),
    el("h2", {}, "Checks"),
    el("table", { id: "checks" }, el("thead", {}, el("tr", {},
      ["Check", "Value", "Threshold", "Result"].map((h) => el("th", {}, h)))), el("tbody", {}, checks)),
    el("h2", {}, "Per fact"),
    el("table", { id: "records-report" }, el("thead", {}, el("tr", {},
      ["Record", "Prompt (as you typed it)", "Outcome", "p(answer) before", "p(answer) after",
       "Neighbours kept"].map((h) => el("th", {}, h)))), el("tbody", {}, rows)),
  ];
}

function neighbours(rec) {
  const list = (rec.after || {}).neighbors_reproduced || [];
  return list.length ? `${list.filter(Boolean).length} of ${list.length}` : "–";
}
