/**
 * The CLI as a user runs it: `deno run -A main.ts ...` in a subprocess, with a hard timeout.
 */
import assert from "assert";
import { parseFwdArgs } from "../cli/fwd.ts";
import { MbufPool } from "../mod/mbuf.ts";
import { NoticePrinter } from "../cli/notices.ts";
import { withFake } from "./lib/fake_vhost.ts";
import { peerTest } from "./lib/peers.ts";
import { socketPath, Testpmd, testpmdPeer } from "./lib/testpmd.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;
const SUMMARY_KEYS = [
  "rxPackets",
  "txPackets",
  "rxBytes",
  "txBytes",
  "rxDropped",
  "txDropped",
  "rxNoMbuf",
  "rxErrors",
];

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Run vpmd with `args`; `sigintAfterMs` sends SIGINT once the first stats line appeared. */
async function vpmd(args: string[], sigintAfterMs = 0, timeoutMs = 30000): Promise<Run> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, ...args],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  const killer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  let sigint: ReturnType<typeof setTimeout> | undefined;
  if (sigintAfterMs > 0) sigint = setTimeout(() => child.kill("SIGINT"), sigintAfterMs);
  try {
    const out = await child.output();
    return {
      code: out.code,
      stdout: new TextDecoder().decode(out.stdout),
      stderr: new TextDecoder().decode(out.stderr),
    };
  } finally {
    clearTimeout(killer);
    clearTimeout(sigint);
  }
}

function lastJson(stdout: string) {
  const lines = stdout.trim().split("\n");
  return JSON.parse(lines[lines.length - 1]);
}

function checkSummary(s: Record<string, unknown>, names: string[], mode: string) {
  assert.equal(s.mode, mode);
  assert.equal(typeof s.durationSec, "number");
  const ports = s.ports as Record<string, unknown>[];
  assert.deepEqual(ports.map((p) => p.name), names);
  assert.deepEqual(ports.map((p) => p.port), names.map((_, i) => i));
  const totals = s.totals as Record<string, number>;
  for (const k of SUMMARY_KEYS) {
    for (const p of ports) assert.equal(typeof p[k], "number", `ports[].${k}`);
    assert.equal(totals[k], ports.reduce((a, p) => a + (p[k] as number), 0), `totals.${k}`);
  }
}

Deno.test("cli: fwd io between two sims for 1 s: exit 0, JSON summary consistent with the wire", async () => {
  const r = await vpmd(["fwd", "sim:a", "sim:b", "--mode", "io", "--duration", "1", "--json"]);
  assert.equal(r.code, 0, r.stderr);
  const s = lastJson(r.stdout);
  checkSummary(s, ["sim:a", "sim:b"], "io");
  const [a, b] = s.ports;
  assert.ok(a.rxPackets > 1000 && b.rxPackets > 1000, `rx ${a.rxPackets} / ${b.rxPackets}`);
  assert.equal(a.linkUp && b.linkUp, true, "links as forwarding left them, not after the stop");
  // Each wire saw exactly what the other port received and its own port sent.
  assert.equal(b.wire.txFrames, b.txPackets);
  assert.equal(a.wire.txFrames, a.txPackets);
  assert.equal(b.wire.checkedOk, a.rxPackets - a.rxDropped - b.txDropped);
  assert.equal(a.wire.badFrames + b.wire.badFrames, 0);
  assert.equal(s.accounting.ok, true, s.accounting.message);
  assert.equal(s.accounting.contentVerified, true);
  assert.equal(s.poolAvailable, s.poolSize, "all buffers returned");
  // Periodic lines come first (stats period 1 s: at least none, at most a few).
  for (const line of r.stdout.trim().split("\n").slice(0, -1)) {
    assert.ok(Array.isArray(JSON.parse(line).ports));
  }
});

Deno.test("cli: plain output (not a terminal) ends with the accounting line", async () => {
  const r = await vpmd(["fwd", "sim:x", "sim:y", "--duration", "1", "--stats-period", "0.3"]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^t=0\.\d+s port 0 rx \d+ tx \d+/m);
  assert.match(r.stdout, /all \d+ frames accounted for, content verified/);
});

