/**
 * Packed virtqueues (virtio 1.2, 2.8): the driver's packed RX, TX and control queues against the
 * simulated device's packed rings (written apart from the driver, mod/sim/packed_queue.ts):
 * forwarding with every frame accounted for across many wraps of small rings, mergeable buffers,
 * in-order batches, multi-descriptor TX buffers, event suppression (ENABLE, DISABLE and
 * descriptor-specific events with EVENT_IDX), the control queue, and each packed evil mode
 * counted without a frame lost or corrupted.
 */
import assert from "assert";
import { DmaRegion } from "../ffi/dma.ts";
import { accountFrames } from "../cli/accounting.ts";
import { buildStreams, reclaimSent } from "../mod/fwd/streams.ts";
import { createEngine } from "../mod/fwd/engines.ts";
import { ForwardLoop } from "../mod/fwd/loop.ts";
import { StatsReporter } from "../cli/stats.ts";
import { MbufPool } from "../mod/mbuf.ts";
import { emptyStats, Port } from "../mod/port.ts";
import { EVIL_MODES, SPLIT_ONLY_EVIL } from "../mod/sim/device.ts";
import { SimTransport } from "../mod/sim/transport.ts";
import { EventSuppress, Feature, PackedDesc } from "../mod/virtio/constants.ts";
import { PackedRing } from "../mod/virtio/packed_ring.ts";
import { PackedRxQueue } from "../mod/virtio/packed_rx_queue.ts";
import { PackedTxQueue } from "../mod/virtio/packed_tx_queue.ts";
import type { VirtioTransport } from "../mod/virtio/transport.ts";

const PACKED = 1n << BigInt(Feature.RING_PACKED);
const IN_ORDER = 1n << BigInt(Feature.IN_ORDER);

/** io between two packed sims with `spec` on both (gen only on a unless `both`), drained, stopped. */
async function run(
  spec: Record<string, string>,
  opts: { ms?: number; mtu?: number; evil?: string; both?: boolean; queues?: number } = {},
) {
  const common = { packed: "1", ...spec, ...(opts.mtu ? { mtu: String(opts.mtu) } : {}) };
  const a = SimTransport.fromSpec("a", { ...common, ...(opts.evil ? { evil: opts.evil } : {}) });
  const b = SimTransport.fromSpec("b", { ...common, ...(opts.both ? {} : { gen: "off" }) });
  const pool = new MbufPool({ count: 4096, kind: a.dmaKinds[0] });
  const ports = [new Port(0, a, { log: () => {} }), new Port(1, b, { log: () => {} })];
  try {
    for (const p of ports) {
      p.configure({ pool, mtu: opts.mtu, queues: opts.queues });
      p.start();
    }
    const queues = opts.queues ?? 1;
    const engine = createEngine("io", { pool, burst: 32, peers: [] });
    const loop = new ForwardLoop(ports, buildStreams(ports, "io", queues, 32), engine);
    await loop.run({ untilMs: performance.now() + (opts.ms ?? 300) });
    a.wire.stopGenerator();
    b.wire.stopGenerator();
    await loop.drain(20, 2000);
    reclaimSent(ports, queues);
    const features = ports.map((p) => p.features);
    // The device's counters before stop() resets it (its queues go away).
    const dev = [a, b].map(({ device: d }) => ({
      kicks: d.kicks,
      unaskedKicks: d.unaskedKicks,
      interrupts: d.interrupts,
      batchedEntries: d.batchedEntries,
      evilCount: d.evilCount,
      needsReset: d.needsReset,
    }));
    for (const p of ports) p.stop();
    const rows = new StatsReporter(
      ports,
      ["a", "b"],
      "json",
      0,
      (i) => ({ ...[a, b][i].wire.counters }),
    ).rows();
    return {
      rows,
      acc: accountFrames("io", rows)!,
      features,
      a: dev[0],
      b: dev[1],
      poolBack: pool.available === pool.count,
    };
  } finally {
    for (const p of ports) p.close();
    a.close();
    b.close();
    pool.close();
  }
}

