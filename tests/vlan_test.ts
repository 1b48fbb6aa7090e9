/** Software 802.1Q strip and insert on mbufs, byte-exact. */
import assert from "assert";
import { MbufFlag, MbufPool } from "../mod/mbuf.ts";
import { vlanInsert, vlanStrip } from "../mod/vlan.ts";

function untagged(): Uint8Array {
  const f = new Uint8Array(64);
  for (let i = 0; i < f.length; i++) f[i] = (i * 11 + 3) & 0xff;
  f[12] = 0x08; // IPv4
  f[13] = 0x00;
  return f;
}

function tagged(f: Uint8Array, tci: number, tpid = 0x8100): Uint8Array {
  const t = new Uint8Array(f.length + 4);
  t.set(f.subarray(0, 12));
  t[12] = tpid >> 8;
  t[13] = tpid & 0xff;
  t[14] = tci >> 8;
  t[15] = tci & 0xff;
  t.set(f.subarray(12), 16);
  return t;
}

function bytesOf(pool: MbufPool, m: number): Uint8Array {
  const out = new Uint8Array(pool.pktLen[m]);
  assert.equal(pool.read(m, out), out.length);
  return out;
}

Deno.test("vlan: strip removes the outer 802.1Q tag in place and keeps its TCI", () => {
  const pool = new MbufPool({ count: 4, kind: "anon" });
  try {
    const plain = untagged();
    const m = pool.fromBytes(tagged(plain, 0xa123));
    assert.equal(vlanStrip(pool, m), true);
    assert.deepEqual(bytesOf(pool, m), plain);
    assert.equal(pool.vlanTci[m], 0xa123);
    assert.equal(pool.flags[m] & MbufFlag.VLAN_STRIPPED, MbufFlag.VLAN_STRIPPED);
    assert.equal(pool.dataOff[m], pool.headroom + 4);
    assert.equal(pool.dataLen[m], plain.length);
  } finally {
    pool.close();
  }
});

Deno.test("vlan: strip leaves untagged, 802.1ad and too-short frames alone", () => {
  const pool = new MbufPool({ count: 4, kind: "anon" });
  try {
    const plain = untagged();
    const a = pool.fromBytes(plain);
    assert.equal(vlanStrip(pool, a), false);
    assert.deepEqual(bytesOf(pool, a), plain);
    assert.equal(pool.flags[a], 0);
    const qinq = tagged(plain, 5, 0x88a8);
    const b = pool.fromBytes(qinq);
    assert.equal(vlanStrip(pool, b), false);
    assert.deepEqual(bytesOf(pool, b), qinq);
    const short = pool.fromBytes(tagged(plain, 7).subarray(0, 17));
    assert.equal(vlanStrip(pool, short), false);
  } finally {
    pool.close();
  }
});

Deno.test("vlan: strip of a double-tagged frame removes only the outer tag", () => {
  const pool = new MbufPool({ count: 2, kind: "anon" });
  try {
    const inner = tagged(untagged(), 20);
    const m = pool.fromBytes(tagged(inner, 10));
    assert.equal(vlanStrip(pool, m), true);
    assert.equal(pool.vlanTci[m], 10);
    assert.deepEqual(bytesOf(pool, m), inner);
  } finally {
    pool.close();
  }
});

Deno.test("vlan: insert pushes a tag into the headroom, byte-exact, also on tagged frames", () => {
  const pool = new MbufPool({ count: 2, kind: "anon" });
  try {
    const plain = untagged();
    const m = pool.fromBytes(plain);
    pool.flags[m] = MbufFlag.VLAN_INSERT;
    assert.equal(vlanInsert(pool, m, 0x2064, 12), true);
    const once = tagged(plain, 0x2064);
    assert.deepEqual(bytesOf(pool, m), once);
    assert.equal(pool.dataOff[m], pool.headroom - 4);
    assert.equal(pool.flags[m] & MbufFlag.VLAN_INSERT, 0);
    // a second insert makes a new outermost tag
    assert.equal(vlanInsert(pool, m, 0x0003, 12), true);
    assert.deepEqual(bytesOf(pool, m), tagged(once, 3));
    // strip then gives back the first tagging
    assert.equal(vlanStrip(pool, m), true);
    assert.equal(pool.vlanTci[m], 3);
    assert.deepEqual(bytesOf(pool, m), once);
  } finally {
    pool.close();
  }
});

Deno.test("vlan: insert refuses when the headroom cannot keep the virtio-net header", () => {
  const pool = new MbufPool({ count: 2, kind: "anon", headroom: 14 });
  try {
    const plain = untagged();
    const m = pool.fromBytes(plain);
    assert.equal(vlanInsert(pool, m, 1, 12), false);
    assert.deepEqual(bytesOf(pool, m), plain);
    assert.equal(vlanInsert(pool, m, 1, 10), true);
  } finally {
    pool.close();
  }
});
