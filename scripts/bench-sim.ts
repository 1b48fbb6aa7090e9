/**
 * Driver cost per packet against the simulated device: rxBurst, txBurst and io forwarding
 * (rxBurst + txBurst on the peer port), 64-byte frames, bursts of 32. Only the driver side is
 * timed: the device fills the RX ring (or takes the TX ring) between timed batches, and each batch
 * is a run of back-to-back bursts timed by one pair of clock reads (and one more read after its
 * first burst), so the clock costs nothing per packet. Rounds are interleaved (rx, tx, io, rx, tx,
 * io, ...) and the medians reported. A batch's first burst runs after the device's work on the
 * same core and pays for what that left cold (caches, branch history): the "later bursts" column
 * leaves it out and is the driver's cost in a steady stream of bursts.
 * A batch is one RX ring's worth of frames (`--ring`); TX rings are twice that size, since a TX
 * ring holds a packet per two descriptors. Packets a batch could not send are reported, and not
 * counted.
 *
 *   deno task bench [-- --rounds 7 --batches 300 --ring 512 --in-order 0|1]
 *
 * `--in-order 1` has the simulated devices offer VIRTIO_F_IN_ORDER (the driver then keeps ring
 * order and counts TX completions; the device writes one used entry per TX batch).
 */
import { parseArgs } from "cli-args";
import { buildStreams } from "../mod/fwd/streams.ts";
import { createEngine } from "../mod/fwd/engines.ts";
import { MbufPool } from "../mod/mbuf.ts";
import { Port } from "../mod/port.ts";
import { openTransport } from "../mod/portspec.ts";
import type { VirtioTransport } from "../mod/virtio/transport.ts";
import { writeTestFrame } from "../mod/testframe.ts";
import { median } from "./median.ts";

const { values } = parseArgs({
  // `deno task bench -- --ring 256` passes the `--` through: ignore it.
  args: Deno.args[0] === "--" ? Deno.args.slice(1) : Deno.args,
  options: {
    rounds: { type: "string", default: "7" },
    batches: { type: "string", default: "300" },
    ring: { type: "string", default: "512" },
    "in-order": { type: "string", default: "0" },
  },
});
const ROUNDS = Number(values.rounds);
const BATCHES = Number(values.batches);
const RING = Number(values.ring);
if (!(RING >= 32 && RING <= 512 && (RING & (RING - 1)) === 0)) {
  console.error("--ring: a power of two from 32 to 512 (TX rings are twice that, the sim's most)");
  Deno.exit(2);
}
if (!["0", "1"].includes(values["in-order"]!)) {
  console.error("--in-order: 0 or 1");
  Deno.exit(2);
}
const BURST = 32;
/** Frames the benchmark offered that a TX ring did not take (reported: they should be none). */
let unsent = 0;
const SIZE = 64;

/** Time and packets of one benchmark round: all bursts, and the bursts after each batch's first. */
class Timing {
  ns = 0;
  packets = 0;
  laterNs = 0;
  laterPackets = 0;
  /** One batch: started at t0, first burst ended at t1 with `first` packets, ended at t2. */
  add(t0: number, t1: number, t2: number, first: number, packets: number): void {
    this.ns += (t2 - t0) * 1e6;
    this.packets += packets;
    this.laterNs += (t2 - t1) * 1e6;
    this.laterPackets += packets - first;
  }
}

/** Let the device work until nothing changes any more (it filled RX / consumed TX). */
function settle(ports: Port[]): void {
  for (let quiet = 0, i = 0; quiet < 3 && i < 10000; i++) {
    let ev = 0;
    const before = ports.map((p) => p.transport.poll());
    for (const b of before) ev |= b;
    quiet = ev === 0 ? quiet + 1 : 0;
  }
  for (let i = 0; i < 64; i++) for (const p of ports) p.transport.poll();
}

function open(spec: string): { t: VirtioTransport; port: Port } {
  const t = openTransport(spec);
  const port = new Port(0, t, { log: () => {} });
  return { t, port };
}

/** rxBurst: the device fills the whole RX ring, then bursts drain it. Returns ns/packet. */
function benchRx(port: Port, pool: MbufPool, pkts: Uint32Array): Timing {
  const t = new Timing();
  for (let b = 0; b < BATCHES; b++) {
    settle([port]);
    const t0 = performance.now();
    const first = port.rxBurst(0, pkts, BURST);
    pool.freeBulk(pkts, first); // part of the timed cost (rxonly does it too)
    const t1 = performance.now();
    let got = first;
    for (let i = 1; i < RING / BURST; i++) {
      const n = port.rxBurst(0, pkts, BURST);
      got += n;
      pool.freeBulk(pkts, n);
      if (n === 0) break;
    }
    t.add(t0, t1, performance.now(), first, got);
  }
  return t;
}

