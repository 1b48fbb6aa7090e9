/**
 * The device side of a virtio-net device over split virtqueues, written from the spec (OASIS
 * virtio 1.2: 2.7 "Split Virtqueues", 5.1 "Network Device") and kept apart from the driver's ring
 * code so that a misreading is not mirrored on both sides.
 *
 * Transmit queues (5.1.6.2): each available chain is a device-readable net header followed by the
 * frame; the frame goes to the wire (dropped while the link is down), the used entry gets length
 * 0. With VIRTIO_F_INDIRECT_DESC a transmit chain may continue in an indirect table (indirect.ts). Receive queues (5.1.6.3/4): a frame is written as header + data into one available chain, or
 * with MRG_RXBUF into as many chains (buffers) as needed, `num_buffers` telling how many; each
 * used entry carries the bytes written. The control queue (5.1.6.5) handles RX mode, MAC
 * table/address, VLAN, announce, multiqueue and RSS commands, each only when its feature was
 * negotiated (else the ack is ERR). Received frames go to the receive queues in turn (one stream
 * each, as automatic steering keeps a flow on a queue, 5.1.6.5.6), or once RSS is configured by
 * their Toeplitz hash (mod/sim/rss.ts): the wire then sends many flows, each on its queue. Every
 * descriptor the driver gives is checked (index, flags, address range): a bad one sets
 * DEVICE_NEEDS_RESET and the device stops; memory outside the driver's regions is never touched.
 */
import type { DmaRegion } from "../../ffi/dma.ts";
import { Eth } from "../eth.ts";
import type { QueueMemory } from "../virtio/transport.ts";
import {
  Ctrl,
  Desc,
  Feature,
  has,
  NetFeature,
  NetHdr,
  netHdrSize,
  NetQueue,
} from "../virtio/constants.ts";
import { DeviceIndirectTable } from "./indirect.ts";
import { DevicePackedQueue } from "./packed_queue.ts";
import { DeviceQueue } from "./queue.ts";
import { parseRssConfig, rssQueue, type RssState } from "./rss.ts";
import { setTestFrameFlow, writeTestFrame } from "../testframe.ts";
import { type SimWire, WIRE_MAX_FRAME } from "./wire.ts";

/** Receive filter state as the control queue set it (5.1.6.5.1 - 5.1.6.5.3). */
export interface RxFilter {
  /** Promiscuous: every frame passes (the reset state, as on QEMU). */
  promisc: boolean;
  allmulti: boolean;
  unicast: Uint8Array[];
  multicast: Uint8Array[];
  /** VLAN ids added; with CTRL_VLAN negotiated, tagged frames of other VLANs are dropped. */
  vlans: Set<number>;
}

export interface DeviceErrors {
  /** Descriptors with a bad index, flags, length or address: the device needed a reset. */
  badDescriptors: number;
  /** Transmit chains shorter than the net header, or frames longer than 64 KiB: dropped. */
  txMalformed: number;
  /**
   * Transmitted frames whose header sets flags, gso_type or num_buffers, none of which a driver
   * may set without offloads (5.1.6.2.1): counted, the frame still sent.
   */
  txHeaders: number;
  /** Control commands answered with ERR. */
  ctrlErrors: number;
}

/**
 * Misbehaviour on purpose (for the driver's robustness tests): every `EVIL_EVERY`th received
 * frame gets a used entry with an id out of range (`bad-id`), a length beyond the buffer posted
 * (`bad-len`), a num_buffers larger than the ring (`bad-num-buffers`), or the used index is
 * published more than a ring ahead for one poll (`idx-jump`, split rings only). Good frames keep
 * flowing in between. On packed rings only (2.8): a received frame's last used descriptor with
 * length 0 (`packed-bad-len`), its first with the wrong wrap counter in its flags (`packed-wrap`),
 * and every `EVIL_EVERY`th transmitted buffer's used descriptor names an id out of range
 * (`packed-bad-id`) or the buffer used just before it again (`packed-used-twice`).
 */
export type EvilMode =
  | "bad-id"
  | "bad-len"
  | "bad-num-buffers"
  | "idx-jump"
  | "packed-bad-id"
  | "packed-bad-len"
  | "packed-wrap"
  | "packed-used-twice";
