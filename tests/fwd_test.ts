/**
 * Forwarding engines and the loop against simulated devices: io forwards everything with content
 * verified by the sim's checker, mac and macswap rewrite addresses exactly, txonly frames (also
 * multi-segment) arrive at the wire byte-exact, rxonly frees everything.
 */
import assert from "assert";
import { accountFrames } from "../cli/accounting.ts";
import { buildStreams, reclaimSent } from "../mod/fwd/streams.ts";
import { createEngine, defaultPeer, type Mode } from "../mod/fwd/engines.ts";
import { ForwardLoop } from "../mod/fwd/loop.ts";
import { type Counters, type PortRow, STAT_KEYS, StatsReporter } from "../cli/stats.ts";
import { MbufPool } from "../mod/mbuf.ts";
import { Port } from "../mod/port.ts";
import { openTransport } from "../mod/portspec.ts";
import type { SimTransport } from "../mod/sim/transport.ts";
import { checkTestFrame, FrameCheck, writeTestFrame } from "../mod/testframe.ts";

interface Rig {
  sims: SimTransport[];
  ports: Port[];
  pool: MbufPool;
  loop: ForwardLoop;
  /** Frames each sim's wire received from the driver (copies). */
  sent: Uint8Array[][];
  close(): void;
}

function rig(
  mode: Mode,
  specs: string[],
  opts: {
    peers?: Uint8Array[];
    txpkts?: number[];
    vlanInsert?: number;
    burst?: number;
    headroom?: number;
    txSeqStart?: number;
    poolCount?: number;
    mtu?: number;
  } = {},
): Rig {
  const sims: SimTransport[] = [];
  const ports: Port[] = [];
  let pool: MbufPool | null = null;
  const sent: Uint8Array[][] = [];
  const close = () => {
    for (const p of ports) p.close();
    for (const s of sims) s.close();
    pool?.close();
  };
  try {
    for (const s of specs) sims.push(openTransport(s) as SimTransport);
    pool = new MbufPool({
      count: opts.poolCount ?? 4096,
      kind: sims[0].dmaKinds[0],
      headroom: opts.headroom,
    });
    for (let i = 0; i < sims.length; i++) {
      const port = new Port(i, sims[i], { log: () => {} });
      ports.push(port);
      port.configure({ pool, vlanInsert: opts.vlanInsert, mtu: opts.mtu });
      port.start();
      const got: Uint8Array[] = [];
      sent.push(got);
      sims[i].wire.onTransmit = (f) => {
        if (got.length < 10000) got.push(f.slice());
      };
    }
    const burst = opts.burst ?? 32;
    const engine = createEngine(mode, {
      pool,
      burst,
      peers: opts.peers ?? [],
      txpkts: opts.txpkts,
      txSeqStart: opts.txSeqStart,
      txStreamBase: 0x100,
    });
    const loop = new ForwardLoop(ports, buildStreams(ports, mode, 1, burst), engine);
    return { sims, ports, pool, loop, sent, close };
  } catch (e) {
    close();
    throw e;
  }
}

function frame(len: number, seq: number, stream: number, dst: Uint8Array, src: Uint8Array) {
  const f = new Uint8Array(len);
  writeTestFrame(f, 0, len, stream, seq, dst, src);
  return f;
}

const A = Uint8Array.of(0x02, 0xaa, 0, 0, 0, 1);
const B = Uint8Array.of(0x02, 0xbb, 0, 0, 0, 2);

/** Run the loop until `want` frames reached wire `i` (or 5 s passed). */
async function runUntil(r: Rig, i: number, want: number): Promise<void> {
  const until = performance.now() + 5000;
  while (r.sent[i].length < want && performance.now() < until) {
    await r.loop.run({ untilMs: performance.now() + 5 });
  }
}

/** Stop the generators, drain, stop the ports; returns the summary rows with wire counters. */
async function finish(r: Rig, mode: Mode) {
  for (const s of r.sims) s.wire.stopGenerator();
  await r.loop.drain(20, 2000, mode === "txonly");
  reclaimSent(r.ports, 1);
  for (const p of r.ports) p.stop();
  const rep = new StatsReporter(
    r.ports,
    r.sims.map((s) => s.name),
    "json",
    0,
    (i) => ({ ...r.sims[i].wire.counters }),
  );
  return rep.rows();
}

