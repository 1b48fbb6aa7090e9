/**
 * vhost-user transport against a real peer: DPDK 22.11's vhost PMD in dpdk-testpmd.
 * Every test starts its own testpmd (unique file prefix and socket) and kills it in `finally`.
 */
import assert from "assert";
import { DmaRegion } from "../ffi/dma.ts";
import { MbufPool } from "../mod/mbuf.ts";
import { Port } from "../mod/port.ts";
import { writeTestFrame } from "../mod/testframe.ts";
import { type QueueMemory, TransportEvent } from "../mod/virtio/transport.ts";
import { Notice, VhostUserTransport } from "../mod/transport/vhost_user.ts";
import {
  Avail,
  bit,
  Desc,
  Feature,
  has,
  NetConfig,
  NetFeature,
  NetHdr,
  Status,
  Used,
} from "../mod/virtio/constants.ts";
import { peerTest } from "./lib/peers.ts";
import { socketPath, Testpmd, testpmdPeer } from "./lib/testpmd.ts";
import { UnixListener } from "../ffi/socket.ts";
import { type Fake, fakeBackend, withFake as withFakeAt } from "./lib/fake_vhost.ts";

/**
 * A bare split-ring pair (RX queue 0, TX queue 1) driven straight through the transport, with no
 * port or pool: proves the handshake and the memory/ring addresses independently of the driver.
 */
class BareRings {
  static readonly SIZE = 256;
  static readonly BUF = 2048;
  readonly region: DmaRegion;
  readonly rx = { desc: 0, avail: 0, used: 0, lastUsed: 0, availIdx: 0 };
  readonly tx = { desc: 0, avail: 0, used: 0, lastUsed: 0, availIdx: 0 };
  readonly bufs: number;

  constructor(readonly t: VhostUserTransport) {
    const n = BareRings.SIZE;
    this.region = DmaRegion.create({ size: 4 << 20, kind: "memfd", name: "bare-rings" });
    for (const q of [this.rx, this.tx]) {
      q.desc = this.region.alloc(Desc.SIZE * n, 4096);
      q.avail = this.region.alloc(Avail.size(n), 4096);
      q.used = this.region.alloc(Used.size(n), 4096);
    }
    this.bufs = this.region.alloc(2 * n * BareRings.BUF, 4096);
    t.reset();
    t.setStatus(Status.ACKNOWLEDGE);
    t.setStatus(Status.ACKNOWLEDGE | Status.DRIVER);
    t.setDriverFeatures(t.getDeviceFeatures() & bit(Feature.VERSION_1));
    t.setStatus(Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK);
    t.addMemory(this.region);
    [this.rx, this.tx].forEach((q, i) => {
      t.setupQueue({
        index: i,
        size: n,
        region: this.region,
        descOffset: q.desc,
        availOffset: q.avail,
        usedOffset: q.used,
        descIova: this.region.iova(q.desc),
        availIova: this.region.iova(q.avail),
        usedIova: this.region.iova(q.used),
      });
      this.region.u16[(q.avail + Avail.FLAGS) >> 1] = Avail.F_NO_INTERRUPT;
    });
    // Every RX descriptor i owns buffer i, device-writable, posted at once.
    for (let i = 0; i < n; i++) this.#desc(this.rx.desc, i, i, BareRings.BUF, Desc.F_WRITE);
    for (let i = 0; i < n; i++) this.region.u16[(this.rx.avail + Avail.RING + 2 * i) >> 1] = i;
    this.rx.availIdx = n;
    Atomics.store(this.region.u16, (this.rx.avail + Avail.IDX) >> 1, n);
    t.setStatus(Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK | Status.DRIVER_OK);
  }

  #desc(table: number, i: number, buf: number, len: number, flags: number): void {
    const iova = this.region.iova(this.bufs + buf * BareRings.BUF);
    const w = (table + i * Desc.SIZE) >> 2;
    this.region.u32[w] = iova % 2 ** 32;
    this.region.u32[w + 1] = Math.floor(iova / 2 ** 32);
    this.region.u32[w + 2] = len;
    this.region.u16[(table + i * Desc.SIZE + Desc.FLAGS) >> 1] = flags;
  }

  /** Take received frames, give their buffers back; returns [frames, bytes without header]. */
  receive(): [number, number] {
    const u16 = this.region.u16;
    const u32 = this.region.u32;
    const usedIdx = Atomics.load(u16, (this.rx.used + Used.IDX) >> 1);
    let frames = 0;
    let bytes = 0;
    while (this.rx.lastUsed !== usedIdx) {
      const e = (this.rx.used + Used.RING + (this.rx.lastUsed % BareRings.SIZE) * 8) >> 2;
      const id = u32[e];
      bytes += u32[e + 1] - NetHdr.SIZE;
      frames++;
      u16[(this.rx.avail + Avail.RING + 2 * (this.rx.availIdx % BareRings.SIZE)) >> 1] = id;
      this.rx.availIdx = (this.rx.availIdx + 1) & 0xffff;
      this.rx.lastUsed = (this.rx.lastUsed + 1) & 0xffff;
    }
    if (frames > 0) Atomics.store(u16, (this.rx.avail + Avail.IDX) >> 1, this.rx.availIdx);
    return [frames, bytes];
  }

  /** Queue up to `max` 64-byte frames on TX (header + frame in one buffer); returns how many. */
  send(max: number): number {
    const u16 = this.region.u16;
    this.tx.lastUsed = Atomics.load(u16, (this.tx.used + Used.IDX) >> 1);
    const free = BareRings.SIZE - ((this.tx.availIdx - this.tx.lastUsed) & 0xffff);
    const n = Math.min(max, free);
    for (let k = 0; k < n; k++) {
      const slot = this.tx.availIdx % BareRings.SIZE;
      const buf = BareRings.SIZE + slot;
      const at = this.bufs + buf * BareRings.BUF;
      this.region.u8.fill(0, at, at + NetHdr.SIZE);
      this.region.u8.fill(0xff, at + NetHdr.SIZE, at + NetHdr.SIZE + 6); // broadcast
      this.#desc(this.tx.desc, slot, buf, NetHdr.SIZE + 64, 0);
      u16[(this.tx.avail + Avail.RING + 2 * slot) >> 1] = slot;
      this.tx.availIdx = (this.tx.availIdx + 1) & 0xffff;
    }
    if (n > 0) Atomics.store(u16, (this.tx.avail + Avail.IDX) >> 1, this.tx.availIdx);
    return n;
  }

  /** Stop the device (GET_VRING_BASE) and free the rings; `closeTransport` also disconnects. */
  close(closeTransport = true): void {
    if (closeTransport) this.t.close();
    else this.t.reset();
    this.region.close();
  }
}