Deno.test("cli: bad flag -> exit 2 with a one-line error", async () => {
  for (
    const args of [
      ["fwd", "sim:a", "--colour", "red"],
      ["fwd", "sim:a", "--burst", "0"],
      ["fwd", "sim:a", "--mode", "fast"],
      ["fwd", "sim:a", "--txpkts", "64,x"],
      ["fwd", "sim:a", "--eth-peer", "3,02:00:00:00:00:01"],
      ["fwd"],
      ["frobnicate"],
    ]
  ) {
    const r = await vpmd(args);
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.equal(
      r.stderr.trim().split("\n").length,
      1,
      `one line for ${args.join(" ")}: ${r.stderr}`,
    );
    assert.match(r.stderr, /^vpmd/);
    assert.equal(r.stdout, "");
  }
});

Deno.test("cli: durations and pool sizes: what 0 means, and limits stated up front", () => {
  const fwd = (...flags: string[]) => parseFwdArgs(["sim:a", ...flags]);
  assert.throws(
    () => fwd("--duration", "0"),
    /--duration 0: expected a number of seconds above 0 \(leave it out to run until Ctrl-C\)/,
  );
  for (const d of ["0x10", "1e3", "-1", "", " 2"]) assert.throws(() => fwd(`--duration=${d}`));
  assert.equal(fwd("--duration", "0.5").durationSec, 0.5);
  assert.equal(fwd().durationSec, 0); // not given: until Ctrl-C
  assert.equal(fwd("--stats-period", "0").statsPeriodSec, 0);
  assert.equal(fwd("--stats-period", "0.01").statsPeriodSec, 0.01);
  assert.throws(
    () => fwd("--stats-period", "0.000001"),
    /--stats-period 0.000001: expected at least 0.01 seconds \(0: no periodic statistics\)/,
  );
  assert.throws(() => fwd("--stats-period", "x"), /\(0: no periodic statistics\)/);
  // The most buffers a pool can span (4 GiB of iova space) is the flag's limit, not a late failure.
  const max = MbufPool.maxCount(2048);
  assert.equal(max, Math.floor(2 ** 32 / 2176));
  assert.equal(fwd("--mbufs", String(max)).mbufs, max);
  assert.throws(
    () => fwd("--mbufs", String(max + 1)),
    new RegExp(`--mbufs ${max + 1}: expected an integer from 64 to ${max}`),
  );
  assert.throws(
    () => new MbufPool({ count: max + 1, kind: "anon" }),
    new RegExp(`do not fit the 4 GiB of iova space a pool may span; at most ${max}`),
  );
  // --max-packets: a count of frames, 1 or more; not given: no limit.
  assert.equal(fwd().maxPackets, undefined);
  assert.equal(fwd("--max-packets", "25000000").maxPackets, 25_000_000);
  for (const n of ["0", "-1", "1e6", "x"]) {
    assert.throws(() => fwd(`--max-packets=${n}`), /--max-packets .*: expected an integer from 1/);
  }
  // Ring sizes not given are left to the port (256, or the device's size if smaller).
  assert.equal(fwd().rxd, undefined);
  assert.equal(fwd("--rxd", "64").rxd, 64);
});

Deno.test("cli: the parser's errors become one line that says what to do", () => {
  const fwd = (...flags: string[]) => () => parseFwdArgs(["sim:a", ...flags]);
  assert.throws(
    fwd("--colour", "red"),
    /^Error: unknown flag '--colour' for 'vpmd fwd'; see 'vpmd help'$/,
  );
  assert.throws(
    fwd("--burst", "-1"),
    /^Error: --burst: its value may not start with '-' \(write --burst=VALUE if you mean it\)$/,
  );
  assert.throws(fwd("--burst=-1"), /--burst -1: expected an integer from 1 to 512/);
  assert.throws(fwd("--burst"), /^Error: --burst needs a value$/);
  // A frame longer than any vpmd handles (the sims' wires drop it silently).
  assert.throws(
    fwd("--txpkts", Array(33).fill(2048).join(",")),
    /total frame length 67584 is above the largest frame, 65535/,
  );
  assert.equal(parseFwdArgs(["sim:a", "--txpkts", "2048,2048,1024"]).txpkts.length, 3);
});

