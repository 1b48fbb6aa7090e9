/**
 * The pipeline engine and its Burst API over simulated ports, in process: verdicts send each
 * frame where they say (in order, per port), frames grow and shrink as asked, a pipeline that
 * throws loses only its burst (never a buffer), and the CLI's --pipeline loads, runs and refuses
 * modules as a user meets them.
 */
import assert from "assert";
import type { Burst } from "../mod/pipeline/api.ts";
import { Verdict } from "../mod/pipeline/api.ts";
import { inject, pipeRig, pump, totalSent } from "./lib/pipeline_rig.ts";
import { udp4 } from "./lib/frames.ts";
import { summaryOf, vpmd } from "./lib/run_vpmd.ts";

/** A frame whose payload's first byte is `mark` and second `seq`. */
function marked(mark: number, seq: number, len = 60): Uint8Array {
  const payload = new Uint8Array(len - 42);
  payload[0] = mark;
  payload[1] = seq;
  return udp4({ payload });
}

const MARK = 42;

Deno.test("pipeline: the default verdict sends every frame to the paired port, unchanged", async () => {
  let bursts = 0;
  const r = pipeRig(["sim:a,gen=off", "sim:b,gen=off"], () => {
    bursts++;
  });
  try {
    const frames = Array.from({ length: 100 }, (_, i) => marked(0, i, 60 + i));
    inject(r, 0, frames);
    assert.ok(await pump(r, () => r.sent[1].length >= 100));
    assert.deepEqual(r.sent[1], frames);
    assert.equal(r.sent[0].length, 0);
    assert.equal(r.pe.stats.frames, 100);
    assert.equal(r.pe.stats.bursts, bursts);
    assert.equal(r.pool.available, r.pool.count, "every buffer back in the pool");
  } finally {
    r.close();
  }
});

Deno.test("pipeline: forward, back, sendTo and drop per frame; order kept on each port", async () => {
  // Mark 0: forward (to port 1), 1: back (port 0), 2: sendTo(2), 3: drop.
  const r = pipeRig(["sim:a,gen=off", "sim:b,gen=off", "sim:c,gen=off"], (b: Burst) => {
    const bytes = b.bytes;
    for (let i = 0; i < b.count; i++) {
      const v = bytes[b.offset(i) + MARK];
      if (v === 1) b.back(i);
      else if (v === 2) b.sendTo(i, 2);
      else if (v === 3) b.drop(i);
    }
  });
  try {
    const frames = Array.from({ length: 200 }, (_, i) => marked(i % 4, i));
    inject(r, 0, frames);
    assert.ok(await pump(r, () => totalSent(r) >= 150));
    const want = (k: number) => frames.filter((_, i) => i % 4 === k);
    assert.deepEqual(r.sent[1], want(0), "forwarded to the pair");
    assert.deepEqual(r.sent[0], want(1), "sent back");
    assert.deepEqual(r.sent[2], want(2), "sent to port 2");
    const s = r.pe.stats;
    assert.deepEqual([s.frames, s.dropped, s.back, s.redirected, s.errors], [200, 50, 50, 50, 0]);
    assert.equal(r.pool.available, r.pool.count, "every buffer back in the pool");
  } finally {
    r.close();
  }
});

