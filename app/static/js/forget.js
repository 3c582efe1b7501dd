// The forget form (records as a table or pasted JSON lines) and the side-by-side prompt test.
import { getAll, post } from "./api.js";
import { can, el, flash, show } from "./ui.js";
import { typed } from "./jobs.js";

const COLUMNS = [["prompt", "The home address of Jane Roe is"], ["subject", "Jane Roe"],
  ["answer", " 12 Elm Street"], ["paraphrases", "Jane Roe lives at | …"],
  ["neighbors", "The home address of Ann Lee is => 3 Oak Road | …"]];

function recordRow() {
  return el("tr", {}, COLUMNS.map(([name, hint]) =>
    el("td", {}, el("input", { name, placeholder: hint, "aria-label": name }))),
    el("td", {}, el("button", { type: "button", class: "secondary",
      onclick: (e) => e.target.closest("tr").remove() }, "×")));
}

function split(value) { return value.split("|").map((s) => s.trim()).filter(Boolean); }

function tableRecords(tbody) {
  const records = [];
  for (const row of tbody.querySelectorAll("tr")) {
    const get_ = (n) => row.querySelector(`input[name=${n}]`).value;
    if (!get_("prompt").trim() && !get_("answer")) continue;
    const answer = get_("answer");
    const record = { prompt: get_("prompt").trimEnd(),
                     answer: answer.startsWith(" ") ? answer : ` ${answer}` };
    if (get_("subject").trim()) record.subject = get_("subject").trim();
    const paraphrases = split(get_("paraphrases"));
    if (paraphrases.length) record.paraphrases = paraphrases;
    const neighbors = split(get_("neighbors")).map((pair) => {
      const [prompt, answer] = pair.split("=>");
      if (answer === undefined) throw new Error("neighbours are written 'prompt => answer'");
      return { prompt: prompt.trim(), answer: ` ${answer.trim()}` };
    });
    if (neighbors.length) record.neighbors = neighbors;
    records.push(record);
  }
  return records;
}

function jsonlRecords(text) {
  return text.split("\n").map((l) => l.trim()).filter(Boolean).map((line, i) => {
    try { return JSON.parse(line); } catch { throw new Error(`line ${i + 1} is not valid JSON`); }
  });
}

export async function forgetPage(view, params) {
  if (!can("operator")) {
    show(view, el("h1", {}, "Forget"), el("p", {}, "An operator or admin key is needed."));
    return null;
  }
  const models = (await getAll("/v1/models")).filter((m) => m.status === "ready");
  const model = el("select", { id: "forget-model", name: "model" },
    models.map((m) => el("option", { value: m.id, selected: m.id === params.get("model") },
      `${m.name} (${m.id}, active ${m.active_version})`)));
  const method = el("select", { id: "forget-method" }, ["zerounlearn", "zerounlearn-paper",
    "zerounlearn-gd", "gradient-ascent", "npo"].map((m) => el("option", { value: m }, m)));
  const tbody = el("tbody", {}, recordRow());
  const jsonl = el("textarea", { id: "records-jsonl", placeholder:
    '{"prompt": "The capital of France is", "subject": "France", "answer": " Paris"}' });
  const mode = el("select", { id: "records-mode" }, el("option", { value: "table" }, "table"),
    el("option", { value: "jsonl" }, "pasted JSON lines"));
  const tableBox = el("div", { id: "records-table-box" },
    el("table", { class: "records", id: "records-table" }, el("thead", {}, el("tr", {},
      COLUMNS.map(([n]) => el("th", {}, n)), el("th", {}))), tbody),
    el("button", { type: "button", class: "secondary", id: "add-row",
      onclick: () => tbody.append(recordRow()) }, "Add a record"));
  const jsonBox = el("div", { id: "records-jsonl-box", hidden: true }, jsonl);
  mode.addEventListener("change", () => {
    tableBox.hidden = mode.value !== "table"; jsonBox.hidden = mode.value !== "jsonl";
  });
  const hparams = el("textarea", { id: "forget-hparams", placeholder: "{} (method defaults)",
                                   style: "min-height:3rem" });
  const verifyAfter = el("input", { type: "checkbox", id: "verify-after", checked: true });
  const form = el("form", { id: "forget-form", class: "card" },
    el("div", { class: "row" }, el("label", {}, "Model ", model), el("label", {}, "Method ", method),
      el("label", {}, "Records as ", mode)),
    tableBox, jsonBox,
    el("details", {}, el("summary", {}, "Hyper-parameters (JSON, optional)"), hparams),
    el("div", { class: "row" }, el("label", {}, verifyAfter,
      " verify the new version against its parent when it is ready")),
    el("p", { class: "muted" }, "In the table, answers get a leading space when they have " +
      "none (tokens are compared: \" Paris\", not \"Paris\"); JSON lines are sent as written."),
    el("p", { class: "muted" }, "The text you type stays in this page: the service keeps " +
      "only salted hashes once the job has ended."),
    el("button", { type: "submit", id: "forget-submit", disabled: !models.length }, "Forget"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const records = mode.value === "table" ? tableRecords(tbody) : jsonlRecords(jsonl.value);
      if (!records.length) throw new Error("add at least one record");
      const body = { records, method: method.value };
      if (hparams.value.trim()) body.hparams = JSON.parse(hparams.value);
      const accepted = await post(`/v1/models/${model.value}/forget`, body);
      typed.byJob[accepted.job_id] = records;
      typed.autoVerify = { ...(typed.autoVerify || {}), [accepted.job_id]: verifyAfter.checked };
      flash(`Forget request accepted: job ${accepted.job_id}.`);
      location.hash = `#/jobs/${accepted.job_id}`;
    } catch (err) { flash(err.message, true); }
  });
  show(view, el("h1", {}, "Forget facts"),
    models.length ? null : el("p", {}, "No model is ready yet."), form);
  return null;
}

