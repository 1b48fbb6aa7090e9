/**
 * Where the vhost side's core spends its time behind each front-end. One DPDK vhost testpmd
 * (forwarding on CPU 1) serves DPDK's own `net_virtio_user` testpmd and vpmd checkouts (each
 * running bench-vhost.ts's vpmd side) in turn, all pinned to CPU 0. While each front-end runs,
 * `perf record -e cpu-clock -C 1` samples CPU 1 for `--seconds`, and the vhost's packet counter
 * gives the packets of that window. Printed per front-end: samples per million packets, in all and
 * at the hottest instructions (library and offset, named after the nearest exported symbol), side
 * by side: a cost that one front-end causes the vhost shows as an instruction that is hot behind it
 * and not behind the others (docs/performance.md: what a second memory region costs the vhost).
 *
 *   deno run -A scripts/vhost-profile.ts [--mode txonly|rxonly|loop] [--seconds 4] [--top 12]
 *                                        FRONT...
 *
 * FRONT is `dpdk` (split ring, mrg_rxbuf=1, in_order=1), `dpdk-fast` (DPDK's fastest path:
 * packed ring, in order, AVX512, dpdk_front.ts) or a vpmd checkout (bench-vhost.ts's defaults: no
 * mergeable buffers, in order), `TREE,packed=1` for its packed ring. The mode is the front-end's: txonly (the vhost
 * receives), rxonly (the vhost sends) or loop (both forward, the vhost starting with
 * `start tx_first 32`). 64-byte frames, burst 32, ring 256. The machine's phase changes the
 * figures; run the front-ends of one comparison in one invocation, and more than once
 * (`dpdk A B dpdk A B`). Needs perf (Debian linux-perf), nm (binutils) and scripts/setup-dpdk.sh.
 */
import { parseArgs } from "cli-args";
import { childArgs, pinnedDeno, run } from "./command.ts";
import { Testpmd } from "../tests/lib/testpmd.ts";
import { FAST_EAL, fastDevargs, sameFeatures, startDpdkFront } from "./dpdk_front.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const { values, positionals: fronts } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: {
    mode: { type: "string", default: "txonly" },
    seconds: { type: "string", default: "4" },
    top: { type: "string", default: "12" },
  },
});
const mode = values.mode!;
const seconds = Number(values.seconds);
const top = Number(values.top);
const VHOST_MODE: Record<string, string> = { txonly: "rxonly", rxonly: "txonly", loop: "mac" };
if (!(mode in VHOST_MODE) || fronts.length === 0 || !(seconds > 0) || !(top > 0)) {
  console.error(
    "usage: vhost-profile.ts [--mode txonly|rxonly|loop] [--seconds S] [--top N] FRONT...",
  );
  Deno.exit(2);
}

/** A mapping of the vhost process: [start, end) at file offset `pgoff` of `path`. */
interface Mapping {
  start: number;
  end: number;
  pgoff: number;
  path: string;
}

function mappings(pid: number): Mapping[] {
  return Deno.readTextFileSync(`/proc/${pid}/maps`).split("\n").flatMap((l) => {
    const [range, perms, off, , , path] = l.split(/\s+/);
    if (!path || !perms?.includes("x")) return [];
    const [s, e] = range.split("-").map((h) => parseInt(h, 16));
    return [{ start: s, end: e, pgoff: parseInt(off, 16), path }];
  });
}

/** Exported symbols of a library, by address (nm -D), for naming offsets. */
const symbolCache = new Map<string, { addr: number; name: string }[]>();
async function symbols(path: string): Promise<{ addr: number; name: string }[]> {
  let syms = symbolCache.get(path);
  if (syms === undefined) {
    const out = await run("nm", ["-D", "--defined-only", path]).catch(() => "");
    syms = out.split("\n").flatMap((l) => {
      const [a, t, name] = l.split(" ");
      return name && /[Tt]/.test(t) ? [{ addr: parseInt(a, 16), name: name.split("@")[0] }] : [];
    }).sort((x, y) => x.addr - y.addr);
    symbolCache.set(path, syms);
  }
  return syms;
}

async function nameOf(path: string, off: number): Promise<string> {
  const lib = path.split("/").pop()!;
  let best: { addr: number; name: string } | undefined;
  for (const s of await symbols(path)) if (s.addr <= off) best = s;
  // Offsets far past the last symbol below them lie in code nm does not name (static functions).
  return best && off - best.addr < 0x1000
    ? `${best.name}+0x${(off - best.addr).toString(16)} (${lib})`
    : `0x${off.toString(16)} (${lib})`;
}

interface Profile {
  front: string;
  packets: number;
  samples: number;
  /** Samples per instruction, keyed `path:offset`. */
  at: Map<string, number>;
}

