/**
 * Capture and replay. Capture files are opened with tcpdump (the independent reader): frame
 * counts, lengths, VLAN tags and bytes must match what vpmd counted and sent. Replay sends a
 * capture's frames, byte for byte, in order, as many times as asked; a round trip (replay into
 * a port, capture at the receiving side) gives back the same frames.
 */
import assert from "assert";
import { checkTestFrame, FrameCheck } from "../mod/testframe.ts";
import { PortCapture } from "../mod/pcap/capture.ts";
import { parsePcap, readPcap } from "../mod/pcap/reader.ts";
import { PcapWriter } from "../mod/pcap/writer.ts";
import { createReplayEngine } from "../mod/pcap/replay.ts";
import type { Engine } from "../mod/fwd/engines.ts";
import { ForwardLoop } from "../mod/fwd/loop.ts";
import { peerTest } from "./lib/peers.ts";
import { socketPath, Testpmd, testpmdPeer } from "./lib/testpmd.ts";
import { inject, pipeRig, pump } from "./lib/pipeline_rig.ts";
import { tcpdumpPeer, tcpdumpRead } from "./lib/tcpdump.ts";
import { summaryOf, vpmd } from "./lib/run_vpmd.ts";
import { tcp4, udp4, udp6 } from "./lib/frames.ts";

const dir = Deno.makeTempDirSync({ prefix: "vpmd-pcap-test-" });
const MAIN = new URL("../main.ts", import.meta.url).pathname;

peerTest(
  tcpdumpPeer,
  "pcap: capture both ways and TX only: tcpdump counts, lengths and bytes match vpmd's",
  async () => {
    const a = `${dir}/a.pcap`;
    const b = `${dir}/b.pcap`;
    const r = await vpmd([
      "fwd",
      // Paced: a second of frames that tcpdump prints and this test parses in a few seconds.
      "sim:a,size=64+1000+1514,rate=5000",
      "sim:b,rate=5000",
      "--pcap",
      `0:${a}`,
      "--pcap",
      `1:${b}:tx`,
      "--duration",
      "1",
      "--json",
      "--stats-period",
      "0",
    ]);
    assert.equal(r.code, 0, r.stderr);
    const s = summaryOf(r);
    const [p0, p1] = s.ports;
    const fa = await tcpdumpRead(a);
    const fb = await tcpdumpRead(b);
    assert.ok(p0.rxPackets > 100, JSON.stringify(p0));
    assert.equal(fa.length, p0.rxPackets + p0.txPackets, "port 0: every frame received and sent");
    assert.equal(fb.length, p1.txPackets, "port 1: every frame sent");
    assert.deepEqual(s.pcap.map((c: { frames: number }) => c.frames), [fa.length, fb.length]);
    const check = new Uint32Array(4);
    let bytes = 0;
    for (const f of [...fa, ...fb]) {
      const len = Number(f.line.match(/length (\d+):/)?.[1]);
      assert.equal(f.bytes.length, len, f.line);
      assert.equal(checkTestFrame(f.bytes, 0, f.bytes.length, check), FrameCheck.OK, f.line);
      bytes += len;
    }
    assert.equal(bytes, p0.rxBytes + p0.txBytes + p1.txBytes, "bytes as vpmd counted them");
    // Port 0 received 64, 1000 and 1514-byte frames in turn; port 1 sent port 0's frames.
    const lens = new Set(fb.map((f) => f.bytes.length));
    assert.deepEqual([...lens].sort((x, y) => x - y), [64, 1000, 1514]);
    // Nanosecond timestamps, in order.
    const ts = fa.map((f) => f.line.match(/^(\d\d):(\d\d):(\d\d)\.(\d{9}) /)).map((m) => {
      assert.ok(m !== null, "a nanosecond timestamp");
      return ((Number(m[1]) * 60 + Number(m[2])) * 60 + Number(m[3])) * 1e9 + Number(m[4]);
    });
    for (let i = 1; i < ts.length; i++) assert.ok(ts[i] >= ts[i - 1], `timestamp ${i} goes back`);
  },
);