export async function comparePage(view, params) {
  if (!can("operator")) {
    show(view, el("h1", {}, "Try a prompt"), el("p", {}, "An operator key is needed."));
    return null;
  }
  const models = (await getAll("/v1/models")).filter((m) => m.status === "ready");
  const model = el("select", { id: "compare-model" }, models.map((m) =>
    el("option", { value: m.id, selected: m.id === params.get("model") }, `${m.name} (${m.id})`)));
  const a = el("select", { id: "version-a" }), b = el("select", { id: "version-b" });
  const fill = async () => {
    if (!model.value) return;
    const versions = await getAll(`/v1/models/${model.value}/versions`);
    for (const [select, pick] of [[a, versions[0]], [b, versions[versions.length - 1]]]) {
      select.replaceChildren(...versions.filter((v) => !v.deleted).map((v) => el("option", {
        value: v.id, selected: v.id === pick.id, "data-sealed": v.sealed ? "1" : "",
      }, `${v.id}${v.active ? " (active)" : ""}${v.sealed ? " (sealed)" : ""}`)));
    }
  };
  model.addEventListener("change", fill);
  await fill();
  const prompt = el("input", { id: "compare-prompt", size: 60, placeholder: "a prompt" });
  const tokens = el("input", { id: "compare-tokens", type: "number", value: 8, min: 1, max: 256 });
  const outA = el("div", { class: "output card", id: "output-a" });
  const outB = el("div", { class: "output card", id: "output-b" });
  const form = el("form", { id: "compare-form", class: "card" },
    el("div", { class: "row" }, el("label", {}, "Model ", model), el("label", {}, "A ", a),
      el("label", {}, "B ", b)),
    el("div", { class: "row" }, prompt, el("label", {}, "tokens ", tokens),
      el("button", { type: "submit", id: "compare-submit" }, "Generate with both")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const sealed = [a, b].filter((s) => s.selectedOptions[0]?.dataset.sealed)
      .map((s) => s.value);
    let query = "";
    if (sealed.length && can("admin")) {  // an override of the seal: audited, with a reason
      const reason = window.prompt(`${[...new Set(sealed)].join(", ")} sealed: it still ` +
        "holds records a later forget deleted. State the reason for using it anyway " +
        "(audited, named in receipts), or cancel.");
      if (reason && reason.trim()) {
        query = `?override_seal_reason=${encodeURIComponent(reason.trim())}`;
      }
    }
    const run = async (version, out) => {
      out.textContent = "…";
      try {
        const over = sealed.includes(version) ? query : "";
        const r = await post(`/v1/models/${model.value}/versions/${version}/generate${over}`,
          { prompt: prompt.value, max_new_tokens: Number(tokens.value) });
        out.replaceChildren(el("span", { class: "muted" }, prompt.value), r.text ? el("strong", {}, r.text)
          : el("strong", { class: "muted" }, " ⟨end of text⟩"));
      } catch (err) { out.textContent = `error: ${err.message}`; }
    };
    await Promise.all([run(a.value, outA), run(b.value, outB)]);
  });
  show(view, el("h1", {}, "Try a prompt against two versions"), form,
    el("div", { class: "side-by-side" }, el("div", {}, el("h2", {}, "Version A"), outA),
      el("div", {}, el("h2", {}, "Version B"), outB)));
  return null;
}
