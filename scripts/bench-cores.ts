/**
 * Scaling of `vpmd fwd --cores`: io forwarding between two simulated devices with `--queues`
 * queue pairs each, on one core (the main thread forwards) and on several (one worker per core,
 * each with its streams and its share of the devices' queues), interleaved rep by rep.
 *
 * A run's rate is the median, over its statistics periods (`--stats-period 0.5`, the first two
 * and the last left out: start-up and drain), of the frames per second both ports received. For
 * each forwarding thread (the main thread on one core, each worker on more) the summary says how
 * much of the time it ran: `onCpu`, its CPU time over its wall-clock time (below 1 it waited for
 * a CPU: preempted), and for workers `busy`, the share of its loop's iterations that moved frames.
 * "CPUs" is the sum of onCpu (the main thread's control work beside the workers, a few percent,
 * is not in it), "per CPU" the rate over it, and "per-CPU scaling" cores x (per CPU) / (per CPU
 * on the first line): what the rate ratio would be if every thread had had its CPU to itself. A
 * rate ratio below the number of cores with onCpu near 1 is a limit of the forwarder; with onCpu
 * well below 1 it is the machine's.
 *
 *   deno run -A scripts/bench-cores.ts [--reps 5] [--seconds 5] [--queues 2] [--cores 1,2]
 */
import { parseArgs } from "cli-args";
import { median } from "./median.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    reps: { type: "string", default: "5" },
    seconds: { type: "string", default: "5" },
    queues: { type: "string", default: "2" },
    cores: { type: "string", default: "1,2" },
  },
});
const REPS = Number(values.reps);
const SECONDS = Number(values.seconds);
const QUEUES = Number(values.queues);
const CORES = values.cores!.split(",").map(Number);
const MAIN = new URL("../main.ts", import.meta.url).pathname;

interface Worker {
  onCpu: number;
  busy: number;
  rxPackets: number;
}

interface Run {
  mpps: number;
  ok: boolean;
  workers: Worker[];
  /** Sum of the forwarding threads' onCpu. */
  cpus: number;
}

async function runOnce(cores: number): Promise<Run> {
  const args = [
    "run",
    "-A",
    MAIN,
    "fwd",
    `sim:a,queues=${QUEUES}`,
    `sim:b,queues=${QUEUES}`,
    "--queues",
    String(QUEUES),
    "--cores",
    String(cores),
    "--duration",
    String(SECONDS),
    "--stats-period",
    "0.5",
    "--json",
  ];
  const out = await new Deno.Command(Deno.execPath(), { args, stdout: "piped", stderr: "piped" })
    .output();
  if (!out.success) throw new Error(new TextDecoder().decode(out.stderr));
  const lines = new TextDecoder().decode(out.stdout).trim().split("\n").map((l) => JSON.parse(l));
  const summary = lines.pop();
  const periods = lines.filter((l) => l.ports !== undefined).slice(2, -1);
  const rates = periods.map((l) =>
    l.ports.reduce((a: number, p: { rxPps: number }) => a + p.rxPps, 0) / 1e6
  );
  const workers: Worker[] = summary.workers ?? [];
  const cpus = summary.mainThread?.onCpu ?? workers.reduce((a, w) => a + w.onCpu, 0);
  return { mpps: median(rates), ok: summary.accounting.ok, workers, cpus };
}

const runs = new Map<number, Run[]>(CORES.map((c: number) => [c, []]));
for (let rep = 0; rep < REPS; rep++) {
  for (const c of CORES) {
    const r = await runOnce(c);
    runs.get(c)!.push(r);
    const w = r.workers.map((x) => `onCpu ${x.onCpu} busy ${x.busy}`).join("; ");
    console.error(
      `rep ${rep + 1} cores ${c}: ${r.mpps.toFixed(3)} Mpps, ${r.cpus.toFixed(2)} CPUs` +
        (w ? ` (${w})` : ""),
    );
    if (!r.ok) console.error(`  accounting failed`);
  }
}

const base = runs.get(CORES[0])!;
console.log(
  `\nio forwarding, 2 sims x ${QUEUES} queue pairs, 64-byte frames, ${REPS} reps of ${SECONDS} s`,
);
console.log(
  "| cores | Mpps (median) | range | x first (paired) | CPUs | Mpps per CPU | per-CPU scaling " +
    "| worker onCpu | worker busy |",
);
console.log("| ---: | ---: | --- | ---: | ---: | ---: | ---: | --- | --- |");
const perCpu = (r: Run) => r.mpps / r.cpus;
for (const c of CORES) {
  const rs = runs.get(c)!;
  const mpps = rs.map((r) => r.mpps);
  const paired = rs.map((r, i) => r.mpps / base[i].mpps);
  const scaling = rs.map((r, i) => (c * perCpu(r)) / (CORES[0] * perCpu(base[i])));
  const nw = rs[0].workers.length;
  const per = (k: keyof Worker) =>
    nw === 0
      ? "-"
      : Array.from({ length: nw }, (_, w) => median(rs.map((r) => r.workers[w][k])).toFixed(2))
        .join(", ");
  console.log(
    `| ${c} | ${median(mpps).toFixed(3)} | ${Math.min(...mpps).toFixed(3)}-${
      Math.max(...mpps).toFixed(3)
    } | ${median(paired).toFixed(2)} | ${median(rs.map((r) => r.cpus)).toFixed(2)} | ${
      median(rs.map(perCpu)).toFixed(3)
    } | ${median(scaling).toFixed(2)} | ${per("onCpu")} | ${per("busy")} |`,
  );
}
if ([...runs.values()].flat().some((r) => !r.ok)) {
  console.log("\nSome runs did not account for every frame (see above).");
}
