/**
 * The device side of a virtio-net device over split virtqueues, written from the spec (OASIS
 * virtio 1.2: 2.7 "Split Virtqueues", 5.1 "Network Device") and kept apart from the driver's ring
 * code so that a misreading is not mirrored on both sides.
 *
 * Transmit queues (5.1.6.2): each available chain is a device-readable net header followed by the
 * frame; the frame goes to the wire, the used entry gets length 0. Receive queues (5.1.6.3/4):
 * a frame is written as header + data into one available chain, or with MRG_RXBUF into as many
 * chains (buffers) as needed, `num_buffers` telling how many; each used entry carries the bytes
 * written. The control queue (5.1.6.5) acknowledges RX mode, MAC table/address, VLAN and
 * announce commands. Every descriptor the driver gives is checked (index, flags, address range):
 * a bad one sets DEVICE_NEEDS_RESET and the queue stops, memory outside the driver's regions is
 * never touched.
 */
import type { DmaRegion } from "../../ffi/dma.ts";
import type { QueueMemory } from "../transport/transport.ts";
import { Avail, Ctrl, Desc, Eth, NetHdr, Used } from "../virtio/constants.ts";
import { SimWire, WIRE_MAX_FRAME } from "./wire.ts";

/** One virtqueue as the device sees it. */
class DeviceQueue {
  readonly size: number;
  readonly u8: Uint8Array;
  readonly u16: Uint16Array;
  readonly u32: Uint32Array;
  readonly desc: number;
  readonly avail: number;
  readonly used: number;
  /** Next avail ring slot to read (free-running 16-bit). */
  lastAvail = 0;
  /** Next used ring slot to write (free-running 16-bit). */
  usedIdx = 0;

  constructor(q: QueueMemory) {
    this.size = q.size;
    this.u8 = q.region.u8;
    this.u16 = q.region.u16;
    this.u32 = q.region.u32;
    this.desc = q.descOffset;
    this.avail = q.availOffset;
    this.used = q.usedOffset;
    // 2.7.10: we poll; the driver need not kick.
    this.u16[(this.used + Used.FLAGS) >> 1] = Used.F_NO_NOTIFY;
  }

  /** Chains the driver made available and we have not taken. */
  pending(): number {
    return (this.u16[(this.avail + Avail.IDX) >> 1] - this.lastAvail) & 0xffff;
  }

  /** Take the next available head (caller checked pending() > 0). */
  take(): number {
    const slot = this.lastAvail % this.size;
    this.lastAvail = (this.lastAvail + 1) & 0xffff;
    return this.u16[(this.avail + Avail.RING) / 2 + slot];
  }

  putUsed(id: number, len: number): void {
    const e = (this.used + Used.RING + (this.usedIdx % this.size) * Used.ELEM_SIZE) >> 2;
    this.u32[e] = id;
    this.u32[e + 1] = len;
    this.usedIdx = (this.usedIdx + 1) & 0xffff;
  }

  publish(): void {
    this.u16[(this.used + Used.IDX) >> 1] = this.usedIdx;
  }

  descAddr(d: number): number {
    const w = (this.desc + d * Desc.SIZE) >> 2;
    return this.u32[w] + this.u32[w + 1] * 2 ** 32;
  }
  descLen(d: number): number {
    return this.u32[(this.desc + d * Desc.SIZE + Desc.LEN) >> 2];
  }
  descFlags(d: number): number {
    return this.u16[(this.desc + d * Desc.SIZE + Desc.FLAGS) >> 1];
  }
  descNext(d: number): number {
    return this.u16[(this.desc + d * Desc.SIZE + Desc.NEXT) >> 1];
  }
}

/** Receive filter state as the control queue set it (5.1.6.5.1 - 5.1.6.5.3). */
export interface RxFilter {
  promisc: boolean;
  allmulti: boolean;
  unicast: Uint8Array[];
  multicast: Uint8Array[];
  vlans: Set<number>;
}

export interface DeviceErrors {
  /** Descriptors with a bad index, flags, length or address: the device needed a reset. */
  badDescriptors: number;
  /** RX frames that did not fit the buffers available (without MRG_RXBUF: one chain). */
  rxTooBig: number;
  /** Control commands answered with ERR. */
  ctrlErrors: number;
}

/**
 * Misbehaviour on purpose (for the driver's robustness tests): every `EVIL_EVERY`th received
 * frame gets a used entry with an id out of range (`bad-id`), a length beyond the buffer
 * (`bad-len`), a num_buffers larger than the buffers used (`bad-num-buffers`), or the used index
 * is published more than a ring ahead once (`idx-jump`). Good frames keep flowing in between.
 */
