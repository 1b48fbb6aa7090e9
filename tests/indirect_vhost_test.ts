/**
 * Indirect descriptors (VIRTIO_F_INDIRECT_DESC; 2.7.5.3 split, 2.8.7 packed) against DPDK's vhost
 * PMD: with `indirect=1` the backend's bit is negotiated, and multi-segment frames sent by vpmd's
 * txonly engine (each one ring descriptor pointing at an indirect table) reach testpmd (rxonly)
 * whole: every frame and byte counted, on split and packed rings, with and without in-order.
 */
import assert from "assert";
import { createEngine } from "../mod/fwd/engines.ts";
import { ForwardLoop } from "../mod/fwd/loop.ts";
import { buildStreams, reclaimSent } from "../mod/fwd/streams.ts";
import { MbufPool } from "../mod/mbuf.ts";
import { Port } from "../mod/port.ts";
import { VhostUserTransport } from "../mod/transport/vhost_user.ts";
import { Feature, has } from "../mod/virtio/constants.ts";
import { peerTest } from "./lib/peers.ts";
import { socketPath, Testpmd, testpmdPeer } from "./lib/testpmd.ts";

const SHAPES = [[64, 1400], [64, 100, 200, 300, 400, 300], Array(16).fill(60)];

for (const packed of [false, true]) {
  for (const inOrder of [true, false]) {
    const kind = `${packed ? "packed" : "split"}${inOrder ? ", in order" : ""}`;
    peerTest(
      testpmdPeer,
      `vhost-user indirect (${kind}): multi-segment frames through indirect tables reach testpmd whole`,
      async () => {
        const sock = socketPath("ind-tx");
        const pmd = await Testpmd.start({
          vdev: `net_vhost0,iface=${sock},queues=1`,
          fwd: "rxonly",
          autoStart: true,
        });
        const t = new VhostUserTransport({
          path: sock,
          packed,
          inOrder,
          indirect: true,
          mrg: false,
        });
        const pool = new MbufPool({
          count: 8192,
          kind: t.dmaKinds.includes("hugepage-memfd") ? "hugepage-memfd" : "memfd",
        });
        const port = new Port(0, t, { log: () => {} });
        try {
          port.configure({ pool, rxd: 256, txd: 256, mrgRxbuf: false });
          port.start();
          assert.ok(has(port.features, Feature.INDIRECT_DESC), "INDIRECT_DESC negotiated");
          assert.equal(has(port.features, Feature.RING_PACKED), packed);
          assert.equal(has(port.features, Feature.IN_ORDER), inOrder);
          // DPDK's vhost took it too (bit 28 of the features it was given).
          const m = [...pmd.log().matchAll(/negotiated Virtio features: 0x([0-9a-f]+)/g)].pop();
          assert.ok(m && (BigInt(`0x${m[1]}`) & (1n << 28n)) !== 0n, "backend negotiated it");
          let bytes = 0;
          for (const txpkts of SHAPES) {
            const before = port.stats.txPackets;
            const engine = createEngine("txonly", { pool, burst: 32, peers: [], txpkts });
            const loop = new ForwardLoop([port], buildStreams([port], "txonly", 1, 32), engine);
            await loop.run({ untilMs: performance.now() + 700 });
            await loop.drain(20, 2000);
            const frames = port.stats.txPackets - before;
            assert.ok(frames > 1000, `${txpkts}: only ${frames} frames`);
            bytes += frames * txpkts.reduce((a, b) => a + b, 0);
          }
          // Let testpmd take the rest, then compare.
          const end = Date.now() + 5000;
          while (pmd.stats().ipackets < port.stats.txPackets && Date.now() < end) {
            reclaimSent([port], 1);
            await new Promise((r) => setTimeout(r, 20));
          }
          const s = pmd.stats();
          assert.equal(s.ipackets, port.stats.txPackets);
          assert.equal(s.ibytes, port.stats.txBytes);
          assert.equal(port.stats.txBytes, bytes);
          assert.equal(port.stats.txErrors, 0);
        } finally {
          port.stop();
          port.close();
          pool.close();
          t.close();
          await pmd.stop();
        }
      },
    );
  }
}
