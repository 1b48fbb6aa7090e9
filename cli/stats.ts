/**
 * Forwarder statistics output: a live view on a terminal (in the spirit of testpmd's "NIC
 * statistics for port N" block), one plain line per period otherwise, or JSON lines (`--json`):
 * one object per period and a final summary object as the last line.
 *
 * The summary's keys are an interface other tools read: `ports[]` (port, name, rxPackets,
 * txPackets, rxBytes, txBytes, rxDropped, txDropped, rxNoMbuf, rxErrors, txErrors, rxIdxErrors,
 * and `wire` for simulated ports), `totals`, `durationSec`, `mode`.
 */
import type { Port } from "../mod/port.ts";
import type { PortStats } from "../mod/virtio/stats.ts";
import { numWidth, OutBuffer } from "./out_buffer.ts";

export const STAT_KEYS = [
  "rxPackets",
  "txPackets",
  "rxBytes",
  "txBytes",
  "rxDropped",
  "txDropped",
  "rxNoMbuf",
  "rxErrors",
  "txErrors",
  "rxIdxErrors",
] as const;

export type Counters = Record<typeof STAT_KEYS[number], number>;

export interface PortRow extends Counters {
  port: number;
  name: string;
  linkUp: boolean;
  wire?: Record<string, number>;
  /** Frames received and sent on each queue pair (summary, more than one pair). */
  queues?: { rxPackets: number; txPackets: number }[];
}

export type OutputStyle = "terminal" | "plain" | "json";

export function counters(s: PortStats): Counters {
  const c = {} as Counters;
  for (const k of STAT_KEYS) c[k] = s[k];
  return c;
}

export function totals(rows: Counters[]): Counters {
  const t = {} as Counters;
  for (const k of STAT_KEYS) t[k] = rows.reduce((a, r) => a + r[k], 0);
  return t;
}

/** Where the live output goes (Deno.stdout by default). */
export interface OutputSink {
  writeSync(p: Uint8Array): number;
}

const enc = new TextEncoder();
const SPACE = 0x20;

/** Per port, encoded once: what its lines say that never changes. */
interface PortText {
  /** JSON: `{"port":N,"name":"...","linkUp":`. */
  jsonHead: Uint8Array;
  /** JSON: the wire counters' names, or null for a port without a simulated wire. */
  wireKeys: string[] | null;
  /** Terminal: the title line and the closing line, with the link up and down. */
  titleUp: Uint8Array;
  titleDown: Uint8Array;
  closeUp: Uint8Array;
  closeDown: Uint8Array;
}

/**
 * Live output every `periodMs`; `wireOf` gives a simulated port's live wire counters (else null).
 * The periodic output is built in one reused buffer (./out_buffer.ts): printing every second
 * makes no strings and no objects, so it does not wake the garbage collector while forwarding.
 */
export class StatsReporter {
  readonly #ports: Port[];
  readonly #names: string[];
  readonly #style: OutputStyle;
  readonly #periodMs: number;
  readonly #wireOf: (i: number) => Record<string, number> | null;
  readonly #startMs: number;
  readonly #sink: OutputSink;
  #nextMs: number;
  #lastMs: number;
  /** rxPackets and txPackets of every port at the last print (for the rates). */
  readonly #lastRx: Float64Array;
  readonly #lastTx: Float64Array;
  readonly #text: PortText[];
  readonly #out = new OutBuffer();

  constructor(
    ports: Port[],
    names: string[],
    style: OutputStyle,
    periodMs: number,
    wireOf: (i: number) => Record<string, number> | null,
    startMs = performance.now(),
    sink: OutputSink = Deno.stdout,
  ) {
    this.#ports = ports;
    this.#names = names;
    this.#style = style;
    this.#periodMs = periodMs;
    this.#wireOf = wireOf;
    this.#startMs = startMs;
    this.#sink = sink;
    this.#lastMs = startMs;
    this.#nextMs = startMs + periodMs;
    this.#lastRx = Float64Array.from(ports, (p) => p.stats.rxPackets);
    this.#lastTx = Float64Array.from(ports, (p) => p.stats.txPackets);
    this.#text = ports.map((p, i) => portText(p.id, names[i], wireOf(i)));
  }