const VARIANTS: { name: string; spec: Record<string, string>; mtu?: number; queues?: number }[] = [
  { name: "64-byte frames", spec: {} },
  { name: "a 4-entry ring (many wraps)", spec: { qsize: "4", size: "60+1514" } },
  {
    name: "an 8-entry ring, mergeable 3000-byte frames",
    spec: { qsize: "8", size: "64+3000" },
    mtu: 9000,
  },
  { name: "mergeable 3000 and 9000-byte frames", spec: { size: "64+3000+9000" }, mtu: 9000 },
  { name: "in order", spec: { in_order: "1", size: "60+1514" } },
  { name: "in order, mergeable", spec: { in_order: "1", size: "64+3000" }, mtu: 9000 },
  { name: "notify mode", spec: { notify: "1" } },
  { name: "notify mode, EVENT_IDX", spec: { notify: "1", event_idx: "1" } },
  {
    name: "notify mode, EVENT_IDX, in order, mergeable, 16-entry ring",
    spec: { notify: "1", event_idx: "1", in_order: "1", qsize: "16", size: "64+3000" },
    mtu: 9000,
  },
  { name: "two queue pairs (control queue MQ)", spec: { queues: "2" }, queues: 2 },
];

for (const v of VARIANTS) {
  Deno.test(`packed rings, ${v.name}: every frame forwarded intact, every buffer back`, async () => {
    const r = await run(v.spec, { mtu: v.mtu, queues: v.queues, both: true });
    for (const f of r.features) assert.ok((f & PACKED) !== 0n, "RING_PACKED negotiated");
    if (v.spec.in_order) { for (const f of r.features) assert.ok((f & IN_ORDER) !== 0n); }
    assert.ok(r.acc.ok, r.acc.message);
    assert.ok(r.acc.contentVerified, r.acc.message);
    const [a, b] = r.rows;
    assert.ok(a.rxPackets > 500 && b.rxPackets > 500, `${a.rxPackets} / ${b.rxPackets} frames`);
    for (const row of r.rows) {
      assert.equal(row.rxErrors + row.txErrors + row.rxNoMbuf, 0, JSON.stringify(row));
    }
    if (v.spec.qsize) {
      const wraps = a.rxPackets / Number(v.spec.qsize);
      assert.ok(wraps > 100, `only ${wraps} wraps of the ring`);
    }
    if (v.mtu) assert.ok(b.txBytes > 1000 * b.txPackets / 2, "big frames (TX chains) went through");
    if (v.spec.in_order) {
      assert.ok(r.a.batchedEntries > 0, "the device wrote batched used descriptors");
    }
    if (v.spec.notify) {
      assert.ok(r.a.kicks > 0, "the sleeping device was kicked");
      assert.equal(r.a.unaskedKicks, 0, "no kick the device did not ask for");
      assert.equal(r.b.unaskedKicks, 0, "no kick the device did not ask for");
    }
    assert.equal(r.a.interrupts + r.b.interrupts, 0, "DISABLE: no interrupts");
    assert.ok(r.poolBack, "every buffer back in the pool");
  });
}

Deno.test("packed ring: descriptor-specific event suppression (EVENT_IDX) across the wrap", () => {
  const region = DmaRegion.create({ size: 4096, kind: "anon" });
  try {
    const ring = new PackedRing(0, 8, region, 0);
    const dev = ring.deviceEvent16;
    const set = (flags: number, off = 0, wrap = 1) => {
      region.u16[dev] = off | (wrap << EventSuppress.WRAP_SHIFT);
      region.u16[dev + 1] = flags;
    };
    set(EventSuppress.DISABLE);
    assert.equal(ring.needsKick(0, 3, true), false);
    set(EventSuppress.ENABLE);
    assert.equal(ring.needsKick(0, 3, true), true);
    // Phases 0..15 for an 8-entry ring: 0..7 are wrap counter 1, 8..15 wrap counter 0.
    set(EventSuppress.DESC, 2, 1);
    assert.equal(ring.needsKick(0, 3, true), true, "slot 2, round 1, published");
    assert.equal(ring.needsKick(0, 2, true), false, "slot 2 not yet published");
    assert.equal(ring.needsKick(3, 6, true), false, "past it");
    assert.equal(ring.needsKick(3, 6, false), true, "DESC without EVENT_IDX: kick anyway");
    set(EventSuppress.DESC, 1, 0); // slot 1 of the second round = phase 9
    assert.equal(ring.needsKick(6, 9, true), false);
    assert.equal(ring.needsKick(6, 10, true), true, "crossing the end of the ring");
    assert.equal(ring.needsKick(1, 3, true), false, "the same slot in the other round");
    set(EventSuppress.DESC, 7, 1); // phase 7; a burst from phase 14 around to 8
    assert.equal(ring.needsKick(14, 8, true), true, "across the wrap of two rounds");
    set(EventSuppress.DESC, 9, 1); // no slot 9 in an 8-entry ring: a kick is harmless
    assert.equal(ring.needsKick(0, 1, true), true);
  } finally {
    region.close();
  }
});

