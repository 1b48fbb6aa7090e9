/**
 * vpmd from two or more trees against one DPDK vhost testpmd, interleaved: A/B tests of driver or
 * engine changes.
 *
 *   deno run -A scripts/bench-ab.ts [--front fwd|child] [--mode M] [--reps 4] [--busy] [--mrg 0|1]
 *                                   [--packed 0|1] [--txpkts LIST (fwd)] TREE...
 *
 * TREE is a checkout (e.g. a `git worktree` of the change and one of main), or `dpdk` for DPDK's
 * own `net_virtio_user` testpmd as the front-end (split ring, mrg_rxbuf as `--mrg`, in_order=1:
 * what vpmd negotiates; forwarding mode M, io for the loop), or `dpdk-DEVARGS` for that front-end
 * with some of its devargs changed (`dpdk-in_order=0`, `dpdk-mrg_rxbuf=1,in_order=0`), or
 * `dpdk-fast` for DPDK's fastest front-end path (packed_vq=1,in_order=1,vectorized=1,mrg_rxbuf=0
 * and EAL --force-max-simd-bitwidth=512, dpdk_front.ts). The vpmd trees run with their defaults
 * but for mergeable buffers and the ring kind: `--mrg` (default 0, vpmd's default for 64-byte
 * frames) and `--packed` (default 0: split rings; 1: `packed=1` on the vhost-user port, and
 * packed_vq=1 for `dpdk`) for every front-end, `TREE,mrg=0|1,packed=0|1` for one; with the
 * forwarder, `TREE,indirect=1` sends multi-segment frames through indirect descriptors and
 * `--txpkts` (the forwarder's flag, e.g. `64,64`) makes txonly's frames multi-segment; with the
 * child front, `TREE,reuse=1` (txonly) leaves a buffer that already holds the frame unwritten
 * (bench-vhost.ts `--reuse-frames`: what the frame's line costs, an experiment). Each
 * repetition runs every tree's front-end pinned to CPU 0, in alternating order, against a vhost
 * testpmd forwarding on CPU 1.
 * `--front fwd` (default) runs the forwarder, `vpmd fwd vhost-user:SOCK --mode M` with M txonly,
 * io, mac or macswap; `--front child` runs bench-vhost.ts's own vpmd side
 * (`--child --test M`, M txonly, loop or rxonly), the driver without the forwarder. The vhost side
 * runs rxonly against txonly, txonly against rxonly, and otherwise `mac` with `start tx_first 32`
 * (the loop of bench-vhost.ts). The rate is what the vhost side received (sent, against rxonly)
 * over 2 s in the middle of each 4.5 s run. Each run also prints the vhost lcore's busy cycles
 * per packet (`--record-core-cycles`) and the share of its time that cost takes at the measured
 * rate: near 100 % the vhost side sets the rate, and the front-end's way of using the rings shows
 * as the vhost's cost per packet. `--busy` (child front only) adds the front-end's busy ns per
 * packet, measured as bench-vhost.ts's busy runs do (vpmd's timed loop, DPDK's
 * `--record-core-cycles`), and for vpmd the share of its run spent waiting on the vhost side
 * (iterations that moved nothing) and descheduled (iterations over 50 µs, left out of the busy
 * cost): a front-end that waits does not set the rate, whatever the vhost's busy share says.
 * Then the median per tree and the median of each repetition's ratio to the first tree, and the
 * repetitions ordered by the vhost's cost behind the first tree, each with the other trees'
 * ratios: that cost tells the machine's phases apart (docs/performance.md), and a change can gain
 * in one phase and lose in another. Needs scripts/setup-dpdk.sh.
 */
import { parseArgs } from "cli-args";
import { coreCycles, Testpmd } from "../tests/lib/testpmd.ts";
import { FAST_EAL, fastDevargs, sameFeatures, startDpdkFront } from "./dpdk_front.ts";
import { childArgs, pinnedDeno } from "./command.ts";
import { median } from "./median.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const { values, positionals: trees } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: {
    front: { type: "string", default: "fwd" },
    mode: { type: "string", default: "txonly" },
    reps: { type: "string", default: "4" },
    busy: { type: "boolean", default: false },
    mrg: { type: "string", default: "0" },
    packed: { type: "string", default: "0" },
    txpkts: { type: "string" },
  },
});
const mode = values.mode!;
const child = values.front === "child";
/** Also report the front-end's busy ns/packet (child front only; see bench-vhost.ts). */
const busy = values.busy! && child;
const modes = child ? ["txonly", "loop", "rxonly"] : ["txonly", "io", "mac", "macswap"];
const mrg = values.mrg!;
const packed = values.packed!;
function usage(why?: string): never {
  if (why) console.error(`bench-ab: ${why}`);
  console.error(
    "usage: bench-ab.ts [--front fwd|child] [--mode txonly|io|mac|macswap (fwd), " +
      "txonly|loop|rxonly (child)] [--reps N] [--busy (child)] [--mrg 0|1] [--packed 0|1] " +
      "[--txpkts LIST (fwd)] " +
      "(dpdk[-DEVARGS] | dpdk-fast | PATH[,mrg=0|1][,packed=0|1][,indirect=0|1])...",
  );
  Deno.exit(2);
}
if (
  !["fwd", "child"].includes(values.front!) || !modes.includes(mode) || trees.length === 0 ||
  !["0", "1"].includes(mrg) || !["0", "1"].includes(packed)
) usage();
const sock = `/tmp/vpmd-ab-${Deno.pid}.sock`;
/** The vhost side's forwarding mode: the front-end's counterpart. */
const vhostMode = mode === "txonly" ? "rxonly" : mode === "rxonly" ? "txonly" : "mac";
/** A TREE argument: DPDK's front-end with its devargs, or a vpmd checkout. */
type Front =
  | { dpdk: true; devargs: string; eal: string[] }
  | { dpdk: false; path: string; mrg: string; packed: string; indirect: string; reuse: boolean };
