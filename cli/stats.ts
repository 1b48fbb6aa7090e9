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

/** Live output every `periodMs`; `wireOf` gives a simulated port's wire counters (else null). */
export class StatsReporter {
  readonly #ports: Port[];
  readonly #names: string[];
  readonly #style: OutputStyle;
  readonly #periodMs: number;
  readonly #wireOf: (i: number) => Record<string, number> | null;
  readonly #startMs: number;
  #nextMs: number;
  #lastMs: number;
  #last: Counters[];
  readonly #enc = new TextEncoder();

  constructor(
    ports: Port[],
    names: string[],
    style: OutputStyle,
    periodMs: number,
    wireOf: (i: number) => Record<string, number> | null,
    startMs = performance.now(),
  ) {
    this.#ports = ports;
    this.#names = names;
    this.#style = style;
    this.#periodMs = periodMs;
    this.#wireOf = wireOf;
    this.#startMs = startMs;
    this.#lastMs = startMs;
    this.#nextMs = startMs + periodMs;
    this.#last = ports.map((p) => counters(p.stats));
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
      if (wire !== null) row.wire = wire;
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
    const rows = this.rows();
    const rates = rows.map((r, i) => ({
      rxPps: Math.round((r.rxPackets - this.#last[i].rxPackets) / dt),
      txPps: Math.round((r.txPackets - this.#last[i].txPackets) / dt),
    }));
    this.#last = rows.map((r) => counters(r));
    const t = Math.round((nowMs - this.#startMs) / 100) / 10;
    if (this.#style === "json") {
      const ports = rows.map((r, i) => ({ ...r, ...rates[i] }));
      this.#write(JSON.stringify({ t, ports }) + "\n");
    } else if (this.#style === "plain") {
      const parts = rows.map((r, i) =>
        `port ${r.port} rx ${r.rxPackets} tx ${r.txPackets} drop ${r.rxDropped + r.txDropped} ` +
        `rx-pps ${rates[i].rxPps} tx-pps ${rates[i].txPps}`
      );
      this.#write(`t=${t}s ${parts.join(" | ")}\n`);
    } else {
      const blocks = rows.map((r, i) => nicBlock(r, rates[i].rxPps, rates[i].txPps));
      this.#write(`\x1b[H\x1b[2J${blocks.join("\n")}\n  elapsed ${t} s (Ctrl-C to stop)\n`);
    }
  }

  #write(s: string): void {
    const b = this.#enc.encode(s);
    let off = 0;
    while (off < b.length) off += Deno.stdout.writeSync(b.subarray(off));
  }
}

function nicBlock(r: PortRow, rxPps: number, txPps: number): string {
  const col = (label: string, v: number | string) => `${label}: ${String(v).padEnd(14)}`;
  const title = ` NIC statistics for port ${r.port} (${r.name}, link ${r.linkUp ? "up" : "down"}) `;
  const bar = "#".repeat(Math.max(4, Math.floor((76 - title.length) / 2)));
  return [
    `  ${bar}${title}${bar}`,
    `  ${col("RX-packets", r.rxPackets)}${col("RX-missed", r.wire?.missed ?? 0)}${
      col("RX-bytes", r.rxBytes)
    }`,
    `  ${col("RX-errors", r.rxErrors)}${col("RX-dropped", r.rxDropped)}`,
    `  ${col("RX-nombuf", r.rxNoMbuf)}${col("RX-idx-errors", r.rxIdxErrors)}`,
    `  ${col("TX-packets", r.txPackets)}${col("TX-errors", r.txErrors)}${
      col("TX-bytes", r.txBytes)
    }`,
    `  ${col("TX-dropped", r.txDropped)}`,
    ``,
    `  Throughput (since last show)`,
    `  Rx-pps: ${String(rxPps).padStart(12)}`,
    `  Tx-pps: ${String(txPps).padStart(12)}`,
    `  ${"#".repeat(bar.length * 2 + title.length)}`,
  ].join("\n");
}
