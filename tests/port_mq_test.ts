/**
 * A multiqueue device that lays its queues out by the negotiated features, as QEMU's virtio-net
 * does: its control queue is queue 2 until the driver accepts VIRTIO_NET_F_MQ (or RSS), and queue
 * 2N only from FEATURES_OK on (5.1.2). The port must find it there and use every queue pair.
 */
import assert from "assert";
import { MbufPool } from "../mod/mbuf.ts";
import { Port } from "../mod/port.ts";
import { parseSimSpec } from "../mod/sim/options.ts";
import { SimTransport } from "../mod/sim/transport.ts";
import { HashType, NetQueue } from "../mod/virtio/constants.ts";

/** A sim whose queue 2N exists only once multiqueue is negotiated. */
class LateControlQueue extends SimTransport {
  override queueMaxSize(index: number): number {
    const d = this.device;
    if (index === NetQueue.ctrl(d.queuePairs) && index !== d.ctrlIndex) return 0;
    return super.queueMaxSize(index);
  }
}

for (const rss of [false, true]) {
  Deno.test(`port: a control queue that appears at 2N only with the features${rss ? " (RSS)" : ""}`, () => {
    const t = new LateControlQueue(parseSimSpec("late", { queues: "2" }));
    const pool = new MbufPool({ count: 4096, kind: t.dmaKinds[0] });
    const port = new Port(0, t, { log: () => {} });
    try {
      assert.equal(t.queueMaxSize(4), 0, "before negotiation there is no queue 4");
      port.configure({ pool, queues: 2, rss: rss ? { hashTypes: HashType.IPv4 } : undefined });
      port.start();
      assert.equal(t.device.activePairs, 2);
      const pkts = new Uint32Array(32);
      for (const q of [0, 1]) {
        let got = 0;
        for (let i = 0; i < 100 && got === 0; i++) {
          port.poll();
          got = port.rxBurst(q, pkts, 32);
        }
        assert.ok(got > 0, `queue ${q} receives`);
        pool.freeBulk(pkts, got);
      }
    } finally {
      port.close();
      t.close();
      pool.close();
    }
  });
}