peerTest(
  tcpdumpPeer,
  "pcap: --vlan-insert tags show in the TX capture; a tag stripped on receive is put back",
  async () => {
    const tx = `${dir}/vlan-tx.pcap`;
    const r = await vpmd([
      "fwd",
      "sim:a,rate=5000",
      "--vlan-insert",
      "100",
      "--pcap",
      `0:${tx}:tx`,
      "--duration",
      "1",
      "--json",
      "--stats-period",
      "0",
    ]);
    assert.equal(r.code, 0, r.stderr);
    const frames = await tcpdumpRead(tx);
    assert.equal(frames.length, summaryOf(r).ports[0].txPackets);
    for (const f of frames.slice(0, 50)) {
      assert.match(
        f.line,
        /ethertype 802\.1Q \(0x8100\), length 68: vlan 100, p 0, ethertype IPv4/,
      );
    }
    // Receive side with --vlan-strip: the driver strips, the capture shows the frame as it came.
    const rx = `${dir}/vlan-rx.pcap`;
    const rig = pipeRig(["sim:c,gen=off", "sim:d,gen=off"], () => {}, { vlanStrip: true });
    const cap = new PortCapture(rig.ports[0], rig.pool, PcapWriter.create(rx), "rx");
    try {
      cap.attach();
      const tagged = [udp4({ tags: [[0x8100, 0x2007]] }), udp4(), tcp4({ tags: [[0x8100, 42]] })];
      inject(rig, 0, tagged);
      assert.ok(await pump(rig, () => rig.sent[1].length >= 3));
      cap.close();
      const got = await tcpdumpRead(rx);
      assert.deepEqual(got.map((f) => f.bytes), tagged);
      assert.match(got[0].line, /vlan 7, p 1/);
      assert.match(got[2].line, /vlan 42, p 0/);
      // What was forwarded is untagged (stripped, and not inserted again).
      assert.equal(rig.sent[1][0].length, tagged[0].length - 4);
    } finally {
      cap.close();
      rig.close();
    }
  },
);

peerTest(
  tcpdumpPeer,
  "pcap: snap length and a frame limit; frames past it counted as skipped",
  async () => {
    const f = `${dir}/snap.pcap`;
    const r = await vpmd([
      "fwd",
      "sim:a",
      "--pcap",
      `0:${f}:rx`,
      "--pcap-snaplen",
      "40",
      "--pcap-count",
      "100",
      "--duration",
      "1",
      "--json",
      "--stats-period",
      "0",
    ]);
    assert.equal(r.code, 0, r.stderr);
    const s = summaryOf(r);
    const frames = await tcpdumpRead(f);
    assert.equal(frames.length, 100);
    assert.equal(s.pcap[0].skipped, s.ports[0].rxPackets - 100);
    for (const fr of frames) {
      assert.equal(fr.bytes.length, 40);
      assert.match(fr.line, /length 64:/, "the original length is kept");
    }
    const parsed = readPcap(f);
    assert.deepEqual([...new Set(parsed.caplen)], [40]);
    assert.deepEqual([...new Set(parsed.origLen)], [64]);
  },
);

