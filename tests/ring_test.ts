/**
 * Split ring, RX queue and TX queue unit tests. The test plays the device by hand, reading and
 * writing the rings the way virtio 1.2 section 2.7 describes (descriptor table, avail ring, used
 * ring), so each check names exactly what the device did.
 */
import assert from "assert";
import { DmaRegion } from "../ffi/dma.ts";
import { MbufFlag, MbufPool } from "../mod/mbuf.ts";
import { emptyStats } from "../mod/port.ts";
import type { QueueMemory, RingLayout, VirtioTransport } from "../mod/virtio/transport.ts";
import { Avail, Desc, Feature, NetHdr, Used } from "../mod/virtio/constants.ts";
import { DeviceQueue } from "../mod/sim/queue.ts";
import { RxQueue } from "../mod/virtio/rx_queue.ts";
import { ringParts, SplitRing } from "../mod/virtio/split_ring.ts";
import { TxQueue } from "../mod/virtio/tx_queue.ts";

const SEPARATE: RingLayout = { placement: "separate", usedAlign: 4 };
const LEGACY: RingLayout = { placement: "contiguous", usedAlign: 4096 };

/** Just enough transport for a queue: counts notifications. */
function fakeTransport(): VirtioTransport & { kicks: number } {
  const t = {
    kicks: 0,
    name: "test",
    ringLayout: SEPARATE,
    dmaKinds: ["anon", "memfd"] as const,
    queueSizeFixed: false,
    reset() {},
    getStatus: () => 0,
    setStatus() {},
    getDeviceFeatures: () => 1n << BigInt(Feature.VERSION_1),
    setDriverFeatures() {},
    readConfig: (_o: number, n: number) => new Uint8Array(n),
    queueMaxSize: () => 1024,
    setupQueue(_q: QueueMemory) {},
    addMemory(_r: DmaRegion) {},
    notify() {
      t.kicks++;
    },
    poll: () => 0,
    close() {},
  };
  return t;
}

/** The device side of one ring, written from 2.7 directly with DataViews (no driver helpers). */
class HandDevice {
  readonly dv: DataView;
  lastAvail = 0;
  usedIdx = 0;
  constructor(readonly ring: SplitRing, readonly pool: MbufPool) {
    this.dv = new DataView(ring.region.buffer);
  }
  get m(): QueueMemory {
    return this.ring.memory;
  }
  availIdx(): number {
    return this.dv.getUint16(this.m.availOffset + Avail.IDX, true);
  }
  /** Next available head, or -1. */
  nextAvail(): number {
    if (this.lastAvail === this.availIdx()) return -1;
    const slot = this.lastAvail % this.m.size;
    this.lastAvail = (this.lastAvail + 1) & 0xffff;
    return this.dv.getUint16(this.m.availOffset + Avail.RING + 2 * slot, true);
  }
  desc(i: number): { addr: number; len: number; flags: number; next: number } {
    const o = this.m.descOffset + Desc.SIZE * i;
    const lo = this.dv.getUint32(o + Desc.ADDR, true);
    const hi = this.dv.getUint32(o + Desc.ADDR + 4, true);
    return {
      addr: hi * 2 ** 32 + lo,
      len: this.dv.getUint32(o + Desc.LEN, true),
      flags: this.dv.getUint16(o + Desc.FLAGS, true),
      next: this.dv.getUint16(o + Desc.NEXT, true),
    };
  }
  /** Byte offset in the pool region of a descriptor address. */
  poolOffset(addr: number): number {
    const off = addr - this.pool.region.iovaBase;
    assert.ok(off >= 0 && off < this.pool.region.size, `address ${addr} outside the pool`);
    return off;
  }
  /** Write a used element without publishing. */
  putUsed(id: number, len: number, at = this.usedIdx): void {
    const o = this.m.usedOffset + Used.RING + Used.ELEM_SIZE * (at % this.m.size);
    this.dv.setUint32(o + Used.ELEM_ID, id, true);
    this.dv.setUint32(o + Used.ELEM_LEN, len, true);
  }
  setUsedIdx(v: number): void {
    this.usedIdx = v & 0xffff;
    this.dv.setUint16(this.m.usedOffset + Used.IDX, this.usedIdx, true);
  }
  /** Receive-side: put `frames` into the next available buffers (one buffer each). */
  deliver(frames: Uint8Array[], hdrSize: number): void {
    for (const f of frames) {
      const head = this.nextAvail();
      assert.ok(head >= 0, "no RX buffer available");
      const d = this.desc(head);
      assert.equal(d.flags & Desc.F_WRITE, Desc.F_WRITE);
      assert.ok(hdrSize + f.length <= d.len);
      const off = this.poolOffset(d.addr);
      this.pool.bytes.fill(0, off, off + hdrSize);
      this.pool.bytes[off + NetHdr.NUM_BUFFERS] = 1;
      this.pool.bytes.set(f, off + hdrSize);
      this.putUsed(head, hdrSize + f.length);
      this.setUsedIdx(this.usedIdx + 1);
    }
  }
  /** Transmit-side: read every available chain; returns the frames (header removed). */
  collect(hdrSize: number): Uint8Array[] {
    const out: Uint8Array[] = [];
    for (let head = this.nextAvail(); head >= 0; head = this.nextAvail()) {
      const parts: number[] = [];
      let d = this.desc(head);
      let first = true;
      for (let hops = 0;; hops++) {
        assert.ok(hops < this.m.size, "descriptor loop");
        assert.equal(d.flags & Desc.F_WRITE, 0);
        const off = this.poolOffset(d.addr);
        const bytes = this.pool.bytes.subarray(off, off + d.len);
        if (first) {
          assert.deepEqual([...bytes.subarray(0, hdrSize)], new Array(hdrSize).fill(0));
          parts.push(...bytes.subarray(hdrSize));
        } else parts.push(...bytes);
        first = false;
        if ((d.flags & Desc.F_NEXT) === 0) break;
        d = this.desc(d.next);
      }
      out.push(Uint8Array.from(parts));
      this.putUsed(head, 0);
      this.setUsedIdx(this.usedIdx + 1);
    }
    return out;
  }
}

function frame(len: number, seed: number): Uint8Array {
  const f = new Uint8Array(len);
  for (let i = 0; i < len; i++) f[i] = (i * 7 + seed) & 0xff;
  return f;
}

/** A frame as RX leaves it: num_buffers (1) in its header area. */
function receivedFrame(pool: MbufPool, f: Uint8Array): number {
  const m = pool.fromBytes(f);
  pool.bytes[pool.dataStart(m) - 12 + NetHdr.NUM_BUFFERS] = 1;
  return m;
}

/** A frame whose header area is zero: it goes out as one descriptor. */
function plainFrame(pool: MbufPool, f: Uint8Array): number {
  const m = pool.fromBytes(f);
  pool.bytes.fill(0, pool.dataStart(m) - 12, pool.dataStart(m));
  return m;
}

function bytesOf(pool: MbufPool, m: number): Uint8Array {
  const out = new Uint8Array(pool.pktLen[m]);
  assert.equal(pool.read(m, out), out.length);
  return out;
}

