/**
 * Indirect descriptors (VIRTIO_F_INDIRECT_DESC; virtio 1.2, 2.7.5.3 split, 2.8.7 packed) for
 * multi-segment TX frames, against the simulated device, whose side reads tables from the spec
 * (mod/sim/indirect.ts, apart from the driver's mod/virtio/indirect.ts):
 * - txonly frames of 2 to 16 segments go out as one descriptor each, on split and packed rings,
 *   with and without in-order, through small rings that wrap many times: every frame checked
 *   intact at the device's wire, every buffer back; 17 segments fall back to a chain;
 * - without `indirect=1` no table is used; the key is checked on every port kind;
 * - the device refuses malformed tables (length, nesting, NEXT out of the table, loops, INDIRECT
 *   with NEXT, INDIRECT inside a packed list, INDIRECT not negotiated) as bad descriptors.
 */
import assert from "assert";
import { DmaRegion } from "../ffi/dma.ts";
import { accountFrames } from "../cli/accounting.ts";
import { StatsReporter } from "../cli/stats.ts";
import { buildStreams, reclaimSent } from "../mod/fwd/streams.ts";
import { createEngine } from "../mod/fwd/engines.ts";
import { ForwardLoop } from "../mod/fwd/loop.ts";
import { MbufPool } from "../mod/mbuf.ts";
import { Port } from "../mod/port.ts";
import { openTransport } from "../mod/portspec.ts";
import { checkPciOptions } from "../mod/transport/pci.ts";
import { SimTransport } from "../mod/sim/transport.ts";
import { bit, Desc, Feature, PackedDesc, Status } from "../mod/virtio/constants.ts";
import { PackedRing } from "../mod/virtio/packed_ring.ts";
import { SplitRing } from "../mod/virtio/split_ring.ts";

const INDIRECT = bit(Feature.INDIRECT_DESC);

/** txonly on one sim port with `spec` and `txpkts` for `ms`, drained; counters and accounting. */
async function txonly(spec: Record<string, string>, txpkts: number[], ms = 250) {
  const t = SimTransport.fromSpec("a", { gen: "off", ...spec });
  const pool = new MbufPool({ count: 4096, kind: t.dmaKinds[0] });
  const port = new Port(0, t, { log: () => {} });
  try {
    port.configure({ pool, txd: Number(spec.qsize ?? 256), rxd: Number(spec.qsize ?? 256) });
    port.start();
    const engine = createEngine("txonly", { pool, burst: 32, peers: [], txpkts });
    const loop = new ForwardLoop([port], buildStreams([port], "txonly", 1, 32), engine);
    await loop.run({ untilMs: performance.now() + ms });
    await loop.drain(20, 2000);
    reclaimSent([port], 1);
    const features = port.features;
    const tables = t.device.indirectTables;
    const errors = { ...t.device.errors };
    port.stop();
    const rows = new StatsReporter([port], ["a"], "json", 0, () => ({ ...t.wire.counters }))
      .rows();
    return {
      rows,
      acc: accountFrames("txonly", rows)!,
      features,
      tables,
      errors,
      poolBack: pool.available === pool.count,
    };
  } finally {
    port.close();
    t.close();
    pool.close();
  }
}

const SHAPES: { name: string; txpkts: number[]; tables: boolean }[] = [
  { name: "64+1400", txpkts: [64, 1400], tables: true },
  { name: "6 segments", txpkts: [64, 100, 200, 300, 400, 300], tables: true },
  { name: "16 segments", txpkts: Array(16).fill(60), tables: true },
  { name: "17 segments (a chain)", txpkts: Array(17).fill(60), tables: false },
];

for (const packed of ["0", "1"]) {
  for (const inOrder of ["0", "1"]) {
    const kind = `${packed === "1" ? "packed" : "split"}${inOrder === "1" ? ", in order" : ""}`;
    Deno.test(`indirect, ${kind}: multi-segment txonly frames intact, one table each`, async () => {
      for (const shape of SHAPES) {
        // A 32-entry ring wraps many times; 17 segments still fit it as a chain.
        const r = await txonly(
          { packed, in_order: inOrder, indirect: "1", qsize: "32" },
          shape.txpkts,
        );
        const row = r.rows[0];
        const why = `${shape.name}: ${JSON.stringify(row)} ${r.acc.message}`;
        assert.ok((r.features & INDIRECT) !== 0n, why);
        assert.ok(row.txPackets > 100, why);
        assert.equal(r.acc.ok, true, why);
        assert.equal(row.wire!.checkedOk, row.txPackets, why);
        assert.equal(row.wire!.badFrames, 0, why);
        assert.equal(row.txErrors, 0, why);
        const size = shape.txpkts.reduce((a, b) => a + b, 0);
        assert.equal(row.txBytes, row.txPackets * size, why);
        assert.equal(r.tables, shape.tables ? row.txPackets : 0, why);
        assert.equal(r.errors.badDescriptors, 0, why);
        assert.ok(r.poolBack, why);
      }
    });
  }
}

