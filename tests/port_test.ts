/**
 * Port: the initialization sequence, feature negotiation, configuration checks, link handling
 * and control-command errors, against a transport that records what the driver does and plays a
 * small device (status register, config space, control queue answered from `poll()`).
 * Then the data path through the Port against the simulated device (mod/sim/, written apart from
 * the driver): frames through its wire, byte-exact. tests/ring_test.ts plays the rings by hand;
 * tests/vhost_user_test.ts runs this Port against DPDK's vhost PMD.
 */
import assert from "assert";
import type { DmaKind, DmaRegion } from "../ffi/dma.ts";
import { MbufFlag, MbufPool, NONE } from "../mod/mbuf.ts";
import { Port, type PortConfig, ringRoomFor } from "../mod/port.ts";
import { SimTransport } from "../mod/sim/transport.ts";
import { checkTestFrame, FrameCheck, writeTestFrame } from "../mod/testframe.ts";
import {
  type QueueMemory,
  type RingLayout,
  TransportEvent,
  type VirtioTransport,
} from "../mod/virtio/transport.ts";
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
  withPort(
    { features: [...MODERN, NetFeature.GSO, Feature.NOTIFICATION_DATA] },
    (port, t, pool) => {
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
      // MRG_RXBUF is left out: frames of the default MTU fit one buffer.
      let want = 0n;
      for (const f of MODERN) if (f !== NetFeature.MRG_RXBUF) want |= bit(f);
      assert.equal(port.features, want);
      assert.equal(t.driverFeatures, want);
      assert.deepEqual([...port.mac], [0x52, 0x54, 0, 1, 2, 3]);
      assert.equal(port.linkUp, true);
      assert.equal(pool.available, 1024 - 128);
      port.stop();
      assert.equal(t.calls.at(-1), "reset");
      assert.equal(pool.available, 1024);
      assert.equal(port.started, false);
    },
  );
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
    // The feature word in hex, marked as such.
    assert.throws(
      () => port.start(),
      /port 0: the device did not accept the features 0x[0-9a-f]{9,}$/,
    );
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
        /MTU 9000 needs 9018-byte frames in one buffer without mergeable RX buffers \(VIRTIO_NET_F_MRG_RXBUF not offered\), but the pool's data room is 2048: allow mergeable buffers \(mrg=1 on sim and vhost-user ports\), lower the MTU to at most 2030, or use a pool with dataRoom >= 9018/,
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

Deno.test("port start: MRG_RXBUF by default only when a frame of the MTU needs two buffers", () => {
  const mrg = (cfg: { mtu?: number; mrgRxbuf?: boolean }, dataRoom = 2048, offer = MODERN) => {
    let got = false;
    withPort({ features: offer, mtu: 9000 }, (port, _t, pool) => {
      port.configure({ pool, ...cfg });
      port.start();
      got = has(port.features, NetFeature.MRG_RXBUF);
      port.stop();
    }, { dataRoom });
    return got;
  };
  assert.equal(mrg({}), false); // 1500: 1518-byte frames (+ a VLAN tag) in 2048-byte buffers
  assert.equal(mrg({ mtu: 2030 }), false); // 2048-byte frames still fit
  assert.equal(mrg({ mtu: 2031 }), true);
  assert.equal(mrg({ mtu: 9000 }), true);
  assert.equal(mrg({ mtu: 9000 }, 9018), false); // a pool with room for the whole frame
  assert.equal(mrg({ mrgRxbuf: true }), true);
  assert.equal(mrg({ mtu: 2031, mrgRxbuf: false }, 2049), false);
  // Asked for but not offered: not negotiated (and a frame that needs it fails configure above).
  assert.equal(
    mrg({ mrgRxbuf: true }, 2048, MODERN.filter((f) => f !== NetFeature.MRG_RXBUF)),
    false,
  );
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
    // Dropped, and no longer counted as sent.
    assert.equal(port.stats.txPackets, 0);
    assert.equal(port.stats.txBytes, 0);
    assert.equal(pool.available, 1024 - 64);
  });
});