const BROADCAST = Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0xff, 0xff);
const SRC = Uint8Array.of(2, 0, 0, 0, 0, 1);

/** Run `step` in a busy loop for `ms` milliseconds (checking the clock every 1024 turns). */
function spin(ms: number, step: () => void): void {
  const end = performance.now() + ms;
  for (let i = 0;; i++) {
    step();
    if ((i & 1023) === 0 && performance.now() > end) return;
  }
}

peerTest(testpmdPeer, "vhost-user: handshake, config and bare rings both ways", async () => {
  const sock = socketPath("bare");
  const pmd = await Testpmd.start({ vdev: `net_vhost0,iface=${sock},queues=1`, fwd: "txonly" });
  let rings: BareRings | null = null;
  try {
    const t = new VhostUserTransport({ path: sock, mac: Uint8Array.of(2, 0, 0, 0, 0, 9) });
    rings = new BareRings(t);
    const cfg = t.readConfig(0, 10);
    assert.deepEqual([...cfg.subarray(0, 6)], [2, 0, 0, 0, 0, 9]);
    assert.equal(cfg[NetConfig.STATUS] & NetConfig.S_LINK_UP, NetConfig.S_LINK_UP);
    assert.equal(cfg[NetConfig.MAX_VIRTQUEUE_PAIRS], 1);
    await pmd.waitLog(/Port 0: link state change event|queue state event/, 5000).catch(() => {});

    // vhost txonly -> our RX ring: every frame testpmd counts as sent arrives here.
    await pmd.cmd("start");
    let frames = 0;
    let bytes = 0;
    const take = () => {
      const [f, b] = rings!.receive();
      frames += f;
      bytes += b;
    };
    until(5000, take, () => frames >= 50_000);
    await pmd.cmd("stop");
    spin(200, take);
    const sent = pmd.stats();
    assert.ok(sent.opackets > 1000, `testpmd sent only ${sent.opackets} frames`);
    assert.equal(frames, sent.opackets);
    assert.equal(bytes, sent.obytes);

    // Our TX ring -> vhost rxonly.
    await pmd.cmd("set fwd rxonly");
    await pmd.cmd("clear port stats all");
    await pmd.cmd("start");
    let queued = 0;
    until(5000, () => {
      queued += rings!.send(32);
    }, () => queued > 20_000);
    await untilReceived(pmd, queued, () => rings!.send(0));
    await pmd.cmd("stop");
    const got = pmd.stats();
    assert.ok(queued > 1000, `queued only ${queued}`);
    assert.equal(got.ipackets, queued);
    assert.equal(got.ibytes, queued * 64);
  } finally {
    rings?.close();
    await pmd.stop();
  }
});

/** Run `step` until `done()` (true) or `ms` milliseconds pass (false). For "traffic flows" checks. */
function until(ms: number, step: () => void, done: () => boolean): boolean {
  const end = performance.now() + ms;
  for (let i = 0;; i++) {
    step();
    if ((i & 255) === 0) {
      if (done()) return true;
      if (performance.now() > end) return false;
    }
  }
}

/**
 * Wait (up to 5 s, calling `step` meanwhile) until testpmd has received `n` frames: on shared
 * cores its forwarding thread may be descheduled for a while.
 */
