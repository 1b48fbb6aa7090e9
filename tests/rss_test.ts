/**
 * Receive-side scaling (virtio 1.2, 5.1.6.5.7): the simulated device's Toeplitz hash against the
 * verification examples Microsoft's RSS documentation publishes, the fields it hashes, its checks
 * of the driver's RSS_CONFIG command, frames spread over the receive queues exactly as an
 * independent reference hash says, and `vpmd fwd --rss` with every frame accounted for.
 */
import assert from "assert";
import { MbufPool } from "../mod/mbuf.ts";
import { Port } from "../mod/port.ts";
import { hashInput, parseRssConfig, toeplitz } from "../mod/sim/rss.ts";
import { SimTransport } from "../mod/sim/transport.ts";
import { checkTestFrame, FrameCheck, writeTestFrame } from "../mod/testframe.ts";
import { HashType } from "../mod/virtio/constants.ts";
import { DEFAULT_RSS_KEY, rssConfigData } from "../mod/virtio/rss.ts";
import { runVpmd, summaryOf } from "./lib/vpmd.ts";

/** The key of Microsoft's "Verifying the RSS Hash Calculation" examples. */
const MS_KEY = hex(
  "6d5a56da255b0ec24167253d43a38fb0d0ca2bcbae7b30b477cb2da38030f20c6a42b73bbeac01fa",
);

/** Its IPv4 table: destination, source, hash over the addresses, hash with the TCP ports. */
const MS_IPV4: [string, string, number, number][] = [
  ["161.142.100.80:1766", "66.9.149.187:2794", 0x323e8fc2, 0x51ccc178],
  ["65.69.140.83:4739", "199.92.111.2:14230", 0xd718262a, 0xc626b0ea],
  ["12.22.207.184:38024", "24.19.198.95:12898", 0xd2d0a5de, 0x5c2b394a],
  ["209.142.163.6:2217", "38.27.205.30:48228", 0x82989176, 0xafc7327f],
  ["202.188.127.2:1303", "153.39.163.191:44251", 0x5d1809c5, 0x10e828a2],
];

function hex(s: string): Uint8Array {
  return Uint8Array.from(s.match(/../g)!.map((h) => parseInt(h, 16)));
}

function endpoint(s: string): { ip: number[]; port: number } {
  const [ip, port] = s.split(":");
  return { ip: ip.split(".").map(Number), port: Number(port) };
}

/** Source address, destination address, source port, destination port (the hash input order). */
function tuple(dst: string, src: string): Uint8Array {
  const d = endpoint(dst);
  const s = endpoint(src);
  return Uint8Array.of(...s.ip, ...d.ip, s.port >> 8, s.port & 0xff, d.port >> 8, d.port & 0xff);
}

/**
 * A reference Toeplitz hash written differently from mod/sim/rss.ts: the key as a bit array, each
 * set input bit XORing in the 32 key bits from its position.
 */
function referenceHash(key: Uint8Array, input: Uint8Array): number {
  const keyBits: number[] = [];
  for (const b of key) for (let i = 7; i >= 0; i--) keyBits.push((b >> i) & 1);
  let h = 0;
  for (let i = 0; i < input.length * 8; i++) {
    if (((input[i >> 3] >> (7 - (i & 7))) & 1) === 0) continue;
    let w = 0;
    for (let k = 0; k < 32; k++) w = (w * 2) + (keyBits[i + k] ?? 0);
    h = (h ^ w) >>> 0;
  }
  return h;
}

Deno.test("rss: the Toeplitz hash gives Microsoft's published IPv4 and IPv4/TCP values", () => {
  assert.deepEqual(DEFAULT_RSS_KEY, MS_KEY, "vpmd's default key is the documented one");
  for (const [dst, src, ipOnly, withTcp] of MS_IPV4) {
    const t = tuple(dst, src);
    assert.equal(toeplitz(MS_KEY, t, 8), ipOnly, `${src} -> ${dst}, addresses`);
    assert.equal(toeplitz(MS_KEY, t, 12), withTcp, `${src} -> ${dst}, with ports`);
    assert.equal(referenceHash(MS_KEY, t), withTcp, "the test's own hash agrees");
  }
});

/** An Ethernet/IPv4 frame from `src` to `dst` (a.b.c.d:port) with protocol `proto`. */
function ipv4Frame(
  dst: string,
  src: string,
  proto: number,
  flagsFrag = 0,
  vlan = false,
): Uint8Array {
  const f = new Uint8Array(80);
  const at = vlan ? 4 : 0;
  if (vlan) f.set([0x81, 0x00, 0x00, 0x05], 12);
  f.set([0x08, 0x00], 12 + at);
  const ip = 14 + at;
  f[ip] = 0x45;
  f[ip + 6] = flagsFrag >> 8;
  f[ip + 7] = flagsFrag & 0xff;
  f[ip + 9] = proto;
  const d = endpoint(dst);
  const s = endpoint(src);
  f.set(s.ip, ip + 12);
  f.set(d.ip, ip + 16);
  f.set([s.port >> 8, s.port & 0xff, d.port >> 8, d.port & 0xff], ip + 20);
  return f;
}

