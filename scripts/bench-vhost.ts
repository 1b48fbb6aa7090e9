/**
 * vpmd vs DPDK's own virtio_user front-end, against the same DPDK vhost PMD testpmd.
 *
 *   deno run -A scripts/bench-vhost.ts [--reps 5] [--seconds 3] [--tests rxonly,txonly,loop]
 *                                      [--mrg 0|1] [--in-order 0|1] [--packed 0|1] [--defaults]
 *                                      [--fast]
 *
 * One vhost testpmd (server socket, forwarding on CPU 1) serves every run. Each repetition runs
 * DPDK's `net_virtio_user` testpmd (A) and vpmd (B) one after the other on CPU 0, alternating
 * which goes first, and reads the rate on the vhost side through its telemetry socket over the
 * middle of the run: rx-only (vhost txonly, front-end rxonly: frames the vhost side delivered),
 * tx-only (front-end txonly, vhost rxonly: frames it received) and the loopback (vhost `set fwd
 * mac` + `start tx_first 32`, front-end io: frames it received). 64-byte frames, burst 32, 256
 * descriptors per ring. "ratio" is vpmd's median over DPDK's; "paired" the median of each
 * repetition's vpmd/DPDK ratio (its two runs are back to back, so it drifts less with the
 * machine). DPDK's devargs are set to the features vpmd negotiates (split ring,
 * mrg_rxbuf as --mrg, default 0 on both sides: vpmd leaves MRG_RXBUF out while its frames fit one
 * buffer; in_order as --in-order, default 1: vpmd negotiates VIRTIO_F_IN_ORDER unless told not
 * to; packed_vq as --packed, default 0: vpmd's ring kind, `packed=` of its vhost-user port);
 * `--defaults` adds a column with DPDK's default devargs (mrg_rxbuf=1 among them); `--fast` one
 * with DPDK's fastest front-end path (packed_vq=1,in_order=1,vectorized=1,mrg_rxbuf=0 and EAL
 * --force-max-simd-bitwidth=512, dpdk_front.ts) and vpmd's paired ratio to it, run in each
 * repetition right after the other two.
 *
 * Busy cost: vpmd's child measures the time of loop iterations whose burst moved packets (one
 * iteration in 16 timed, a clock read's own cost subtracted; iterations over 50 µs were preempted
 * and are left out); DPDK's figure is testpmd's `--record-core-cycles` "CPU cycles/packet" at
 * its TSC rate. Both come from extra pairs of runs after the throughput runs (`--busy-reps`, DPDK
 * then vpmd back to back), since the machine's speed changes between phases and the two must be
 * compared within one.
 *
 * `--child` is the vpmd side (run by this script pinned to CPU 0; not for direct use). It polls as
 * the forwarder does: an iteration that moved nothing ends with `idlePause` (mod/fwd/loop.ts).
 */
import { parseArgs } from "cli-args";
import { MbufPool, NONE } from "../mod/mbuf.ts";
import { idlePause } from "../mod/fwd/loop.ts";
import type { Port } from "../mod/port.ts";
import { writeTestFrame } from "../mod/testframe.ts";
import { VhostUserTransport } from "../mod/transport/vhost_user.ts";
import { coreCycles, type EthStats, Testpmd } from "../tests/lib/testpmd.ts";
import { childArgs, pinnedDeno } from "./command.ts";
import { FAST_EAL, fastDevargs, sameFeatures, startDpdkFront } from "./dpdk_front.ts";
import { median } from "./median.ts";

const BURST = 32;
const RING = 256;
const FRAME = 64;
/** A timed iteration longer than this (50 µs) was preempted and is not counted as busy time. */
const PREEMPTED_MS = 0.05;

type Test = "rxonly" | "txonly" | "loop";
interface ChildResult {
  packets: number;
  seconds: number;
  busyNsPerPacket: number | null;
  /**
   * Timed runs: the share of the run spent in iterations that moved no packet (waiting for the
   * vhost side: nothing received, or a TX ring it has not emptied), and in iterations left out as
   * descheduled. A front-end that waits is not what sets the rate.
   */
  waitShare: number | null;
  deschedShare: number | null;
}

// ---------------------------------------------------------------------------------------------
// vpmd side (child process)