function setup(
  size: number,
  opts: {
    mrg?: boolean;
    count?: number;
    dataRoom?: number;
    eventIdx?: boolean;
    zeroHeader?: boolean;
    firstPosition?: number;
    inOrder?: boolean;
  } = {},
) {
  const region = DmaRegion.create({ size: 1 << 20, kind: "anon" });
  const pool = new MbufPool({ count: opts.count ?? 1024, kind: "anon", dataRoom: opts.dataRoom });
  // A zero header the device can read (a pool buffer here, so that the hand device can map it).
  const zeroBuf = opts.zeroHeader ? pool.alloc() : -1;
  if (zeroBuf >= 0) pool.bytes.fill(0, pool.bufOff[zeroBuf], pool.bufOff[zeroBuf] + 64);
  const t = fakeTransport();
  const rxRing = new SplitRing(0, size, region, 0, SEPARATE);
  const txRing = new SplitRing(1, size, region, 512 * 1024, SEPARATE);
  const stats = { rx: emptyStats(), tx: emptyStats(), total: emptyStats() };
  const rx = new RxQueue({
    ring: rxRing,
    pool,
    transport: t,
    hdrSize: 12,
    mrgRxbuf: opts.mrg ?? false,
    eventIdx: opts.eventIdx ?? false,
    firstPosition: opts.firstPosition,
    inOrder: opts.inOrder,
    portId: 3,
    vlanStrip: false,
    stats: stats.rx,
    totals: stats.total,
  });
  const tx = new TxQueue({
    ring: txRing,
    pool,
    transport: t,
    hdrSize: 12,
    eventIdx: opts.eventIdx ?? false,
    vlanInsert: -1,
    zeroHeader: zeroBuf >= 0 ? pool.region.iova(pool.bufOff[zeroBuf]) : undefined,
    inOrder: opts.inOrder,
    stats: stats.tx,
    totals: stats.total,
  });
  const close = () => {
    pool.close();
    region.close();
  };
  return {
    region,
    pool,
    t,
    rx,
    tx,
    stats,
    rxDev: new HandDevice(rxRing, pool),
    txDev: new HandDevice(txRing, pool),
    close,
  };
}

Deno.test("ring layout: legacy contiguous rings put the used ring on a 4096-byte boundary", () => {
  assert.deepEqual(ringParts(256, LEGACY), {
    desc: 0,
    avail: 4096,
    used: 8192,
    bytes: 8192 + 6 + 8 * 256,
  });
  // 2.7 table: desc 16, avail 2, used 4 (we use 64 between parts).
  const p = ringParts(128, SEPARATE);
  assert.equal(p.desc, 0);
  assert.ok(p.avail >= 16 * 128 && p.avail % 16 === 0);
  assert.ok(p.used >= p.avail + 6 + 2 * 128 && p.used % 4 === 0);
  const region = DmaRegion.create({ size: 65536, kind: "anon" });
  try {
    assert.throws(() => new SplitRing(0, 100, region, 0, SEPARATE), /power of two/);
  } finally {
    region.close();
  }
});

Deno.test("ring layout: descriptors, chains and event fields are little-endian at the spec's offsets", () => {
  const region = DmaRegion.create({ size: 65536, kind: "anon" });
  try {
    const ring = new SplitRing(5, 8, region, 4096, LEGACY);
    const dv = new DataView(region.buffer);
    ring.setDesc(3, 0x89abcdef, 0x1234, 1514, Desc.F_WRITE, 0);
    ring.chain(3, 7);
    const o = 4096 + 16 * 3;
    assert.equal(dv.getUint32(o, true), 0x89abcdef);
    assert.equal(dv.getUint32(o + 4, true), 0x1234);
    assert.equal(dv.getUint32(o + 8, true), 1514);
    assert.equal(dv.getUint16(o + 12, true), Desc.F_WRITE | Desc.F_NEXT);
    assert.equal(dv.getUint16(o + 14, true), 7);
    ring.publishAvail(0x1_0005);
    assert.equal(dv.getUint16(ring.memory.availOffset + 2, true), 5);
    ring.setUsedEvent(42);
    assert.equal(dv.getUint16(ring.memory.availOffset + 4 + 2 * 8, true), 42);
    // used.flags NO_NOTIFY suppresses kicks; without it the device wants one.
    assert.equal(ring.needsKick(0, 1, false), true);
    dv.setUint16(ring.memory.usedOffset, Used.F_NO_NOTIFY, true);
    assert.equal(ring.needsKick(0, 1, false), false);
    // EVENT_IDX: avail_event = 10 is crossed by 8 -> 12, not by 3 -> 5.
    dv.setUint16(ring.memory.usedOffset + 4 + 8 * 8, 10, true);
    assert.equal(ring.needsKick(8, 12, true), true);
    assert.equal(ring.needsKick(3, 5, true), false);
    assert.equal(ring.memory.descIova, region.iova(4096));
    assert.equal(ring.memory.usedOffset % 4096, 0);
  } finally {
    region.close();
  }
});

Deno.test("ring: a burst's publish that finds notifications off is settled by a fenced look", () => {
  const region = DmaRegion.create({ size: 65536, kind: "anon" });
  try {
    const ring = new SplitRing(1, 8, region, 0, SEPARATE);
    const dv = new DataView(region.buffer);
    const availIdx = () => dv.getUint16(ring.memory.availOffset + 2, true);
    const setUsedFlags = (f: number) => dv.setUint16(ring.memory.usedOffset, f, true);
    // The device wants notifications: the publish says so and leaves nothing to settle.
    assert.equal(ring.publishBurst(0, 0x1_0003, false), true);
    assert.equal(availIdx(), 3);
    assert.equal(ring.unsettled, false);
    // Notifications off: no notification now, but the look was not fenced.
    setUsedFlags(Used.F_NO_NOTIFY);
    assert.equal(ring.publishBurst(3, 5, false), false);
    assert.equal(availIdx(), 5);
    assert.equal(ring.unsettled, Deno.build.arch === "x86_64");
    // The device turned them on meanwhile: the fenced look finds it, and leaves the index alone.
    setUsedFlags(0);
    assert.equal(ring.settle(), true);
    assert.equal(ring.unsettled, false);
    assert.equal(availIdx(), 5);
    // Still off at the fenced look: nothing to do.
    setUsedFlags(Used.F_NO_NOTIFY);
    ring.publishBurst(5, 6, false);
    assert.equal(ring.settle(), false);
    // EVENT_IDX (avail_event 10): the fenced publish decides alone.
    dv.setUint16(ring.memory.usedOffset + 4 + 8 * 8, 10, true);
    assert.equal(ring.publishBurst(8, 12, true), true);
    assert.equal(ring.publishBurst(12, 14, true), false);
    assert.equal(ring.unsettled, false);
    assert.equal(availIdx(), 14);
  } finally {
    region.close();
  }
});

Deno.test("rx queue: fill posts every buffer device-writable with room for header + data", () => {
  const s = setup(64);
  try {
    s.rx.fill();
    assert.equal(s.pool.available, 1024 - 64);
    assert.equal(s.rxDev.availIdx(), 64);
    const d = s.rxDev.desc(0);
    assert.equal(d.flags, Desc.F_WRITE);
    assert.equal(d.len, 12 + s.pool.dataRoom);
    assert.equal(s.rxDev.dv.getUint16(s.rxDev.m.availOffset, true), Avail.F_NO_INTERRUPT);
  } finally {
    s.close();
  }
});

Deno.test("rx queue: frames arrive intact, buffers are replaced, one kick per burst", () => {
  const s = setup(64);
  try {
    s.rx.fill();
    const frames = [frame(60, 1), frame(1514, 2), frame(100, 3)];
    s.rxDev.deliver(frames, 12);
    const pkts = new Uint32Array(32);
    const kicks = s.t.kicks;
    const n = s.rx.burst(pkts, 32);
    assert.equal(n, 3);
    assert.equal(s.t.kicks, kicks + 1);
    for (let i = 0; i < n; i++) {
      const m = pkts[i];
      assert.equal(s.pool.pktLen[m], frames[i].length);
      assert.equal(s.pool.port[m], 3);
      const out = new Uint8Array(frames[i].length);
      s.pool.read(m, out);
      assert.deepEqual(out, frames[i]);
    }
    assert.equal(s.stats.rx.rxPackets, 3);
    assert.equal(s.stats.total.rxBytes, 60 + 1514 + 100);
    assert.equal(s.rxDev.availIdx(), 67);
    // The device asked for no notifications: the next burst does not kick.
    s.rxDev.dv.setUint16(s.rxDev.m.usedOffset, Used.F_NO_NOTIFY, true);
    s.rxDev.deliver([frame(70, 4)], 12);
    assert.equal(s.rx.burst(pkts.subarray(3), 32), 1);
    assert.equal(s.t.kicks, kicks + 1);
    for (let i = 0; i < 4; i++) s.pool.free(pkts[i]);
    assert.equal(s.pool.available, 1024 - 64);
  } finally {
    s.close();
  }
});