Deno.test("cli: one device given twice is refused, however its name is written", () => {
  const dir = Deno.makeTempDirSync({ prefix: "vpmd-dup-" });
  try {
    Deno.symlinkSync(dir, `${dir}-link`);
    const twice = (...ports: string[]) => () => parseFwdArgs(ports);
    assert.throws(twice("sim:a", "sim:a,rate=1"), /^Error: port 'sim:a' given twice$/);
    assert.throws(twice("00:04.0", "0000:00:04.0"), /port '0000:00:04.0' given twice/);
    for (
      const other of [
        `${dir}//a.sock`,
        `${dir}/./a.sock`,
        `${dir}/x/../a.sock`,
        `${dir}-link/a.sock`,
      ]
    ) {
      assert.throws(
        twice(`vhost-user:${dir}/a.sock`, `vhost-user:${other},server`),
        new RegExp(`ports 'vhost-user:${dir}/a.sock' and 'vhost-user:${other}' are one device`),
      );
    }
    const cwd = Deno.cwd();
    Deno.chdir(dir);
    try {
      assert.throws(twice("vhost-user:a.sock", `vhost-user:${dir}/a.sock`), /are one device/);
    } finally {
      Deno.chdir(cwd);
    }
    // Different sockets, different sims: fine.
    assert.equal(
      parseFwdArgs([`vhost-user:${dir}/a.sock`, `vhost-user:${dir}/b.sock`]).specs.length,
      2,
    );
    assert.equal(parseFwdArgs(["sim:a", "sim:A"]).specs.length, 2);
  } finally {
    Deno.removeSync(`${dir}-link`);
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("cli: a vhost-user socket reached through a symlink to it is the same device", () => {
  const dir = Deno.makeTempDirSync({ prefix: "vpmd-dup-" });
  try {
    Deno.writeTextFileSync(`${dir}/a.sock`, ""); // what the name resolves to is all that counts
    Deno.symlinkSync(`${dir}/a.sock`, `${dir}/b.sock`);
    Deno.symlinkSync("a.sock", `${dir}/c.sock`);
    for (const other of ["b.sock", "c.sock"]) {
      assert.throws(
        () => parseFwdArgs([`vhost-user:${dir}/a.sock`, `vhost-user:${dir}/${other}`]),
        new RegExp(`ports 'vhost-user:${dir}/a.sock' and 'vhost-user:${dir}/${other}' are one`),
      );
    }
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("cli: a vhost-user socket in a directory that does not exist: exit 2 at once", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "vpmd-nodir-" });
  try {
    const t0 = performance.now();
    const r = await vpmd(["fwd", `vhost-user:${dir}/gone/x.sock`, "--duration", "1"]);
    assert.equal(r.code, 2, r.stderr);
    assert.equal(
      r.stderr.trim(),
      `vpmd fwd: vhost-user:${dir}/gone/x.sock: cannot connect to unix socket ` +
        `${dir}/gone/x.sock: the directory ${dir}/gone does not exist`,
    );
    assert.ok(performance.now() - t0 < 8000, "not the 10 s wait for a backend");
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("cli: a vhost-user backend that refuses a request or answers wrongly: exit 1, the port named once", async () => {
  const cases = [
    ["nack-mem", "the backend refused SET_MEM_TABLE (1)"], // at the port's start
    ["wrong-reply", "expected a reply to GET_FEATURES, got GET_PROTOCOL_FEATURES (flags 0x5)"],
  ];
  for (const [mode, why] of cases) {
    const path = socketPath(`cli-${mode}`);
    await withFake(path, mode, async () => {
      const r = await vpmd(["fwd", `vhost-user:${path}`, "--duration", "1"]);
      assert.equal(r.code, 1, r.stderr);
      assert.equal(r.stderr.trim(), `vpmd fwd: vhost-user:${path}: ${why}`);
    });
  }
});

Deno.test("cli: a vhost-user backend that hangs up at SET_MEM_TABLE: told on stderr and in --json, retried less and less often", async () => {
  const path = socketPath("cli-hangup");
  const name = `vhost-user:${path}`;
  await withFake(path, "hangup", async (fake) => {
    const r = await vpmd(["fwd", name, "--duration", "3.5", "--json", "--stats-period", "0"]);
    assert.equal(r.code, 0, r.stderr);
    // Connections 200, 400, 800, 1000, 1000 ms apart (plus set-up time): about five in 3.5 s,
    // where a fixed 100 ms gave 30.
    const conns = (await fake.finish()).match(/conn/g)?.length ?? 0;
    assert.ok(conns >= 3 && conns <= 7, `${conns} connections`);
    const lines = r.stdout.trim().split("\n").map((l) => JSON.parse(l));
    const summary = lines.pop();
    assert.equal(summary.ports[0].name, name);
    assert.equal(summary.ports[0].linkUp, false);
    for (const e of lines) {
      assert.deepEqual(Object.keys(e).filter((k) => k !== "suppressed"), [
        "event",
        "port",
        "name",
        "message",
        "t",
      ]);
      assert.equal(e.port, 0);
      assert.equal(e.name, name);
      assert.ok(e.t >= 0 && e.t < 10);
    }
    // Every connection was lost, and all but the first one came back: shown or counted.
    const count = (kind: string) =>
      lines.filter((e) => e.event === kind).reduce((a, e) => a + 1 + (e.suppressed ?? 0), 0);
    assert.equal(count("backend-lost"), conns, r.stdout);
    assert.equal(count("backend-returned"), conns - 1, r.stdout);
    assert.match(
      lines[0].message,
      /^backend lost \(set-up failed: SET_MEM_TABLE: .*\); link down; next attempt in 200 ms$/,
    );
    // stderr: the same, one line each, at most one of a kind per second.
    const told = r.stderr.split("\n").filter((l) => l.startsWith(`Port 0 (${name}): backend`));
    assert.equal(told.length, lines.length, r.stderr);
    assert.ok(told.length <= 2 * 5, r.stderr);
  });
});

Deno.test("cli: notices are shown once a second per port and kind, the rest counted", () => {
  let now = 0;
  const err: string[] = [];
  const out: string[] = [];
  const p = new NoticePrinter(
    true,
    { stderr: (l) => err.push(l), stdout: (l) => out.push(l) },
    () => now,
  );
  const a = p.sink(0, "vhost-user:/a");
  const b = p.sink(1, "vhost-user:/b");
  a("backend-lost", "one");
  now = 100;
  a("backend-lost", "two"); // held back
  a("backend-returned", "back"); // another kind: shown
  b("backend-lost", "other port"); // another port: shown
  now = 500;
  a("backend-lost", "three"); // held back
  now = 1200;
  a("backend-lost", "four"); // a second after "one": shown, with the two held back
  now = 1300;
  a("backend-lost", "five"); // held back, shown by flush
  a("backend-lost", "six");
  p.flush();
  p.endJson();
  a("stop-failed", "after the summary"); // stderr only
  assert.deepEqual(err, [
    "Port 0 (vhost-user:/a): one",
    "Port 0 (vhost-user:/a): back",
    "Port 1 (vhost-user:/b): other port",
    "Port 0 (vhost-user:/a): four (2 more like it not shown)",
    "Port 0 (vhost-user:/a): six (1 more like it not shown)",
    "Port 0 (vhost-user:/a): after the summary",
  ]);
  assert.deepEqual(out.map((l) => JSON.parse(l)), [
    { event: "backend-lost", port: 0, name: "vhost-user:/a", message: "one", t: 0 },
    { event: "backend-returned", port: 0, name: "vhost-user:/a", message: "back", t: 0.1 },
    { event: "backend-lost", port: 1, name: "vhost-user:/b", message: "other port", t: 0.1 },
    {
      event: "backend-lost",
      port: 0,
      name: "vhost-user:/a",
      message: "four",
      t: 1.2,
      suppressed: 2,
    },
    {
      event: "backend-lost",
      port: 0,
      name: "vhost-user:/a",
      message: "six",
      t: 1.3,
      suppressed: 1,
    },
  ]);
});

Deno.test("cli: a device with small queues works without --rxd/--txd", async () => {
  const r = await vpmd(["fwd", "sim:a,qsize=64", "sim:b,qsize=64", "--duration", "0.3", "--json"]);
  assert.equal(r.code, 0, r.stderr);
  assert.ok(lastJson(r.stdout).totals.rxPackets > 0);
});

Deno.test("cli: bad port spec -> exit 2", async () => {
  for (const spec of ["p0", "sim:", "sim:a,rate=fast", "vhost-user:/nonexistent/vpmd.sock,x=1"]) {
    const r = await vpmd(["fwd", spec, "--duration", "1"]);
    assert.equal(r.code, 2, `${spec}: ${r.stderr}`);
    assert.equal(r.stderr.trim().split("\n").length, 1, `${spec}: ${r.stderr}`);
  }
});

Deno.test("cli: SIGINT -> clean exit 0 with the summary", async () => {
  const r = await vpmd(["fwd", "sim:a", "sim:b", "--json", "--stats-period", "0.2"], 2500);
  assert.equal(r.code, 0, r.stderr);
  const s = lastJson(r.stdout);
  checkSummary(s, ["sim:a", "sim:b"], "io");
  assert.equal(s.stoppedBy, "SIGINT");
  assert.ok(s.totals.rxPackets > 0);
  assert.equal(s.accounting.ok, true, s.accounting.message);
});

Deno.test("cli: a pool too small for the rings and a burst is refused, naming the minimum", async () => {
  for (
    const [args, min] of [
      // 256 RX + 256 TX + a burst of 32, per port.
      [["sim:a", "--mbufs", "300"], 544],
      [["sim:a", "sim:b", "--mbufs", "700"], 1056],
      [["sim:a", "sim:b", "--mbufs", "1055"], 1056],
      [["sim:a,qsize=64", "--burst", "16", "--mbufs", "100"], 64 + 64 + 16],
      // rxonly leaves nothing in TX rings.
      [["sim:a", "--mode", "rxonly", "--mbufs", "287"], 256 + 32],
      // Nine 64-byte segments a frame: a burst takes 9 x 32 buffers.
      [
        ["sim:a,gen=off", "--mode", "txonly", "--txpkts", "64,8,8,8,8,8,8,8,8", "--mbufs", "600"],
        800,
      ],
    ] as const
  ) {
    const r = await vpmd(["fwd", ...args, "--duration", "0.2"]);
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`too small: .*; use --mbufs ${min} or more`), args.join(" "));
    assert.equal(r.stdout, "");
  }
});

Deno.test("cli: the smallest pool accepted forwards at the default pool's rate, to the end", async () => {
  const run = (...flags: string[]) =>
    vpmd(["fwd", "sim:a", "sim:b", "--duration", "1", "--json", "--stats-period", "0.2", ...flags]);
  // At once, so that both see the same machine.
  const [small, dflt] = await Promise.all([run("--mbufs", "1056"), run()]);
  for (const r of [small, dflt]) assert.equal(r.code, 0, r.stderr);
  const s = lastJson(small.stdout);
  const d = lastJson(dflt.stdout);
  assert.equal(s.poolSize, 1056);
  assert.ok(
    s.totals.rxPackets >= 0.5 * d.totals.rxPackets,
    `1056 buffers: ${s.totals.rxPackets} frames; default pool: ${d.totals.rxPackets}`,
  );
  assert.equal(s.totals.rxNoMbuf, 0);
  assert.equal(s.accounting.ok, true, s.accounting.message);
  // Frames flow through the whole run: every period received more than the one before.
  const rx = small.stdout.trim().split("\n").slice(0, -1).map((l) =>
    JSON.parse(l).ports.reduce((a: number, p: { rxPackets: number }) => a + p.rxPackets, 0)
  );
  assert.ok(rx.length >= 3, `${rx.length} periods`);
  for (let i = 1; i < rx.length; i++) assert.ok(rx[i] > rx[i - 1], `rx per period: ${rx}`);
});

Deno.test("cli: --txpkts must fit the TX ring and the port's largest frame (exit 2)", async () => {
  const txonly = (spec: string, ...flags: string[]) =>
    vpmd(["fwd", spec, "--mode", "txonly", "--duration", "0.3", "--json", ...flags]);
  const nine = Array(9).fill(20).join(",");
  let r = await txonly(
    "sim:t,gen=off,qsize=8,ctrl=0",
    "--rxd",
    "8",
    "--txd",
    "8",
    "--txpkts",
    nine,
  );
  assert.equal(r.code, 2, r.stderr);
  assert.match(
    r.stderr,
    /a frame of 9 segments needs 9 TX descriptors, but the TX ring of port 0 .* has 8; use at most 8 segments/,
  );
  r = await txonly("sim:t,gen=off", "--txpkts", "1000,1000");
  assert.equal(r.code, 2, r.stderr);
  assert.match(
    r.stderr,
    /a 2000-byte frame is longer than port 0 .* takes at MTU 1500, 1518 bytes/,
  );
  r = await txonly("sim:t,gen=off", "--txpkts", "1000,500,18", "--vlan-insert", "5");
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.stderr, /a 1522-byte frame \(with its VLAN tag\) is longer/);
  // At the limits: as many segments as the ring has, a frame as long as the MTU allows.
  for (
    const flags of [
      ["--rxd", "8", "--txd", "8", "--txpkts", Array(8).fill(20).join(",")],
      ["--txpkts", "1000,518"],
      ["--txpkts", "1000,1000", "--mtu", "1982"],
    ]
  ) {
    r = await txonly("sim:t,gen=off,qsize=8,ctrl=0", ...flags);
    assert.equal(r.code, 0, `${flags.join(" ")}: ${r.stderr}`);
    const s = lastJson(r.stdout);
    assert.ok(s.totals.txPackets > 0, flags.join(" "));
    assert.equal(s.totals.txErrors, 0);
    assert.equal(s.accounting.ok, true, s.accounting.message);
  }
});

Deno.test("cli: frames that failed are never 'all accounted for'", async () => {
  // 9000-byte frames arrive in five buffers; port 1's 4-entry TX ring can never take one.
  const r = await vpmd([
    "fwd",
    "sim:a,mtu=9000,size=9000",
    "sim:b,mtu=9000,qsize=4,gen=off",
    "--mtu",
    "9000",
    "--duration",
    "0.3",
    "--json",
  ]);
  assert.equal(r.code, 0, r.stderr);
  const s = lastJson(r.stdout);
  assert.ok(s.ports[1].txErrors > 0, JSON.stringify(s.ports[1]));
  assert.equal(s.accounting.ok, false);
  assert.match(s.accounting.message, /^frames failed: port 1: \d+ TX errors \(0 frames sent\)$/);
  assert.doesNotMatch(s.accounting.message, /accounted for/);
});

Deno.test("cli: a sim with queues below 4 entries needs ctrl=0, and says so", async () => {
  let r = await vpmd(["fwd", "sim:a,qsize=2", "--duration", "0.2"]);
  assert.equal(r.code, 2, r.stderr);
  assert.match(
    r.stderr,
    /^vpmd fwd: sim:a: qsize=2: the control queue needs 4 entries; use ctrl=0 or qsize >= 4\n$/,
  );
  r = await vpmd(["fwd", "sim:a,qsize=2,ctrl=0", "--duration", "0.2", "--json"]);
  assert.equal(r.code, 0, r.stderr);
  assert.ok(lastJson(r.stdout).totals.rxPackets > 0);
});

/**
 * Run vpmd until its first stdout line (forwarding is under way), then send `signals` back to
 * back and collect the rest.
 */
async function vpmdSignalled(args: string[], signals: Deno.Signal[]): Promise<Run> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, ...args],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  const killer = setTimeout(() => child.kill("SIGKILL"), 30000);
  const stderr = new Response(child.stderr).text();
  try {
    const dec = new TextDecoder();
    let stdout = "";
    const reader = child.stdout.getReader();
    while (!stdout.includes("\n")) {
      const { value, done } = await reader.read();
      if (done) break;
      stdout += dec.decode(value, { stream: true });
    }
    for (const sig of signals) child.kill(sig);
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      stdout += dec.decode(value, { stream: true });
    }
    return { code: (await child.status).code, stdout, stderr: await stderr };
  } finally {
    clearTimeout(killer);
  }
}

