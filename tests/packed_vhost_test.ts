/**
 * Packed virtqueues (2.8) against DPDK's vhost PMD (`vhost-user:PATH,packed=1`): the backend
 * negotiates VIRTIO_F_RING_PACKED, and frames go both ways byte-exact in count and size, with and
 * without in-order and mergeable buffers, through a MAC loop, the control queue (answered
 * locally over a packed ring), and a backend killed and restarted under traffic.
 */
import assert from "assert";
import { MbufPool } from "../mod/mbuf.ts";
import { Port } from "../mod/port.ts";
import { writeTestFrame } from "../mod/testframe.ts";
import { VhostUserTransport } from "../mod/transport/vhost_user.ts";
import { Feature, has, NetFeature } from "../mod/virtio/constants.ts";
import { peerTest } from "./lib/peers.ts";
import { socketPath, Testpmd, testpmdPeer } from "./lib/testpmd.ts";

interface Side {
  t: VhostUserTransport;
  pool: MbufPool;
  port: Port;
  close(): void;
}

function openPacked(
  sock: string,
  opts: { mrg?: boolean; inOrder?: boolean; mtu?: number } = {},
): Side {
  const t = new VhostUserTransport({
    path: sock,
    packed: true,
    mrg: opts.mrg ?? false,
    inOrder: opts.inOrder ?? true,
  });
  const pool = new MbufPool({
    count: 4096,
    kind: t.dmaKinds.includes("hugepage-memfd") ? "hugepage-memfd" : "memfd",
  });
  const port = new Port(0, t, { log: () => {} });
  port.configure({ pool, rxd: 256, txd: 256, mrgRxbuf: opts.mrg ?? false, mtu: opts.mtu });
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

/** Run `step` until `done()` or `ms` pass. */
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

/** Receive for `ms` or until `enough` frames; frees them; [frames, bytes]. */
function rxFor(s: Side, ms: number, enough = Infinity): [number, number] {
  const pkts = new Uint32Array(32);
  let frames = 0;
  let bytes = 0;
  until(ms, () => {
    const n = s.port.rxBurst(0, pkts, 32);
    for (let i = 0; i < n; i++) {
      bytes += s.pool.pktLen[pkts[i]];
      s.pool.free(pkts[i]);
    }
    frames += n;
    s.port.poll();
  }, () => frames >= enough);
  return [frames, bytes];
}

/** io-forward frames back out of the same port for `ms` or until `enough`; frames forwarded. */
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

const PACKED = (f: bigint) => has(f, Feature.RING_PACKED);
const BROADCAST = new Uint8Array(6).fill(0xff);
const SRC = Uint8Array.of(2, 0, 0, 0, 0, 1);

for (const [mrg, inOrder] of [[false, true], [true, true], [false, false]]) {
  const variant = `mrg ${mrg ? "on" : "off"}, in_order ${inOrder ? "on" : "off"}`;
  peerTest(
    testpmdPeer,
    `packed vhost-user (${variant}): testpmd txonly -> vpmd, every frame and byte counted`,
    async () => {
      const sock = socketPath("pk-rx");
      const pmd = await Testpmd.start({ vdev: `net_vhost0,iface=${sock},queues=1`, fwd: "txonly" });
      let side: Side | null = null;
      try {
        side = openPacked(sock, { mrg, inOrder });
        assert.ok(PACKED(side.port.features), "RING_PACKED negotiated");
        assert.equal(has(side.port.features, Feature.IN_ORDER), inOrder);
        assert.equal(has(side.port.features, NetFeature.MRG_RXBUF), mrg);
        // DPDK's vhost took the packed ring (bit 34 of the features it was given).
        const m = pmd.log().match(/negotiated Virtio features: 0x([0-9a-f]+)/);
        assert.ok(m && (BigInt(`0x${m[1]}`) & (1n << 34n)) !== 0n, "backend negotiated packed");
        await pmd.cmd("start");
        const [frames, bytes] = rxFor(side, 5000, 50_000);
        await pmd.cmd("stop");
        const [f2, b2] = rxFor(side, 300);
        const s = pmd.stats();
        assert.ok(frames > 10_000, `only ${frames} frames`);
        assert.equal(frames + f2, s.opackets);
        assert.equal(bytes + b2, s.obytes);
        const p = side.port.stats;
        assert.equal(p.rxErrors + p.rxNoMbuf + p.rxDropped, 0, JSON.stringify(p));
      } finally {
        side?.close();
        await pmd.stop();
      }
    },
  );

  peerTest(
    testpmdPeer,
    `packed vhost-user (${variant}): vpmd -> testpmd rxonly, every frame and byte counted`,
    async () => {
      const sock = socketPath("pk-tx");
      const pmd = await Testpmd.start({
        vdev: `net_vhost0,iface=${sock},queues=1`,
        fwd: "rxonly",
        autoStart: true,
      });
      let side: Side | null = null;
      try {
        side = openPacked(sock, { mrg, inOrder });
        const { pool, port } = side;
        const pkts = new Uint32Array(32);
        const total = 40_000;
        let sent = 0;
        let bytes = 0;
        until(10_000, () => {
          const n = Math.min(32, total - sent);
          for (let i = 0; i < n; i++) {
            const m = pool.alloc();
            const len = 60 + ((sent + i) % 8) * 100;
            writeTestFrame(pool.bytes, pool.dataStart(m), len, 1, sent + i, BROADCAST, SRC);
            pool.dataLen[m] = len;
            pool.pktLen[m] = len;
            pkts[i] = m;
          }
          const k = port.txBurst(0, pkts, n);
          for (let i = 0; i < k; i++) bytes += pool.pktLen[pkts[i]];
          for (let i = k; i < n; i++) pool.free(pkts[i]);
          sent += k;
          port.poll();
        }, () => sent >= total);
        // Let testpmd take the rest, then compare.
        const end = Date.now() + 5000;
        while (pmd.stats().ipackets < sent && Date.now() < end) {
          port.txBurst(0, pkts, 0);
          await new Promise((r) => setTimeout(r, 20));
        }
        const s = pmd.stats();
        assert.equal(sent, total);
        assert.equal(s.ipackets, sent);
        assert.equal(s.ibytes, bytes);
        assert.equal(port.stats.txErrors, 0);
      } finally {
        side?.close();
        await pmd.stop();
      }
    },
  );
}

peerTest(testpmdPeer, "packed vhost-user: a MAC loop with testpmd loses nothing", async () => {
  const sock = socketPath("pk-loop");
  const pmd = await Testpmd.start({ vdev: `net_vhost0,iface=${sock},queues=1`, fwd: "mac" });
  let side: Side | null = null;
  try {
    side = openPacked(sock);
    await pmd.cmd("start tx_first");
    const moved = forwardFor(side, 5000, 50_000);
    await pmd.cmd("stop");
    forwardFor(side, 300);
    const s = pmd.stats();
    const p = side.port.stats;
    assert.ok(moved > 10_000, `only ${moved} frames went round`);
    assert.equal(p.rxPackets, s.opackets);
    assert.equal(p.txPackets, p.rxPackets);
    assert.equal(p.txDropped + p.rxErrors + p.rxNoMbuf + p.txErrors, 0, JSON.stringify(p));
    assert.equal(s.oerrors + s.imissed, 0);
  } finally {
    side?.close();
    await pmd.stop();
  }
});

peerTest(
  testpmdPeer,
  "packed vhost-user: mergeable multi-segment jumbo frames arrive whole",
  async () => {
    const sock = socketPath("pk-jumbo");
    const pmd = await Testpmd.start({ vdev: `net_vhost0,iface=${sock},queues=1`, fwd: "txonly" });
    let side: Side | null = null;
    try {
      side = openPacked(sock, { mrg: true, mtu: 9000 });
      await pmd.cmd("set txpkts 2000,2000,1000");
      await pmd.cmd("start");
      const [frames, bytes] = rxFor(side, 5000, 20_000);
      await pmd.cmd("stop");
      const [f2, b2] = rxFor(side, 300);
      const s = pmd.stats();
      assert.ok(frames > 1000, `only ${frames} jumbo frames`);
      assert.equal(frames + f2, s.opackets);
      assert.equal(bytes + b2, s.obytes);
      assert.equal(bytes + b2, 5000 * (frames + f2));
      assert.equal(side.port.stats.rxErrors, 0);
    } finally {
      side?.close();
      await pmd.stop();
    }
  },
);

peerTest(
  testpmdPeer,
  "packed vhost-user: control commands over a packed control ring",
  async () => {
    const sock = socketPath("pk-ctrl");
    const pmd = await Testpmd.start({ vdev: `net_vhost0,iface=${sock},queues=1`, fwd: "rxonly" });
    let side: Side | null = null;
    try {
      side = openPacked(sock);
      assert.ok(has(side.port.features, NetFeature.CTRL_VQ) && PACKED(side.port.features));
      // More commands than the control ring has entries: its wrap counter turns.
      for (let i = 0; i < 100; i++) side.port.setPromiscuous(i % 2 === 0);
      side.port.setMacAddress(Uint8Array.of(2, 0, 0, 0, 0, 9));
      assert.deepEqual([...side.t.mac], [2, 0, 0, 0, 0, 9]);
      assert.equal(side.t.ctrlStats.ok, 101);
      assert.equal(side.t.ctrlStats.malformed + side.t.ctrlStats.ringErrors, 0);
    } finally {
      side?.close();
      await pmd.stop();
    }
  },
);

peerTest(
  testpmdPeer,
  "packed vhost-user: backend killed and restarted under traffic, forwarding resumes on fresh rings",
  async () => {
    const sock = socketPath("pk-kill");
    const vdev = `net_vhost0,iface=${sock},queues=1`;
    let pmd = await Testpmd.start({ vdev, fwd: "mac" });
    let side: Side | null = null;
    try {
      side = openPacked(sock);
      await pmd.cmd("start tx_first");
      assert.ok(forwardFor(side, 5000, 1000) >= 1000, "no forwarding before the kill");
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
      assert.ok(PACKED(side.port.features), "packed again after the reconnect");
      await pmd.cmd("start tx_first");
      assert.ok(forwardFor(side, 5000, 1000) >= 1000, "forwarding did not resume");
    } finally {
      side?.close();
      await pmd.stop();
    }
  },
);