export const EVIL_MODES: readonly EvilMode[] = [
  "bad-id",
  "bad-len",
  "bad-num-buffers",
  "idx-jump",
  "packed-bad-id",
  "packed-bad-len",
  "packed-wrap",
  "packed-used-twice",
];
/** Evil modes that only a packed ring has, and those only a split ring has. */
export const PACKED_ONLY_EVIL: readonly EvilMode[] = [
  "packed-bad-id",
  "packed-bad-len",
  "packed-wrap",
  "packed-used-twice",
];
export const SPLIT_ONLY_EVIL: readonly EvilMode[] = ["idx-jump"];
/** Evil modes that bend transmit completions; the others bend received frames. */
export const TX_EVIL: readonly EvilMode[] = ["packed-bad-id", "packed-used-twice"];
export const EVIL_EVERY = 7;

/**
 * Header bytes a driver sets to zero when no offload was negotiated, as a mask of byte offsets:
 * flags, gso_type (5.1.6.2.1: GSO_NONE) and num_buffers (5.1.6.2.1: zero).
 */
const DRIVER_ZERO = (1 << NetHdr.FLAGS) | (1 << NetHdr.GSO_TYPE) | (3 << NetHdr.NUM_BUFFERS);

/** The device side of either ring kind (split: queue.ts, packed: packed_queue.ts). */
type AnyQueue = DeviceQueue | DevicePackedQueue;

/** Most frames delivered to one receive queue per poll. */
const RX_BATCH = 512;

export interface SimDeviceOptions {
  mac: Uint8Array;
  /** Queue pairs the device has (max_virtqueue_pairs). */
  queuePairs: number;
  /** The device wants kicks and works on a queue only after one (else it polls). */
  notify: boolean;
  linkUp: boolean;
  evil: EvilMode | null;
}

export class SimDevice {
  readonly wire: SimWire;
  /** The device's MAC address (config space; MAC_ADDR_SET changes it). */
  readonly mac: Uint8Array;
  readonly queuePairs: number;
  readonly notifyMode: boolean;
  readonly filter: RxFilter = {
    promisc: true,
    allmulti: true,
    unicast: [],
    multicast: [],
    vlans: new Set(),
  };
  readonly errors: DeviceErrors = {
    badDescriptors: 0,
    txMalformed: 0,
    txHeaders: 0,
    ctrlErrors: 0,
  };
  /** Set when a descriptor was invalid: the transport reports DEVICE_NEEDS_RESET. */
  needsReset = false;
  /** Link state (5.1.4 status VIRTIO_NET_S_LINK_UP). */
  linkUp: boolean;
  /** VIRTIO_NET_S_ANNOUNCE: set by `announce()`, cleared by the driver's ANNOUNCE_ACK. */
  announcing = false;
  announceAcked = 0;
  /** The configuration changed since the transport last looked (link, announce, needs reset). */
  configChanged = false;
  /** Queue pairs the driver enabled with VQ_PAIRS_SET or RSS_CONFIG (1 until then, 5.1.6.5.5). */
  activePairs = 1;
  /** RSS as the driver configured it (5.1.6.5.7), null while the device does not steer by hash. */
  rss: RssState | null = null;
  /**
   * False while copies of this device in worker threads serve its data queues, each the queues
   * of the thread that polls them (mod/sim/share.ts): `run()` then serves the control queue only.
   */
  serveData = true;
  /** Transmit chains read through an indirect table. */
  indirectTables = 0;
  /** Deliberate misbehaviour (null: a correct device), and how many times it struck. */
  readonly evil: EvilMode | null;
  evilCount = 0;
  #evilTick = 0;
  #txEvilTick = 0;
  /** The evil mode bends transmit completions (else received frames). */
  readonly #txEvilMode: boolean;
  /** idx-jump: the true used.idx is published again on the next poll. */
  #jumpedQueue: DeviceQueue | null = null;

  #features = 0n;
  #hdr: number = NetHdr.SIZE;
  #mrg = false;
  #eventIdx = false;
  #inOrder = false;
  #packed = false;
  #indirect = false;
  /** The indirect table a transmit chain continues in (reused). */
  readonly #table = new DeviceIndirectTable();
  #vlanFiltering = false;
  readonly #rx: (AnyQueue | null)[];
  readonly #tx: (AnyQueue | null)[];
  #ctrl: AnyQueue | null = null;
  #rxTurn = 0;
  /** Driver memory: regions and their iova ranges (like a vhost-user memory table). */
  readonly #regions: DmaRegion[] = [];
  readonly #scratch = new Uint8Array(WIRE_MAX_FRAME + 64);
  /** Translation result of `#map`: region bytes and offset. */
  #mapU8: Uint8Array = new Uint8Array(0);
  #mapOff = 0;
  /** Mergeable RX: heads and sizes of the chains one frame uses (preallocated). */
  #heads = new Uint16Array(0);
  #rooms = new Uint32Array(0);