async function childMain(args: string[]): Promise<void> {
  const { Port } = await import("../mod/port.ts");
  const { values } = parseArgs({
    args,
    options: {
      child: { type: "boolean" },
      test: { type: "string" },
      path: { type: "string" },
      seconds: { type: "string" },
      mrg: { type: "string", default: "0" },
      "in-order": { type: "string", default: "1" },
      packed: { type: "string", default: "0" },
      busy: { type: "boolean", default: false },
      "reuse-frames": { type: "boolean", default: false },
    },
  });
  const test = values.test as Test;
  const seconds = Number(values.seconds);
  const transport = new VhostUserTransport({
    path: values.path!,
    mrg: values.mrg === "1",
    inOrder: values["in-order"] === "1",
    packed: values.packed === "1",
  });
  const pool = new MbufPool({ count: 8192, kind: transport.dmaKinds[0] });
  const port = new Port(0, transport);
  port.configure({ pool, rxd: RING, txd: RING, mrgRxbuf: values.mrg === "1" });
  port.start();
  // Let the backend see the rings before the clock starts.
  const warm = performance.now() + 200;
  while (performance.now() < warm) port.poll();
  console.log(JSON.stringify({ ready: true })); // the parent starts measuring now
  const step = makeStep(test, port, pool, values["reuse-frames"]);
  const r = values.busy ? loopTimed(step, port, seconds) : loop(step, port, seconds);
  port.stop();
  port.close();
  pool.close();
  console.log(JSON.stringify(r));
}

/** Prebuilt 64-byte test frame copied into each TX mbuf (as testpmd's txonly copies its template). */
function frameTemplate(): Uint8Array {
  const b = new Uint8Array(FRAME);
  writeTestFrame(
    b,
    0,
    FRAME,
    0,
    0,
    Uint8Array.of(2, 0, 0, 0, 0, 2),
    Uint8Array.of(2, 0, 0, 0, 0, 1),
  );
  return b;
}

/**
 * One burst of the test's work; returns packets moved. `reuseFrames` (txonly; an experiment, not a
 * workload) leaves a buffer that already holds the frame unwritten: what is left of the cost per
 * packet when the frame's line does not change hands between the two cores (docs/performance.md).
 */
function makeStep(test: Test, port: Port, pool: MbufPool, reuseFrames = false): () => number {
  const pkts = new Uint32Array(BURST);
  // The frame as 8 doubles: data starts 8-byte aligned (headroom 128), so a copy is 8 stores
  // (testpmd's txonly copies its header template per packet too; the frame holds no NaN pattern,
  // so every double is stored back exactly). They are written out, from locals: a loop over the
  // template costs ~14 instructions a word (two bounds checks, overflow checks, the loop's own),
  // written out ~3; and 8-byte stores rather than 4-byte ones leave fewer stores waiting in the
  // store buffer while the frame's line comes back from the core that last read it.
  const tpl = new Float64Array(frameTemplate().buffer);
  if (test === "rxonly") {
    return () => {
      const n = port.rxBurst(0, pkts, BURST);
      pool.freeBulk(pkts, n);
      return n;
    };
  }
  if (test === "txonly") {
    // Raw buffers with every field set here (allocRaw already set next), as testpmd's txonly
    // fills its mbufs.
    const { bufOff, dataOff, dataLen, pktLen, nbSegs, flags } = pool;
    const headroom = pool.headroom;
    if (tpl.length !== 8 || tpl.some(Number.isNaN) || headroom % 8 !== 0) {
      throw new Error("the txonly copy below is written for 64-byte, NaN-free, 8-aligned frames");
    }
    const [d0, d1, d2, d3, d4, d5, d6, d7] = tpl;
    const f64 = pool.region.f64;
    return () => {
      let n = 0;
      for (; n < BURST; n++) {
        const m = pool.allocRaw();
        if (m === NONE) break;
        dataOff[m] = headroom;
        dataLen[m] = FRAME;
        pktLen[m] = FRAME;
        nbSegs[m] = 1;
        flags[m] = 0;
        pkts[n] = m;
      }
      // The frames after every buffer's fields, in a loop of their own: the store buffer then
      // holds frame stores only, so more of the frames' lines are on their way back from the
      // vhost's core at once (docs/performance.md, tx-only).
      for (let i = 0; i < n; i++) {
        const q = (bufOff[pkts[i]] + headroom) >>> 3;
        // The compare is written out as the copy is: a loop's own cost would hide the line's.
        if (
          !reuseFrames || f64[q] !== d0 || f64[q + 1] !== d1 || f64[q + 2] !== d2 ||
          f64[q + 3] !== d3 || f64[q + 4] !== d4 || f64[q + 5] !== d5 || f64[q + 6] !== d6 ||
          f64[q + 7] !== d7
        ) {
          f64[q] = d0;
          f64[q + 1] = d1;
          f64[q + 2] = d2;
          f64[q + 3] = d3;
          f64[q + 4] = d4;
          f64[q + 5] = d5;
          f64[q + 6] = d6;
          f64[q + 7] = d7;
        }
      }
      const k = port.txBurst(0, pkts, n);
      for (let i = k; i < n; i++) pool.free(pkts[i]);
      return k;
    };
  }
  return () => {
    const n = port.rxBurst(0, pkts, BURST);
    if (n === 0) {
      port.txIdle(0);
      return 0;
    }
    const k = port.txBurst(0, pkts, n);
    for (let i = k; i < n; i++) pool.free(pkts[i]);
    return n;
  };
}