Deno.test("pcap: the reader takes both byte orders, micro- and nanoseconds, pcapng; refuses what it cannot read", () => {
  const frames = [udp4(), tcp4(), udp6()];
  const classic = (le: boolean, magic: number) => {
    const parts: number[] = [];
    const u32 = (v: number) => {
      const b = [v >>> 24, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff];
      parts.push(...(le ? b.reverse() : b));
    };
    const u16 = (v: number) => parts.push(...(le ? [v & 0xff, v >>> 8] : [v >>> 8, v & 0xff]));
    u32(magic);
    u16(2);
    u16(4);
    u32(0);
    u32(0);
    u32(65535);
    u32(1);
    frames.forEach((f, i) => {
      u32(1_700_000_000 + i);
      u32(500);
      u32(f.length);
      u32(f.length);
      parts.push(...f);
    });
    return Uint8Array.from(parts);
  };
  for (const le of [true, false]) {
    for (const [magic, ns] of [[0xa1b2c3d4, 500_000], [0xa1b23c4d, 500]]) {
      const p = parsePcap(classic(le, magic));
      assert.equal(p.count, 3);
      for (let i = 0; i < 3; i++) {
        assert.deepEqual(p.data.subarray(p.off[i], p.off[i] + p.caplen[i]), frames[i]);
        assert.equal(p.timeNs[i], (1_700_000_000 + i) * 1e9 + ns);
      }
    }
  }
  // pcapng: SHB, IDB (Ethernet, if_tsresol 9 = ns), EPBs, one SPB.
  const ng: number[] = [];
  const le32 = (v: number) => [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, v >>> 24];
  const block = (type: number, body: number[]) => {
    while (body.length % 4 !== 0) body.push(0);
    const total = body.length + 12;
    ng.push(...le32(type), ...le32(total), ...body, ...le32(total));
  };
  block(0x0a0d0d0a, [...le32(0x1a2b3c4d), 1, 0, 0, 0, ...new Array(8).fill(0xff)]);
  block(0x1, [1, 0, 0, 0, ...le32(65535), 9, 0, 1, 0, 9, 0, 0, 0, 0, 0, 0, 0]);
  for (const f of frames.slice(0, 2)) {
    block(0x6, [...le32(0), ...le32(0), ...le32(1234), ...le32(f.length), ...le32(f.length), ...f]);
  }
  block(0x3, [...le32(frames[2].length), ...frames[2]]);
  const p = parsePcap(Uint8Array.from(ng));
  assert.equal(p.format, "pcapng");
  assert.equal(p.count, 3);
  for (let i = 0; i < 3; i++) {
    assert.deepEqual(p.data.subarray(p.off[i], p.off[i] + p.caplen[i]), frames[i]);
  }
  assert.equal(p.timeNs[0], 1234);
  // A cut last record ends the frames; garbage and other link types are one-line errors.
  const cut = classic(true, 0xa1b23c4d);
  const q = parsePcap(cut.subarray(0, cut.length - 5));
  assert.equal(q.count, 2);
  assert.ok(q.truncated);
  assert.throws(() => parsePcap(new Uint8Array(40)), /not a pcap or pcapng file/);
  const raw = classic(true, 0xa1b2c3d4);
  raw[20] = 101;
  assert.throws(() => parsePcap(raw), /link type 101 is not Ethernet/);
  const huge = classic(true, 0xa1b2c3d4);
  huge.set([0xff, 0xff, 0xff, 0x7f], 24 + 8);
  assert.throws(() => parsePcap(huge), /captured length .* is above 65535/);
});

peerTest(
  tcpdumpPeer,
  "replay: --tx-pcap sends the capture's frames byte for byte, in order, --tx-pcap-loop times, then stops",
  async () => {
    const frames = [udp4(), tcp4(), udp6(), udp4({ payload: new Uint8Array(1400).fill(7) })];
    const src = `${dir}/replay-in.pcap`;
    const w = PcapWriter.create(src);
    for (const f of frames) w.writeFrame(f, 0, f.length, 1_700_000_000, 0, 0);
    w.close();
    const out = `${dir}/replay-out.pcap`;
    const r = await vpmd([
      "fwd",
      "sim:a,gen=off",
      "--mode",
      "txonly",
      "--tx-pcap",
      src,
      "--tx-pcap-loop",
      "250",
      "--pcap",
      `0:${out}:tx`,
      "--json",
      "--stats-period",
      "0",
    ]);
    assert.equal(r.code, 0, r.stderr);
    const s = summaryOf(r);
    assert.equal(s.stoppedBy, "replay done");
    assert.equal(s.ports[0].txPackets, 1000);
    assert.equal(s.ports[0].wire.txFrames, 1000);
    assert.deepEqual(s.replay, { file: src, frames: 4, loops: 250, loopsDone: 250 });
    assert.ok(s.accounting.ok, s.accounting.message);
    const got = await tcpdumpRead(out);
    assert.equal(got.length, 1000);
    got.forEach((f, i) => assert.deepEqual(f.bytes, frames[i % 4], `frame ${i}`));
  },
);

