/**
 * What the programmable data plane costs per packet.
 *
 *   deno run -A scripts/bench-pipeline.ts [--rounds 7] [--batches 300] [--vhost] [--reps 5]
 *                                         [--seconds 3]
 *
 * Simulated devices (always): io forwarding between two sims (the io engine) against the same
 * forwarding through the pipeline engine with an empty pipeline, with examples/firewall.ts and
 * 100 rules that no frame matches (every rule is tried, then the default: pass), and io with a
 * capture of both directions of the receiving port (`--pcap`) to a file. As scripts/bench-sim.ts:
 * 64-byte frames, bursts of 32, a batch is one RX ring's worth of frames forwarded in
 * back-to-back bursts after the device filled the ring, only the driver side timed, rounds
 * interleaved and medians reported; "later bursts" leaves out each batch's first burst (which
 * runs after the device's work on the same core): the steady-burst cost. "overhead" is the
 * difference to io in that column.
 *
 * `--vhost` (needs dpdk-testpmd and hugepages, scripts/setup-dpdk.sh): the same variants as
 * `vpmd fwd vhost-user:SOCK` against DPDK's vhost PMD in a loop (testpmd `set fwd mac`,
 * `start tx_first 32`: frames go round between the two), rate read on the vhost side through
 * telemetry over the middle of each run, `--reps` interleaved repetitions of `--seconds`, median.
 * vpmd runs pinned to CPU 0, testpmd forwards on CPU 1.
 */
import { parseArgs } from "cli-args";
import { buildStreams } from "../mod/fwd/streams.ts";
import { createEngine, type Engine, type Stream } from "../mod/fwd/engines.ts";
import { MbufPool } from "../mod/mbuf.ts";
import { Port } from "../mod/port.ts";
import { openTransport } from "../mod/portspec.ts";
import type { VirtioTransport } from "../mod/virtio/transport.ts";
import type { PipelineContext } from "../mod/pipeline/api.ts";
import { createPipelineEngine } from "../mod/pipeline/engine.ts";
import { PortCapture } from "../mod/pcap/capture.ts";
import { PcapWriter } from "../mod/pcap/writer.ts";
import * as firewall from "../examples/firewall.ts";
import { socketPath, Testpmd } from "../tests/lib/testpmd.ts";
import { pinnedDeno } from "./command.ts";
import { median } from "./median.ts";

const { values } = parseArgs({
  args: Deno.args[0] === "--" ? Deno.args.slice(1) : Deno.args,
  options: {
    rounds: { type: "string", default: "7" },
    batches: { type: "string", default: "300" },
    vhost: { type: "boolean", default: false },
    reps: { type: "string", default: "5" },
    seconds: { type: "string", default: "3" },
  },
});
const ROUNDS = Number(values.rounds);
const BATCHES = Number(values.batches);
const RING = 512;
const BURST = 32;
const SIZE = 64;
const RULES = 100;

/** 100 rules no test frame (UDP 198.18.0.1:9 -> 198.18.0.2:9) matches: each is tried. */
function rulesFile(): string {
  const rules = Array.from({ length: RULES }, (_, i) => ({
    action: "drop",
    proto: i % 2 === 0 ? "tcp" : "udp",
    src: `10.${i}.0.0/16`,
    dport: 1000 + i,
  }));
  const f = Deno.makeTempFileSync({ prefix: "vpmd-bench-rules-", suffix: ".json" });
  Deno.writeTextFileSync(f, JSON.stringify({ default: "pass", rules }));
  return f;
}

/** Time and packets of one round: all bursts, and the bursts after each batch's first. */
class Timing {
  ns = 0;
  packets = 0;
  laterNs = 0;
  laterPackets = 0;
  add(t0: number, t1: number, t2: number, first: number, packets: number): void {
    this.ns += (t2 - t0) * 1e6;
    this.packets += packets;
    this.laterNs += (t2 - t1) * 1e6;
    this.laterPackets += packets - first;
  }
}

/** Let the devices work until nothing changes (RX ring filled, TX ring consumed). */
function settle(ports: Port[]): void {
  for (let quiet = 0, i = 0; quiet < 3 && i < 10000; i++) {
    let ev = 0;
    for (const p of ports) ev |= p.transport.poll();
    quiet = ev === 0 ? quiet + 1 : 0;
  }
  for (let i = 0; i < 64; i++) for (const p of ports) p.transport.poll();
}

