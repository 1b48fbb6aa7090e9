/**
 * Options of a simulated device, and the parser of the `sim:NAME,k=v,...` port spec options
 * (one-line errors for unknown options and bad values).
 */
import { parseOwnMac } from "../mac.ts";
import { TEST_FLOWS } from "../testframe.ts";
import { MAX_QUEUE_SIZE } from "../virtio/constants.ts";
import { CTRL_MIN_ENTRIES } from "../virtio/ctrl_queue.ts";
import { EVIL_MODES, type EvilMode, PACKED_ONLY_EVIL, SPLIT_ONLY_EVIL } from "./device.ts";
import type { GeneratorOptions } from "./wire.ts";

export interface SimOptions {
  name: string;
  mac?: Uint8Array;
  /** Queue pairs (default 1); more than 1 offers VIRTIO_NET_F_MQ (needs the control queue). */
  queuePairs?: number;
  /** Largest queue size offered (default 1024). */
  maxQueueSize?: number;
  /** The device decides queue sizes (like legacy PCI): only `maxQueueSize` is accepted. */
  queueSizeFixed?: boolean;
  mrgRxbuf?: boolean;
  ctrlVq?: boolean;
  ctrlRx?: boolean;
  ctrlVlan?: boolean;
  /**
   * Offer VIRTIO_NET_F_RSS (default true with the control queue): once the driver configures it,
   * received frames are steered by their Toeplitz hash (mod/sim/rss.ts).
   */
  rss?: boolean;
  /** Offer VIRTIO_NET_F_MTU with this MTU. */
  mtu?: number;
  /** Offer no VERSION_1 (a legacy device: 10-byte header without MRG_RXBUF). */
  legacy?: boolean;
  /** Offer VIRTIO_F_EVENT_IDX. */
  eventIdx?: boolean;
  /**
   * Offer VIRTIO_F_IN_ORDER: once negotiated the device checks that the driver keeps ring order
   * and writes one used entry for each batch it can (2.7.9).
   */
  inOrder?: boolean;
  /** Offer VIRTIO_F_RING_PACKED (2.8): the driver then uses packed rings (needs VERSION_1). */
  packed?: boolean;
  /**
   * Offer VIRTIO_F_INDIRECT_DESC (2.7.5.3, 2.8.7): the driver then sends multi-segment frames
   * through indirect tables, which the device reads (mod/sim/indirect.ts).
   */
  indirect?: boolean;
  /** The device wants kicks and works on a queue only after one (default: it polls). */
  notify?: boolean;
  linkUp?: boolean;
  gen?: GeneratorOptions | false;
  /** Deliberate misbehaviour (mod/sim/device.ts). */
  evil?: EvilMode | null;
}

/** Most queue pairs a simulated device offers. */
export const SIM_MAX_PAIRS = 16;

const SPEC_OPTIONS: Record<string, string> = {
  gen: "on|off",
  rate: "PPS",
  size: "N[+N...]",
  mrg: "0|1",
  qsize: "N",
  qfixed: "0|1",
  queues: "N",
  mtu: "N",
  ctrl: "0|1",
  ctrl_rx: "0|1",
  ctrl_vlan: "0|1",
  rss: "0|1",
  flows: "N",
  legacy: "0|1",
  event_idx: "0|1",
  in_order: "0|1",
  packed: "0|1",
  indirect: "0|1",
  notify: "0|1",
  link: "up|down",
  evil: EVIL_MODES.join("|"),
  mac: "XX:XX:XX:XX:XX:XX",
  stream: "N",
};

