// The console's one way to the broker: the HTTP admin API of the door that served it,
// with the credentials the user typed in (kept in this tab's sessionStorage only).
// Nothing is bypassed: what the credentials may not do, the broker refuses, and the
// console shows the problem it answered (RFC 9457 problem+json).

const KEY = "ferrymq.console.credentials";
const BASE = new URL("../", document.baseURI);  // the door's root, from /console/

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem && (problem.detail || problem.title) ? (problem.detail || problem.title) : `HTTP ${status}`);
    this.status = status;
    this.problem = problem || null;
  }
}

export function credentials() {
  try { return JSON.parse(sessionStorage.getItem(KEY)) || { kind: "none" }; }
  catch { return { kind: "none" }; }
}

export function setCredentials(c) {
  if (!c || c.kind === "none") sessionStorage.removeItem(KEY);
  else sessionStorage.setItem(KEY, JSON.stringify(c));
}

function authorization() {
  const c = credentials();
  if (c.kind === "bearer" && c.token) return "Bearer " + c.token;
  if (c.kind === "basic" && c.user) {
    const bytes = new TextEncoder().encode(`${c.user}:${c.password || ""}`);
    let bin = "";
    bytes.forEach((b) => { bin += String.fromCharCode(b); });
    return "Basic " + btoa(bin);
  }
  return null;
}

export function url(path, params = {}) {
  const u = new URL(path.replace(/^\//, ""), BASE);
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") u.searchParams.set(k, String(v));
  }
  return u;
}

export async function api(path, { params = {}, method = "GET", body = undefined } = {}) {
  const headers = { accept: "application/json" };
  const auth = authorization();
  if (auth) headers.authorization = auth;
  let payload;
  if (body !== undefined) {
    headers["content-type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const r = await fetch(url(path, params), { method, headers, body: payload, credentials: "same-origin" });
  if (r.status === 204) return null;
  const type = r.headers.get("content-type") || "";
  const doc = type.includes("json") ? await r.json() : await r.text();
  if (!r.ok) throw new ApiError(r.status, typeof doc === "object" ? doc : null);
  return doc;
}

// A segment of a path, percent-encoded (topic, group and message names).
export const seg = (s) => encodeURIComponent(s);
