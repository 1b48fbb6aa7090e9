/**
 * `vpmd fwd`: parse the flags, open the ports, share one buffer pool between them, run the
 * forwarding loop with live statistics, stop cleanly (SIGINT, SIGTERM, SIGHUP or --duration),
 * drain what is in flight, and print the summary (with --json, the last stdout line).
 */
import { parseArgs } from "cli-args";
import { argsErrorMessage } from "./args_error.ts";
import { MbufPool, poolOfFirstKind } from "../mod/mbuf.ts";
import { commonDmaKinds } from "../mod/open.ts";
import { Port, ringRoomFor } from "../mod/port.ts";
import {
  deviceKey,
  formatPortSpec,
  openTransport,
  parsePortSpec,
  type PortSpec,
} from "../mod/portspec.ts";
import { DeviceError, type VirtioTransport } from "../mod/virtio/transport.ts";
import { parseMac } from "../mod/mac.ts";
import { checkTxpkts, createEngine, type Mode, MODES } from "../mod/fwd/engines.ts";
import { ForwardLoop } from "../mod/fwd/loop.ts";
import { buildStreams, reclaimSent } from "../mod/fwd/streams.ts";
import { type OutputStyle, StatsReporter, totals } from "./stats.ts";
import type { Accounting, WireCounters } from "./accounting.ts";
import { applyFilters, FILTER_FLAGS, type FilterOptions, parseFilterFlags } from "./filters.ts";
import { has, NetFeature } from "../mod/virtio/constants.ts";
import { Eth } from "../mod/eth.ts";
import { parseRssFlag } from "./rss_flag.ts";
import { planWorkers, WorkerGroup, WorkerUsageError } from "../mod/fwd/workers.ts";
import type { WorkerPipeline } from "../mod/fwd/worker_protocol.ts";
import { threadCpuMs } from "../ffi/thread.ts";
import { StopSignals } from "./signals.ts";
import { NoticePrinter } from "./notices.ts";
import { DATAPLANE_FLAGS, type DataPlaneOptions, parseDataPlaneFlags } from "./dataplane_flags.ts";
import { DataPlane } from "./dataplane.ts";

/** A usage problem: the CLI prints it as one line and exits with code 2. */
export class UsageError extends Error {}

export interface FwdOptions {
  specs: PortSpec[];
  mode: Mode;
  burst: number;
  /** Ring sizes asked for; undefined: the port's default (256, or less if the device has less). */
  rxd: number | undefined;
  txd: number | undefined;
  queues: number;
  durationSec: number;
  /** Stop after this many frames received (txonly: sent) by all ports; undefined: no limit. */
  maxPackets: number | undefined;
  statsPeriodSec: number;
  json: boolean;
  peers: Uint8Array[];
  txpkts: number[];
  vlanStrip: boolean;
  vlanInsert: number | undefined;
  mbufs: number | undefined;
  /** --promisc/--no-promisc, --allmulti, --mac, --mcast, --vlan-filter, --mtu (./filters.ts). */
  filters: FilterOptions;
  /** --pipeline, --pcap, --tx-pcap and their options (./dataplane_flags.ts). */
  dataPlane: DataPlaneOptions;
  /** --rss: the hash types (HashType bits) to configure, or undefined. */
  rss: number | undefined;
  /** --cores: forwarding workers (1: the main thread forwards, mod/fwd/workers.ts). */
  cores: number;
}

const BUFFER_ROOM = 2048;
/** The longest virtio-net header (5.1.6: with MRG_RXBUF or VERSION_1). */
const NET_HDR_MAX = 12;
/** Shortest statistics period: a line per 10 ms is already more than anyone reads. */
const MIN_STATS_PERIOD = 0.01;
/** Draining: stop once nothing moved for this long, and never take longer than the cap. */
const DRAIN_QUIET_MS = 20;
const DRAIN_MAX_MS = 2000;
/** txonly frames carry stream number TX_STREAM_BASE + the sending port's id. */
const TX_STREAM_BASE = 0x100;

function int(flag: string, v: string | undefined, min: number, max: number, dflt: number): number {
  if (v === undefined) return dflt;
  if (!/^\d+$/.test(v) || Number(v) < min || Number(v) > max) {
    throw new UsageError(`--${flag} ${v}: expected an integer from ${min} to ${max}`);
  }
  return Number(v);
}

