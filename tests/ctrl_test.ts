/**
 * Control queue (virtio 1.2, 5.1.6.5): the command chain as the device sees it, the ack check
 * and the timeout (against a device played by hand from `transport.poll()`), then the Port's
 * control commands against the simulated device, whose receive filter must reflect them.
 */
import assert from "assert";
import { DmaRegion } from "../ffi/dma.ts";
import type { DmaKind } from "../ffi/dma.ts";
import { MbufPool } from "../mod/mbuf.ts";
import { Port } from "../mod/port.ts";
import { SimTransport } from "../mod/sim/transport.ts";
import { writeTestFrame } from "../mod/testframe.ts";
import type { QueueMemory, VirtioTransport } from "../mod/virtio/transport.ts";
import { Avail, Ctrl, Desc, Used } from "../mod/virtio/constants.ts";
import { CtrlQueue } from "../mod/virtio/ctrl_queue.ts";
import { SplitRing } from "../mod/virtio/split_ring.ts";

interface Seen {
  cls: number;
  cmd: number;
  parts: number[][];
  ackWritable: boolean;
}

/** A control queue whose device answers (from poll) with `ack`, or never when ack < 0. */
function handCtrl(ack: number) {
  const region = DmaRegion.create({ size: 65536, kind: "anon" });
  const ring = new SplitRing(2, 16, region, 0, { placement: "separate", usedAlign: 4 });
  const dv = new DataView(region.buffer);
  const m = ring.memory;
  const seen: Seen[] = [];
  let lastAvail = 0;
  let used = 0;
  let kicks = 0;
  const toOff = (addr: number) => addr - region.iovaBase;
  const t = {
    name: "hand",
    ringLayout: { placement: "separate", usedAlign: 4 },
    dmaKinds: ["anon"] as readonly DmaKind[],
    queueSizeFixed: false,
    reset() {},
    getStatus: () => 0,
    setStatus() {},
    getDeviceFeatures: () => 0n,
    setDriverFeatures() {},
    readConfig: (_o: number, n: number) => new Uint8Array(n),
    queueMaxSize: () => 16,
    setupQueue(_q: QueueMemory) {},
    addMemory(_r: DmaRegion) {},
    notify() {
      kicks++;
    },
    poll(): number {
      if (ack < 0) return 0;
      const availIdx = dv.getUint16(m.availOffset + Avail.IDX, true);
      while (lastAvail !== availIdx) {
        const head = dv.getUint16(m.availOffset + Avail.RING + 2 * (lastAvail % m.size), true);
        lastAvail = (lastAvail + 1) & 0xffff;
        const descs: { addr: number; len: number; flags: number }[] = [];
        for (let d = head;;) {
          const o = m.descOffset + Desc.SIZE * d;
          const addr = dv.getUint32(o, true) + dv.getUint32(o + 4, true) * 2 ** 32;
          const flags = dv.getUint16(o + Desc.FLAGS, true);
          descs.push({ addr, len: dv.getUint32(o + Desc.LEN, true), flags });
          if ((flags & Desc.F_NEXT) === 0) break;
          d = dv.getUint16(o + Desc.NEXT, true);
        }
        const hdr = descs[0];
        const last = descs[descs.length - 1];
        seen.push({
          cls: region.u8[toOff(hdr.addr)],
          cmd: region.u8[toOff(hdr.addr) + 1],
          parts: descs.slice(1, -1).map((d) => [
            ...region.u8.subarray(toOff(d.addr), toOff(d.addr) + d.len),
          ]),
          ackWritable: (last.flags & Desc.F_WRITE) !== 0 && last.len === 1,
        });
        region.u8[toOff(last.addr)] = ack;
        const e = m.usedOffset + Used.RING + Used.ELEM_SIZE * (used % m.size);
        dv.setUint32(e, head, true);
        dv.setUint32(e + 4, 1, true);
        used = (used + 1) & 0xffff;
        dv.setUint16(m.usedOffset + Used.IDX, used, true);
      }
      return 0;
    },
    close() {},
  } satisfies VirtioTransport;
  const q = new CtrlQueue(ring, t, region, 32768, "port 7", false, 100);
  return { q, seen, kicks: () => kicks, close: () => region.close() };
}

Deno.test("ctrl queue: a command is header, data parts and a writable ack, each its own descriptor", () => {
  const h = handCtrl(Ctrl.OK);
  try {
    const a = Uint8Array.of(1, 0, 0, 0, 1, 2, 3, 4, 5, 6);
    const b = Uint8Array.of(0, 0, 0, 0);
    h.q.command(Ctrl.MAC, Ctrl.MAC_TABLE_SET, [a, b], "MAC table");
    h.q.command(Ctrl.VLAN, Ctrl.VLAN_ADD, [Uint8Array.of(0x34, 0x02)], "add VLAN 564");
    h.q.command(Ctrl.ANNOUNCE, Ctrl.ANNOUNCE_ACK, [], "announce");
    assert.deepEqual(h.seen, [
      { cls: Ctrl.MAC, cmd: Ctrl.MAC_TABLE_SET, parts: [[...a], [...b]], ackWritable: true },
      { cls: Ctrl.VLAN, cmd: Ctrl.VLAN_ADD, parts: [[0x34, 0x02]], ackWritable: true },
      { cls: Ctrl.ANNOUNCE, cmd: Ctrl.ANNOUNCE_ACK, parts: [], ackWritable: true },
    ]);
    assert.equal(h.kicks(), 3);
  } finally {
    h.close();
  }
});