export type EvilMode = "bad-id" | "bad-len" | "bad-num-buffers" | "idx-jump";
export const EVIL_MODES: readonly EvilMode[] = ["bad-id", "bad-len", "bad-num-buffers", "idx-jump"];
const EVIL_EVERY = 7;

/** Most frames delivered to one receive queue per poll. */
const RX_BATCH = 1024;

export class SimDevice {
  readonly wire: SimWire;
  readonly mac: Uint8Array;
  readonly filter: RxFilter = {
    promisc: true,
    allmulti: true,
    unicast: [],
    multicast: [],
    vlans: new Set(),
  };
  readonly errors: DeviceErrors = { badDescriptors: 0, rxTooBig: 0, ctrlErrors: 0 };
  /** Set when a descriptor was invalid: the transport reports DEVICE_NEEDS_RESET. */
  needsReset = false;
  /** The driver acknowledged an announce (5.1.6.5.4). */
  announceAcked = 0;
  /** Deliberate misbehaviour (null: a correct device), and how many times it struck. */
  evil: EvilMode | null = null;
  evilCount = 0;
  #evilTick = 0;
  #jump = false;
  #jumped = false;

  #hdr: number = NetHdr.SIZE;
  #mrg = false;
  #rx: DeviceQueue | null = null;
  #tx: DeviceQueue | null = null;
  #ctrl: DeviceQueue | null = null;
  /** Driver memory: regions and their iova ranges (like a vhost-user memory table). */
  #regions: DmaRegion[] = [];
  readonly #scratch = new Uint8Array(WIRE_MAX_FRAME + 64);
  /** Translation result of `#map`: region bytes and offset. */
  #mapU8: Uint8Array = new Uint8Array(0);
  #mapOff = 0;

  constructor(wire: SimWire, mac: Uint8Array) {
    this.wire = wire;
    this.mac = mac;
  }

  addMemory(region: DmaRegion): void {
    if (!this.#regions.includes(region)) this.#regions.push(region);
  }

  /** Reset (2.1): forget queues and filters; memory stays known (the driver re-adds it). */
  reset(): void {
    this.#rx = this.#tx = this.#ctrl = null;
    this.needsReset = false;
    this.filter.promisc = true;
    this.filter.allmulti = true;
    this.filter.unicast = [];
    this.filter.multicast = [];
    this.filter.vlans.clear();
  }

  /** Set the negotiated layout: header size (5.1.6.1) and mergeable RX buffers. */
  negotiated(hdrSize: number, mrg: boolean): void {
    this.#hdr = hdrSize;
    this.#mrg = mrg;
  }

  setupQueue(role: "rx" | "tx" | "ctrl", q: QueueMemory): void {
    const dq = new DeviceQueue(q);
    if (role === "rx") this.#rx = dq;
    else if (role === "tx") this.#tx = dq;
    else this.#ctrl = dq;
  }

  /** Translate [iova, iova+len) into `#mapU8`/`#mapOff`; false when outside every region. */
  #map(iova: number, len: number): boolean {
    const rs = this.#regions;
    for (let i = 0; i < rs.length; i++) {
      const r = rs[i];
      const off = iova - r.iovaBase;
      if (off >= 0 && off + len <= r.size && r.pagePhys === null) {
        this.#mapU8 = r.u8;
        this.#mapOff = off;
        return true;
      }
    }
    return false;
  }

