// The gateway's /v1 API with the signed-in token. The token lives in this
// tab's sessionStorage only: it is sent in the Authorization header (and, for
// the terminal, as a WebSocket subprotocol), never in a URL.

const KEY = 'vmplane.session';

/** The signed-in session `{token, org, project}`, or null. */
export function session() {
  try {
    const s = JSON.parse(sessionStorage.getItem(KEY) ?? 'null');
    return s && typeof s.token === 'string' && s.token ? s : null;
  } catch {
    return null;
  }
}

export function saveSession({ token, org, project }) {
  sessionStorage.setItem(KEY, JSON.stringify({ token, org: org || null, project: project || null }));
}

export function clearSession() {
  sessionStorage.removeItem(KEY);
}

/** An answer of the API that was not a success: its `code` and `message`. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let onUnauthorized = () => {};
/** What to do when the token is refused (401): sign out. */
export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

/** The headers every call carries: the bearer token, the org and project. */
export function authHeaders(extra = {}) {
  const s = session();
  const h = new Headers(extra);
  if (s) {
    h.set('Authorization', `Bearer ${s.token}`);
    if (s.org) h.set('X-Vmplane-Org', s.org);
    if (s.project) h.set('X-Vmplane-Project', s.project);
  }
  return h;
}

function randomKey() {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

/** Parse a failed answer into an ApiError; a 401 signs out unless `quiet`. */
export async function failure(resp, { quiet = false } = {}) {
  const text = await resp.text().catch(() => '');
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON
  }
  const err = new ApiError(resp.status, body?.code ?? `http_${resp.status}`, body?.message ?? (text.slice(0, 200) || resp.statusText));
  if (resp.status === 401 && !quiet) onUnauthorized(err);
  return err;
}

/**
 * Call the API: `api('POST', '/v1/vms', body)`. Answers the parsed JSON, or
 * throws an ApiError. Mutations carry a fresh Idempotency-Key, so a retry of
 * the same call by the browser cannot act twice. A 401 signs out, unless
 * `quiet` (the sign-in check itself).
 */
export async function api(method, path, body, { signal, quiet = false } = {}) {
  const headers = authHeaders({ Accept: 'application/json' });
  const init = { method, headers, signal, cache: 'no-store', credentials: 'omit' };
  if (body !== undefined) {
    headers.set('Content-Type', 'application/json');
    init.body = JSON.stringify(body);
  }
  if (method === 'POST') headers.set('Idempotency-Key', `console-${randomKey()}`);
  const resp = await fetch(path, init);
  if (!resp.ok) throw await failure(resp, { quiet });
  const text = await resp.text();
  return text ? JSON.parse(text) : null;
}

/** Every item of a paginated list (`{data, pagination}`), up to `max` pages of 100. */
export async function listAll(path, { signal, max = 20 } = {}) {
  const sep = path.includes('?') ? '&' : '?';
  const items = [];
  for (let page = 1; page <= max; page++) {
    const r = await api('GET', `${path}${sep}page=${page}&limit=100`, undefined, { signal });
    items.push(...r.data);
    if (page >= r.pagination.total_pages) break;
  }
  return items;
}

/** Path segment for an id from the API or the address bar. */
export function seg(id) {
  return encodeURIComponent(id);
}
