/**
 * The forwarder (`main.ts fwd`) of two or more vpmd trees against one DPDK vhost testpmd,
 * interleaved: for A/B tests of engine or driver changes as a user runs them.
 *
 *   deno run -A scripts/bench-fwd-ab.ts [--mode txonly|io|mac|macswap] [--reps 4] TREE...
 *
 * TREE is a checkout (e.g. a `git worktree` of the change and one of main). Each repetition runs
 * every tree's `vpmd fwd vhost-user:SOCK --mode MODE` pinned to CPU 0, in alternating order, against
 * a vhost testpmd forwarding on CPU 1: `rxonly` for txonly, `mac` with `start tx_first 32` for the
 * others (the loop of bench-vhost.ts). The rate is what the vhost side received (its ipackets) over
 * 2 s in the middle of each 4.5 s run. Prints each run, then the median per tree and the median of
 * each repetition's ratio to the first tree. Needs scripts/setup-dpdk.sh.
 */
import { parseArgs } from "cli-args";
import { Testpmd } from "../tests/lib/testpmd.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

const { values, positionals: trees } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: {
    mode: { type: "string", default: "txonly" },
    reps: { type: "string", default: "4" },
  },
});
const mode = values.mode!;
if (!["txonly", "io", "mac", "macswap"].includes(mode) || trees.length === 0) {
  console.error("usage: bench-fwd-ab.ts [--mode txonly|io|mac|macswap] [--reps N] TREE...");
  Deno.exit(2);
}
const sock = `/tmp/vpmd-fwd-ab-${Deno.pid}.sock`;
const vhost = await Testpmd.start({
  vdev: `net_vhost0,iface=${sock},queues=1`,
  fwd: "rxonly",
  app: ["--burst=32"],
});
const rates = new Map<string, number[]>(trees.map((t: string) => [t, []]));
try {
  for (let r = 0; r < Number(values.reps); r++) {
    for (const tree of r % 2 ? [...trees].reverse() : trees) {
      await vhost.cmd("stop");
      await vhost.cmd(`set fwd ${mode === "txonly" ? "rxonly" : "mac"}`);
      await vhost.cmd("clear port stats all");
      if (mode === "txonly") await vhost.cmd("start");
      const fwd = new Deno.Command("taskset", {
        args: [
          "-c",
          "0",
          Deno.execPath(),
          "run",
          "-A",
          `${tree}/main.ts`,
          "fwd",
          `vhost-user:${sock}`,
          "--mode",
          mode,
          "--duration",
          "4.5",
          "--stats-period",
          "0",
        ],
        stdout: "null",
        stderr: "piped",
      }).spawn();
      await sleep(1200); // connected and started
      if (mode !== "txonly") await vhost.cmd("start tx_first 32");
      await sleep(700);
      const a = vhost.stats();
      const t0 = performance.now();
      await sleep(2000);
      const b = vhost.stats();
      const mpps = (b.ipackets - a.ipackets) / ((performance.now() - t0) / 1000) / 1e6;
      const done = await fwd.output();
      if (!done.success) {
        throw new Error(`${tree}: vpmd fwd failed: ${new TextDecoder().decode(done.stderr)}`);
      }
      rates.get(tree)!.push(mpps);
      console.log(`rep ${r + 1} ${tree}: ${mpps.toFixed(2)} Mpps`);
    }
  }
} finally {
  await vhost.stop();
}
const first = rates.get(trees[0])!;
for (const [tree, xs] of rates) {
  const paired = median(xs.map((x, i) => x / first[i]));
  console.log(
    `${tree}: median ${median(xs).toFixed(2)} Mpps, paired vs first ${paired.toFixed(3)}`,
  );
}
