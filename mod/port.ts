/**
 * A virtio-net port ("ethdev"): feature negotiation and the device initialization sequence
 * (virtio 1.2, 3.1.1 "Driver Requirements: Device Initialization"), its RX/TX queue pairs and
 * control queue, link status (5.1.4 `status`), receive filters through the control queue
 * (5.1.6.5), and software VLAN strip/insert.
 *
 * The port talks only to the `VirtioTransport` interface; what differs between transports is
 * data (`ringLayout`, `dmaKinds`, `queueSizeFixed`).
 */
import { type DmaKind, DmaRegion, pageSizeOf } from "../ffi/dma.ts";
import { sendAnnounce } from "./announce.ts";
import { widenCounters } from "./counters.ts";
import type { MbufPool } from "./mbuf.ts";
import { Eth } from "./eth.ts";
import {
  type QueueMemory,
  type RingLayout,
  type SimulatedWire,
  TransportEvent,
  type VirtioTransport,
} from "./virtio/transport.ts";
import {
  bit,
  Ctrl,
  Feature,
  has,
  HashType,
  NetConfig,
  NetFeature,
  netHdrSize,
  NetQueue,
  RssConfig,
  Status,
} from "./virtio/constants.ts";
import { CTRL_BUFFER_BYTES, CtrlQueue } from "./virtio/ctrl_queue.ts";
import { DEFAULT_RSS_KEY, rssConfigData, type RssSettings } from "./virtio/rss.ts";
import { INDIRECT_TABLE_BYTES, IndirectTables } from "./virtio/indirect.ts";
import { PackedCtrlQueue } from "./virtio/packed_ctrl_queue.ts";
import { PACKED_START_ALIGN, packedParts, PackedRing } from "./virtio/packed_ring.ts";
import { PackedRxQueue } from "./virtio/packed_rx_queue.ts";
import { PackedTxQueue } from "./virtio/packed_tx_queue.ts";
import { RxQueue } from "./virtio/rx_queue.ts";
import { isValidQueueSize, ringParts, ringStartAlign, SplitRing } from "./virtio/split_ring.ts";
import type { PortStats } from "./virtio/stats.ts";
import { TxQueue } from "./virtio/tx_queue.ts";

/** Zero bytes in the ring region that TX chains use as a header (at least the 12-byte header). */
const ZERO_HEADER_BYTES = 64;

/** How `Port.configure` sets a port up. */
export interface PortConfig {
  /** RX buffers; transport.dmaKinds must include pool.region.kind. */
  pool: MbufPool;
  /** Queue pairs, default 1 (>1 needs VIRTIO_NET_F_MQ and the control queue). */
  queues?: number;
  /** RX ring size, default 256 (0 = device maximum). */
  rxd?: number;
  /** TX ring size, default 256 (0 = device maximum). */
  txd?: number;
  /**
   * Negotiate MRG_RXBUF when offered: true, false, or by default only when a frame of `mtu` does
   * not fit one buffer (pool.dataRoom).
   */
  mrgRxbuf?: boolean;
  /** Negotiate EVENT_IDX when offered (default false). */
  eventIdx?: boolean;
  /** Use the control queue when offered (default true). */
  ctrlVq?: boolean;
  /** Default 1500 (frames up to mtu + 18); larger needs the device's MTU and big enough buffers. */
  mtu?: number;
  /**
   * Negotiate CTRL_VLAN (default true). With it a device that filters (QEMU) drops tagged frames
   * of every VLAN not added with addVlan() unless promiscuous; false lets every VLAN through.
   */
  vlanFilter?: boolean;
  /** Software VLAN strip on RX (TCI -> pool.vlanTci, MbufFlag.VLAN_STRIPPED). */
  vlanStrip?: boolean;
  /** Software insert of this TCI on every TX frame (an mbuf's VLAN_INSERT flag uses its own). */
  vlanInsert?: number;
  /**
   * Receive-side scaling (5.1.6.5.7; needs VIRTIO_NET_F_RSS): the device hashes each received
   * frame over the fields `hashTypes` (HashType bits) name, with `key` (default DEFAULT_RSS_KEY),
   * and an indirection table spreads the hashes evenly over the queue pairs.
   */
  rss?: { hashTypes: number; key?: Uint8Array };
  /**
   * The RX and TX queues are served outside the port, by worker threads (mod/fwd/workers.ts):
   * `start` lays out and sets up every ring but builds no queue and posts no buffer, and
   * `queueLayout()` says where the rings are; rxBurst and txBurst take nothing. A device that
   * comes back after it was lost is then set up again only by `bringBack()`, once the queues'
   * servers have let go of the old rings.
   */
  detachedQueues?: boolean;
}

/** Where the rings of a port started with `detachedQueues` lie, and how their queues work. */
export interface QueueLayout {
  /** The region of the rings (the pool's, or the port's own). */
  region: DmaRegion;
  /** The transport's ring layout (split rings). */
  layout: RingLayout;
  /** VIRTIO_F_RING_PACKED: every ring is a packed ring (2.8) of `packedParts(size)`. */
  packed: boolean;
  /** Per queue pair: virtqueue index, entries, byte offset in `region` of the RX ring. */
  rx: { index: number; size: number; offset: number }[];
  /**
   * The same of the TX rings, and where each one's indirect tables are (IndirectTables, one per
   * entry; -1 without INDIRECT_DESC).
   */
  tx: { index: number; size: number; offset: number; indirect: number }[];
  /** The negotiated virtio-net header size. */
  hdrSize: number;
  /** MRG_RXBUF, EVENT_IDX and IN_ORDER negotiated. */
  mrgRxbuf: boolean;
  /** See `mrgRxbuf`. */
  eventIdx: boolean;
  /** See `mrgRxbuf`. */
  inOrder: boolean;
  /** Software VLAN strip on receive. */
  vlanStrip: boolean;
  /** TCI to insert on every frame, -1 for none. */
  vlanInsert: number;
  /** iova of the zero header (TxQueueOptions.zeroHeader). */
  zeroHeader: number;
}

export function emptyStats(): PortStats {
  return widenCounters({
    rxPackets: 0,
    txPackets: 0,
    rxBytes: 0,
    txBytes: 0,
    rxDropped: 0,
    txDropped: 0,
    rxNoMbuf: 0,
    rxErrors: 0,
    txErrors: 0,
    rxIdxErrors: 0,
  });
}