/** A's full RX ring forwarded to B by `engine`, BATCHES times. */
function bench(engine: Engine, stream: Stream, a: Port, b: Port): Timing {
  const t = new Timing();
  for (let k = 0; k < BATCHES; k++) {
    settle([a, b]);
    const before = b.stats.txPackets;
    const t0 = performance.now();
    engine(stream);
    const t1 = performance.now();
    const first = b.stats.txPackets - before;
    for (let i = 1; i < RING / BURST; i++) if (engine(stream) === 0) break;
    t.add(t0, t1, performance.now(), first, b.stats.txPackets - before);
  }
  return t;
}

interface Variant {
  name: string;
  engine: Engine;
  /** Attach and detach around each round (a capture). */
  around?: { on(): void; off(): void };
}

function simBench(rules: string): void {
  const open = (spec: string) => {
    const t: VirtioTransport = openTransport(spec);
    return { t, port: new Port(0, t, { log: () => {} }) };
  };
  const a = open(`sim:bp-a,size=${SIZE}`);
  const b = open("sim:bp-b,gen=off");
  const pool = new MbufPool({ count: 8 * RING + 4096, kind: a.t.dmaKinds[0] });
  const pcapFile = Deno.makeTempFileSync({ prefix: "vpmd-bench-", suffix: ".pcap" });
  let capture: PortCapture | null = null;
  try {
    for (const { port } of [a, b]) {
      port.configure({ pool, rxd: RING, txd: 2 * RING });
      port.start();
    }
    const ports = [a.port, b.port];
    const stream = buildStreams(ports, "io", 1, BURST)[0];
    const ctx: PipelineContext = {
      ports: ports.map((p, i) => ({
        index: i,
        name: `p${i}`,
        mac: p.mac,
        maxFrame: 1518,
        pair: i ^ 1,
      })),
      args: { rules },
      url: "bench",
      burstSize: BURST,
      worker: 0,
      workers: 1,
      log: () => {},
    };
    firewall.init(ctx);
    const io = createEngine("io", { pool, burst: BURST, peers: [] });
    const empty = createPipelineEngine({ pool, burst: BURST, ports, fn: () => {} }).engine;
    const fw = createPipelineEngine({ pool, burst: BURST, ports, fn: firewall.default }).engine;
    capture = new PortCapture(a.port, pool, PcapWriter.create(pcapFile), "rx");
    const cap = capture;
    const variants: Variant[] = [
      { name: "io", engine: io },
      { name: "pipeline, empty", engine: empty },
      { name: `firewall.ts, ${RULES} rules`, engine: fw },
      {
        name: "io + capture (RX)",
        engine: io,
        around: { on: () => cap.attach(), off: () => cap.detach() },
      },
    ];
    const timings = variants.map(() => [] as Timing[]);
    for (let r = -1; r < ROUNDS; r++) {
      variants.forEach((v, i) => {
        v.around?.on();
        const t = bench(v.engine, stream, a.port, b.port);
        v.around?.off();
        if (r >= 0) timings[i].push(t); // round -1 warms the JIT up
      });
    }
    const ioLater = median(timings[0].map((t) => t.laterNs / t.laterPackets));
    console.log(
      `Simulated devices: ${SIZE} B frames, burst ${BURST}, rings ${RING}, median of ${ROUNDS} ` +
        `interleaved rounds of ${BATCHES} batches (ns/packet)`,
    );
    console.log("| variant                     | all bursts | later bursts | overhead vs io |");
    console.log("|-----------------------------|------------|--------------|----------------|");
    variants.forEach((v, i) => {
      const all = median(timings[i].map((t) => t.ns / t.packets));
      const later = median(timings[i].map((t) => t.laterNs / t.laterPackets));
      const over = i === 0 ? "" : (later - ioLater).toFixed(1);
      console.log(
        `| ${v.name.padEnd(27)} | ${all.toFixed(1).padStart(10)} | ${
          later.toFixed(1).padStart(12)
        } | ${over.padStart(14)} |`,
      );
    });
    const dropped = b.port.stats.txDropped;
    if (dropped > 0) console.log(`not sent (full TX ring): ${dropped}`);
  } finally {
    capture?.close();
    for (const { port, t } of [a, b]) {
      port.close();
      t.close();
    }
    pool.close();
    Deno.removeSync(pcapFile);
  }
}

