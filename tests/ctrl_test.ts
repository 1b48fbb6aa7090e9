/**
 * Control queue (virtio 1.2, 5.1.6.5): the command chain as the device sees it, the ack check
 * and the timeout (against a device played by hand from `transport.poll()`), then the Port's
 * control commands against the simulated device, whose receive filter must reflect them.
 */
import assert from "assert";
import { DmaRegion } from "../ffi/dma.ts";
import type { DmaKind } from "../ffi/dma.ts";
import type { QueueMemory, VirtioTransport } from "../mod/transport/transport.ts";
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