Deno.test("rx and tx queues with EVENT_IDX: a kick only when avail_event is crossed", () => {
  const s = setup(16, { eventIdx: true });
  try {
    s.rx.fill();
    const pkts = new Uint32Array(16);
    const availEvent = (d: HandDevice, v: number) =>
      d.dv.setUint16(d.m.usedOffset + Used.availEvent(d.m.size), v, true);
    // avail.idx is 16 after fill; the device wants a kick once entry 20 is published
    availEvent(s.rxDev, 20);
    s.rxDev.deliver([frame(60, 1), frame(60, 2)], 12); // republished: 16 -> 18
    assert.equal(s.rx.burst(pkts, 16), 2);
    assert.equal(s.t.kicks, 0);
    s.rxDev.deliver([frame(60, 3), frame(60, 4), frame(60, 5)], 12); // 18 -> 21 crosses 20
    assert.equal(s.rx.burst(pkts.subarray(2), 14), 3);
    assert.equal(s.t.kicks, 1);
    // TX: avail_event 1 is crossed by 0 -> 2, not by 2 -> 3
    availEvent(s.txDev, 1);
    assert.equal(s.tx.burst(pkts, 2), 2);
    assert.equal(s.t.kicks, 2);
    assert.equal(s.tx.burst(pkts.subarray(2), 1), 1);
    assert.equal(s.t.kicks, 2);
    // used_event is parked where the device reaches it only after a full index wrap
    assert.equal(s.rxDev.dv.getUint16(s.rxDev.m.availOffset + Avail.usedEvent(16), true), 0xffff);
  } finally {
    s.close();
  }
});

Deno.test("rx queue: max limits a burst and the rest stays for the next one", () => {
  const s = setup(64);
  try {
    s.rx.fill();
    s.rxDev.deliver([frame(60, 1), frame(61, 2), frame(62, 3)], 12);
    const pkts = new Uint32Array(8);
    assert.equal(s.rx.burst(pkts, 2), 2);
    assert.equal(s.rx.burst(pkts.subarray(2), 8), 1);
    assert.equal(s.pool.pktLen[pkts[2]], 62);
  } finally {
    s.close();
  }
});

Deno.test("rx queue: more than 65536 frames through a 256-entry ring (index wrap-around)", () => {
  const s = setup(256);
  try {
    s.rx.fill();
    const pkts = new Uint32Array(64);
    const f = frame(64, 0);
    let received = 0;
    let seq = 0;
    while (received < 70_000) {
      const batch: Uint8Array[] = [];
      for (let i = 0; i < 40; i++) {
        f[0] = seq & 0xff;
        f[1] = (seq >> 8) & 0xff;
        seq++;
        batch.push(f.slice());
      }
      s.rxDev.deliver(batch, 12);
      const n = s.rx.burst(pkts, 64);
      assert.equal(n, 40);
      for (let i = 0; i < n; i++) {
        const m = pkts[i];
        const at = s.pool.dataStart(m);
        const want = received + i;
        assert.equal(s.pool.bytes[at] | (s.pool.bytes[at + 1] << 8), want & 0xffff);
        s.pool.free(m);
      }
      received += n;
    }
    assert.equal(s.stats.rx.rxErrors, 0);
    assert.equal(s.pool.available, 1024 - 256);
  } finally {
    s.close();
  }
});

Deno.test("rx queue: a bad device is counted, never thrown, and loses no buffer", () => {
  const s = setup(16);
  try {
    s.rx.fill();
    const pkts = new Uint32Array(32);
    // id out of range
    s.rxDev.nextAvail();
    s.rxDev.putUsed(999, 100);
    s.rxDev.setUsedIdx(1);
    assert.equal(s.rx.burst(pkts, 32), 0);
    assert.equal(s.stats.rx.rxErrors, 1);
    // length larger than the buffer: dropped, the same buffer is posted again
    s.rxDev.putUsed(0, 12 + s.pool.dataRoom + 1);
    s.rxDev.setUsedIdx(2);
    assert.equal(s.rx.burst(pkts, 32), 0);
    assert.equal(s.stats.rx.rxErrors, 2);
    // the same id again while it is not posted... it was re-posted, so a duplicate now is one
    // completion too many only if it repeats within one burst:
    s.rxDev.putUsed(1, 60, 2);
    s.rxDev.putUsed(1, 60, 3);
    s.rxDev.setUsedIdx(4);
    assert.equal(s.rx.burst(pkts, 32), 1);
    assert.equal(s.stats.rx.rxErrors, 3);
    s.pool.free(pkts[0]);
    // length shorter than the header
    s.rxDev.putUsed(2, 4, 4);
    s.rxDev.setUsedIdx(5);
    assert.equal(s.rx.burst(pkts, 32), 0);
    assert.equal(s.stats.rx.rxErrors, 4);
    // used.idx jumping further than the ring, or back: counted once per value, nothing
    // consumed, no frame dropped for it
    s.rxDev.setUsedIdx(5 + 1000);
    assert.equal(s.rx.burst(pkts, 32), 0);
    assert.equal(s.rx.burst(pkts, 32), 0);
    s.rxDev.setUsedIdx(4);
    assert.equal(s.rx.burst(pkts, 32), 0);
    assert.equal(s.stats.rx.rxIdxErrors, 2);
    assert.equal(s.stats.rx.rxErrors, 4);
    assert.equal(s.stats.rx.rxDropped, 4);
    // the device comes back to its senses
    s.rxDev.putUsed(3, 12 + 60, 5);
    s.rxDev.setUsedIdx(6);
    assert.equal(s.rx.burst(pkts, 32), 1);
    assert.equal(s.pool.pktLen[pkts[0]], 60);
    s.pool.free(pkts[0]);
    s.rx.release();
    assert.equal(s.pool.available, 1024);
  } finally {
    s.close();
  }
});

for (const mrg of [false, true]) {
  Deno.test(`rx queue${mrg ? " (mergeable)" : ""}: the count of avail positions wraps at 2^31 and nothing changes`, () => {
    // Positions start 65536 below the wrap: 16384 rounds of 8 offers cross it.
    const s = setup(8, { mrg, firstPosition: 2 ** 31 - 65536 });
    try {
      s.rx.fill();
      const pkts = new Uint32Array(32);
      let good = 0;
      for (let round = 0; round < 16384; round++) {
        // In order, every buffer the device has; the last entry of a round names the first
        // descriptor of the round again (already back: an error) and its own stays with us.
        const heads: number[] = [];
        for (let h = s.rxDev.nextAvail(); h >= 0; h = s.rxDev.nextAvail()) heads.push(h);
        assert.equal(heads.length, 8, `round ${round}: the device has 8 buffers`);
        heads.forEach((h, k) => {
          const at = s.rxDev.poolOffset(s.rxDev.desc(h).addr);
          s.pool.bytes.fill(0, at, at + 12);
          s.pool.bytes[at + NetHdr.NUM_BUFFERS] = 1;
          s.pool.bytes[at + 12] = (round + k) & 0xff;
          s.rxDev.putUsed(k === 7 ? heads[0] : h, 12 + 60);
          s.rxDev.setUsedIdx(s.rxDev.usedIdx + 1);
        });
        const n = s.rx.burst(pkts, 32);
        assert.equal(n, 7, `round ${round}`);
        for (let i = 0; i < n; i++) {
          assert.equal(s.pool.bytes[s.pool.dataStart(pkts[i])], (round + i) & 0xff);
          s.pool.free(pkts[i]);
        }
        good += n;
      }
      assert.equal(good, 7 * 16384);
      assert.equal(s.stats.rx.rxErrors, 16384);
      s.rx.release();
      assert.equal(s.pool.available, 1024);
    } finally {
      s.close();
    }
  });
}

