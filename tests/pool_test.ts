/** The mbuf pool: allocation, chains, double-free protection, DMA addresses. */
import assert from "assert";
import { DmaRegion } from "../ffi/dma.ts";
import { MbufPool, NONE, poolOfFirstKind } from "../mod/mbuf.ts";
import { freeHugepages, type Peer, peerTest } from "./lib/peers.ts";

/** A physical region: 2 MiB hugepages, and root to read their physical addresses. */
const HUGEPAGES_AS_ROOT: Peer = {
  what: "2 MiB hugepages and root (physical addresses)",
  setup: "scripts/setup-dpdk.sh",
  available: () => freeHugepages() >= 2 && Deno.uid() === 0,
};

Deno.test("pool: alloc resets metadata, free returns buffers, an empty pool says NONE", () => {
  const pool = new MbufPool({ count: 3, kind: "anon" });
  try {
    const a = pool.alloc();
    pool.dataLen[a] = 99;
    pool.flags[a] = 3;
    pool.free(a);
    const got = [pool.alloc(), pool.alloc(), pool.alloc()];
    assert.equal(new Set(got).size, 3);
    assert.equal(pool.alloc(), NONE);
    const again = got.find((m) => m === a)!;
    assert.equal(pool.dataLen[again], 0);
    assert.equal(pool.flags[again], 0);
    assert.equal(pool.dataOff[again], pool.headroom);
    for (const m of got) pool.free(m);
    assert.equal(pool.available, 3);
  } finally {
    pool.close();
  }
});

Deno.test("pool: an empty pool asks its holders for buffers before it says NONE", () => {
  const pool = new MbufPool({ count: 4, kind: "anon" });
  try {
    // A holder (as a TX queue) with two buffers it is done with, given back when asked.
    const held = [pool.alloc(), pool.alloc()];
    let asked = 0;
    const holder = {
      reclaim() {
        asked++;
        while (held.length > 0) pool.free(held.pop()!);
      },
    };
    pool.addHolder(holder);
    pool.addHolder(holder); // once is enough
    const mine = [pool.alloc(), pool.alloc()];
    assert.equal(asked, 0, "not asked while the pool has buffers");
    assert.notEqual(pool.allocRaw(), NONE);
    assert.equal(asked, 1);
    const out = new Uint32Array(2);
    assert.equal(pool.allocBulk(out, 2), false, "one left: not two");
    assert.equal(asked, 2);
    mine.push(pool.alloc());
    assert.equal(pool.alloc(), NONE, "nothing held any more");
    pool.removeHolder(holder);
    const before = asked;
    assert.equal(pool.allocRaw(), NONE);
    assert.equal(asked, before, "a removed holder is not asked");
  } finally {
    pool.close();
  }
});

Deno.test("pool: a double free is ignored instead of corrupting the free list", () => {
  const pool = new MbufPool({ count: 2, kind: "anon" });
  try {
    const a = pool.alloc();
    pool.free(a);
    pool.free(a);
    assert.equal(pool.available, 2);
    const x = pool.alloc();
    const y = pool.alloc();
    assert.notEqual(x, y);
  } finally {
    pool.close();
  }
});

Deno.test("pool: fromBytes splits into a chain that read() reassembles; free takes all segments", () => {
  const pool = new MbufPool({ count: 8, kind: "anon", dataRoom: 256 });
  try {
    const data = new Uint8Array(700).map((_, i) => (i * 5) & 0xff);
    const m = pool.fromBytes(data, 256);
    assert.equal(pool.nbSegs[m], 3);
    assert.equal(pool.pktLen[m], 700);
    assert.equal(pool.available, 5);
    const out = new Uint8Array(700);
    assert.equal(pool.read(m, out), 700);
    assert.deepEqual(out, data);
    pool.free(m);
    assert.equal(pool.available, 8);
    assert.equal(pool.fromBytes(new Uint8Array(300), 512), NONE); // larger than the data room
    assert.equal(pool.fromBytes(new Uint8Array(9 * 256), 256), NONE); // more than the pool has
    assert.equal(pool.available, 8);
  } finally {
    pool.close();
  }
});

Deno.test("pool: buffers lie back to back where iovas are contiguous, crossing pages", () => {
  for (const kind of ["anon", "memfd"] as const) {
    const pool = new MbufPool({ count: 100, kind, dataRoom: 2048, headroom: 128 });
    try {
      assert.equal(pool.stride, 2176);
      // the region is what the buffers need (and the room left for rings), not a 4 KiB page per
      // buffer
      assert.equal(pool.region.size, Math.ceil((100 * 2176 + 256 * 1024) / 4096) * 4096);
      assert.ok(pool.region.remaining >= 256 * 1024);
      let crossing = 0;
      for (let m = 0; m < pool.count; m++) {
        const off = pool.bufOff[m];
        assert.equal(off, m * pool.stride);
        assert.equal(pool.iovaHi[m] * 2 ** 32 + pool.iovaLo[m], pool.region.iova(off));
        // the low half never carries into the high half within a buffer
        assert.ok(pool.iovaLo[m] + pool.stride <= 2 ** 32);
        if (Math.floor(off / 4096) !== Math.floor((off + pool.stride - 1) / 4096)) crossing++;
      }
      assert.ok(crossing > 40, `${crossing} buffers cross a 4 KiB page`);
    } finally {
      pool.close();
    }
  }
});

