/**
 * `sim:` ports: a virtio-net device simulated in this process (mod/sim/device.ts) behind the
 * VirtioTransport interface, with a wire (mod/sim/wire.ts) that generates and checks frames.
 *
 * The transport holds what a real device's registers would: the status byte (2.1), the offered
 * and accepted features (2.2; FEATURES_OK does not stick when an unoffered bit was accepted,
 * 3.1.1), the device configuration (5.1.4: mac, status, max_virtqueue_pairs, mtu) and the queues.
 * The device runs inside `poll()`, which the forwarding loop calls between bursts.
 *
 * Spec options: see mod/sim/options.ts (`sim:NAME,k=v,...`).
 */
import type { DmaKind, DmaRegion } from "../../ffi/dma.ts";
import type { QueueMemory, RingLayout, VirtioTransport } from "../virtio/transport.ts";
import { TransportEvent } from "../virtio/transport.ts";
import { bit, Feature, NetConfig, NetFeature, Status } from "../virtio/constants.ts";
import { SimDevice } from "./device.ts";
import { SIM_RSS } from "./rss.ts";
import { parseSimSpec, SIM_MAX_PAIRS, type SimOptions } from "./options.ts";
import { SimWire } from "./wire.ts";

export type { SimOptions } from "./options.ts";

/**
 * Bytes of struct virtio_net_config the device has (5.1.4): up to and including mtu, or with RSS
 * up to and including supported_hash_types.
 */
const CONFIG_SIZE = NetConfig.MTU + 2;
const CONFIG_SIZE_RSS = NetConfig.SUPPORTED_HASH_TYPES + 4;

let instances = 0;

export class SimTransport implements VirtioTransport {
  readonly name: string;
  readonly ringLayout: RingLayout = { placement: "separate", usedAlign: 4 };
  readonly dmaKinds: readonly DmaKind[] = ["memfd", "anon"];
  readonly queueSizeFixed: boolean;
  readonly wire: SimWire;
  readonly device: SimDevice;
  /** Features the device offers (2.2). */
  readonly offered: bigint;
  readonly #maxQueue: number;
  readonly #mtu: number;
  #status = 0;
  #accepted = 0n;
  #closed = false;

  constructor(opts: SimOptions) {
    const n = ++instances;
    this.name = `sim:${opts.name}`;
    const pairs = opts.queuePairs ?? 1;
    const ctrl = opts.ctrlVq ?? true;
    if (!Number.isInteger(pairs) || pairs < 1 || pairs > SIM_MAX_PAIRS) {
      throw new Error(`${this.name}: queue pairs must be 1 to ${SIM_MAX_PAIRS} (${pairs})`);
    }
    if (pairs > 1 && !ctrl) {
      throw new Error(`${this.name}: ${pairs} queue pairs need the control queue (ctrl=1)`);
    }
    this.#maxQueue = opts.maxQueueSize ?? 1024;
    if (this.#maxQueue < 1 || (this.#maxQueue & (this.#maxQueue - 1)) !== 0) {
      throw new Error(`${this.name}: queue size ${this.#maxQueue} is not a power of two`);
    }
    this.queueSizeFixed = opts.queueSizeFixed ?? false;
    this.#mtu = opts.mtu ?? 0;
    const mac = opts.mac ?? Uint8Array.of(0x02, 0x51, 0x4d, (n >> 16) & 0xff, (n >> 8) & 0xff, n);
    this.wire = new SimWire(opts.gen ?? {}, n, pairs);
    this.device = new SimDevice(this.wire, {
      mac,
      queuePairs: pairs,
      notify: opts.notify ?? false,
      linkUp: opts.linkUp ?? true,
      evil: opts.evil ?? null,
    });
    // 5.1.3: what this device offers.
    const f: number[] = [NetFeature.MAC, NetFeature.STATUS];
    if (opts.legacy) f.push(Feature.ANY_LAYOUT); // implied by VERSION_1 (2.7.4)
    else f.push(Feature.VERSION_1);
    if (opts.mrgRxbuf ?? true) f.push(NetFeature.MRG_RXBUF);
    if (opts.mtu !== undefined) f.push(NetFeature.MTU);
    if (opts.eventIdx) f.push(Feature.EVENT_IDX);
    if (opts.inOrder) f.push(Feature.IN_ORDER);
    if (opts.indirect) f.push(Feature.INDIRECT_DESC);
    if (opts.packed) {
      if (opts.legacy) throw new Error(`${this.name}: packed rings need VERSION_1 (not legacy)`);
      f.push(Feature.RING_PACKED);
    }
    if (ctrl) {
      f.push(NetFeature.CTRL_VQ, NetFeature.CTRL_MAC_ADDR, NetFeature.GUEST_ANNOUNCE);
      if (opts.ctrlRx ?? true) f.push(NetFeature.CTRL_RX);
      if (opts.ctrlVlan ?? true) f.push(NetFeature.CTRL_VLAN);
      if (pairs > 1) f.push(NetFeature.MQ);
      if ((opts.rss ?? true) && !opts.legacy) f.push(NetFeature.RSS);
    }
    this.offered = f.reduce((a, b) => a | bit(b), 0n);
  }