Deno.test("rx queue: bad ids in a long stream are counted and the ring never shrinks", () => {
  const s = setup(16);
  try {
    s.rx.fill();
    const pkts = new Uint32Array(32);
    let good = 0;
    let pos = 0;
    for (let round = 0; round < 200; round++) {
      // An in-order device fills every buffer it has; every 10th entry carries a wrong id.
      for (let head = s.rxDev.nextAvail(); head >= 0; head = s.rxDev.nextAvail()) {
        const d = s.rxDev.desc(head);
        s.pool.bytes[s.rxDev.poolOffset(d.addr) + 12] = pos & 0xff;
        s.rxDev.putUsed(pos % 10 === 9 ? 1000 + pos : head, 12 + 60);
        s.rxDev.setUsedIdx(s.rxDev.usedIdx + 1);
        pos++;
      }
      const n = s.rx.burst(pkts, 32);
      for (let i = 0; i < n; i++) s.pool.free(pkts[i]);
      good += n;
    }
    assert.equal(pos, 200 * 16, "the device found 16 buffers every round");
    assert.equal(s.stats.rx.rxErrors, pos / 10);
    assert.equal(good, pos - pos / 10);
    s.rx.release();
    assert.equal(s.pool.available, 1024);
  } finally {
    s.close();
  }
});

Deno.test("rx queue: a descriptor named twice in one burst, or not held, is never handed out or offered twice", () => {
  /** Used entries `ids` (lengths `lens`), num_buffers `nb` in the first one's buffer. */
  const run = (ids: number[], lens: number[], nb: number) => {
    const s = setup(8, { mrg: true, dataRoom: 512 });
    s.rx.fill();
    s.rxDev.lastAvail = 8; // the device has read every avail entry
    const at = s.rxDev.poolOffset(s.rxDev.desc(ids[0]).addr);
    s.pool.bytes.fill(0, at, at + 12);
    s.pool.bytes[at + NetHdr.NUM_BUFFERS] = nb;
    ids.forEach((id, k) => s.rxDev.putUsed(id, lens[k], k));
    s.rxDev.setUsedIdx(ids.length);
    const pkts = new Uint32Array(8);
    const n = s.rx.burst(pkts, 8);
    const offered: number[] = [];
    for (let h = s.rxDev.nextAvail(); h >= 0; h = s.rxDev.nextAvail()) offered.push(h);
    const frames = Array.from(pkts.subarray(0, n), (m) => s.pool.nbSegs[m]);
    const errors = s.stats.rx.rxErrors;
    for (let i = 0; i < n; i++) s.pool.free(pkts[i]);
    s.rx.release();
    const back = s.pool.available;
    s.close();
    return { frames, errors, offered: offered.sort(), back };
  };
  // A two-buffer frame whose second entry names its first buffer again: dropped; descriptor 0
  // offered once, and descriptor 1 (which stood at that position) offered again.
  assert.deepEqual(run([0, 0], [12 + 512, 100], 2), {
    frames: [],
    errors: 1,
    offered: [0, 1],
    back: 1024,
  });
  // A three-buffer frame naming its second buffer twice.
  assert.deepEqual(run([0, 1, 1], [12 + 512, 512, 100], 3), {
    frames: [],
    errors: 1,
    offered: [0, 1, 2],
    back: 1024,
  });
  // One-buffer frames: the second names the first's descriptor again (an error), and the
  // descriptor that stood at its position is offered again.
  assert.deepEqual(run([0, 0], [12 + 60, 12 + 60], 1), {
    frames: [1],
    errors: 1,
    offered: [0, 1],
    back: 1024,
  });
  // Out of order: descriptor 1 comes back first, then an entry naming no descriptor at the
  // position where 1 stood. 1 was taken back already: it is offered once, not twice.
  assert.deepEqual(run([1, 999], [12 + 60, 12 + 60], 1), {
    frames: [1],
    errors: 1,
    offered: [1],
    back: 1024,
  });
});

Deno.test("rx queue: mergeable buffers become one segment chain with exact content", () => {
  const s = setup(32, { mrg: true, dataRoom: 512 });
  try {
    s.rx.fill();
    const f = frame(1400, 9);
    // Buffers take 12 + 512 bytes: 512 + 524 + 364 data bytes, the header in the first only.
    const ids: number[] = [];
    let rest = f;
    let first = true;
    let k = 0;
    while (rest.length > 0 || first) {
      const head = s.rxDev.nextAvail();
      ids.push(head);
      const d = s.rxDev.desc(head);
      const off = s.rxDev.poolOffset(d.addr);
      let room = d.len;
      let at = off;
      if (first) {
        s.pool.bytes.fill(0, off, off + 12);
        at += 12;
        room -= 12;
      }
      const take = rest.subarray(0, room);
      s.pool.bytes.set(take, at);
      s.rxDev.putUsed(head, (first ? 12 : 0) + take.length, k++);
      rest = rest.subarray(take.length);
      first = false;
    }
    // num_buffers in the first buffer's header
    const d0 = s.rxDev.desc(ids[0]);
    const hdrAt = s.rxDev.poolOffset(d0.addr);
    s.pool.bytes[hdrAt + NetHdr.NUM_BUFFERS] = ids.length;
    s.pool.bytes[hdrAt + NetHdr.NUM_BUFFERS + 1] = 0;
    s.rxDev.setUsedIdx(ids.length);
    const pkts = new Uint32Array(8);
    assert.equal(s.rx.burst(pkts, 8), 1);
    const m = pkts[0];
    assert.equal(s.pool.nbSegs[m], ids.length);
    assert.equal(s.pool.pktLen[m], 1400);
    const out = new Uint8Array(1400);
    assert.equal(s.pool.read(m, out), 1400);
    assert.deepEqual(out, f);
    s.pool.free(m);

    // frames that fit one buffer (num_buffers 1) take the single-buffer path
    const small = [frame(60, 1), frame(500, 2)];
    s.rxDev.deliver(small, 12);
    assert.equal(s.rx.burst(pkts, 8), 2);
    assert.deepEqual([bytesOf(s.pool, pkts[0]), bytesOf(s.pool, pkts[1])], small);
    assert.equal(s.pool.nbSegs[pkts[0]], 1);
    s.pool.free(pkts[0]);
    s.pool.free(pkts[1]);

    // The device returns the next buffer posted, `len` bytes used, num_buffers `nb` in its header.
    let used = ids.length + 2;
    const give = (nb: number, len: number) => {
      const h = s.rxDev.nextAvail();
      s.pool.bytes[s.rxDev.poolOffset(s.rxDev.desc(h).addr) + NetHdr.NUM_BUFFERS] = nb;
      s.rxDev.putUsed(h, len, used++);
    };
    // A full buffer whose num_buffers is larger than the entries returned: error, buffer reused.
    give(200, 12 + 512);
    s.rxDev.setUsedIdx(used);
    assert.equal(s.rx.burst(pkts, 8), 0);
    assert.equal(s.stats.rx.rxErrors, 1);
    // The broken frame ended at the used index published: the next entry starts a frame, and a
    // buffer with room left is a whole frame (5.1.6.4.1) whose num_buffers is not read: 200
    // there goes unnoticed.
    give(200, 12 + 60);
    give(1, 12 + 61);
    s.rxDev.setUsedIdx(used);
    assert.equal(s.rx.burst(pkts, 8), 2);
    assert.deepEqual([s.pool.pktLen[pkts[0]], s.pool.pktLen[pkts[1]]], [60, 61]);
    assert.equal(s.stats.rx.rxErrors, 1);
    assert.equal(s.pool.flags[pkts[1]], MbufFlag.DEVICE_HEADER);
    s.pool.free(pkts[0]);
    s.pool.free(pkts[1]);
    s.rx.release();
    assert.equal(s.pool.available, 1024);
  } finally {
    s.close();
  }
});