function loop(step: () => number, port: Port, seconds: number): ChildResult {
  const t0 = performance.now();
  const end = t0 + seconds * 1000;
  let packets = 0;
  for (let i = 1;; i++) {
    const n = step();
    port.poll();
    if (n === 0) idlePause();
    packets += n;
    if ((i & 4095) === 0 && performance.now() > end) break;
  }
  return {
    packets,
    seconds: (performance.now() - t0) / 1000,
    busyNsPerPacket: null,
    waitShare: null,
    deschedShare: null,
  };
}

/**
 * One timed iteration in SAMPLE_EVERY: a clock read costs ~100 ns in Deno (performance.now()),
 * ~3 ns per packet if read after every iteration, enough to slow vpmd's side measurably against
 * DPDK's; sampled, it costs about 0.4 ns per packet.
 */
const SAMPLE_EVERY = 16;

/**
 * Like `loop`, plus the time of a sample of iterations (every SAMPLE_EVERY-th, two clock reads):
 * busy ns per packet from the sampled iterations that moved packets, and the shares of the sampled
 * time spent in iterations that moved nothing (waiting) or that were descheduled.
 */
function loopTimed(step: () => number, port: Port, seconds: number): ChildResult {
  // Cost of one performance.now(), subtracted from every timed iteration: the least of many
  // short samples, so that a descheduled moment does not inflate it.
  let clockMs = Infinity;
  for (let k = 0; k < 2000; k++) {
    const c0 = performance.now();
    for (let i = 0; i < 64; i++) performance.now();
    clockMs = Math.min(clockMs, (performance.now() - c0) / 65);
  }
  const t0 = performance.now();
  const end = t0 + seconds * 1000;
  let packets = 0;
  let busyPackets = 0;
  let busyMs = 0;
  let waitMs = 0;
  let deschedMs = 0;
  let sampledMs = 0;
  for (let i = 1;; i++) {
    if (i % SAMPLE_EVERY !== 0) {
      const n = step();
      port.poll();
      if (n === 0) idlePause();
      packets += n;
      continue;
    }
    const a = performance.now();
    const n = step();
    port.poll();
    if (n === 0) idlePause();
    const b = performance.now();
    // The interval holds one clock read's own cost.
    const dt = b - a - clockMs;
    sampledMs += dt;
    // An iteration this long was descheduled (shared cores): leave it out of the cost.
    if (dt >= PREEMPTED_MS) deschedMs += dt;
    else if (n === 0) waitMs += dt;
    else {
      busyPackets += n;
      busyMs += dt;
    }
    packets += n;
    if (i % (256 * SAMPLE_EVERY) === 0 && b > end) break;
  }
  const totalMs = performance.now() - t0;
  return {
    packets,
    seconds: totalMs / 1000,
    busyNsPerPacket: busyPackets > 0 ? busyMs * 1e6 / busyPackets : null,
    waitShare: waitMs / sampledMs,
    deschedShare: deschedMs / sampledMs,
  };
}

// ---------------------------------------------------------------------------------------------
// orchestration

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The vhost-side counter that measures each test. */
function counter(test: Test, s: EthStats): number {
  return test === "rxonly" ? s.opackets : s.ipackets;
}

interface RunResult {
  mpps: number;
  busyNs: number | null;
}

async function prepareVhost(vhost: Testpmd, test: Test): Promise<void> {
  await vhost.cmd("stop");
  await vhost.cmd(`set fwd ${test === "rxonly" ? "txonly" : test === "txonly" ? "rxonly" : "mac"}`);
  await vhost.cmd("clear port stats all");
  if (test !== "loop") await vhost.cmd("start");
}