Deno.test("replay: a round trip (replay into a port, capture where it is received) gives the same frames", async () => {
  // sim:a sends what the replay builds; its wire hands each frame to sim:b's wire, whose port
  // receives it with a capture attached.
  const frames = Array.from(
    { length: 300 },
    (_, i) =>
      i % 3 === 0 ? tcp4({ sport: i }) : udp4({ sport: i, payload: new Uint8Array(i % 1400) }),
  );
  const src = `${dir}/rt-in.pcap`;
  const w = PcapWriter.create(src);
  for (const f of frames) w.writeFrame(f, 0, f.length, 1, 0, 0);
  w.close();
  const rig = pipeRig(["sim:rta,gen=off", "sim:rtb,gen=off"], () => {});
  const out = `${dir}/rt-out.pcap`;
  const cap = new PortCapture(rig.ports[1], rig.pool, PcapWriter.create(out), "rx");
  try {
    rig.sims[0].wire.onTransmit = (f) => {
      rig.sims[1].wire.inject(f);
    };
    cap.attach();
    let done = false;
    const replay = createReplayEngine({
      pool: rig.pool,
      burst: 32,
      frames: readPcap(src),
      loops: 1,
      onDone: () => done = true,
    });
    // Port 0 replays; port 1 only receives (its frames go back to the pool).
    const streams = [
      { rx: rig.ports[0], tx: rig.ports[0], queue: 0, pkts: new Uint32Array(32) },
      { rx: rig.ports[1], tx: rig.ports[1], queue: 0, pkts: new Uint32Array(32) },
    ];
    const engine: Engine = (s) => {
      if (s.rx === rig.ports[0]) return replay.engine(s);
      const n = s.rx.rxBurst(0, s.pkts, 32);
      rig.pool.freeBulk(s.pkts, n);
      return n;
    };
    const loop = new ForwardLoop(rig.ports, streams, engine);
    const until = performance.now() + 5000;
    while (rig.ports[1].stats.rxPackets < frames.length && performance.now() < until) {
      await loop.run({ untilMs: performance.now() + 5 });
    }
    assert.ok(done, "the replay finished");
    cap.close();
    const back = readPcap(out);
    assert.equal(back.count, frames.length);
    for (let i = 0; i < back.count; i++) {
      assert.deepEqual(
        back.data.subarray(back.off[i], back.off[i] + back.caplen[i]),
        frames[i],
        `frame ${i}`,
      );
    }
  } finally {
    cap.close();
    rig.close();
  }
});

Deno.test("pcap: flags that do not fit are usage errors", async () => {
  for (
    const [args, re] of [
      [["--pcap", "5:/tmp/x.pcap"], /--pcap 5:\/tmp\/x.pcap: expected PORT:FILE/],
      [["--pcap", "0:"], /no file name/],
      [
        ["--pcap", `0:${dir}/x.pcap:rx`, "--pcap", `0:${dir}/y.pcap`],
        /port 0's rx frames are captured twice/,
      ],
      [["--pcap-snaplen", "40"], /--pcap-snaplen is for a capture/],
      [["--pcap", `0:${dir}/no/such/dir/x.pcap`], /--pcap 0:.*x\.pcap: No such file/],
      [["--tx-pcap", "/tmp/x.pcap"], /--tx-pcap sends a capture: it needs --mode txonly/],
      [["--mode", "txonly", "--tx-pcap", `${dir}/none.pcap`], /none\.pcap: No such file/],
      [["--mode", "txonly", "--tx-pcap", `${dir}/x.pcap`, "--txpkts", "64"], /contradict/],
    ] as [string[], RegExp][]
  ) {
    const r = await vpmd(["fwd", "sim:a", ...args, "--duration", "1"]);
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stderr, re);
  }
});

const testpmdAndTcpdump = {
  what: `${testpmdPeer.what} and ${tcpdumpPeer.what}`,
  setup: testpmdPeer.setup,
  available: () => testpmdPeer.available() && tcpdumpPeer.available(),
};