Deno.test("rx queue: an empty pool drops the frame and keeps the descriptor posted", () => {
  const s = setup(16, { count: 17 });
  try {
    s.rx.fill();
    const held = s.pool.alloc(); // the pool is now empty
    s.rxDev.deliver([frame(60, 1)], 12);
    const pkts = new Uint32Array(4);
    assert.equal(s.rx.burst(pkts, 4), 0);
    assert.equal(s.stats.rx.rxNoMbuf, 1);
    s.pool.free(held);
    s.rxDev.deliver([frame(61, 2)], 12);
    assert.equal(s.rx.burst(pkts, 4), 1);
    assert.equal(s.pool.pktLen[pkts[0]], 61);
  } finally {
    s.close();
  }
});

Deno.test("tx queue: single and multi-segment frames reach the device as exact chains", () => {
  const s = setup(16);
  try {
    const a = frame(60, 1);
    const b = frame(3000, 2);
    const pkts = Uint32Array.of(s.pool.fromBytes(a), s.pool.fromBytes(b, 1000));
    assert.equal(s.pool.nbSegs[pkts[1]], 3);
    assert.equal(s.tx.burst(pkts, 2), 2);
    assert.equal(s.tx.freeDescriptors, 16 - 4);
    const got = s.txDev.collect(12);
    assert.deepEqual(got, [a, b]);
    assert.equal(s.stats.tx.txPackets, 2);
    assert.equal(s.stats.tx.txBytes, 3060);
    // next burst reclaims both chains and frees their buffers
    assert.equal(s.tx.burst(pkts, 0), 0);
    assert.equal(s.tx.freeDescriptors, 16);
    assert.equal(s.pool.available, 1024);
  } finally {
    s.close();
  }
});

Deno.test("tx queue: a full ring takes fewer, and bad completions are counted", () => {
  const s = setup(8);
  try {
    const pkts = new Uint32Array(12);
    for (let i = 0; i < 12; i++) pkts[i] = s.pool.fromBytes(frame(60 + i, i));
    assert.equal(s.tx.burst(pkts, 12), 8);
    for (let i = 8; i < 12; i++) s.pool.free(pkts[i]);
    // device returns a non-head / unknown id and an id twice
    const firstHead = s.txDev.dv.getUint16(s.txDev.m.availOffset + Avail.RING, true);
    s.txDev.putUsed(firstHead, 0, 0);
    s.txDev.putUsed(firstHead, 0, 1);
    s.txDev.putUsed(77, 0, 2);
    s.txDev.setUsedIdx(3);
    assert.equal(s.tx.burst(pkts, 0), 0);
    assert.equal(s.stats.tx.txErrors, 2);
    // The bad entries at positions 1 and 2 stood for the chains published there (in order):
    // those are taken back, so no descriptor is lost.
    assert.equal(s.tx.freeDescriptors, 3);
    assert.equal(s.tx.release(), 5);
    assert.equal(s.pool.available, 1024);
  } finally {
    s.close();
  }
});

Deno.test("tx queue: a frame whose header area is written goes out behind the zero header, untouched", () => {
  const s = setup(16, { zeroHeader: true });
  try {
    const a = frame(60, 1);
    const b = frame(64, 2);
    const pkts = Uint32Array.of(s.pool.fromBytes(a), s.pool.fromBytes(b));
    // A received frame carries num_buffers in its header area; b's header stays zero.
    const numBuffers = s.pool.dataStart(pkts[0]) - 12 + NetHdr.NUM_BUFFERS;
    s.pool.bytes[numBuffers] = 1;
    assert.equal(s.tx.burst(pkts, 2), 2);
    assert.equal(s.tx.freeDescriptors, 16 - 3); // a: header + frame, b: one descriptor
    assert.deepEqual(s.txDev.collect(12), [a, b]);
    assert.equal(s.pool.bytes[numBuffers], 1); // never written
    assert.equal(s.tx.burst(pkts, 0), 0);
    assert.equal(s.tx.freeDescriptors, 16);
    assert.equal(s.pool.available, 1024 - 1); // all but the zero-header buffer
  } finally {
    s.close();
  }
});

Deno.test("tx queue: a frame marked DEVICE_HEADER goes behind the zero header unread", () => {
  const s = setup(16, { zeroHeader: true });
  try {
    const a = frame(60, 1);
    const pkts = Uint32Array.of(s.pool.fromBytes(a));
    // Its header area is zero here; the mark alone decides (mergeable RX sets it).
    s.pool.flags[pkts[0]] = MbufFlag.DEVICE_HEADER;
    assert.equal(s.tx.burst(pkts, 1), 1);
    assert.equal(s.tx.freeDescriptors, 16 - 2); // header + frame
    assert.deepEqual(s.txDev.collect(12), [a]);
    assert.equal(s.tx.burst(pkts, 0), 0);
    assert.equal(s.tx.freeDescriptors, 16);
  } finally {
    s.close();
  }
});

Deno.test("tx queue: received frames keep their header descriptors; other traffic in between stays exact", () => {
  const s = setup(8, { zeroHeader: true });
  try {
    const received = (f: Uint8Array) => receivedFrame(s.pool, f);
    const plain = (f: Uint8Array) => plainFrame(s.pool, f);
    const heads = (n: number) => {
      const out: number[] = [];
      for (let i = 0; i < n; i++) {
        const slot = (s.txDev.lastAvail + i) % 8;
        out.push(s.txDev.dv.getUint16(s.txDev.m.availOffset + Avail.RING + 2 * slot, true));
      }
      return out.sort();
    };
    const round = (frames: Uint8Array[], make: (f: Uint8Array, i: number) => number) => {
      const pkts = Uint32Array.from(frames, make);
      assert.equal(s.tx.burst(pkts, pkts.length), pkts.length);
      const h = heads(pkts.length);
      assert.deepEqual(s.txDev.collect(12), frames);
      assert.equal(s.tx.burst(pkts, 0), 0); // reclaim
      return h;
    };
    const four = [frame(60, 1), frame(64, 2), frame(70, 3), frame(1400, 4)];
    const first = round(four, received); // 4 x (zero header + frame): the whole ring
    assert.deepEqual(round(four, received), first); // the same header descriptors again
    // A header descriptor sent as a frame's own descriptor, then wanted as a header again.
    round([frame(60, 5)], plain);
    round(four, received);
    // Then any mix (seeded): one-descriptor frames, chains of 2-3 segments, received frames.
    let seed = 7;
    const rnd = (n: number) => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    for (let r = 0; r < 2000; r++) {
      const kinds: number[] = [];
      for (let used = 0;;) {
        const k = rnd(3); // 0 plain, 1 chain, 2 received
        const need = k === 0 ? 1 : k === 1 ? 3 : 2;
        if (used + need > 8) break;
        kinds.push(k);
        used += need;
      }
      const frames = kinds.map((k, i) => frame(k === 1 ? 1500 + i : 60 + i, r + i));
      round(
        frames,
        (f, i) =>
          kinds[i] === 0 ? plain(f) : kinds[i] === 1 ? s.pool.fromBytes(f, 600) : received(f),
      );
    }
    round(four, received);
    assert.equal(s.stats.tx.txErrors, 0);
    assert.equal(s.tx.freeDescriptors, 8);
    assert.equal(s.pool.available, 1024 - 1);
  } finally {
    s.close();
  }
});

