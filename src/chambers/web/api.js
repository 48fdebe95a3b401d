// HTTP: the public endpoints, with the sign-in cookie (same origin, so the browser sends it and the
// Origin header the server checks on writes). Errors come back as the server's envelope.

export class ApiError extends Error {
  constructor(status, code, message, response = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.response = response;
  }
}

let onUnauthorized = () => {};
/** Called when a request answers 401 (the sign-in ended): the app shows the sign-in page. */
export function setUnauthorizedHandler(handler) {
  onUnauthorized = handler;
}

async function errorOf(response) {
  let code = "HTTP_" + response.status;
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, code, message, response);
}

/**
 * request("POST", "/api/agents", {name}) -> the parsed JSON body (null for 204).
 * `raw: true` returns the Response (for streams) once its status is OK.
 */
export async function request(method, path, body, { raw = false, headers = {}, signal } = {}) {
  const init = { method, headers: { Accept: "application/json", ...headers }, signal, cache: "no-store" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "NETWORK", "The server could not be reached. Check your connection.");
  }
  if (!response.ok) {
    const error = await errorOf(response);
    if (response.status === 401 && !path.startsWith("/api/auth/login")) onUnauthorized(error);
    throw error;
  }
  if (raw) return response;
  if (response.status === 204) return null;
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

export const get = (path, options) => request("GET", path, undefined, options);
export const post = (path, body, options) => request("POST", path, body, options);
export const patch = (path, body, options) => request("PATCH", path, body, options);
export const del = (path, options) => request("DELETE", path, undefined, options);

export function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(key, String(value));
  }
  const text = search.toString();
  return text ? "?" + text : "";
}

// --- Server-Sent Events over fetch ------------------------------------------------------------------------

/** Parse an SSE body into {event, data, id} frames (comments and `retry:` ignored). */
export async function* sseFrames(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let frame = { event: "message", data: [], id: null };
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let match;
      while ((match = /\r\n|\r|\n/.exec(buffer))) {
        // A lone \r at the end may be the first half of \r\n: wait for more.
        if (match[0] === "\r" && match.index === buffer.length - 1) break;
        const line = buffer.slice(0, match.index);
        buffer = buffer.slice(match.index + match[0].length);
        if (line === "") {
          if (frame.data.length) yield { event: frame.event, data: frame.data.join("\n"), id: frame.id };
          frame = { event: "message", data: [], id: null };
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") frame.event = value;
        else if (field === "data") frame.data.push(value);
        else if (field === "id") frame.id = value;
      }
    }
  } finally {
    reader.releaseLock();
  }
}

const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });

/**
 * A session's event feed (`GET /agent/v1/chat/:id/stream`) that survives dropped connections.
 *
 * It remembers the id of the last event it handed on and reconnects with `Last-Event-ID`, so the
 * server replays exactly what was missed; an event at or below that id is never handed on twice.
 * `onEvent(name, data, id)` gets each event; `onState("live" | "reconnecting" | "closed")` the
 * connection's state. A silent connection (no event and no keep-alive ping for `idleMs`) is treated as
 * dropped. Going back online (the browser's `online` event) retries at once.
 */
export class EventFeed {
  constructor(url, { onEvent, onState = () => {}, idleMs = 45000 }) {
    this.url = url;
    this.onEvent = onEvent;
    this.onState = onState;
    this.idleMs = idleMs;
    this.lastId = 0;
    this.stopped = true;
    this.controller = null;
    this.wake = null;
    this.finished = false;
    this.online = () => this.wake?.abort();
  }

  start(lastId = 0) {
    this.lastId = lastId;
    this.stopped = false;
    window.addEventListener("online", this.online);
    this.loop();
  }

  stop() {
    this.stopped = true;
    window.removeEventListener("online", this.online);
    this.controller?.abort();
    this.wake?.abort();
  }

  /** Drop the current connection and reconnect (as after a network failure). */
  reconnect() {
    this.controller?.abort();
  }

  async loop() {
    let delay = 250;
    while (!this.stopped) {
      const controller = (this.controller = new AbortController());
      let idle = null;
      const touch = () => {
        clearTimeout(idle);
        idle = setTimeout(() => controller.abort(), this.idleMs);
      };
      try {
        touch();
        const response = await fetch(this.url, {
          headers: { Accept: "text/event-stream", "Last-Event-ID": String(this.lastId) },
          cache: "no-store",
          signal: controller.signal,
        });
        if (response.status === 401 || response.status === 403 || response.status === 404) {
          const error = await errorOf(response);
          if (response.status === 401) onUnauthorized(error);
          this.onState("closed", error);
          return;
        }
        if (!response.ok) throw await errorOf(response);
        this.onState("live");
        delay = 250;
        for await (const frame of sseFrames(response.body)) {
          touch();
          if (this.stopped) return;
          const id = frame.id === null || frame.id === "" ? null : Number(frame.id);
          if (id !== null && id <= this.lastId) continue; // already handed on
          let data = {};
          try {
            data = JSON.parse(frame.data);
          } catch {
            data = { raw: frame.data };
          }
          if (id !== null) this.lastId = id;
          this.onEvent(frame.event, data, id);
          if (this.finished) break;
        }
        // The server closed the stream: it does so after the session ended (then we stop) or when it
        // dropped a client that fell behind (then we resume).
        if (this.finished) {
          this.onState("closed");
          return;
        }
      } catch (err) {
        if (this.stopped) return;
      } finally {
        clearTimeout(idle);
      }
      if (this.stopped) return;
      this.onState("reconnecting");
      this.wake = new AbortController();
      await sleep(delay, this.wake.signal);
      delay = Math.min(delay * 2, 2000);
    }
  }

  /** The session ended: the feed stops once the server closes the stream. */
  finish() {
    this.finished = true;
  }
}