Deno.test("fwd io: every generated frame forwarded and checked, or counted as dropped", async () => {
  const r = rig("io", ["sim:a", "sim:b"]);
  try {
    await r.loop.run({ untilMs: performance.now() + 400 });
    const rows = await finish(r, "io");
    const acc = accountFrames("io", rows)!;
    assert.ok(acc.ok, acc.message);
    assert.ok(acc.contentVerified);
    for (const d of acc.directions) {
      assert.ok(d.generated > 1000, `port ${d.from} generated only ${d.generated}`);
      assert.ok(d.checked > 0.9 * d.generated, `port ${d.from}->${d.to}: ${JSON.stringify(d)}`);
    }
    // What port 0 received is what port 1 sent, and vice versa.
    assert.equal(rows[0].rxPackets, rows[1].txPackets + rows[1].txDropped);
    assert.equal(rows[1].rxPackets, rows[0].txPackets + rows[0].txDropped);
    assert.equal(r.pool.available, r.pool.count, "every buffer back in the pool");
  } finally {
    r.close();
  }
});

// Pools too small to fill every RX and TX ring (the CLI refuses them; a library user may not).
// Once the pool is empty receive gets no buffers, so only the TX rings can give some back: they
// must do so although they are far from full, or forwarding stops for good (it did after 88
// frames with 300 buffers). Frames must keep flowing to the end of the run.
for (
  const c of [
    { what: "one port, 300 buffers", specs: ["sim:a"], pool: 300 },
    { what: "two ports, 700 buffers", specs: ["sim:a", "sim:b"], pool: 700 },
    // Frames of five buffers: refused as rxNoMbuf without an allocation (engines.ts, idle).
    {
      what: "9000-byte frames of five buffers, 300 buffers",
      specs: ["sim:a,mtu=9000,size=9000"],
      pool: 300,
      mtu: 9000,
    },
  ]
) {
  Deno.test(`fwd io: a pool smaller than the rings keeps forwarding (${c.what})`, async () => {
    const r = rig("io", c.specs, { poolCount: c.pool, mtu: c.mtu });
    try {
      const rx = () => r.ports.reduce((a, p) => a + p.stats.rxPackets, 0);
      const counts: number[] = [];
      for (let i = 0; i < 4; i++) {
        await r.loop.run({ untilMs: performance.now() + 100 });
        counts.push(rx());
      }
      // Each 100 ms forwards frames (the stall forwarded none after the first few dozen).
      const step = c.mtu === undefined ? 1000 : 100;
      for (let i = 0; i < counts.length; i++) {
        assert.ok(
          counts[i] > (counts[i - 1] ?? 0) + step,
          `stalled: received ${counts.join(", ")}`,
        );
      }
      if (c.mtu === undefined) {
        // A buffer is asked back when an allocation fails, before the frame is dropped: drops
        // are rare (taking buffers back only after an empty burst dropped 11 frames per frame
        // forwarded).
        const noMbuf = r.ports.reduce((a, p) => a + p.stats.rxNoMbuf, 0);
        assert.ok(noMbuf <= counts[3] / 10, `${noMbuf} rxNoMbuf for ${counts[3]} received`);
      }
      const acc = accountFrames("io", await finish(r, "io"))!;
      assert.ok(acc.ok, acc.message);
      assert.equal(r.pool.available, r.pool.count, "every buffer back in the pool");
    } finally {
      r.close();
    }
  });
}

Deno.test("fwd io: frames sent while the peer's link is down are accounted for", async () => {
  const r = rig("io", ["sim:a", "sim:b"]);
  try {
    await r.loop.run({ untilMs: performance.now() + 50 });
    r.sims[1].setLink(false); // port 1's device drops what it is given to send
    await r.loop.run({ untilMs: performance.now() + 50 });
    r.sims[1].setLink(true);
    await r.loop.run({ untilMs: performance.now() + 50 });
    const rows = await finish(r, "io");
    assert.ok(rows[1].wire!.txLinkDown > 0, "frames met the link down");
    const acc = accountFrames("io", rows)!;
    assert.ok(acc.ok, acc.message);
  } finally {
    r.close();
  }
});