/** A number of seconds (decimal, like 2 or 0.5); 0 only where `zero` says what it means. */
function seconds(flag: string, v: string | undefined, dflt: number, zero?: string): number {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!/^\d+(\.\d+)?$/.test(v) || (n === 0 && zero === undefined)) {
    throw new UsageError(
      `--${flag} ${v}: expected a number of seconds ${
        zero === undefined ? "above 0 (leave it out to run until Ctrl-C)" : `(0: ${zero})`
      }`,
    );
  }
  return n;
}

function statsPeriod(v: string | undefined): number {
  const n = seconds("stats-period", v, 1, "no periodic statistics");
  if (n > 0 && n < MIN_STATS_PERIOD) {
    throw new UsageError(
      `--stats-period ${v}: expected at least ${MIN_STATS_PERIOD} seconds (0: no periodic statistics)`,
    );
  }
  return n;
}

function parseFlags(args: string[]) {
  try {
    return parseArgs({
      args,
      allowPositionals: true,
      strict: true,
      options: {
        mode: { type: "string" },
        burst: { type: "string" },
        rxd: { type: "string" },
        txd: { type: "string" },
        queues: { type: "string" },
        duration: { type: "string" },
        "max-packets": { type: "string" },
        "stats-period": { type: "string" },
        json: { type: "boolean" },
        "eth-peer": { type: "string", multiple: true },
        txpkts: { type: "string" },
        "vlan-strip": { type: "boolean" },
        "vlan-insert": { type: "string" },
        mbufs: { type: "string" },
        rss: { type: "string" },
        cores: { type: "string" },
        ...FILTER_FLAGS,
        ...DATAPLANE_FLAGS,
      },
    });
  } catch (e) {
    throw new UsageError(argsErrorMessage(e, "fwd"));
  }
}

