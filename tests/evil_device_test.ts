/**
 * The driver against a misbehaving simulated device (`sim:NAME,evil=MODE`, every 7th received
 * frame wrong): it counts an error, drops the frame, never throws out of the burst loop, keeps
 * forwarding the good frames with correct content, and gets every buffer back at stop. (A bad
 * num_buffers in a buffer with room left is not seen: such a buffer is a whole frame.)
 */
import assert from "assert";
import { buildStreams, reclaimSent } from "../mod/fwd/cli.ts";
import { createEngine } from "../mod/fwd/engines.ts";
import { ForwardLoop } from "../mod/fwd/loop.ts";
import { MbufPool } from "../mod/mbuf.ts";
import { Port } from "../mod/port.ts";
import { EVIL_MODES } from "../mod/sim/device.ts";
import { SimTransport } from "../mod/sim/transport.ts";

const VARIANTS: { what: string; spec: Record<string, string>; mtu: number | undefined }[] = [
  { what: "", spec: {}, mtu: undefined },
  // 3000-byte frames need two 2048-byte buffers: the mergeable-RX path (num_buffers 2).
  { what: " (mergeable 3000-byte frames)", spec: { size: "64+3000", mtu: "9000" }, mtu: 9000 },
  // VIRTIO_F_IN_ORDER: the driver must keep ring order through every error (the device checks).
  {
    what: " (in order, mergeable 3000-byte frames)",
    spec: { size: "64+3000", mtu: "9000", in_order: "1" },
    mtu: 9000,
  },
];

for (const mode of EVIL_MODES) {
  for (const v of VARIANTS) {
    Deno.test(`evil device ${mode}${v.what}: errors counted, good frames forwarded intact, buffers back`, async () => {
      const evil = SimTransport.fromSpec("evil", { evil: mode, ...v.spec });
      const good = SimTransport.fromSpec(
        "good",
        v.mtu ? { gen: "off", mtu: "9000", ...(v.spec.in_order ? { in_order: "1" } : {}) } : {
          gen: "off",
        },
      );
      const pool = new MbufPool({ count: 4096, kind: evil.dmaKinds[0] });
      const ports = [new Port(0, evil, { log: () => {} }), new Port(1, good, { log: () => {} })];
      try {
        for (const p of ports) {
          p.configure({ pool, mtu: v.mtu });
          p.start();
        }
        const engine = createEngine("io", { pool, burst: 32, peers: [] });
        const loop = new ForwardLoop(ports, buildStreams(ports, "io", 1, 32), engine);
        await loop.run({ untilMs: performance.now() + 300 });
        evil.wire.stopGenerator();
        await loop.drain(20, 2000);
        reclaimSent(ports, 1);
        const s = ports[0].stats;
        assert.ok(evil.device.evilCount > 0, "the device misbehaved");
        if (v.spec.in_order) {
          for (const p of ports) {
            assert.ok((p.features & (1n << 35n)) !== 0n, "IN_ORDER negotiated");
          }
          assert.ok(evil.device.batchedEntries > 0, "the device wrote batched used entries");
          assert.ok(good.device.batchedEntries > 0, "and on the TX side");
        }
        assert.equal(evil.device.needsReset, false, "the device itself saw nothing wrong");
        if (mode === "bad-num-buffers" && !v.mtu) {
          // Every frame fits its buffer with room left, so it is whole (5.1.6.4.1) and the
          // driver does not read num_buffers: the bad counts go unnoticed, nothing is lost.
          assert.equal(s.rxErrors, 0);
          assert.equal(s.rxPackets, evil.wire.counters.delivered);
        } else {
          assert.ok(s.rxErrors > 0, `rxErrors ${s.rxErrors}`);
        }
        assert.ok(s.rxPackets > 100, `good frames still received: ${s.rxPackets}`);
        // Most frames are good: at most a few frames lost per bad entry.
        assert.ok(
          s.rxPackets > evil.wire.counters.delivered / 2,
          `received ${s.rxPackets} of ${evil.wire.counters.delivered}`,
        );
        const w = good.wire.counters;
        assert.equal(w.txFrames, ports[1].stats.txPackets);
        assert.equal(w.badFrames, 0, "no corrupted frame was forwarded");
        assert.equal(w.checkedOk, w.txFrames);
        if (v.mtu) assert.ok(w.txBytes > w.txFrames * 1000, "big frames went through too");
        for (const p of ports) p.stop();
        assert.equal(pool.available, pool.count, "every buffer back in the pool");
      } finally {
        for (const p of ports) p.close();
        evil.close();
        good.close();
        pool.close();
      }
    });
  }
}