Deno.test("tx queue: packet numbers or segments that are no buffer are errors, not hangs", () => {
  const s = setup(8);
  try {
    const m = s.pool.fromBytes(frame(100, 1));
    const chained = s.pool.fromBytes(frame(100, 2));
    s.pool.next[chained] = 5000;
    s.pool.nbSegs[chained] = 2;
    const pkts = Uint32Array.of(7777, m, chained);
    assert.equal(s.tx.burst(pkts, 3), 3);
    assert.equal(s.stats.tx.txErrors, 2);
    assert.equal(s.stats.tx.txPackets, 1);
    assert.deepEqual(s.txDev.collect(12), [frame(100, 1)]);
    s.tx.burst(pkts, 0);
    assert.equal(s.pool.available, 1024);
  } finally {
    s.close();
  }
});

Deno.test("tx queue: a packet without headroom for the header is dropped as an error", () => {
  const s = setup(8);
  try {
    const m = s.pool.fromBytes(frame(60, 1));
    s.pool.dataOff[m] = 4; // not enough room for a 12-byte header
    const pkts = Uint32Array.of(m);
    assert.equal(s.tx.burst(pkts, 1), 1);
    assert.equal(s.stats.tx.txErrors, 1);
    assert.equal(s.stats.tx.txPackets, 0);
    assert.equal(s.pool.available, 1024);
    assert.equal(s.txDev.collect(12).length, 0);
    s.pool.free(m); // freed once already: a second free changes nothing
    assert.equal(s.pool.available, 1024);
  } finally {
    s.close();
  }
});

Deno.test("tx queue in order (2.7.5, 2.7.9): chains in ring order, next = x + 1; one used entry frees a batch", () => {
  const size = 8;
  const s = setup(size, { zeroHeader: true, inOrder: true });
  try {
    const received = (f: Uint8Array) => receivedFrame(s.pool, f);
    const plain = (f: Uint8Array) => plainFrame(s.pool, f);
    let expected = 0; // the descriptor the next chain must start at
    let seed = 11;
    const rnd = (n: number) => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    let inFlight = 0; // chains published and not completed
    let lastHead = 0;
    for (let r = 0; r < 3000; r++) {
      const kinds: number[] = [];
      for (let used = 0;;) {
        const k = rnd(3); // 0 plain, 1 chain of 3, 2 received (header pair)
        const need = k === 0 ? 1 : k === 1 ? 3 : 2;
        if (used + need > s.tx.freeDescriptors) break;
        kinds.push(k);
        used += need;
      }
      const frames = kinds.map((k, i) => frame(k === 1 ? 1500 + i : 60 + i, r + i));
      const pkts = Uint32Array.from(
        frames,
        (f, i) =>
          kinds[i] === 0 ? plain(f) : kinds[i] === 1 ? s.pool.fromBytes(f, 600) : received(f),
      );
      assert.equal(s.tx.burst(pkts, pkts.length), pkts.length);
      // Walk what was made available: each chain starts where the last ended, next = x + 1.
      const from = s.txDev.lastAvail;
      for (let a = from; a !== s.txDev.availIdx(); a = (a + 1) & 0xffff) {
        const head = s.txDev.dv.getUint16(
          s.txDev.m.availOffset + Avail.RING + 2 * (a % size),
          true,
        );
        assert.equal(head, expected, `round ${r}: chain at ${head}, ring order wants ${expected}`);
        let d = head;
        for (let hops = 0; (s.txDev.desc(d).flags & Desc.F_NEXT) !== 0; hops++) {
          assert.ok(hops < size);
          assert.equal(s.txDev.desc(d).next, (d + 1) % size, `round ${r}: next of ${d}`);
          d = (d + 1) % size;
        }
        expected = (d + 1) % size;
        lastHead = head;
      }
      s.txDev.lastAvail = from;
      // The frames are exact; the device answers the whole batch with one entry (every
      // third round it waits a round first).
      assert.deepEqual(s.txDev.collect(12), frames);
      s.txDev.setUsedIdx(s.txDev.usedIdx - frames.length); // collect() wrote one per chain
      inFlight += frames.length;
      if (r % 3 !== 2) {
        s.txDev.putUsed(lastHead, 0);
        s.txDev.setUsedIdx(s.txDev.usedIdx + inFlight);
        inFlight = 0;
        assert.equal(s.tx.burst(pkts, 0), 0); // reclaim
        assert.equal(s.tx.freeDescriptors, size);
      }
    }
    if (inFlight > 0) {
      s.txDev.putUsed(lastHead, 0);
      s.txDev.setUsedIdx(s.txDev.usedIdx + inFlight);
      assert.equal(s.tx.burst(new Uint32Array(1), 0), 0);
    }
    assert.equal(s.stats.tx.txErrors, 0);
    assert.equal(s.tx.freeDescriptors, size);
    assert.equal(s.pool.available, 1024 - 1);
  } finally {
    s.close();
  }
});

Deno.test("rx queue in order (2.7.9): one used entry stands for a batch of whole buffers; a stray one is an error and ring order holds", () => {
  const size = 8;
  const s = setup(size, { mrg: true, inOrder: true });
  try {
    s.rx.fill();
    const pkts = new Uint32Array(size);
    const room = 12 + s.pool.dataRoom; // what each descriptor offers
    // A frame over three buffers, the first two filled whole: one entry, the third buffer's head.
    const f = frame(2 * room + 100 - 12, 5);
    const heads = [s.rxDev.nextAvail(), s.rxDev.nextAvail(), s.rxDev.nextAvail()];
    assert.deepEqual(heads, [0, 1, 2]);
    const wire = new Uint8Array(12 + f.length);
    wire[NetHdr.NUM_BUFFERS] = 3;
    wire.set(f, 12);
    for (let k = 0; k < 3; k++) {
      const d = s.rxDev.desc(heads[k]);
      const off = s.rxDev.poolOffset(d.addr);
      const part = wire.subarray(k * room, Math.min((k + 1) * room, wire.length));
      s.pool.bytes.set(part, off);
    }
    s.rxDev.putUsed(heads[2], 100);
    s.rxDev.setUsedIdx(3);
    assert.equal(s.rx.burst(pkts, size), 0); // stops at the entry, spells the batch out
    assert.equal(s.rx.burst(pkts, size), 1);
    assert.equal(s.pool.nbSegs[pkts[0]], 3);
    assert.deepEqual(bytesOf(s.pool, pkts[0]), f);
    s.pool.free(pkts[0]);
    // Then an entry naming a buffer beyond what it stands for (two positions ahead, one entry
    // published): an error, and the buffer of that position is offered again in its place.
    s.rxDev.nextAvail();
    s.rxDev.putUsed(5, 60);
    s.rxDev.setUsedIdx(4);
    assert.equal(s.rx.burst(pkts, size), 0);
    assert.equal(s.stats.rx.rxErrors, 0);
    assert.equal(s.rx.burst(pkts, size), 0);
    assert.equal(s.stats.rx.rxErrors, 1);
    // And a good one-buffer frame after it arrives.
    s.rxDev.deliver([frame(60, 9)], 12);
    assert.equal(s.rx.burst(pkts, size), 1);
    assert.deepEqual(bytesOf(s.pool, pkts[0]), frame(60, 9));
    // Every avail slot still offers the descriptor of its own position.
    const idx = s.rxDev.availIdx();
    assert.equal(idx, size + 5);
    for (let a = idx - size; a < idx; a++) {
      const head = s.rxDev.dv.getUint16(s.rxDev.m.availOffset + Avail.RING + 2 * (a % size), true);
      assert.equal(head, a % size, `avail position ${a}`);
    }
  } finally {
    s.close();
  }
});

