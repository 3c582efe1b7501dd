// Small DOM helpers: elements, badges, progress bars, metric bars, confirmation, errors.
const ROLES = ["viewer", "operator", "admin"];
export const session = { role: null, keyId: null };

export function can(role) {
  return session.role !== null && ROLES.indexOf(session.role) >= ROLES.indexOf(role);
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "class") node.className = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function badge(text, kind) { return el("span", { class: `badge ${kind || text}` }, text); }

export function progressBar(job) {
  const progress = job.progress || {};
  const fraction = job.status === "succeeded" ? 1 : Number(progress.fraction || 0);
  let phase = job.status === "queued" ? "waiting for a worker" : (progress.phase || job.status);
  if (job.status === "failed" || job.status === "cancelled") {
    phase = progress.phase ? `${job.status} during ${progress.phase}` : job.status;
  }
  const pct = Math.round(fraction * 100);
  return el("div", { class: "progress", role: "progressbar", "aria-valuenow": pct,
                     "data-phase": phase, title: phase },
    el("span", { style: `width:${pct}%` }), el("em", {}, `${pct}% · ${phase}`));
}

const PLAIN_ERRORS = {
  model_not_ready: "The model is still being prepared. Try again once it is ready.",
  base_model_changed: "The base model's files changed after it was registered; register it again.",
  patch_corrupt: "A stored weight patch does not match its checksum; the version cannot be loaded.",
  invalid_thresholds: "The verification thresholds are invalid.",
  invalid_request: "The request was not valid for this model.",
  quality_gate_failed: "The edit would have harmed the model, so no version was published; the active version is unchanged.",
  layer_out_of_range: "A layer the request names does not exist in this model.",
  request_purged: "The request's text was deleted (retention) before a worker ran it. Submit it again.",
  worker_stopped: "The worker was stopped while the job ran. Submit it again.",
  worker_lost: "The worker running this job disappeared. Submit it again.",
  queue_unavailable: "The job queue is not reachable. Try again in a moment.",
  no_worker: "No worker is running, so nothing can answer.",
  generate_timeout: "No worker answered in time.",
  version_sealed: "This version still holds records a later forget deleted, so it is sealed. An admin may use it anyway with a stated reason (audited).",
  version_deleted: "This version's files were deleted; use another version.",
  unauthorized: "Your API key is missing or not valid.",
  forbidden: "Your API key's role does not allow this.",
  unreachable: "The service cannot be reached.",
};

export function plainError(error) {
  if (!error) return "";
  const plain = PLAIN_ERRORS[error.code];
  return plain ? `${plain} (${error.message})` : error.message || error.code;
}

export function errorBox(error) {
  return el("div", { class: "error-box", role: "alert" }, plainError(error));
}

// A message shown until the user moves on to another page (polling keeps it).
export function flash(message, isError = false) {
  const box = document.getElementById("flash");
  box.textContent = message || "";
  box.className = isError ? "error" : "";
  delete box.dataset.shownAt;
}

export function expireFlash(path) {
  const box = document.getElementById("flash");
  if (!box.textContent) return;
  if (box.dataset.shownAt === undefined) box.dataset.shownAt = path;
  else if (box.dataset.shownAt !== path) flash("");
}

export function confirmDialog(text) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
  });
}

export function fmt(value, digits = 1) {
  if (value === null || value === undefined) return "–";
  return typeof value === "number" ? value.toFixed(digits) : String(value);
}

// Before/after bars for one metric; `scale` is the value of a full bar.
export function metricBars(name, before, after, unit, scale) {
  const missing = (v) => v === null || v === undefined;
  const width = (v) => (missing(v) || !scale) ? 0 : Math.max(0.3, Math.min(100, (100 * v) / scale));
  const label = (v) => (missing(v) ? "not measured" : `${fmt(v)}${unit}`);
  return [
    el("div", { class: "metric-name" }, name),
    el("div", { class: "metric", "data-metric": name },
      el("div", { class: "metric-row" }, el("div", { class: "track" },
        el("div", { class: "bar before", style: `width:${width(before)}%` })),
        el("span", { class: "muted" }, `before: ${label(before)}`)),
      el("div", { class: "metric-row" }, el("div", { class: "track" },
        el("div", { class: "bar after", style: `width:${width(after)}%` })),
        el("span", {}, `after: ${label(after)}`))),
  ];
}

export function summaryBars(before, after) {
  const ppl = Math.max(before.perplexity || 0, after.perplexity || 0) * 1.1;
  return el("div", { class: "card" },
    el("div", { class: "legend muted" }, "Bars:",
      el("span", { class: "bar before" }), "before (parent)",
      el("span", { class: "bar after" }), "after (this version)"),
    el("p", { class: "muted" }, "Efficacy and generalization: % of forgotten facts still " +
      "reproduced (lower is better). Specificity: % of neighbouring facts kept (higher is " +
      "better). Perplexity on reference text (lower is better)."),
    el("div", { class: "bars" },
      metricBars("efficacy", before.efficacy, after.efficacy, "%", 100),
      metricBars("generalization", before.generalization, after.generalization, "%", 100),
      metricBars("specificity", before.specificity, after.specificity, "%", 100),
      metricBars("perplexity", before.perplexity, after.perplexity, "", ppl)));
}

// Replace a view's content; null/false children (conditional parts) are left out.
export function show(view, ...children) {
  view.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}
