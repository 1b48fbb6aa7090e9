/**
 * The simulated device (mod/sim/) with the real driver: generator -> driver -> checker counts
 * agree with the wire; mergeable RX of frames larger than one buffer; a legacy device (10-byte
 * header); control commands acknowledged and the receive filter dropping what it should; link
 * changes seen as events; bad spec options.
 */
import assert from "assert";
import { MbufPool } from "../mod/mbuf.ts";
import { Port, type PortConfig } from "../mod/port.ts";
import { SimTransport } from "../mod/sim/transport.ts";
import { checkTestFrame, FrameCheck, writeTestFrame } from "../mod/testframe.ts";

function setup(spec: Record<string, string>, cfg: Partial<PortConfig> = {}, dataRoom = 2048) {
  const t = SimTransport.fromSpec("t", spec);
  const pool = new MbufPool({ count: 2048, dataRoom, kind: t.dmaKinds[0] });
  const port = new Port(0, t, { log: () => {} });
  const close = () => {
    port.close();
    t.close();
    pool.close();
  };
  try {
    port.configure({ pool, ...cfg });
    port.start();
  } catch (e) {
    close();
    throw e;
  }
  return { t, pool, port, close };
}

/** Poll and receive until `want` frames arrived (or 50 empty polls); returns the mbufs. */
function receive(port: Port, want: number): number[] {
  const out: number[] = [];
  const pkts = new Uint32Array(32);
  for (let idle = 0; idle < 50 && out.length < want;) {
    port.poll();
    const n = port.rxBurst(0, pkts, 32);
    for (let k = 0; k < n; k++) out.push(pkts[k]);
    idle = n === 0 ? idle + 1 : 0;
  }
  return out;
}

Deno.test("sim: generated frames reach the driver intact, echoed frames pass the checker", () => {
  const { t, pool, port, close } = setup({ size: "64+200+1514" });
  try {
    const got = receive(port, 300);
    t.wire.stopGenerator();
    assert.ok(got.length >= 300);
    const buf = new Uint8Array(2048);
    const res = new Uint32Array(4);
    const sizes = [64, 200, 1514];
    for (let i = 0; i < 300; i++) {
      const len = pool.read(got[i], buf);
      assert.equal(len, sizes[i % 3]);
      assert.equal(checkTestFrame(buf, 0, len, res), FrameCheck.OK);
      assert.equal(res[1], i, "sequence");
    }
    // Send them back: the wire checks every one.
    const arr = Uint32Array.from(got);
    let sent = 0;
    while (sent < arr.length) {
      sent += port.txBurst(0, arr.subarray(sent), Math.min(32, arr.length - sent));
      port.poll();
    }
    for (let i = 0; i < 10; i++) port.poll();
    const c = t.wire.counters;
    assert.equal(c.txFrames, got.length);
    assert.equal(c.checkedOk, got.length);
    assert.equal(c.badFrames + c.seqGaps + c.reordered, 0);
    // Frames still in the RX ring: everything the device delivered reaches the driver.
    for (const m of receive(port, Infinity)) pool.free(m);
    assert.equal(c.delivered, port.stats.rxPackets);
    assert.equal(c.generated, c.delivered);
  } finally {
    close();
  }
});

Deno.test("sim: mergeable RX spreads a 9000-byte frame over buffers (num_buffers)", () => {
  const { t, pool, port, close } = setup({ gen: "off", mtu: "9000" }, { mtu: 9000 }, 2048);
  try {
    const f = new Uint8Array(9014);
    writeTestFrame(f, 0, f.length, 9, 1, port.mac, Uint8Array.of(2, 0, 0, 0, 0, 9));
    assert.ok(t.wire.inject(f));
    const [m] = receive(port, 1);
    assert.ok(pool.nbSegs[m] >= 5, `segments ${pool.nbSegs[m]}`);
    assert.equal(pool.pktLen[m], f.length);
    const buf = new Uint8Array(10000);
    assert.equal(pool.read(m, buf), f.length);
    assert.deepEqual(buf.subarray(0, f.length), f);
    pool.free(m);
  } finally {
    close();
  }
});

Deno.test("sim: legacy device (no VERSION_1, mrg=0) uses the 10-byte header", () => {
  const { t, pool, port, close } = setup({ legacy: "1", mrg: "0" });
  try {
    const got = receive(port, 40);
    t.wire.stopGenerator();
    const buf = new Uint8Array(2048);
    const res = new Uint32Array(4);
    assert.equal(checkTestFrame(buf, 0, pool.read(got[0], buf), res), FrameCheck.OK);
    for (const m of got) pool.free(m);
  } finally {
    close();
  }
});

Deno.test("sim: control queue commands are acknowledged; the filter drops foreign unicast", () => {
  const { t, port, close } = setup({ gen: "off" });
  try {
    const other = Uint8Array.of(0x02, 0x99, 0, 0, 0, 1);
    const frame = (dst: Uint8Array) => {
      const f = new Uint8Array(64);
      writeTestFrame(f, 0, 64, 1, 0, dst, other);
      return f;
    };
    port.setPromiscuous(false);
    assert.equal(t.device.filter.promisc, false);
    port.setAllMulticast(false);
    t.wire.inject(frame(other)); // not for us: filtered
    t.wire.inject(frame(port.mac)); // ours
    t.wire.inject(frame(Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0xff, 0xff))); // broadcast
    assert.equal(receive(port, 2).length, 2);
    assert.equal(t.wire.counters.filtered, 1);
    port.setMacTable([other], []);
    assert.equal(t.device.filter.unicast.length, 1);
    t.wire.inject(frame(other));
    assert.equal(receive(port, 1).length, 1);
    port.addVlan(42);
    assert.ok(t.device.filter.vlans.has(42));
    port.removeVlan(42);
    assert.equal(t.device.filter.vlans.size, 0);
    assert.equal(t.device.errors.ctrlErrors, 0);
  } finally {
    close();
  }
});

Deno.test("sim: link down/up is reported through onLinkChange", () => {
  const { t, port, close } = setup({ gen: "off" });
  try {
    const seen: boolean[] = [];
    port.onLinkChange = (up) => seen.push(up);
    assert.equal(port.linkUp, true);
    t.device.setLink(false);
    port.poll();
    t.device.setLink(true);
    port.poll();
    assert.deepEqual(seen, [false, true]);
  } finally {
    close();
  }
});

Deno.test("sim: bad spec options are one-line errors", () => {
  assert.throws(() => SimTransport.fromSpec("x", { colour: "red" }), /unknown option 'colour'/);
  assert.throws(() => SimTransport.fromSpec("x", { rate: "fast" }), /rate=fast/);
  assert.throws(() => SimTransport.fromSpec("x", { size: "10" }), /size=10/);
  assert.throws(() => SimTransport.fromSpec("x", { gen: "maybe" }), /gen=maybe/);
  assert.throws(() => SimTransport.fromSpec("x", { mac: "zz" }), /mac=zz/);
});
