/**
 * A soak: forward between two simulated devices round after round, each round a configuration
 * taken in turn from every combination of ring kind (split, packed) and misbehaviour (none and
 * every `evil=` mode the ring kind has), mergeable RX buffers (off: MTU 1500; on: MTU 9000),
 * VIRTIO_F_IN_ORDER and the buffer pool (ample, or a few buffers above what the RX rings hold),
 * with the forwarding mode, the frame sizes (60..9000) and indirect descriptors drawn from the
 * seed. Between slices of a round a port's link goes down and up again, or a port is stopped and
 * started, while traffic flows. At the end of every round (generators stopped, frames in flight
 * drained, ports stopped) the checkpoint: every frame accounted for (cli/accounting.ts), every
 * buffer back in the pool, nothing thrown, and no slice that stalled (nothing moved for STALL_MS
 * while frames were due).
 *
 *   deno run -A scripts/soak.ts [--frames N | --rounds N] [--round-frames N] [--seed S]
 *                               [--only ROUND]
 *
 * Prints each failing round with its configuration (rerun it alone with --seed S --only ROUND),
 * then a table per configuration and the totals; exits 1 when any round failed.
 */
import { parseArgs } from "cli-args";
import { accountFrames } from "../cli/accounting.ts";
import { StatsReporter } from "../cli/stats.ts";
import { createEngine, type Mode } from "../mod/fwd/engines.ts";
import { ForwardLoop } from "../mod/fwd/loop.ts";
import { buildStreams, reclaimSent } from "../mod/fwd/streams.ts";
import { MbufPool } from "../mod/mbuf.ts";
import { Port } from "../mod/port.ts";
import {
  EVIL_MODES,
  type EvilMode,
  PACKED_ONLY_EVIL,
  SPLIT_ONLY_EVIL,
  TX_EVIL,
} from "../mod/sim/device.ts";
import { SimTransport } from "../mod/sim/transport.ts";

const MODES: Mode[] = ["io", "mac", "macswap", "rxonly"];
const RING = 256;
const BURST = 32;
/** A slice in which nothing moved for this long has stalled (frames are always due). */
const STALL_MS = 1000;
/** A slice never takes longer than this (slow configurations forward less of it). */
const SLICE_MAX_MS = 10_000;
const SLICES = 6;

export interface RoundConfig {
  round: number;
  mode: Mode;
  /** Packed virtqueues (2.8) rather than split ones. */
  packed: boolean;
  /** The devices offer VIRTIO_F_INDIRECT_DESC: chained TX frames go through indirect tables. */
  indirect: boolean;
  evil: EvilMode | null;
  mrg: boolean;
  inOrder: boolean;
  /** Buffers in the pool: ample, or a few above the RX rings' total (`small`). */
  poolSize: number;
  small: boolean;
  sizes: number[];
  /** Per slice boundary: what happens before the next slice. */
  events: SoakEvent[];
}

export type SoakEvent =
  | { kind: "none" }
  | { kind: "flap"; port: number; ms: number }
  | { kind: "cycle"; port: number; ms: number };

export interface RoundResult {
  config: RoundConfig;
  /** Frames the wires generated (both directions). */
  frames: number;
  /** Bad used entries and headers the devices wrote on purpose. */
  errorsInjected: number;
  flaps: number;
  cycles: number;
  ms: number;
  leaked: number;
  failures: string[];
}

/** mulberry32: a small deterministic generator, one per round (rounds can be rerun alone). */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Each ring kind with every misbehaviour it has (and none). */
const RINGS: { packed: boolean; evil: EvilMode | null }[] = [
  ...[null, ...EVIL_MODES.filter((m) => !PACKED_ONLY_EVIL.includes(m))].map((evil) => ({
    packed: false,
    evil,
  })),
  ...[null, ...EVIL_MODES.filter((m) => !SPLIT_ONLY_EVIL.includes(m))].map((evil) => ({
    packed: true,
    evil,
  })),
];
/** Every combination of ring kind and misbehaviour, mergeable buffers, in order and pool size. */
export const COMBINATIONS = RINGS.length * 2 * 2 * 2;