Deno.test("sim device queue in order: a chain that does not start where the last ended, or skips, is refused", () => {
  const region = DmaRegion.create({ size: 1 << 16, kind: "anon" });
  try {
    const ring = new SplitRing(1, 8, region, 0, SEPARATE);
    const dev = new DeviceQueue(ring.memory, false, false, true);
    const offer = (...heads: number[]) => {
      for (const h of heads) {
        const a = ring.u16[ring.availIdx16];
        ring.u16[ring.availRing16 + (a % 8)] = h;
        ring.publishAvail(a + 1);
      }
    };
    ring.setDesc(0, 0, 0, 16, Desc.F_NEXT, 1);
    ring.setDesc(1, 0, 0, 16, 0, 0);
    ring.setDesc(2, 0, 0, 16, 0, 0);
    ring.setDesc(3, 0, 0, 16, Desc.F_NEXT, 5); // skips 4
    offer(0, 2, 3);
    assert.equal(dev.take(), 0); // 0 -> 1
    assert.equal(dev.take(), 2); // starts at 2: in order
    assert.equal(dev.take(), 8); // 3 -> 5: refused
    dev.untake(1);
    ring.setDesc(3, 0, 0, 16, 0, 0);
    assert.equal(dev.take(), 3); // 3 alone, after untake: in order again
    ring.setDesc(5, 0, 0, 16, 0, 0);
    offer(5);
    assert.equal(dev.take(), 8); // starts at 5, ring order wants 4
    // Wrapping: a chain at the table's last descriptor continues at 0 (2.7.5).
    const ring2 = new SplitRing(1, 8, region, 8192, SEPARATE);
    const dev2 = new DeviceQueue(ring2.memory, false, false, true);
    for (let i = 0; i < 7; i++) ring2.setDesc(i, 0, 0, 16, 0, 0);
    ring2.setDesc(7, 0, 0, 16, Desc.F_NEXT, 0);
    for (let i = 0; i < 8; i++) ring2.u16[ring2.availRing16 + i] = i;
    ring2.publishAvail(8);
    for (let i = 0; i < 8; i++) assert.equal(dev2.take(), i);
  } finally {
    region.close();
  }
});

/**
 * Mergeable RX from the device side: `wire` (header + frame) over the next buffers posted, each
 * filled whole but the last, one used entry per buffer carrying `idOf(k, head)` (default: the
 * buffer's own id). Not published. Returns the number of buffers used.
 */
function putMrg(
  s: ReturnType<typeof setup>,
  wire: Uint8Array,
  idOf = (_k: number, h: number) => h,
) {
  const room = 12 + s.pool.dataRoom;
  const count = Math.max(1, Math.ceil(wire.length / room));
  for (let k = 0; k < count; k++) {
    const head = s.rxDev.nextAvail();
    assert.ok(head >= 0, "no RX buffer available");
    const part = wire.subarray(k * room, Math.min((k + 1) * room, wire.length));
    s.pool.bytes.set(part, s.rxDev.poolOffset(s.rxDev.desc(head).addr));
    s.rxDev.putUsed(idOf(k, head), part.length);
    s.rxDev.usedIdx = (s.rxDev.usedIdx + 1) & 0xffff;
  }
  return count;
}

/** Header (num_buffers `nb`) + `f`, as the device writes a received frame. */
function onWire(f: Uint8Array, nb: number): Uint8Array {
  const w = new Uint8Array(12 + f.length);
  w[NetHdr.NUM_BUFFERS] = nb & 0xff;
  w[NetHdr.NUM_BUFFERS + 1] = nb >> 8;
  w.set(f, 12);
  return w;
}

/** Burst until nothing moves (in order, a stray entry costs a burst to spell out); frames' bytes. */
function drainRx(s: ReturnType<typeof setup>): Uint8Array[] {
  const pkts = new Uint32Array(64);
  const out: Uint8Array[] = [];
  for (let i = 0; i < 4; i++) {
    const n = s.rx.burst(pkts, 64);
    for (let k = 0; k < n; k++) {
      out.push(bytesOf(s.pool, pkts[k]));
      s.pool.free(pkts[k]);
    }
  }
  return out;
}

for (const inOrder of [false, true]) {
  for (const how of ["a bad id", "a bad num_buffers"]) {
    Deno.test(`rx queue (mergeable${inOrder ? ", in order" : ""}): after ${how} no piece of the broken frame is delivered as a frame, even when its payload holds 01 00 where a header's num_buffers would be`, () => {
      const s = setup(32, { mrg: true, dataRoom: 512, inOrder });
      try {
        s.rx.fill();
        const room = 12 + 512;
        // Three buffers: 524 + 524 + 100 bytes. The second buffer's bytes 10-11 (where a first
        // buffer holds num_buffers) are payload chosen by the sender: 01 00.
        const broken = onWire(frame(2 * room + 100 - 12, 1), how === "a bad id" ? 3 : 0x7fff);
        broken[room + NetHdr.NUM_BUFFERS] = 1;
        broken[room + NetHdr.NUM_BUFFERS + 1] = 0;
        putMrg(s, broken, (k, h) => how === "a bad id" && k === 0 ? 999 : h);
        // Then good frames: one buffer, three buffers, one buffer.
        const good = [frame(60, 2), frame(2 * room + 40 - 12, 3), frame(61, 4)];
        for (const f of good) putMrg(s, onWire(f, Math.ceil((12 + f.length) / room)));
        s.rxDev.setUsedIdx(s.rxDev.usedIdx);
        const got = drainRx(s);
        assert.deepEqual(got.map((f) => f.length), good.map((f) => f.length));
        assert.deepEqual(got, good);
        // One frame broken: one error, one drop, its other buffers not counted again.
        assert.equal(s.stats.rx.rxErrors, 1);
        assert.equal(s.stats.rx.rxDropped, 1);
        assert.equal(s.stats.rx.rxPackets, good.length);
        // Every buffer offered again: the device holds the whole ring once more.
        let offered = 0;
        while (s.rxDev.nextAvail() >= 0) offered++;
        assert.equal(offered, 32 - 8 + 8);
        s.rx.release();
        assert.equal(s.pool.available, s.pool.count);
      } finally {
        s.close();
      }
    });
  }
}

Deno.test("rx queue (mergeable): a broken frame whose buffers are all full ends at the used index published; the next burst starts with a frame", () => {
  const s = setup(32, { mrg: true, dataRoom: 512 });
  try {
    s.rx.fill();
    const room = 12 + 512;
    // Two full buffers, the first naming no descriptor: published alone.
    const broken = onWire(frame(2 * room - 12, 5), 2);
    broken[room + NetHdr.NUM_BUFFERS] = 1;
    putMrg(s, broken, (k, h) => k === 0 ? 999 : h);
    s.rxDev.setUsedIdx(s.rxDev.usedIdx);
    assert.deepEqual(drainRx(s), []);
    assert.equal(s.stats.rx.rxErrors, 1);
    // Next publish: a frame whose first buffer is full (its num_buffers is read: 2).
    const f = frame(room + 30 - 12, 6);
    putMrg(s, onWire(f, 2));
    s.rxDev.setUsedIdx(s.rxDev.usedIdx);
    assert.deepEqual(drainRx(s), [f]);
    assert.equal(s.stats.rx.rxErrors, 1);
    assert.equal(s.stats.rx.rxDropped, 1);
    // Followed by another frame in the same publish, such a frame's end cannot be seen: the drop
    // runs on to the next buffer with room left, the two frames counted as one broken frame.
    putMrg(s, broken, (k, h) => k === 0 ? 999 : h);
    const g = frame(room + 30 - 12, 7);
    putMrg(s, onWire(g, 2));
    putMrg(s, onWire(frame(60, 8), 1));
    s.rxDev.setUsedIdx(s.rxDev.usedIdx);
    assert.deepEqual(drainRx(s), [frame(60, 8)]);
    assert.equal(s.stats.rx.rxErrors, 2);
    assert.equal(s.stats.rx.rxDropped, 2);
  } finally {
    s.close();
  }
});

