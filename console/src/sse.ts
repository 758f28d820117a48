// Server-sent events over fetch(): EventSource cannot send the Authorization header.
// Reads text/event-stream itself and reconnects with backoff, asking for the events after
// the last one it saw (`after` and Last-Event-ID), so nothing is missed or repeated.

import { session, unauthorized } from "./api";

export interface Message {
  id?: string;
  event: string;
  data: string;
}

export type StreamState = "connecting" | "open" | "reconnecting";

export interface FollowOptions {
  /** An API path; `after=<last id>` is added on reconnects when `resumable`. */
  path: string;
  /** Whether the server reads `after` (per-resource event streams do; `/v1/events` has no backlog). */
  resumable: boolean;
  onMessage: (m: Message) => void;
  /** Each time the stream (re)opens: a client of a stream without backlog reads state again here. */
  onOpen?: () => void;
  onState?: (s: StreamState) => void;
}

const MIN_DELAY_MS = 500;
const MAX_DELAY_MS = 30_000;

/** Splits a text/event-stream into messages; feed it chunks, it keeps partial lines. */
export class EventStreamParser {
  private buffer = "";
  private data: string[] = [];
  private event = "";
  private id: string | undefined;

  constructor(private readonly emit: (m: Message) => void) {}

  push(chunk: string) {
    this.buffer += chunk;
    let newline: number;
    while ((newline = this.buffer.search(/\r\n|\r|\n/)) >= 0) {
      const line = this.buffer.slice(0, newline);
      const width = this.buffer.startsWith("\r\n", newline) ? 2 : 1;
      // A lone \r at the end of the buffer may be half of \r\n: wait for more.
      if (width === 1 && this.buffer[newline] === "\r" && newline === this.buffer.length - 1) break;
      this.buffer = this.buffer.slice(newline + width);
      this.line(line);
    }
  }

  private line(line: string) {
    if (line === "") {
      if (this.data.length > 0) {
        this.emit({ id: this.id, event: this.event || "message", data: this.data.join("\n") });
      }
      this.data = [];
      this.event = "";
      return;
    }
    if (line.startsWith(":")) return; // a comment: the server's keep-alive
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.event = value;
    else if (field === "id" && !value.includes("\0")) this.id = value;
  }
}

/** Follows an event stream until the returned function is called. */
export function follow(options: FollowOptions): () => void {
  const stop = new AbortController();
  let lastId: string | undefined;
  let delay = MIN_DELAY_MS;

  const once = async (): Promise<void> => {
    const headers: Record<string, string> = { Accept: "text/event-stream" };
    const token = session.token();
    if (token) headers.Authorization = `Bearer ${token}`;
    let path = options.path;
    if (options.resumable && lastId) {
      headers["Last-Event-ID"] = lastId;
      path += `${path.includes("?") ? "&" : "?"}after=${encodeURIComponent(lastId)}`;
    }
    const response = await fetch(path, { headers, signal: stop.signal, cache: "no-store" });
    if (response.status === 401) {
      unauthorized();
      throw new Error("unauthorized");
    }
    if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
    options.onState?.("open");
    options.onOpen?.();
    const parser = new EventStreamParser((m) => {
      if (m.id) lastId = m.id;
      delay = MIN_DELAY_MS; // the stream works: the next drop starts its backoff over
      options.onMessage(m);
    });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      parser.push(value);
    }
  };

  (async () => {
    options.onState?.("connecting");
    while (!stop.signal.aborted) {
      try {
        await once();
      } catch (e) {
        if (stop.signal.aborted || (e instanceof Error && e.message === "unauthorized")) return;
      }
      if (stop.signal.aborted) return;
      options.onState?.("reconnecting");
      // Exponential backoff with jitter, so many tabs do not come back at the same instant.
      const wait = delay / 2 + Math.random() * (delay / 2);
      delay = Math.min(delay * 2, MAX_DELAY_MS);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, wait);
        stop.signal.addEventListener("abort", () => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  })();

  return () => stop.abort();
}
