/**
 * The pipelines in examples/, each for its effect: over simulated ports in process (frames built
 * by tests/lib/frames.ts, what each wire sends compared byte for byte, checksums checked with
 * that file's own reference sum), and through the CLI as a user starts them.
 */
import assert from "assert";
import type { BurstFunction, PipelineContext, PipelineModule } from "../mod/pipeline/api.ts";
import { inject, type PipeRig, pipeRig, pump, totalSent } from "./lib/pipeline_rig.ts";
import { checkIpv4Checksums, icmp4Echo, refChecksum, tcp4, udp4, udp6 } from "./lib/frames.ts";
import { summaryOf, vpmd } from "./lib/run_vpmd.ts";
import * as firewall from "../examples/firewall.ts";
import * as vlanBridge from "../examples/vlan_bridge.ts";
import * as echo from "../examples/echo.ts";
import * as flowCounter from "../examples/flow_counter.ts";
import * as snat from "../examples/snat.ts";

const dir = Deno.makeTempDirSync({ prefix: "vpmd-examples-test-" });

/** A rig running example `mod`, after its init with `args`; `logged` collects ctx.log lines. */
async function exampleRig(
  mod: PipelineModule,
  specs: string[],
  args: Record<string, string>,
  opts: { vlanStrip?: boolean } = {},
): Promise<PipeRig & { said: string[] }> {
  const r = pipeRig(specs, mod.default as BurstFunction, opts);
  const said: string[] = [];
  const ctx: PipelineContext = {
    ports: r.ports.map((p, i) => ({
      index: i,
      name: specs[i],
      mac: new Uint8Array(p.mac),
      maxFrame: p.limits.maxFrame,
      pair: (i ^ 1) < r.ports.length ? i ^ 1 : i,
    })),
    args,
    url: "test",
    burstSize: 32,
    worker: 0,
    workers: 1,
    log: (m) => said.push(m),
  };
  try {
    await mod.init?.(ctx);
  } catch (e) {
    r.close();
    throw e;
  }
  return Object.assign(r, { said });
}

function withTag(f: Uint8Array, tpid: number, tci: number): Uint8Array {
  return Uint8Array.from([
    ...f.subarray(0, 12),
    tpid >> 8,
    tpid & 0xff,
    tci >> 8,
    tci & 0xff,
    ...f.subarray(12),
  ]);
}

const ip = (s: string) => s.split(".").map(Number);

Deno.test("example firewall: first matching 5-tuple rule wins; non-IP, malformed and fragments as documented", async () => {
  const rules = `${dir}/rules.json`;
  Deno.writeTextFileSync(
    rules,
    JSON.stringify({
      default: "pass",
      nonIp: "drop",
      rules: [
        { action: "drop", proto: "udp", dst: "10.0.0.0/8", dport: 53 },
        { action: "pass", proto: "tcp", src: "192.168.1.7", dport: "8000-8999" },
        { action: "drop", proto: "tcp", src: "192.168.1.0/24" },
        { action: "drop", proto: "icmp" },
        { action: "drop", sport: 5000 },
      ],
    }),
  );
  const r = await exampleRig(firewall, ["sim:a,gen=off", "sim:b,gen=off"], { rules });
  try {
    const frag = udp4({ sport: 5000, dstIp: ip("172.16.0.1") });
    frag[14 + 6] = 0x00;
    frag[14 + 7] = 0x10; // a later fragment: no ports to match
    frag[24] = frag[25] = 0;
    const c = refChecksum(frag.subarray(14, 34));
    frag[24] = c >> 8;
    frag[25] = c & 0xff;
    const malformed = udp4();
    malformed[14] = 0x43; // IHL 3
    const frames = [
      /* 0 drop, rule 1 */ udp4({ dstIp: ip("10.1.2.3"), dport: 53 }),
      /* 1 pass, default */ udp4({ dstIp: ip("10.1.2.3"), dport: 54 }),
      /* 2 pass, rule 2 */ tcp4({ srcIp: ip("192.168.1.7"), dport: 8080 }),
      /* 3 drop, rule 3 */ tcp4({ srcIp: ip("192.168.1.7"), dport: 80 }),
      /* 4 pass, default */ tcp4({ srcIp: ip("192.168.2.7"), dport: 80 }),
      /* 5 drop, rule 4 */ icmp4Echo(),
      /* 6 drop, rule 5 */ udp4({ sport: 5000, dstIp: ip("172.16.0.1") }),
      /* 7 pass, default */ frag,
      /* 8 drop, nonIp */ udp6(),
      /* 9 drop, malformed */ malformed,
      /* 10 pass, default, behind a VLAN tag */ withTag(udp4({ dport: 54 }), 0x8100, 5),
    ];
    inject(r, 0, frames);
    assert.ok(await pump(r, () => r.pe.stats.frames >= frames.length));
    assert.deepEqual(r.sent[1], [frames[1], frames[2], frames[4], frames[7], frames[10]]);
    firewall.close();
    assert.match(
      r.said.at(-1)!,
      /rule 1: 1, rule 2: 1, rule 3: 1, rule 4: 1, rule 5: 1, default: 4/,
    );
  } finally {
    r.close();
  }
});

