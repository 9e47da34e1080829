// Calls to the contrail API. The key lives in this tab's sessionStorage and goes out only as an
// Authorization header to this origin; it is never put in a URL or a cookie.

const KEY = "contrail.apiKey";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function getKey() {
  return sessionStorage.getItem(KEY);
}

export function setKey(key) {
  sessionStorage.setItem(KEY, key);
}

export function clearKey() {
  sessionStorage.removeItem(KEY);
}

function url(path, params) {
  const u = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== null && v !== undefined && v !== "") u.searchParams.set(k, String(v));
  }
  return u.pathname + u.search;
}

async function send(path, { method = "GET", params, key } = {}) {
  const headers = { Authorization: `Bearer ${key ?? getKey() ?? ""}` };
  const resp = await fetch(url(path, params), { method, headers, cache: "no-store" });
  if (!resp.ok) {
    let message = `${resp.status} ${resp.statusText}`;
    try {
      const body = await resp.json();
      message = body?.error?.message || message;
    } catch {
      // not JSON: keep the status line
    }
    if (resp.status === 401 && key === undefined) {
      clearKey();
      window.dispatchEvent(new CustomEvent("contrail:signed-out", { detail: message }));
    }
    throw new ApiError(resp.status, message);
  }
  return resp;
}

export async function api(path, opts) {
  return (await send(path, opts)).json();
}

// Fetches a file with the key and saves it through a temporary blob: URL (a plain link could not
// carry the Authorization header).
export async function download(path, filename) {
  const blob = await (await send(path)).blob();
  const href = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = href;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(href), 10_000);
}
