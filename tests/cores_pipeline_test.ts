/**
 * `vpmd fwd --cores C --pipeline FILE` and `--max-packets` on several cores: every worker loads
 * the pipeline, calls its `init` with its worker number and its `close` at the end; the pipeline's
 * counters are the sum of the workers'; every frame is accounted for across workers on simulated
 * ports; a pipeline a worker cannot start is exit 2; a plan that would cut a queue pair between
 * workers is refused; --max-packets stops on the workers' sum; against DPDK's vhost with two queue pairs, frames sent back (BACK) from
 * both workers reach testpmd.
 */
import assert from "assert";
import { peerTest } from "./lib/peers.ts";
import { socketPath, Testpmd, testpmdPeer } from "./lib/testpmd.ts";
import { runVpmd, summaryOf } from "./lib/vpmd.ts";

const dir = Deno.makeTempDirSync({ prefix: "vpmd-cores-pipeline-test-" });
const API = new URL("../mod/pipeline/api.ts", import.meta.url).href;
const example = (name: string) => new URL(`../examples/${name}`, import.meta.url).pathname;

function module(name: string, text: string): string {
  const p = `${dir}/${name}`;
  Deno.writeTextFileSync(p, text);
  return p;
}

const QUEUES2 = ["sim:a,queues=2", "sim:b,queues=2", "--queues", "2", "--cores", "2"];

async function fwd(args: string[], seconds = "1") {
  const r = await runVpmd(["fwd", ...args, "--duration", seconds, "--stats-period", "0", "--json"]);
  assert.equal(r.code, 0, r.stderr);
  return { s: summaryOf(r), stderr: r.stderr };
}

Deno.test("cores pipeline: each worker runs its own copy (init, close); counters are the workers' sum; every frame accounted for", async () => {
  // Drops every other frame it sees: each copy counts its own frames and drops.
  const p = module(
    "drop_half.ts",
    `import type { Burst, PipelineContext } from "${API}";
let worker = -1;
let seen = 0;
let dropped = 0;
export function init(ctx: PipelineContext) {
  worker = ctx.worker;
  ctx.log("init worker " + ctx.worker + " of " + ctx.workers + " arg " + ctx.args.tag +
    " ports " + ctx.ports.map((p) => p.name + "/" + p.pair).join(" "));
}
export default function (b: Burst) {
  for (let i = 0; i < b.count; i++) {
    if (seen++ % 2 === 0) {
      b.drop(i);
      dropped++;
    }
  }
}
export function close() {
  Deno.writeTextFileSync("${dir}/closed-" + worker + ".json", JSON.stringify({ seen, dropped }));
}
`,
  );
  const { s, stderr } = await fwd([...QUEUES2, "--pipeline", p, "--pipeline-arg", "tag=x"]);
  for (const w of [0, 1]) {
    const re = new RegExp(
      `^pipeline: init worker ${w} of 2 arg x ports sim:a,queues=2/1 sim:b,queues=2/0$`,
      "gm",
    );
    assert.equal(stderr.match(re)?.length, 1, stderr);
  }
  assert.equal(stderr.match(/^pipeline: init/gm)?.length, 2, "init once per worker");
  const closed = [0, 1].map((w) => JSON.parse(Deno.readTextFileSync(`${dir}/closed-${w}.json`)));
  for (const c of closed) assert.ok(c.dropped > 1000, JSON.stringify(closed));
  assert.equal(s.pipeline.frames, closed[0].seen + closed[1].seen, JSON.stringify(s.pipeline));
  assert.equal(s.pipeline.dropped, closed[0].dropped + closed[1].dropped);
  assert.equal(s.pipeline.frames, s.totals.rxPackets);
  assert.equal(s.pipeline.errors, 0);
  assert.equal(s.totals.txPackets + s.pipeline.dropped + s.totals.txDropped, s.totals.rxPackets);
  assert.equal(s.accounting.ok, true, s.accounting.message);
  assert.equal(s.poolAvailable, s.poolSize, "every buffer back");
  for (const w of s.workers) assert.ok(w.rxPackets > 1000, JSON.stringify(s.workers));
});

