// Hash URLs of the viewer's pages (ids are URL-encoded, so any item id routes).

export function href(parts, params = {}) {
  const path = parts.map((p) => encodeURIComponent(p)).join("/");
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") q.set(k, v);
  const qs = q.toString();
  return `#/${path}${qs ? `?${qs}` : ""}`;
}

export function go(parts, params) {
  location.hash = href(parts, params);
}