/** txBurst: a ring's worth of prepared 64-byte frames in back-to-back bursts. */
function benchTx(port: Port, pool: MbufPool, frame: Uint8Array): Timing {
  const per = RING / BURST;
  const bursts = Array.from({ length: per }, () => new Uint32Array(BURST));
  const t = new Timing();
  for (let b = 0; b < BATCHES; b++) {
    for (const arr of bursts) {
      for (let k = 0; k < BURST; k++) {
        const m = pool.alloc();
        pool.bytes.set(frame, pool.dataStart(m));
        pool.dataLen[m] = SIZE;
        pool.pktLen[m] = SIZE;
        arr[k] = m;
      }
    }
    const t0 = performance.now();
    let t1 = t0;
    let first = 0;
    let sent = 0;
    for (let i = 0; i < per; i++) {
      const n = port.txBurst(0, bursts[i], BURST);
      sent += n;
      unsent += BURST - n;
      for (let k = n; k < BURST; k++) pool.free(bursts[i][k]);
      if (i === 0) {
        first = n;
        t1 = performance.now();
      }
    }
    t.add(t0, t1, performance.now(), first, sent);
    settle([port]);
  }
  return t;
}

/** io forwarding (the engine): port A's full RX ring forwarded to port B. */
function benchIo(a: Port, b: Port, pool: MbufPool): Timing {
  const engine = createEngine("io", { pool, burst: BURST, peers: [] });
  const stream = buildStreams([a, b], "io", 1, BURST)[0];
  const t = new Timing();
  for (let k = 0; k < BATCHES; k++) {
    settle([a, b]);
    const before = b.stats.txPackets;
    const t0 = performance.now();
    engine(stream);
    const t1 = performance.now();
    const first = b.stats.txPackets - before;
    for (let i = 1; i < RING / BURST; i++) {
      if (engine(stream) === 0) break;
    }
    t.add(t0, t1, performance.now(), first, b.stats.txPackets - before);
  }
  return t;
}

const IN_ORDER = `,in_order=${values["in-order"]}`;
const rxSide = open(`sim:bench-rx,size=${SIZE}${IN_ORDER}`);
const txSide = open(`sim:bench-tx,gen=off${IN_ORDER}`);
const ioA = open(`sim:bench-io-a,size=${SIZE}${IN_ORDER}`);
const ioB = open(`sim:bench-io-b,gen=off${IN_ORDER}`);
const all = [rxSide, txSide, ioA, ioB];
const pool = new MbufPool({ count: 8 * RING + 4096, kind: rxSide.t.dmaKinds[0] });
try {
  for (const { port } of all) {
    port.configure({ pool, rxd: RING, txd: 2 * RING });
    port.start();
  }
  const frame = new Uint8Array(SIZE);
  writeTestFrame(frame, 0, SIZE, 1, 0, Uint8Array.of(2, 0, 0, 0, 0, 1), txSide.port.mac);
  const pkts = new Uint32Array(BURST);
  // Warm-up (JIT), not reported.
  benchRx(rxSide.port, pool, pkts);
  benchTx(txSide.port, pool, frame);
  benchIo(ioA.port, ioB.port, pool);
  const rx: Timing[] = [];
  const tx: Timing[] = [];
  const io: Timing[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    rx.push(benchRx(rxSide.port, pool, pkts));
    tx.push(benchTx(txSide.port, pool, frame));
    io.push(benchIo(ioA.port, ioB.port, pool));
  }
  const row = (name: string, ts: Timing[]) => {
    const xs = ts.map((t) => t.ns / t.packets);
    const m = median(xs);
    const later = median(ts.map((t) => t.laterNs / t.laterPackets));
    return `| ${name.padEnd(24)} | ${m.toFixed(1).padStart(9)} | ${
      `${Math.min(...xs).toFixed(1)}-${Math.max(...xs).toFixed(1)}`.padStart(11)
    } | ${(1e3 / m).toFixed(1).padStart(14)} | ${later.toFixed(1).padStart(13)} |`;
  };
  console.log(
    `vpmd driver cost against the simulated device: ${SIZE} B frames, burst ${BURST}, ` +
      `rings ${RING}, median of ${ROUNDS} interleaved rounds of ${BATCHES} batches`,
  );
  console.log(
    `| operation                | ns/packet | min-max     | Mpps (1 core)  | later bursts  |`,
  );
  console.log(
    `|--------------------------|-----------|-------------|----------------|---------------|`,
  );
  console.log(row("rxBurst (+ free)", rx));
  console.log(row("txBurst (+ reclaim)", tx));
  console.log(row("io forward (rx + tx)", io));
  const dropped = ioB.port.stats.txDropped;
  if (unsent + dropped > 0) {
    console.log(`not sent (full TX ring): ${unsent} by txBurst, ${dropped} in io forwarding`);
  }
  console.log(
    `command: deno task bench -- --rounds ${ROUNDS} --batches ${BATCHES} --ring ${RING}` +
      ` (Deno ${Deno.version.deno}, ${Deno.build.target})`,
  );
} finally {
  for (const { port, t } of all) {
    port.close();
    t.close();
  }
  pool.close();
}