  /** Current rows for every port; `linkUp` replaces the ports' link states (default: now). */
  rows(linkUp: boolean[] = this.#ports.map((p) => p.linkUp)): PortRow[] {
    return this.#ports.map((p, i) => {
      const row: PortRow = {
        port: p.id,
        name: this.#names[i],
        linkUp: linkUp[i],
        ...counters(p.stats),
      };
      const wire = this.#wireOf(i);
      if (wire !== null) row.wire = { ...wire };
      return row;
    });
  }

  /** Called by the loop at each clock check; prints when a period has passed. */
  tick(nowMs: number): void {
    // Small enough to inline into the loop: the time stays an unboxed double until a print.
    if (nowMs >= this.#nextMs && this.#periodMs > 0) this.#print(nowMs);
  }

  #print(nowMs: number): void {
    this.#nextMs = nowMs + this.#periodMs;
    const dt = (nowMs - this.#lastMs) / 1000;
    this.#lastMs = nowMs;
    const tenths = Math.round((nowMs - this.#startMs) / 100);
    const o = this.#out;
    o.reset();
    if (this.#style === "json") o.text('{"t":');
    else if (this.#style === "plain") o.text("t=");
    else o.text("\x1b[H\x1b[2J");
    if (this.#style !== "terminal") this.#seconds(tenths);
    if (this.#style === "json") o.text(',"ports":[');
    else if (this.#style === "plain") o.text("s ");
    for (let i = 0; i < this.#ports.length; i++) {
      const s = this.#ports[i].stats;
      const rxPps = Math.round((s.rxPackets - this.#lastRx[i]) / dt);
      const txPps = Math.round((s.txPackets - this.#lastTx[i]) / dt);
      this.#lastRx[i] = s.rxPackets;
      this.#lastTx[i] = s.txPackets;
      if (this.#style === "json") this.#json(i, rxPps, txPps);
      else if (this.#style === "plain") this.#plain(i, rxPps, txPps);
      else this.#nicBlock(i, rxPps, txPps);
    }
    if (this.#style === "json") o.text("]}\n");
    else if (this.#style === "plain") o.text("\n");
    else {
      o.text("\n  elapsed ");
      this.#seconds(tenths);
      o.text(" s (Ctrl-C to stop)\n");
    }
    o.flush(this.#sink);
  }

  /** Seconds from tenths, as JSON writes Math.round(ms / 100) / 10: 12.3, 12. */
  #seconds(tenths: number): void {
    const whole = Math.floor(tenths / 10);
    this.#out.num(whole);
    if (tenths !== whole * 10) {
      this.#out.text(".");
      this.#out.num(tenths - whole * 10);
    }
  }

  /** One port of a JSON line: the summary's row keys in order, then the rates. */
  #json(i: number, rxPps: number, txPps: number): void {
    const o = this.#out;
    const p = this.#ports[i];
    const text = this.#text[i];
    if (i > 0) o.text(",");
    o.bytes(text.jsonHead);
    o.text(p.linkUp ? "true" : "false");
    const s = p.stats;
    for (let k = 0; k < STAT_KEYS.length; k++) {
      o.bytes(JSON_KEYS[k]);
      o.num(s[STAT_KEYS[k]]);
    }
    const keys = text.wireKeys;
    const wire = keys === null ? null : this.#wireOf(i);
    if (keys !== null && wire !== null) {
      o.text(',"wire":{');
      for (let k = 0; k < keys.length; k++) {
        o.text(k === 0 ? '"' : ',"');
        o.text(keys[k]);
        o.text('":');
        o.num(wire[keys[k]]);
      }
      o.text("}");
    }
    o.text(',"rxPps":');
    o.num(rxPps);
    o.text(',"txPps":');
    o.num(txPps);
    o.text("}");
  }

  /** One port of a plain line. */
  #plain(i: number, rxPps: number, txPps: number): void {
    const o = this.#out;
    const p = this.#ports[i];
    const s = p.stats;
    if (i > 0) o.text(" | ");
    o.text("port ");
    o.num(p.id);
    o.text(" rx ");
    o.num(s.rxPackets);
    o.text(" tx ");
    o.num(s.txPackets);
    o.text(" drop ");
    o.num(s.rxDropped + s.txDropped);
    o.text(" rx-pps ");
    o.num(rxPps);
    o.text(" tx-pps ");
    o.num(txPps);
  }

  /** One port's block of the terminal view (in the spirit of testpmd's "show port stats"). */
  #nicBlock(i: number, rxPps: number, txPps: number): void {
    const o = this.#out;
    const p = this.#ports[i];
    const s = p.stats;
    const text = this.#text[i];
    const wire = text.wireKeys === null ? null : this.#wireOf(i);
    if (i > 0) o.text("\n");
    o.bytes(p.linkUp ? text.titleUp : text.titleDown);
    o.text("\n  ");
    this.#col("RX-packets", s.rxPackets);
    this.#col("RX-missed", wire === null ? 0 : wire.missed ?? 0);
    this.#col("RX-bytes", s.rxBytes);
    o.text("\n  ");
    this.#col("RX-errors", s.rxErrors);
    this.#col("RX-dropped", s.rxDropped);
    o.text("\n  ");
    this.#col("RX-nombuf", s.rxNoMbuf);
    this.#col("RX-idx-errors", s.rxIdxErrors);
    o.text("\n  ");
    this.#col("TX-packets", s.txPackets);
    this.#col("TX-errors", s.txErrors);
    this.#col("TX-bytes", s.txBytes);
    o.text("\n  ");
    this.#col("TX-dropped", s.txDropped);
    o.text("\n\n  Throughput (since last show)\n  Rx-pps: ");
    o.repeat(SPACE, 12 - numWidth(rxPps));
    o.num(rxPps);
    o.text("\n  Tx-pps: ");
    o.repeat(SPACE, 12 - numWidth(txPps));
    o.num(txPps);
    o.text("\n");
    o.bytes(p.linkUp ? text.closeUp : text.closeDown);
  }

  /** `label: value` with the value padded to 14 columns. */
  #col(label: string, v: number): void {
    const o = this.#out;
    o.text(label);
    o.text(": ");
    o.num(v);
    o.repeat(SPACE, 14 - numWidth(v));
  }
}

/** `,"rxPackets":` and so on, in STAT_KEYS order. */
const JSON_KEYS = STAT_KEYS.map((k) => enc.encode(`,"${k}":`));

function portText(id: number, name: string, wire: Record<string, number> | null): PortText {
  const title = (up: boolean) =>
    ` NIC statistics for port ${id} (${name}, link ${up ? "up" : "down"}) `;
  const bar = (t: string) => "#".repeat(Math.max(4, Math.floor((76 - t.length) / 2)));
  const titleLine = (up: boolean) => enc.encode(`  ${bar(title(up))}${title(up)}${bar(title(up))}`);
  const closeLine = (up: boolean) =>
    enc.encode(`  ${"#".repeat(bar(title(up)).length * 2 + title(up).length)}`);
  return {
    jsonHead: enc.encode(`{"port":${id},"name":${JSON.stringify(name)},"linkUp":`),
    wireKeys: wire === null ? null : Object.keys(wire),
    titleUp: titleLine(true),
    titleDown: titleLine(false),
    closeUp: closeLine(true),
    closeDown: closeLine(false),
  };
}
