// Models list and one model's version lineage (a tree from v0) with activate/rollback.
import { get, getAll, post } from "./api.js";
import { badge, can, confirmDialog, el, errorBox, flash, fmt, show } from "./ui.js";

export async function modelsPage(view) {
  const models = await getAll("/v1/models");
  const rows = models.map((m) => el("tr", { "data-model": m.id },
    el("td", {}, el("a", { href: `#/models/${m.id}` }, m.name)),
    el("td", { class: "muted" }, m.id),
    el("td", {}, badge(m.status)),
    el("td", {}, m.active_version),
    el("td", {}, m.architecture || "–"),
    el("td", {}, m.num_layers ?? "–"),
    el("td", {}, (m.edit_layers || []).join(", ") || "–"),
    el("td", {}, m.status === "failed" ? errorBox(m.error || {}) : "")));
  show(view, 
    el("h1", {}, "Models"),
    el("table", { id: "models-table" },
      el("thead", {}, el("tr", {}, ["Name", "Id", "Status", "Active version", "Architecture",
                                    "Layers", "Edit layers", ""].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: 8 }, "No models yet.")))),
    can("admin") ? registerForm() : null);
  return models.some((m) => m.status === "preparing") ? 2000 : null;
}

function registerForm() {
  const name = el("input", { id: "new-model-name", placeholder: "name", required: true });
  const source = el("input", { id: "new-model-source", size: 50, required: true,
                               placeholder: "local HF directory, .gguf file or builtin:…" });
  const form = el("form", { class: "card row", id: "register-form" },
    el("strong", {}, "Register a model"), name, source, el("button", { type: "submit" }, "Register"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const model = await post("/v1/models", { name: name.value, source: source.value });
      flash(`Model ${model.id} registered; it is being prepared.`);
      window.dispatchEvent(new HashChangeEvent("hashchange"));
    } catch (err) { flash(err.message, true); }
  });
  return form;
}

export async function modelPage(view, modelId) {
  const [model, versions, jobs] = await Promise.all([
    get(`/v1/models/${modelId}`), getAll(`/v1/models/${modelId}/versions`),
    getAll(`/v1/jobs?model_id=${encodeURIComponent(modelId)}&kind=verify&status=succeeded`)]);
  const reports = {};
  for (const job of jobs) {
    if (job.kind === "verify" && job.status === "succeeded") reports[job.version] = job.id;
  }
  const children = {};
  for (const v of versions) (children[v.parent || ""] ||= []).push(v);
  const tree = (parent) => {
    const kids = children[parent] || [];
    if (!kids.length) return null;
    return el("ul", { class: parent ? "tree" : "tree root" },
      kids.map((v) => el("li", {}, versionNode(model, v, reports[v.id]), tree(v.id))));
  };
  show(view, 
    el("h1", {}, `${model.name} `, badge(model.status)),
    el("div", { class: "card" },
      el("div", {}, el("span", { class: "muted" }, "Id "), model.id),
      el("div", {}, el("span", { class: "muted" }, "Architecture "),
        `${model.architecture || "–"}, ${model.num_layers ?? "?"} layers, edits layers `,
        (model.edit_layers || []).join(", ") || "–"),
      el("div", {}, el("span", { class: "muted" }, "Active version "),
        el("strong", { id: "active-version" }, model.active_version)),
      el("div", {}, el("span", { class: "muted" }, "Source "), model.source),
      model.status === "failed" ? errorBox(model.error || {}) : null),
    el("h2", {}, "Version lineage"),
    el("div", { id: "lineage" }, tree("")),
    el("p", {}, el("a", { href: `#/jobs?model=${model.id}` }, "Jobs of this model")));
  return model.status === "preparing" ? 2000 : null;
}

function versionNode(model, v, reportJob) {
  const active = v.id === model.active_version;
  const count = (v.records || []).length;
  const button = el("button", {
    class: active ? "secondary" : "", "data-activate": v.id,
    disabled: active || v.deleted || !can("admin"),
    title: can("admin") ? (v.sealed ? "Sealed: activating it asks for a reason (audited)" : "")
                        : "Only an admin key can activate versions",
    onclick: () => activate(model, v),
  }, active ? "active" : "Activate");
  const sealed = v.sealed ? el("span", {
    class: "badge sealed", "data-sealed": v.id,
    title: `Still holds records deleted by ${(v.sealed_by || []).join(", ")}`,
  }, "sealed") : null;
  return el("div", { class: `node${active ? " is-active" : ""}`, "data-version": v.id },
    el("strong", {}, v.id), active ? badge("active") : null, sealed,
    v.deleted ? badge("deleted") : null,
    el("span", { class: "muted" }, v.method || "base model"),
    el("span", {}, `${count} record${count === 1 ? "" : "s"}`),
    v.metrics && v.metrics.after ? el("span", { class: "muted" },
      `efficacy ${fmt(v.metrics.before.efficacy, 0)}% → ${fmt(v.metrics.after.efficacy, 0)}%`) : null,
    el("span", { class: "muted" }, (v.created_at || "").replace("T", " ").slice(0, 19)),
    v.job_id ? el("a", { href: `#/jobs/${v.job_id}` }, "job") : null,
    reportJob ? el("a", { href: `#/jobs/${reportJob}` }, "report") : null,
    button);
}

async function activate(model, v) {
  const older = Number(v.id.slice(1)) < Number(model.active_version.slice(1));
  const what = older ? `Roll back ${model.name} from ${model.active_version} to ${v.id}?`
                     : `Make ${v.id} the active version of ${model.name}?`;
  let query = "";
  if (v.sealed) {  // an override of the seal: the reason goes to the audit trail
    const reason = window.prompt(`${v.id} is sealed: it still holds records that forget ` +
      `request(s) ${(v.sealed_by || []).join(", ")} deleted. State the reason for using it ` +
      "anyway (legal hold, incident rollback); it is audited and named in receipts.");
    if (reason === null || !reason.trim()) return;
    query = `?override_seal_reason=${encodeURIComponent(reason.trim())}`;
  }
  if (!(await confirmDialog(`${what} New requests will use ${v.id}.`))) return;
  try {
    await post(`/v1/models/${model.id}/versions/${v.id}/activate${query}`);
    flash(`${v.id} is now the active version of ${model.name}.`);
    window.dispatchEvent(new HashChangeEvent("hashchange"));
  } catch (err) { flash(err.message, true); }
}