Deno.test("cores pipeline: sendTo and back from both workers reach the queue pair of the same worker", async () => {
  // Port 0's frames go back out of port 0, port 1's out of port 0 too (sendTo): every frame
  // leaves by port 0, on the queue pair it came in on.
  const p = module(
    "to_zero.ts",
    `import type { Burst } from "${API}";
export default function (b: Burst) {
  for (let i = 0; i < b.count; i++) {
    if (b.port === 0) b.back(i);
    else b.sendTo(i, 0);
  }
}
`,
  );
  const { s } = await fwd([...QUEUES2, "--pipeline", p]);
  assert.ok(s.pipeline.back > 1000 && s.pipeline.redirected > 1000, JSON.stringify(s.pipeline));
  assert.equal(s.ports[1].txPackets, 0);
  for (const q of s.ports[0].queues) assert.ok(q.txPackets > 1000, JSON.stringify(s.ports[0]));
  assert.equal(s.accounting.ok, true, s.accounting.message);
  assert.equal(s.poolAvailable, s.poolSize);
});

Deno.test("cores pipeline: examples/firewall.ts drops on both workers, examples/flow_counter.ts counts; accounted for", async () => {
  const rules = `${dir}/rules.json`;
  // The sims' frames are UDP to port 9: the rule drops them all.
  Deno.writeTextFileSync(
    rules,
    JSON.stringify({ default: "pass", rules: [{ action: "drop", proto: "udp", dport: 9 }] }),
  );
  const fw = await fwd([
    ...QUEUES2,
    "--pipeline",
    example("firewall.ts"),
    "--pipeline-arg",
    `rules=${rules}`,
  ]);
  assert.equal(fw.stderr.match(/^pipeline: firewall: 1 rules from /gm)?.length, 2, fw.stderr);
  assert.ok(fw.s.pipeline.frames > 1000, JSON.stringify(fw.s.pipeline));
  assert.equal(fw.s.pipeline.dropped, fw.s.pipeline.frames, "every frame dropped");
  assert.equal(fw.s.totals.txPackets, 0);
  for (const w of fw.s.workers) assert.ok(w.rxPackets > 1000, JSON.stringify(fw.s.workers));
  assert.equal(fw.s.accounting.ok, true, fw.s.accounting.message);

  const fc = await fwd([...QUEUES2, "--pipeline", example("flow_counter.ts")]);
  assert.ok(fc.s.pipeline.frames > 1000 && fc.s.pipeline.dropped === 0);
  assert.equal(fc.s.totals.txPackets, fc.s.totals.rxPackets);
  assert.equal(fc.s.accounting.ok, true, fc.s.accounting.message);
});

Deno.test("cores pipeline: an init that throws in one worker is exit 2 with its message; the other's close runs", async () => {
  const p = module(
    "init_one.ts",
    `import type { PipelineContext } from "${API}";
let worker = -1;
export function init(ctx: PipelineContext) {
  worker = ctx.worker;
  if (ctx.worker === 1) throw new Error("no rules file");
}
export default () => {};
export function close() {
  Deno.writeTextFileSync("${dir}/init-one-closed-" + worker, "");
}
`,
  );
  const r = await runVpmd(["fwd", ...QUEUES2, "--pipeline", p, "--duration", "1"]);
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.stderr, /^vpmd fwd: pipeline init: no rules file \(worker 1 of 2\)$/m);
  assert.equal(r.stderr.trim().split("\n").filter((l) => l.startsWith("vpmd fwd:")).length, 1);
  Deno.statSync(`${dir}/init-one-closed-0`); // worker 0's init ran: its close too
  assert.throws(() => Deno.statSync(`${dir}/init-one-closed-1`), "no close after a failed init");
});

Deno.test("cores pipeline: a module that does not load in a worker is exit 2 with the loader's message", async () => {
  // Loads in the main thread (checked before the devices start), throws in a worker.
  const p = module(
    "worker_only.ts",
    `if (typeof (globalThis as { WorkerGlobalScope?: unknown }).WorkerGlobalScope !== "undefined") {
  throw new Error("not in a worker");
}
export default () => {};
`,
  );
  const r = await runVpmd(["fwd", ...QUEUES2, "--pipeline", p, "--duration", "1"]);
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.stderr, /--pipeline .*worker_only\.ts: cannot load the module: not in a worker/);
  assert.equal(r.stderr.trim().split("\n").filter((l) => l.startsWith("vpmd fwd:")).length, 1);
});