Deno.test("port: at a loss, frames the device finished count as sent, the rest as dropped", () => {
  withPort({ features: MODERN }, (port, t, pool) => {
    port.configure({ pool, rxd: 64, txd: 64 });
    port.start();
    const pkts = Uint32Array.of(
      pool.fromBytes(new Uint8Array(60)),
      pool.fromBytes(new Uint8Array(70)),
    );
    assert.equal(port.txBurst(0, pkts, 2), 2);
    assert.equal(port.stats.txPackets, 2);
    // The device finished the first chain (used entry written) before it went away.
    const q = t.queues.get(1)!;
    const dv = new DataView(q.region.buffer);
    const head = dv.getUint16(q.availOffset + Avail.RING, true);
    dv.setUint32(q.usedOffset + Used.RING + Used.ELEM_ID, head, true);
    dv.setUint32(q.usedOffset + Used.RING + Used.ELEM_LEN, 0, true);
    dv.setUint16(q.usedOffset + Used.IDX, 1, true);
    t.event = TransportEvent.DEVICE_LOST;
    port.poll();
    assert.equal(port.linkUp, false);
    t.event = TransportEvent.DEVICE_RETURNED | TransportEvent.CONFIG_CHANGED;
    port.poll(); // the rings are torn down (and the port set up again)
    assert.equal(port.linkUp, true);
    assert.equal(port.stats.txPackets, 1);
    assert.equal(port.stats.txBytes, 60);
    assert.equal(port.stats.txDropped, 1);
    assert.equal(port.stats.txPackets + port.stats.txDropped, 2, "each frame counted once");
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

// ---- against the simulated device (mod/sim/): frames through its wire, byte-exact ----

const PEER = Uint8Array.of(0x02, 0, 0, 0, 0, 0x99);

interface Rig {
  t: SimTransport;
  pool: MbufPool;
  port: Port;
  sent: Uint8Array[];
  logs: string[];
  close(): void;
}

type SimOpts = ConstructorParameters<typeof SimTransport>[0];

function rig(
  sim: Partial<SimOpts> = {},
  cfg: Partial<PortConfig> = {},
  poolOpts: { count?: number; dataRoom?: number; headroom?: number; ringRoom?: number } = {},
  start = true,
): Rig {
  const t = new SimTransport({ name: "p0", gen: false, ...sim } as SimOpts);
  const pool = new MbufPool({ count: poolOpts.count ?? 2048, kind: t.dmaKinds[0], ...poolOpts });
  const logs: string[] = [];
  const port = new Port(0, t, { log: (m) => logs.push(m) });
  const sent: Uint8Array[] = [];
  t.wire.onTransmit = (f) => sent.push(f.slice());
  const r: Rig = {
    t,
    pool,
    port,
    sent,
    logs,
    close() {
      port.close();
      t.close();
      pool.close();
    },
  };
  try {
    port.configure({ pool, ...cfg });
    if (start) port.start();
  } catch (e) {
    r.close();
    throw e;
  }
  return r;
}

function testFrame(len: number, seq: number, stream = 1): Uint8Array {
  const f = new Uint8Array(len);
  writeTestFrame(f, 0, len, stream, seq, PEER, Uint8Array.of(2, 0, 0, 0, 0, 1));
  return f;
}

/** Poll the port (the sim runs inside) and receive until `want` frames or `tries` polls. */
function receive(r: Rig, want: number, tries = 1000): number[] {
  const pkts = new Uint32Array(64);
  const out: number[] = [];
  for (let i = 0; i < tries && out.length < want; i++) {
    r.port.poll();
    const n = r.port.rxBurst(0, pkts, Math.min(64, want - out.length));
    for (let k = 0; k < n; k++) out.push(pkts[k]);
  }
  return out;
}

function bytesOf(pool: MbufPool, m: number): Uint8Array {
  const out = new Uint8Array(pool.pktLen[m]);
  assert.equal(pool.read(m, out), out.length);
  return out;
}

/** Transmit `pkts` fully (retrying while the ring is full) and let the sim take them. */
function transmit(r: Rig, pkts: number[]): void {
  const arr = Uint32Array.from(pkts);
  let done = 0;
  for (let i = 0; i < 1000 && done < arr.length; i++) {
    done += r.port.txBurst(0, arr.subarray(done), arr.length - done);
    r.port.poll();
  }
  assert.equal(done, arr.length, "txBurst never took every packet");
  for (let i = 0; i < 5; i++) {
    r.port.txBurst(0, arr, 0); // reclaim
    r.port.poll();
  }
}

Deno.test("port + sim: starts, reports MAC, link and negotiated features", () => {
  const mac = Uint8Array.of(0x52, 0x54, 0, 0x12, 0x34, 0x56);
  const r = rig({ mac });
  try {
    assert.equal(r.port.started, true);
    assert.deepEqual([...r.port.mac], [...mac]);
    assert.equal(r.port.linkUp, true);
    assert.ok(r.port.features !== 0n);
  } finally {
    r.close();
  }
});

Deno.test("port + sim: a single frame in and out, byte-exact", () => {
  const r = rig();
  try {
    const f = testFrame(60, 7);
    assert.equal(r.t.wire.inject(f), true);
    const got = receive(r, 1);
    assert.equal(got.length, 1);
    assert.deepEqual(bytesOf(r.pool, got[0]), f);
    assert.equal(r.pool.port[got[0]], 0);
    transmit(r, got);
    assert.equal(r.sent.length, 1);
    assert.deepEqual(r.sent[0], f);
    assert.equal(r.port.stats.rxPackets, 1);
    assert.equal(r.port.stats.txPackets, 1);
    assert.equal(r.port.stats.rxBytes, 60);
    assert.equal(r.port.stats.txBytes, 60);
    assert.equal(r.port.queueStats.rx[0].rxPackets, 1);
  } finally {
    r.close();
  }
});

Deno.test("port + sim: bursts of every frame size from 60 to 1518 keep order and content", () => {
  const r = rig();
  try {
    const sizes = [60, 61, 64, 127, 128, 256, 511, 512, 1000, 1499, 1500, 1514, 1518];
    const frames = sizes.map((s, i) => testFrame(s, i));
    for (const f of frames) assert.equal(r.t.wire.inject(f), true);
    const got = receive(r, frames.length);
    assert.equal(got.length, frames.length);
    got.forEach((m, i) => assert.deepEqual(bytesOf(r.pool, m), frames[i]));
    transmit(r, got);
    assert.deepEqual(r.sent, frames);
    assert.equal(r.pool.available, 2048 - 256);
  } finally {
    r.close();
  }
});

/**
 * Inject `total` test frames (lengths cycling through `lengths`, at most `ahead` in flight),
 * forward each burst back out (after `rewrite`, which may replace packets), and check that every
 * frame left intact and in order, with no driver error.
 */
function forwardChecked(
  r: Rig,
  total: number,
  lengths: number[],
  ahead: number,
  rewrite: (pkts: Uint32Array, n: number, forwarded: number) => void = () => {},
): void {
  let checked = 0;
  let bad = 0;
  const res = new Uint32Array(4);
  r.t.wire.onTransmit = (f) => {
    if (checkTestFrame(f, 0, f.length, res) !== FrameCheck.OK || res[1] !== checked) bad++;
    checked++;
  };
  const pkts = new Uint32Array(32);
  const f = new Uint8Array(Math.max(...lengths));
  let injected = 0;
  let forwarded = 0;
  for (let guard = 0; forwarded < total && guard < 100_000; guard++) {
    while (injected < total && injected - forwarded < ahead) {
      const len = lengths[injected % lengths.length];
      writeTestFrame(f, 0, len, 1, injected, PEER, PEER);
      if (!r.t.wire.inject(f.subarray(0, len))) break;
      injected++;
    }
    r.port.poll();
    const n = r.port.rxBurst(0, pkts, 32);
    rewrite(pkts, n, forwarded);
    let k = 0;
    while (k < n) k += r.port.txBurst(0, pkts.subarray(k), n - k);
    forwarded += n;
  }
  for (let i = 0; i < 10; i++) {
    r.port.poll();
    r.port.txBurst(0, pkts, 0);
  }
  assert.equal(forwarded, total);
  assert.equal(checked, total);
  assert.equal(bad, 0);
  assert.equal(r.port.stats.rxErrors + r.port.stats.txErrors, 0);
  assert.equal(r.t.device.errors.txHeaders, 0, "a frame left with a header the driver must zero");
}

Deno.test("port + sim: ringRoomFor leaves room in a shared pool for every port's rings", () => {
  const cfg = { queues: 2, rxd: 512, txd: 1024 };
  const ts = [0, 1].map((i) =>
    new SimTransport({ name: `p${i}`, gen: false, queuePairs: 2 } as SimOpts)
  );
  const ringRoom = ringRoomFor(ts[0], "memfd", cfg) + ringRoomFor(ts[1], "memfd", cfg);
  // 4096 buffers fill whole pages: all the room there is beyond them is ringRoom, rounded up.
  const pool = new MbufPool({ count: 4096, kind: "memfd", ringRoom });
  const ports = ts.map((t, i) => new Port(i, t, { log: () => {} }));
  try {
    const free = pool.region.remaining;
    assert.ok(free - ringRoom < 4096);
    const taken: number[] = [];
    for (const port of ports) {
      port.configure({ pool, ...cfg });
      const before = pool.region.remaining;
      port.start();
      taken.push(before - pool.region.remaining);
    }
    assert.ok(taken.every((b) => b > 0), `rings taken from the pool: ${taken.join(", ")} bytes`);
    // Each port still moves a frame.
    const pkts = new Uint32Array(1);
    ports.forEach((port, i) => {
      const f = testFrame(60, i);
      assert.equal(ts[i].wire.inject(f), true);
      let n = 0;
      for (let k = 0; k < 100 && n === 0; k++) {
        port.poll();
        n = port.rxBurst(k % 2, pkts, 1); // the device picks the queue pair
      }
      assert.equal(n, 1, `port ${i} received`);
      assert.deepEqual(bytesOf(pool, pkts[0]), f);
      pool.free(pkts[0]);
    });
  } finally {
    for (const port of ports) port.close();
    for (const t of ts) t.close();
    pool.close();
  }
});

Deno.test("port + sim: rings lie in the pool's memory when it has room, else in their own", () => {
  // Room in the pool: the rings take some (the device sees one memory region), keep it across
  // stop/start, take more for bigger rings, and lay smaller ones out in that (zeroed) again.
  const r = rig({}, { rxd: 256, txd: 256 }, {}, false);
  try {
    const free = r.pool.region.remaining;
    const taken = () => free - r.pool.region.remaining;
    r.port.start();
    const first = taken();
    assert.ok(first > 0 && first < 64 * 1024, `${first} bytes of the pool's memory for rings`);
    forwardChecked(r, 3000, [60, 1514], 64);
    r.port.stop();
    r.port.start();
    assert.equal(taken(), first);
    forwardChecked(r, 3000, [60, 1514], 64);
    r.port.stop();
    r.port.configure({ pool: r.pool, rxd: 512, txd: 1024 });
    r.port.start();
    const bigger = taken() - first;
    assert.ok(bigger > first, `${bigger} bytes for the bigger rings`);
    forwardChecked(r, 3000, [60, 1514], 64);
    r.port.stop();
    r.port.configure({ pool: r.pool, rxd: 128, txd: 128 });
    r.port.start();
    assert.equal(taken(), first + bigger);
    // Forwarded frames carry num_buffers, so they leave behind the zero header, which now lies
    // where the bigger layout had a ring.
    forwardChecked(r, 3000, [60, 1514], 64);
  } finally {
    r.close();
  }
  // Buffers fill the pool's memory exactly: the rings get a region of their own.
  const full = rig({}, {}, { count: 2048, ringRoom: 0 }, false);
  try {
    assert.equal(full.pool.region.remaining, 0);
    full.port.start();
    assert.equal(full.pool.region.remaining, 0);
    forwardChecked(full, 3000, [60, 1514], 64);
  } finally {
    full.close();
  }
});

Deno.test("port + sim: more than 65536 frames through 256-entry rings (index wrap-around)", () => {
  const r = rig({}, { rxd: 256, txd: 256 });
  try {
    forwardChecked(r, 70_000, [64], 128);
  } finally {
    r.close();
  }
});

Deno.test("port + sim in order: mixed and jumbo frames both ways, RX positions past 65536, ring order kept", () => {
  const r = rig({ inOrder: true, mtu: 9000 }, { rxd: 256, txd: 256, mtu: 9000 });
  try {
    assert.ok((r.port.features & (1n << 35n)) !== 0n, "IN_ORDER negotiated");
    // ~12 RX buffers per 7 frames: 40000 frames take ~68000 RX positions. Every fourth frame
    // goes out as a copy of our own in 500-byte segments (a chain with a zero header in place)
    // instead of the received buffer (a header pair).
    let built = 0;
    forwardChecked(r, 40_000, [64, 9018, 60, 1518, 3000, 64, 64], 64, (pkts, n, forwarded) => {
      for (let k = 0; k < n; k++) {
        if ((forwarded + k) % 4 !== 3) continue;
        const m = pkts[k];
        pkts[k] = r.pool.fromBytes(bytesOf(r.pool, m), 500);
        r.pool.free(m);
        built++;
      }
    });
    assert.ok(built > 40_000 / 5);
    assert.equal(r.t.device.needsReset, false, "the device found the ring order kept");
    assert.ok(r.t.device.batchedEntries > 1000, `batched entries ${r.t.device.batchedEntries}`);
    r.port.stop();
    assert.equal(r.pool.available, r.pool.count, "every buffer back");
  } finally {
    r.close();
  }
});

Deno.test("port + sim: mergeable RX assembles a 9000-byte frame from 2 KiB buffers", () => {
  const r = rig({ mtu: 9000, mrgRxbuf: true }, { mtu: 9000 });
  try {
    assert.ok((r.port.features & (1n << 15n)) !== 0n, "MRG_RXBUF negotiated");
    const f = testFrame(9018, 3);
    assert.equal(r.t.wire.inject(f), true);
    const got = receive(r, 1);
    assert.equal(got.length, 1);
    const m = got[0];
    assert.ok(r.pool.nbSegs[m] >= 5, `segments: ${r.pool.nbSegs[m]}`);
    assert.equal(r.pool.pktLen[m], 9018);
    assert.deepEqual(bytesOf(r.pool, m), f);
    // and back out as a descriptor chain
    transmit(r, [m]);
    assert.deepEqual(r.sent, [f]);
    assert.equal(r.pool.available, 2048 - 256);
  } finally {
    r.close();
  }
});

Deno.test("port + sim: without mergeable buffers a large MTU needs a large data room", () => {
  assert.throws(
    () => rig({ mtu: 9000, mrgRxbuf: false }, { mtu: 9000 }),
    /port 0: MTU 9000 needs 9018-byte frames in one buffer.*dataRoom >= 9018/,
  );
  const r = rig({ mtu: 9000, mrgRxbuf: false }, { mtu: 9000, rxd: 64, txd: 64 }, {
    count: 256,
    dataRoom: 9018,
  });
  try {
    const f = testFrame(9018, 4);
    assert.equal(r.t.wire.inject(f), true);
    const got = receive(r, 1);
    assert.equal(r.pool.nbSegs[got[0]], 1);
    assert.deepEqual(bytesOf(r.pool, got[0]), f);
  } finally {
    r.close();
  }
});

Deno.test("port + sim: multi-segment TX leaves as one frame, content exact", () => {
  const r = rig();
  try {
    const f = testFrame(1400, 9);
    const m = r.pool.fromBytes(f, 300);
    assert.equal(r.pool.nbSegs[m], 5);
    transmit(r, [m]);
    assert.deepEqual(r.sent, [f]);
    assert.equal(r.port.stats.txBytes, 1400);
    assert.equal(r.pool.available, 2048 - 256);
  } finally {
    r.close();
  }
});

Deno.test("port + sim: software VLAN strip on RX and insert on TX, byte-exact", () => {
  const r = rig({}, { vlanStrip: true, vlanInsert: 0x6005 });
  try {
    const plain = testFrame(100, 1);
    const tagged = new Uint8Array(104);
    tagged.set(plain.subarray(0, 12));
    tagged.set([0x81, 0x00, 0x20, 0x0a], 12);
    tagged.set(plain.subarray(12), 16);
    assert.equal(r.t.wire.inject(tagged), true);
    const got = receive(r, 1);
    assert.equal(got.length, 1);
    const m = got[0];
    assert.equal(r.pool.flags[m] & MbufFlag.VLAN_STRIPPED, MbufFlag.VLAN_STRIPPED);
    assert.equal(r.pool.vlanTci[m], 0x200a);
    assert.deepEqual(bytesOf(r.pool, m), plain);
    // port-wide insert uses the configured TCI...
    transmit(r, [m]);
    const out = new Uint8Array(104);
    out.set(plain.subarray(0, 12));
    out.set([0x81, 0x00, 0x60, 0x05], 12);
    out.set(plain.subarray(12), 16);
    assert.deepEqual(r.sent[0], out);
    // ...and a per-mbuf VLAN_INSERT uses the mbuf's own TCI
    const m2 = r.pool.fromBytes(plain);
    r.pool.flags[m2] = MbufFlag.VLAN_INSERT;
    r.pool.vlanTci[m2] = 0x0123;
    transmit(r, [m2]);
    out.set([0x81, 0x00, 0x01, 0x23], 12);
    assert.deepEqual(r.sent[1], out);
  } finally {
    r.close();
  }
});

Deno.test("port + sim: every buffer is back in the pool after stop, with frames in flight both ways", () => {
  const r = rig();
  try {
    for (let i = 0; i < 20; i++) r.t.wire.inject(testFrame(64 + i, i));
    const got = receive(r, 10); // 10 taken, 10 still in the RX ring
    assert.equal(got.length, 10);
    const arr = Uint32Array.from(got);
    assert.equal(r.port.txBurst(0, arr, 10), 10); // in the TX ring, not yet completed
    const more = r.pool.fromBytes(testFrame(200, 99), 100);
    r.port.txBurst(0, Uint32Array.of(more), 1);
    r.port.stop();
    assert.equal(r.pool.available, 2048);
    assert.equal(r.port.rxBurst(0, arr, 10), 0);
    r.port.start();
    r.port.stop();
    assert.equal(r.pool.available, 2048);
  } finally {
    r.close();
  }
});

Deno.test("port + sim: an empty pool drops frames as rxNoMbuf and recovers", () => {
  const r = rig({}, { rxd: 64, txd: 64 }, { count: 64 + 4 });
  try {
    const held: number[] = [];
    for (let m = r.pool.alloc(); m !== NONE; m = r.pool.alloc()) held.push(m);
    for (let i = 0; i < 5; i++) r.t.wire.inject(testFrame(64, i));
    assert.equal(receive(r, 5, 20).length, 0);
    assert.ok(r.port.stats.rxNoMbuf >= 1);
    for (const m of held) r.pool.free(m);
    r.t.wire.inject(testFrame(70, 100));
    const got = receive(r, 1);
    assert.equal(got.length, 1);
    assert.equal(r.pool.pktLen[got[0]], 70);
  } finally {
    r.close();
  }
});

Deno.test("port + sim: link down and up from the device reach onLinkChange", () => {
  const r = rig();
  try {
    const seen: boolean[] = [];
    r.port.onLinkChange = (up) => seen.push(up);
    r.t.setLink(false);
    for (let i = 0; i < 10; i++) r.port.poll();
    assert.equal(r.port.linkUp, false);
    r.t.setLink(true);
    for (let i = 0; i < 10; i++) r.port.poll();
    assert.equal(r.port.linkUp, true);
    assert.deepEqual(seen, [false, true]);
  } finally {
    r.close();
  }
});

Deno.test("port + sim: a device that starts with the link down reports it", () => {
  const r = rig({ linkUp: false });
  try {
    assert.equal(r.port.linkUp, false);
  } finally {
    r.close();
  }
});

Deno.test("port + sim: the device polls (VRING_USED_F_NO_NOTIFY), so traffic makes no kicks", () => {
  const r = rig();
  try {
    let kicks = 0;
    const notify = r.t.notify.bind(r.t);
    r.t.notify = (q: number) => {
      kicks++;
      notify(q);
    };
    const pkts = new Uint32Array(32);
    let moved = 0;
    for (let round = 0; round < 50; round++) {
      for (let i = 0; i < 8; i++) r.t.wire.inject(testFrame(64, round * 8 + i));
      r.port.poll();
      const n = r.port.rxBurst(0, pkts, 32);
      moved += r.port.txBurst(0, pkts, n);
    }
    r.port.setPromiscuous(true); // the control queue too
    assert.ok(moved >= 300, `moved ${moved}`);
    assert.equal(kicks, 0);
  } finally {
    r.close();
  }
});