peerTest(
  HUGEPAGES_AS_ROOT,
  "pool: in a physical region every buffer stays inside one 2 MiB page",
  () => {
    // 963 buffers of 2176 bytes fit a 2 MiB page: the 964th starts the next page.
    const pool = new MbufPool({ count: 1000, kind: "physical" });
    try {
      assert.equal(pool.region.size, 2 * 2 ** 21);
      for (let m = 0; m < pool.count; m++) {
        const off = pool.bufOff[m];
        assert.equal(off % 64, 0);
        assert.equal(Math.floor(off / 2 ** 21), Math.floor((off + pool.stride - 1) / 2 ** 21));
        if (m > 0) assert.ok(off >= pool.bufOff[m - 1] + pool.stride);
        assert.equal(pool.iovaHi[m] * 2 ** 32 + pool.iovaLo[m], pool.region.iova(off));
      }
      assert.equal(pool.bufOff[963], 2 ** 21);
    } finally {
      pool.close();
    }
  },
);

Deno.test("pool: freeing a corrupted chain (looping or out of range) ends and frees each once", () => {
  const pool = new MbufPool({ count: 4, kind: "anon" });
  try {
    const a = pool.alloc();
    const b = pool.alloc();
    pool.next[a] = b;
    pool.next[b] = a; // a loop
    pool.free(a);
    assert.equal(pool.available, 4);
    const c = pool.alloc();
    pool.next[c] = 1000; // no such buffer
    pool.free(c);
    pool.free(-5);
    pool.free(99);
    assert.equal(pool.available, 4);
  } finally {
    pool.close();
  }
});

Deno.test("pool: freeBulk returns single buffers and chains, ignores doubles and bad numbers", () => {
  const pool = new MbufPool({ count: 6, kind: "anon" });
  try {
    const a = pool.alloc();
    const b = pool.alloc();
    const chain = pool.fromBytes(new Uint8Array(300), 100); // three segments
    assert.equal(pool.available, 1);
    const list = Int32Array.of(a, chain, a, NONE, 1000, chain, b);
    pool.freeBulk(list, list.length);
    assert.equal(pool.available, 6);
    const got = new Set(Array.from({ length: 6 }, () => pool.alloc()));
    assert.equal(got.size, 6);
    assert.ok(!got.has(NONE));
  } finally {
    pool.close();
  }
});

Deno.test("pool: allocRaw takes a buffer, resets only its link, and counts it out", () => {
  const pool = new MbufPool({ count: 1, kind: "anon" });
  try {
    const m = pool.alloc();
    pool.dataLen[m] = 77;
    pool.free(m);
    assert.equal(pool.allocRaw(), m);
    assert.equal(pool.dataLen[m], 77);
    assert.equal(pool.next[m], NONE);
    assert.equal(pool.allocRaw(), NONE);
    pool.free(m);
    pool.free(m);
    assert.equal(pool.available, 1);
  } finally {
    pool.close();
  }
});

Deno.test("pool: without free hugepages the forwarder's pool is memfd, and says so", () => {
  // Take every free hugepage first (on a machine with none reserved there is nothing to take).
  const free = freeHugepages();
  const hog = free > 0 ? DmaRegion.create({ kind: "hugepage-memfd", size: free * 2 ** 21 }) : null;
  const logs: string[] = [];
  try {
    assert.equal(freeHugepages(), 0);
    const pool = poolOfFirstKind(["hugepage-memfd", "memfd"], { count: 64 }, (m) => logs.push(m));
    try {
      assert.equal(pool.region.kind, "memfd");
      assert.equal(pool.available, 64);
    } finally {
      pool.close();
    }
    assert.equal(logs.length, 1);
    assert.match(logs[0], /^mbuf pool: using memfd memory, hugepage-memfd failed: .*hugepage/);
  } finally {
    hog?.close();
  }
  if (free > 0) {
    // With hugepages free again, they are used, without a word.
    const pool = poolOfFirstKind(["hugepage-memfd", "memfd"], { count: 64 }, (m) => logs.push(m));
    assert.equal(pool.region.kind, "hugepage-memfd");
    pool.close();
    assert.equal(logs.length, 1);
  }
  // Only a hugepage shortage falls through to the next kind.
  assert.throws(
    () => poolOfFirstKind(["memfd", "anon"], { count: 0 }, (m) => logs.push(m)),
    /count must be positive/,
  );
  assert.throws(
    () => poolOfFirstKind(["hugepage-memfd", "memfd"], { count: 0 }, (m) => logs.push(m)),
    /count must be positive/,
  );
  assert.equal(logs.length, 1);
});
