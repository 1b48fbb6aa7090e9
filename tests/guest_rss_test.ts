/**
 * RSS against QEMU's own virtio-net (`rss=on`, software RSS) in the guest lab: a NIC with two
 * queue pairs on a multiqueue tap (scripts/lab/tap.ts), 64 UDP flows sent into it from the host,
 * `vpmd fwd --queues 2 --rss ...` receiving in the guest. Hashing over the addresses alone (`ip`)
 * puts every flow (one address pair) on the queue the Toeplitz hash and vpmd's table name; over
 * the ports too (`udp`) spreads them over both. The tap itself spreads flows over its queues, so
 * one queue taking them all shows QEMU steering by the configuration vpmd sent.
 */
import assert from "assert";
import { toeplitz } from "../mod/sim/rss.ts";
import { writeTestFrame } from "../mod/testframe.ts";
import { DEFAULT_RSS_KEY } from "../mod/virtio/rss.ts";
import { TapWire } from "../scripts/lab/tap.ts";
import { guestLab, parseMac, withGuest } from "./lib/guest.ts";
import { peerTest } from "./lib/peers.ts";

const VPMD = "deno run -A /vpmd/main.ts";
const NIC = "0000:00:07.0";
const MAC = "52:54:00:12:34:13";
const FLOWS = 64;

/** Test frames from 198.18.0.1 to 198.18.0.2, UDP source port 1000 + flow. */
function flowFrames(): Uint8Array<ArrayBuffer>[] {
  return Array.from({ length: FLOWS }, (_, f) => {
    const b = new Uint8Array(64);
    writeTestFrame(b, 0, 64, 7, f, parseMac(MAC), parseMac("02:00:00:00:00:01"));
    b[34] = (1000 + f) >> 8; // UDP source port (the checksum is 0: none)
    b[35] = (1000 + f) & 0xff;
    return b;
  });
}

peerTest(
  guestLab,
  "guest: QEMU's virtio-net with rss=on steers by the RSS vpmd configures",
  async () => {
    const tap = TapWire.create(`vpmdrss${Deno.pid % 10000}`);
    try {
      const qemuArgs = [
        ...tap.netdev("nr", 2),
        "-device",
        `virtio-net-pci,netdev=nr,mq=on,rss=on,vectors=6,addr=0x7,mac=${MAC},romfile=,` +
        "disable-legacy=on",
      ];
      await withGuest({ qemuArgs, timeoutSec: 400 }, async (g) => {
        const b = await g.exec(`${VPMD} bind --force ${NIC}`, 90);
        assert.equal(b.code, 0, b.output);
        const frames = flowFrames();
        const receive = async (rss: string) => {
          let k = 0;
          const sender = setInterval(() => {
            for (let i = 0; i < 3; i++) tap.send(frames[k++ % FLOWS]);
          }, 1);
          try {
            const r = await g.exec(
              `${VPMD} fwd ${NIC} --queues 2 --rss ${rss} --mode rxonly --duration 6 ` +
                `--stats-period 0 --json`,
              120,
            );
            assert.equal(r.code, 0, r.output);
            const s = JSON.parse(r.output.trim().split("\n").pop()!);
            return s.ports[0].queues.map((q: { rxPackets: number }) => q.rxPackets) as number[];
          } finally {
            clearInterval(sender);
          }
        };
        // The addresses alone: one flow to QEMU, on table entry hash & 127, queue entry mod 2.
        const hash = toeplitz(DEFAULT_RSS_KEY, Uint8Array.of(198, 18, 0, 1, 198, 18, 0, 2), 8);
        const q = (hash & 127) % 2;
        const ip = await receive("ip");
        // Frames that came before the configuration took effect may sit in the other queue's ring.
        assert.ok(ip[q] > 1000 && ip[1 - q] <= 512, `--rss ip: queue ${q} expected, got ${ip}`);
        const udp = await receive("udp");
        const total = udp[0] + udp[1];
        assert.ok(total > 1000 && Math.min(...udp) > total / 5, `--rss udp: ${udp}`);
      });
    } finally {
      tap.close();
    }
  },
);