  /** Build from a port spec's options (mod/sim/options.ts); one-line errors. */
  static fromSpec(name: string, options: Record<string, string>): SimTransport {
    return new SimTransport(parseSimSpec(name, options));
  }

  /** Change the link (the same as `device.setLink`): the next poll reports CONFIG_CHANGED. */
  setLink(up: boolean): void {
    this.device.setLink(up);
  }

  reset(): void {
    this.#status = 0;
    this.#accepted = 0n;
    this.device.reset();
  }

  getStatus(): number {
    return this.#status | (this.device.needsReset ? Status.DEVICE_NEEDS_RESET : 0);
  }

  setStatus(status: number): void {
    if (status === 0) return this.reset();
    if (this.#closed) throw new Error(`${this.name}: the device is closed`);
    const adding = status & ~this.#status;
    // 3.1.1 / 2.2.2: FEATURES_OK sticks only if every accepted feature was offered.
    if ((adding & Status.FEATURES_OK) !== 0) {
      if ((this.#accepted & ~this.offered) !== 0n) status &= ~Status.FEATURES_OK;
      else this.device.negotiated(this.#accepted);
    }
    this.#status = status;
  }

  getDeviceFeatures(): bigint {
    return this.offered;
  }

  setDriverFeatures(features: bigint): void {
    // 2.2.2: features are fixed once FEATURES_OK is set.
    if ((this.#status & Status.FEATURES_OK) !== 0) return;
    this.#accepted = features;
    // A legacy device (no VERSION_1) has no FEATURES_OK step: the features take effect now.
    if ((this.offered & bit(Feature.VERSION_1)) === 0n) this.device.negotiated(features);
  }

  readConfig(offset: number, length: number): Uint8Array {
    const rss = (this.offered & bit(NetFeature.RSS)) !== 0n;
    const c = new Uint8Array(rss ? CONFIG_SIZE_RSS : CONFIG_SIZE);
    const d = this.device;
    c.set(d.mac, NetConfig.MAC);
    const st = (d.linkUp ? NetConfig.S_LINK_UP : 0) | (d.announcing ? NetConfig.S_ANNOUNCE : 0);
    c[NetConfig.STATUS] = st;
    c[NetConfig.MAX_VIRTQUEUE_PAIRS] = d.queuePairs & 0xff;
    c[NetConfig.MAX_VIRTQUEUE_PAIRS + 1] = d.queuePairs >> 8;
    c[NetConfig.MTU] = this.#mtu & 0xff;
    c[NetConfig.MTU + 1] = this.#mtu >> 8;
    if (rss) {
      const v = new DataView(c.buffer);
      v.setUint8(NetConfig.RSS_MAX_KEY_SIZE, SIM_RSS.maxKeySize);
      v.setUint16(NetConfig.RSS_MAX_INDIRECTION_TABLE_LENGTH, SIM_RSS.maxTableLength, true);
      v.setUint32(NetConfig.SUPPORTED_HASH_TYPES, SIM_RSS.hashTypes, true);
    }
    const out = new Uint8Array(length);
    if (offset < c.length) out.set(c.subarray(offset, Math.min(offset + length, c.length)));
    return out;
  }

  queueMaxSize(index: number): number {
    // Before FEATURES_OK the driver may ask about any queue that can exist (5.1.2).
    const pairs = this.device.queuePairs;
    const ctrl = (this.offered & bit(NetFeature.CTRL_VQ)) !== 0n;
    if (index >= 0 && index < 2 * pairs) return this.#maxQueue;
    if (ctrl && index === 2 * pairs) return this.#maxQueue;
    return 0;
  }

  setupQueue(q: QueueMemory): void {
    if ((this.#status & Status.DRIVER_OK) !== 0) {
      throw new Error(`${this.name}: queue ${q.index} set up after DRIVER_OK`);
    }
    if (!this.device.hasQueue(q.index)) {
      throw new Error(`${this.name}: queue ${q.index} does not exist`);
    }
    const max = this.queueMaxSize(q.index);
    if (q.size < 1 || q.size > max || (q.size & (q.size - 1)) !== 0) {
      throw new Error(`${this.name}: queue ${q.index} size ${q.size} (largest ${max})`);
    }
    if (this.queueSizeFixed && q.size !== max) {
      throw new Error(`${this.name}: queue ${q.index} must have the device's size ${max}`);
    }
    this.device.setupQueue(q);
  }

  addMemory(region: DmaRegion): void {
    this.device.addMemory(region);
  }

  notify(index: number): void {
    this.device.kick(index);
  }

  poll(): number {
    if (this.#closed || (this.#status & Status.DRIVER_OK) === 0) return 0;
    const d = this.device;
    d.run();
    if (!d.configChanged) return 0;
    d.configChanged = false;
    // 2.1.2: a device that needs a reset is lost to the driver until it resets it.
    return TransportEvent.CONFIG_CHANGED | (d.needsReset ? TransportEvent.DEVICE_LOST : 0);
  }

  close(): void {
    if (this.#closed) return;
    this.reset();
    this.#closed = true;
  }
}