const DEFAULT_RING = 256;
/** Control queue entries wanted when the device lets us choose. */
const CTRL_RING = 64;
/** Plan.ctrlSize of a control queue that the device sets up only with the features (#resolve). */
const CTRL_SIZE_LATER = -1;
/** Largest MTU accepted when the device does not state one (64 KiB frames). */
const MAX_MTU = Eth.LARGEST_FRAME - Eth.HDR - Eth.VLAN_TAG;

/** Features the driver can use; the device's offer is intersected with these (6, 5.1.3). */
const BASE_FEATURES = [
  Feature.VERSION_1,
  Feature.ANY_LAYOUT,
  Feature.IN_ORDER, // chains in ring order, TX completions counted (tx_queue.ts, rx_queue.ts)
  // Packed rings (2.8) whenever the device offers them: transports offer the bit only when the
  // port spec asks for it (packed=1).
  Feature.RING_PACKED,
  // Indirect tables for multi-segment TX frames (2.7.5.3, 2.8.7) whenever the device offers them:
  // transports offer the bit only when the port spec asks for it (indirect=1).
  Feature.INDIRECT_DESC,
  NetFeature.MAC,
  NetFeature.STATUS,
  NetFeature.MTU,
];
const CTRL_FEATURES = [
  NetFeature.CTRL_VQ,
  NetFeature.CTRL_RX,
  NetFeature.CTRL_VLAN,
  NetFeature.CTRL_MAC_ADDR,
  NetFeature.GUEST_ANNOUNCE,
];

/** Where a port's rings live: `bytes` from `base` of `region`, which the port owns or the pool does. */
interface RingArea {
  region: DmaRegion;
  base: number;
  bytes: number;
  /** The plan's queue counts and sizes (and the memory kind) the area was laid out for. */
  key: string;
  own: boolean;
}

/** Resolved configuration (after checking it against the device). */
interface Plan {
  cfg: PortConfig;
  features: bigint;
  hdrSize: number;
  queues: number;
  rxd: number;
  txd: number;
  ctrlSize: number;
  ctrlIndex: number;
  mtu: number;
  /** Largest frame received or sent: mtu + Ethernet header + a VLAN tag. */
  maxFrame: number;
  /** RSS as sent to the device after DRIVER_OK, or null. */
  rss: RssSettings | null;
  /** VIRTIO_F_RING_PACKED was negotiated: every queue is a packed ring (2.8). */
  packed: boolean;
  /** VIRTIO_F_INDIRECT_DESC was negotiated: TX queues get indirect tables (indirect.ts). */
  indirect: boolean;
}

/** Receive filter state, re-applied through the control queue on every start. */
interface Filters {
  promisc: boolean | null;
  allmulti: boolean | null;
  unicast: Uint8Array[] | null;
  multicast: Uint8Array[] | null;
  mac: Uint8Array | null;
  vlans: Set<number>;
}

/** A virtio-net port: configure, start, then rxBurst/txBurst and poll; stop and close. */
export class Port {
  /** The port's number (mbuf `port` field, log messages). */
  readonly id: number;
  /** The device's transport; the port does not close it (`closePort` does). */
  readonly transport: VirtioTransport;
  /** Called when the link goes up or down (5.1.4 status, device lost or back). */
  onLinkChange: ((up: boolean) => void) | null = null;
  /** Totals over all queues, updated once per burst. */
  readonly stats: PortStats = emptyStats();
  /** Counters per RX and per TX queue (since the last start). */
  readonly queueStats: { rx: PortStats[]; tx: PortStats[] } = { rx: [], tx: [] };