  #bad(): void {
    this.errors.badDescriptors++;
    this.needsReset = true;
  }

  /** Run the device once: transmit, control, receive. */
  run(): void {
    if (this.needsReset) return;
    if (this.#tx !== null) this.#transmit(this.#tx);
    if (this.#ctrl !== null) this.#control(this.#ctrl);
    if (this.#rx !== null) this.#receive(this.#rx);
  }

  // 2.7.13 / 5.1.6.2: consume transmit chains.
  #transmit(q: DeviceQueue): void {
    let n = q.pending();
    if (n === 0) return;
    const scratch = this.#scratch;
    while (n-- > 0) {
      const head = q.take();
      if (head >= q.size) return this.#bad();
      let d = head;
      let skip = this.#hdr;
      let len = 0;
      let single = -1;
      let singleU8: Uint8Array = scratch;
      for (let hops = 0;; hops++) {
        const flags = q.descFlags(d);
        const dl = q.descLen(d);
        if (hops >= q.size || (flags & (Desc.F_WRITE | Desc.F_INDIRECT)) !== 0) return this.#bad();
        if (!this.#map(q.descAddr(d), dl)) return this.#bad();
        const s = Math.min(skip, dl);
        skip -= s;
        const part = dl - s;
        if (part > 0) {
          if (len + part > WIRE_MAX_FRAME) return this.#bad();
          if (len === 0 && single === -1) {
            // Maybe the whole frame is in this one descriptor: check it in place.
            single = this.#mapOff + s;
            singleU8 = this.#mapU8;
          } else {
            if (single >= 0) {
              scratch.set(singleU8.subarray(single, single + len), 0);
              single = -2;
            }
            scratch.set(this.#mapU8.subarray(this.#mapOff + s, this.#mapOff + dl), len);
          }
          len += part;
        }
        if ((flags & Desc.F_NEXT) === 0) break;
        d = q.descNext(d);
        if (d >= q.size) return this.#bad();
      }
      if (single >= 0) this.wire.transmitted(singleU8, single, len);
      else this.wire.transmitted(scratch, 0, len);
      q.putUsed(head, 0);
    }
    q.publish();
  }

  /** Receive filter (5.1.6.5.1 RX mode, 5.1.6.5.2 MAC table, 5.1.6.5.3 VLAN). */
  #accepts(f: Uint8Array): boolean {
    const flt = this.filter;
    if (flt.vlans.size > 0 && f.length >= Eth.HDR + Eth.VLAN_TAG) {
      if (
        ((f[12] << 8) | f[13]) === Eth.TYPE_VLAN && !flt.vlans.has(((f[14] << 8) | f[15]) & 0xfff)
      ) {
        return false;
      }
    }
    if (flt.promisc) return true;
    const multicast = (f[0] & 1) !== 0;
    if (multicast) {
      if (f.subarray(0, 6).every((b) => b === 0xff)) return true;
      return flt.allmulti || flt.multicast.some((m) => sameMac(m, f));
    }
    return sameMac(this.mac, f) || flt.unicast.some((m) => sameMac(m, f));
  }

  // 5.1.6.3 / 5.1.6.4: fill receive buffers from the wire.
  #receive(q: DeviceQueue): void {
    const wire = this.wire;
    if (this.#jumped) {
      // The wrong index stood for one poll; the true one comes back.
      this.#jumped = false;
      q.publish();
    }
    let avail = q.pending();
    let frames = wire.due(avail);
    if (frames === 0 || avail === 0) return;
    const hdr = this.#hdr;
    let delivered = 0;
    while (frames-- > 0 && avail > 0 && delivered < RX_BATCH) {
      const inj = wire.nextInjected();
      if (inj !== null && !this.#filterPasses(inj)) {
        wire.dropNext();
        continue;
      }
      const len = wire.nextLength();
      const total = hdr + len;
      // Find the buffers: one chain, or with MRG_RXBUF as many chains as needed.
      const head = q.take();
      avail--;
      if (head >= q.size) return this.#bad();
      const room = this.#chainRoom(q, head);
      if (room < 0) return this.#bad();
      if (room >= total || !this.#mrg) {
        if (room < total) {
          // Without MRG_RXBUF the frame must fit one chain (5.1.6.3.1): drop it, keep the buffer.
          this.errors.rxTooBig++;
          wire.dropNext();
          q.lastAvail = (q.lastAvail - 1) & 0xffff;
          avail++;
          continue;
        }
        const w = this.#writeFrame(q, head, hdr);
        if (w < 0) return this.#bad();
        if (this.evil !== null && ++this.#evilTick % EVIL_EVERY === 0) {
          this.#misbehave(q, head, w, room);
        } else q.putUsed(head, w);
      } else {
        const r = this.#receiveMerged(q, head, room, total, avail);
        if (r < 0) return;
        if (r === 0) break;
        avail = q.pending();
      }
      delivered++;
    }
    q.publish();
    if (this.#jump) {
      this.#jump = false;
      this.#jumped = true;
      q.u16[(q.used + Used.IDX) >> 1] = (q.usedIdx + q.size + 3) & 0xffff;
    }
  }

  /** Write a wrong used entry (or publish a wrong index) for the frame just written at `head`. */
  #misbehave(q: DeviceQueue, head: number, written: number, room: number): void {
    this.evilCount++;
    switch (this.evil) {
      case "bad-id":
        q.putUsed(q.size + head, written);
        break;
      case "bad-len":
        q.putUsed(head, room + 64);
        break;
      case "bad-num-buffers":
        // The header is at the start of the buffer (written in place by #writeFrame).
        // More buffers than the driver ever posted (the ring size plus one).
        if (this.#hdr === NetHdr.SIZE && this.#map(q.descAddr(head), NetHdr.SIZE)) {
          const n = q.size + 1;
          this.#mapU8[this.#mapOff + NetHdr.NUM_BUFFERS] = n & 0xff;
          this.#mapU8[this.#mapOff + NetHdr.NUM_BUFFERS + 1] = n >> 8;
        }
        q.putUsed(head, written);
        break;
      case "idx-jump":
        // Published at the end of this poll instead of the true index.
        q.putUsed(head, written);
        this.#jump = true;
        break;
    }
  }

  #filterPasses(f: Uint8Array): boolean {
    return f.length < Eth.HDR || this.#accepts(f);
  }

  /** Writable bytes in the chain at `head`; -1 when the chain is malformed. */
  #chainRoom(q: DeviceQueue, head: number): number {
    let room = 0;
    let d = head;
    for (let hops = 0;; hops++) {
      const flags = q.descFlags(d);
      if (hops >= q.size || (flags & Desc.F_WRITE) === 0 || (flags & Desc.F_INDIRECT) !== 0) {
        return -1;
      }
      room += q.descLen(d);
      if ((flags & Desc.F_NEXT) === 0) return room;
      d = q.descNext(d);
      if (d >= q.size) return -1;
    }
  }

  /** Header (num_buffers 1) + the next frame into one chain; returns bytes written or -1. */
  #writeFrame(q: DeviceQueue, head: number, hdr: number): number {
    const dl = q.descLen(head);
    const len = this.wire.nextLength();
    if ((q.descFlags(head) & Desc.F_NEXT) === 0 || dl >= hdr + len) {
      // Common case: header and frame in the first descriptor, written in place.
      if (!this.#map(q.descAddr(head), hdr + len)) return -1;
      const u8 = this.#mapU8;
      const off = this.#mapOff;
      u8.fill(0, off, off + hdr);
      if (hdr === NetHdr.SIZE) u8[off + NetHdr.NUM_BUFFERS] = 1;
      this.wire.writeNext(u8, off + hdr);
      return hdr + len;
    }
    // Spread over the chain: build in scratch, then scatter.
    const s = this.#scratch;
    s.fill(0, 0, hdr);
    if (hdr === NetHdr.SIZE) s[NetHdr.NUM_BUFFERS] = 1;
    this.wire.writeNext(s, hdr);
    return this.#scatter(q, head, hdr + len) ? hdr + len : -1;
  }

  /** Copy scratch[0..total) over the chain at `head`. */
  #scatter(q: DeviceQueue, head: number, total: number): boolean {
    let done = 0;
    let d = head;
    while (done < total) {
      const part = Math.min(q.descLen(d), total - done);
      if (!this.#map(q.descAddr(d), part)) return false;
      this.#mapU8.set(this.#scratch.subarray(done, done + part), this.#mapOff);
      done += part;
      if (done < total) {
        if ((q.descFlags(d) & Desc.F_NEXT) === 0) return false;
        d = q.descNext(d);
      }
    }
    return true;
  }

  /**
   * MRG_RXBUF (5.1.6.4): the frame over several buffers. Returns 1 when delivered, 0 when too few
   * buffers are available yet (nothing consumed), -1 when the queue went bad.
   */
  #receiveMerged(q: DeviceQueue, head: number, room: number, total: number, avail: number): number {
    // Enough buffers? Each further buffer is one more chain.
    const heads: number[] = [head];
    const rooms: number[] = [room];
    let have = room;
    const save = q.lastAvail;
    while (have < total && avail > 0) {
      const h = q.take();
      avail--;
      const r = h < q.size ? this.#chainRoom(q, h) : -1;
      if (r < 0) {
        this.#bad();
        return -1;
      }
      heads.push(h);
      rooms.push(r);
      have += r;
    }
    if (have < total) {
      // Not enough buffers now: give them back (not consumed) and wait for more.
      q.lastAvail = (save - 1) & 0xffff;
      return 0;
    }
    const s = this.#scratch;
    const hdr = this.#hdr;
    s.fill(0, 0, hdr);
    s[NetHdr.NUM_BUFFERS] = heads.length & 0xff;
    s[NetHdr.NUM_BUFFERS + 1] = heads.length >> 8;
    this.wire.writeNext(s, hdr);
    let done = 0;
    for (let i = 0; i < heads.length; i++) {
      const part = Math.min(rooms[i], total - done);
      if (!this.#scatterFrom(q, heads[i], done, part)) {
        this.#bad();
        return -1;
      }
      q.putUsed(heads[i], part);
      done += part;
    }
    return 1;
  }

  #scatterFrom(q: DeviceQueue, head: number, from: number, n: number): boolean {
    let d = head;
    let done = 0;
    while (done < n) {
      const part = Math.min(q.descLen(d), n - done);
      if (!this.#map(q.descAddr(d), part)) return false;
      this.#mapU8.set(this.#scratch.subarray(from + done, from + done + part), this.#mapOff);
      done += part;
      if (done < n) {
        if ((q.descFlags(d) & Desc.F_NEXT) === 0) return false;
        d = q.descNext(d);
      }
    }
    return true;
  }

  // 5.1.6.5: control commands: readable {class, command, data...}, writable {ack}.
  #control(q: DeviceQueue): void {
    let n = q.pending();
    if (n === 0) return;
    const cmd = this.#scratch;
    while (n-- > 0) {
      const head = q.take();
      if (head >= q.size) return this.#bad();
      let len = 0;
      let ackU8: Uint8Array | null = null;
      let ackOff = 0;
      let d = head;
      for (let hops = 0;; hops++) {
        const flags = q.descFlags(d);
        const dl = q.descLen(d);
        if (hops >= q.size || !this.#map(q.descAddr(d), dl) || len + dl > 4096) return this.#bad();
        if ((flags & Desc.F_WRITE) === 0) {
          cmd.set(this.#mapU8.subarray(this.#mapOff, this.#mapOff + dl), len);
          len += dl;
        } else if (dl >= 1) {
          ackU8 = this.#mapU8;
          ackOff = this.#mapOff;
        }
        if ((flags & Desc.F_NEXT) === 0) break;
        d = q.descNext(d);
        if (d >= q.size) return this.#bad();
      }
      if (ackU8 === null || len < 2) return this.#bad();
      const ok = this.#command(cmd[0], cmd[1], cmd.subarray(2, len));
      if (!ok) this.errors.ctrlErrors++;
      ackU8[ackOff] = ok ? Ctrl.OK : Ctrl.ERR;
      q.putUsed(head, 1);
    }
    q.publish();
  }

  #command(cls: number, cmd: number, data: Uint8Array): boolean {
    const f = this.filter;
    if (cls === Ctrl.RX) {
      if (data.length !== 1) return false;
      if (cmd === Ctrl.RX_PROMISC) f.promisc = data[0] !== 0;
      else if (cmd === Ctrl.RX_ALLMULTI) f.allmulti = data[0] !== 0;
      else return false;
      return true;
    }
    if (cls === Ctrl.MAC) {
      if (cmd === Ctrl.MAC_ADDR_SET) {
        if (data.length !== 6) return false;
        this.mac.set(data);
        this.wire.dst.set(data);
        return true;
      }
      if (cmd !== Ctrl.MAC_TABLE_SET) return false;
      // Two tables: le32 entries + entries * 6 bytes (unicast, then multicast).
      const tables: Uint8Array[][] = [];
      let off = 0;
      for (let t = 0; t < 2; t++) {
        if (off + 4 > data.length) return false;
        const n = data[off] | (data[off + 1] << 8) | (data[off + 2] << 16) | (data[off + 3] << 24);
        off += 4;
        if (n < 0 || off + n * 6 > data.length) return false;
        const macs: Uint8Array[] = [];
        for (let i = 0; i < n; i++) macs.push(data.slice(off + i * 6, off + i * 6 + 6));
        off += n * 6;
        tables.push(macs);
      }
      if (off !== data.length) return false;
      f.unicast = tables[0];
      f.multicast = tables[1];
      return true;
    }
    if (cls === Ctrl.VLAN) {
      if (data.length !== 2) return false;
      const vid = (data[0] | (data[1] << 8)) & 0xfff;
      if (cmd === Ctrl.VLAN_ADD) f.vlans.add(vid);
      else if (cmd === Ctrl.VLAN_DEL) f.vlans.delete(vid);
      else return false;
      return true;
    }
    if (cls === Ctrl.ANNOUNCE && cmd === Ctrl.ANNOUNCE_ACK) {
      this.announceAcked++;
      return true;
    }
    return false;
  }
}

function sameMac(a: Uint8Array, f: Uint8Array): boolean {
  for (let i = 0; i < 6; i++) if (a[i] !== f[i]) return false;
  return true;
}