async function vhostBench(rules: string): Promise<void> {
  const reps = Number(values.reps);
  const seconds = Number(values.seconds);
  const sock = socketPath("bench-pipeline");
  const main = new URL("../main.ts", import.meta.url).pathname;
  const empty = Deno.makeTempFileSync({ prefix: "vpmd-bench-empty-", suffix: ".ts" });
  Deno.writeTextFileSync(empty, "export default function () {}\n");
  const fw = new URL("../examples/firewall.ts", import.meta.url).pathname;
  const pcap = Deno.makeTempFileSync({ prefix: "vpmd-bench-vhost-", suffix: ".pcap" });
  const variants: [string, string[]][] = [
    ["io", ["--mode", "io"]],
    ["pipeline, empty", ["--pipeline", empty]],
    [`firewall.ts, ${RULES} rules`, ["--pipeline", fw, "--pipeline-arg", `rules=${rules}`]],
    ["io + capture (RX and TX)", ["--mode", "io", "--pcap", `0:${pcap}`]],
  ];
  const vhost = await Testpmd.start({
    vdev: `net_vhost0,iface=${sock},queues=1`,
    fwd: "mac",
    lcores: "0,1",
    mainLcore: 0,
  });
  const rates = variants.map(() => [] as number[]);
  try {
    for (let r = 0; r < reps; r++) {
      for (let v = 0; v < variants.length; v++) {
        const child = new Deno.Command("taskset", {
          args: pinnedDeno([
            main,
            "fwd",
            `vhost-user:${sock}`,
            ...variants[v][1],
            "--duration",
            String(seconds),
            "--stats-period",
            "0",
          ]),
          stdout: "null",
          stderr: "piped",
        }).spawn();
        await vhost.waitLog(/virtio is now ready for processing/, 30_000, vhost.log().length);
        await vhost.cmd("start tx_first 32");
        // The middle third of the run.
        await new Promise((res) => setTimeout(res, (seconds * 1000) / 3));
        const s0 = vhost.stats(0);
        const t0 = performance.now();
        await new Promise((res) => setTimeout(res, (seconds * 1000) / 3));
        const s1 = vhost.stats(0);
        const t1 = performance.now();
        rates[v].push((s1.ipackets - s0.ipackets) / ((t1 - t0) / 1000) / 1e6);
        const out = await child.output();
        await vhost.cmd("stop");
        if (!out.success) throw new Error(new TextDecoder().decode(out.stderr));
      }
    }
  } finally {
    await vhost.stop();
    Deno.removeSync(empty);
    Deno.removeSync(pcap);
  }
  const io = median(rates[0]);
  console.log(
    `\nDPDK vhost loop (testpmd mac forwarding, tx_first 32), vpmd fwd pinned to CPU 0: Mpps at ` +
      `the vhost side, median of ${reps} interleaved runs of ${seconds} s`,
  );
  console.log("| variant                     | Mpps  | ns/packet (loop) | vs io (ns) |");
  console.log("|-----------------------------|-------|------------------|------------|");
  variants.forEach(([name], i) => {
    const m = median(rates[i]);
    console.log(
      `| ${name.padEnd(27)} | ${m.toFixed(2).padStart(5)} | ${
        (1e3 / m).toFixed(1).padStart(16)
      } | ${i === 0 ? "".padStart(10) : (1e3 / m - 1e3 / io).toFixed(1).padStart(10)} |`,
    );
  });
}

const rules = rulesFile();
try {
  simBench(rules);
  if (values.vhost) await vhostBench(rules);
  console.log(
    `command: deno run -A scripts/bench-pipeline.ts --rounds ${ROUNDS} --batches ${BATCHES}` +
      `${values.vhost ? ` --vhost --reps ${values.reps} --seconds ${values.seconds}` : ""} ` +
      `(Deno ${Deno.version.deno}, ${Deno.build.target})`,
  );
} finally {
  Deno.removeSync(rules);
}