Deno.test("indirect: without indirect=1 no table is used; one-segment frames never use one", async () => {
  for (const packed of ["0", "1"]) {
    const off = await txonly({ packed }, [64, 1400]);
    assert.equal(off.features & INDIRECT, 0n);
    assert.equal(off.tables, 0);
    assert.equal(off.acc.ok, true, off.acc.message);
    const single = await txonly({ packed, indirect: "1" }, [1000]);
    assert.ok((single.features & INDIRECT) !== 0n);
    assert.ok(single.rows[0].txPackets > 100);
    assert.equal(single.tables, 0);
  }
});

Deno.test("indirect: the spec key is checked on every port kind", () => {
  assert.throws(
    () => openTransport("sim:a,indirect=2"),
    /sim:a: indirect=2: expected 1 or 0/,
  );
  assert.throws(
    () => openTransport("vhost-user:/tmp/vpmd-no-such.sock,indirect=2"),
    /vhost-user option indirect=2: expected 0 or 1/,
  );
  assert.throws(
    () => checkPciOptions("0000:00:04.0", { indirect: "2" }),
    /PCI port 0000:00:04\.0: indirect=2 is not one of 0\|1/,
  );
  checkPciOptions("0000:00:04.0", { indirect: "1" });
});

// ---- The device side against hand-made tables ----

const QSIZE = 8;
const TABLE_AT = 8192;
const FRAME_AT = 12288;

/** A sim device brought up by hand with `features`, its TX ring, and memory for tables. */
function handDevice(packed: boolean, features: bigint) {
  const t = SimTransport.fromSpec("h", {
    gen: "off",
    ctrl: "0",
    indirect: "1",
    ...(packed ? { packed: "1" } : {}),
  });
  const region = DmaRegion.create({ size: 16384, kind: t.dmaKinds[0], name: "indirect-test" });
  t.reset();
  t.setStatus(Status.ACKNOWLEDGE | Status.DRIVER);
  t.setDriverFeatures(features);
  t.setStatus(Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK);
  t.addMemory(region);
  const rx = packed
    ? new PackedRing(0, QSIZE, region, 0)
    : new SplitRing(0, QSIZE, region, 0, t.ringLayout);
  const tx = packed
    ? new PackedRing(1, QSIZE, region, 4096)
    : new SplitRing(1, QSIZE, region, 4096, t.ringLayout);
  t.setupQueue(rx.memory);
  t.setupQueue(tx.memory);
  t.setStatus(Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK | Status.DRIVER_OK);
  // A 12-byte zero header and a 60-byte frame, and a 16-entry table at TABLE_AT.
  region.u8.fill(0, FRAME_AT, FRAME_AT + 72);
  region.u8.fill(0xab, FRAME_AT + 12, FRAME_AT + 72);
  const u32 = region.u32;
  const entry = (i: number, addr: number, len: number, flags: number, next = 0) => {
    const w = (TABLE_AT + 16 * i) / 4;
    const iova = region.iova(addr);
    u32[w] = iova % 2 ** 32;
    u32[w + 1] = Math.floor(iova / 2 ** 32);
    u32[w + 2] = len;
    // Split: flags, then next (2.7.5); packed: the (reserved) id, then flags (2.8.13).
    u32[w + 3] = packed ? (flags << 16) >>> 0 : flags | (next << 16);
  };
  /** Ring descriptor 0 (split: avail it; packed: make it available, id 0). */
  const post = (addr: number, len: number, flags: number, next = 0) => {
    const iova = region.iova(addr);
    const d = tx.desc32;
    u32[d] = iova % 2 ** 32;
    u32[d + 1] = Math.floor(iova / 2 ** 32);
    u32[d + 2] = len;
    if (tx instanceof PackedRing) {
      u32[d + 3] = ((flags | PackedDesc.F_AVAIL) << 16) >>> 0;
    } else {
      u32[d + 3] = flags | (next << 16);
      tx.u16[tx.availRing16] = 0;
      tx.publishAvail(1);
    }
  };
  return { t, region, tx, entry, post };
}

const BASE = bit(Feature.VERSION_1);