Deno.test("packed ring: a publish that finds notifications off is settled by a fenced look", () => {
  const region = DmaRegion.create({ size: 4096, kind: "anon" });
  try {
    const ring = new PackedRing(0, 8, region, 0);
    const dev = ring.deviceEvent16;
    const word = (slot: number) => region.u32[ring.desc32 + 4 * slot + 3];
    const own = region.u16[ring.driverEvent16 + 1];
    // The device wants notifications: the publish stores the head word and says so.
    region.u16[dev + 1] = EventSuppress.ENABLE;
    assert.equal(ring.publish(ring.desc32 + 3, 0x0080_0005, 0, 2, false), true);
    assert.equal(word(0), 0x0080_0005);
    assert.equal(ring.unsettled, false);
    // Notifications off: no kick now, and on x86-64 the look was not fenced.
    region.u16[dev + 1] = EventSuppress.DISABLE;
    assert.equal(ring.publish(ring.desc32 + 4 * 2 + 3, 0x0080_0006, 2, 3, false), false);
    assert.equal(word(2), 0x0080_0006);
    assert.equal(ring.unsettled, Deno.build.arch === "x86_64");
    // The device turned them on meanwhile: the fenced look finds it; the driver's flags stay.
    region.u16[dev + 1] = EventSuppress.ENABLE;
    assert.equal(ring.settle(), true);
    assert.equal(ring.unsettled, false);
    assert.equal(region.u16[ring.driverEvent16 + 1], own);
    // Still off at the fenced look: nothing to do.
    region.u16[dev + 1] = EventSuppress.DISABLE;
    ring.publish(ring.desc32 + 4 * 3 + 3, 0x0080_0007, 3, 4, false);
    assert.equal(ring.settle(), false);
    // EVENT_IDX: the ordered publish decides alone (descriptor 5 of this round).
    region.u16[dev] = 5 | (1 << EventSuppress.WRAP_SHIFT);
    region.u16[dev + 1] = EventSuppress.DESC;
    assert.equal(ring.publish(ring.desc32 + 4 * 4 + 3, 0x0080_0008, 4, 6, true), true);
    assert.equal(ring.publish(ring.desc32 + 4 * 6 + 3, 0x0080_0009, 6, 7, true), false);
    assert.equal(ring.unsettled, false);
  } finally {
    region.close();
  }
});