/** The configuration of round `round` under `seed` (the combination rotates with the round). */
export function roundConfig(seed: number, round: number): RoundConfig {
  const r = rng(seed * 1_000_003 + round);
  const c = round % COMBINATIONS;
  const { packed, evil } = RINGS[c % RINGS.length];
  const rest = Math.floor(c / RINGS.length);
  const mrg = (rest & 1) === 1;
  const inOrder = (rest & 2) === 2;
  const small = (rest & 4) === 4;
  const pick = (n: number) => Math.floor(r() * n);
  // Frames from 60 bytes to an MTU-sized 1514 most of the time; bigger ones (up to 9000) now and
  // then: several buffers each with mergeable buffers, dropped by the device (counted as missed)
  // without. One size at least fits a buffer, so that every round forwards.
  const sizes = [60 + pick(1514 - 60 + 1)];
  for (let n = pick(4); n > 0; n--) {
    sizes.push(r() < 0.3 ? 1515 + pick(9000 - 1515 + 1) : 60 + pick(1514 - 60 + 1));
  }
  const events: SoakEvent[] = [];
  for (let i = 0; i < SLICES - 1; i++) {
    const x = r();
    const port = pick(2);
    if (x < 0.3) events.push({ kind: "flap", port, ms: 1 + pick(30) });
    else if (x < 0.6) events.push({ kind: "cycle", port, ms: pick(20) });
    else events.push({ kind: "none" });
  }
  return {
    round,
    mode: MODES[pick(MODES.length)],
    packed,
    indirect: r() < 0.5,
    evil,
    mrg,
    inOrder,
    small,
    poolSize: small ? 2 * RING + 2 * BURST + pick(64) : 8192,
    sizes,
    events,
  };
}

export function describe(c: RoundConfig): string {
  return `round ${c.round}: ${c.mode} ${c.packed ? "packed" : "split"} evil=${c.evil ?? "none"} ` +
    `mrg=${c.mrg ? 1 : 0} indirect=${c.indirect ? 1 : 0} ` +
    `in_order=${c.inOrder ? 1 : 0} pool=${c.poolSize} size=${c.sizes.join("+")} events=` +
    c.events.map((e) => e.kind === "none" ? "-" : `${e.kind}:${e.port}:${e.ms}ms`).join(",");
}