for (const packed of [0, 1]) {
  Deno.test(`fwd io: a port stopped under traffic counts what its RX ring held as dropped (packed=${packed})`, async () => {
    const r = rig("io", [`sim:a,packed=${packed}`, `sim:b,packed=${packed}`]);
    try {
      await r.loop.run({ untilMs: performance.now() + 50 });
      // The devices have filled RX buffers that no burst took yet: stopping drops them.
      r.ports[0].stop();
      await r.loop.run({ untilMs: performance.now() + 20 });
      r.ports[0].start();
      await r.loop.run({ untilMs: performance.now() + 50 });
      const rows = await finish(r, "io");
      const acc = accountFrames("io", rows)!;
      assert.ok(acc.ok, acc.message);
      assert.ok(rows[0].rxDropped > 0, "frames were left in the RX ring");
      assert.equal(r.pool.available, r.pool.count, "every buffer back in the pool");
    } finally {
      r.close();
    }
  });
}

Deno.test("fwd io: a single port forwards to itself", async () => {
  const r = rig("io", ["sim:solo"]);
  try {
    await r.loop.run({ untilMs: performance.now() + 200 });
    const acc = accountFrames("io", await finish(r, "io"))!;
    assert.ok(acc.ok, acc.message);
    assert.equal(acc.directions[0].to, 0);
    assert.ok(acc.directions[0].checked > 0);
  } finally {
    r.close();
  }
});

Deno.test("fwd mac: dst = peer address, src = port MAC, the rest unchanged", async () => {
  const peer1 = Uint8Array.of(0x02, 0x11, 0x22, 0x33, 0x44, 0x55);
  const r = rig("mac", ["sim:a,gen=off", "sim:b,gen=off"], { peers: [undefined!, peer1] });
  try {
    const sentIn: Uint8Array[] = [];
    for (let i = 0; i < 100; i++) {
      const f = frame(64 + i * 7, i, 3, A, B);
      sentIn.push(f);
      assert.ok(r.sims[0].wire.inject(f));
    }
    const back = frame(100, 0, 4, B, A);
    assert.ok(r.sims[1].wire.inject(back));
    await runUntil(r, 1, 100);
    await runUntil(r, 0, 1);
    assert.equal(r.sent[1].length, 100);
    for (let i = 0; i < 100; i++) {
      const out = r.sent[1][i];
      assert.deepEqual(out.subarray(0, 6), peer1);
      assert.deepEqual(out.subarray(6, 12), r.ports[1].mac);
      assert.deepEqual(out.subarray(12), sentIn[i].subarray(12));
    }
    // Port 0 has no --eth-peer: the default 02:00:00:00:00:00.
    assert.equal(r.sent[0].length, 1);
    assert.deepEqual(r.sent[0][0].subarray(0, 6), defaultPeer(0));
    assert.deepEqual(r.sent[0][0].subarray(6, 12), r.ports[0].mac);
    assert.deepEqual(r.sent[0][0].subarray(12), back.subarray(12));
  } finally {
    r.close();
  }
});

Deno.test("fwd macswap: addresses swapped, the rest unchanged; runts dropped and counted", async () => {
  const r = rig("macswap", ["sim:a,gen=off", "sim:b,gen=off"]);
  try {
    const f = frame(300, 7, 5, A, B);
    assert.ok(r.sims[0].wire.inject(f));
    assert.ok(r.sims[0].wire.inject(Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8)));
    assert.ok(r.sims[0].wire.inject(frame(60, 8, 5, A, B)));
    await runUntil(r, 1, 2);
    await r.loop.run({ untilMs: performance.now() + 20 });
    assert.equal(r.sent[1].length, 2);
    const out = r.sent[1][0];
    assert.deepEqual(out.subarray(0, 6), B);
    assert.deepEqual(out.subarray(6, 12), A);
    assert.deepEqual(out.subarray(12), f.subarray(12));
    assert.equal(r.ports[0].stats.rxPackets, 3);
    assert.equal(r.ports[0].stats.rxDropped, 1, "the 8-byte runt");
    for (const p of r.ports) p.stop();
    assert.equal(r.pool.available, r.pool.count);
  } finally {
    r.close();
  }
});

async function txonly(txpkts: number[], headroom?: number, txSeqStart = 0, spec = "sim:t,gen=off") {
  const peer = Uint8Array.of(0x02, 0x77, 0, 0, 0, 9);
  const r = rig("txonly", [spec], {
    peers: [peer],
    txpkts,
    burst: 8,
    headroom,
    txSeqStart,
  });
  try {
    await runUntil(r, 0, 300);
    const total = txpkts.reduce((a, b) => a + b, 0);
    const got = r.sent[0];
    assert.ok(got.length >= 300, `only ${got.length} frames at the wire`);
    const out = new Uint32Array(4);
    for (let i = 0; i < 300; i++) {
      const f = got[i];
      assert.equal(f.length, total);
      assert.equal(checkTestFrame(f, 0, f.length, out), FrameCheck.OK, `frame ${i}`);
      assert.equal(out[0], 0x100, "stream = base + port id");
      const seq = (txSeqStart + i) >>> 0;
      assert.equal(out[1], seq, "consecutive sequence numbers");
      assert.deepEqual(f, frame(total, seq, 0x100, peer, r.ports[0].mac), `frame ${i} byte-exact`);
    }
    const rows = await finish(r, "txonly");
    const acc = accountFrames("txonly", rows)!;
    assert.ok(acc.ok, acc.message);
    assert.equal(r.pool.available, r.pool.count);
  } finally {
    r.close();
  }
}