Deno.test("ctrl queue: VIRTIO_NET_ERR from the device is an error naming the command", () => {
  const h = handCtrl(Ctrl.ERR);
  try {
    assert.throws(
      () => h.q.command(Ctrl.RX, Ctrl.RX_PROMISC, [Uint8Array.of(1)], "promiscuous mode"),
      /port 7: promiscuous mode: the device refused the command \(ack 1\)/,
    );
  } finally {
    h.close();
  }
});

Deno.test("ctrl queue: a device that never answers times out, and the queue stays closed", () => {
  const h = handCtrl(-1);
  try {
    assert.throws(
      () => h.q.command(Ctrl.RX, Ctrl.RX_ALLMULTI, [Uint8Array.of(1)], "all-multicast mode"),
      /port 7: all-multicast mode: the device did not answer on the control queue within 100 ms/,
    );
    assert.throws(
      () => h.q.command(Ctrl.RX, Ctrl.RX_ALLMULTI, [Uint8Array.of(0)], "all-multicast mode"),
      /timed out earlier; restart the port/,
    );
  } finally {
    h.close();
  }
});

// ---- through the Port, against the simulated device's receive filter ----

function simPort(opts: Partial<ConstructorParameters<typeof SimTransport>[0]> = {}) {
  const t = new SimTransport({ name: "c0", gen: false, ...opts });
  const pool = new MbufPool({ count: 512, kind: t.dmaKinds[0] });
  const port = new Port(0, t, { log: () => {} });
  const close = () => {
    port.close();
    t.close();
    pool.close();
  };
  return { t, pool, port, close };
}

function frameTo(dst: Uint8Array, vid = -1): Uint8Array {
  const f = new Uint8Array(vid >= 0 ? 64 : 60);
  writeTestFrame(f, 0, 60, 1, 0, dst, Uint8Array.of(2, 0, 0, 0, 0, 9));
  if (vid >= 0) {
    f.copyWithin(16, 12, 60);
    f.set([0x81, 0x00, vid >> 8, vid & 0xff], 12);
  }
  return f;
}

/** Inject `frames`, run the device, and return how many reached the driver (freed). */
function deliver(s: ReturnType<typeof simPort>, frames: Uint8Array[]): number {
  for (const f of frames) s.t.wire.inject(f);
  const pkts = new Uint32Array(64);
  let got = 0;
  for (let i = 0; i < 20; i++) {
    s.port.poll();
    const n = s.port.rxBurst(0, pkts, 64);
    for (let k = 0; k < n; k++) s.pool.free(pkts[k]);
    got += n;
  }
  return got;
}

Deno.test("ctrl + sim: RX mode, MAC table, MAC address and VLAN filters reach the device", () => {
  const s = simPort({ mac: Uint8Array.of(2, 0, 0, 0, 0, 1) });
  try {
    s.port.configure({ pool: s.pool });
    s.port.start();
    const flt = s.t.device.filter;
    const other = Uint8Array.of(2, 0, 0, 0, 0, 0x77);
    const mcast = Uint8Array.of(1, 0, 0x5e, 0, 0, 5);
    s.port.setPromiscuous(false);
    s.port.setAllMulticast(false);
    assert.equal(flt.promisc, false);
    assert.equal(flt.allmulti, false);
    // the device now drops unicast to other addresses and unlisted multicast
    assert.equal(deliver(s, [frameTo(s.port.mac), frameTo(other), frameTo(mcast)]), 1);
    s.port.setMacTable([other], [mcast]);
    assert.deepEqual(flt.unicast.map((m) => [...m]), [[...other]]);
    assert.deepEqual(flt.multicast.map((m) => [...m]), [[...mcast]]);
    assert.equal(deliver(s, [frameTo(other), frameTo(mcast)]), 2);
    const mine = Uint8Array.of(2, 0, 0, 0, 0, 0x42);
    s.port.setMacAddress(mine);
    assert.deepEqual([...s.port.mac], [...mine]);
    assert.equal(deliver(s, [frameTo(mine)]), 1);
    s.port.addVlan(10);
    s.port.addVlan(20);
    s.port.removeVlan(10);
    assert.deepEqual([...flt.vlans], [20]);
    assert.equal(deliver(s, [frameTo(mine, 10), frameTo(mine, 20)]), 1);
    assert.equal(s.t.device.errors.ctrlErrors, 0);
    // a restart (device reset clears its filter) sends the remembered state again
    s.port.stop();
    s.port.start();
    assert.equal(flt.promisc, false);
    assert.deepEqual([...flt.vlans], [20]);
    assert.deepEqual(flt.unicast.map((m) => [...m]), [[...other]]);
  } finally {
    s.close();
  }
});

Deno.test("ctrl + sim: a device without CTRL_VLAN or without a control queue gives the named error", () => {
  const a = simPort({ ctrlVlan: false });
  try {
    a.port.configure({ pool: a.pool });
    a.port.start();
    assert.throws(
      () => a.port.addVlan(7),
      /^Error: port 0: the device does not offer VIRTIO_NET_F_CTRL_VLAN, so VLAN filters cannot be set; run without --vlan-filter$/,
    );
    a.port.setPromiscuous(true); // the rest of the control path still works
    assert.equal(a.t.device.filter.promisc, true);
  } finally {
    a.close();
  }
  const b = simPort({ ctrlVq: false });
  try {
    b.port.configure({ pool: b.pool });
    b.port.start();
    assert.throws(
      () => b.port.setPromiscuous(false),
      /the device does not offer VIRTIO_NET_F_CTRL_VQ, so promiscuous mode cannot be set; run without --no-promisc/,
    );
  } finally {
    b.close();
  }
});