async function untilReceived(pmd: Testpmd, n: number, step: () => void): Promise<void> {
  const end = Date.now() + 5000;
  while (pmd.stats().ipackets < n && Date.now() < end) {
    spin(10, step);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Poll the transport until `events` shows up in its event mask (or fail after `ms`). */
function pollFor(t: VhostUserTransport, events: number, ms: number, step = () => {}): number {
  const end = performance.now() + ms;
  let seen = 0;
  for (let i = 0; (seen & events) !== events; i++) {
    seen |= t.poll();
    step();
    if ((i & 1023) === 0 && performance.now() > end) {
      throw new Error(`transport events 0x${events.toString(16)} not seen within ${ms} ms`);
    }
  }
  return seen;
}

function linkUp(t: VhostUserTransport): boolean {
  return (t.readConfig(NetConfig.STATUS, 1)[0] & NetConfig.S_LINK_UP) !== 0;
}

for (const server of [false, true]) {
  const mode = server ? "server" : "client";
  peerTest(
    testpmdPeer,
    `vhost-user (${mode} mode): backend killed and restarted, link down/up, traffic resumes`,
    async () => {
      const sock = socketPath(`re-${mode}`);
      const vdev = `net_vhost0,iface=${sock},queues=1${server ? ",client=1" : ""}`;
      let pmd = server ? null : await Testpmd.start({ vdev, fwd: "txonly" });
      let rings: BareRings | null = null;
      try {
        let t: VhostUserTransport;
        if (server) {
          // vpmd listens; the backend (vhost client=1) connects once it is up.
          const started = Testpmd.start({ vdev, fwd: "txonly" }); // spawns at once
          t = new VhostUserTransport({ path: sock, server: true, timeoutMs: 20_000 });
          pmd = await started;
        } else {
          t = new VhostUserTransport({ path: sock });
        }
        rings = new BareRings(t);
        await pmd!.cmd("start");
        let frames = 0;
        const take = () => {
          frames += rings!.receive()[0];
        };
        assert.ok(until(5000, take, () => frames > 1000), `only ${frames} frames before the kill`);
        assert.ok(linkUp(t));

        await pmd!.kill();
        await pmd!.stop();
        const lost = pollFor(t, TransportEvent.DEVICE_LOST, 5000, take);
        assert.ok(lost & TransportEvent.CONFIG_CHANGED);
        assert.equal(linkUp(t), false);
        if (!server) Deno.removeSync(sock); // the killed server left its socket file behind

        pmd = await Testpmd.start({ vdev, fwd: "txonly", autoStart: true });
        const back = pollFor(t, TransportEvent.DEVICE_RETURNED, 10_000, take);
        assert.ok(back & TransportEvent.CONFIG_CHANGED);
        assert.equal(linkUp(t), false); // until the driver sets the device up again
        rings.close(false);
        rings = new BareRings(t);
        assert.ok(linkUp(t));
        const before = frames;
        assert.ok(
          until(5000, take, () => frames - before > 1000),
          `only ${frames - before} frames after the return`,
        );
        assert.equal(t.linkStats.lost, 1);
        assert.equal(t.linkStats.returned, 1);
      } finally {
        rings?.close();
        await pmd?.stop();
      }
    },
  );
}

peerTest(
  testpmdPeer,
  "vhost-user: stopped and started again on the same connection and socket",
  async () => {
    const sock = socketPath("restart");
    const pmd = await Testpmd.start({
      vdev: `net_vhost0,iface=${sock},queues=1`,
      fwd: "txonly",
      autoStart: true,
    });
    try {
      for (let conn = 0; conn < 2; conn++) {
        const t = new VhostUserTransport({ path: sock });
        for (let run = 0; run < 2; run++) {
          // A fresh set of rings each time: reset() stopped the old ones with GET_VRING_BASE.
          const rings = new BareRings(t);
          let frames = 0;
          until(5000, () => {
            frames += rings.receive()[0];
          }, () => frames > 1000);
          rings.close(run === 1);
          assert.ok(frames > 1000, `connection ${conn} run ${run}: only ${frames} frames`);
        }
      }
      assert.equal(pmd.exited, false);
    } finally {
      await pmd.stop();
    }
  },
);

// ---- through the driver: Port + MbufPool ----------------------------------------------------

interface Side {
  t: VhostUserTransport;
  pool: MbufPool;
  port: Port;
  close(): void;
}

function openPort(
  sock: string,
  opts: {
    mrg?: boolean;
    /** Configure the port without `mrgRxbuf` (the driver's own choice) instead of with `mrg`. */
    driverMrg?: boolean;
    inOrder?: boolean;
    mtu?: number;
    server?: boolean;
    pool?: { dataRoom?: number; ringRoom?: number };
  } = {},
  existing?: VhostUserTransport,
): Side {
  const t = existing ??
    new VhostUserTransport({
      path: sock,
      mrg: opts.mrg ?? true,
      inOrder: opts.inOrder,
      server: opts.server,
    });
  const pool = new MbufPool({
    count: 4096,
    kind: t.dmaKinds.includes("hugepage-memfd") ? "hugepage-memfd" : "memfd",
    ...opts.pool,
  });
  const port = new Port(0, t);
  const mrgRxbuf = opts.driverMrg ? undefined : opts.mrg ?? true;
  port.configure({ pool, rxd: 256, txd: 256, mrgRxbuf, mtu: opts.mtu });
  port.start();
  return {
    t,
    pool,
    port,
    close() {
      port.stop();
      port.close();
      pool.close();
      t.close();
    },
  };
}

/** Receive for `ms`; frees every frame and returns [frames, bytes]. */
/**
 * Receive for `ms` (or, with `enough`, until that many frames came, within `ms`); frees every
 * frame and returns [frames, bytes].
 */
function rxFor(
  s: Side,
  ms: number,
  check?: (m: number) => void,
  enough = Infinity,
): [number, number] {
  const pkts = new Uint32Array(32);
  let frames = 0;
  let bytes = 0;
  until(ms, () => {
    const n = s.port.rxBurst(0, pkts, 32);
    for (let i = 0; i < n; i++) {
      check?.(pkts[i]);
      bytes += s.pool.pktLen[pkts[i]];
      s.pool.free(pkts[i]);
    }
    frames += n;
    s.port.poll();
  }, () => frames >= enough);
  return [frames, bytes];
}

/** Receive (and free) until `n` frames came, within 5 s. */
function rxAtLeast(s: Side, n: number): boolean {
  let got = 0;
  const end = performance.now() + 5000;
  while (got < n && performance.now() < end) got += rxFor(s, 20)[0];
  return got >= n;
}

/** io-forward until `n` frames went round, within 5 s. */
function forwardAtLeast(s: Side, n: number): boolean {
  let moved = 0;
  const end = performance.now() + 5000;
  while (moved < n && performance.now() < end) moved += forwardFor(s, 20);
  return moved >= n;
}

/** io-forward frames back out of the same port for `ms`; returns frames forwarded. */
function forwardFor(s: Side, ms: number, enough = Infinity): number {
  const pkts = new Uint32Array(32);
  let moved = 0;
  until(ms, () => {
    const n = s.port.rxBurst(0, pkts, 32);
    const k = n > 0 ? s.port.txBurst(0, pkts, n) : 0;
    for (let i = k; i < n; i++) s.pool.free(pkts[i]);
    moved += k;
    s.port.poll();
  }, () => moved >= enough);
  return moved;
}

const onOff = (b: boolean) => b ? "on" : "off";
for (const [mrg, inOrder] of [[true, true], [false, true], [true, false]]) {
  const variant = `mrg ${onOff(mrg)}, in_order ${onOff(inOrder)}`;
  peerTest(
    testpmdPeer,
    `vhost-user port (${variant}): vhost txonly -> vpmd rx, counts and bytes match`,
    async () => {
      const sock = socketPath("rx");
      const pmd = await Testpmd.start({ vdev: `net_vhost0,iface=${sock},queues=1`, fwd: "txonly" });
      let side: Side | null = null;
      try {
        side = openPort(sock, { mrg, inOrder });
        assert.equal(side.port.linkUp, true);
        assert.equal(has(side.port.features, NetFeature.MRG_RXBUF), mrg);
        assert.equal(has(side.port.features, Feature.IN_ORDER), inOrder);
        await pmd.cmd("start");
        let [frames, bytes] = rxFor(side, 5000, undefined, 50_000);
        await pmd.cmd("stop");
        const [f2, b2] = rxFor(side, 200);
        frames += f2;
        bytes += b2;
        const s = pmd.stats();
        assert.ok(s.opackets > 1000, `testpmd sent only ${s.opackets}`);
        assert.equal(frames, s.opackets);
        assert.equal(bytes, s.obytes);
        assert.equal(side.port.stats.rxPackets, frames);
        assert.equal(side.port.stats.rxErrors, 0);
      } finally {
        side?.close();
        await pmd.stop();
      }
    },
  );

  peerTest(
    testpmdPeer,
    `vhost-user port (${variant}): vpmd tx -> vhost rxonly, counts and bytes match`,
    async () => {
      const sock = socketPath("tx");
      const pmd = await Testpmd.start({ vdev: `net_vhost0,iface=${sock},queues=1`, fwd: "rxonly" });
      let side: Side | null = null;
      try {
        side = openPort(sock, { mrg, inOrder });
        assert.equal(has(side.port.features, Feature.IN_ORDER), inOrder);
        await pmd.cmd("start");
        const { pool, port } = side;
        const pkts = new Uint32Array(32);
        const sizes = [60, 64, 128, 1000, 1514];
        let sent = 0;
        let bytes = 0;
        let seq = 0;
        until(5000, () => {
          let n = 0;
          while (n < 32) {
            const m = pool.alloc();
            if (m < 0) break;
            const len = sizes[seq % sizes.length];
            writeTestFrame(pool.bytes, pool.dataStart(m), len, 1, seq++, BROADCAST, SRC);
            pool.dataLen[m] = len;
            pool.pktLen[m] = len;
            pkts[n++] = m;
          }
          const k = port.txBurst(0, pkts, n);
          for (let i = 0; i < k; i++) bytes += pool.pktLen[pkts[i]];
          for (let i = k; i < n; i++) pool.free(pkts[i]);
          seq -= n - k;
          sent += k;
          port.poll();
        }, () => sent >= 50_000);
        await untilReceived(pmd, sent, () => port.txBurst(0, pkts, 0));
        await pmd.cmd("stop");
        const s = pmd.stats();
        assert.ok(sent > 1000, `sent only ${sent}`);
        assert.equal(s.ipackets, sent);
        assert.equal(s.ibytes, bytes);
        assert.equal(port.stats.txPackets, sent);
      } finally {
        side?.close();
        await pmd.stop();
      }
    },
  );
}

for (const inOrder of [true, false]) {
  peerTest(
    testpmdPeer,
    `vhost-user port (in_order ${
      onOff(inOrder)
    }): mac-forward loop, both sides forwarding, nothing lost`,
    async () => {
      const sock = socketPath("loop");
      const pmd = await Testpmd.start({ vdev: `net_vhost0,iface=${sock},queues=1`, fwd: "mac" });
      let side: Side | null = null;
      try {
        side = openPort(sock, { inOrder });
        assert.equal(has(side.port.features, Feature.IN_ORDER), inOrder);
        await pmd.cmd("start tx_first");
        const moved = forwardFor(side, 5000, 50_000);
        await pmd.cmd("stop");
        forwardFor(side, 200);
        const s = pmd.stats();
        const p = side.port.stats;
        assert.ok(moved > 1000, `only ${moved} frames went round`);
        assert.equal(p.rxPackets, s.opackets); // everything vhost sent arrived
        assert.equal(p.txPackets, p.rxPackets); // and went back
        assert.equal(p.txDropped + p.rxErrors + p.rxNoMbuf, 0);
        // What vhost has not taken back yet is at most the 32 frames of the loop.
        assert.ok(p.txPackets - s.ipackets >= 0 && p.txPackets - s.ipackets <= 32);
        assert.equal(s.oerrors + s.imissed, 0);
      } finally {
        side?.close();
        await pmd.stop();
      }
    },
  );
}

peerTest(
  testpmdPeer,
  "vhost-user port (driver's default): no MRG_RXBUF at MTU 1500, the received header stays zero " +
    "and the loop loses nothing; MRG_RXBUF at MTU 9000",
  async () => {
    const sock = socketPath("dflt");
    const pmd = await Testpmd.start({ vdev: `net_vhost0,iface=${sock},queues=1`, fwd: "mac" });
    let side: Side | null = null;
    try {
      side = openPort(sock, { driverMrg: true });
      assert.equal(has(side.port.features, NetFeature.MRG_RXBUF), false);
      await pmd.cmd("start tx_first");
      // The header in front of every received frame: what TX sends back as it is when zero
      // (num_buffers 0, 5.1.6.2), one descriptor per frame (docs/design.md, "Mergeable buffers
      // only when needed"). The pool starts zeroed, and DPDK's vhost writes no num_buffers without
      // MRG_RXBUF.
      const { pool, port } = side;
      const pkts = new Uint32Array(32);
      let frames = 0;
      let nonZero = 0;
      until(3000, () => {
        const n = port.rxBurst(0, pkts, 32);
        for (let i = 0; i < n; i++) {
          const h = pool.bufOff[pkts[i]] + pool.dataOff[pkts[i]] - 12;
          for (let j = 0; j < 12; j++) {
            if (pool.bytes[h + j] !== 0) {
              nonZero++;
              break;
            }
          }
        }
        const k = n > 0 ? port.txBurst(0, pkts, n) : 0;
        for (let i = k; i < n; i++) pool.free(pkts[i]);
        frames += n;
        port.poll();
      }, () => frames >= 20_000);
      await pmd.cmd("stop");
      forwardFor(side, 200);
      const s = pmd.stats();
      const p = port.stats;
      assert.ok(frames > 1000, `only ${frames} frames went round`);
      assert.equal(nonZero, 0, `${nonZero} of ${frames} received headers were not zero`);
      assert.equal(p.rxPackets, s.opackets);
      assert.equal(p.txPackets, p.rxPackets);
      assert.equal(p.txDropped + p.rxErrors + p.rxNoMbuf, 0);
      assert.equal(s.oerrors + s.imissed, 0);
    } finally {
      side?.close();
      await pmd.stop();
    }
    const pmd2 = await Testpmd.start({ vdev: `net_vhost0,iface=${sock},queues=1`, fwd: "rxonly" });
    try {
      side = openPort(sock, { driverMrg: true, mtu: 9000 });
      assert.equal(has(side.port.features, NetFeature.MRG_RXBUF), true);
    } finally {
      side?.close();
      await pmd2.stop();
    }
  },
);

peerTest(
  testpmdPeer,
  "vhost-user port: multi-segment jumbo frames from testpmd arrive whole through mergeable RX",
  async () => {
    const sock = socketPath("jumbo");
    const pmd = await Testpmd.start({ vdev: `net_vhost0,iface=${sock},queues=1`, fwd: "txonly" });
    let side: Side | null = null;
    try {
      side = openPort(sock, { mrg: true, mtu: 9000 });
      await pmd.cmd("set txpkts 2000,2000,1000");
      await pmd.cmd("start");
      const frame = new Uint8Array(8192);
      let bad = 0;
      let multi = 0;
      const [frames, bytes] = rxFor(side, 5000, (m) => {
        const len = side!.pool.read(m, frame);
        if (side!.pool.nbSegs[m] > 1) multi++;
        // Ethernet/IPv4/UDP headers of testpmd's txonly frame, with lengths of the whole frame.
        const ipLen = (frame[16] << 8) | frame[17];
        const udpLen = (frame[38] << 8) | frame[39];
        if (
          len !== 5000 || side!.pool.pktLen[m] !== 5000 || frame[12] !== 0x08 ||
          frame[13] !== 0x00 || ipLen !== 5000 - 14 || udpLen !== 5000 - 34
        ) bad++;
      }, 20_000);
      await pmd.cmd("stop");
      const [f2, b2] = rxFor(side, 200);
      const s = pmd.stats();
      assert.ok(frames > 1000, `only ${frames} jumbo frames`);
      assert.equal(bad, 0);
      assert.equal(multi, frames);
      assert.equal(frames + f2, s.opackets);
      assert.equal(bytes + b2, s.obytes);
    } finally {
      side?.close();
      await pmd.stop();
    }
  },
);

peerTest(
  testpmdPeer,
  "vhost-user port: backend killed and restarted under traffic, link down/up, forwarding resumes",
  async () => {
    const sock = socketPath("kill");
    const vdev = `net_vhost0,iface=${sock},queues=1`;
    let pmd = await Testpmd.start({ vdev, fwd: "mac" });
    let side: Side | null = null;
    try {
      side = openPort(sock);
      const links: boolean[] = [];
      side.port.onLinkChange = (up) => links.push(up);
      await pmd.cmd("start tx_first");
      assert.ok(forwardAtLeast(side, 1000), "no forwarding before the kill");
      await pmd.kill();
      await pmd.stop();
      Deno.removeSync(sock);
      const end = performance.now() + 5000;
      while (side.port.linkUp && performance.now() < end) forwardFor(side, 10);
      assert.equal(side.port.linkUp, false);
      pmd = await Testpmd.start({ vdev, fwd: "mac" });
      const end2 = performance.now() + 10_000;
      while (!side.port.linkUp && performance.now() < end2) forwardFor(side, 10);
      assert.equal(side.port.linkUp, true);
      await pmd.cmd("start tx_first");
      assert.ok(forwardAtLeast(side, 1000), "forwarding did not resume");
      assert.deepEqual(links, [false, true]);
    } finally {
      side?.close();
      await pmd.stop();
    }
  },
);

peerTest(
  testpmdPeer,
  "vhost-user port: stopped and started again, then reopened on the same socket",
  async () => {
    const sock = socketPath("portrestart");
    const pmd = await Testpmd.start({
      vdev: `net_vhost0,iface=${sock},queues=1`,
      fwd: "txonly",
      autoStart: true,
    });
    let side: Side | null = null;
    try {
      side = openPort(sock);
      assert.ok(rxAtLeast(side, 1000), "no traffic at first");
      side.port.stop();
      assert.equal(side.pool.available, side.pool.count); // every buffer came back
      side.port.start();
      assert.ok(rxAtLeast(side, 1000), "no traffic after stop/start");
      side.close();
      side = openPort(sock);
      assert.ok(rxAtLeast(side, 1000), "no traffic on a new connection");
    } finally {
      side?.close();
      await pmd.stop();
    }
  },
);

peerTest(
  testpmdPeer,
  "vhost-user port: the device status goes to DPDK's vhost step by step (SET_STATUS, FEATURES_OK read back)",
  async () => {
    const sock = socketPath("status");
    const pmd = await Testpmd.start({ vdev: `net_vhost0,iface=${sock},queues=1`, fwd: "io" });
    let side: Side | null = null;
    try {
      side = openPort(sock);
      assert.ok(has(side.t.protocolFeatures, 16)); // VHOST_USER_PROTOCOL_F_STATUS
      const from = pmd.log().length;
      side.port.stop();
      side.port.start();
      await pmd.waitLog(/new device status\(0x0000000f\)/, 5000, from);
      side.port.stop();
      await pmd.waitLog(
        /new device status\(0x0000000f\)[^]*new device status\(0x00000000\)/,
        5000,
        from,
      );
      // What DPDK read, in order: stop (status 0), ACKNOWLEDGE, DRIVER, the features, FEATURES_OK
      // and a read-back, DRIVER_OK once the vrings are set, and 0 at the second stop.
      const steps = pmd.log().slice(from).match(
        /new device status\(0x[0-9a-f]+\)|VHOST_USER_(SET_FEATURES|GET_STATUS|SET_MEM_TABLE)/g,
      );
      assert.deepEqual(steps, [
        "new device status(0x00000000)",
        "new device status(0x00000001)",
        "new device status(0x00000003)",
        "VHOST_USER_SET_FEATURES",
        "new device status(0x0000000b)",
        "VHOST_USER_GET_STATUS",
        "VHOST_USER_SET_MEM_TABLE",
        "new device status(0x0000000f)",
        "new device status(0x00000000)",
      ]);
    } finally {
      side?.close();
      await pmd.stop();
    }
  },
);

peerTest(
  testpmdPeer,
  "vhost-user port: the backend maps buffers and rings as one memory region (two without room)",
  async () => {
    const sock = socketPath("regions");
    const pmd = await Testpmd.start({ vdev: `net_vhost0,iface=${sock},queues=1`, fwd: "txonly" });
    try {
      // 4096 buffers of 2048 bytes fill 8 MiB exactly: with no ring room the rings need their own.
      for (const [ringRoom, regions] of [[undefined, 1], [0, 2]] as const) {
        const from = pmd.log().length;
        const s = openPort(sock, { pool: { dataRoom: 2048 - 128, ringRoom } });
        try {
          await pmd.cmd("start");
          assert.ok(rxAtLeast(s, 2000), `frames arrive (ring room ${ringRoom ?? "default"})`);
          await pmd.cmd("stop");
          const mapped = pmd.log().slice(from).match(/guest memory region size/g) ?? [];
          assert.equal(
            mapped.length,
            regions,
            `regions mapped (ring room ${ringRoom ?? "default"})`,
          );
        } finally {
          s.close();
        }
      }
    } finally {
      await pmd.stop();
    }
  },
);

peerTest(testpmdPeer, "vhost-user port: control commands answered locally", async () => {
  const sock = socketPath("ctrl");
  const pmd = await Testpmd.start({ vdev: `net_vhost0,iface=${sock},queues=1`, fwd: "rxonly" });
  let side: Side | null = null;
  try {
    side = openPort(sock);
    assert.ok(has(side.port.features, NetFeature.CTRL_VQ));
    side.port.setPromiscuous(false);
    side.port.setAllMulticast(true);
    side.port.setMacTable([Uint8Array.of(2, 0, 0, 0, 0, 7)], []);
    side.port.setMacAddress(Uint8Array.of(2, 0, 0, 0, 0, 8));
    assert.deepEqual([...side.t.mac], [2, 0, 0, 0, 0, 8]);
    assert.equal(side.t.ctrlStats.ok, 4);
    assert.throws(() => side!.port.addVlan(5), /CTRL_VLAN/);
    // The backend was never given the control features.
    assert.equal(has(side.t.backendNegotiated, NetFeature.CTRL_VQ), false);
    assert.equal(has(side.t.backendNegotiated, NetFeature.CTRL_RX), false);
    assert.equal(has(side.t.backendNegotiated, Feature.VERSION_1), true);
  } finally {
    side?.close();
    await pmd.stop();
  }
});

peerTest(testpmdPeer, "vhost-user port: two queue pairs (MQ), frames arrive on both", async () => {
  const sock = socketPath("mq");
  const pmd = await Testpmd.start({
    vdev: `net_vhost0,iface=${sock},queues=2`,
    fwd: "txonly",
    app: ["--rxq=2", "--txq=2"],
  });
  let t: VhostUserTransport | null = null;
  let pool: MbufPool | null = null;
  let port: Port | null = null;
  try {
    t = new VhostUserTransport({ path: sock, queues: 2 });
    pool = new MbufPool({ count: 4096, kind: "memfd" });
    port = new Port(0, t);
    port.configure({ pool, queues: 2, rxd: 256, txd: 256 });
    port.start();
    assert.ok(has(port.features, NetFeature.MQ));
    assert.ok(has(t.protocolFeatures, 0)); // VHOST_USER_PROTOCOL_F_MQ
    await pmd.cmd("start");
    const pkts = new Uint32Array(32);
    const perQueue = [0, 0];
    const take = () => {
      for (let q = 0; q < 2; q++) {
        const n = port!.rxBurst(q, pkts, 32);
        for (let i = 0; i < n; i++) pool!.free(pkts[i]);
        perQueue[q] += n;
      }
      port!.poll();
    };
    until(5000, take, () => perQueue[0] > 20_000 && perQueue[1] > 20_000);
    await pmd.cmd("stop");
    spin(200, take);
    const s = pmd.stats();
    assert.ok(perQueue[0] > 1000 && perQueue[1] > 1000, `per queue: ${perQueue}`);
    assert.equal(perQueue[0] + perQueue[1], s.opackets);
  } finally {
    port?.close();
    pool?.close();
    t?.close();
    await pmd.stop();
  }
});

// ---- without a peer: port spec and missing-backend errors -------------------------------------

Deno.test("vhost-user spec: bad options are one-line errors naming the option", () => {
  const path = socketPath("spec");
  assert.throws(() => VhostUserTransport.fromSpec("", {}), /socket path is required/);
  assert.throws(() => VhostUserTransport.fromSpec(path, { bogus: "1" }), /unknown option 'bogus'/);
  assert.throws(() => VhostUserTransport.fromSpec(path, { mrg: "maybe" }), /mrg=maybe/);
  assert.throws(
    () => VhostUserTransport.fromSpec(path, { in_order: "2" }),
    /vhost-user option in_order=2: expected 0 or 1/,
  );
  assert.throws(() => VhostUserTransport.fromSpec(path, { queues: "0" }), /queues=0/);
  assert.throws(() => VhostUserTransport.fromSpec(path, { mac: "02:00:00" }), /bad MAC/);
  assert.throws(
    () => VhostUserTransport.fromSpec(path, { mac: "03:00:00:00:00:01" }),
    /mac=03:00:00:00:00:01: a port's own address must be unicast \(first byte even\)/,
  );
  assert.throws(
    () => VhostUserTransport.fromSpec(path, { mac: "00:00:00:00:00:00" }),
    /mac=00:00:00:00:00:00: .* not all zero/,
  );
  assert.throws(
    () => VhostUserTransport.fromSpec(path, { qsize: "300", timeout: "1" }),
    /qsize 300 is not a power of two/,
  );
});

Deno.test("vhost-user spec: a path that is not a socket is an error at once, and left alone", () => {
  const dir = Deno.makeTempDirSync({ prefix: "vpmd-vu-" });
  const file = `${dir}/notes.txt`;
  Deno.writeTextFileSync(file, "keep");
  const t0 = performance.now();
  assert.throws(
    () => VhostUserTransport.fromSpec(dir, { timeout: "10" }),
    new RegExp(`vhost-user:${dir}: cannot connect to ${dir}: it exists and is not a socket$`),
  );
  assert.ok(performance.now() - t0 < 2000, "no wait for the 10 s timeout");
  assert.throws(
    () => VhostUserTransport.fromSpec(file, { server: "", timeout: "1" }),
    /,server: .*notes\.txt exists and is not a socket: remove it or choose/,
  );
  assert.equal(Deno.readTextFileSync(file), "keep");
  assert.throws(
    () => VhostUserTransport.fromSpec(`${dir}/x.sock`, { mac: "zz" }),
    /vhost-user:.*x\.sock: mac=zz: bad MAC address 'zz'/,
  );
  Deno.removeSync(dir, { recursive: true });
});

Deno.test("vhost-user spec: no backend is a clear error after the timeout (client and server)", () => {
  const path = socketPath("nobody");
  assert.throws(
    () => VhostUserTransport.fromSpec(path, { timeout: "1" }),
    /nobody is listening.*is the vhost-user backend running\?/,
  );
  assert.throws(
    () => VhostUserTransport.fromSpec(path, { server: "", timeout: "1" }),
    /no vhost-user backend connected within 1000 ms/,
  );
  // Server mode removed its socket file again.
  assert.throws(() => Deno.statSync(path), Deno.errors.NotFound);
});

Deno.test("vhost-user spec: a socket in a directory that does not exist is an error at once", () => {
  const dir = Deno.makeTempDirSync({ prefix: "vpmd-vu-" });
  const path = `${dir}/gone/x.sock`;
  try {
    const t0 = performance.now();
    assert.throws(
      () => VhostUserTransport.fromSpec(path, { timeout: "10" }),
      new RegExp(
        `^Error: vhost-user:${path}: cannot connect to unix socket ${path}: ` +
          `the directory ${dir}/gone does not exist$`,
      ),
    );
    assert.throws(
      () => VhostUserTransport.fromSpec(path, { server: "", timeout: "10" }),
      new RegExp(
        `^Error: vhost-user:${path},server: cannot listen on ${path}: ` +
          `the directory ${dir}/gone does not exist$`,
      ),
    );
    assert.ok(performance.now() - t0 < 2000, "no wait for the 10 s timeout");
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

// ---- a misbehaving backend (a small fake in a subprocess) -------------------------------------

/** Run `fn` against a fake backend (tests/lib/fake_vhost.ts) in `mode` on a fresh socket path. */
function withFake(mode: string, fn: (path: string, fake: Fake) => void | Promise<void>) {
  const path = socketPath(`fake-${mode}`);
  return withFakeAt(path, mode, (fake) => fn(path, fake));
}

function startOn(t: VhostUserTransport): () => void {
  const pool = new MbufPool({ count: 1024, kind: "memfd" });
  const port = new Port(0, t);
  port.configure({ pool });
  return () => {
    try {
      port.start();
    } finally {
      port.close();
      pool.close();
      t.close();
    }
  };
}

Deno.test("vhost-user: a backend that refuses the memory table fails the port start clearly", async () => {
  await withFake("nack-mem", (path) => {
    const t = new VhostUserTransport({ path });
    assert.equal(has(t.protocolFeatures, 3), true); // REPLY_ACK negotiated
    assert.throws(startOn(t), /refused SET_MEM_TABLE/);
  });
});

Deno.test("vhost-user: a backend that hangs up during set-up leaves the link down, no crash", async () => {
  await withFake("hangup", (path) => {
    const t = new VhostUserTransport({ path });
    const pool = new MbufPool({ count: 1024, kind: "memfd" });
    const port = new Port(0, t);
    try {
      port.configure({ pool });
      port.start();
      assert.equal(port.linkUp, false);
      const pkts = new Uint32Array(32);
      assert.equal(port.rxBurst(0, pkts, 32), 0);
    } finally {
      port.close();
      pool.close();
      t.close();
    }
  });
});

Deno.test("vhost-user: a reply without its payload is an error, not a stale value", async () => {
  await withFake("short-reply", (path) => {
    assert.throws(
      () => new VhostUserTransport({ path }),
      /malformed reply to GET_PROTOCOL_FEATURES \(version 1, 0 bytes of payload, expected version 1 and 8\)/,
    );
  });
});

Deno.test("vhost-user: a start the backend refuses part-way ends the connection (it lets go of our memory)", async () => {
  await withFake("nack-enable", async (path, fake) => {
    const t = new VhostUserTransport({ path });
    const pool = new MbufPool({ count: 1024, kind: "memfd" });
    const port = new Port(0, t);
    try {
      port.configure({ pool });
      // Memory table, rings, kick and call fds are handed over before SET_VRING_ENABLE is refused.
      assert.throws(() => port.start(), /refused SET_VRING_ENABLE/);
      // Port, pool and transport are still open: the backend saw the connection end all the same.
      assert.match(await fake.readUntil(/closed/), /mem[^]*closed/);
      assert.equal(t.linkStats.lost, 1);
    } finally {
      port.close();
      pool.close();
      t.close();
    }
  });
});

Deno.test("vhost-user: a backend that drops FEATURES_OK (GET_STATUS) fails the start before any memory is handed over", async () => {
  await withFake("drop-features-ok", async (path, fake) => {
    const logs: string[] = [];
    const t = new VhostUserTransport({ path, notice: (k, m) => logs.push(`${k}: ${m}`) });
    const pool = new MbufPool({ count: 1024, kind: "memfd" });
    const port = new Port(0, t);
    try {
      port.configure({ pool });
      assert.throws(() => port.start(), /the device did not accept the features/);
      assert.ok(
        logs.some((m) =>
          /the backend did not accept the features 0x1\d+ \(its status 0x3\)/.test(m)
        ),
        logs.join("\n"),
      );
      port.close();
      t.close();
      // ACKNOWLEDGE, DRIVER, FEATURES_OK (dropped by the backend), then the port's reset and
      // FAILED (3.1.1); never the memory table, never DRIVER_OK.
      const seen = await fake.readUntil(/closed/);
      assert.deepEqual(seen.match(/status \d+|mem/g), [
        "status 1",
        "status 3",
        "status 11",
        "status 0",
        "status 128",
      ]);
    } finally {
      port.close();
      pool.close();
      t.close();
    }
  });
});

Deno.test("vhost-user: reconnecting to a backend that never answers, or to no socket at all, keeps polls short", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "vpmd-vu-" });
  const path = `${dir}/sock`;
  const child = fakeBackend(path, "ok");
  const logs: string[] = [];
  let t: VhostUserTransport | null = null;
  try {
    t = new VhostUserTransport({ path, notice: (k, m) => logs.push(`${k}: ${m}`) });
    child.kill("SIGKILL");
    await child.output();
    // A listener that never accepts nor answers takes the path: each attempt connects, then
    // its handshake times out.
    const deaf = new UnixListener(path, 4);
    const pollFor = (ms: number, until: () => boolean) => {
      let longest = 0;
      for (const end = performance.now() + ms; performance.now() < end && !until();) {
        const p0 = performance.now();
        t!.poll();
        longest = Math.max(longest, performance.now() - p0);
      }
      return longest;
    };
    const failed = () => logs.filter((m) => /reconnect failed/.test(m));
    const longest = pollFor(4000, () => failed().length >= 2);
    deaf.close();
    assert.equal(t.linkStats.lost, 1);
    // The connection ended soon after it began: a failure like the attempts that follow, each
    // doubling the wait.
    assert.match(logs[0], /^backend-lost: .*next attempt in 200 ms$/);
    assert.match(
      failed()[0],
      /^reconnect-failed: .*no answer from the peer within 500 ms.*next attempt in 400 ms$/,
    );
    assert.match(failed()[1], /next attempt in 800 ms/);
    assert.ok(longest < 1500, `a poll took ${longest.toFixed(0)} ms`);
    // Now the socket's directory becomes a file: connect fails with ENOTDIR, which is reported
    // and retried, not thrown out of poll().
    Deno.removeSync(dir, { recursive: true });
    Deno.writeTextFileSync(dir, "not a directory");
    pollFor(2000, () => failed().length >= 3);
    assert.match(failed()[2], /connect.*Not a directory.*next attempt in 1000 ms/);
  } finally {
    t?.close();
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
    await child.status;
    Deno.removeSync(dir, { recursive: true });
  }
});

/** A transport on `path` whose notices land in `notices` as "kind: message". */
function noticed(path: string, notices: string[]): VhostUserTransport {
  return new VhostUserTransport({ path, notice: (k, m) => notices.push(`${k}: ${m}`) });
}

/**
 * Port 0 on a fake `ctrl-tamper` backend that, once the port runs, keeps the control ring's
 * avail.idx `ahead` of its used.idx for `secs` seconds (every descriptor a link in an endless
 * chain), then runs `check` with the port, its transport, its notices and the fake.
 */
async function tamperedCtrl(
  ahead: number,
  secs: number,
  check: (port: Port, t: VhostUserTransport, notices: string[], fake: Fake) => Promise<void>,
): Promise<void> {
  await withFake("ctrl-tamper", async (path, fake) => {
    const notices: string[] = [];
    const t = noticed(path, notices);
    // Where the port puts its control ring (queue 2): the fake is told, as a backend could find.
    const queues: QueueMemory[] = [];
    const setupQueue = t.setupQueue.bind(t);
    t.setupQueue = (q) => {
      queues.push(q);
      setupQueue(q);
    };
    const pool = new MbufPool({ count: 1024, kind: "memfd" });
    const port = new Port(0, t);
    try {
      port.configure({ pool });
      port.start();
      const q = queues.find((q) => q.index === 2)!;
      const at = (off: number) => q.region.addr + off;
      const avail = at(q.availOffset + Avail.IDX);
      const used = at(q.usedOffset + Used.IDX);
      const line = `${at(q.descOffset)} ${avail} ${used} ${q.size} ${ahead} ${secs}\n`;
      await fake.stdin.write(new TextEncoder().encode(line));
      await fake.readUntil(/tampering/);
      // Its first write has landed (nothing served yet: nothing polled).
      const u16 = q.region.u16;
      const moved = () =>
        u16[(q.availOffset + Avail.IDX) >> 1] !== u16[(q.usedOffset + Used.IDX) >> 1];
      for (const end = Date.now() + 5000; !moved() && Date.now() < end;) {
        await new Promise((r) => setTimeout(r, 1));
      }
      assert.ok(moved(), "the fake backend wrote nothing");
      await check(port, t, notices, fake);
    } finally {
      port.close();
      pool.close();
      t.close();
    }
  });
}

/** 1000 polls of `port`, within 2.5 s; returns how many were done. */
function thousandPolls(port: Port): [number, number] {
  let polls = 0;
  const t0 = performance.now();
  for (const end = t0 + 2500; polls < 1000 && performance.now() < end; polls++) port.poll();
  return [polls, performance.now() - t0];
}

Deno.test("vhost-user: a backend that keeps the control ring's avail index one behind cannot stall poll()", async () => {
  await tamperedCtrl(-1, 3, async (port, t, notices, fake) => {
    // avail.idx stays one behind used.idx (65535 ahead), every chain endless: served, that is
    // 65535 chains of 64 descriptors in every poll (seconds each here). 1000 polls take
    // milliseconds when the index is refused; the bound is generous.
    const [polls, took] = thousandPolls(port);
    assert.equal(polls, 1000, `only ${polls} polls in ${took.toFixed(0)} ms`);
    spin(200, () => port.poll()); // the backend still rewrites the index: told once all the same
    const told = notices.filter((n) => n.startsWith(`${Notice.CTRL_RING_ERROR}:`));
    assert.equal(told.length, 1, notices.join("\n"));
    assert.match(
      told[0],
      /^ctrl-ring-error: control queue: avail\.idx \d+ with \d+ served, not within the ring's 64 entries ahead, which the driver never writes/,
    );
    assert.equal(t.ctrlStats.ringErrors, 1);
    // The queue is not served any more: the driver's next command fails, and says so.
    assert.match(await fake.readUntil(/tampered \d+/), /tampered [1-9]/);
    assert.throws(() => port.setPromiscuous(false), /did not answer on the control queue/);
    // A restart sets the queue up afresh, and it is served again.
    port.stop();
    port.start();
    const ok = t.ctrlStats.ok;
    port.setPromiscuous(false);
    assert.equal(t.ctrlStats.ok, ok + 1);
  });
});

Deno.test("vhost-user: a backend that keeps a full control ring of endless chains gets one served", async () => {
  await tamperedCtrl(64, 1, async (port, t, notices, fake) => {
    const [polls, took] = thousandPolls(port);
    assert.equal(polls, 1000, `only ${polls} polls in ${took.toFixed(0)} ms`);
    assert.equal(t.ctrlStats.malformed, 1);
    assert.equal(notices.length, 1, notices.join("\n"));
    assert.match(
      notices[0],
      /^ctrl-ring-error: control queue: a malformed command chain \(descriptor 0\), which the driver never writes/,
    );
    await fake.readUntil(/tampered/);
  });
});

Deno.test("vhost-user: a backend that hangs up at SET_MEM_TABLE is retried less and less often, every loss told", async () => {
  await withFake("hangup", (path) => {
    const notices: string[] = [];
    const t = noticed(path, notices);
    const pool = new MbufPool({ count: 1024, kind: "memfd" });
    const port = new Port(0, t, { log: (m) => notices.push(`port: ${m}`) });
    try {
      port.configure({ pool });
      port.start(); // the hang-up is a link down, not an error
      assert.equal(port.linkUp, false);
      spin(3500, () => port.poll());
      // Waits of 200, 400, 800, 1000 ms (plus set-up time): about five connections in 3.5 s,
      // where a fixed 100 ms gave 30.
      const lost = notices.filter((n) => n.startsWith(`${Notice.BACKEND_LOST}:`));
      const back = notices.filter((n) => n.startsWith(`${Notice.BACKEND_RETURNED}:`));
      assert.ok(t.linkStats.returned >= 2 && t.linkStats.returned <= 6, notices.join("\n"));
      assert.equal(lost.length, t.linkStats.lost);
      assert.equal(back.length, t.linkStats.returned);
      assert.match(lost[0], /set-up failed: SET_MEM_TABLE: .*peer closed the connection/);
      assert.deepEqual(
        lost.slice(0, 4).map((n) => Number(/next attempt in (\d+) ms$/.exec(n)?.[1])),
        [200, 400, 800, 1000],
      );
      assert.equal(port.linkUp, false);
    } finally {
      port.close();
      pool.close();
      t.close();
    }
  });
});

Deno.test("vhost-user: a backend that does not answer GET_VRING_BASE at stop is told, and let go of within a second", async () => {
  await withFake("deaf-stop", async (path, fake) => {
    const notices: string[] = [];
    const t = noticed(path, notices);
    const pool = new MbufPool({ count: 1024, kind: "memfd" });
    const port = new Port(0, t);
    try {
      port.configure({ pool });
      port.start();
      assert.equal(port.linkUp, true);
      const t0 = performance.now();
      port.stop();
      const took = performance.now() - t0;
      assert.ok(took < 3000, `stopping took ${took.toFixed(0)} ms`);
      assert.equal(notices.length, 1, notices.join("\n"));
      assert.match(
        notices[0],
        /^stop-failed: stopping the vrings failed: GET_VRING_BASE: unix socket: no answer from the peer within 1000 ms; connection closed$/,
      );
      assert.match(await fake.readUntil(/closed/), /mem[^]*closed/); // the backend saw the end
    } finally {
      port.close();
      pool.close();
      t.close();
    }
  });
});

Deno.test("vhost-user: a reply to the wrong request is an error naming both", async () => {
  await withFake("wrong-reply", (path) => {
    assert.throws(
      () => new VhostUserTransport({ path }),
      /expected a reply to GET_FEATURES, got GET_PROTOCOL_FEATURES/,
    );
  });
});

peerTest(testpmdPeer, "vhost-user CLI: vpmd fwd vhost-user:PATH --mode rxonly --json", async () => {
  const sock = socketPath("cli");
  const pmd = await Testpmd.start({
    vdev: `net_vhost0,iface=${sock},queues=1`,
    fwd: "txonly",
    autoStart: true,
  });
  try {
    const main = new URL("../main.ts", import.meta.url).pathname;
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        main,
        "fwd",
        `vhost-user:${sock}`,
        "--mode",
        "rxonly",
        "--duration",
        "2",
        "--json",
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 0, stderr);
    const last = new TextDecoder().decode(out.stdout).trim().split("\n").pop()!;
    const summary = JSON.parse(last);
    const p = summary.ports[0];
    assert.match(p.name, /vhost-user:/);
    assert.ok(p.rxPackets > 1000, `only ${p.rxPackets} frames`);
    assert.ok(p.rxPackets <= pmd.stats().opackets); // never more than the backend delivered
    assert.equal(p.rxErrors, 0);
    assert.equal(p.rxBytes, p.rxPackets * 64); // testpmd's txonly frames are 64 bytes
  } finally {
    await pmd.stop();
  }
});