for (const packed of [false, true]) {
  const kind = packed ? "packed" : "split";
  const F = BASE | INDIRECT | (packed ? bit(Feature.RING_PACKED) : 0n);
  Deno.test(`indirect device, ${kind}: a good table is sent; bad ones are bad descriptors`, () => {
    // [name, build, good]: each case on a fresh device.
    const cases: [string, (h: ReturnType<typeof handDevice>) => void, boolean, bigint?][] = [
      ["header and frame in two entries", (h) => {
        h.entry(0, FRAME_AT, 12, packed ? 0 : Desc.F_NEXT, 1);
        h.entry(1, FRAME_AT + 12, 60, 0);
        h.post(TABLE_AT, 32, Desc.F_INDIRECT);
      }, true],
      ["length not a multiple of 16", (h) => {
        h.entry(0, FRAME_AT, 72, 0);
        h.post(TABLE_AT, 24, Desc.F_INDIRECT);
      }, false],
      ["length 0", (h) => h.post(TABLE_AT, 0, Desc.F_INDIRECT), false],
      ["more entries than the queue size", (h) => {
        for (let i = 0; i < QSIZE + 1; i++) {
          h.entry(i, FRAME_AT, i === 0 ? 72 : 0, packed || i === QSIZE ? 0 : Desc.F_NEXT, i + 1);
        }
        h.post(TABLE_AT, 16 * (QSIZE + 1), Desc.F_INDIRECT);
      }, false],
      ["a nested table", (h) => {
        h.entry(0, TABLE_AT + 64, 16, Desc.F_INDIRECT);
        h.entry(4, FRAME_AT, 72, 0);
        h.post(TABLE_AT, 16, Desc.F_INDIRECT);
      }, false],
      ["a table outside the driver's memory", (h) => {
        h.post(TABLE_AT, 16, Desc.F_INDIRECT);
        const d = h.tx.desc32;
        h.region.u32[d + 1] = 0x7fff; // far above every region
      }, false],
      [
        "indirect without the feature",
        (h) => {
          h.entry(0, FRAME_AT, 72, 0);
          h.post(TABLE_AT, 16, Desc.F_INDIRECT);
        },
        false,
        F & ~INDIRECT,
      ],
    ];
    if (!packed) {
      cases.push(
        ["NEXT beyond the table", (h) => {
          h.entry(0, FRAME_AT, 12, Desc.F_NEXT, 5);
          h.entry(1, FRAME_AT + 12, 60, 0);
          h.post(TABLE_AT, 32, Desc.F_INDIRECT);
        }, false],
        ["a loop in the table", (h) => {
          h.entry(0, FRAME_AT, 12, Desc.F_NEXT, 1);
          h.entry(1, FRAME_AT + 12, 60, Desc.F_NEXT, 0);
          h.post(TABLE_AT, 32, Desc.F_INDIRECT);
        }, false],
        ["INDIRECT together with NEXT", (h) => {
          h.entry(0, FRAME_AT, 72, 0);
          h.post(TABLE_AT, 16, Desc.F_INDIRECT | Desc.F_NEXT, 1);
        }, false],
      );
    } else {
      cases.push(["a flag other than WRITE inside the table", (h) => {
        h.entry(0, FRAME_AT, 12, PackedDesc.F_NEXT);
        h.entry(1, FRAME_AT + 12, 60, 0);
        h.post(TABLE_AT, 32, Desc.F_INDIRECT);
      }, false]);
    }
    for (const [name, build, good, features] of cases) {
      const h = handDevice(packed, features ?? F);
      try {
        build(h);
        h.t.poll();
        const d = h.t.device;
        if (good) {
          assert.equal(d.errors.badDescriptors, 0, name);
          assert.equal(d.indirectTables, 1, name);
          assert.equal(h.t.wire.counters.txFrames, 1, name);
          assert.equal(h.t.wire.counters.txBytes, 60, name);
        } else {
          assert.equal(d.errors.badDescriptors, 1, name);
          assert.ok(d.needsReset, name);
          assert.equal(h.t.wire.counters.txFrames, 0, name);
        }
      } finally {
        h.t.close();
        h.region.close();
      }
    }
  });
}

Deno.test("indirect device, split: ordinary descriptors before the indirect one are read", () => {
  const h = handDevice(false, BASE | INDIRECT);
  try {
    // Ring descriptor 0: the header; descriptor 1: the table holding the frame (2.7.5.3.2).
    h.entry(0, FRAME_AT + 12, 60, 0);
    const iova = h.region.iova(TABLE_AT);
    (h.tx as SplitRing).setDesc(
      1,
      iova % 2 ** 32,
      Math.floor(iova / 2 ** 32),
      16,
      Desc.F_INDIRECT,
      0,
    );
    h.post(FRAME_AT, 12, Desc.F_NEXT, 1);
    h.t.poll();
    assert.equal(h.t.device.errors.badDescriptors, 0);
    assert.equal(h.t.wire.counters.txFrames, 1);
    assert.equal(h.t.wire.counters.txBytes, 60);
  } finally {
    h.t.close();
    h.region.close();
  }
});
