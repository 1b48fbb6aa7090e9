/**
 * Where a running Deno program spends its time, down to the instruction of V8's optimized code.
 *
 *   deno run -A scripts/jit-profile.ts [--core 0] [--warmup 7] [--seconds 4] [--out DIR]
 *                                      [--functions 6] -- SCRIPT [ARGS...]
 *
 * Runs `deno run -A --v8-flags=--perf-basic-prof SCRIPT ARGS` (pinned to `--core`), waits
 * `--warmup` seconds for the hot code to be optimized, samples it with `perf record -e cpu-clock`
 * for `--seconds`, then, while it still runs, disassembles the hottest JavaScript functions with gdb
 * (V8's `/tmp/perf-PID.map` says where each compiled function lies; builtins such as AtomicsStore
 * or TypedArrayPrototypeSet are named there too) and stops it. Prints the functions by share of
 * samples and writes DIR/annotated.txt: each hot function's instructions with their sample counts.
 * A sample lands on the instruction after the one that stalled (a load that missed, a store that
 * found the store buffer full), so read a hot line together with the one before it.
 *
 * The program must run for at least warmup + seconds. Needs `perf` and `gdb` (Debian packages
 * linux-perf and gdb) and root (or perf_event_paranoid <= 1). See docs/performance.md.
 */
import { parseArgs } from "cli-args";
import { run } from "./command.ts";

interface Symbol {
  start: number;
  size: number;
  name: string;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function readMap(path: string): Symbol[] {
  return Deno.readTextFileSync(path).split("\n").filter((l) => l !== "").map((l) => {
    const [start, size, ...name] = l.split(" ");
    return { start: parseInt(start, 16), size: parseInt(size, 16), name: name.join(" ") };
  }).sort((a, b) => a.start - b.start);
}

/** The symbol containing `ip` (binary search over sorted, non-overlapping ranges). */
function symbolOf(map: Symbol[], ip: number): Symbol | null {
  let lo = 0;
  let hi = map.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const s = map[mid];
    if (ip < s.start) hi = mid - 1;
    else if (ip >= s.start + s.size) lo = mid + 1;
    else return s;
  }
  return null;
}

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: {
      core: { type: "string", default: "0" },
      warmup: { type: "string", default: "7" },
      seconds: { type: "string", default: "4" },
      out: { type: "string", default: "/tmp/jit-profile" },
      functions: { type: "string", default: "6" },
    },
  });
  if (positionals.length === 0) {
    console.error(
      "usage: jit-profile.ts [--core N] [--warmup S] [--seconds S] -- SCRIPT [ARGS...]",
    );
    Deno.exit(2);
  }
  const out = values.out!;
  Deno.mkdirSync(out, { recursive: true });
  const child = new Deno.Command("taskset", {
    args: [
      "-c",
      values.core!,
      Deno.execPath(),
      "run",
      "-A",
      "--v8-flags=--perf-basic-prof",
      ...positionals,
    ],
    stdout: "null",
    stderr: "null",
  }).spawn();
  try {
    await sleep(Number(values.warmup) * 1000);
    const pid = String(child.pid);
    const data = `${out}/perf.data`;
    await run("perf", [
      "record",
      "-q",
      "-e",
      "cpu-clock",
      "-p",
      pid,
      "-o",
      data,
      "--",
      "sleep",
      values.seconds!,
    ]);
    const map = readMap(`/tmp/perf-${pid}.map`);
    Deno.copyFileSync(`/tmp/perf-${pid}.map`, `${out}/perf.map`);
    const ips = new Map<number, number>();
    for (const l of (await run("perf", ["script", "-i", data, "-F", "ip"])).split("\n")) {
      if (l.trim() === "") continue;
      const ip = parseInt(l.trim(), 16);
      ips.set(ip, (ips.get(ip) ?? 0) + 1);
    }
    let total = 0;
    const bySymbol = new Map<Symbol | null, number>();
    for (const [ip, n] of ips) {
      total += n;
      const s = symbolOf(map, ip);
      bySymbol.set(s, (bySymbol.get(s) ?? 0) + n);
    }
    const ranked = [...bySymbol].sort((a, b) => b[1] - a[1]);
    console.log(`${total} samples of pid ${pid}`);
    for (const [s, n] of ranked.slice(0, 15)) {
      const pct = (100 * n / total).toFixed(1).padStart(5);
      console.log(`${pct} %  ${s?.name ?? "(outside V8's map: native code)"}`);
    }
    // Disassemble the hottest compiled JavaScript functions while the process still runs.
    const hot = ranked.map(([s]) => s).filter((s): s is Symbol => s !== null && /^JS:/.test(s.name))
      .slice(0, Number(values.functions));
    const gdbArgs = ["-p", pid, "-batch"];
    for (const s of hot) {
      gdbArgs.push("-ex", `echo @@@ ${s.start.toString(16)}\\n`);
      gdbArgs.push("-ex", `x/${Math.ceil(s.size / 2)}i 0x${s.start.toString(16)}`);
    }
    const asm = await run("gdb", gdbArgs);
    const lines: string[] = [];
    let cur: Symbol | null = null;
    for (const l of asm.split("\n")) {
      if (l.startsWith("@@@")) {
        const start = parseInt(l.split(" ")[1], 16);
        cur = hot.find((s) => s.start === start) ?? null;
        lines.push("", `== ${cur?.name} (${bySymbol.get(cur)} samples)`);
        continue;
      }
      const m = /^\s*(?:=>\s*)?0x([0-9a-f]+)/.exec(l);
      if (m === null || cur === null) continue;
      const ip = parseInt(m[1], 16);
      if (ip >= cur.start + cur.size) continue;
      lines.push(`${String(ips.get(ip) ?? 0).padStart(6)} ${l.trim()}`);
    }
    Deno.writeTextFileSync(`${out}/annotated.txt`, lines.join("\n") + "\n");
    console.log(
      `per-instruction samples of the ${hot.length} hottest functions: ${out}/annotated.txt`,
    );
  } finally {
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
    await child.status;
  }
}

if (import.meta.main) await main();