Deno.test("fwd txonly: 64-byte frames arrive byte-exact with consecutive sequence numbers", () =>
  txonly([64]));

Deno.test("fwd txonly: --txpkts 64,1400 is one two-segment 1464-byte frame", () =>
  txonly([64, 1400]));

Deno.test("fwd txonly: three segments with the patched fields split across them", () =>
  txonly([20, 10, 40]));

// The frame copy takes word stores at a 4-aligned data offset and a TypedArray set otherwise:
// frames come out byte-exact either way.
Deno.test("fwd txonly: frames at a 4-aligned (headroom 132) and a 2-aligned (130) offset", async () => {
  await txonly([64, 30], 132);
  await txonly([64, 30], 130);
});

// A one-segment frame at a 4-aligned offset gets its id, checksum and sequence number as four
// word stores, other frames byte by byte: every byte of both, with sequence numbers whose high
// bytes are set, that carry into the upper half and that wrap around.
Deno.test("fwd txonly: one-segment frames, word and byte patches, sequence numbers past 16 and 32 bits", async () => {
  for (const headroom of [128, 132, 130]) {
    await txonly([64], headroom, 0xfff0);
    await txonly([61], headroom, 0xffffff00);
  }
});

// A 64-byte frame at an 8-aligned offset is copied as eight doubles; a template one of whose
// doubles is a NaN pattern (here a signalling one: source MAC f2:ff, bytes 6-7 of the frame) is
// copied as words instead, and comes out byte-exact too. (This V8 copies such a double unchanged
// in optimized code as well; the word copy is for the tiers that would not.)
Deno.test("fwd txonly: a frame template holding a NaN pattern is copied exactly", async () => {
  await txonly([64], 128, 0, "sim:t,gen=off,mac=f2:ff:00:00:00:01");
});

// All free buffers fit in the TX ring: the engine finds the pool empty and must take buffers back
// from the ring itself (a burst of 0), or it stops for good.
Deno.test("fwd txonly: a pool that the TX ring can empty keeps going", async () => {
  const r = rig("txonly", ["sim:t,gen=off"], { burst: 8, poolCount: 256 + 40 });
  try {
    const free = r.pool.available;
    assert.ok(free > 0 && free < 64, `${free} buffers free after the RX ring took its own`);
    await runUntil(r, 0, 1000);
    assert.ok(r.sent[0].length >= 1000, `only ${r.sent[0].length} frames at the wire`);
    const acc = accountFrames("txonly", await finish(r, "txonly"))!;
    assert.ok(acc.ok, acc.message);
  } finally {
    r.close();
  }
});

Deno.test("fwd rxonly: receives and frees everything (pool conservation)", async () => {
  const r = rig("rxonly", ["sim:r"]);
  try {
    await r.loop.run({ untilMs: performance.now() + 200 });
    const rows = await finish(r, "rxonly");
    assert.ok(rows[0].rxPackets > 1000, `received ${rows[0].rxPackets}`);
    assert.equal(rows[0].txPackets, 0);
    const acc = accountFrames("rxonly", rows)!;
    assert.ok(acc.ok, acc.message);
    assert.equal(r.pool.available, r.pool.count);
  } finally {
    r.close();
  }
});