Deno.test("example firewall: a bad rules file is an init error naming the rule", async () => {
  const bad = `${dir}/bad.json`;
  Deno.writeTextFileSync(bad, JSON.stringify({ rules: [{ action: "drop", dport: "9-1" }] }));
  await assert.rejects(
    () => exampleRig(firewall, ["sim:a,gen=off"], { rules: bad }),
    /rule 1: dport: '9-1' is not a port or LO-HI/,
  );
});

for (const strip of [false, true]) {
  Deno.test(`example vlan_bridge: trunk tags popped to access ports and pushed back (${strip ? "driver strips" : "pipeline pops"})`, async () => {
    const r = await exampleRig(
      vlanBridge,
      ["sim:t,gen=off", "sim:p1,gen=off", "sim:p2,gen=off"],
      { map: "10:1,20:2" },
      { vlanStrip: strip },
    );
    try {
      const plain = [
        udp4({ sport: 1 }),
        udp4({ sport: 2 }),
        udp4({ sport: 3 }),
        udp4({ sport: 4 }),
      ];
      inject(r, 0, [
        withTag(plain[0], 0x8100, 10),
        withTag(plain[1], 0x8100, 0x2000 | 20), // priority bits set, VLAN 20
        withTag(plain[2], 0x8100, 30), // no access port: dropped
        plain[3], // untagged on the trunk: dropped
      ]);
      inject(r, 1, [plain[3], withTag(plain[0], 0x8100, 10)]); // the tagged one is dropped
      inject(r, 2, [plain[2]]);
      assert.ok(await pump(r, () => totalSent(r) >= 4 && r.pe.stats.frames >= 7));
      assert.deepEqual(r.sent[1], [plain[0]]);
      assert.deepEqual(r.sent[2], [plain[1]]);
      assert.deepEqual(r.sent[0], [withTag(plain[3], 0x8100, 10), withTag(plain[2], 0x8100, 20)]);
      assert.equal(r.pe.stats.dropped, 3);
    } finally {
      r.close();
    }
  });
}