/** Forward `frames` frames (as generated by the wires) under `config`; the checkpoint's verdict. */
export async function runRound(config: RoundConfig, frames: number): Promise<RoundResult> {
  const t0 = performance.now();
  const res: RoundResult = {
    config,
    frames: 0,
    errorsInjected: 0,
    flaps: 0,
    cycles: 0,
    ms: 0,
    leaked: 0,
    failures: [],
  };
  const sims: SimTransport[] = [];
  const ports: Port[] = [];
  let pool: MbufPool | null = null;
  try {
    for (let i = 0; i < 2; i++) {
      sims.push(
        new SimTransport({
          name: `soak${i}`,
          packed: config.packed,
          indirect: config.indirect,
          mrgRxbuf: config.mrg,
          inOrder: config.inOrder,
          mtu: config.mrg ? 9000 : undefined,
          evil: config.evil,
          gen: { sizes: config.sizes },
        }),
      );
    }
    pool = new MbufPool({ count: config.poolSize, kind: sims[0].dmaKinds[0], name: "soak" });
    for (let i = 0; i < 2; i++) {
      const port = new Port(i, sims[i], { log: () => {} });
      ports.push(port);
      port.configure({
        pool,
        rxd: RING,
        txd: RING,
        mrgRxbuf: config.mrg,
        mtu: config.mrg ? 9000 : 1500,
      });
      port.start();
    }
    const engine = createEngine(config.mode, { pool, burst: BURST, peers: [] });
    const loop = new ForwardLoop(ports, buildStreams(ports, config.mode, 1, BURST), engine);
    const generated = () => sims.reduce((a, s) => a + s.wire.counters.generated, 0);
    for (let slice = 0; slice < SLICES; slice++) {
      const left = Math.ceil((frames - generated()) / (SLICES - slice));
      if (left > 0) {
        const until = performance.now() + SLICE_MAX_MS;
        await loop.run({ maxPackets: left, quietMs: STALL_MS, untilMs: until });
        if (loop.packets < left && performance.now() < until) {
          res.failures.push(
            `stall: nothing moved for ${STALL_MS} ms in slice ${slice} after ${loop.packets} ` +
              `frames (pool ${pool.available} of ${pool.count} free)`,
          );
          break;
        }
      }
      const ev = config.events[slice];
      if (ev === undefined || ev.kind === "none") continue;
      if (ev.kind === "flap") {
        sims[ev.port].setLink(false);
        await loop.run({ untilMs: performance.now() + ev.ms });
        sims[ev.port].setLink(true);
        res.flaps++;
      } else {
        ports[ev.port].stop();
        await loop.run({ untilMs: performance.now() + ev.ms });
        ports[ev.port].start();
        res.cycles++;
      }
    }
    // Checkpoint: what the CLI does at the end (mod/fwd/cli.ts), then the accounting.
    for (const s of sims) s.wire.stopGenerator();
    await loop.drain(20, 2000);
    reclaimSent(ports, 1);
    for (const p of ports) p.stop();
    const reporter = new StatsReporter(
      ports,
      sims.map((s) => s.name),
      "json",
      0,
      (i) => sims[i].wire.counters as unknown as Record<string, number>,
    );
    const rows = reporter.rows();
    const acc = accountFrames(config.mode, rows)!;
    // Every frame seen again or counted as a drop, none corrupted; TX errors only from a device
    // that bends TX completions on purpose (the accounting calls any TX error a failure).
    const holds = acc.directions.every((d) => d.lost === 0 && d.badFrames === 0);
    if (!holds || !(acc.ok || (config.evil !== null && TX_EVIL.includes(config.evil)))) {
      const detail = rows.map((r) =>
        `port ${r.port}: rx ${r.rxPackets} tx ${r.txPackets} rxDropped ${r.rxDropped} ` +
        `(rxErrors ${r.rxErrors}, rxNoMbuf ${r.rxNoMbuf}) txDropped ${r.txDropped} ` +
        `missed ${r.wire!.missed} txLinkDown ${r.wire!.txLinkDown}`
      ).join("; ");
      res.failures.push(`accounting: ${acc.message} [${detail}]`);
    }
    res.leaked = pool.count - pool.available;
    if (res.leaked !== 0) {
      res.failures.push(`leak: ${pool.available} of ${pool.count} buffers back after stop`);
    }
  } catch (e) {
    res.failures.push(`exception: ${(e as Error).stack?.split("\n").slice(0, 3).join(" | ")}`);
  } finally {
    res.frames = sims.reduce((a, s) => a + s.wire.counters.generated, 0);
    res.errorsInjected = sims.reduce((a, s) => a + s.device.evilCount, 0);
    for (const p of ports) {
      try {
        p.close();
      } catch (e) {
        res.failures.push(`exception on close: ${(e as Error).message}`);
      }
    }
    for (const s of sims) s.close();
    pool?.close();
    res.ms = performance.now() - t0;
  }
  return res;
}

export interface SoakOptions {
  /** Frames to generate in all (rounds follow one another until then). */
  frames: number;
  roundFrames: number;
  seed: number;
  /** Run exactly this many rounds instead (each of `roundFrames`). */
  rounds?: number;
  /** Round numbers go up by this much (default 1): a few rounds can cover every dimension. */
  stride?: number;
  /** Run only this round (to reproduce a failure). */
  only?: number;
  /** Called after each round. */
  onRound?: (r: RoundResult) => void;
}