/** Parse `sim:NAME` spec options into SimOptions; throws one-line errors. */
export function parseSimSpec(name: string, o: Record<string, string>): SimOptions {
  const where = `sim:${name}`;
  if (!/^[A-Za-z0-9_.-]+$/.test(name)) {
    throw new Error(`${where}: a sim port needs a name of letters, digits, '_', '.' or '-'`);
  }
  for (const k of Object.keys(o)) {
    if (!(k in SPEC_OPTIONS)) {
      const known = Object.entries(SPEC_OPTIONS).map(([n, v]) => `${n}=${v}`).join(", ");
      throw new Error(`${where}: unknown option '${k}' (known: ${known})`);
    }
  }
  const flag = (k: string, yes: string, no: string): boolean | undefined => {
    if (o[k] === undefined) return undefined;
    if (o[k] === yes || o[k] === "") return true; // a bare `key` turns it on
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
      if (!/^\d+$/.test(s) || Number(s) < 60 || Number(s) > 65535) {
        throw new Error(
          `${where}: size=${o.size}: expected frame lengths from 60 to 65535 joined by +`,
        );
      }
      return Number(s);
    });
  }
  const mac = o.mac === undefined ? undefined : parseOwnMac(`${where}: mac=${o.mac}`, o.mac);
  if (o.evil !== undefined && !EVIL_MODES.includes(o.evil as EvilMode)) {
    throw new Error(`${where}: evil=${o.evil}: expected one of ${EVIL_MODES.join(", ")}`);
  }
  const qsize = int("qsize", 1, MAX_QUEUE_SIZE);
  if (qsize !== undefined && (qsize & (qsize - 1)) !== 0) {
    throw new Error(`${where}: qsize=${qsize}: expected a power of two (2.7: split ring sizes)`);
  }
  const ctrlVq = flag("ctrl", "1", "0");
  if (qsize !== undefined && qsize < CTRL_MIN_ENTRIES && ctrlVq !== false) {
    // Every queue of a sim has this size, the control queue too (see CtrlQueue).
    throw new Error(
      `${where}: qsize=${qsize}: the control queue needs ${CTRL_MIN_ENTRIES} entries; ` +
        `use ctrl=0 or qsize >= ${CTRL_MIN_ENTRIES}`,
    );
  }
  const packed = flag("packed", "1", "0");
  const legacy = flag("legacy", "1", "0");
  if (packed && legacy) {
    throw new Error(
      `${where}: packed=1 needs VERSION_1, which a legacy device (legacy=1) does not have (2.8)`,
    );
  }
  const evil = o.evil as EvilMode | undefined;
  if (evil !== undefined && PACKED_ONLY_EVIL.includes(evil) && !packed) {
    throw new Error(`${where}: evil=${evil} bends a packed ring: add packed=1`);
  }
  if (evil !== undefined && SPLIT_ONLY_EVIL.includes(evil) && packed) {
    throw new Error(`${where}: evil=${evil} needs a split ring (a packed ring has no used index)`);
  }
  const gen = flag("gen", "on", "off");
  const rate = int("rate", 0, 1e9);
  const stream = int("stream", 0, 0xffff);
  const flows = int("flows", 1, TEST_FLOWS);
  return {
    name,
    mac,
    // gen=off keeps rate/size/stream for a generator started later (wire.startGenerator()).
    gen: { rate, sizes, stream, flows, start: gen ?? true },
    mrgRxbuf: flag("mrg", "1", "0"),
    maxQueueSize: qsize,
    queueSizeFixed: flag("qfixed", "1", "0"),
    queuePairs: int("queues", 1, SIM_MAX_PAIRS),
    mtu: int("mtu", 68, 65535),
    ctrlVq,
    ctrlRx: flag("ctrl_rx", "1", "0"),
    ctrlVlan: flag("ctrl_vlan", "1", "0"),
    rss: flag("rss", "1", "0"),
    legacy,
    packed,
    indirect: flag("indirect", "1", "0"),
    eventIdx: flag("event_idx", "1", "0"),
    inOrder: flag("in_order", "1", "0"),
    notify: flag("notify", "1", "0"),
    linkUp: flag("link", "up", "down"),
    evil: (o.evil as EvilMode | undefined) ?? null,
  };
}