Deno.test("pipeline: frames grow into the headroom and shrink (prepend, vlanPush/Pop, truncate, trimFront)", async () => {
  const r = pipeRig(["sim:a,gen=off", "sim:b,gen=off"], (b: Burst) => {
    const bytes = b.bytes;
    for (let i = 0; i < b.count; i++) {
      const v = bytes[b.offset(i) + MARK];
      if (v === 0) {
        if (!b.vlanPush(i, 0x2064)) throw new Error("vlanPush failed");
      } else if (v === 1) {
        // A frame injected with a tag: bytes 42+4 hold the mark.
        if (b.vlanPop(i) !== 0x0123) throw new Error("vlanPop did not find the tag");
      } else if (v === 2) {
        const o = b.prepend(i, 8);
        if (o < 0 || b.prepend(i, 200) !== -1) throw new Error("prepend");
        for (let k = 0; k < 8; k++) bytes[o + k] = 0xa0 + k;
      } else if (v === 3) {
        if (!b.truncate(i, 50) || b.truncate(i, 51)) throw new Error("truncate");
      } else if (v === 4) {
        if (b.trimFront(i, 14) < 0 || b.trimFront(i, 5000) !== -1) throw new Error("trimFront");
      }
    }
  });
  try {
    const base = [0, 1, 2, 3, 4].map((k) => marked(k, k, 64));
    // The tagged frame: the same bytes with an 802.1Q tag; the mark moves 4 bytes on.
    const tagged = new Uint8Array(68);
    tagged.set(base[1].subarray(0, 12));
    tagged.set([0x81, 0x00, 0x01, 0x23], 12);
    tagged.set(base[1].subarray(12), 16);
    tagged[MARK] = 1; // what the pipeline reads at offset 42 (inside the shifted IP header)
    const sentIn = [base[0], tagged, base[2], base[3], base[4]];
    inject(r, 0, sentIn);
    assert.ok(await pump(r, () => r.sent[1].length >= 5));
    const [pushed, popped, prepended, truncated, trimmed] = r.sent[1];
    const want0 = new Uint8Array(68);
    want0.set(base[0].subarray(0, 12));
    want0.set([0x81, 0x00, 0x20, 0x64], 12);
    want0.set(base[0].subarray(12), 16);
    assert.deepEqual(pushed, want0);
    const want1 = new Uint8Array(64);
    want1.set(tagged.subarray(0, 12));
    want1.set(tagged.subarray(16), 12);
    assert.deepEqual(popped, want1);
    assert.deepEqual(
      prepended,
      Uint8Array.from([...[0, 1, 2, 3, 4, 5, 6, 7].map((k) => 0xa0 + k), ...base[2]]),
    );
    assert.deepEqual(truncated, base[3].subarray(0, 50));
    assert.deepEqual(trimmed, base[4].subarray(14));
    assert.equal(r.pool.available, r.pool.count);
  } finally {
    r.close();
  }
});

Deno.test("pipeline: a throw loses its burst only: frames freed, counted, the first error logged with its stack", async () => {
  // Bursts of one frame: the frames marked 9 throw, the others pass.
  const r = pipeRig(["sim:a,gen=off", "sim:b,gen=off"], (b: Burst) => {
    for (let i = 0; i < b.count; i++) {
      if (b.bytes[b.offset(i) + MARK] === 9) {
        throw new Error(`bad frame ${b.bytes[b.offset(i) + 43]}`);
      }
    }
  }, { burst: 1 });
  try {
    const frames = Array.from({ length: 50 }, (_, i) => marked(i % 5 === 0 ? 9 : 0, i));
    inject(r, 0, frames);
    assert.ok(await pump(r, () => r.pe.stats.frames >= 50));
    assert.deepEqual(r.sent[1], frames.filter((_, i) => i % 5 !== 0));
    assert.equal(r.pe.stats.errors, 10);
    assert.equal(r.pe.stats.errorFrames, 10);
    assert.equal(r.logged.length, 1, "only the first error is printed");
    assert.match(r.logged[0], /bad frame 0/);
    assert.match(r.logged[0], /\n\s+at /, "with its stack");
    assert.equal(r.pool.available, r.pool.count, "no buffer leaked");
  } finally {
    r.close();
  }
});