  constructor(wire: SimWire, opts: SimDeviceOptions) {
    this.wire = wire;
    this.mac = Uint8Array.from(opts.mac);
    this.wire.dst.set(this.mac);
    this.queuePairs = opts.queuePairs;
    this.notifyMode = opts.notify;
    this.linkUp = opts.linkUp;
    this.evil = opts.evil;
    this.#txEvilMode = opts.evil !== null && TX_EVIL.includes(opts.evil);
    this.#rx = new Array(opts.queuePairs).fill(null);
    this.#tx = new Array(opts.queuePairs).fill(null);
  }

  /** Change the link (5.1.4 status); the transport's next poll reports CONFIG_CHANGED. */
  setLink(up: boolean): void {
    if (up === this.linkUp) return;
    this.linkUp = up;
    this.configChanged = true;
  }

  /** Ask the driver to announce itself (VIRTIO_NET_S_ANNOUNCE, 5.1.6.5.4). */
  announce(): void {
    this.announcing = true;
    this.configChanged = true;
  }

  /** Kicks, kicks the device had not asked for, and interrupts it would have sent (all queues). */
  get kicks(): number {
    return this.#sumQueues((q) => q.kicks);
  }
  get unaskedKicks(): number {
    return this.#sumQueues((q) => q.unaskedKicks);
  }
  get interrupts(): number {
    return this.#sumQueues((q) => q.interrupts);
  }
  get batchedEntries(): number {
    return this.#sumQueues((q) => q.batchedEntries);
  }