/** Sample CPU 1 for `seconds`; the vhost's received (txonly) or sent packets in that window. */
async function sample(vhost: Testpmd, front: string, i: number): Promise<Profile> {
  const count = () => {
    const s = vhost.stats();
    return mode === "rxonly" ? s.opackets : s.ipackets;
  };
  const maps = mappings(vhost.pid);
  const data = await Deno.makeTempFile({ prefix: "vpmd-vhost-profile-", suffix: ".data" });
  try {
    const before = count();
    await run("perf", [
      "record",
      "-q",
      "-e",
      "cpu-clock",
      "-C",
      "1",
      "-o",
      data,
      "--",
      "sleep",
      String(seconds),
    ]);
    const packets = count() - before;
    const at = new Map<string, number>();
    let samples = 0;
    for (const line of (await run("perf", ["script", "-i", data, "-F", "ip"])).split("\n")) {
      const ip = parseInt(line.trim(), 16);
      if (!Number.isFinite(ip)) continue;
      samples++;
      const m = maps.find((m) => ip >= m.start && ip < m.end);
      const key = m ? `${m.path}:${ip - m.start + m.pgoff}` : "outside the vhost's code:0";
      at.set(key, (at.get(key) ?? 0) + 1);
    }
    console.error(
      `${i + 1}. ${front}: ${(packets / 1e6).toFixed(1)} M packets, ${samples} samples`,
    );
    return { front, packets, samples, at };
  } finally {
    Deno.removeSync(data);
  }
}

const sock = `/tmp/vpmd-vhost-profile-${Deno.pid}.sock`;
const vhost = await Testpmd.start({
  vdev: `net_vhost0,iface=${sock},queues=1`,
  fwd: VHOST_MODE[mode],
  app: ["--burst=32"],
});
const profiles: Profile[] = [];
try {
  for (const [i, front] of fronts.entries()) {
    await vhost.cmd(mode === "loop" ? "stop" : "start");
    if (front === "dpdk" || front === "dpdk-fast") {
      const fast = front === "dpdk-fast";
      const d = await startDpdkFront({
        sock,
        fwd: mode === "loop" ? "io" : mode,
        devargs: fast ? fastDevargs(256) : sameFeatures("1", 256, "1"),
        eal: fast ? FAST_EAL : [],
        burst: 32,
        ring: 256,
      });
      try {
        await d.cmd("start");
        if (mode === "loop") await vhost.cmd("start tx_first 32");
        await sleep(1500);
        profiles.push(await sample(vhost, front, i));
      } finally {
        await d.stop();
      }
    } else {
      const [tree, ...opts] = front.split(",");
      const packed = opts.includes("packed=1") ? "1" : "0";
      const child = new Deno.Command("taskset", {
        args: pinnedDeno(
          childArgs(`${tree}/scripts/bench-vhost.ts`, mode, sock, seconds + 4, [
            "--packed",
            packed,
          ]),
        ),
        stdout: "null",
        stderr: "inherit",
      }).spawn();
      await sleep(1000);
      if (mode === "loop") await vhost.cmd("start tx_first 32");
      await sleep(1000);
      profiles.push(await sample(vhost, front, i));
      await child.status;
    }
    await vhost.cmd("stop");
    await sleep(500);
  }
} finally {
  await vhost.stop();
}

const perM = (p: Profile, n: number) => p.packets > 0 ? (n * 1e6) / p.packets : 0;
const keys = new Set(profiles.flatMap((p) => [...p.at.keys()]));
const hot = [...keys].map((k) => ({
  k,
  most: Math.max(...profiles.map((p) => perM(p, p.at.get(k) ?? 0))),
})).sort((a, b) => b.most - a.most).slice(0, top);
const names = await Promise.all(hot.map(({ k }) => {
  const cut = k.lastIndexOf(":");
  return k.startsWith("outside")
    ? "outside the vhost's code"
    : nameOf(k.slice(0, cut), +k.slice(cut + 1));
}));
const width = Math.max(40, ...names.map((n) => n.length));
const cols = profiles.map((p, i) =>
  `${i + 1}.${p.front.split("/").pop()!.replace(",packed=1", ",p")}`.padStart(12)
);
console.log(
  `vhost core (CPU 1) behind each front-end, ${mode}, ${seconds} s each: samples per million packets`,
);
console.log(`${"".padEnd(width)} ${cols.join(" ")}`);
console.log(
  `${"packets (millions)".padEnd(width)} ${
    profiles.map((p) => (p.packets / 1e6).toFixed(1).padStart(12)).join(" ")
  }`,
);
console.log(
  `${"all samples".padEnd(width)} ${
    profiles.map((p) => perM(p, p.samples).toFixed(1).padStart(12)).join(" ")
  }`,
);
hot.forEach(({ k }, i) => {
  console.log(
    `${names[i].padEnd(width)} ${
      profiles.map((p) => perM(p, p.at.get(k) ?? 0).toFixed(1).padStart(12)).join(" ")
    }`,
  );
});
console.log(`command: deno run -A scripts/vhost-profile.ts ${Deno.args.join(" ")}`);
