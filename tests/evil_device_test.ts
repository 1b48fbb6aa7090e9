/**
 * The driver against a misbehaving simulated device (`sim:NAME,evil=MODE`, every 7th received
 * frame wrong): it counts an error, drops the frame, never throws out of the burst loop, keeps
 * forwarding the good frames with correct content, and gets every buffer back at stop.
 */
import assert from "assert";
import { buildStreams, reclaimSent } from "../mod/fwd/cli.ts";
import { createEngine } from "../mod/fwd/engines.ts";
import { ForwardLoop } from "../mod/fwd/loop.ts";
import { MbufPool } from "../mod/mbuf.ts";
import { Port } from "../mod/port.ts";
import { EVIL_MODES } from "../mod/sim/device.ts";
import { SimTransport } from "../mod/sim/transport.ts";

for (const mode of EVIL_MODES) {
  Deno.test(`evil device ${mode}: errors counted, good frames forwarded intact, buffers back`, async () => {
    const evil = SimTransport.fromSpec("evil", { evil: mode });
    const good = SimTransport.fromSpec("good", { gen: "off" });
    const pool = new MbufPool({ count: 4096, kind: evil.dmaKinds[0] });
    const ports = [new Port(0, evil, { log: () => {} }), new Port(1, good, { log: () => {} })];
    try {
      for (const p of ports) {
        p.configure({ pool });
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
      assert.ok(s.rxErrors > 0, `rxErrors ${s.rxErrors}`);
      assert.ok(s.rxPackets > 100, `good frames still received: ${s.rxPackets}`);
      const w = good.wire.counters;
      assert.equal(w.txFrames, ports[1].stats.txPackets);
      assert.equal(w.badFrames, 0, "no corrupted frame was forwarded");
      assert.equal(w.checkedOk, w.txFrames);
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
