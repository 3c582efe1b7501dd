// The dashboard: hash routes, the API key (sessionStorage) and the caller's role.
import { ApiError, get, getKey, setKey } from "./api.js";
import { comparePage, forgetPage } from "./forget.js";
import { jobPage, jobsPage } from "./jobs.js";
import { modelPage, modelsPage } from "./models.js";
import { can, el, errorBox, expireFlash, flash, session, show } from "./ui.js";

const ROUTES = [
  [/^#\/models\/([\w-]+)$/, (v, m) => modelPage(v, m[1]), "models"],
  [/^#\/models$/, (v) => modelsPage(v), "models"],
  [/^#\/jobs\/([\w-]+)$/, (v, m) => jobPage(v, m[1]), "jobs"],
  [/^#\/jobs$/, (v, m, p) => jobsPage(v, p), "jobs"],
  [/^#\/forget$/, (v, m, p) => forgetPage(v, p), "forget"],
  [/^#\/compare$/, (v, m, p) => comparePage(v, p), "compare"],
];
let timer = null;
let generation = 0;

async function whoami() {
  const label = document.getElementById("whoami");
  session.role = null; session.keyId = null;
  if (!getKey()) { label.textContent = "no key"; applyRole(); return; }
  try {
    const me = await get("/v1/keys/me");
    session.role = me.role; session.keyId = me.id;
    label.textContent = `${me.role} · ${me.id}`;
    label.dataset.role = me.role;
  } catch (err) {
    label.textContent = err.status === 401 ? "key not valid" : "cannot check the key";
  }
  applyRole();
}

function applyRole() {
  for (const link of document.querySelectorAll("[data-min-role]")) {
    link.hidden = !can(link.dataset.minRole);
  }
}

async function render() {
  clearTimeout(timer);
  const mine = ++generation;
  const view = document.getElementById("view");
  const [path, query] = (location.hash || "#/models").split("?");
  const params = new URLSearchParams(query || "");
  const route = ROUTES.find(([re]) => re.test(path));
  expireFlash(path);
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("current", !!route && a.dataset.nav === route[2]);
  }
  if (!route) { show(view, el("h1", {}, "Not found")); return; }
  if (!getKey() || session.role === null) {
    show(view, el("h1", {}, "ZeroUnlearn"),
      el("p", {}, "Paste an API key above to start (kept in this browser tab only)."));
    return;
  }
  try {
    const again = await route[1](view, path.match(route[0]), params);
    if (again && mine === generation) {
      timer = setTimeout(() => { if (mine === generation) render(); }, again);
    }
  } catch (err) {
    if (mine !== generation) return;
    const error = err instanceof ApiError ? { code: err.code, message: err.message }
                                          : { code: "error", message: String(err) };
    show(view, el("h1", {}, "Something went wrong"), errorBox(error));
  }
}

function start() {
  const input = document.getElementById("api-key");
  document.getElementById("key-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    setKey(input.value.trim());
    input.value = "";
    flash("");
    await whoami();
    render();
  });
  document.getElementById("key-clear").addEventListener("click", async () => {
    setKey("");
    await whoami();
    render();
  });
  window.addEventListener("hashchange", render);
  whoami().then(render);
}

start();