Deno.test("pipeline: verdicts set before a throw are forgotten; a bad port index and a promise are errors", async () => {
  let n = 0;
  const r = pipeRig(
    ["sim:a,gen=off", "sim:b,gen=off"],
    ((b: Burst) => {
      n++;
      if (n === 1) {
        b.drop(0);
        b.sendTo(0, 7); // throws RangeError
      }
      if (n === 2) return Promise.resolve();
      if (n === 3) b.back(5); // frame 5 of a burst of one: RangeError
    }) as (b: Burst) => void,
    { burst: 1 },
  );
  try {
    const frames = Array.from({ length: 6 }, (_, i) => marked(0, i));
    inject(r, 0, frames);
    assert.ok(await pump(r, () => r.pe.stats.frames >= 6));
    assert.equal(r.pe.stats.errors, 3);
    assert.deepEqual(r.sent[1], frames.slice(3), "later bursts forwarded (no stale DROP verdict)");
    assert.match(r.logged[0], /sendTo: port 7 is not a port index/);
    assert.equal(r.pool.available, r.pool.count);
    assert.equal(r.pe.burst.verdict(0), Verdict.FORWARD);
  } finally {
    r.close();
  }
});

Deno.test("pipeline: a frame of several buffers: length, segmentLength, truncate frees the tail", async () => {
  let seen = { length: 0, seg: 0 };
  const r = pipeRig(["sim:a,gen=off,mrg=1,mtu=9000", "sim:b,gen=off,mtu=9000"], (b: Burst) => {
    for (let i = 0; i < b.count; i++) {
      seen = { length: b.length(i), seg: b.segmentLength(i) };
      b.truncate(i, 3000);
    }
  }, { mtu: 9000, poolCount: 2048 });
  try {
    const big = udp4({ payload: Uint8Array.from({ length: 8000 }, (_, i) => i & 0xff) });
    inject(r, 0, [big]);
    assert.ok(await pump(r, () => r.sent[1].length >= 1));
    assert.equal(seen.length, big.length);
    assert.ok(seen.seg < seen.length, `first buffer ${seen.seg} of ${seen.length}`);
    assert.deepEqual(r.sent[1][0], big.subarray(0, 3000));
    assert.equal(r.pool.available, r.pool.count, "the cut buffers went back to the pool");
  } finally {
    r.close();
  }
});

// ---- the CLI ----

const dir = Deno.makeTempDirSync({ prefix: "vpmd-pipeline-test-" });
const API = new URL("../mod/pipeline/api.ts", import.meta.url).href;

function module(name: string, text: string): string {
  const p = `${dir}/${name}`;
  Deno.writeTextFileSync(p, text);
  return p;
}

Deno.test("cli: --pipeline FILE.ts runs a user's module: init sees ports and args, verdicts act, close runs", async () => {
  const out = `${dir}/closed.json`;
  const p = module(
    "drop_odd.ts",
    `import type { Burst, PipelineContext } from "${API}";
let every = 0;
let seen = 0;
export function init(ctx: PipelineContext) {
  every = Number(ctx.args.every);
  ctx.log("ports " + ctx.ports.map((p) => p.name + "/" + p.pair).join(" "));
}
export default function (b: Burst) {
  for (let i = 0; i < b.count; i++) if (seen++ % every === 0) b.drop(i);
}
export function close() {
  Deno.writeTextFileSync(${JSON.stringify(out)}, JSON.stringify({ seen }));
}
`,
  );
  const r = await vpmd([
    "fwd",
    "sim:a",
    "sim:b",
    "--pipeline",
    p,
    "--pipeline-arg",
    "every=2",
    "--duration",
    "1",
    "--json",
    "--stats-period",
    "0",
  ]);
  assert.equal(r.code, 0, r.stderr);
  const s = summaryOf(r);
  assert.match(r.stderr, /pipeline: ports sim:a\/1 sim:b\/0/);
  assert.ok(s.pipeline.frames > 1000, JSON.stringify(s.pipeline));
  assert.equal(s.pipeline.dropped, Math.ceil(s.pipeline.frames / 2));
  assert.equal(s.pipeline.errors, 0);
  assert.equal(s.totals.txPackets + s.pipeline.dropped + s.totals.txDropped, s.totals.rxPackets);
  assert.ok(s.accounting.ok, s.accounting.message);
  assert.deepEqual(JSON.parse(Deno.readTextFileSync(out)), { seen: s.pipeline.frames });
});