Deno.test("fwd accounting: frames that failed are never all accounted for", () => {
  const row = (c: Partial<Counters>, wire: Record<string, number>): PortRow => ({
    port: 0,
    name: "sim:t",
    linkUp: true,
    ...Object.fromEntries(STAT_KEYS.map((k) => [k, c[k] ?? 0])) as Counters,
    wire,
  });
  // txonly: 9 segments for an 8-entry ring, every frame refused as malformed (each counted).
  let acc = accountFrames("txonly", [
    row({ txDropped: 6_100_000, txErrors: 6_100_000 }, { checkedOk: 0 }),
  ])!;
  assert.equal(acc.ok, false);
  assert.equal(acc.message, "frames failed: port 0: 6100000 TX errors (0 frames sent)");
  assert.deepEqual(
    [acc.directions[0].generated, acc.directions[0].drops, acc.directions[0].lost],
    [6_100_000, 6_100_000, 0],
  );
  // Frames a full ring refused are built and counted as drops: load, not failure.
  acc = accountFrames("txonly", [row({ txPackets: 10, txDropped: 5 }, { checkedOk: 10 })])!;
  assert.equal(acc.ok, true, acc.message);
  assert.equal(acc.message, "all 15 frames accounted for, content verified (5 counted drops)");
  // io: a frame port 1 could not send is a counted drop, but an error makes the run fail.
  const io = (txErrors: number) =>
    accountFrames("io", [
      row({ rxPackets: 10 }, { generated: 10, checkedOk: 0 }),
      { ...row({ txPackets: 8, txDropped: 2, txErrors }, { generated: 0, checkedOk: 8 }), port: 1 },
    ])!;
  assert.equal(io(0).ok, true, io(0).message);
  assert.equal(io(2).ok, false);
  assert.match(io(2).message, /^frames failed: port 1: 2 TX errors \(8 frames sent\)$/);
});

Deno.test("fwd io with --vlan-insert: frames leave tagged, content intact", async () => {
  const r = rig("io", ["sim:a,gen=off", "sim:b,gen=off"], { vlanInsert: 42 });
  try {
    const f = frame(128, 1, 6, A, B);
    assert.ok(r.sims[0].wire.inject(f));
    await runUntil(r, 1, 1);
    const out = r.sent[1][0];
    assert.equal(out.length, f.length + 4);
    assert.deepEqual(out.subarray(0, 12), f.subarray(0, 12));
    assert.deepEqual([...out.subarray(12, 16)], [0x81, 0x00, 0x00, 42]);
    assert.deepEqual(out.subarray(16), f.subarray(12));
  } finally {
    r.close();
  }
});

Deno.test("fwd mac and macswap: addresses rewritten exactly at any data offset (word, half-word and byte paths)", () => {
  const pool = new MbufPool({ count: 64, kind: "anon" });
  const mac = Uint8Array.of(2, 0, 0, 0, 0, 0xaa);
  const peer = Uint8Array.of(2, 0, 0, 0, 0, 0xbb);
  try {
    for (const mode of ["mac", "macswap"] as const) {
      // A stand-in for the two ports: RX hands out the prepared frames, TX keeps what it is given.
      const frames: number[] = [];
      const sent: number[] = [];
      const port = {
        id: 0,
        mac,
        stats: { txDropped: 0, rxDropped: 0 },
        rxBurst: (_q: number, pkts: Uint32Array) => {
          frames.forEach((m, i) => (pkts[i] = m));
          return frames.length;
        },
        txBurst: (_q: number, pkts: Uint32Array, n: number) => {
          for (let i = 0; i < n; i++) sent.push(pkts[i]);
          return n;
        },
      } as unknown as Port;
      const engine = createEngine(mode, { pool, burst: 8, peers: [peer] });
      const original: Uint8Array[] = [];
      for (let shift = 0; shift < 4; shift++) {
        const m = pool.alloc();
        pool.dataOff[m] = pool.headroom + shift;
        pool.dataLen[m] = 60;
        const f = pool.bytes.subarray(pool.dataStart(m), pool.dataStart(m) + 60);
        f.forEach((_, i) => (f[i] = (i * 7 + shift) & 0xff));
        original.push(f.slice());
        frames.push(m);
      }
      assert.equal(engine({ rx: port, tx: port, queue: 0, pkts: new Uint32Array(8) }), 4);
      assert.deepEqual(sent, frames);
      sent.forEach((m, shift) => {
        const f = pool.bytes.subarray(pool.dataStart(m), pool.dataStart(m) + 60);
        const o = original[shift];
        const [dst, src] = mode === "mac" ? [peer, mac] : [o.subarray(6, 12), o.subarray(0, 6)];
        assert.deepEqual(f.subarray(0, 6), dst, `${mode} dst, data offset +${shift}`);
        assert.deepEqual(f.subarray(6, 12), src, `${mode} src, data offset +${shift}`);
        assert.deepEqual(f.subarray(12), o.subarray(12), `${mode} rest, data offset +${shift}`);
        pool.free(m);
      });
    }
  } finally {
    pool.close();
  }
});