Deno.test("cores pipeline: workers that would cut a queue pair are refused (exit 2), with the --queues to use", async () => {
  const r = await runVpmd([
    "fwd",
    "sim:a,queues=3",
    "sim:b,queues=3",
    "--queues",
    "3",
    "--cores",
    "2",
    "--pipeline",
    example("echo.ts"),
    "--duration",
    "1",
  ]);
  assert.equal(r.code, 2, r.stderr);
  assert.match(
    r.stderr,
    /--pipeline with --cores 2: .* each worker must serve whole queue pairs, but 2 ports x 3 queue pairs over 2 workers cut queue pair 1 in two; use --queues 4/,
  );
  // One port: every cut is between queue pairs.
  const one = await fwd([
    "sim:a,queues=3",
    "--queues",
    "3",
    "--cores",
    "2",
    "--pipeline",
    example(
      "echo.ts",
    ),
  ]);
  assert.equal(one.s.accounting.ok, true, one.s.accounting.message);
});

Deno.test("cores: --max-packets N stops once the workers together received N (a little more)", async () => {
  const r = await runVpmd([
    "fwd",
    ...QUEUES2,
    "--max-packets",
    "200000",
    "--stats-period",
    "0",
    "--json",
  ]);
  assert.equal(r.code, 0, r.stderr);
  const s = summaryOf(r);
  assert.equal(s.stoppedBy, "max-packets");
  assert.ok(s.totals.rxPackets >= 200000, JSON.stringify(s.totals));
  assert.equal(s.accounting.ok, true, s.accounting.message);
  assert.equal(s.poolAvailable, s.poolSize);
  const tx = await runVpmd([
    "fwd",
    ...QUEUES2,
    "--mode",
    "txonly",
    "--max-packets",
    "100000",
    "--stats-period",
    "0",
    "--json",
  ]);
  assert.equal(tx.code, 0, tx.stderr);
  const t = summaryOf(tx);
  assert.equal(t.stoppedBy, "max-packets");
  assert.ok(t.totals.txPackets + t.totals.txDropped >= 100000, JSON.stringify(t.totals));
  assert.equal(t.accounting.ok, true, t.accounting.message);
});

// Against DPDK's vhost PMD with two queue pairs (skipped with a hint when testpmd is missing).
peerTest(
  testpmdPeer,
  "cores pipeline over vhost-user queues=2: examples/echo.ts in both workers answers DPDK's frames",
  async () => {
    const sock = socketPath("cores-pipe");
    const pmd = await Testpmd.start({
      vdev: `net_vhost0,iface=${sock},queues=2`,
      fwd: "io",
      app: ["--rxq=2", "--txq=2"],
    });
    try {
      const child = new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          new URL("../main.ts", import.meta.url).pathname,
          "fwd",
          `vhost-user:${sock},queues=2`,
          "--queues",
          "2",
          "--cores",
          "2",
          "--pipeline",
          example("echo.ts"),
          "--pipeline-arg",
          "udp=9",
          "--duration",
          "5",
          "--json",
          "--stats-period",
          "0.2",
        ],
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      const killer = setTimeout(() => child.kill("SIGKILL"), 90_000);
      let out = "";
      let err = "";
      let code: number;
      try {
        // The first statistics line: the workers have posted their buffers; seed the loop.
        const reader = child.stdout.getReader();
        while (!out.includes("\n")) {
          const { value, done } = await reader.read();
          if (done) break;
          out += new TextDecoder().decode(value);
        }
        await pmd.cmd("start tx_first");
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          out += new TextDecoder().decode(value);
        }
        code = (await child.status).code;
        err = new TextDecoder().decode(await new Response(child.stderr).arrayBuffer());
      } finally {
        clearTimeout(killer);
      }
      assert.equal(code, 0, err);
      const s = JSON.parse(out.trim().split("\n").pop()!);
      const p = s.ports[0];
      await pmd.cmd("stop");
      const dpdk = pmd.stats(0);
      assert.equal(s.pipeline.back, s.pipeline.frames, "every frame echoed");
      assert.equal(s.pipeline.frames, p.rxPackets);
      for (const q of p.queues) assert.ok(q.rxPackets > 100, JSON.stringify(p.queues));
      for (const w of s.workers) assert.ok(w.rxPackets > 100, JSON.stringify(s.workers));
      assert.equal(p.txPackets + p.txDropped, p.rxPackets, "every frame sent or counted dropped");
      assert.equal(p.txErrors, 0);
      // Sent = finished by the backend: testpmd received each one.
      assert.equal(dpdk.ipackets, p.txPackets, `DPDK received ${dpdk.ipackets}`);
      assert.equal(s.poolAvailable, s.poolSize);
    } finally {
      await pmd.stop();
    }
  },
);