/** Run rounds until `frames` frames were generated (or `rounds` rounds ran); every round's result. */
export async function soak(o: SoakOptions): Promise<RoundResult[]> {
  const results: RoundResult[] = [];
  let total = 0;
  const stride = o.only !== undefined ? 1 : o.stride ?? 1;
  const more = (k: number) =>
    o.only !== undefined ? k === 0 : o.rounds !== undefined ? k < o.rounds : total < o.frames;
  for (let k = 0; more(k); k++) {
    const round = (o.only ?? 0) + k * stride;
    const budget = o.rounds !== undefined || o.only !== undefined
      ? o.roundFrames
      : Math.min(o.roundFrames, o.frames - total);
    const r = await runRound(roundConfig(o.seed, round), budget);
    results.push(r);
    o.onRound?.(r);
    total += Math.max(r.frames, 1);
  }
  return results;
}

/** The table per configuration and the totals, as text. */
export function summarize(results: RoundResult[], seed: number): string {
  const groups = new Map<string, RoundResult[]>();
  for (const r of results) {
    const c = r.config;
    const key = `${c.packed ? "packed" : "split "} ${(c.evil ?? "none").padEnd(17)} mrg=${
      c.mrg ? 1 : 0
    } in_order=${c.inOrder ? 1 : 0} pool=${c.small ? "small" : "ample"}`;
    groups.set(key, [...(groups.get(key) ?? []), r]);
  }
  const sum = (rs: RoundResult[], f: (r: RoundResult) => number) =>
    rs.reduce((a, r) => a + f(r), 0);
  const lines = [
    `${"configuration".padEnd(56)} ${"rounds".padStart(6)} ${"frames".padStart(12)} ` +
    `${"errors".padStart(9)} ${"flaps".padStart(5)} ${"cycles".padStart(6)} ${
      "failed".padStart(6)
    }`,
  ];
  for (const [key, rs] of [...groups].sort(([a], [b]) => a.localeCompare(b))) {
    lines.push(
      `${key.padEnd(56)} ${String(rs.length).padStart(6)} ${
        String(sum(rs, (r) => r.frames)).padStart(12)
      } ${String(sum(rs, (r) => r.errorsInjected)).padStart(9)} ${
        String(sum(rs, (r) => r.flaps)).padStart(5)
      } ${String(sum(rs, (r) => r.cycles)).padStart(6)} ${
        String(rs.filter((r) => r.failures.length > 0).length).padStart(6)
      }`,
    );
  }
  const failed = results.filter((r) => r.failures.length > 0).length;
  lines.push(
    `seed ${seed}: ${results.length} rounds, ${sum(results, (r) => r.frames)} frames, ` +
      `${sum(results, (r) => r.errorsInjected)} errors injected, ${
        sum(results, (r) => r.flaps)
      } link flaps, ${sum(results, (r) => r.cycles)} stop/start cycles, ` +
      `${(sum(results, (r) => r.ms) / 1000).toFixed(1)} s, leaks: ${
        sum(results, (r) => r.leaked)
      }, failed rounds: ${failed}`,
  );
  return lines.join("\n");
}

if (import.meta.main) {
  const usage = (msg: string): never => {
    console.error(`soak: ${msg}`);
    Deno.exit(2);
  };
  let values;
  try {
    ({ values } = parseArgs({
      args: Deno.args,
      strict: true,
      options: {
        frames: { type: "string", default: "10000000" },
        "round-frames": { type: "string", default: "400000" },
        seed: { type: "string", default: "1" },
        rounds: { type: "string" },
        only: { type: "string" },
      },
    }));
  } catch (e) {
    usage((e as Error).message);
  }
  const num = (flag: string, v: string | undefined) => {
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!/^\d+(e\d+)?$/.test(v) || !Number.isSafeInteger(n)) usage(`--${flag} ${v}: a count`);
    return n;
  };
  const seed = num("seed", values!.seed)!;
  const results = await soak({
    frames: num("frames", values!.frames)!,
    roundFrames: Math.max(1000, num("round-frames", values!["round-frames"])!),
    seed,
    rounds: num("rounds", values!.rounds),
    only: num("only", values!.only),
    onRound: (r) => {
      if (r.failures.length === 0) return;
      console.log(`FAIL ${describe(r.config)}`);
      for (const f of r.failures) console.log(`  ${f}`);
    },
  });
  console.log(summarize(results, seed));
  Deno.exit(results.some((r) => r.failures.length > 0) ? 1 : 0);
}