function front(tree: string): Front {
  if (tree === "dpdk-fast") return { dpdk: true, devargs: fastDevargs(256), eal: FAST_EAL };
  if (tree === "dpdk" || tree.startsWith("dpdk-")) {
    // sameFeatures' devargs, those named after "dpdk-" replaced or added.
    const args = new Map<string, string>();
    for (const a of sameFeatures(mrg, 256, "1", packed).split(",")) {
      const [k, v] = a.split("=", 2);
      args.set(k, v);
    }
    for (const a of tree.slice(5).split(",").filter((a) => a !== "")) {
      const [k, v] = a.split("=", 2);
      if (v === undefined) usage(`${tree}: devargs are KEY=VALUE`);
      args.set(k, v);
    }
    return { dpdk: true, devargs: [...args].map(([k, v]) => `${k}=${v}`).join(","), eal: [] };
  }
  const [path, ...opts] = tree.split(",");
  let m = mrg;
  let p = packed;
  let ind = "0";
  let reuse = false;
  for (const o of opts) {
    if (/^mrg=[01]$/.test(o)) m = o.slice(4);
    else if (/^packed=[01]$/.test(o)) p = o.slice(7);
    else if (/^indirect=[01]$/.test(o) && !child) ind = o.slice(9);
    else if (o === "reuse=1" && child && mode === "txonly") reuse = true;
    else {
      usage(
        `${tree}: a vpmd tree takes only ,mrg=0|1, ,packed=0|1, (fwd) ,indirect=0|1 and (child txonly) ,reuse=1`,
      );
    }
  }
  return { dpdk: false, path, mrg: m, packed: p, indirect: ind, reuse };
}
const fronts = new Map<string, Front>(trees.map((t: string) => [t, front(t)]));
/** The vpmd front-end command for a checkout. */
const frontArgs = (
  path: string,
  treeMrg: string,
  treePacked: string,
  treeIndirect: string,
  treeReuse: boolean,
): string[] =>
  child
    ? childArgs(`${path}/scripts/bench-vhost.ts`, mode, sock, 4.5, [
      "--mrg",
      treeMrg,
      // A tree without packed rings knows no --packed: asked only for packed ones.
      ...(treePacked === "1" ? ["--packed", "1"] : []),
      ...(busy ? ["--busy"] : []),
      ...(treeReuse ? ["--reuse-frames"] : []),
    ])
    : [
      `${path}/main.ts`,
      "fwd",
      `vhost-user:${sock},mrg=${treeMrg}${treePacked === "1" ? ",packed=1" : ""}${
        treeIndirect === "1" ? ",indirect=1" : ""
      }`,
      "--mode",
      mode,
      ...(values.txpkts === undefined ? [] : ["--txpkts", values.txpkts]),
      "--duration",
      "4.5",
      "--stats-period",
      "0",
    ];
/** DPDK's virtio_user testpmd as the front-end, forwarding. */
async function startDpdk(devargs: string, eal: string[]): Promise<Testpmd> {
  const front = await startDpdkFront({
    sock,
    fwd: mode === "loop" ? "io" : mode,
    devargs,
    eal,
    burst: 32,
    ring: 256,
    app: busy ? ["--record-core-cycles"] : [],
  });
  await front.cmd("start");
  return front;
}
interface VhostCost {
  /** The vhost lcore's busy cycles per packet over the run (`--record-core-cycles`). */
  cycles: number;
  /** Share of the vhost lcore's time that cost takes at the measured rate. */
  busy: number;
}

