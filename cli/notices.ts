/**
 * What the transports tell while `vpmd fwd` runs (a backend lost or back, a reconnect that
 * failed, a device error: `NoticeSink` in mod/virtio/transport.ts), shown to the user: one line
 * on stderr each, and with --json also one JSON line in the stdout stream,
 *
 *   {"event":"backend-lost","port":0,"name":"vhost-user:/x","message":"...","t":1.23}
 *
 * (`t`: seconds since the printer started). A backend can misbehave in a loop, so each port and
 * kind is shown at most once per MIN_GAP_MS: the next one shown carries how many were held back
 * (`suppressed`), and `flush()` shows the last one held back of each kind at the end of the run.
 */
import type { NoticeSink } from "../mod/virtio/transport.ts";

/** Least time between two notices of one kind from one port that are shown. */
const MIN_GAP_MS = 1000;

export interface NoticeLine {
  event: string;
  port: number;
  name: string;
  message: string;
  t: number;
  suppressed?: number;
}

interface Held {
  shownAt: number;
  /** Notices not shown since the last one shown; `last` is the newest of them. */
  suppressed: number;
  last: NoticeLine | null;
}

export class NoticePrinter {
  readonly #json: boolean;
  readonly #start: number;
  readonly #stderr: (line: string) => void;
  readonly #stdout: (line: string) => void;
  readonly #clock: () => number;
  readonly #held = new Map<string, Held>();
  #jsonOpen = true;

  constructor(
    json: boolean,
    out: { stderr?: (line: string) => void; stdout?: (line: string) => void } = {},
    clock: () => number = () => performance.now(),
  ) {
    this.#json = json;
    this.#stderr = out.stderr ?? ((l) => console.error(l));
    this.#stdout = out.stdout ?? ((l) => console.log(l));
    this.#clock = clock;
    this.#start = clock();
  }

  /** The sink for port `port`, named `name` in what is shown. */
  sink(port: number, name: string): NoticeSink {
    return (kind, message) => this.#notice(port, name, kind, message);
  }

  /** Show the newest notice held back of each port and kind (before the summary). */
  flush(): void {
    for (const h of this.#held.values()) {
      if (h.last === null) continue;
      const line = h.last;
      if (h.suppressed > 1) line.suppressed = h.suppressed - 1;
      h.suppressed = 0;
      h.last = null;
      this.#show(line);
    }
  }

  /** From now on, notices go to stderr only: the summary stays the last stdout line. */
  endJson(): void {
    this.#jsonOpen = false;
  }

  #notice(port: number, name: string, kind: string, message: string): void {
    const now = this.#clock();
    const line: NoticeLine = {
      event: kind,
      port,
      name,
      message,
      t: Math.round(now - this.#start) / 1000,
    };
    const key = `${port} ${kind}`;
    let h = this.#held.get(key);
    if (h === undefined) {
      h = { shownAt: -Infinity, suppressed: 0, last: null };
      this.#held.set(key, h);
    }
    if (now - h.shownAt < MIN_GAP_MS) {
      h.suppressed++;
      h.last = line;
      return;
    }
    if (h.suppressed > 0) line.suppressed = h.suppressed;
    h.shownAt = now;
    h.suppressed = 0;
    h.last = null;
    this.#show(line);
  }

  #show(line: NoticeLine): void {
    const more = line.suppressed ? ` (${line.suppressed} more like it not shown)` : "";
    this.#stderr(`Port ${line.port} (${line.name}): ${line.message}${more}`);
    if (this.#json && this.#jsonOpen) this.#stdout(JSON.stringify(line));
  }
}