for (const sig of ["SIGTERM", "SIGHUP"] as const) {
  Deno.test(`cli: ${sig} stops like SIGINT: exit 0, drained, devices reset, summary`, async () => {
    const r = await vpmdSignalled(
      ["fwd", "sim:a", "sim:b", "--json", "--stats-period", "0.2"],
      [sig],
    );
    assert.equal(r.code, 0, r.stderr);
    const s = lastJson(r.stdout);
    checkSummary(s, ["sim:a", "sim:b"], "io");
    assert.equal(s.stoppedBy, sig);
    assert.ok(s.totals.rxPackets > 0);
    assert.equal(s.accounting.ok, true, s.accounting.message);
    // Every buffer came back: the devices were reset and their rings emptied.
    assert.equal(s.poolAvailable, s.poolSize);
  });
}

Deno.test("cli: a second signal during the stop exits at once with 128 + its number", async () => {
  // Two different signals, so that they cannot merge into one delivery.
  const r = await vpmdSignalled(
    ["fwd", "sim:a", "sim:b", "--json", "--stats-period", "0.2"],
    ["SIGTERM", "SIGHUP"],
  );
  // The handler sees them in either order: the second one's code (SIGHUP 1, SIGTERM 15).
  assert.ok(r.code === 129 || r.code === 143, `exit ${r.code}: ${r.stderr}`);
  assert.match(r.stderr, /(SIGTERM|SIGHUP) again: resetting the devices and exiting now/);
  const last = JSON.parse(r.stdout.trim().split("\n").pop()!);
  assert.equal(last.accounting, undefined, "no summary: the stop was cut short");
});