Deno.test("cli: a pipeline that throws: bursts dropped and counted, the first error with its stack, exit 0", async () => {
  const p = module(
    "throws.ts",
    `let n = 0;
export default function () {
  if (++n % 3 === 0) throw new TypeError("third burst " + n);
}
`,
  );
  const r = await vpmd([
    "fwd",
    "sim:a",
    "sim:b",
    "--pipeline",
    p,
    "--duration",
    "1",
    "--json",
    "--stats-period",
    "0",
  ]);
  assert.equal(r.code, 0, r.stderr);
  const s = summaryOf(r);
  assert.ok(
    s.pipeline.errors > 0 && s.pipeline.errors === Math.floor(s.pipeline.bursts / 3),
    JSON.stringify(s.pipeline),
  );
  assert.equal(r.stderr.match(/pipeline: error/g)?.length, 1, r.stderr);
  assert.match(r.stderr, /TypeError: third burst 3\n\s+at .*throws\.ts/);
  assert.ok(s.accounting.ok, s.accounting.message);
  assert.equal(s.poolAvailable, s.poolSize, "no buffer leaked");
});

for (
  const c of [
    {
      what: "a missing file",
      file: () => `${dir}/nope.ts`,
      re: /--pipeline .*nope\.ts: no such file/,
    },
    {
      what: "a syntax error",
      file: () => module("syntax.ts", "export default function ( {\n"),
      re: /cannot load the module: SyntaxError: .* \(at file:.*syntax\.ts:1:\d+\)$/m,
    },
    {
      what: "a module that throws as it loads",
      file: () =>
        module("top.ts", "throw new Error('top-level boom');\nexport default () => {};\n"),
      re: /cannot load the module: top-level boom \(at file:.*top\.ts:1:\d+\)/,
    },
    {
      what: "no burst function",
      file: () => module("none.ts", "export const x = 1;\n"),
      re: /exports no burst function/,
    },
    {
      what: "an async burst function",
      file: () => module("async.ts", "export default async function () {}\n"),
      re: /is async; it must be synchronous/,
    },
    {
      what: "an init that throws",
      file: () =>
        module(
          "init.ts",
          "export function init() { throw new Error('no rules file'); }\nexport default () => {};\n",
        ),
      re: /pipeline init: no rules file/,
    },
  ]
) {
  Deno.test(`cli: --pipeline with ${c.what} is a usage error (exit 2, one line)`, async () => {
    const r = await vpmd(["fwd", "sim:a", "--pipeline", c.file(), "--duration", "1"]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, c.re);
    assert.equal(r.stderr.trim().split("\n").filter((l) => l.startsWith("vpmd fwd:")).length, 1);
    assert.match(r.stderr.trim().split("\n").at(-1)!, /^vpmd fwd: /);
  });
}

Deno.test("cli: --pipeline flags that contradict are usage errors", async () => {
  const p = module("ok.ts", "export default () => {};\n");
  for (
    const [args, re] of [
      [["--pipeline", p, "--mode", "mac"], /--pipeline replaces the forwarding mode/],
      [["--pipeline-arg", "a=1"], /--pipeline-arg is for a pipeline/],
      [["--pipeline", p, "--pipeline-arg", "a"], /--pipeline-arg a: expected KEY=VALUE/],
    ] as [string[], RegExp][]
  ) {
    const r = await vpmd(["fwd", "sim:a", ...args, "--duration", "1"]);
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stderr, re);
  }
});

