// GET /api/v1/stream read with fetch + ReadableStream: EventSource cannot send
// the bearer header. Reconnects with capped, jittered backoff and resumes
// alert events with Last-Event-ID, as the server's replay expects.

const MAX_BACKOFF_MS = 15000;

/**
 * Keep a stream open until `stop()` is called.
 * `onEvent(type, data, id)` for every event, `onStatus(state)` with
 * "connecting" | "live" | "reconnecting", `onConnected(resumed)` when the
 * server says ": connected" (resumed = a Last-Event-ID was sent),
 * `onUnauthorized()` when the token is refused.
 */
export function openStream({ token, onEvent, onStatus, onConnected, onUnauthorized }) {
  const controller = new AbortController();
  let lastEventId = null;
  let attempt = 0;
  let stopped = false;

  async function once() {
    const headers = { Authorization: `Bearer ${token}`, Accept: "text/event-stream" };
    const resumed = lastEventId !== null;
    if (resumed) headers["Last-Event-ID"] = String(lastEventId);
    const response = await fetch("/api/v1/stream", {
      headers,
      signal: controller.signal,
      cache: "no-store",
    });
    if (response.status === 401) {
      stopped = true;
      onUnauthorized();
      return;
    }
    if (!response.ok || !response.body) throw new Error(`stream: HTTP ${response.status}`);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let event = { type: "message", data: [], id: null };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let newline;
      while ((newline = buffer.search(/\r\n|\n|\r/)) >= 0) {
        const line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + (buffer.startsWith("\r\n", newline) ? 2 : 1));
        if (line === "") {
          if (event.data.length) dispatch(event);
          event = { type: "message", data: [], id: null };
        } else if (line.startsWith(":")) {
          if (line.startsWith(": connected")) {
            attempt = 0;
            onStatus("live");
            onConnected(resumed);
          }
        } else {
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const raw = colon < 0 ? "" : line.slice(colon + 1);
          const text = raw.startsWith(" ") ? raw.slice(1) : raw;
          if (field === "event") event.type = text;
          else if (field === "data") event.data.push(text);
          else if (field === "id") event.id = text;
        }
      }
    }
  }

  function dispatch(event) {
    if (event.id !== null && /^\d+$/.test(event.id)) lastEventId = Number(event.id);
    let data;
    try {
      data = JSON.parse(event.data.join("\n"));
    } catch {
      return;
    }
    try {
      onEvent(event.type, data, event.id);
    } catch (error) {
      console.error("stream handler failed", error);
    }
  }

  async function loop() {
    onStatus("connecting");
    while (!stopped) {
      try {
        await once();
      } catch (error) {
        if (stopped || error.name === "AbortError") return;
        console.warn("stream interrupted", error);
      }
      if (stopped) return;
      onStatus("reconnecting");
      attempt += 1;
      const backoff = Math.min(MAX_BACKOFF_MS, 500 * 2 ** Math.min(attempt, 6));
      await new Promise((resolve) => setTimeout(resolve, backoff / 2 + Math.random() * (backoff / 2)));
    }
  }

  loop();
  return {
    stop() {
      stopped = true;
      controller.abort();
    },
  };
}
