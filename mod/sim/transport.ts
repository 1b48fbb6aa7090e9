/**
 * `sim:` ports: a virtio-net device simulated in this process (mod/sim/device.ts) behind the
 * VirtioTransport interface, with a wire (mod/sim/wire.ts) that generates and checks frames.
 *
 * The transport holds what a real device's registers would: the status byte (2.1), the offered
 * and accepted features (2.2, with FEATURES_OK refused for unoffered bits), the device
 * configuration (5.1.4: mac, status, max_virtqueue_pairs, mtu) and the queues. The device runs
 * inside `poll()`, which the forwarding loop calls between bursts.
 *
 * Spec options (`sim:NAME,k=v,...`): gen=on|off, rate=PPS, size=N[+N...], mrg=0|1, qsize=N,
 * mtu=N, ctrl=0|1, ctrl_vlan=0|1, legacy=0|1, link=up|down, mac=XX:XX:XX:XX:XX:XX,
 * evil=bad-id|bad-len|bad-num-buffers|idx-jump.
 */
import type { DmaKind, DmaRegion } from "../../ffi/dma.ts";
import type { QueueMemory, RingLayout, VirtioTransport } from "../transport/transport.ts";
import { TransportEvent } from "../transport/transport.ts";
import {
  bit,
  Feature,
  has,
  MAX_QUEUE_SIZE,
  NetConfig,
  NetFeature,
  netHdrSize,
  NetQueue,
  Status,
} from "../virtio/constants.ts";
import { EVIL_MODES, type EvilMode, SimDevice } from "./device.ts";
import { type GeneratorOptions, SimWire } from "./wire.ts";

export interface SimOptions {
  name: string;
  mac?: Uint8Array;
  /** Only 1 is supported. */
  queuePairs?: number;
  /** Largest queue size offered (default 1024). */
  maxQueueSize?: number;
  mrgRxbuf?: boolean;
  ctrlVq?: boolean;
  ctrlRx?: boolean;
  ctrlVlan?: boolean;
  mtu?: number;
  /** Offer no VERSION_1 (a legacy device: 10-byte header without MRG_RXBUF). */
  legacy?: boolean;
  linkUp?: boolean;
  gen?: GeneratorOptions | false;
  /** Deliberate misbehaviour (mod/sim/device.ts). */
  evil?: EvilMode | null;
}

const SPEC_OPTIONS = [
  "gen",
  "rate",
  "size",
  "mrg",
  "qsize",
  "mtu",
  "ctrl",
  "ctrl_vlan",
  "legacy",
  "link",
  "mac",
  "evil",
];

let instances = 0;

export class SimTransport implements VirtioTransport {
  readonly name: string;
  readonly ringLayout: RingLayout = { placement: "separate", usedAlign: 4 };
  readonly dmaKinds: readonly DmaKind[] = ["memfd", "anon"];
  readonly queueSizeFixed = false;
  readonly wire: SimWire;
  readonly device: SimDevice;
  readonly offered: bigint;
  readonly #maxQueue: number;
  readonly #mtu: number;
  #status = 0;
  #accepted = 0n;
  #link: boolean;
  #configChanged = false;
  #closed = false;

  constructor(opts: SimOptions) {
    const n = ++instances;
    this.name = `sim:${opts.name}`;
    if ((opts.queuePairs ?? 1) !== 1) {
      throw new Error(`${this.name}: the simulated device has one queue pair`);
    }
    const mac = opts.mac
      ? Uint8Array.from(opts.mac)
      : Uint8Array.of(0x02, 0x51, 0x4d, 0, n >> 8, n);
    this.wire = new SimWire(opts.gen ?? {}, n);
    this.wire.dst.set(mac);
    this.device = new SimDevice(this.wire, mac);
    this.device.evil = opts.evil ?? null;
    this.#maxQueue = opts.maxQueueSize ?? 1024;
    this.#mtu = opts.mtu ?? 0;
    this.#link = opts.linkUp ?? true;
    const f: number[] = [NetFeature.MAC, NetFeature.STATUS, Feature.ANY_LAYOUT];
    if (!opts.legacy) f.push(Feature.VERSION_1);
    if (opts.mrgRxbuf ?? true) f.push(NetFeature.MRG_RXBUF);
    if (opts.mtu !== undefined) f.push(NetFeature.MTU);
    if (opts.ctrlVq ?? true) {
      f.push(NetFeature.CTRL_VQ, NetFeature.CTRL_MAC_ADDR, NetFeature.GUEST_ANNOUNCE);
      if (opts.ctrlRx ?? true) f.push(NetFeature.CTRL_RX);
      if (opts.ctrlVlan ?? true) f.push(NetFeature.CTRL_VLAN);
    }
    this.offered = f.reduce((a, b) => a | bit(b), 0n);
  }