Deno.test("packed TX queue: idle() kicks a device that turned notifications on after a publish", () => {
  const pool = new MbufPool({ count: 64, kind: "anon" });
  const region = DmaRegion.create({ size: 4096, kind: "anon" });
  try {
    const ring = new PackedRing(0, 8, region, 0);
    let kicks = 0;
    const transport = {
      notify() {
        kicks++;
      },
    } as unknown as VirtioTransport;
    const stats = emptyStats();
    const tx = new PackedTxQueue({
      ring,
      pool,
      transport,
      hdrSize: 12,
      eventIdx: false,
      vlanInsert: -1,
      inOrder: true,
      stats,
      totals: emptyStats(),
    });
    const dev = ring.deviceEvent16;
    const pkts = new Uint32Array(2);
    const frames = (n: number) => {
      for (let i = 0; i < n; i++) {
        const m = pool.alloc();
        pool.dataLen[m] = 60;
        pool.pktLen[m] = 60;
        pkts[i] = m;
      }
      return n;
    };
    region.u16[dev + 1] = EventSuppress.DISABLE;
    assert.equal(tx.burst(pkts, frames(2)), 2);
    assert.equal(kicks, 0, "notifications off at the publish");
    tx.idle();
    assert.equal(kicks, 0, "still off at the fenced look");
    tx.burst(pkts, frames(1));
    // The device turns notifications on and waits: the next idle() kicks it (once).
    region.u16[dev + 1] = EventSuppress.ENABLE;
    tx.idle();
    assert.equal(kicks, Deno.build.arch === "x86_64" ? 1 : 0);
    tx.idle();
    assert.equal(kicks, Deno.build.arch === "x86_64" ? 1 : 0, "settled: no second kick");
    assert.equal(stats.txPackets, 3);
  } finally {
    region.close();
    pool.close();
  }
});

/** A transport that only takes notifications (ring-level tests drive the device side by hand). */
function quietTransport(): VirtioTransport {
  return { notify() {} } as unknown as VirtioTransport;
}

Deno.test("packed RX queue: wrap counters over 40 rounds of an 8-entry ring, wrong-wrap entries counted", () => {
  const pool = new MbufPool({ count: 64, kind: "anon" });
  const region = DmaRegion.create({ size: 4096, kind: "anon" });
  try {
    const ring = new PackedRing(0, 8, region, 0);
    const stats = emptyStats();
    const rx = new PackedRxQueue({
      ring,
      pool,
      transport: quietTransport(),
      hdrSize: 12,
      mrgRxbuf: false,
      eventIdx: false,
      portId: 0,
      vlanStrip: false,
      stats,
      totals: emptyStats(),
    });
    rx.fill();
    const u16 = region.u16;
    const u32 = region.u32;
    const flagsAt = (slot: number) => u16[2 * ring.desc32 + 8 * slot + 7];
    // 2.8.1: made available with wrap counter 1: AVAIL set, USED clear, device-writable.
    for (let s = 0; s < 8; s++) {
      assert.equal(flagsAt(s), PackedDesc.F_AVAIL | PackedDesc.F_WRITE, `slot ${s}`);
      assert.equal(u16[2 * ring.desc32 + 8 * s + 6], s, "buffer id = slot");
    }
    assert.equal(u16[ring.driverEvent16 + 1], EventSuppress.DISABLE, "we poll");
    const pkts = new Uint32Array(8);
    let wrap = 1;
    let received = 0;
    let bent = 0;
    for (let round = 0; round < 40; round++) {
      // The device uses every slot of this round: id (as made available), length, used flags.
      for (let s = 0; s < 8; s++) {
        const d = ring.desc32 + 4 * s;
        const id = u32[d + 3] & 0xffff;
        u32[d + 2] = 12 + 60;
        const wrong = round % 5 === 4 && s === 3; // a used flag with the wrong wrap counter
        if (wrong) bent++;
        const w = wrong ? wrap ^ 1 : wrap;
        const used = w === 1 ? PackedDesc.F_AVAIL | PackedDesc.F_USED : 0;
        u32[d + 3] = id | ((used | PackedDesc.F_WRITE) << 16);
      }
      let n = 0;
      for (let k = 0; k < 8 && n < 8; k++) n += rx.burst(pkts.subarray(n), 8 - n);
      const good = round % 5 === 4 ? 7 : 8;
      assert.equal(n, good, `round ${round}`);
      received += n;
      for (let i = 0; i < n; i++) pool.free(pkts[i]);
      wrap ^= 1;
      // Every slot is available again, with the next round's counter.
      const avail = wrap === 1 ? PackedDesc.F_AVAIL : PackedDesc.F_USED;
      for (let s = 0; s < 8; s++) assert.equal(flagsAt(s), avail | PackedDesc.F_WRITE);
    }
    assert.equal(received, 40 * 8 - bent);
    assert.equal(stats.rxErrors, bent);
    assert.equal(stats.rxPackets, received);
    rx.release();
    assert.equal(pool.available, pool.count);
  } finally {
    region.close();
    pool.close();
  }
});