/** Measure the vhost-side rate over the middle of a front-end run. */
async function measure(vhost: Testpmd, test: Test, seconds: number): Promise<number> {
  await sleep(700);
  const a = counter(test, vhost.stats());
  const ta = performance.now();
  await sleep(seconds * 1000);
  const b = counter(test, vhost.stats());
  const tb = performance.now();
  return (b - a) / ((tb - ta) / 1000) / 1e6;
}

function lineSplitter(): TransformStream<string, string> {
  let rest = "";
  return new TransformStream({
    transform(chunk, ctl) {
      const parts = (rest + chunk).split("\n");
      rest = parts.pop()!;
      for (const p of parts) ctl.enqueue(p);
    },
    flush(ctl) {
      if (rest) ctl.enqueue(rest);
    },
  });
}

async function waitLinkReady(vhost: Testpmd): Promise<void> {
  // The loop needs the front-end's rings before the vhost side injects its 32 bursts.
  await sleep(500);
  await vhost.cmd("start tx_first 32");
}

async function runDpdk(
  vhost: Testpmd,
  sock: string,
  test: Test,
  seconds: number,
  devargs: string,
  eal: string[] = [],
): Promise<RunResult> {
  await prepareVhost(vhost, test);
  const fwd = test === "loop" ? "io" : test;
  const front = await startDpdkFront({
    sock,
    fwd,
    devargs,
    burst: BURST,
    ring: RING,
    app: ["--record-core-cycles"],
    eal,
  });
  try {
    await front.cmd("start");
    if (test === "loop") await waitLinkReady(vhost);
    const mpps = await measure(vhost, test, seconds);
    const out = await front.cmd("stop", /Done\.|testpmd> /);
    const c = coreCycles(out);
    return { mpps, busyNs: c ? c.perPacket / (c.mhz / 1000) : null };
  } finally {
    await front.stop();
  }
}