  /** Build from a port spec's options (see the module comment); one-line errors. */
  static fromSpec(name: string, options: Record<string, string>): SimTransport {
    const where = `sim:${name}`;
    for (const k of Object.keys(options)) {
      if (!SPEC_OPTIONS.includes(k)) {
        throw new Error(`${where}: unknown option '${k}' (known: ${SPEC_OPTIONS.join(", ")})`);
      }
    }
    const o = options;
    const flag = (k: string, yes: string, no: string): boolean | undefined => {
      if (o[k] === undefined) return undefined;
      if (o[k] === yes || o[k] === "") return true;
      if (o[k] === no) return false;
      throw new Error(`${where}: ${k}=${o[k]}: expected ${yes} or ${no}`);
    };
    const int = (k: string, min: number, max: number): number | undefined => {
      if (o[k] === undefined) return undefined;
      if (!/^\d+$/.test(o[k]) || Number(o[k]) < min || Number(o[k]) > max) {
        throw new Error(`${where}: ${k}=${o[k]}: expected an integer from ${min} to ${max}`);
      }
      return Number(o[k]);
    };
    let sizes: number[] | undefined;
    if (o.size !== undefined) {
      sizes = o.size.split("+").map((s) => {
        if (!/^\d+$/.test(s) || Number(s) < 60 || Number(s) > 65535 - 14) {
          throw new Error(
            `${where}: size=${o.size}: expected lengths from 60 to 65521 joined by +`,
          );
        }
        return Number(s);
      });
    }
    let mac: Uint8Array | undefined;
    if (o.mac !== undefined) {
      const parts = o.mac.split(":");
      if (parts.length !== 6 || parts.some((p) => !/^[0-9a-fA-F]{2}$/.test(p))) {
        throw new Error(`${where}: mac=${o.mac}: expected six hex bytes like 02:00:00:00:00:01`);
      }
      mac = Uint8Array.from(parts.map((p) => parseInt(p, 16)));
    }
    if (o.evil !== undefined && !EVIL_MODES.includes(o.evil as EvilMode)) {
      throw new Error(`${where}: evil=${o.evil}: expected one of ${EVIL_MODES.join(", ")}`);
    }
    const gen = flag("gen", "on", "off");
    const rate = int("rate", 0, 1e9);
    return new SimTransport({
      name,
      mac,
      gen: gen === false ? false : { rate, sizes },
      mrgRxbuf: flag("mrg", "1", "0"),
      maxQueueSize: int("qsize", 1, MAX_QUEUE_SIZE),
      mtu: int("mtu", 68, 65535),
      ctrlVq: flag("ctrl", "1", "0"),
      ctrlVlan: flag("ctrl_vlan", "1", "0"),
      legacy: flag("legacy", "1", "0"),
      linkUp: flag("link", "up", "down"),
      evil: (o.evil as EvilMode | undefined) ?? null,
    });
  }

  /** Change the link (5.1.4 status); the next poll reports CONFIG_CHANGED. */
  setLink(up: boolean): void {
    if (up === this.#link) return;
    this.#link = up;
    this.#configChanged = true;
  }

  get linkUp(): boolean {
    return this.#link;
  }

  reset(): void {
    this.#status = 0;
    this.#accepted = 0n;
    this.#configChanged = false;
    this.device.reset();
  }

  getStatus(): number {
    return this.#status | (this.device.needsReset ? Status.DEVICE_NEEDS_RESET : 0);
  }

  setStatus(status: number): void {
    if (status === 0) return this.reset();
    // 3.1.1: FEATURES_OK sticks only if every accepted feature was offered.
    if ((status & Status.FEATURES_OK) !== 0 && (this.#accepted & ~this.offered) !== 0n) {
      status &= ~Status.FEATURES_OK;
    }
    if ((status & Status.FEATURES_OK) !== 0 || (status & Status.DRIVER_OK) !== 0) {
      this.device.negotiated(
        netHdrSize(this.#accepted),
        has(this.#accepted, NetFeature.MRG_RXBUF),
      );
    }
    this.#status = status;
  }

  getDeviceFeatures(): bigint {
    return this.offered;
  }

  setDriverFeatures(features: bigint): void {
    this.#accepted = features;
  }

  readConfig(offset: number, length: number): Uint8Array {
    const c = new Uint8Array(12);
    c.set(this.device.mac, NetConfig.MAC);
    const st = this.#link ? NetConfig.S_LINK_UP : 0;
    c[NetConfig.STATUS] = st;
    c[NetConfig.MAX_VIRTQUEUE_PAIRS] = 1;
    c[NetConfig.MTU] = this.#mtu & 0xff;
    c[NetConfig.MTU + 1] = this.#mtu >> 8;
    const out = new Uint8Array(length);
    out.set(c.subarray(Math.min(offset, 12), Math.min(offset + length, 12)));
    return out;
  }

  queueMaxSize(index: number): number {
    const ctrl = has(this.offered, NetFeature.CTRL_VQ);
    if (index === NetQueue.rx(0) || index === NetQueue.tx(0)) return this.#maxQueue;
    if (ctrl && index === NetQueue.ctrl(1)) return this.#maxQueue;
    return 0;
  }

  setupQueue(q: QueueMemory): void {
    if (q.size > this.queueMaxSize(q.index)) {
      throw new Error(`${this.name}: queue ${q.index} size ${q.size} is not available`);
    }
    const role = q.index === NetQueue.rx(0) ? "rx" : q.index === NetQueue.tx(0) ? "tx" : "ctrl";
    this.device.setupQueue(role, q);
  }

  addMemory(region: DmaRegion): void {
    this.device.addMemory(region);
  }

  notify(_index: number): void {
    // The device polls (it set VRING_USED_F_NO_NOTIFY); a kick needs no action.
  }

  poll(): number {
    if (this.#closed) return 0;
    let ev = 0;
    if (this.#configChanged) {
      this.#configChanged = false;
      if ((this.#status & Status.DRIVER_OK) !== 0) ev |= TransportEvent.CONFIG_CHANGED;
    }
    if ((this.#status & Status.DRIVER_OK) !== 0 && this.#link) this.device.run();
    return ev;
  }

  close(): void {
    this.#closed = true;
    this.reset();
  }
}
