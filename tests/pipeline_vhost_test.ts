/**
 * A pipeline against DPDK's vhost (testpmd, io forwarding on its one port, seeded with
 * `start tx_first`): vpmd runs examples/echo.ts on a vhost-user port, so frames go round between
 * the two, each pass echoed by vpmd; its capture, read with tcpdump, holds what it received and
 * what it sent, in the numbers it counted, the echoed frames with their addresses swapped.
 */
import assert from "assert";
import { peerTest } from "./lib/peers.ts";
import { socketPath, Testpmd, testpmdPeer } from "./lib/testpmd.ts";
import { tcpdumpCount, tcpdumpPeer, tcpdumpRead } from "./lib/tcpdump.ts";
import { summaryOf, vpmd } from "./lib/run_vpmd.ts";

const echo = new URL("../examples/echo.ts", import.meta.url).pathname;

const both = {
  what: `${testpmdPeer.what} and ${tcpdumpPeer.what}`,
  setup: testpmdPeer.setup,
  available: () => testpmdPeer.available() && tcpdumpPeer.available(),
};

peerTest(
  both,
  "pipeline over vhost-user: examples/echo.ts answers DPDK's frames; the capture matches the counts",
  async () => {
    const sock = socketPath("pipe-vhost");
    const dir = Deno.makeTempDirSync({ prefix: "vpmd-pipeline-vhost-" });
    const pcap = `${dir}/vhost.pcap`;
    const pmd = await Testpmd.start({ vdev: `net_vhost0,iface=${sock},queues=1`, fwd: "io" });
    try {
      const run = vpmd([
        "fwd",
        `vhost-user:${sock}`,
        "--pipeline",
        echo,
        "--pipeline-arg",
        "udp=9",
        "--pcap",
        `0:${pcap}`,
        "--pcap-count",
        "20000",
        "--duration",
        "4",
        "--json",
        "--stats-period",
        "0",
      ]);
      // vpmd's rings are set up (DPDK takes frames for them from here on), then seed the loop.
      await pmd.waitLog(/virtio is now ready for processing/, 30_000);
      await pmd.cmd("start tx_first");
      const r = await run;
      assert.equal(r.code, 0, r.stderr);
      const s = summaryOf(r);
      const p = s.ports[0];
      const dpdk = pmd.stats(0);
      assert.ok(p.rxPackets > 1000, JSON.stringify(p));
      assert.equal(s.pipeline.back, s.pipeline.frames, "every frame echoed");
      assert.equal(p.txPackets + p.txDropped, p.rxPackets);
      assert.ok(
        dpdk.ipackets >= p.txPackets - 64,
        `DPDK received ${dpdk.ipackets} of ${p.txPackets}`,
      );
      // The capture: what vpmd received and sent, up to the frame limit. Sent frames are written
      // as the TX queue takes them: those DPDK had not taken when the port stopped (counted then
      // as dropped) are in the capture too.
      const c = s.pcap[0];
      const written = c.frames + c.skipped;
      assert.ok(
        written >= p.rxPackets + p.txPackets && written <= p.rxPackets + p.txPackets + p.txDropped,
        `captured ${written}; received ${p.rxPackets}, sent ${p.txPackets}, dropped ${p.txDropped}`,
      );
      assert.equal(await tcpdumpCount(pcap), c.frames);
      const first = await tcpdumpRead(pcap, ["-c", "64"]);
      const received = first.filter((f) =>
        / 198\.18\.0\.1\.9 > 198\.18\.0\.2\.9: UDP/.test(f.line)
      );
      const echoed = first.filter((f) => / 198\.18\.0\.2\.9 > 198\.18\.0\.1\.9: UDP/.test(f.line));
      assert.ok(received.length > 0 && echoed.length > 0, first.map((f) => f.line).join("\n"));
      assert.equal(received.length + echoed.length, first.length);
    } finally {
      await pmd.stop();
    }
  },
);