Deno.test("example echo: ICMP, ICMPv6 and UDP echo answered on the input port; ARP for its address", async () => {
  const r = await exampleRig(echo, ["sim:e,gen=off", "sim:f,gen=off"], {
    ip: "10.0.0.2",
    udp: "7",
  });
  try {
    const ping = icmp4Echo({}, 9);
    const ping6 = (() => {
      // ICMPv6 echo request built from the UDP6 frame's layout: next header 58, checksum by ref.
      const f = udp6({ payload: new Uint8Array(12).fill(3) });
      const l4 = 54;
      f[20] = 58;
      f.set([128, 0, 0, 0, 0, 1, 0, 2], l4);
      const ph = [...f.subarray(22, 54), 0, 0, 0, f.length - l4, 0, 0, 0, 58];
      const c = refChecksum(Uint8Array.from([...ph, ...f.subarray(l4)]));
      f[l4 + 2] = c >> 8;
      f[l4 + 3] = c & 0xff;
      return f;
    })();
    const udp = udp4({ sport: 3333, dport: 7 });
    const other = udp4({ dport: 9 });
    const elsewhere = icmp4Echo({ dstIp: ip("10.0.0.3") });
    const arpReq = Uint8Array.from([
      ...[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 0x0a, 0x08, 0x06],
      ...[0, 1, 0x08, 0x00, 6, 4, 0, 1, 2, 0, 0, 0, 0, 0x0a, 10, 0, 0, 1],
      ...[0, 0, 0, 0, 0, 0, 10, 0, 0, 2],
      ...new Array(18).fill(0),
    ]);
    inject(r, 0, [ping, ping6, udp, other, elsewhere, arpReq]);
    assert.ok(await pump(r, () => r.pe.stats.frames >= 6));
    assert.equal(r.sent[1].length, 0, "nothing forwarded");
    const [pong, pong6, back, arpRep] = r.sent[0];
    assert.equal(r.sent[0].length, 4);
    const mac = [...r.ports[0].mac];
    // ICMP: type 0, addresses swapped, checksums right (reference), sent to the requester.
    assert.equal(pong[34], 0);
    assert.deepEqual([...pong.subarray(26, 30)], [10, 0, 0, 2]);
    assert.deepEqual([...pong.subarray(30, 34)], [10, 0, 0, 1]);
    assert.deepEqual([...pong.subarray(0, 6)], [...ping.subarray(6, 12)]);
    assert.deepEqual([...pong.subarray(6, 12)], mac);
    assert.deepEqual(checkIpv4Checksums(pong), []);
    // ICMPv6: type 129, checksum right over the pseudo-header.
    assert.equal(pong6[54], 129);
    const ph6 = [...pong6.subarray(22, 54), 0, 0, 0, pong6.length - 54, 0, 0, 0, 58];
    assert.equal(refChecksum(Uint8Array.from([...ph6, ...pong6.subarray(54)])), 0);
    // UDP: ports swapped, checksum still right.
    assert.deepEqual([back[34] << 8 | back[35], back[36] << 8 | back[37]], [7, 3333]);
    assert.deepEqual(checkIpv4Checksums(back), []);
    // ARP: a reply from our MAC and address to the requester.
    assert.deepEqual([...arpRep.subarray(12, 14)], [0x08, 0x06]);
    assert.equal(arpRep[21], 2);
    assert.deepEqual([...arpRep.subarray(22, 28)], mac);
    assert.deepEqual([...arpRep.subarray(28, 32)], [10, 0, 0, 2]);
    assert.deepEqual([...arpRep.subarray(32, 38)], [2, 0, 0, 0, 0, 0x0a]);
    assert.deepEqual([...arpRep.subarray(38, 42)], [10, 0, 0, 1]);
    assert.equal(r.pe.stats.dropped, 2);
  } finally {
    r.close();
  }
});

Deno.test("example flow_counter: frames forwarded unchanged, counted per 5-tuple, reported on a timer", async () => {
  const r = await exampleRig(flowCounter, ["sim:g,gen=off", "sim:h,gen=off"], {
    every: "0.05",
    flows: "64",
  });
  try {
    const a = udp4({ sport: 1, dport: 2 });
    const b = tcp4({ sport: 3, dport: 4, srcIp: ip("10.0.0.9") });
    const c = icmp4Echo();
    const frames = [a, b, a, c, a, b, a, a, b, udp6()];
    inject(r, 0, frames);
    assert.ok(await pump(r, () => r.sent[1].length >= frames.length));
    assert.deepEqual(r.sent[1], frames);
    assert.deepEqual(flowCounter.counts(), { flows: 3, untracked: 0, notIpv4: 1 });
    assert.deepEqual(flowCounter.topFlows(3), [
      { flow: "10.0.0.1:1 > 10.0.0.2:2 proto 17", packets: 5, bytes: 5 * a.length },
      { flow: "10.0.0.9:3 > 10.0.0.2:4 proto 6", packets: 3, bytes: 3 * b.length },
      { flow: "10.0.0.1 > 10.0.0.2 proto 1", packets: 1, bytes: c.length },
    ]);
    const until = Date.now() + 3000;
    while (!r.said.some((l) => l.startsWith("flows: 3")) && Date.now() < until) {
      await new Promise((res) => setTimeout(res, 20));
    }
    assert.ok(
      r.said.some((l) =>
        /^flows: 3 .*\n {2}10\.0\.0\.1:1 > 10\.0\.0\.2:2 proto 17: 5 frames/.test(l)
      ),
      r.said.join("\n"),
    );
  } finally {
    flowCounter.close();
    r.close();
  }
});