Deno.test("packed ring: control commands (RX mode, MAC table, VLAN) reach the device", () => {
  const t = SimTransport.fromSpec("c", { packed: "1", gen: "off", qsize: "8" });
  const pool = new MbufPool({ count: 256, kind: t.dmaKinds[0] });
  const port = new Port(0, t, { log: () => {} });
  try {
    port.configure({ pool });
    port.start();
    assert.ok((port.features & PACKED) !== 0n);
    // More commands than the ring has entries: the wrap counter turns several times.
    for (let i = 0; i < 20; i++) {
      port.setPromiscuous(i % 2 === 0);
      assert.equal(t.device.filter.promisc, i % 2 === 0);
    }
    port.setMacTable([Uint8Array.of(2, 0, 0, 0, 0, 1)], [Uint8Array.of(1, 0, 0x5e, 0, 0, 1)]);
    assert.equal(t.device.filter.unicast.length, 1);
    assert.equal(t.device.filter.multicast.length, 1);
    port.addVlan(42);
    assert.ok(t.device.filter.vlans.has(42));
    assert.throws(() => port.addVlan(5000), /VLAN id 5000/);
    assert.equal(t.device.errors.badDescriptors, 0);
  } finally {
    port.close();
    t.close();
    pool.close();
  }
});

Deno.test("packed ring: packed=1 on a legacy sim is a one-line error", () => {
  assert.throws(
    () => SimTransport.fromSpec("l", { packed: "1", legacy: "1" }),
    /packed=1 needs VERSION_1/,
  );
  assert.throws(() => SimTransport.fromSpec("l", { evil: "packed-wrap" }), /add packed=1/);
  assert.throws(
    () => SimTransport.fromSpec("l", { evil: "idx-jump", packed: "1" }),
    /needs a split ring/,
  );
});

/** Packed evil modes, and the generic ones that also apply to a packed ring. */
const MODES = EVIL_MODES.filter((m) => !SPLIT_ONLY_EVIL.includes(m));
/** Modes that bend transmit completions (counted in txErrors) rather than received frames. */
const TX_MODES = ["packed-bad-id", "packed-used-twice"];

for (const mode of MODES) {
  for (
    const v of VARIANTS.filter((v) =>
      ["64-byte frames", "in order, mergeable", "mergeable 3000 and 9000-byte frames"].includes(
        v.name,
      )
    )
  ) {
    Deno.test(`packed evil device ${mode}, ${v.name}: counted, nothing lost or corrupted, buffers back`, async () => {
      const r = await run(v.spec, { mtu: v.mtu, evil: mode, both: true });
      const a = r.rows[0];
      const evilCount = r.a.evilCount;
      assert.ok(evilCount > 0, "the device misbehaved");
      assert.equal(r.a.needsReset, false);
      for (const d of r.acc.directions) assert.equal(d.lost, 0, r.acc.message);
      for (const d of r.acc.directions) assert.equal(d.badFrames, 0, r.acc.message);
      if (TX_MODES.includes(mode)) {
        // Every bent completion is one TX error; the frame itself was sent and is counted.
        assert.equal(a.txErrors, evilCount, JSON.stringify(a));
        assert.equal(a.rxErrors, 0);
        assert.match(r.acc.message, /TX errors/); // the accounting flags them, nothing else
      } else if (mode === "bad-num-buffers") {
        assert.ok(r.acc.ok, r.acc.message);
        assert.ok(a.rxErrors <= evilCount);
      } else {
        // Every bent frame is one error and one drop, however many buffers it spans.
        assert.ok(r.acc.ok, r.acc.message);
        assert.equal(a.rxErrors, evilCount, JSON.stringify(a));
      }
      assert.ok(a.rxPackets > 100, `good frames still received: ${a.rxPackets}`);
      assert.ok(r.poolBack, "every buffer back in the pool");
    });
  }
}