async function runVpmd(
  vhost: Testpmd,
  sock: string,
  test: Test,
  seconds: number,
  mrg: string,
  inOrder: string,
  packed: string,
  busy: boolean,
): Promise<RunResult> {
  await prepareVhost(vhost, test);
  const total = seconds + 1.5;
  const child = new Deno.Command("taskset", {
    args: pinnedDeno(
      childArgs(new URL(import.meta.url).pathname, test, sock, total, [
        "--mrg",
        mrg,
        "--in-order",
        inOrder,
        "--packed",
        packed,
        ...(busy ? ["--busy"] : []),
      ]),
    ),
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  // The child's stdout: a "ready" line once its port is up, its result when it ends.
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).pipeThrough(lineSplitter());
  const reader = lines.getReader();
  const stderr = new Response(child.stderr).text();
  let mpps = NaN;
  let result: ChildResult | null = null;
  let failure: unknown = null;
  try {
    const first = await reader.read();
    if (first.done || !first.value.includes("ready")) throw new Error("vpmd child did not start");
    if (test === "loop") await vhost.cmd("start tx_first 32");
    mpps = await measure(vhost, test, seconds);
  } catch (e) {
    failure = e;
  }
  for (;;) {
    const { value, done } = await reader.read(); // the child ends by itself after its duration
    if (done) break;
    if (value.trim().startsWith("{")) result = JSON.parse(value) as ChildResult;
  }
  const status = await child.status;
  if (failure !== null || !status.success || result === null) {
    throw new Error(`vpmd child failed: ${(failure as Error)?.message ?? ""} ${await stderr}`);
  }
  return { mpps, busyNs: busy ? result.busyNsPerPacket : null };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      reps: { type: "string", default: "5" },
      seconds: { type: "string", default: "3" },
      tests: { type: "string", default: "rxonly,txonly,loop" },
      mrg: { type: "string", default: "0" },
      "in-order": { type: "string", default: "1" },
      packed: { type: "string", default: "0" },
      defaults: { type: "boolean", default: false },
      fast: { type: "boolean", default: false },
      "busy-reps": { type: "string", default: "3" },
    },
  });
  const reps = Number(values.reps);
  const seconds = Number(values.seconds);
  const mrg = values.mrg!;
  const inOrder = values["in-order"]!;
  const packed = values.packed!;
  if (![mrg, inOrder, packed].every((v) => ["0", "1"].includes(v))) {
    console.error("bench-vhost: --mrg, --in-order and --packed take 0 or 1");
    Deno.exit(2);
  }
  const tests = values.tests!.split(",") as Test[];
  const same = sameFeatures(mrg, RING, inOrder, packed);
  const sock = `/tmp/vpmd-bench-${Deno.pid}.sock`;
  const vhost = await Testpmd.start({
    vdev: `net_vhost0,iface=${sock},queues=1`,
    fwd: "rxonly",
    lcores: "0,1",
    mainLcore: 0,
    app: [`--burst=${BURST}`],
  });
  const rows: string[] = [];
  try {
    for (const test of tests) {
      const a: number[] = [];
      const d: number[] = [];
      const b: number[] = [];
      const f: number[] = [];
      for (let r = 0; r < reps; r++) {
        const order = r % 2 === 0 ? ["A", "B"] : ["B", "A"];
        for (const who of order) {
          if (who === "A") {
            a.push((await runDpdk(vhost, sock, test, seconds, same)).mpps);
          } else {
            b.push((await runVpmd(vhost, sock, test, seconds, mrg, inOrder, packed, false)).mpps);
          }
        }
        if (values.defaults) d.push((await runDpdk(vhost, sock, test, seconds, "")).mpps);
        if (values.fast) {
          f.push((await runDpdk(vhost, sock, test, seconds, fastDevargs(RING), FAST_EAL)).mpps);
        }
        console.error(
          `${test} rep ${r + 1}: dpdk ${a.at(-1)!.toFixed(2)} vpmd ${b.at(-1)!.toFixed(2)} Mpps` +
            (values.defaults ? ` dpdk-defaults ${d.at(-1)!.toFixed(2)}` : "") +
            (values.fast ? ` dpdk-fast ${f.at(-1)!.toFixed(2)}` : ""),
        );
      }
      const aBusy: number[] = [];
      const bBusy: number[] = [];
      for (let r = 0; r < Number(values["busy-reps"]); r++) {
        const x = await runDpdk(vhost, sock, test, seconds, same);
        const y = await runVpmd(vhost, sock, test, seconds, mrg, inOrder, packed, true);
        if (x.busyNs !== null) aBusy.push(x.busyNs);
        if (y.busyNs !== null) bBusy.push(y.busyNs);
        console.error(
          `${test} busy rep ${r + 1}: dpdk ${x.mpps.toFixed(2)} Mpps ${
            x.busyNs?.toFixed(1)
          } ns/pkt,` +
            ` vpmd ${y.mpps.toFixed(2)} Mpps ${y.busyNs?.toFixed(1)} ns/pkt`,
        );
      }
      const ma = median(a);
      const mb = median(b);
      // The machine's speed drifts between repetitions; each rep's two runs are back to back, so
      // the median of the per-rep ratios is the steadier comparison.
      const paired = median(a.map((x, i) => b[i] / x));
      rows.push(
        `| ${test.padEnd(7)} | ${ma.toFixed(2).padStart(6)} | ${mb.toFixed(2).padStart(6)} | ${
          (mb / ma).toFixed(2).padStart(5)
        } | ${paired.toFixed(2).padStart(6)} | ${median(aBusy).toFixed(1).padStart(6)} | ${
          median(bBusy).toFixed(1).padStart(6)
        } |` +
          (values.defaults ? ` ${median(d).toFixed(2).padStart(6)} |` : "") +
          (values.fast
            ? ` ${median(f).toFixed(2).padStart(6)} | ${
              median(f.map((x, i) => b[i] / x)).toFixed(2).padStart(6)
            } |`
            : ""),
      );
    }
  } finally {
    await vhost.stop();
  }
  console.log(
    `vpmd vs DPDK 22.11 net_virtio_user, same vhost testpmd, 64 B, burst ${BURST}, ring ${RING}, ` +
      `mrg_rxbuf=${mrg}, in_order=${inOrder}, ${packed === "1" ? "packed" : "split"} ring, ` +
      `${reps} alternating reps x ${seconds} s, medians (Mpps at the vhost side)`,
  );
  console.log(
    "| test    |   DPDK |   vpmd | ratio | paired | DPDK ns/pkt busy | vpmd ns/pkt busy |" +
      (values.defaults ? " DPDK defaults |" : "") +
      (values.fast ? " dpdk-fast | paired vs fast |" : ""),
  );
  console.log(
    "|---------|-------:|-------:|------:|-------:|-------:|-------:|" +
      (values.defaults ? "-------:|" : "") + (values.fast ? "-------:|-------:|" : ""),
  );
  for (const r of rows) console.log(r);
  console.log(`command: deno run -A scripts/bench-vhost.ts ${Deno.args.join(" ")}`.trim());
}

if (Deno.args.includes("--child")) await childMain(Deno.args);
else await main();