Deno.test("rss: the fields hashed follow the enabled hash types (5.1.6.4.3)", () => {
  const [dst, src] = MS_IPV4[0];
  const t = tuple(dst, src);
  const out = new Uint8Array(12);
  const input = (f: Uint8Array, types: number) => {
    const n = hashInput(f, 0, f.length, types, out);
    return Array.from(out.subarray(0, n));
  };
  const udp = ipv4Frame(dst, src, 17);
  const tcp = ipv4Frame(dst, src, 6);
  const all = HashType.IPv4 | HashType.UDPv4 | HashType.TCPv4;
  assert.deepEqual(input(tcp, all), Array.from(t), "TCP: addresses and ports");
  assert.deepEqual(input(udp, all), Array.from(t), "UDP: addresses and ports");
  assert.deepEqual(input(tcp, HashType.IPv4 | HashType.UDPv4), Array.from(t.subarray(0, 8)));
  assert.deepEqual(input(udp, HashType.IPv4), Array.from(t.subarray(0, 8)));
  assert.deepEqual(input(udp, HashType.TCPv4), [], "no type applies: unclassified");
  assert.deepEqual(input(ipv4Frame(dst, src, 17, 0x2000), all), Array.from(t.subarray(0, 8)));
  assert.deepEqual(input(ipv4Frame(dst, src, 17, 0x0010), all), Array.from(t.subarray(0, 8)));
  assert.deepEqual(input(ipv4Frame(dst, src, 17, 0, true), all), Array.from(t), "one 802.1Q tag");
  const arp = ipv4Frame(dst, src, 17);
  arp.set([0x08, 0x06], 12);
  assert.deepEqual(input(arp, all), []);
  assert.deepEqual(input(udp.subarray(0, 30), all), [], "a truncated header is not read");
});

Deno.test("rss: RSS_CONFIG is checked: table length, queues, hash types, key, size", () => {
  const good = { hashTypes: HashType.IPv4 | HashType.UDPv4, queues: 4, tableLength: 128 };
  const data = rssConfigData({ ...good, key: MS_KEY });
  const rss = parseRssConfig(data, 4);
  assert.ok(rss !== null);
  assert.equal(rss.hashTypes, good.hashTypes);
  assert.deepEqual(Array.from(rss.table.subarray(0, 6)), [0, 1, 2, 3, 0, 1]);
  assert.equal(rss.maxTxVq, 4);
  assert.deepEqual(rss.key, MS_KEY);
  assert.equal(parseRssConfig(data, 3), null, "the table names queue 3 of 3");
  const bad = (what: string, d: Uint8Array) => assert.equal(parseRssConfig(d, 4), null, what);
  bad("truncated", data.subarray(0, data.length - 1));
  bad("trailing bytes", Uint8Array.of(...data, 0));
  bad("IPv6 is not supported", rssConfigData({ ...good, hashTypes: HashType.IPv6, key: MS_KEY }));
  bad("key too long", rssConfigData({ ...good, key: new Uint8Array(41) }));
  bad("table too long", rssConfigData({ ...good, tableLength: 256, key: MS_KEY }));
  const odd = data.slice();
  odd[4] = 2; // mask 2: three entries
  bad("a table that is no power of two", odd);
});

/** Receive on every queue of `port` until `want` frames came (or the device stopped giving). */
function receiveAll(port: Port, queues: number, want: number): number[][] {
  const got: number[][] = Array.from({ length: queues }, () => []);
  const pkts = new Uint32Array(32);
  let total = 0;
  for (let idle = 0; idle < 100 && total < want;) {
    port.poll();
    let n = 0;
    for (let q = 0; q < queues; q++) {
      const k = port.rxBurst(q, pkts, 32);
      for (let i = 0; i < k; i++) got[q].push(pkts[i]);
      n += k;
    }
    total += n;
    idle = n === 0 ? idle + 1 : 0;
  }
  return got;
}

Deno.test("rss: the sim spreads its flows over 4 queues exactly as the hash and table say", () => {
  // The generator starts once RSS is configured: before that the device delivers to receiveq1
  // only (5.1.6.5.6), while the port waits for its control commands.
  const t = SimTransport.fromSpec("rss", { queues: "4", flows: "64", gen: "off" });
  const pool = new MbufPool({ count: 8192, kind: t.dmaKinds[0] });
  const port = new Port(0, t, { log: () => {} });
  try {
    port.configure({
      pool,
      queues: 4,
      rxd: 256,
      txd: 256,
      rss: { hashTypes: HashType.IPv4 | HashType.UDPv4 },
    });
    port.start();
    assert.ok(t.device.rss !== null, "the device took the configuration");
    t.wire.startGenerator();
    const got = receiveAll(port, 4, 4000);
    const buf = new Uint8Array(2048);
    const res = new Uint32Array(4);
    const flows = new Set<string>();
    for (let q = 0; q < 4; q++) {
      assert.ok(got[q].length > 100, `queue ${q} received ${got[q].length}`);
      const seen = new Set<string>();
      for (const m of got[q]) {
        const len = pool.read(m, buf);
        assert.equal(checkTestFrame(buf, 0, len, res), FrameCheck.OK, "a valid test frame");
        // Source and destination address, then the UDP ports, read from the frame itself.
        const input = Uint8Array.of(...buf.subarray(26, 34), ...buf.subarray(34, 38));
        const want = (referenceHash(MS_KEY, input) & 127) % 4; // table entry i: queue i mod 4
        assert.equal(q, want, `flow ${input.join(".")} on queue ${q}`);
        seen.add(input.join("."));
        pool.free(m);
      }
      for (const f of seen) flows.add(f);
    }
    assert.equal(flows.size, 64, "every flow was sent");
  } finally {
    port.close();
    t.close();
    pool.close();
  }
});

