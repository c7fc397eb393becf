// The HTTP API (contract §4): bearer token from localStorage, one error shape.

const TOKEN_KEY = "anxiao.token";
const BASE = "/api/v1";

/** An API failure: HTTP status plus the body's `error.code` and `error.message`. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function storedToken() {
  return localStorage.getItem(TOKEN_KEY) || "";
}

export function storeToken(token) {
  localStorage.setItem(TOKEN_KEY, token);
}

export function forgetToken() {
  localStorage.removeItem(TOKEN_KEY);
}

/** A client bound to one token; `onUnauthorized` runs when the token stops working. */
export class Api {
  constructor(token, { onUnauthorized = () => {} } = {}) {
    this.token = token;
    this.onUnauthorized = onUnauthorized;
  }

  headers(extra = {}) {
    return { Authorization: `Bearer ${this.token}`, Accept: "application/json", ...extra };
  }

  async request(method, path, { params, body, signal } = {}) {
    const url = new URL(BASE + path, window.location.origin);
    for (const [key, value] of Object.entries(params ?? {})) {
      if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, value);
    }
    const init = { method, headers: this.headers(), signal };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(url, init);
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (!response.ok) {
      const error = data?.error ?? {};
      const failure = new ApiError(
        response.status,
        error.code ?? "http_error",
        error.message ?? `${response.status} ${response.statusText}`,
      );
      if (response.status === 401) this.onUnauthorized(failure);
      throw failure;
    }
    return data;
  }

  get(path, params) {
    return this.request("GET", path, { params });
  }

  post(path, body) {
    return this.request("POST", path, { body });
  }

  /** Every item of a cursor-paginated list (`{items, next}`), up to `max` items. */
  async getAll(path, params = {}, max = 20000) {
    const items = [];
    let cursor = null;
    do {
      const page = await this.get(path, { ...params, cursor });
      items.push(...page.items);
      cursor = page.next;
    } while (cursor && items.length < max);
    return items;
  }

  me() {
    return this.get("/me");
  }

  fleet() {
    return this.get("/fleet");
  }

  liveBuses() {
    return this.get("/live/buses");
  }

  devices() {
    return this.getAll("/devices", { limit: 1000 });
  }

  activeAlerts() {
    return this.getAll("/alerts", { state: "active", limit: 1000 }, 5000);
  }

  decide(alertId, action, note) {
    return this.post(`/alerts/${encodeURIComponent(alertId)}/${action}`, { note });
  }

  track(busId, since, until) {
    return this.get(`/buses/${encodeURIComponent(busId)}/track`, {
      since: since.toISOString(),
      until: until.toISOString(),
      limit: 20000,
    });
  }
}
