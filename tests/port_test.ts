/**
 * Port: the initialization sequence, feature negotiation, configuration checks, link handling
 * and control-command errors, against a transport that records what the driver does and plays a
 * small device (status register, config space, control queue answered from `poll()`).
 * The data path is covered by tests/ring_test.ts (rings played by hand) and, through this Port,
 * by tests/vhost_user_test.ts against DPDK's vhost PMD.
 */
import assert from "assert";
import type { DmaKind, DmaRegion } from "../ffi/dma.ts";
import { MbufPool } from "../mod/mbuf.ts";
import { Port } from "../mod/port.ts";
import {
  type QueueMemory,
  type RingLayout,
  TransportEvent,
  type VirtioTransport,
} from "../mod/transport/transport.ts";
import {
  Avail,
  bit,
  Ctrl,
  Desc,
  Feature,
  NetConfig,
  NetFeature,
  Status,
  Used,
} from "../mod/virtio/constants.ts";

interface FakeOptions {
  features?: number[];
  maxQueue?: number;
  queueSizeFixed?: boolean;
  acceptFeatures?: boolean;
  mtu?: number;
  maxPairs?: number;
  linkUp?: boolean;
  dmaKinds?: DmaKind[];
}

/** A recording transport with a device that has a status byte, a config space and a ctrl queue. */
class FakeTransport implements VirtioTransport {
  readonly name = "fake";
  readonly ringLayout: RingLayout = { placement: "separate", usedAlign: 4 };
  readonly dmaKinds: readonly DmaKind[];
  readonly queueSizeFixed: boolean;
  readonly calls: string[] = [];
  readonly commands: { cls: number; cmd: number; data: number[] }[] = [];
  readonly queues = new Map<number, QueueMemory>();
  readonly regions: DmaRegion[] = [];
  status = 0;
  driverFeatures = 0n;
  config = new Uint8Array(32);
  event = 0;
  #offer: bigint;
  #accept: boolean;
  #max: number;
  #ctrlSeen = 0;
  #ctrlUsed = 0;

  constructor(o: FakeOptions = {}) {
    this.#offer = 0n;
    for (const f of o.features ?? []) this.#offer |= bit(f);
    this.#accept = o.acceptFeatures ?? true;
    this.#max = o.maxQueue ?? 1024;
    this.queueSizeFixed = o.queueSizeFixed ?? false;
    this.dmaKinds = o.dmaKinds ?? ["memfd", "anon"];
    this.config.set([0x52, 0x54, 0, 1, 2, 3], NetConfig.MAC);
    this.config[NetConfig.STATUS] = (o.linkUp ?? true) ? NetConfig.S_LINK_UP : 0;
    this.config[NetConfig.MAX_VIRTQUEUE_PAIRS] = o.maxPairs ?? 1;
    this.config[NetConfig.MTU] = (o.mtu ?? 1500) & 0xff;
    this.config[NetConfig.MTU + 1] = (o.mtu ?? 1500) >> 8;
  }