  #sumQueues(f: (q: AnyQueue) => number): number {
    let n = 0;
    for (const q of [...this.#rx, ...this.#tx, this.#ctrl]) if (q !== null) n += f(q);
    return n;
  }

  addMemory(region: DmaRegion): void {
    if (region.pagePhys !== null) {
      throw new Error(
        `${region.name}: a simulated device reaches memfd or anonymous memory, not physical memory`,
      );
    }
    if (!this.#regions.includes(region)) this.#regions.push(region);
  }

  /** Reset (2.1): forget queues, features and filters; memory stays known (re-added anyway). */
  reset(): void {
    // idx-jump: the true used index comes back before the queues are forgotten, as it would on the
    // next poll. The frames behind it were delivered (the wire counted them); a driver that stops
    // the port reads them there and counts them as dropped.
    const jumped = this.#jumpedQueue;
    if (jumped !== null && !jumped.region.closed) jumped.publish();
    this.#jumpedQueue = null;
    this.#rx.fill(null);
    this.#tx.fill(null);
    this.#ctrl = null;
    this.needsReset = false;
    this.configChanged = false;
    this.activePairs = 1;
    this.setRss(null);
    this.negotiated(0n);
    this.filter.promisc = true;
    this.filter.allmulti = true;
    this.filter.unicast = [];
    this.filter.multicast = [];
    this.filter.vlans.clear();
  }

  /** The features the driver accepted (FEATURES_OK): header size (5.1.6.1), MRG_RXBUF, ... */
  negotiated(features: bigint): void {
    this.#features = features;
    this.#hdr = netHdrSize(features);
    this.#mrg = has(features, NetFeature.MRG_RXBUF);
    this.#eventIdx = has(features, Feature.EVENT_IDX);
    this.#inOrder = has(features, Feature.IN_ORDER);
    this.#packed = has(features, Feature.RING_PACKED);
    this.#indirect = has(features, Feature.INDIRECT_DESC);
    this.#vlanFiltering = has(features, NetFeature.CTRL_VLAN);
  }

  /** The features the driver accepted. */
  get features(): bigint {
    return this.#features;
  }

  /** Queue pairs that exist under the negotiated features (5.1.2: more only with MQ or RSS). */
  get #pairs(): number {
    const f = this.#features;
    return has(f, NetFeature.MQ) || has(f, NetFeature.RSS) ? this.queuePairs : 1;
  }

  /** Queue index of the control queue under the negotiated features (5.1.2). */
  get ctrlIndex(): number {
    return NetQueue.ctrl(this.#pairs);
  }

  /** Whether queue `index` exists under the negotiated features. */
  hasQueue(index: number): boolean {
    const pairs = this.#pairs;
    if (index < 2 * pairs) return true;
    return has(this.#features, NetFeature.CTRL_VQ) && index === this.ctrlIndex;
  }

  setupQueue(q: QueueMemory): void {
    if (!this.hasQueue(q.index)) throw new Error(`queue ${q.index} does not exist`);
    const dq = this.#packed
      ? new DevicePackedQueue(q, this.#eventIdx, this.notifyMode)
      : new DeviceQueue(q, this.#eventIdx, this.notifyMode, this.#inOrder);
    if (q.index === this.ctrlIndex && has(this.#features, NetFeature.CTRL_VQ)) this.#ctrl = dq;
    else if (q.index % 2 === 0) this.#rx[q.index >> 1] = dq;
    else this.#tx[q.index >> 1] = dq;
    if (q.size > this.#heads.length) {
      this.#heads = new Uint16Array(q.size);
      this.#rooms = new Uint32Array(q.size);
    }
  }

  /** The driver notified queue `index` (2.7.13.3). */
  kick(index: number): void {
    if (index === this.ctrlIndex && this.#ctrl !== null) return this.#ctrl.kick();
    const q = index % 2 === 0 ? this.#rx[index >> 1] : this.#tx[index >> 1];
    q?.kick();
  }

  /** Queue `index` goes to sleep unaware of the driver's last publish (DeviceQueue.sleepUnaware). */
  sleepUnaware(index: number): void {
    const q = index % 2 === 0 ? this.#rx[index >> 1] : this.#tx[index >> 1];
    if (q === null || q === undefined) throw new Error(`queue ${index} is not set up`);
    q.sleepUnaware();
  }

  /** Translate [iova, iova+len) into `#mapU8`/`#mapOff`; false when outside every region. */
  #map(iova: number, len: number): boolean {
    const rs = this.#regions;
    for (let i = 0; i < rs.length; i++) {
      const r = rs[i];
      const off = iova - r.iovaBase;
      if (off >= 0 && off + len <= r.size) {
        this.#mapU8 = r.u8;
        this.#mapOff = off;
        return true;
      }
    }
    return false;
  }

  #bad(): void {
    this.errors.badDescriptors++;
    if (!this.needsReset) {
      // 2.1.2: DEVICE_NEEDS_RESET comes with a configuration change notification.
      this.needsReset = true;
      this.configChanged = true;
    }
  }

  /** Run the device once: transmit, control, receive. */
  run(): void {
    if (this.needsReset) return;
    if (!this.serveData) {
      if (this.#ctrl !== null && this.#ctrl.awake()) this.#control(this.#ctrl);
      return;
    }
    if (this.#jumpedQueue !== null) {
      // idx-jump: the wrong index stood for one poll; the true one comes back.
      this.#jumpedQueue.publish();
      this.#jumpedQueue = null;
    }
    for (let p = 0; p < this.queuePairs; p++) {
      const q = this.#tx[p];
      if (q !== null && q.awake()) this.#transmit(q);
      if (this.needsReset) return;
    }
    if (this.#ctrl !== null && this.#ctrl.awake()) this.#control(this.#ctrl);
    const wire = this.wire;
    if (!this.linkUp) wire.pause();
    if (this.needsReset || !this.linkUp) return;
    wire.beginPoll();
    const active = this.activePairs;
    const first = this.#rxTurn++ % active;
    for (let k = 0; k < active && !this.needsReset; k++) {
      const p = (first + k) % active;
      const q = this.#rx[p];
      if (q !== null && q.awake()) this.#receive(q, p);
    }
    wire.endPoll();
  }

  // 2.7.13 / 5.1.6.2: consume transmit chains.
  #transmit(q: AnyQueue): void {
    let n = q.pending();
    if (n === 0) return;
    const scratch = this.#scratch;
    const max = WIRE_MAX_FRAME;
    // In order, one used entry for the whole batch: the last chain's head (2.7.9).
    let batch = 0;
    let lastHead = 0;
    while (n-- > 0) {
      const head = q.take();
      if (head >= q.size) return this.#bad();
      let d = head;
      /** Where the chain's descriptors are read: the ring, then perhaps an indirect table. */
      let src: AnyQueue | DeviceIndirectTable = q;
      let skip = this.#hdr;
      let len = 0;
      /** Offset of the frame when it lies whole in one descriptor (checked in place), else -1. */
      let single = -1;
      let singleU8: Uint8Array = scratch;
      let tooLong = false;
      let headerSet = 0;
      for (let hops = 0;; hops++) {
        let flags = src.descFlags(d);
        if ((flags & Desc.F_INDIRECT) !== 0) {
          // The chain goes on in an indirect table; one inside a table is a nested one.
          if (src !== q || !this.#openIndirect(q, d, hops, flags)) return this.#bad();
          src = this.#table;
          d = 0;
          hops = 0;
          flags = src.descFlags(0);
        }
        const dl = src.descLen(d);
        if (hops >= src.size || (flags & (Desc.F_WRITE | Desc.F_INDIRECT)) !== 0) {
          return this.#bad();
        }
        if (!this.#map(src.descAddr(d), dl)) return this.#bad();
        const s = Math.min(skip, dl);
        for (let i = 0, at = this.#hdr - skip; i < s; i++, at++) {
          if (((DRIVER_ZERO >> at) & 1) !== 0) headerSet |= this.#mapU8[this.#mapOff + i];
        }
        skip -= s;
        const part = dl - s;
        if (part > 0 && !tooLong) {
          if (len + part > max) {
            tooLong = true;
          } else if (len === 0) {
            single = this.#mapOff + s;
            singleU8 = this.#mapU8;
          } else {
            if (single >= 0) {
              // The frame continues in a further descriptor: gather it into the scratch buffer.
              scratch.set(singleU8.subarray(single, single + len), 0);
              single = -1;
            }
            scratch.set(this.#mapU8.subarray(this.#mapOff + s, this.#mapOff + dl), len);
          }
          len += part;
        }
        if ((flags & Desc.F_NEXT) === 0) break;
        d = src.descNext(d);
        if (d >= src.size) return this.#bad();
      }
      const evil = q instanceof DevicePackedQueue && this.#txEvil(q, batch > 0);
      if (evil && batch > 0) {
        // The bent entry stands alone: the batch before it is written first (2.8.9).
        q.putUsed(lastHead, 0, batch);
        batch = 0;
      }
      if (this.#inOrder && !evil) {
        batch++;
        lastHead = head;
      } else {
        if (evil && this.evil === "packed-used-twice") {
          (q as DevicePackedQueue).nextUsedId = (q as DevicePackedQueue).lastUsedId;
        }
        q.putUsed(evil && this.evil === "packed-bad-id" ? head + q.size : head, 0);
      }
      if (headerSet !== 0) this.errors.txHeaders++;
      if (skip > 0 || tooLong) this.errors.txMalformed++;
      else if (!this.linkUp) this.wire.droppedLinkDown();
      else if (single >= 0) this.wire.transmitted(singleU8, single, len);
      else this.wire.transmitted(scratch, 0, len);
    }
    if (batch > 0) q.putUsed(lastHead, 0, batch);
    q.publish();
  }

  /**
   * Open the indirect table that descriptor `d` of `q` (met after `hops` descriptors of its
   * chain, with `flags`) refers to, as `#table`; false when the descriptor or the table breaks a
   * rule (indirect.ts).
   */
  #openIndirect(q: AnyQueue, d: number, hops: number, flags: number): boolean {
    if (!this.#indirect) return false;
    const packed = q instanceof DevicePackedQueue;
    if ((flags & Desc.F_NEXT) !== 0 || (packed && hops !== 0)) return false;
    const len = q.descLen(d);
    if (!this.#map(q.descAddr(d), len)) return false;
    if (!this.#table.open(this.#mapU8, this.#mapOff, len, q.size, packed)) return false;
    this.indirectTables++;
    return true;
  }

  /** Receive filter (5.1.6.5.1 RX mode, 5.1.6.5.2 MAC table, 5.1.6.5.3 VLAN), QEMU's order. */
  #accepts(f: Uint8Array): boolean {
    const flt = this.filter;
    if (flt.promisc || f.length < Eth.HDR) return true;
    if (
      this.#vlanFiltering && f.length >= Eth.HDR + Eth.VLAN_TAG &&
      ((f[Eth.TYPE] << 8) | f[Eth.TYPE + 1]) === Eth.TYPE_VLAN &&
      !flt.vlans.has(((f[14] << 8) | f[15]) & 0xfff)
    ) {
      return false;
    }
    if ((f[0] & 1) !== 0) {
      if (isBroadcast(f)) return true;
      if (flt.allmulti) return true;
      for (const m of flt.multicast) if (sameMac(m, f)) return true;
      return false;
    }
    if (sameMac(this.mac, f)) return true;
    for (const m of flt.unicast) if (sameMac(m, f)) return true;
    return false;
  }

  // 5.1.6.3 / 5.1.6.4: fill receive buffers from the wire.
  #receive(q: AnyQueue, pair: number): void {
    const wire = this.wire;
    let frames = wire.due(q.pending(), pair);
    if (frames === 0) return;
    if (frames > RX_BATCH) frames = RX_BATCH;
    const hdr = this.#hdr;
    let wrote = false;
    while (frames-- > 0) {
      const inj = wire.nextInjected();
      if (inj !== null && !this.#accepts(inj)) {
        wire.dropNext(pair, "filtered");
        continue;
      }
      const total = hdr + wire.nextLength();
      if (q.pending() === 0) break;
      const head = q.take();
      if (head >= q.size) return this.#bad();
      const room = this.#chainRoom(q, head);
      if (room < 0) return this.#bad();
      let chains = 1;
      this.#heads[0] = head;
      this.#rooms[0] = room;
      if (room < total) {
        if (!this.#mrg) {
          // Without MRG_RXBUF the frame must fit one chain (5.1.6.3.1): drop it, keep the buffer.
          q.untake(1);
          wire.dropNext(pair, "tooBig");
          continue;
        }
        let have = room;
        while (have < total && q.pending() > 0) {
          const h = q.take();
          const r = h < q.size ? this.#chainRoom(q, h) : -1;
          if (r < 0) return this.#bad();
          this.#heads[chains] = h;
          this.#rooms[chains++] = r;
          have += r;
        }
        if (have < total) {
          q.untake(chains);
          if (chains < q.size) break; // wait for more buffers
          wire.dropNext(pair, "tooBig"); // even a full ring cannot hold it
          continue;
        }
      }
      if (!this.#deliver(q, pair, chains, total)) return this.#bad();
      wrote = true;
    }
    if (!wrote) return;
    const jump = q instanceof DeviceQueue && this.#jumpedQueue === q;
    q.publish();
    if (jump) (q as DeviceQueue).publishIndex((q.usedIdx + q.size + 3) & 0xffff);
  }

  /**
   * Write header + next frame over `#heads[0..chains)` and their used entries (one per chain,
   * 5.1.6.4.2). False when a descriptor address is outside the driver's memory.
   */
  #deliver(q: AnyQueue, pair: number, chains: number, total: number): boolean {
    const hdr = this.#hdr;
    const head = this.#heads[0];
    const dl = q.descLen(head);
    let hdrU8: Uint8Array;
    let hdrOff: number;
    if (chains === 1 && dl >= total) {
      // Common case: header and frame in the first descriptor, written in place.
      if (!this.#map(q.descAddr(head), total)) return false;
      hdrU8 = this.#mapU8;
      hdrOff = this.#mapOff;
      hdrU8.fill(0, hdrOff, hdrOff + hdr);
      this.wire.writeNext(pair, hdrU8, hdrOff + hdr);
    } else {
      // Over several descriptors or chains: build in scratch, then scatter.
      const s = this.#scratch;
      s.fill(0, 0, hdr);
      this.wire.writeNext(pair, s, hdr);
      let done = 0;
      for (let i = 0; i < chains; i++) {
        const part = Math.min(this.#rooms[i], total - done);
        if (!this.#scatter(q, this.#heads[i], done, part)) return false;
        done += part;
      }
      if (!this.#map(q.descAddr(head), hdr)) return false;
      hdrU8 = this.#mapU8;
      hdrOff = this.#mapOff;
    }
    // 5.1.6.4: num_buffers (12-byte header only): chains used; 1 without MRG_RXBUF.
    if (hdr === NetHdr.SIZE) {
      hdrU8[hdrOff + NetHdr.NUM_BUFFERS] = chains & 0xff;
      hdrU8[hdrOff + NetHdr.NUM_BUFFERS + 1] = chains >> 8;
    }
    const evil = this.evil !== null && !this.#txEvilMode && ++this.#evilTick % EVIL_EVERY === 0;
    if (evil) this.#misbehave(q, hdrU8, hdrOff);
    if (this.#inOrder && chains > 1 && !evil) {
      // In order, one entry for the frame's buffers: the last one's head and length, the ones
      // before it filled whole (2.7.9).
      let before = 0;
      for (let i = 0; i < chains - 1; i++) before += this.#rooms[i];
      q.putUsed(this.#heads[chains - 1], total - before, chains);
      return true;
    }
    let done = 0;
    for (let i = 0; i < chains; i++) {
      const part = Math.min(this.#rooms[i], total - done);
      let id = this.#heads[i];
      let len = part;
      if (evil && i === 0 && this.evil === "bad-id") id = q.size + id;
      if (evil && i === 0 && this.evil === "bad-len") len = this.#rooms[0] + 64;
      if (evil && i === chains - 1 && this.evil === "packed-bad-len") len = 0;
      if (evil && i === 0 && this.evil === "packed-wrap" && q instanceof DevicePackedQueue) {
        q.wrongWrapNext = true;
      }
      q.putUsed(id, len);
      done += part;
    }
    return true;
  }

  /** Header-level misbehaviour for the frame being delivered (entries are bent by the caller). */
  #misbehave(q: AnyQueue, hdrU8: Uint8Array, hdrOff: number): void {
    this.evilCount++;
    if (this.evil === "bad-num-buffers" && this.#hdr === NetHdr.SIZE) {
      const n = q.size + 1; // more buffers than the driver could ever have posted
      hdrU8[hdrOff + NetHdr.NUM_BUFFERS] = n & 0xff;
      hdrU8[hdrOff + NetHdr.NUM_BUFFERS + 1] = n >> 8;
    } else if (this.evil === "idx-jump" && q instanceof DeviceQueue) {
      this.#jumpedQueue = q;
    }
  }

  /**
   * Transmit-side misbehaviour (packed rings): true when this buffer's used descriptor is bent
   * (written alone by the caller, with an id out of range for packed-bad-id; for
   * packed-used-twice with the id of the buffer used just before it, so there must be one).
   */
  #txEvil(q: DevicePackedQueue, batched: boolean): boolean {
    if (!this.#txEvilMode || ++this.#txEvilTick % EVIL_EVERY !== 0) return false;
    if (this.evil === "packed-used-twice" && q.lastUsedId < 0 && !batched) return false;
    this.evilCount++;
    return true;
  }

  /** Writable bytes in the chain at `head`; -1 when the chain is malformed. */
  #chainRoom(q: AnyQueue, head: number): number {
    let room = 0;
    let d = head;
    for (let hops = 0;; hops++) {
      const flags = q.descFlags(d);
      if (hops >= q.size || (flags & Desc.F_WRITE) === 0 || (flags & Desc.F_INDIRECT) !== 0) {
        return -1;
      }
      const len = q.descLen(d);
      if (!this.#map(q.descAddr(d), len)) return -1;
      room += len;
      if ((flags & Desc.F_NEXT) === 0) return room;
      d = q.descNext(d);
      if (d >= q.size) return -1;
    }
  }

  /** Copy scratch[from..from+n) over the chain at `head` (validated by #chainRoom). */
  #scatter(q: AnyQueue, head: number, from: number, n: number): boolean {
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

  // 5.1.6.5: control commands: readable {class, command, data...}, then writable {ack}.
  #control(q: AnyQueue): void {
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
        if (hops >= q.size || (flags & Desc.F_INDIRECT) !== 0) return this.#bad();
        if (!this.#map(q.descAddr(d), dl)) return this.#bad();
        if ((flags & Desc.F_WRITE) === 0) {
          // 2.7.4.2: readable descriptors come before writable ones.
          if (ackU8 !== null || len + dl > cmd.length) return this.#bad();
          cmd.set(this.#mapU8.subarray(this.#mapOff, this.#mapOff + dl), len);
          len += dl;
        } else if (ackU8 === null && dl >= 1) {
          ackU8 = this.#mapU8;
          ackOff = this.#mapOff;
        }
        if ((flags & Desc.F_NEXT) === 0) break;
        d = q.descNext(d);
        if (d >= q.size) return this.#bad();
      }
      if (ackU8 === null) return this.#bad();
      const ok = len >= 2 && this.#command(cmd[0], cmd[1], cmd.subarray(2, len));
      if (!ok) this.errors.ctrlErrors++;
      ackU8[ackOff] = ok ? Ctrl.OK : Ctrl.ERR;
      q.putUsed(head, 1);
    }
    q.publish();
  }

  /** One control command (5.1.6.5.1 - 5.1.6.5.5); false = VIRTIO_NET_ERR. */
  #command(cls: number, cmd: number, data: Uint8Array): boolean {
    const f = this.filter;
    const feat = this.#features;
    if (cls === Ctrl.RX && has(feat, NetFeature.CTRL_RX)) {
      // PROMISC and ALLMULTI take one byte; the others need CTRL_RX_EXTRA, which is not offered.
      if (data.length !== 1) return false;
      if (cmd === Ctrl.RX_PROMISC) f.promisc = data[0] !== 0;
      else if (cmd === Ctrl.RX_ALLMULTI) f.allmulti = data[0] !== 0;
      else return false;
      return true;
    }
    if (cls === Ctrl.MAC && cmd === Ctrl.MAC_ADDR_SET && has(feat, NetFeature.CTRL_MAC_ADDR)) {
      if (data.length !== Eth.ADDR) return false;
      this.mac.set(data);
      this.wire.dst.set(data);
      return true;
    }
    if (cls === Ctrl.MAC && cmd === Ctrl.MAC_TABLE_SET && has(feat, NetFeature.CTRL_RX)) {
      // Two tables, unicast then multicast: le32 entries, then entries * 6 bytes.
      const tables: Uint8Array[][] = [];
      let off = 0;
      for (let t = 0; t < 2; t++) {
        if (off + 4 > data.length) return false;
        const n = (data[off] | (data[off + 1] << 8) | (data[off + 2] << 16) |
          (data[off + 3] << 24)) >>> 0;
        off += 4;
        if (off + n * Eth.ADDR > data.length) return false;
        const macs: Uint8Array[] = [];
        for (let i = 0; i < n; i++) macs.push(data.slice(off + i * 6, off + i * 6 + 6));
        off += n * Eth.ADDR;
        tables.push(macs);
      }
      if (off !== data.length) return false;
      f.unicast = tables[0];
      f.multicast = tables[1];
      return true;
    }
    if (cls === Ctrl.VLAN && has(feat, NetFeature.CTRL_VLAN)) {
      if (data.length !== 2) return false;
      const vid = data[0] | (data[1] << 8);
      if (vid >= 4096) return false;
      if (cmd === Ctrl.VLAN_ADD) f.vlans.add(vid);
      else if (cmd === Ctrl.VLAN_DEL) f.vlans.delete(vid);
      else return false;
      return true;
    }
    if (
      cls === Ctrl.ANNOUNCE && cmd === Ctrl.ANNOUNCE_ACK && has(feat, NetFeature.GUEST_ANNOUNCE)
    ) {
      if (data.length !== 0) return false;
      this.announcing = false;
      this.announceAcked++;
      return true;
    }
    if (cls === Ctrl.MQ && cmd === Ctrl.MQ_VQ_PAIRS_SET && has(feat, NetFeature.MQ)) {
      if (data.length !== 2) return false;
      const pairs = data[0] | (data[1] << 8);
      if (pairs < Ctrl.MQ_VQ_PAIRS_MIN || pairs > this.queuePairs) return false;
      this.activePairs = pairs;
      this.setRss(null); // the last multiqueue command decides the steering (5.1.6.5.5)
      return true;
    }
    if (cls === Ctrl.MQ && cmd === Ctrl.MQ_RSS_CONFIG && has(feat, NetFeature.RSS)) {
      const rss = parseRssConfig(data, this.queuePairs);
      if (rss === null) return false;
      let pairs = Math.max(rss.maxTxVq, rss.unclassified + 1);
      for (const q of rss.table) pairs = Math.max(pairs, q + 1);
      this.activePairs = pairs;
      this.setRss(rss);
      return true;
    }
    return false;
  }

  /**
   * Steer by `rss` (null: one stream per queue): each of the wire's flows goes to the queue its
   * hash picks, found once here from a frame of that flow. The control queue's RSS_CONFIG sets
   * it; a copy of the device in a worker thread takes its original's.
   */
  setRss(rss: RssState | null): void {
    this.rss = rss;
    if (rss === null) return this.wire.steer(null);
    const flowsOf: number[][] = Array.from({ length: this.queuePairs }, () => []);
    const frame = this.#scratch;
    for (let flow = 0; flow < this.wire.flows; flow++) {
      const len = writeTestFrame(frame, 0, 64, 0, 0, this.mac, this.wire.src);
      setTestFrameFlow(frame, 0, flow);
      flowsOf[rssQueue(rss, frame, 0, len)].push(flow);
    }
    this.wire.steer(flowsOf.map((f) => Uint16Array.from(f)));
  }
}

function sameMac(a: Uint8Array, f: Uint8Array): boolean {
  for (let i = 0; i < 6; i++) if (a[i] !== f[i]) return false;
  return true;
}

function isBroadcast(f: Uint8Array): boolean {
  for (let i = 0; i < 6; i++) if (f[i] !== 0xff) return false;
  return true;
}