/** Parse `vpmd fwd` arguments; every problem is a UsageError with a one-line message. */
export function parseFwdArgs(args: string[]): FwdOptions {
  const parsed = parseFlags(args);
  const v = parsed.values;
  if (parsed.positionals.length === 0) {
    throw new UsageError("no ports given (e.g. vpmd fwd sim:p0 sim:p1)");
  }
  const specs = parsed.positionals.map((s: string) => {
    try {
      return parsePortSpec(s);
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
  });
  const seen = new Map<string, PortSpec>();
  for (const s of specs) {
    const key = deviceKey(s);
    const first = seen.get(key);
    if (first === undefined) {
      seen.set(key, s);
      continue;
    }
    const [a, b] = [first, s].map((p) => `'${p.kind === "pci" ? "" : p.kind + ":"}${p.target}'`);
    throw new UsageError(a === b ? `port ${a} given twice` : `ports ${a} and ${b} are one device`);
  }
  const mode = (v.mode ?? "io") as Mode;
  if (!MODES.includes(mode)) {
    throw new UsageError(`--mode ${v.mode}: expected one of ${MODES.join(", ")}`);
  }
  const peers: Uint8Array[] = [];
  for (const p of v["eth-peer"] ?? []) {
    const comma = p.indexOf(",");
    const id = comma < 0 ? "" : p.slice(0, comma);
    if (!/^\d+$/.test(id) || Number(id) >= specs.length) {
      throw new UsageError(
        `--eth-peer ${p}: expected PORT,MAC with PORT from 0 to ${specs.length - 1}`,
      );
    }
    try {
      peers[Number(id)] = parseMac(p.slice(comma + 1));
    } catch (e) {
      throw new UsageError(`--eth-peer ${p}: ${(e as Error).message}`);
    }
  }
  let txpkts = [64];
  if (v.txpkts !== undefined) {
    if (!/^\d+(,\d+)*$/.test(v.txpkts)) {
      throw new UsageError(`--txpkts ${v.txpkts}: expected lengths like 64 or 64,1400`);
    }
    txpkts = v.txpkts.split(",").map(Number);
    const err = checkTxpkts(txpkts, BUFFER_ROOM);
    if (err !== null) throw new UsageError(err);
  }
  const o: FwdOptions = {
    specs,
    mode,
    burst: int("burst", v.burst, 1, 512, 32),
    rxd: v.rxd === undefined ? undefined : int("rxd", v.rxd, 0, 32768, 0),
    txd: v.txd === undefined ? undefined : int("txd", v.txd, 0, 32768, 0),
    queues: int("queues", v.queues, 1, 128, 1),
    durationSec: seconds("duration", v.duration, 0),
    maxPackets: v["max-packets"] === undefined
      ? undefined
      : int("max-packets", v["max-packets"], 1, Number.MAX_SAFE_INTEGER, 0),
    statsPeriodSec: statsPeriod(v["stats-period"]),
    json: v.json === true,
    peers,
    txpkts,
    vlanStrip: v["vlan-strip"] === true,
    vlanInsert: v["vlan-insert"] === undefined
      ? undefined
      : int("vlan-insert", v["vlan-insert"], 0, 4095, 0),
    mbufs: v.mbufs === undefined
      ? undefined
      : int("mbufs", v.mbufs, 64, MbufPool.maxCount(BUFFER_ROOM), 0),
    filters: usage(() => parseFilterFlags(v, specs.length)),
    dataPlane: usage(() => parseDataPlaneFlags(v, specs.length)),
    rss: v.rss === undefined ? undefined : usage(() => parseRssFlag(v.rss!)),
    cores: int("cores", v.cores, 1, 64, 1),
  };
  const dp = o.dataPlane;
  if (o.cores > 1 && dp.pcaps.length > 0) {
    throw new UsageError(
      `--pcap runs on one core (a capture file is written by one thread, its frames in the ` +
        `order they passed); leave out --cores ${o.cores}`,
    );
  }
  if (o.cores > 1 && dp.txPcap !== undefined) {
    throw new UsageError(
      `--tx-pcap runs on one core (a replay is one sequence of frames, sent in order); leave ` +
        `out --cores ${o.cores}`,
    );
  }
  return o;
}

function usage<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

function asUsage(e: unknown): never {
  throw new UsageError((e as Error).message);
}

/** At least the ring size `configure` will take (a device that fixes its sizes ignores --rxd/--txd). */
function ringEstimate(t: VirtioTransport, asked: number | undefined): number {
  return asked !== undefined && asked > 0 && !t.queueSizeFixed
    ? asked
    : Math.max(256, t.queueMaxSize(0));
}

export async function runForwarder(args: string[]): Promise<number> {
  const o = parseFwdArgs(args);
  const names = o.specs.map(formatPortSpec);
  const transports: VirtioTransport[] = [];
  const ports: Port[] = [];
  let pool: MbufPool | null = null;
  let signals: StopSignals | null = null;
  let dp: DataPlane | null = null;
  const log = (msg: string) => console.error(msg);
  const notices = new NoticePrinter(o.json);
  try {
    dp = await DataPlane.prepare(o.dataPlane).catch(asUsage);
    for (const [i, s] of o.specs.entries()) {
      try {
        transports.push(openTransport(s, notices.sink(i, names[i])));
      } catch (e) {
        // No such device is bad usage; one that answers wrongly has failed.
        if (e instanceof DeviceError) throw e;
        throw new UsageError((e as Error).message);
      }
    }
    const kinds = commonDmaKinds(transports);
    if (kinds.length === 0) {
      throw new UsageError(
        `these ports share no kind of DMA memory (${
          transports.map((t) => `${t.name}: ${t.dmaKinds.join("/")}`).join("; ")
        }); use them in separate forwarders`,
      );
    }
    // Buffers a frame may take: txonly's segments, or a received frame of the MTU (mergeable).
    const mtu = o.filters.mtu ?? Eth.MTU;
    const nseg = o.mode === "txonly"
      ? o.txpkts.length
      : Math.ceil((mtu + Eth.HDR + Eth.VLAN_TAG + NET_HDR_MAX) / BUFFER_ROOM);
    const need = transports.reduce(
      (a, t) => a + o.queues * (ringEstimate(t, o.rxd) + ringEstimate(t, o.txd) * nseg),
      0,
    ) + transports.length * o.queues * o.burst * nseg * 2 + 1024;
    const count = o.mbufs ?? Math.max(8192, need);
    // Room in the pool for every port's rings, so that each device sees one memory region.
    const rings = { queues: o.queues, rxd: o.rxd, txd: o.txd };
    const ringRoom = Math.max(
      ...kinds.map((k) => transports.reduce((a, t) => a + ringRoomFor(t, k, rings), 0)),
    );
    pool = poolOfFirstKind(
      kinds,
      { count, dataRoom: BUFFER_ROOM, name: "vpmd-fwd", ringRoom },
      log,
    );
    for (let i = 0; i < transports.length; i++) {
      const port = new Port(i, transports[i], { log });
      ports.push(port);
      try {
        port.configure({
          pool,
          queues: o.queues,
          rxd: o.rxd,
          txd: o.txd,
          vlanStrip: o.vlanStrip,
          vlanInsert: o.vlanInsert,
          mtu: o.filters.mtu,
          vlanFilter: o.filters.vlans.length > 0,
          rss: o.rss === undefined ? undefined : { hashTypes: o.rss },
          detachedQueues: o.cores > 1,
        });
        applyFilters(port, i, o.filters);
      } catch (e) {
        throw new UsageError((e as Error).message);
      }
    }
    // Checked against what the devices allow (their ring sizes, MTU), before any device starts.
    if (o.mode === "txonly") checkTxpktsFit(o, ports, names);
    const min = minimumPool(ports, o, pool.dataRoom);
    if (pool.count < min.count) {
      throw new UsageError(
        `--mbufs ${pool.count} is too small: ${min.why}; use --mbufs ${min.count} or more ` +
          `(or smaller rings, --rxd/--txd)`,
      );
    }
    // From here on devices run: a signal must stop them cleanly, and a second one still reset them.
    signals = new StopSignals((sig) => {
      log(`vpmd fwd: ${sig} again: resetting the devices and exiting now`);
      for (const p of ports) {
        try {
          p.stop();
        } catch (e) {
          log(`port ${p.id}: reset: ${(e as Error).message}`);
        }
      }
    });
    for (let i = 0; i < ports.length; i++) {
      const port = ports[i];
      try {
        port.start();
      } catch (e) {
        // configure() found every usage problem: what fails now is the device (exit 1).
        throw new Error(`${names[i]}: ${withoutName(transports[i], e)}`);
      }
      if (!port.linkUp) log(`Port ${i} (${names[i]}): link down`);
      port.onLinkChange = (up) => log(`Port ${i}: link state change event (${up ? "up" : "down"})`);
    }
    return await forward(o, names, ports, pool, signals, notices, dp);
  } finally {
    await dp?.close(log);
    for (const p of ports) {
      try {
        p.close();
      } catch (e) {
        log(`port ${p.id}: close: ${(e as Error).message}`);
      }
    }
    for (const t of transports) {
      try {
        t.close();
      } catch (e) {
        log(`${t.name}: close: ${(e as Error).message}`);
      }
    }
    pool?.close();
    signals?.close();
  }
}

/**
 * The smallest pool that forwards at full rate: every RX ring full, every TX ring full of frames
 * the device has not finished (none in rxonly), and the buffers of one burst being received or
 * built (a burst is sent or freed before the next begins). With fewer, a TX ring that fills takes
 * the buffers receive needs, and frames flow only as fast as buffers come back one by one.
 */
export function minimumPool(
  ports: Port[],
  o: Pick<FwdOptions, "mode" | "burst" | "txpkts">,
  dataRoom: number,
): { count: number; why: string } {
  let rx = 0;
  let tx = 0;
  let perFrame = o.mode === "txonly" ? o.txpkts.length : 1;
  for (const p of ports) {
    const l = p.limits;
    rx += l.queues * l.rxd;
    if (o.mode !== "rxonly") tx += l.queues * l.txd;
    if (o.mode !== "txonly" && has(p.features, NetFeature.MRG_RXBUF)) {
      perFrame = Math.max(perFrame, Math.ceil((l.maxFrame + l.hdrSize) / dataRoom));
    }
  }
  const burst = o.burst * perFrame;
  const rings = tx > 0
    ? `RX rings hold ${rx} buffers, TX rings ${tx}`
    : `RX rings hold ${rx} buffers`;
  return { count: rx + tx + burst, why: `${rings}, a burst takes ${burst}` };
}

/**
 * txonly: a frame of `--txpkts` segments needs one TX descriptor per segment, so no more segments
 * than the TX ring has (the ring would refuse every frame), and no frame longer than the port's
 * largest (MTU + Ethernet header + a VLAN tag, which --vlan-insert adds).
 */
function checkTxpktsFit(o: FwdOptions, ports: Port[], names: string[]): void {
  const total = o.txpkts.reduce((a, b) => a + b, 0) +
    (o.vlanInsert === undefined ? 0 : Eth.VLAN_TAG);
  for (let i = 0; i < ports.length; i++) {
    const l = ports[i].limits;
    if (o.txpkts.length > l.txd) {
      throw new UsageError(
        `--txpkts: a frame of ${o.txpkts.length} segments needs ${o.txpkts.length} TX ` +
          `descriptors, but the TX ring of port ${i} (${names[i]}) has ${l.txd}; use at most ` +
          `${l.txd} segments or a bigger TX ring (--txd)`,
      );
    }
    if (total > l.maxFrame) {
      throw new UsageError(
        `--txpkts: a ${total}-byte frame${
          o.vlanInsert === undefined ? "" : " (with its VLAN tag)"
        } is longer than port ${i} (${names[i]}) takes at MTU ${l.mtu}, ${l.maxFrame} bytes; ` +
          `use shorter segments or a bigger --mtu`,
      );
    }
  }
}

async function forward(
  o: FwdOptions,
  names: string[],
  ports: Port[],
  pool: MbufPool,
  signals: StopSignals,
  notices: NoticePrinter,
  dp: DataPlane,
): Promise<number> {
  const log = (msg: string) => console.error(msg);
  const wires = ports.map((p) => p.wire);
  // Sources outside vpmd (a vhost-user backend, a VM's traffic) never fall quiet: for them the
  // drain only gives what is already in flight a short moment.
  const allSim = wires.every((w) => w !== null);
  const drainMaxMs = allSim ? DRAIN_MAX_MS : DRAIN_QUIET_MS * 5;
  const group = o.cores > 1
    ? await startWorkers(o, ports, pool, drainMaxMs, dp.workerPipeline(ports, names))
    : null;
  const stop = () => group !== null ? group.stop() : loop.stop();
  const engine = await dp.start({ ports, names, pool, burst: o.burst, log, stop }).catch(asUsage) ??
    createEngine(o.mode, {
      pool,
      burst: o.burst,
      peers: o.peers,
      txpkts: o.txpkts,
      txStreamBase: TX_STREAM_BASE,
    });
  const streams = buildStreams(ports, o.mode, o.queues, o.burst);
  const loop = new ForwardLoop(ports, streams, engine);
  const style: OutputStyle = o.json ? "json" : Deno.stdout.isTerminal() ? "terminal" : "plain";
  const wireOf = (i: number): WireCounters | null => {
    if (group !== null) return group.wire(i);
    const w = wires[i];
    return w === null ? null : w.counters as unknown as WireCounters;
  };
  const start = performance.now();
  const reporter = new StatsReporter(ports, names, style, o.statsPeriodSec * 1000, wireOf, start);
  signals.onStop = stop;
  /** One core: how much of the forwarding time the main thread ran (else `workers` says). */
  let mainThread: ReturnType<typeof busyOf> | null = null;
  try {
    const run = {
      untilMs: o.durationSec > 0 ? start + o.durationSec * 1000 : undefined,
      maxPackets: o.maxPackets,
      onClock: (now: number) => reporter.tick(now),
    };
    let byMax = false;
    if (group !== null) {
      await group.run(run);
      byMax = group.reachedMax;
      await group.drain();
    } else {
      const cpu0 = threadCpuMs();
      await loop.run(run);
      byMax = o.maxPackets !== undefined && loop.packets >= o.maxPackets;
      mainThread = busyOf(performance.now() - start, threadCpuMs() - cpu0);
      for (const w of wires) w?.stopGenerator();
      // txonly drains without its engine: a burst of 0 takes each TX queue's last notification
      // check (Port.txIdle) now, so the device sends what is queued.
      reclaimSent(ports, o.queues);
      await loop.drain(DRAIN_QUIET_MS, drainMaxMs, o.mode === "txonly");
    }
    const durationSec = (performance.now() - start) / 1000;
    // The summary reports each link as forwarding left it: stopping a port takes its link down.
    const linkAtEnd = ports.map((p) => p.linkUp);
    reclaimSent(ports, o.queues);
    for (const p of ports) p.stop();
    if (group !== null) {
      await group.release();
      dp.countedInWorkers(group.pipelineStats());
    }
    const rows = reporter.rows(linkAtEnd);
    if (o.queues > 1) {
      for (const [i, p] of ports.entries()) {
        const { rx, tx } = p.queueStats;
        rows[i].queues = rx.map((r, q) => ({ rxPackets: r.rxPackets, txPackets: tx[q].txPackets }));
      }
    }
    const account = dp.account(o.mode, rows);
    const summary = {
      ports: rows,
      totals: totals(rows),
      durationSec: Math.round(durationSec * 1000) / 1000,
      mode: o.mode,
      burst: o.burst,
      stoppedBy: signals.by ?? dp.stoppedBy ??
        (byMax ? "max-packets" : o.durationSec > 0 ? "duration" : "stop"),
      ...(account === null ? {} : { accounting: account }),
      ...(group === null ? { mainThread } : { workers: group.report() }),
      poolAvailable: pool.available + (group?.poolAvailable ?? 0),
      poolSize: pool.count,
      ...dp.summary(),
    };
    notices.flush();
    notices.endJson();
    if (o.json) {
      console.log(JSON.stringify(summary));
    } else {
      printSummary(summary.ports, summary.totals, durationSec, account);
    }
    return 0;
  } finally {
    await group?.close();
    signals.close();
  }
}

/** Wall-clock and CPU time of a forwarding thread (ms), and the share it ran (WorkerReport). */
function busyOf(wallMs: number, cpuMs: number) {
  return {
    wallMs: Math.round(wallMs),
    cpuMs: Math.round(cpuMs),
    onCpu: wallMs > 0 ? Math.round((cpuMs / wallMs) * 1000) / 1000 : 0,
  };
}

/** --cores C > 1: plan the workers (a plan that cannot work is bad usage) and start them. */
async function startWorkers(
  o: FwdOptions,
  ports: Port[],
  pool: MbufPool,
  drainMaxMs: number,
  pipeline: WorkerPipeline | null,
): Promise<WorkerGroup> {
  const plan = usage(() =>
    planWorkers({
      ports,
      pool,
      cores: o.cores,
      mode: o.mode,
      queues: o.queues,
      burst: o.burst,
      peers: o.peers,
      txpkts: o.txpkts,
      txStreamBase: TX_STREAM_BASE,
      drain: { quietMs: DRAIN_QUIET_MS, maxMs: drainMaxMs },
      pipeline,
    })
  );
  try {
    return await WorkerGroup.start(plan, ports, (msg) => console.error(msg));
  } catch (e) {
    // A pipeline that a worker cannot load, or whose init throws: exit 2, as on one core.
    if (e instanceof WorkerUsageError) throw new UsageError(e.message);
    throw e;
  }
}

/** An error's message without the transport's own name in front (the caller names the port). */
function withoutName(t: VirtioTransport, e: unknown): string {
  const m = (e as Error).message;
  return m.startsWith(`${t.name}: `) ? m.slice(t.name.length + 2) : m;
}

function printSummary(
  rows: ReturnType<StatsReporter["rows"]>,
  t: ReturnType<typeof totals>,
  durationSec: number,
  account: Accounting | null,
): void {
  const lines = [`\nForwarding stopped after ${durationSec.toFixed(2)} s.`];
  for (const r of rows) {
    lines.push(
      `  port ${r.port} (${r.name}): RX ${r.rxPackets} frames ${r.rxBytes} bytes, ` +
        `TX ${r.txPackets} frames ${r.txBytes} bytes, RX dropped ${r.rxDropped} ` +
        `(nombuf ${r.rxNoMbuf}, errors ${r.rxErrors}), TX dropped ${r.txDropped} (errors ${r.txErrors})`,
    );
    if (r.wire !== undefined) {
      lines.push(
        `    wire: ${Object.entries(r.wire).map(([k, v]) => `${k} ${v}`).join(", ")}`,
      );
    }
  }
  lines.push(
    `  total: RX ${t.rxPackets}, TX ${t.txPackets}, dropped ${t.rxDropped + t.txDropped}, ` +
      `${(t.rxPackets / durationSec / 1e6).toFixed(3)} Mpps received`,
  );
  if (account !== null) {
    for (const d of account.directions) {
      const what = d.from === d.to ? `port ${d.from}` : `port ${d.from} -> port ${d.to}`;
      const bad = d.badFrames > 0 ? ` + ${d.badFrames} bad` : "";
      const lost = d.lost !== 0 ? ` (${d.lost} unaccounted)` : "";
      lines.push(
        `  stream ${what}: ${d.generated} frames = ${d.checked} checked${bad} + ${d.drops} ` +
          `counted drops${lost}`,
      );
    }
    lines.push(account.message);
  }
  console.log(lines.join("\n"));
}