Deno.test("cli: help", async () => {
  const r = await vpmd(["help"]);
  assert.equal(r.code, 0);
  assert.match(r.stdout, /vpmd fwd PORT/);
});

// Against a real peer: DPDK's vhost PMD in testpmd (skipped with a hint when it is missing).

peerTest(
  testpmdPeer,
  "cli: fwd rxonly from DPDK vhost txonly: every frame testpmd sent is counted",
  async () => {
    const sock = socketPath("cli-rx");
    const pmd = await Testpmd.start({ vdev: `net_vhost0,iface=${sock},queues=1`, fwd: "txonly" });
    try {
      await pmd.cmd("start");
      const r = await vpmd(
        ["fwd", `vhost-user:${sock}`, "--mode", "rxonly", "--duration", "2", "--json"],
      );
      assert.equal(r.code, 0, r.stderr);
      const s = lastJson(r.stdout);
      checkSummary(s, [`vhost-user:${sock}`], "rxonly");
      const p = s.ports[0];
      await pmd.cmd("stop");
      const st = pmd.stats(0);
      assert.ok(p.rxPackets > 10000, `received ${p.rxPackets}`);
      assert.equal(p.rxErrors, 0);
      // What testpmd enqueued was received, except at most one ring of frames left at the stop.
      assert.ok(st.opackets >= p.rxPackets, `testpmd sent ${st.opackets}, vpmd got ${p.rxPackets}`);
      assert.ok(st.opackets - p.rxPackets <= 256, `testpmd ${st.opackets} vs vpmd ${p.rxPackets}`);
      assert.equal(p.rxBytes / p.rxPackets, st.obytes / st.opackets, "same frame size");
    } finally {
      await pmd.stop();
    }
  },
);

peerTest(testpmdPeer, "cli: fwd txonly --txpkts 64,64 into DPDK vhost rxonly", async () => {
  const sock = socketPath("cli-tx");
  const pmd = await Testpmd.start({ vdev: `net_vhost0,iface=${sock},queues=1`, fwd: "rxonly" });
  try {
    await pmd.cmd("start");
    const r = await vpmd(
      [
        "fwd",
        `vhost-user:${sock}`,
        "--mode",
        "txonly",
        "--txpkts",
        "64,64",
        "--duration",
        "2",
        "--json",
      ],
    );
    assert.equal(r.code, 0, r.stderr);
    const p = lastJson(r.stdout).ports[0];
    await pmd.cmd("stop");
    const st = pmd.stats(0);
    assert.ok(p.txPackets > 10000, `sent ${p.txPackets}`);
    assert.equal(p.txBytes, 128 * p.txPackets);
    // Sent = finished by the backend; what was still in the ring at the stop is dropped instead.
    assert.equal(st.ipackets, p.txPackets, `testpmd got ${st.ipackets}, dropped ${p.txDropped}`);
    assert.equal(st.ibytes, 128 * st.ipackets, "two 64-byte segments arrive as one 128-byte frame");
  } finally {
    await pmd.stop();
  }
});