/** Minor GCs (V8 --trace-gc "Scavenge" lines) and frames received in a 2-second sim run. */
async function scavenges(args: string[]): Promise<{ scavenges: number; rx: number }> {
  const r = await vpmd(
    ["fwd", "sim:a", "sim:b", ...args, "--duration", "2", "--json", "--stats-period", "0"],
    60_000,
    ["--v8-flags=--trace-gc"],
  );
  assert.equal(r.code, 0, r.stderr);
  // V8's trace lines share stdout with the summary (and may share its line).
  const summary = r.stdout.match(/\{"ports".*$/m)?.[0];
  assert.ok(summary !== undefined, r.stdout);
  return {
    scavenges: r.stdout.match(/Scavenge/g)?.length ?? 0,
    rx: JSON.parse(summary).totals.rxPackets,
  };
}

Deno.test("cli: an empty pipeline allocates nothing per frame: no more minor GCs than --mode io", async () => {
  const empty = module("empty.ts", "export default function () {}\n");
  // The control: a small object per frame (a view of its Ethernet header and a 64-byte copy), kept
  // a little while, what the API is designed to make unnecessary.
  const allocating = module(
    "allocating.ts",
    `import type { Burst } from "${API}";
const keep: Uint8Array[] = [];
let n = 0;
export default function (b: Burst) {
  for (let i = 0; i < b.count; i++) {
    keep[n++ & 63] = b.bytes.subarray(b.offset(i), b.offset(i) + 14);
    keep[n++ & 63] = b.bytes.slice(b.offset(i), b.offset(i) + 64);
  }
}
`,
  );
  const io = await scavenges(["--mode", "io"]);
  const pipe = await scavenges(["--pipeline", empty]);
  const control = await scavenges(["--pipeline", allocating]);
  // io's minor GCs come from the loop's few allocations per turn of the event loop, not per
  // frame; a pipeline that allocates nothing adds none, whatever the frame rate.
  const what = JSON.stringify({ io, pipe, control });
  assert.ok(pipe.rx > 10_000 && control.rx > 10_000, what);
  assert.ok(
    pipe.scavenges <= io.scavenges + 4,
    `the empty pipeline scavenged more than io: ${what}`,
  );
  assert.ok(
    control.scavenges >= io.scavenges + 10,
    `the control did not show its allocations: ${what}`,
  );
});

/**
 * The README's pipeline as a user saves it: the first ```ts block of its "Programming the data
 * plane" section, read from README.md so that the example cannot drift from what is tested.
 */
function readmePipeline(): string {
  const section = "## Programming the data plane";
  const text = Deno.readTextFileSync(new URL("../README.md", import.meta.url));
  const start = text.indexOf(`\n${section}\n`);
  assert.ok(start >= 0, `README.md has no '${section}' section`);
  const next = text.indexOf("\n## ", start + section.length);
  const m = text.slice(start, next < 0 ? undefined : next).match(/^```ts\n([\s\S]*?)^```$/m);
  assert.ok(m !== null, `'${section}' has no \`\`\`ts example`);
  assert.ok(m[1].includes('"./mod/pipeline/mod.ts"'), "the example imports ./mod/pipeline/mod.ts");
  return m[1];
}

Deno.test("cli: the README's ten-line pipeline drops the sims' UDP to port 9, and only that", async () => {
  const lib = new URL("../mod/pipeline/mod.ts", import.meta.url).href;
  const p = module("discard.ts", readmePipeline().replace("./mod/pipeline/mod.ts", lib));
  const r = await vpmd([
    "fwd",
    "sim:a",
    "sim:b,size=64",
    "--pipeline",
    p,
    "--duration",
    "1",
    "--json",
    "--stats-period",
    "0",
  ]);
  assert.equal(r.code, 0, r.stderr);
  const s = summaryOf(r);
  assert.ok(s.pipeline.frames > 1000);
  assert.equal(s.pipeline.dropped, s.pipeline.frames, "every test frame is UDP to port 9");
  assert.ok(s.accounting.ok, s.accounting.message);
  // The same file passes what is not UDP to port 9.
  const other = pipeRig(["sim:x,gen=off", "sim:y,gen=off"], (await import(p)).burst);
  try {
    const frames = [
      udp4({ dport: 9 }),
      udp4({ dport: 10 }),
      udp4({ dport: 9, tags: [[0x8100, 3]] }),
    ];
    inject(other, 0, frames);
    assert.ok(await pump(other, () => other.pe.stats.frames >= 3));
    assert.deepEqual(other.sent[1], [frames[1]]);
  } finally {
    other.close();
  }
});