Deno.test("rx queue (mergeable, in order): a broken frame whose rest comes as one batched entry is dropped whole, and ring order holds", () => {
  const size = 16;
  const s = setup(size, { mrg: true, dataRoom: 512, inOrder: true });
  try {
    s.rx.fill();
    const room = 12 + 512;
    // Three buffers, 524 + 524 + 100 bytes; num_buffers 0x7fff (more than there are). The second
    // buffer's bytes 10-11 are payload: 01 00.
    const broken = onWire(frame(2 * room + 100 - 12, 1), 0x7fff);
    broken[room + NetHdr.NUM_BUFFERS] = 1;
    broken[room + NetHdr.NUM_BUFFERS + 1] = 0;
    const heads = [s.rxDev.nextAvail(), s.rxDev.nextAvail(), s.rxDev.nextAvail()];
    assert.deepEqual(heads, [0, 1, 2]);
    for (let k = 0; k < 3; k++) {
      const part = broken.subarray(k * room, Math.min((k + 1) * room, broken.length));
      s.pool.bytes.set(part, s.rxDev.poolOffset(s.rxDev.desc(heads[k]).addr));
    }
    // The first buffer's own entry, then one entry for the other two (2.7.9: the last one's id).
    s.rxDev.putUsed(0, room, 0);
    s.rxDev.putUsed(2, 100, 1);
    s.rxDev.usedIdx = 3;
    putMrg(s, onWire(frame(60, 2), 1));
    s.rxDev.setUsedIdx(s.rxDev.usedIdx);
    assert.deepEqual(drainRx(s), [frame(60, 2)]);
    assert.equal(s.stats.rx.rxErrors, 1);
    assert.equal(s.stats.rx.rxDropped, 1);
    // Every avail slot still offers the descriptor of its own position.
    const idx = s.rxDev.availIdx();
    assert.equal(idx, size + 4);
    for (let a = idx - size; a < idx; a++) {
      const head = s.rxDev.dv.getUint16(s.rxDev.m.availOffset + Avail.RING + 2 * (a % size), true);
      assert.equal(head, a % size, `avail position ${a}`);
    }
    s.rx.release();
    assert.equal(s.pool.available, s.pool.count);
  } finally {
    s.close();
  }
});

/** A small deterministic generator (xorshift32) for the hostile-device rounds below. */
function rng(seed: number): (n: number) => number {
  let x = seed >>> 0 || 1;
  return (n) => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x % n;
  };
}

for (const mrg of [false, true]) {
  for (const inOrder of [false, true]) {
    Deno.test(`rx and tx queues${mrg ? " (mergeable)" : ""}${inOrder ? " (in order)" : ""} against a device writing garbage: every loop ends within the ring, nothing thrown, no buffer lost or handed out twice`, () => {
      const size = 16;
      const room = 12 + 512;
      const s = setup(size, { mrg, inOrder, dataRoom: 512, count: 256 });
      try {
        s.rx.fill();
        const r = rng(mrg ? (inOrder ? 4 : 3) : (inOrder ? 2 : 1));
        const pkts = new Uint32Array(size);
        const seen = new Set<number>();
        const txHeld: number[] = [];
        /**
         * Now and then a used.idx for one look that is more than a ring ahead or moved back (one
         * within a ring ahead cannot be told from a good one).
         */
        const maybeJump = (d: HandDevice, q: () => void) => {
          if (r(16) !== 0) return;
          const keep = d.usedIdx;
          d.setUsedIdx(keep + size + 1 + r(65536 - 2 * size - 1));
          q();
          d.setUsedIdx(keep);
        };
        let multi = 0;
        const rxBurst = () => {
          const n = s.rx.burst(pkts, size);
          assert.ok(n <= size);
          seen.clear();
          for (let i = 0; i < n; i++) {
            if (s.pool.nbSegs[pkts[i]] > 1) multi++;
            let segs = 0;
            for (let m = pkts[i]; m !== -1; m = s.pool.next[m]) {
              assert.ok(!seen.has(m), `buffer ${m} handed out twice`);
              seen.add(m);
              assert.ok(++segs <= size, "a chain longer than the ring");
            }
            assert.equal(s.pool.nbSegs[pkts[i]], segs);
          }
          for (let i = 0; i < n; i++) s.pool.free(pkts[i]);
          // Never more offered than the ring holds (no entry consumed twice or unpublished).
          assert.ok(((s.rxDev.availIdx() - s.rxDev.lastAvail) & 0xffff) <= size, "avail overrun");
        };
        for (let round = 0; round < 3000; round++) {
          // RX: the buffers the device has, returned mostly as they should be, with garbage
          // mixed in: any id, any length, any num_buffers.
          for (let j = r(size + 1), h = j > 0 ? s.rxDev.nextAvail() : -1; h >= 0 && j > 0; j--) {
            const at = s.rxDev.poolOffset(s.rxDev.desc(h).addr) + NetHdr.NUM_BUFFERS;
            s.pool.bytes[at] = r(4) === 0 ? r(256) : r(4);
            s.pool.bytes[at + 1] = r(8) === 0 ? r(256) : 0;
            const len = r(8) === 0 ? r(2 * room) : r(2) === 0 ? room : 12 + r(room - 12);
            // (Ids out of range: one naming another buffer it holds takes the buffer of its
            // position from the ring for good, which the driver cannot tell from a slow device.)
            s.rxDev.putUsed(r(8) !== 0 ? h : size + r(4), len);
            s.rxDev.usedIdx = (s.rxDev.usedIdx + 1) & 0xffff;
            if (j > 1) h = s.rxDev.nextAvail();
          }
          maybeJump(s.rxDev, () => assert.equal(s.rx.burst(pkts, size), 0, "nothing taken"));
          s.rxDev.setUsedIdx(s.rxDev.usedIdx);
          rxBurst();
          rxBurst(); // in order, a batch or a stray entry costs a burst to spell out
          // TX: a few frames out; the device completes some of what it holds, ids mostly right.
          const out = r(4);
          for (let i = 0; i < out; i++) pkts[i] = plainFrame(s.pool, frame(60, i));
          const taken = s.tx.burst(pkts, out);
          for (let i = taken; i < out; i++) s.pool.free(pkts[i]);
          for (let h = s.txDev.nextAvail(); h >= 0; h = s.txDev.nextAvail()) txHeld.push(h);
          for (let j = r(txHeld.length + 1); j > 0; j--) {
            const h = txHeld.shift()!;
            s.txDev.putUsed(r(8) === 0 ? r(size + 4) : h, 0);
            s.txDev.usedIdx = (s.txDev.usedIdx + 1) & 0xffff;
          }
          maybeJump(s.txDev, () => {
            const free = s.tx.freeDescriptors;
            s.tx.reclaim();
            assert.equal(s.tx.freeDescriptors, free, "nothing taken back");
          });
          s.txDev.setUsedIdx(s.txDev.usedIdx);
          s.tx.reclaim();
          assert.ok(s.tx.freeDescriptors <= size);
        }
        const rx = s.stats.rx;
        const tx = s.stats.tx;
        const what = JSON.stringify({ rx, tx });
        assert.ok(rx.rxPackets > 1000 && rx.rxErrors > 100 && rx.rxIdxErrors > 100, what);
        assert.equal(rx.rxDropped, rx.rxErrors + rx.rxNoMbuf);
        assert.ok(mrg ? multi > 100 : multi === 0, `${multi} frames over several buffers`);
        assert.ok(tx.txPackets > 1000 && tx.txErrors > 100, what);
        s.rx.release();
        s.tx.release();
        assert.equal(s.pool.available, s.pool.count);
      } finally {
        s.close();
      }
    });
  }
}