Deno.test("rss: a device without VIRTIO_NET_F_RSS, or a hash type it lacks, fails configure", () => {
  const pool = new MbufPool({ count: 4096, kind: "memfd" });
  const plain = SimTransport.fromSpec("norss", { queues: "2", rss: "0" });
  const rss = SimTransport.fromSpec("rss6", { queues: "2" });
  try {
    assert.throws(
      () => new Port(0, plain).configure({ pool, queues: 2, rss: { hashTypes: HashType.IPv4 } }),
      /does not offer VIRTIO_NET_F_RSS, so RSS cannot be configured; run without --rss/,
    );
    assert.throws(
      () => new Port(0, rss).configure({ pool, queues: 2, rss: { hashTypes: HashType.TCPv6 } }),
      /cannot hash over TCPv6 \(it supports IPv4, TCPv4, UDPv4\)/,
    );
    assert.throws(
      () =>
        new Port(0, rss).configure({
          pool,
          queues: 2,
          rss: { hashTypes: HashType.IPv4, key: new Uint8Array(52) },
        }),
      /RSS key of 52 bytes is longer than the device takes \(40\)/,
    );
  } finally {
    plain.close();
    rss.close();
    pool.close();
  }
});

Deno.test("rss: a reset forgets RSS; started without it, each queue has its own stream again", () => {
  const t = SimTransport.fromSpec("last", { queues: "2" });
  const pool = new MbufPool({ count: 4096, kind: t.dmaKinds[0] });
  const port = new Port(0, t, { log: () => {} });
  try {
    port.configure({ pool, queues: 2, rss: { hashTypes: HashType.IPv4 } });
    port.start();
    assert.ok(t.device.rss !== null);
    port.stop();
    assert.equal(t.device.rss, null, "reset (2.1) forgets the configuration");
    port.configure({ pool, queues: 2 });
    port.start();
    assert.equal(t.device.rss, null);
    const got = receiveAll(port, 2, 200);
    const buf = new Uint8Array(2048);
    const res = new Uint32Array(4);
    for (let q = 0; q < 2; q++) {
      assert.ok(got[q].length > 0);
      for (const m of got[q]) {
        checkTestFrame(buf, 0, pool.read(m, buf), res);
        assert.equal(res[0], t.wire.streamOf(q), "one stream per queue again");
        pool.free(m);
      }
    }
  } finally {
    port.close();
    t.close();
    pool.close();
  }
});

Deno.test("rss: vpmd fwd --rss udp spreads flows over both queue pairs, every frame accounted for", async () => {
  const r = await runVpmd([
    "fwd",
    "sim:a,queues=2",
    "sim:b,queues=2",
    "--queues",
    "2",
    "--rss",
    "udp",
    "--duration",
    "1",
    "--stats-period",
    "0",
    "--json",
  ]);
  assert.equal(r.code, 0, r.stderr);
  const s = summaryOf(r);
  assert.equal(s.accounting.ok, true, s.accounting.message);
  for (const p of s.ports) {
    assert.equal(p.queues.length, 2);
    for (const q of p.queues) assert.ok(q.rxPackets > 0, `${p.name}: ${JSON.stringify(p.queues)}`);
  }
});

Deno.test("rss: --rss with a bad type or on a device without RSS is bad usage (exit 2)", async () => {
  const bad = await runVpmd(["fwd", "sim:a", "--rss", "sctp", "--duration", "1"]);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /--rss sctp: expected ip, udp or tcp/);
  const none = await runVpmd(["fwd", "sim:a,rss=0", "--rss", "ip", "--duration", "1"]);
  assert.equal(none.code, 2);
  assert.match(none.stderr, /does not offer VIRTIO_NET_F_RSS, so RSS cannot be configured/);
});

// The frames the generator sends are test frames whatever their flow: writeTestFrame's layout is
// what the reference reads above (addresses at 26, ports at 34).
Deno.test("rss: test frame layout assumed above", () => {
  const b = new Uint8Array(64);
  writeTestFrame(b, 0, 64, 1, 2, new Uint8Array(6), new Uint8Array(6));
  assert.deepEqual(Array.from(b.subarray(26, 38)), [198, 18, 0, 1, 198, 18, 0, 2, 0, 9, 0, 9]);
});