  readonly #log: (msg: string) => void;
  #cfg: PortConfig | null = null;
  #plan: Plan | null = null;
  #started = false;
  /** start() was called and stop() was not: a returning device is brought up again. */
  #wanted = false;
  #mac = new Uint8Array(6);
  #linkUp = false;
  #rx: (RxQueue | PackedRxQueue)[] = [];
  #tx: (TxQueue | PackedTxQueue)[] = [];
  #ctrl: CtrlQueue | PackedCtrlQueue | null = null;
  /** With detachedQueues: where the rings are (null while stopped). */
  #layout: QueueLayout | null = null;
  /** With detachedQueues: the device came back and waits for `bringBack()`. */
  #returned = false;
  /** Ring memory, kept across stop/start (a backend maps it once); replaced when sizes change. */
  #ringArea: RingArea | null = null;
  #filters: Filters = {
    promisc: null,
    allmulti: null,
    unicast: null,
    multicast: null,
    mac: null,
    vlans: new Set(),
  };

  /**
   * A port on `transport`; `opts.log` gets warnings and link events (default console.error).
   * Nothing reaches the device before `start`.
   */
  constructor(id: number, transport: VirtioTransport, opts: { log?: (msg: string) => void } = {}) {
    this.id = id;
    this.transport = transport;
    this.#log = opts.log ?? ((msg) => console.error(msg));
  }

  /** True between a successful `start` and `stop`. */
  get started(): boolean {
    return this.#started;
  }

  /** The port's MAC address (the device's, or the one set; valid once started). */
  get mac(): Uint8Array {
    return this.#mac;
  }

  /** The negotiated feature bits (2.2); 0 before configure. */
  get features(): bigint {
    return this.#plan?.features ?? 0n;
  }

  /** The link state (5.1.4); false while stopped. */
  get linkUp(): boolean {
    return this.#linkUp;
  }

  /** The link behind a simulated device (`sim:`: frame generator and checker), else null. */
  get wire(): SimulatedWire | null {
    return this.transport.wire ?? null;
  }

  /**
   * What `configure` settled on (the device's ring sizes where it fixes them, its MTU limit): queue
   * pairs, RX and TX ring sizes, MTU, largest frame, header size. Zeros before configure.
   */
  get limits(): {
    queues: number;
    rxd: number;
    txd: number;
    mtu: number;
    maxFrame: number;
    hdrSize: number;
  } {
    const p = this.#plan;
    if (p === null) return { queues: 0, rxd: 0, txd: 0, mtu: 0, maxFrame: 0, hdrSize: 0 };
    const { queues, rxd, txd, mtu, maxFrame, hdrSize } = p;
    return { queues, rxd, txd, mtu, maxFrame, hdrSize };
  }

  /** Check `cfg` against the device and keep it for `start`. Only while stopped. */
  configure(cfg: PortConfig): void {
    if (this.#started) {
      throw new Error(`port ${this.id}: cannot configure a started port; stop the port first`);
    }
    this.#plan = this.#resolve(cfg, false);
    this.#cfg = cfg;
  }

  #fail(msg: string): never {
    throw new Error(`port ${this.id}: ${msg}`);
  }

  /** Negotiate features and check sizes; `warn` logs the queue-size warning (once per start). */
  #resolve(cfg: PortConfig, warn: boolean): Plan {
    const t = this.transport;
    const pool = cfg.pool;
    if (!t.dmaKinds.includes(pool.region.kind)) {
      this.#fail(
        `the mbuf pool is ${pool.region.kind} memory, which ${t.name} cannot reach ` +
          `(it needs one of: ${t.dmaKinds.join(", ")})`,
      );
    }
    const queues = cfg.queues ?? 1;
    if (!Number.isInteger(queues) || queues < 1) this.#fail(`queues must be 1 or more (${queues})`);
    const offered = t.getDeviceFeatures();
    let want = 0n;
    for (const f of BASE_FEATURES) want |= bit(f);
    if (cfg.eventIdx ?? false) want |= bit(Feature.EVENT_IDX);
    if (cfg.ctrlVq ?? true) { for (const f of CTRL_FEATURES) want |= bit(f); }
    if (cfg.vlanFilter === false) want &= ~bit(NetFeature.CTRL_VLAN);
    if (queues > 1) want |= bit(NetFeature.MQ);
    if (cfg.rss !== undefined) want |= bit(NetFeature.RSS);
    let features = offered & want;
    // 2.8 is virtio 1.x: without VERSION_1 there are no packed rings.
    if (!has(features, Feature.VERSION_1)) features &= ~bit(Feature.RING_PACKED);
    // Features that depend on the control queue are void without it (5.1.3.1).
    if (!has(features, NetFeature.CTRL_VQ)) {
      for (const f of CTRL_FEATURES) features &= ~bit(f);
      features &= ~(bit(NetFeature.MQ) | bit(NetFeature.RSS));
    }
    const rss = cfg.rss === undefined ? null : this.#rssSettings(cfg.rss, features, queues);
    if (queues > 1) {
      if (!has(features, NetFeature.MQ) && rss === null) {
        this.#fail(
          `${queues} queue pairs need VIRTIO_NET_F_MQ and the control queue, which the device ` +
            `does not offer; run with one queue pair`,
        );
      }
      const max = this.#readU16(NetConfig.MAX_VIRTQUEUE_PAIRS);
      if (queues > max) this.#fail(`${queues} queue pairs asked, the device has ${max}`);
    }
    // 5.1.4.1: with VIRTIO_NET_F_MTU the config `mtu` is the largest the device takes.
    const devMtu = has(features, NetFeature.MTU) ? this.#readU16(NetConfig.MTU) : MAX_MTU;
    const mtu = cfg.mtu ?? Math.min(Eth.MTU, devMtu);
    if (!Number.isInteger(mtu) || mtu < 68 || mtu > devMtu) {
      this.#fail(
        `MTU ${mtu} is not possible: ` +
          (has(features, NetFeature.MTU)
            ? `the device's maximum is ${devMtu} (VIRTIO_NET_F_MTU)`
            : `it must be between 68 and ${MAX_MTU}`),
      );
    }
    const maxFrame = mtu + Eth.HDR + Eth.VLAN_TAG;
    // Mergeable buffers (5.1.6.3.1) by default only when a frame of the MTU needs more than one
    // buffer. Without them DPDK 22.11's vhost leaves a received frame's num_buffers as it was
    // (5.1.6.4 asks for 1), so the header is zero and a forwarded frame goes back out behind it,
    // one descriptor (a device that writes 1 gets the pair below). With them num_buffers is 1,
    // which a transmitted header must not carry (5.1.6.2), so the frame goes behind a zero header
    // of the TX queue's own, two descriptors (tx_queue.ts; docs/performance.md).
    if ((cfg.mrgRxbuf ?? pool.dataRoom < maxFrame) && has(offered, NetFeature.MRG_RXBUF)) {
      features |= bit(NetFeature.MRG_RXBUF);
    }
    const hdrSize = netHdrSize(features);
    if (pool.headroom < hdrSize) {
      this.#fail(
        `the mbuf pool's headroom (${pool.headroom} bytes) cannot hold the ${hdrSize}-byte ` +
          `virtio-net header; use a pool with headroom >= ${hdrSize}`,
      );
    }
    if (cfg.vlanInsert !== undefined) {
      if (!Number.isInteger(cfg.vlanInsert) || cfg.vlanInsert < 0 || cfg.vlanInsert > 0xffff) {
        this.#fail(`VLAN insert TCI ${cfg.vlanInsert} is not a 16-bit value`);
      }
      if (pool.headroom < hdrSize + Eth.VLAN_TAG) {
        this.#fail(
          `software VLAN insert needs ${hdrSize + Eth.VLAN_TAG} bytes of headroom ` +
            `(header + tag), the pool has ${pool.headroom}`,
        );
      }
    }
    if (!has(features, NetFeature.MRG_RXBUF) && pool.dataRoom < maxFrame) {
      this.#fail(
        `MTU ${mtu} needs ${maxFrame}-byte frames in one buffer without mergeable RX buffers ` +
          `(VIRTIO_NET_F_MRG_RXBUF ${
            has(offered, NetFeature.MRG_RXBUF) ? "turned off" : "not offered"
          }), ` +
          `but the pool's data room is ${pool.dataRoom}: allow mergeable buffers (mrg=1 on sim ` +
          `and vhost-user ports), lower the MTU to at most ${
            pool.dataRoom - Eth.HDR - Eth.VLAN_TAG
          }, or use a pool with dataRoom >= ${maxFrame}`,
      );
    }
    // 5.1.2: max_virtqueue_pairs counts once MQ or RSS is negotiated (the control queue's index).
    const maxPairs = has(features, NetFeature.MQ) || has(features, NetFeature.RSS)
      ? this.#readU16(NetConfig.MAX_VIRTQUEUE_PAIRS)
      : 1;
    const warnings: string[] = [];
    const rxd = this.#queueSize("rxd", cfg.rxd, NetQueue.rx(0), warnings);
    const txd = this.#queueSize("txd", cfg.txd, NetQueue.tx(0), warnings);
    if (warn && warnings.length > 0) this.#log(`port ${this.id}: warning: ${warnings.join("; ")}`);
    const ctrlIndex = NetQueue.ctrl(maxPairs);
    let ctrlSize = 0;
    if (has(features, NetFeature.CTRL_VQ)) {
      // Where the control queue is depends on the features (5.1.2), and a device may move it
      // there only once it has them (QEMU adds queue 2N at FEATURES_OK): not there yet, its size
      // is read after the features are (start).
      ctrlSize = maxPairs > 1 && t.queueMaxSize(ctrlIndex) === 0
        ? CTRL_SIZE_LATER
        : this.#ctrlSize(ctrlIndex);
    }
    const packed = has(features, Feature.RING_PACKED);
    const indirect = has(features, Feature.INDIRECT_DESC);
    return {
      cfg,
      features,
      hdrSize,
      queues,
      rxd,
      txd,
      ctrlSize,
      ctrlIndex,
      mtu,
      maxFrame,
      packed,
      indirect,
      rss,
    };
  }

  /**
   * RSS for `queues` pairs, checked against what the device offers (5.1.4: hash types, key size,
   * table length); the table is the largest power of two up to 128 entries that the device takes.
   */
  #rssSettings(
    asked: { hashTypes: number; key?: Uint8Array },
    f: bigint,
    queues: number,
  ): RssSettings {
    if (!has(f, NetFeature.RSS)) {
      const dev = this.transport.getDeviceFeatures();
      const missing = !has(dev, NetFeature.RSS)
        ? "the device does not offer VIRTIO_NET_F_RSS"
        : !has(dev, NetFeature.CTRL_VQ)
        ? "the device does not offer VIRTIO_NET_F_CTRL_VQ"
        : "the control queue is turned off (ctrlVq: false)";
      this.#fail(`${missing}, so RSS cannot be configured; run without --rss`);
    }
    const b = this.transport.readConfig(NetConfig.SUPPORTED_HASH_TYPES, 4);
    const supported = (b[0] | (b[1] << 8) | (b[2] << 16) | (b[3] << 24)) >>> 0;
    const missing = asked.hashTypes & ~supported;
    if (missing !== 0) {
      const names = (m: number) =>
        Object.entries(HashType).filter(([, v]) => (m & v) !== 0).map(([k]) => k).join(", ");
      this.#fail(
        `the device cannot hash over ${names(missing)} (it supports ${names(supported) || "none"})`,
      );
    }
    const key = asked.key ?? DEFAULT_RSS_KEY;
    const maxKey = this.transport.readConfig(NetConfig.RSS_MAX_KEY_SIZE, 1)[0];
    if (key.length > maxKey) {
      this.#fail(`an RSS key of ${key.length} bytes is longer than the device takes (${maxKey})`);
    }
    const maxTable = this.#readU16(NetConfig.RSS_MAX_INDIRECTION_TABLE_LENGTH);
    let tableLength = 1;
    while (tableLength * 2 <= Math.min(maxTable, RssConfig.MIN_INDIRECTION_TABLE_LENGTH)) {
      tableLength *= 2;
    }
    return { hashTypes: asked.hashTypes, queues, tableLength, key };
  }

  /** Entries for control queue `index`: the device's size when fixed, else up to CTRL_RING. */
  #ctrlSize(index: number): number {
    const t = this.transport;
    const max = t.queueMaxSize(index);
    if (max === 0) {
      this.#fail(`the device offers a control queue but queue ${index} does not exist`);
    }
    const size = t.queueSizeFixed ? max : Math.min(max, CTRL_RING);
    if (!isValidQueueSize(size)) this.#fail(`control queue size ${size} is not a power of two`);
    return size;
  }

  #queueSize(flag: string, asked: number | undefined, index: number, warnings: string[]): number {
    const max = this.transport.queueMaxSize(index);
    if (max === 0) this.#fail(`queue ${index} does not exist on the device`);
    if (this.transport.queueSizeFixed) {
      if (asked !== undefined && asked !== 0 && asked !== max) {
        warnings.push(`--${flag} ${asked} ignored, the device's queue size ${max} is fixed`);
      }
      return max;
    }
    if (asked === undefined) return Math.min(DEFAULT_RING, max);
    if (asked === 0) return max;
    if (!isValidQueueSize(asked) || asked > max) {
      this.#fail(`--${flag} ${asked} must be a power of two no larger than the device's ${max}`);
    }
    return asked;
  }

  #readU16(offset: number): number {
    const b = this.transport.readConfig(offset, 2);
    return b[0] | (b[1] << 8);
  }

  /** Bring the device up (3.1.1) with the configured queues; RX rings filled. */
  start(): void {
    if (this.#started) return;
    if (!this.#cfg) this.#fail("configure the port before starting it");
    this.#wanted = true;
    const plan = this.#resolve(this.#cfg, true);
    this.#plan = plan;
    const t = this.transport;
    const cfg = plan.cfg;
    try {
      t.reset();
      t.setStatus(Status.ACKNOWLEDGE);
      t.setStatus(Status.ACKNOWLEDGE | Status.DRIVER);
      t.setDriverFeatures(plan.features);
      let status = Status.ACKNOWLEDGE | Status.DRIVER;
      // FEATURES_OK exists only for devices that speak virtio 1.x (3.1.1 step 5; 3.1.2 legacy).
      if (has(plan.features, Feature.VERSION_1)) {
        status |= Status.FEATURES_OK;
        t.setStatus(status);
        if ((t.getStatus() & Status.FEATURES_OK) === 0) {
          this.#fail(`the device did not accept the features 0x${plan.features.toString(16)}`);
        }
      }
      if (plan.ctrlSize === CTRL_SIZE_LATER) plan.ctrlSize = this.#ctrlSize(plan.ctrlIndex);
      this.#readMac(plan.features);
      const area = this.#rings(plan, cfg.pool.region);
      t.addMemory(cfg.pool.region);
      t.addMemory(area.region); // the same region unless the pool had no room
      this.#buildQueues(plan, area);
      status |= Status.DRIVER_OK;
      t.setStatus(status);
      this.#started = true;
      this.#setLink(this.#readLink());
      this.#applyFilters(plan);
    } catch (e) {
      this.#teardown();
      try {
        t.setStatus(Status.FAILED); // 3.1.1: the driver gives up on the device
      } catch {
        // the device is gone; the first error is the one to report
      }
      throw e;
    }
  }

  #readMac(features: bigint): void {
    if (has(features, NetFeature.MAC)) {
      this.#mac = new Uint8Array(this.transport.readConfig(NetConfig.MAC, Eth.ADDR));
    } else if (this.#mac.every((b) => b === 0)) {
      // A random locally administered unicast address (IEEE 802: bit 1 set, bit 0 clear).
      crypto.getRandomValues(this.#mac);
      this.#mac[0] = (this.#mac[0] & 0xfe) | 0x02;
    }
    if (this.#filters.mac) this.#mac = new Uint8Array(this.#filters.mac);
  }

  /**
   * Memory for this plan's rings: one area per queue, then the control command buffer and the zero
   * header. It is taken from the pool's region when that has room and contiguous iovas, so that the
   * device sees rings and buffers as one memory region: a vhost-user backend such as DPDK's
   * spends more cycles per packet with two (docs/performance.md). Otherwise it is a region of its
   * own, in the pool's kind of memory (which the transport reaches, checked in #resolve). An area
   * in the pool cannot be given back: a port reconfigured to bigger rings takes a new one and the
   * old stays unused until the pool is closed.
   */
  #rings(plan: Plan, pool: DmaRegion): RingArea {
    const layout = this.transport.ringLayout;
    const key = `${plan.queues}/${plan.rxd}/${plan.txd}/${plan.ctrlSize}/${layout.placement}/` +
      `${pool.kind}/${plan.packed ? "packed" : "split"}/${plan.indirect ? "indirect" : ""}`;
    const old = this.#ringArea;
    if (old && old.key === key && (old.own || old.region === pool)) return old;
    const bytes = ringAreaBytes(
      this.#ringSizes(plan),
      layout,
      pageSizeOf(pool.kind),
      plan.packed,
      plan.indirect ? plan.queues * plan.txd : 0,
    );
    if (old?.own) old.region.close();
    this.#ringArea = null;
    const align = plan.packed ? PACKED_START_ALIGN : ringStartAlign(layout);
    let area: RingArea;
    if (old && !old.own && old.region === pool && old.bytes >= bytes) {
      // Laid out anew: the zero header may now lie where a ring was.
      pool.u8.fill(0, old.base, old.base + old.bytes);
      area = { ...old, key };
    } else if (pool.contiguous && pool.remaining >= bytes + align) {
      area = { region: pool, base: pool.alloc(bytes, align), bytes, key, own: false };
    } else {
      const region = DmaRegion.create({
        size: bytes,
        kind: pool.kind,
        name: `vpmd-port${this.id}-rings`,
      });
      area = { region, base: 0, bytes, key, own: true };
    }
    this.#ringArea = area;
    return area;
  }

  /** [queue index, size] for every ring of the plan. */
  #ringSizes(plan: Plan): [number, number][] {
    const out: [number, number][] = [];
    for (let q = 0; q < plan.queues; q++) {
      out.push([NetQueue.rx(q), plan.rxd], [NetQueue.tx(q), plan.txd]);
    }
    if (plan.ctrlSize > 0) out.push([plan.ctrlIndex, plan.ctrlSize]);
    return out;
  }

  #buildQueues(plan: Plan, area: RingArea): void {
    const t = this.transport;
    const layout = t.ringLayout;
    const cfg = plan.cfg;
    const eventIdx = has(plan.features, Feature.EVENT_IDX);
    const inOrder = has(plan.features, Feature.IN_ORDER);
    const mrgRxbuf = has(plan.features, NetFeature.MRG_RXBUF);
    const { region, base } = area;
    const placed = placeRings(this.#ringSizes(plan), layout, region.pageSize, plan.packed);
    const at = (index: number): number => base + placed.offset.get(index)!;
    const place = (index: number, size: number): SplitRing =>
      new SplitRing(index, size, region, at(index), layout);
    const placePacked = (index: number, size: number): PackedRing =>
      new PackedRing(index, size, region, at(index));
    this.queueStats.rx.length = 0;
    this.queueStats.tx.length = 0;
    // After the control buffer: zero bytes that nobody writes, the header of frames sent as
    // header + frame descriptors (see TxQueue).
    const zeroHeader = region.iova(base + placed.end + CTRL_BUFFER_BYTES);
    // After the zero header: each TX queue's indirect tables, one per ring slot.
    const tablesAt = alignUp(base + placed.end + CTRL_BUFFER_BYTES + ZERO_HEADER_BYTES);
    const tablesOf = (q: number) => tablesAt + q * plan.txd * INDIRECT_TABLE_BYTES;
    const tables = (q: number): IndirectTables | undefined =>
      plan.indirect ? new IndirectTables(region, tablesOf(q), plan.txd, plan.txd) : undefined;
    const memory: QueueMemory[] = [];
    const detached = cfg.detachedQueues ?? false;
    const where: QueueLayout = {
      region,
      layout,
      packed: plan.packed,
      rx: [],
      tx: [],
      hdrSize: plan.hdrSize,
      mrgRxbuf,
      eventIdx,
      inOrder,
      vlanStrip: cfg.vlanStrip ?? false,
      vlanInsert: cfg.vlanInsert ?? -1,
      zeroHeader,
    };
    for (let q = 0; q < plan.queues; q++) {
      const rxStats = emptyStats();
      const txStats = emptyStats();
      this.queueStats.rx.push(rxStats);
      this.queueStats.tx.push(txStats);
      if (detached) {
        const rxRing = plan.packed
          ? placePacked(NetQueue.rx(q), plan.rxd)
          : place(NetQueue.rx(q), plan.rxd);
        const txRing = plan.packed
          ? placePacked(NetQueue.tx(q), plan.txd)
          : place(NetQueue.tx(q), plan.txd);
        memory.push(rxRing.memory, txRing.memory);
        const ring = (r: SplitRing | PackedRing) => ({
          index: r.index,
          size: r.size,
          offset: at(r.index),
        });
        where.rx.push(ring(rxRing));
        where.tx.push({ ...ring(txRing), indirect: plan.indirect ? tablesOf(q) : -1 });
        continue;
      }
      const common = { pool: cfg.pool, transport: t, hdrSize: plan.hdrSize, eventIdx, inOrder };
      const rx = {
        ...common,
        mrgRxbuf,
        portId: this.id,
        vlanStrip: cfg.vlanStrip ?? false,
        stats: rxStats,
        totals: this.stats,
      };
      const tx = {
        ...common,
        vlanInsert: cfg.vlanInsert ?? -1,
        zeroHeader,
        indirect: tables(q),
        stats: txStats,
        totals: this.stats,
      };
      if (plan.packed) {
        const rxRing = placePacked(NetQueue.rx(q), plan.rxd);
        const txRing = placePacked(NetQueue.tx(q), plan.txd);
        memory.push(rxRing.memory, txRing.memory);
        this.#rx.push(new PackedRxQueue({ ...rx, ring: rxRing }));
        this.#tx.push(new PackedTxQueue({ ...tx, ring: txRing }));
      } else {
        const rxRing = place(NetQueue.rx(q), plan.rxd);
        const txRing = place(NetQueue.tx(q), plan.txd);
        memory.push(rxRing.memory, txRing.memory);
        this.#rx.push(new RxQueue({ ...rx, ring: rxRing }));
        this.#tx.push(new TxQueue({ ...tx, ring: txRing }));
      }
    }
    // Sent buffers come back when the pool runs short, not only when a ring fills (mbuf.ts).
    for (const tx of this.#tx) cfg.pool.addHolder(tx);
    if (plan.ctrlSize > 0) {
      const buf = base + placed.end;
      const label = `port ${this.id}`;
      if (plan.packed) {
        const ring = placePacked(plan.ctrlIndex, plan.ctrlSize);
        memory.push(ring.memory);
        this.#ctrl = new PackedCtrlQueue(ring, t, region, buf, label, eventIdx);
      } else {
        const ring = place(plan.ctrlIndex, plan.ctrlSize);
        memory.push(ring.memory);
        this.#ctrl = new CtrlQueue(ring, t, region, buf, label, eventIdx);
      }
    }
    for (const rx of this.#rx) rx.fill();
    for (const m of memory) t.setupQueue(m);
    this.#layout = detached ? where : null;
  }

  /** Where the rings are, for a port configured with `detachedQueues` (null while stopped). */
  queueLayout(): QueueLayout | null {
    return this.#started ? this.#layout : null;
  }

  /** A port with `detachedQueues` whose device came back and waits for `bringBack()`. */
  get awaitingBringBack(): boolean {
    return this.#returned;
  }

  /**
   * Set the device up again after it came back (`detachedQueues`: call it once the queues'
   * servers let go of the old rings; a failure is logged). The new rings are in `queueLayout()`.
   */
  bringBack(): void {
    this.#returned = false;
    if (!this.#wanted) return;
    if (this.#started) this.#teardown();
    try {
      this.start();
    } catch (e) {
      this.#log(`port ${this.id}: cannot bring the device back: ${(e as Error).message}`);
    }
  }

  /** Reset the device and give every buffer back to the pool. */
  stop(): void {
    this.#wanted = false;
    if (!this.#started) return;
    this.#teardown();
  }

  /** Reset the device (it stops using all memory, 2.1), then free what the rings held. */
  #teardown(): void {
    try {
      this.transport.reset();
    } finally {
      for (const rx of this.#rx) {
        rx.discardDelivered(); // frames the device delivered and nobody took: dropped, counted
        rx.release();
      }
      for (const tx of this.#tx) {
        tx.pool.removeHolder(tx);
        tx.release(); // frames in flight: counted as dropped there
      }
      this.#rx = [];
      this.#tx = [];
      this.#ctrl = null;
      this.#layout = null;
      this.#started = false;
      this.#linkUp = false;
    }
  }

  /** Stop the port and free ring memory of its own; the transport stays open. */
  close(): void {
    this.stop();
    if (this.#ringArea?.own) this.#ringArea.region.close();
    this.#ringArea = null;
  }

  /**
   * Receive up to `max` frames on `queue` into `pkts` (mbuf numbers); 0 when stopped. Poll it:
   * an empty poll also finishes the notification check of the last burst that posted buffers
   * (mod/virtio/split_ring.ts).
   */
  rxBurst(queue: number, pkts: Uint32Array, max: number): number {
    const rx = this.#rx[queue];
    return rx === undefined ? 0 : rx.burst(pkts, max);
  }

  /**
   * Send `pkts[0..n)` on `queue`; returns how many were taken (0 when stopped). With n = 0 it
   * takes back frames the device has finished with, and does what `txIdle` does.
   */
  txBurst(queue: number, pkts: Uint32Array, n: number): number {
    const tx = this.#tx[queue];
    return tx === undefined ? 0 : tx.burst(pkts, n);
  }

  /**
   * Nothing to send on `queue` now: finish the notification check of the last burst that sent
   * (mod/virtio/split_ring.ts). Poll it when there is nothing to send, as the forwarding engines
   * do, or a device that turned notifications on just then may wait for the last burst's.
   */
  txIdle(queue: number): void {
    this.#tx[queue]?.idle();
  }

  /**
   * Descriptors of TX queue `queue` the device has not given back yet (0 when stopped). After a
   * reclaim (`txBurst(queue, none, 0)`), 0 means every frame sent on it has left.
   */
  txInFlight(queue: number): number {
    const tx = this.#tx[queue];
    return tx === undefined ? 0 : tx.ring.size - tx.freeDescriptors;
  }

  /**
   * Between bursts: let the transport work and react to its events (config change: link and
   * announce; device lost; device returned: the port is brought up again). Returns the mask.
   */
  poll(): number {
    const ev = this.transport.poll();
    if (ev === 0) return 0;
    if ((ev & TransportEvent.DEVICE_LOST) !== 0) this.#setLink(false);
    if ((ev & TransportEvent.DEVICE_RETURNED) !== 0 && this.#wanted) {
      // Detached queues: their servers must let go of the rings before new ones are laid out.
      if (this.#cfg?.detachedQueues) this.#returned = true;
      else this.bringBack();
    }
    if ((ev & TransportEvent.CONFIG_CHANGED) !== 0 && this.#started) {
      this.#setLink(this.#readLink());
      this.#announce();
    }
    return ev;
  }

  #setLink(up: boolean): void {
    if (up === this.#linkUp) return;
    this.#linkUp = up;
    this.onLinkChange?.(up);
  }

  /** 5.1.4: link status from the config `status` field when STATUS is negotiated, else up. */
  #readLink(): boolean {
    if (!has(this.features, NetFeature.STATUS)) return true;
    return (this.#readU16(NetConfig.STATUS) & NetConfig.S_LINK_UP) !== 0;
  }

  /** 5.1.6.5.4: send a gratuitous packet (mod/announce.ts), then acknowledge the request. */
  #announce(): void {
    if (!this.#ctrl || !has(this.features, NetFeature.GUEST_ANNOUNCE)) return;
    if ((this.#readU16(NetConfig.STATUS) & NetConfig.S_ANNOUNCE) === 0) return;
    const err = this.#plan!.cfg.detachedQueues
      ? "no RARP sent, the queues are served by worker threads"
      : sendAnnounce(this, this.#plan!.cfg.pool);
    this.#log(`port ${this.id}: announce requested: ${err ?? "RARP sent"}`);
    try {
      this.#ctrl.command(Ctrl.ANNOUNCE, Ctrl.ANNOUNCE_ACK, [], "announce ack");
    } catch (e) {
      this.#log((e as Error).message);
    }
  }

  // ---- Receive filters (5.1.6.5.1-5.1.6.5.3, 5.1.6.5.5) ----

  /** Throws unless the device offers the control queue and `feature` (named in the error). */
  #need(feature: keyof typeof NetFeature, what: string, flag: string): void {
    const f = this.#plan?.features ?? this.transport.getDeviceFeatures();
    const ok = has(f, NetFeature.CTRL_VQ) && has(f, NetFeature[feature]);
    if (ok) return;
    const missing = has(f, NetFeature.CTRL_VQ) ? `VIRTIO_NET_F_${feature}` : "VIRTIO_NET_F_CTRL_VQ";
    const dev = this.transport.getDeviceFeatures();
    const usable = has(dev, NetFeature.CTRL_VQ) && !(this.#cfg?.ctrlVq ?? true);
    if (
      feature === "CTRL_VLAN" && has(dev, NetFeature.CTRL_VLAN) && this.#cfg?.vlanFilter === false
    ) {
      this.#fail(`VLAN filtering is turned off (vlanFilter: false), so ${what}`);
    }
    this.#fail(
      usable
        ? `the control queue is turned off (ctrlVq: false), so ${what}; run without ${flag}`
        : `the device does not offer ${missing}, so ${what}; run without ${flag}`,
    );
  }

  /** 5.1.6.5.1: receive frames for every address (needs CTRL_RX); set again on every start. */
  setPromiscuous(on: boolean): void {
    this.#need("CTRL_RX", "promiscuous mode cannot be set", on ? "--promisc" : "--no-promisc");
    this.#filters.promisc = on;
    this.#sendRx(Ctrl.RX_PROMISC, on, "promiscuous mode");
  }

  /** 5.1.6.5.1: receive every multicast frame (needs CTRL_RX); set again on every start. */
  setAllMulticast(on: boolean): void {
    this.#need("CTRL_RX", "all-multicast mode cannot be set", "--allmulti");
    this.#filters.allmulti = on;
    this.#sendRx(Ctrl.RX_ALLMULTI, on, "all-multicast mode");
  }

  #sendRx(cmd: number, on: boolean, what: string): void {
    this.#ctrl?.command(Ctrl.RX, cmd, [Uint8Array.of(on ? 1 : 0)], what);
  }

  /** 5.1.6.5.2: the unicast and multicast MAC filter tables (replaced as a whole). */
  setMacTable(unicast: Uint8Array[], multicast: Uint8Array[]): void {
    this.#need("CTRL_RX", "MAC filter tables cannot be set", "--mcast");
    for (const a of [...unicast, ...multicast]) {
      if (a.length !== Eth.ADDR) this.#fail(`MAC table entry of ${a.length} bytes (6 expected)`);
    }
    this.#filters.unicast = unicast.map((a) => new Uint8Array(a));
    this.#filters.multicast = multicast.map((a) => new Uint8Array(a));
    this.#sendMacTable();
  }

  #sendMacTable(): void {
    const { unicast, multicast } = this.#filters;
    if (!this.#ctrl || !unicast || !multicast) return;
    this.#ctrl.command(
      Ctrl.MAC,
      Ctrl.MAC_TABLE_SET,
      [macTable(unicast), macTable(multicast)],
      "MAC table",
    );
  }

  /** 5.1.6.5.2: the device's default MAC address (needs CTRL_MAC_ADDR). */
  setMacAddress(mac: Uint8Array): void {
    if (mac.length !== Eth.ADDR) this.#fail(`a MAC address has 6 bytes (${mac.length} given)`);
    this.#need("CTRL_MAC_ADDR", "the MAC address cannot be set", "--mac");
    this.#filters.mac = new Uint8Array(mac);
    this.#ctrl?.command(Ctrl.MAC, Ctrl.MAC_ADDR_SET, [new Uint8Array(mac)], "MAC address");
    this.#mac = new Uint8Array(mac);
  }

  /** 5.1.6.5.3: accept frames of VLAN `vid` (needs CTRL_VLAN). */
  addVlan(vid: number): void {
    this.#vlan(vid, Ctrl.VLAN_ADD, "add");
    this.#filters.vlans.add(vid);
  }

  /** 5.1.6.5.3: stop accepting frames of VLAN `vid` (needs CTRL_VLAN). */
  removeVlan(vid: number): void {
    this.#vlan(vid, Ctrl.VLAN_DEL, "remove");
    this.#filters.vlans.delete(vid);
  }

  #vlan(vid: number, cmd: number, verb: string): void {
    if (!Number.isInteger(vid) || vid < 0 || vid > 4095) {
      this.#fail(`VLAN id ${vid} is not in 0..4095`);
    }
    this.#need("CTRL_VLAN", "VLAN filters cannot be set", "--vlan-filter");
    this.#ctrl?.command(Ctrl.VLAN, cmd, [le16(vid)], `${verb} VLAN ${vid}`);
  }

  /**
   * After DRIVER_OK: queue pairs (5.1.6.5.6), RSS (5.1.6.5.7; sent last, since the last MQ command
   * decides how the device steers, 5.1.6.5.5) and the filters asked for before.
   */
  #applyFilters(plan: Plan): void {
    const c = this.#ctrl;
    if (!c) return;
    if (has(plan.features, NetFeature.MQ)) {
      c.command(Ctrl.MQ, Ctrl.MQ_VQ_PAIRS_SET, [le16(plan.queues)], `${plan.queues} queue pairs`);
    }
    if (plan.rss !== null) {
      c.command(Ctrl.MQ, Ctrl.MQ_RSS_CONFIG, [rssConfigData(plan.rss)], "RSS configuration");
    }
    const f = this.#filters;
    const rx = has(plan.features, NetFeature.CTRL_RX);
    if (rx && f.promisc !== null) this.#sendRx(Ctrl.RX_PROMISC, f.promisc, "promiscuous mode");
    if (rx && f.allmulti !== null) this.#sendRx(Ctrl.RX_ALLMULTI, f.allmulti, "all-multicast mode");
    if (rx) this.#sendMacTable();
    if (f.mac && has(plan.features, NetFeature.CTRL_MAC_ADDR)) {
      c.command(Ctrl.MAC, Ctrl.MAC_ADDR_SET, [new Uint8Array(f.mac)], "MAC address");
    }
    if (has(plan.features, NetFeature.CTRL_VLAN)) {
      for (const vid of f.vlans) {
        c.command(Ctrl.VLAN, Ctrl.VLAN_ADD, [le16(vid)], `add VLAN ${vid}`);
      }
    }
  }
}

/**
 * Bytes a port with these settings takes in its pool's memory for its rings (see Port's `#rings`),
 * to size `ringRoom` for a pool that several ports share: ring sizes as `configure` takes them (the
 * device's where it fixes them), the control queue at the most the port asks for.
 */
export function ringRoomFor(
  t: VirtioTransport,
  kind: DmaKind,
  cfg: { queues?: number; rxd?: number; txd?: number } = {},
): number {
  const size = (asked: number | undefined, index: number): number => {
    const max = t.queueMaxSize(index);
    if (t.queueSizeFixed || asked === 0) return max;
    return asked ?? Math.min(DEFAULT_RING, max);
  };
  const queues = cfg.queues ?? 1;
  const txd = size(cfg.txd, NetQueue.tx(0));
  const sizes: [number, number][] = [];
  for (let q = 0; q < queues; q++) {
    sizes.push([NetQueue.rx(q), size(cfg.rxd, NetQueue.rx(0))]);
    sizes.push([NetQueue.tx(q), txd]);
  }
  sizes.push([NetQueue.ctrl(queues), CTRL_RING]);
  // The area may start up to one alignment step past the pool's next free byte.
  // Whichever ring kind is negotiated: the larger of the two layouts. Indirect tables when the
  // transport offers them (it does only when asked).
  const tables = has(t.getDeviceFeatures(), Feature.INDIRECT_DESC) ? queues * txd : 0;
  const bytes = Math.max(
    ringAreaBytes(sizes, t.ringLayout, pageSizeOf(kind), false, tables),
    ringAreaBytes(sizes, t.ringLayout, pageSizeOf(kind), true, tables),
  );
  return bytes + Math.max(ringStartAlign(t.ringLayout), PACKED_START_ALIGN);
}

/**
 * Bytes of a ring area: the rings as `placeRings` lays them out, the control buffer, the zero
 * header, then `tables` indirect tables (aligned to their size, wherever the area starts).
 */
function ringAreaBytes(
  sizes: [number, number][],
  layout: RingLayout,
  pageSize: number,
  packed: boolean,
  tables: number,
): number {
  const end = placeRings(sizes, layout, pageSize, packed).end + CTRL_BUFFER_BYTES +
    ZERO_HEADER_BYTES;
  return tables === 0 ? end : end + INDIRECT_TABLE_BYTES + tables * INDIRECT_TABLE_BYTES;
}

/** `offset` rounded up to a multiple of INDIRECT_TABLE_BYTES. */
function alignUp(offset: number): number {
  return Math.ceil(offset / INDIRECT_TABLE_BYTES) * INDIRECT_TABLE_BYTES;
}

/**
 * Offsets of every ring in the ring area, the same way on every start (the region's bump
 * allocator cannot rewind). A ring that fits in one page stays inside one, so it is contiguous
 * in iova space even on physical memory. `end` is where the control command buffer goes.
 */
function placeRings(
  sizes: [number, number][],
  layout: RingLayout,
  pageSize: number,
  packed: boolean,
): { offset: Map<number, number>; end: number } {
  const align = packed ? PACKED_START_ALIGN : ringStartAlign(layout);
  const offset = new Map<number, number>();
  let next = 0;
  for (const [index, size] of sizes) {
    const bytes = packed ? packedParts(size).bytes : ringParts(size, layout).bytes;
    let off = Math.ceil(next / align) * align;
    if (
      bytes <= pageSize && Math.floor(off / pageSize) !== Math.floor((off + bytes - 1) / pageSize)
    ) {
      off = Math.ceil(off / pageSize) * pageSize;
    }
    offset.set(index, off);
    next = off + bytes;
  }
  return { offset, end: Math.ceil(next / 64) * 64 };
}

function le16(v: number): Uint8Array {
  return Uint8Array.of(v & 0xff, (v >> 8) & 0xff);
}

/** struct virtio_net_ctrl_mac { le32 entries; u8 macs[entries][6]; } (5.1.6.5.2). */
function macTable(list: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(4 + Eth.ADDR * list.length);
  new DataView(out.buffer).setUint32(0, list.length, true);
  list.forEach((a, i) => out.set(a, 4 + Eth.ADDR * i));
  return out;
}