Deno.test("example snat: outbound sources and ports translated, answers translated back, checksums right", async () => {
  const r = await exampleRig(snat, ["sim:in,gen=off", "sim:out,gen=off"], {
    public: "203.0.113.1",
    net: "192.168.0.0/16",
    ports: "20000-20002",
  });
  try {
    const h1 = ip("192.168.1.10");
    const h2 = ip("192.168.1.11");
    const server = ip("198.51.100.7");
    const out = [
      udp4({ srcIp: h1, dstIp: server, sport: 5000, dport: 53 }),
      udp4({ srcIp: h2, dstIp: server, sport: 5000, dport: 53, noUdpChecksum: true }),
      tcp4({ srcIp: h1, dstIp: server, sport: 40000, dport: 443 }),
      icmp4Echo({ srcIp: h2, dstIp: server }, 77),
      udp4({ srcIp: h1, dstIp: server, sport: 5000, dport: 53 }), // same flow: same mapping
      udp4({ srcIp: ip("10.0.0.5"), dstIp: server }), // outside the inside net: untouched
      udp4({ srcIp: h1, dstIp: server, sport: 5001 }),
      udp4({ srcIp: h1, dstIp: server, sport: 5002 }), // a fourth UDP flow: no port left
    ];
    inject(r, 0, out);
    assert.ok(await pump(r, () => r.pe.stats.frames >= out.length));
    const sent = r.sent[1];
    assert.equal(sent.length, 7, "the fourth UDP flow is dropped");
    for (const f of sent) assert.deepEqual(checkIpv4Checksums(f), [], "checksums right after NAT");
    const src = (f: Uint8Array) => [...f.subarray(26, 30)].join(".");
    const sport = (f: Uint8Array) => f[34] << 8 | f[35];
    assert.deepEqual(sent.slice(0, 5).map(src), Array(5).fill("203.0.113.1"));
    assert.equal(src(sent[5]), "10.0.0.5");
    assert.deepEqual(sent[5], out[5]);
    assert.deepEqual([
      sport(sent[0]),
      sport(sent[1]),
      sport(sent[2]),
      sport(sent[4]),
      sport(sent[6]),
    ], [
      20000,
      20001,
      20000,
      20000,
      20002,
    ]);
    assert.deepEqual([sent[1][40], sent[1][41]], [0, 0], "UDP 'no checksum' stays 0");
    assert.equal(sent[3][38] << 8 | sent[3][39], 20000, "ICMP identifier mapped");
    // Answers: addressed to the public address and port, they reach the inside hosts.
    const answers = [
      udp4({ srcIp: server, dstIp: ip("203.0.113.1"), sport: 53, dport: 20001 }),
      tcp4({ srcIp: server, dstIp: ip("203.0.113.1"), sport: 443, dport: 20000 }),
      udp4({ srcIp: server, dstIp: ip("203.0.113.1"), sport: 53, dport: 20009 }), // no mapping
    ];
    const pong = icmp4Echo({ srcIp: server, dstIp: ip("203.0.113.1") }, 77);
    pong[34] = 0; // echo reply, identifier 20000
    pong[38] = 20000 >> 8;
    pong[39] = 20000 & 0xff;
    pong[36] = pong[37] = 0;
    const c = refChecksum(pong.subarray(34));
    pong[36] = c >> 8;
    pong[37] = c & 0xff;
    answers.push(pong);
    const r2 = pipeRigReuse(r);
    inject(r2, 1, answers);
    assert.ok(await pump(r2, () => r2.pe.stats.frames >= out.length + answers.length));
    const back = r2.sent[0];
    assert.equal(back.length, 3, "the unmapped answer is dropped");
    const dst = (f: Uint8Array) => [...f.subarray(30, 34)].join(".");
    const dport = (f: Uint8Array) => f[36] << 8 | f[37];
    assert.deepEqual([dst(back[0]), dport(back[0])], ["192.168.1.11", 5000]);
    assert.deepEqual([dst(back[1]), dport(back[1])], ["192.168.1.10", 40000]);
    assert.deepEqual([dst(back[2]), back[2][38] << 8 | back[2][39]], ["192.168.1.11", 7]);
    for (const f of back) {
      assert.deepEqual(checkIpv4Checksums(f), [], "checksums right after NAT back");
    }
  } finally {
    r.close();
  }
});

