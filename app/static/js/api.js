// Calls to the API with the key kept in sessionStorage; errors keep the API's code.
const KEY = "zerounlearn.apiKey";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function getKey() { return sessionStorage.getItem(KEY) || ""; }
export function setKey(value) {
  if (value) sessionStorage.setItem(KEY, value); else sessionStorage.removeItem(KEY);
}

// The rel="next" target of a Link header (RFC 8288), or null on the last page.
export function nextLink(header) {
  const match = /<([^>]*)>\s*;\s*rel="?next"?/i.exec(header || "");
  return match ? match[1] : null;
}

export async function api(method, path, body) {
  return (await call(method, path, body)).data;
}

// Every item of a paged list, following its Link headers; at most `max` of them.
export async function getAll(path, max = Infinity) {
  const items = [];
  let next = path;
  while (next && items.length < max) {
    const page = await call("GET", next);
    items.push(...page.data);
    next = nextLink(page.link);
  }
  return items.slice(0, max);
}

async function call(method, path, body) {
  const headers = { Accept: "application/json" };
  const key = getKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(0, "unreachable", "the service cannot be reached");
  }
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) {
    const error = (data && data.error) || {};
    throw new ApiError(response.status, error.code || `http_${response.status}`,
                       error.message || response.statusText);
  }
  return { data, link: response.headers.get("Link") };
}

export const get = (path) => api("GET", path);
export const post = (path, body) => api("POST", path, body === undefined ? {} : body);