  reset(): void {
    this.calls.push("reset");
    this.status = 0;
    this.queues.clear();
    this.#ctrlSeen = 0;
    this.#ctrlUsed = 0;
  }
  getStatus(): number {
    return this.status;
  }
  setStatus(s: number): void {
    this.calls.push(`status ${s}`);
    if ((s & Status.FEATURES_OK) !== 0 && !this.#accept) s &= ~Status.FEATURES_OK;
    this.status = s;
  }
  getDeviceFeatures(): bigint {
    return this.#offer;
  }
  setDriverFeatures(f: bigint): void {
    this.calls.push("features");
    this.driverFeatures = f;
  }
  readConfig(offset: number, length: number): Uint8Array {
    return this.config.slice(offset, offset + length);
  }
  queueMaxSize(index: number): number {
    return index <= 2 * 8 ? this.#max : 0;
  }
  setupQueue(q: QueueMemory): void {
    this.calls.push(`queue ${q.index} size ${q.size}`);
    this.queues.set(q.index, q);
  }
  addMemory(r: DmaRegion): void {
    this.calls.push("memory");
    this.regions.push(r);
  }
  notify(): void {}
  /** Raise `event` once; answer control commands with OK (5.1.6.5). */
  poll(): number {
    const ev = this.event;
    this.event = 0;
    const ctrlIndex = 2 * (has(this.driverFeatures, NetFeature.MQ) ? this.config[8] : 1);
    const q = this.queues.get(ctrlIndex);
    if (q) {
      const dv = new DataView(q.region.buffer);
      const availIdx = dv.getUint16(q.availOffset + Avail.IDX, true);
      while (this.#ctrlSeen !== availIdx) {
        const head = dv.getUint16(q.availOffset + Avail.RING + 2 * (this.#ctrlSeen % q.size), true);
        this.#ctrlSeen = (this.#ctrlSeen + 1) & 0xffff;
        const chain: { off: number; len: number }[] = [];
        for (let d = head;;) {
          const o = q.descOffset + Desc.SIZE * d;
          const addr = dv.getUint32(o, true) + dv.getUint32(o + 4, true) * 2 ** 32;
          chain.push({ off: addr - q.region.iovaBase, len: dv.getUint32(o + Desc.LEN, true) });
          const flags = dv.getUint16(o + Desc.FLAGS, true);
          if ((flags & Desc.F_NEXT) === 0) break;
          d = dv.getUint16(o + Desc.NEXT, true);
        }
        const u8 = q.region.u8;
        const data: number[] = [];
        for (const c of chain.slice(1, -1)) data.push(...u8.subarray(c.off, c.off + c.len));
        this.commands.push({ cls: u8[chain[0].off], cmd: u8[chain[0].off + 1], data });
        u8[chain[chain.length - 1].off] = Ctrl.OK;
        const e = q.usedOffset + Used.RING + Used.ELEM_SIZE * (this.#ctrlUsed % q.size);
        dv.setUint32(e, head, true);
        dv.setUint32(e + 4, 1, true);
        this.#ctrlUsed = (this.#ctrlUsed + 1) & 0xffff;
        dv.setUint16(q.usedOffset + Used.IDX, this.#ctrlUsed, true);
      }
    }
    return ev;
  }
  close(): void {}
}

function has(f: bigint, n: number): boolean {
  return (f & bit(n)) !== 0n;
}

const MODERN = [
  Feature.VERSION_1,
  NetFeature.MAC,
  NetFeature.STATUS,
  NetFeature.MRG_RXBUF,
  NetFeature.CTRL_VQ,
  NetFeature.CTRL_RX,
  NetFeature.CTRL_VLAN,
  NetFeature.CTRL_MAC_ADDR,
  NetFeature.MTU,
];

function withPort(
  fake: FakeOptions,
  fn: (p: Port, t: FakeTransport, pool: MbufPool, logs: string[]) => void,
  poolOpts: { headroom?: number; dataRoom?: number; count?: number; kind?: DmaKind } = {},
): void {
  const t = new FakeTransport(fake);
  const pool = new MbufPool({ count: 1024, kind: "memfd", ...poolOpts });
  const logs: string[] = [];
  const port = new Port(0, t, { log: (m) => logs.push(m) });
  try {
    fn(port, t, pool, logs);
  } finally {
    port.close();
    pool.close();
  }
}

Deno.test("port start: the 3.1.1 sequence, features intersected with the driver's", () => {
  withPort({ features: [...MODERN, NetFeature.GSO, Feature.RING_PACKED] }, (port, t, pool) => {
    port.configure({ pool, rxd: 128, txd: 64 });
    port.start();
    const A = Status.ACKNOWLEDGE;
    const D = Status.DRIVER;
    const F = Status.FEATURES_OK;
    assert.deepEqual(t.calls, [
      "reset",
      `status ${A}`,
      `status ${A | D}`,
      "features",
      `status ${A | D | F}`,
      "memory",
      "memory",
      "queue 0 size 128",
      "queue 1 size 64",
      "queue 2 size 64",
      `status ${A | D | F | Status.DRIVER_OK}`,
    ]);
    assert.equal(t.regions[1], pool.region);
    let want = 0n;
    for (const f of MODERN) want |= bit(f);
    assert.equal(port.features, want);
    assert.equal(t.driverFeatures, want);
    assert.deepEqual([...port.mac], [0x52, 0x54, 0, 1, 2, 3]);
    assert.equal(port.linkUp, true);
    assert.equal(pool.available, 1024 - 128);
    port.stop();
    assert.equal(t.calls.at(-1), "reset");
    assert.equal(pool.available, 1024);
    assert.equal(port.started, false);
  });
});

Deno.test("port start: a legacy device gets no FEATURES_OK and a 10-byte header", () => {
  withPort({ features: [NetFeature.MAC, Feature.ANY_LAYOUT] }, (port, t, pool) => {
    port.configure({ pool });
    port.start();
    assert.ok(
      !t.calls.some((c) =>
        c === `status ${Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK}`
      ),
    );
    assert.equal(t.status, Status.ACKNOWLEDGE | Status.DRIVER | Status.DRIVER_OK);
    assert.equal(port.linkUp, true); // no STATUS feature: assumed up
  }, { headroom: 10 });
});

Deno.test("port start: a device that refuses the features fails the start, status FAILED", () => {
  withPort({ features: MODERN, acceptFeatures: false }, (port, t, pool) => {
    port.configure({ pool });
    assert.throws(() => port.start(), /port 0: the device did not accept the features/);
    assert.equal(t.status, Status.FAILED);
    assert.equal(port.started, false);
    assert.equal(pool.available, 1024);
  });
});

Deno.test("port configure: the header must fit the headroom (12 bytes modern, 10 legacy)", () => {
  withPort({ features: MODERN }, (port, _t, pool) => {
    assert.throws(
      () => port.configure({ pool }),
      /^Error: port 0: the mbuf pool's headroom \(10 bytes\) cannot hold the 12-byte virtio-net header; use a pool with headroom >= 12$/,
    );
  }, { headroom: 10 });
  withPort({ features: [NetFeature.MAC] }, (port, _t, pool) => {
    assert.throws(() => port.configure({ pool }), /headroom \(8 bytes\) cannot hold the 10-byte/);
  }, { headroom: 8 });
});

Deno.test("port configure: refused while started; the port reconfigures after stop", () => {
  withPort({ features: MODERN }, (port, t, pool) => {
    port.configure({ pool });
    port.start();
    assert.throws(
      () => port.configure({ pool, rxd: 64 }),
      /^Error: port 0: .*stop the port first$/,
    );
    port.stop();
    port.configure({ pool, rxd: 64 });
    port.start();
    assert.ok(t.calls.includes("queue 0 size 64"));
    assert.equal(pool.available, 1024 - 64);
  });
});

Deno.test("port configure: queue sizes are powers of two up to the device's maximum", () => {
  withPort({ features: MODERN, maxQueue: 256 }, (port, t, pool) => {
    assert.throws(
      () => port.configure({ pool, rxd: 100 }),
      /--rxd 100 must be a power of two no larger than the device's 256/,
    );
    assert.throws(() => port.configure({ pool, txd: 512 }), /--txd 512 must be a power of two/);
    port.configure({ pool, rxd: 0, txd: 32 });
    port.start();
    assert.ok(t.calls.includes("queue 0 size 256"));
    assert.ok(t.calls.includes("queue 1 size 32"));
  });
});

Deno.test("port configure: a fixed queue size gets one warning and is used", () => {
  withPort({ features: MODERN, maxQueue: 256, queueSizeFixed: true }, (port, t, pool, logs) => {
    port.configure({ pool, rxd: 512, txd: 1024 });
    port.start();
    assert.deepEqual(logs, [
      "port 0: warning: --rxd 512 ignored, the device's queue size 256 is fixed; " +
      "--txd 1024 ignored, the device's queue size 256 is fixed",
    ]);
    assert.ok(t.calls.includes("queue 0 size 256"));
    assert.ok(t.calls.includes("queue 1 size 256"));
  });
});

Deno.test("port configure: the pool must be memory the transport can reach", () => {
  withPort({ features: MODERN, dmaKinds: ["memfd"] }, (port, _t, pool) => {
    assert.throws(
      () => port.configure({ pool }),
      /the mbuf pool is anon memory, which fake cannot reach \(it needs one of: memfd\)/,
    );
  }, { kind: "anon" });
});

Deno.test("port configure: MTU against the device's maximum and the buffers", () => {
  withPort({ features: MODERN, mtu: 1500 }, (port, _t, pool) => {
    assert.throws(
      () => port.configure({ pool, mtu: 9000 }),
      /MTU 9000 is not possible: the device's maximum is 1500/,
    );
  });
  withPort(
    { features: MODERN.filter((f) => f !== NetFeature.MRG_RXBUF), mtu: 9000 },
    (port, _t, pool) => {
      assert.throws(
        () => port.configure({ pool, mtu: 9000 }),
        /MTU 9000 needs 9018-byte frames in one buffer without mergeable RX buffers \(VIRTIO_NET_F_MRG_RXBUF not offered\), but the pool's data room is 2048; use a pool with dataRoom >= 9018/,
      );
    },
  );
  withPort({ features: MODERN, mtu: 1400 }, (port, _t, pool) => {
    port.configure({ pool }); // the default MTU follows a smaller device maximum
    assert.throws(() => port.configure({ pool, mtu: 1500 }), /device's maximum is 1400/);
  });
  withPort({ features: MODERN, mtu: 9000 }, (port, _t, pool) => {
    port.configure({ pool, mtu: 9000 }); // mergeable buffers carry it
    assert.throws(
      () => port.configure({ pool, mtu: 9000, mrgRxbuf: false }),
      /MRG_RXBUF turned off/,
    );
  });
});

Deno.test("port: more than one queue pair needs MQ; with MQ the pairs are set", () => {
  withPort({ features: MODERN, maxPairs: 2 }, (port, _t, pool) => {
    assert.throws(() => port.configure({ pool, queues: 2 }), /2 queue pairs need VIRTIO_NET_F_MQ/);
  });
  withPort({ features: [...MODERN, NetFeature.MQ], maxPairs: 4 }, (port, t, pool) => {
    port.configure({ pool, queues: 2, rxd: 64, txd: 64 });
    port.start();
    // queues 0..3 are the two pairs, the control queue is 2 * max_virtqueue_pairs (5.1.2)
    assert.deepEqual([...t.queues.keys()].sort((a, b) => a - b), [0, 1, 2, 3, 8]);
    assert.deepEqual(t.commands, [{ cls: Ctrl.MQ, cmd: Ctrl.MQ_VQ_PAIRS_SET, data: [2, 0] }]);
  });
});

Deno.test("port control: commands reach the device with the spec's payloads", () => {
  withPort({ features: MODERN }, (port, t, pool) => {
    port.configure({ pool });
    port.setPromiscuous(false); // before start: remembered and sent at start
    port.start();
    port.setAllMulticast(true);
    const mc = Uint8Array.of(1, 0, 0x5e, 0, 0, 1);
    port.setMacTable([], [mc]);
    port.setMacAddress(Uint8Array.of(2, 1, 1, 1, 1, 1));
    port.addVlan(100);
    port.removeVlan(100);
    assert.deepEqual(t.commands, [
      { cls: Ctrl.RX, cmd: Ctrl.RX_PROMISC, data: [0] },
      { cls: Ctrl.RX, cmd: Ctrl.RX_ALLMULTI, data: [1] },
      { cls: Ctrl.MAC, cmd: Ctrl.MAC_TABLE_SET, data: [0, 0, 0, 0, 1, 0, 0, 0, ...mc] },
      { cls: Ctrl.MAC, cmd: Ctrl.MAC_ADDR_SET, data: [2, 1, 1, 1, 1, 1] },
      { cls: Ctrl.VLAN, cmd: Ctrl.VLAN_ADD, data: [100, 0] },
      { cls: Ctrl.VLAN, cmd: Ctrl.VLAN_DEL, data: [100, 0] },
    ]);
    assert.deepEqual([...port.mac], [2, 1, 1, 1, 1, 1]);
    // a restart applies the filters again
    t.commands.length = 0;
    port.stop();
    port.start();
    assert.deepEqual(t.commands.map((c) => [c.cls, c.cmd]), [
      [Ctrl.RX, Ctrl.RX_PROMISC],
      [Ctrl.RX, Ctrl.RX_ALLMULTI],
      [Ctrl.MAC, Ctrl.MAC_TABLE_SET],
      [Ctrl.MAC, Ctrl.MAC_ADDR_SET],
    ]);
  });
});

Deno.test("port control: a missing feature is an error naming it and the flag to drop", () => {
  withPort({ features: MODERN.filter((f) => f !== NetFeature.CTRL_VLAN) }, (port, _t, pool) => {
    port.configure({ pool });
    port.start();
    assert.throws(
      () => port.addVlan(5),
      /^Error: port 0: the device does not offer VIRTIO_NET_F_CTRL_VLAN, so VLAN filters cannot be set; run without --vlan-filter$/,
    );
    assert.throws(() => port.addVlan(4096), /VLAN id 4096 is not in 0..4095/);
  });
  withPort({ features: [Feature.VERSION_1, NetFeature.MAC] }, (port, _t, pool) => {
    port.configure({ pool });
    assert.throws(
      () => port.setPromiscuous(true),
      /the device does not offer VIRTIO_NET_F_CTRL_VQ, so promiscuous mode cannot be set; run without --promisc/,
    );
    assert.throws(() => port.setMacAddress(Uint8Array.of(2, 0, 0, 0, 0, 1)), /run without --mac/);
  });
  withPort({ features: MODERN }, (port, _t, pool) => {
    port.configure({ pool, ctrlVq: false });
    assert.throws(
      () => port.setAllMulticast(true),
      /control queue is turned off.*run without --allmulti/,
    );
  });
});

Deno.test("port link: read from config status, re-read on CONFIG_CHANGED, reported once", () => {
  withPort({ features: MODERN, linkUp: false }, (port, t, pool) => {
    port.configure({ pool });
    port.start();
    assert.equal(port.linkUp, false);
    const seen: boolean[] = [];
    port.onLinkChange = (up) => seen.push(up);
    t.config[NetConfig.STATUS] = NetConfig.S_LINK_UP;
    assert.equal(port.poll(), 0); // no event: nothing re-read
    assert.equal(port.linkUp, false);
    t.event = TransportEvent.CONFIG_CHANGED;
    assert.equal(port.poll(), TransportEvent.CONFIG_CHANGED);
    assert.equal(port.linkUp, true);
    t.event = TransportEvent.CONFIG_CHANGED;
    port.poll();
    t.config[NetConfig.STATUS] = 0;
    t.event = TransportEvent.CONFIG_CHANGED;
    port.poll();
    assert.deepEqual(seen, [true, false]);
  });
});

Deno.test("port: a device that returns is set up again, frames in flight counted as dropped", () => {
  withPort({ features: MODERN }, (port, t, pool) => {
    port.configure({ pool, rxd: 64, txd: 64 });
    port.start();
    const m = pool.fromBytes(new Uint8Array(60));
    assert.equal(port.txBurst(0, Uint32Array.of(m), 1), 1);
    t.event = TransportEvent.DEVICE_LOST;
    port.poll();
    assert.equal(port.linkUp, false);
    const resets = t.calls.filter((c) => c === "reset").length;
    t.event = TransportEvent.DEVICE_RETURNED | TransportEvent.CONFIG_CHANGED;
    port.poll();
    assert.equal(t.calls.filter((c) => c === "reset").length, resets + 2); // teardown + start
    assert.equal(port.started, true);
    assert.equal(port.linkUp, true);
    assert.equal(port.stats.txDropped, 1);
    assert.equal(pool.available, 1024 - 64);
  });
});

Deno.test("port: without VIRTIO_NET_F_MAC the address is random, unicast, locally administered", () => {
  withPort({ features: [Feature.VERSION_1] }, (port, _t, pool) => {
    port.configure({ pool });
    port.start();
    assert.equal(port.mac[0] & 0x03, 0x02);
    assert.ok(port.mac.some((b, i) => i > 0 && b !== 0));
  });
});