peerTest(
  testpmdAndTcpdump,
  "replay: a round trip through DPDK's vhost (replayed into one port, captured from the other) gives the same frames",
  async () => {
    const frames = Array.from(
      { length: 200 },
      (_, i) =>
        i % 4 === 0
          ? tcp4({ sport: 1000 + i })
          : udp4({ sport: 1000 + i, payload: new Uint8Array(18 + (i * 7) % 1400).fill(i) }),
    );
    const src = `${dir}/vh-in.pcap`;
    const w = PcapWriter.create(src);
    for (const f of frames) {
      w.writeFrame(f, 0, f.length, 1, 0, 0);
    }
    w.close();
    const out = `${dir}/vh-out.pcap`;
    const [s0, s1] = [socketPath("rt0"), socketPath("rt1")];
    // testpmd forwards port 0 (net_vhost0, the replay's) to port 1 (net_vhost1, the capture's).
    const pmd = await Testpmd.start({
      vdev: `net_vhost0,iface=${s0},queues=1`,
      eal: ["--vdev", `net_vhost1,iface=${s1},queues=1`],
      fwd: "io",
      autoStart: true,
    });
    let receiver: Deno.ChildProcess | null = null;
    try {
      const from = pmd.log().length;
      receiver = new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          MAIN,
          "fwd",
          `vhost-user:${s1}`,
          "--mode",
          "rxonly",
          "--pcap",
          `0:${out}:rx`,
          "--json",
          "--stats-period",
          "0",
        ],
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      await pmd.waitLog(/virtio is now ready for processing/, 30_000, from);
      const r = await vpmd([
        "fwd",
        `vhost-user:${s0}`,
        "--mode",
        "txonly",
        "--tx-pcap",
        src,
        "--json",
        "--stats-period",
        "0",
      ]);
      assert.equal(r.code, 0, r.stderr);
      const sent = summaryOf(r).ports[0];
      assert.equal(sent.txPackets, frames.length, JSON.stringify(sent));
      // The receiver has them all (or DPDK counted what it could not deliver), then it stops.
      const until = Date.now() + 20_000;
      while (Date.now() < until && pmd.stats(1).opackets + pmd.stats(1).oerrors < frames.length) {
        await new Promise((res) => setTimeout(res, 100));
      }
      await new Promise((res) => setTimeout(res, 300));
      receiver.kill("SIGINT");
      const rout = await receiver.output();
      receiver = null;
      assert.equal(rout.code, 0, new TextDecoder().decode(rout.stderr));
      const dpdk1 = pmd.stats(1);
      assert.equal(
        dpdk1.opackets,
        frames.length,
        `DPDK sent ${dpdk1.opackets} to the receiver: ${JSON.stringify(dpdk1)}`,
      );
      const got = await tcpdumpRead(out);
      assert.equal(got.length, frames.length);
      got.forEach((f, i) => assert.deepEqual(f.bytes, frames[i], `frame ${i}`));
    } finally {
      receiver?.kill("SIGKILL");
      await receiver?.output();
      await pmd.stop();
    }
  },
);

Deno.test("replay: done only once the device has taken every frame (none left to count as dropped at stop)", () => {
  const frames = Array.from({ length: 40 }, (_, i) => udp4({ sport: i }));
  const src = `${dir}/drain-in.pcap`;
  const w = PcapWriter.create(src);
  for (const f of frames) w.writeFrame(f, 0, f.length, 1, 0, 0);
  w.close();
  const rig = pipeRig(["sim:dr,gen=off"], () => {});
  try {
    let done = false;
    const replay = createReplayEngine({
      pool: rig.pool,
      burst: 32,
      frames: readPcap(src),
      loops: 1,
      onDone: () => done = true,
    });
    const s = { rx: rig.ports[0], tx: rig.ports[0], queue: 0, pkts: new Uint32Array(32) };
    // The device is not polled: the frames stay in the TX ring.
    for (let i = 0; i < 10; i++) replay.engine(s);
    assert.equal(rig.ports[0].stats.txPackets, 40);
    assert.ok(rig.ports[0].txInFlight(0) > 0);
    assert.ok(!done, "not done while the device has not taken the frames");
    rig.ports[0].poll(); // the device sends them
    replay.engine(s);
    assert.ok(done);
    assert.equal(rig.ports[0].txInFlight(0), 0);
    assert.equal(rig.sent[0].length, 40);
  } finally {
    rig.close();
  }
});
