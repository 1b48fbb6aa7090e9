/**
 * A simulated device whose data queues are served by several threads: each worker thread that
 * forwards on some of its queues runs a copy of the device (mod/sim/device.ts) with those queues
 * only, and a wire of its own that generates frames for its receive queues and checks the frames
 * its transmit queues send. The device in the main thread keeps what is shared: configuration,
 * the control queue, the link, reset (it serves its control queue only, `serveData` false).
 *
 * A copy is made once the driver has set the device up (features, filters, multiqueue, RSS): it
 * takes that state over and does not change it. Counters add up: every frame is generated,
 * delivered, missed or checked by exactly one copy's wire. A paced generator's rate is shared out
 * by the part of the frames each copy's queues take (their share of the indirection table under
 * RSS, of the active queue pairs otherwise).
 */
import type { RssState } from "./rss.ts";
import { type EvilMode, type RxFilter, SimDevice } from "./device.ts";
import type { SimTransport } from "./transport.ts";
import { SimWire } from "./wire.ts";

/** A device's state as its copies need it (structured-cloneable, for a Worker's message). */
export interface SimShare {
  mac: Uint8Array;
  queuePairs: number;
  notify: boolean;
  linkUp: boolean;
  evil: EvilMode | null;
  features: bigint;
  activePairs: number;
  rss: RssState | null;
  filter: Omit<RxFilter, "vlans"> & { vlans: number[] };
  wire: {
    rate: number;
    sizes: number[];
    stream: number;
    flows: number;
    generating: boolean;
  };
}

/** The state of `t`'s device, for copies; from now on its data queues are theirs. */
export function shareSim(t: SimTransport): SimShare {
  const d = t.device;
  const w = t.wire;
  d.serveData = false;
  return {
    mac: Uint8Array.from(d.mac),
    queuePairs: d.queuePairs,
    notify: d.notifyMode,
    linkUp: d.linkUp,
    evil: d.evil,
    features: d.features,
    activePairs: d.activePairs,
    rss: d.rss,
    filter: { ...d.filter, vlans: [...d.filter.vlans] },
    wire: {
      rate: w.rate,
      sizes: [...w.sizes],
      stream: w.stream,
      flows: w.flows,
      generating: w.generating,
    },
  };
}

/**
 * The share of the device's received frames that receive queues `rxQueues` take: what a copy
 * serving them generates of a paced rate.
 */
export function rxShare(s: SimShare, rxQueues: number[]): number {
  if (s.rss === null) return rxQueues.filter((q) => q < s.activePairs).length / s.activePairs;
  let mine = 0;
  for (let i = 0; i < s.rss.table.length; i++) if (rxQueues.includes(s.rss.table[i])) mine++;
  return mine / s.rss.table.length;
}

/**
 * A copy of the shared device for one thread, generating `rateShare` of a paced rate; set its
 * queues up with `setupQueue` (only those the thread serves) after `addMemory`.
 */
export function simCopy(s: SimShare, rateShare: number): SimDevice {
  const wire = new SimWire(
    {
      rate: s.wire.rate * rateShare,
      sizes: s.wire.sizes,
      stream: s.wire.stream,
      flows: s.wire.flows,
      start: s.wire.generating,
    },
    s.wire.stream,
    s.queuePairs,
  );
  const d = new SimDevice(wire, {
    mac: s.mac,
    queuePairs: s.queuePairs,
    notify: s.notify,
    linkUp: s.linkUp,
    evil: s.evil,
  });
  d.negotiated(s.features);
  d.activePairs = s.activePairs;
  Object.assign(d.filter, { ...s.filter, vlans: new Set(s.filter.vlans) });
  d.setRss(s.rss);
  return d;
}