/** The same rig, running again after a pump stopped its ports. */
function pipeRigReuse(r: PipeRig): PipeRig {
  for (const p of r.ports) p.start();
  return r;
}

// ---- the examples as a user starts them ----

const example = (name: string) => new URL(`../examples/${name}`, import.meta.url).pathname;

function fwd(args: string[]) {
  return vpmd(["fwd", ...args, "--duration", "1", "--json", "--stats-period", "0"]);
}

Deno.test("cli: examples/firewall.ts drops what its rules say (the sims' UDP to port 9)", async () => {
  const rules = `${dir}/sim-rules.json`;
  Deno.writeTextFileSync(
    rules,
    JSON.stringify({ rules: [{ action: "drop", proto: "udp", src: "198.18.0.1", dport: 9 }] }),
  );
  const r = await fwd([
    "sim:a",
    "sim:b",
    "--pipeline",
    example("firewall.ts"),
    "--pipeline-arg",
    `rules=${rules}`,
  ]);
  assert.equal(r.code, 0, r.stderr);
  const s = summaryOf(r);
  assert.ok(s.pipeline.frames > 1000);
  assert.equal(s.pipeline.dropped, s.pipeline.frames);
  assert.equal(s.totals.txPackets, 0);
  assert.ok(s.accounting.ok, s.accounting.message);
  assert.match(r.stderr, /firewall: rule 1: \d+, default: 0/);
});

Deno.test("cli: examples/echo.ts and snat.ts on the sims: every frame answered or translated, each one checked", async () => {
  // The sims' test frames are UDP 198.18.0.1:9 -> 198.18.0.2:9: echoed back with udp=9, they
  // pass the sim's checker (IPv4 checksum, payload); translated, their IPv4 checksum must be right.
  const e = await fwd(["sim:a", "--pipeline", example("echo.ts"), "--pipeline-arg", "udp=9"]);
  assert.equal(e.code, 0, e.stderr);
  const se = summaryOf(e);
  assert.ok(
    se.pipeline.back > 1000 && se.pipeline.back === se.pipeline.frames,
    JSON.stringify(se.pipeline),
  );
  assert.equal(se.ports[0].wire.checkedOk, se.ports[0].txPackets);
  assert.equal(se.ports[0].wire.badFrames, 0);
  const n = await fwd([
    "sim:a",
    "sim:b",
    "--pipeline",
    example("snat.ts"),
    "--pipeline-arg",
    "public=203.0.113.1",
  ]);
  assert.equal(n.code, 0, n.stderr);
  const sn = summaryOf(n);
  assert.ok(sn.ports[1].txPackets > 1000);
  assert.equal(sn.ports[1].wire.checkedOk, sn.ports[1].txPackets, JSON.stringify(sn.ports[1].wire));
  assert.equal(sn.ports[1].wire.badIpChecksum, 0);
  assert.ok(sn.accounting.ok, sn.accounting.message);
});

Deno.test("cli: examples/flow_counter.ts reports every second; vlan_bridge.ts refuses a bad map", async () => {
  const f = await vpmd([
    "fwd",
    "sim:a",
    "sim:b",
    "--pipeline",
    example("flow_counter.ts"),
    "--duration",
    "2.5",
    "--json",
    "--stats-period",
    "0",
  ]);
  assert.equal(f.code, 0, f.stderr);
  assert.ok((f.stderr.match(/pipeline: flows: 1 /g) ?? []).length >= 2, f.stderr);
  assert.match(f.stderr, /198\.18\.0\.1:9 > 198\.18\.0\.2:9 proto 17: \d+ frames/);
  const v = await fwd([
    "sim:a",
    "sim:b",
    "--pipeline",
    example("vlan_bridge.ts"),
    "--pipeline-arg",
    "map=10:0",
  ]);
  assert.equal(v.code, 2);
  assert.match(v.stderr, /pipeline init: vlan_bridge: map entry '10:0'/);
});