/** The vhost side's cost, from the statistics testpmd prints when forwarding stops. */
function vhostCost(stopped: string, mpps: number): VhostCost {
  const c = coreCycles(stopped);
  if (c === null) throw new Error(`the vhost testpmd printed no cycles/packet:\n${stopped}`);
  return { cycles: c.perPacket, busy: c.perPacket * mpps / c.mhz };
}
const vhost = await Testpmd.start({
  vdev: `net_vhost0,iface=${sock},queues=1`,
  fwd: "rxonly",
  app: ["--burst=32", "--record-core-cycles"],
});
const rates = new Map<string, number[]>(trees.map((t: string) => [t, []]));
const vhostCycles = new Map<string, number[]>(trees.map((t: string) => [t, []]));
const frontBusy = new Map<string, number[]>(trees.map((t: string) => [t, []]));
try {
  for (let r = 0; r < Number(values.reps); r++) {
    for (const tree of r % 2 ? [...trees].reverse() : trees) {
      await vhost.cmd("stop");
      await vhost.cmd(`set fwd ${vhostMode}`);
      await vhost.cmd("clear port stats all");
      if (vhostMode !== "mac") await vhost.cmd("start");
      const f = fronts.get(tree)!;
      const dpdk = f.dpdk ? await startDpdk(f.devargs, f.eal) : null;
      const fwd = !f.dpdk
        ? new Deno.Command("taskset", {
          args: pinnedDeno(frontArgs(f.path, f.mrg, f.packed, f.indirect, f.reuse)),
          stdout: "piped",
          stderr: "piped",
        }).spawn()
        : null;
      let mpps: number;
      let cost: VhostCost;
      let busyNs = NaN;
      let shares = "";
      try {
        await sleep(dpdk === null ? 1200 : 500); // connected and started
        if (vhostMode === "mac") await vhost.cmd("start tx_first 32");
        await sleep(700);
        const a = vhost.stats();
        const t0 = performance.now();
        await sleep(2000);
        const b = vhost.stats();
        const moved = vhostMode === "txonly" ? b.opackets - a.opackets : b.ipackets - a.ipackets;
        mpps = moved / ((performance.now() - t0) / 1000) / 1e6;
        cost = vhostCost(await vhost.cmd("stop"), mpps);
        const c = dpdk !== null && busy
          ? coreCycles(await dpdk.cmd("stop", /Done\.|testpmd> /))
          : null;
        if (c !== null) busyNs = c.perPacket / (c.mhz / 1000);
      } finally {
        await dpdk?.stop();
      }
      const done = await fwd?.output();
      if (done !== undefined && !done.success) {
        throw new Error(`${tree}: vpmd failed: ${new TextDecoder().decode(done.stderr)}`);
      }
      if (done !== undefined && busy) {
        // The child's last stdout line is its result (bench-vhost.ts, ChildResult).
        const last = new TextDecoder().decode(done.stdout).trim().split("\n").pop()!;
        const child = JSON.parse(last);
        busyNs = child.busyNsPerPacket ?? NaN;
        shares = `, waiting ${(100 * child.waitShare).toFixed(0)} %, ` +
          `descheduled ${(100 * child.deschedShare).toFixed(0)} %`;
      }
      if (busy) frontBusy.get(tree)!.push(busyNs);
      rates.get(tree)!.push(mpps);
      vhostCycles.get(tree)!.push(cost.cycles);
      console.log(
        `rep ${r + 1} ${tree}: ${mpps.toFixed(2)} Mpps, vhost ${cost.cycles.toFixed(1)} ` +
          `cycles/packet (${(100 * cost.busy).toFixed(0)} % busy)` +
          (busy ? `, front-end busy ${busyNs.toFixed(1)} ns/packet${shares}` : ""),
      );
    }
  }
} finally {
  await vhost.stop();
}
const first = rates.get(trees[0])!;
for (const [tree, xs] of rates) {
  const paired = median(xs.map((x, i) => x / first[i]));
  console.log(
    `${tree}: median ${median(xs).toFixed(2)} Mpps, paired vs first ${paired.toFixed(3)}, ` +
      `vhost median ${median(vhostCycles.get(tree)!).toFixed(1)} cycles/packet` +
      (busy ? `, front-end busy median ${median(frontBusy.get(tree)!).toFixed(1)} ns/packet` : ""),
  );
}
// The machine's phase shows in what a packet costs the vhost behind the first tree: the
// repetitions in that order, so that a ratio can be read phase by phase.
const firstCycles = vhostCycles.get(trees[0])!;
console.log(`repetitions by the vhost's cycles/packet behind ${trees[0]}, rates paired to it:`);
for (const i of first.map((_, k) => k).sort((a, b) => firstCycles[a] - firstCycles[b])) {
  const others = trees.slice(1).map((t: string) =>
    `, ${t} ${(rates.get(t)![i] / first[i]).toFixed(3)}`
  );
  console.log(
    `  rep ${i + 1}: ${firstCycles[i].toFixed(1)} cycles/packet, ${first[i].toFixed(2)} Mpps` +
      others.join(""),
  );
}
