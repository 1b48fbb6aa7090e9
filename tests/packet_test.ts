/**
 * The packet helpers against frames and checksums built by tests/lib/frames.ts (its own reference
 * one's complement sum): header offsets behind VLAN tags, IPv4/IPv6/UDP/TCP/ICMP parsing, full
 * checksums, and RFC 1624 incremental updates that must equal a full recomputation.
 */
import assert from "assert";
import { get16, get32, set16 } from "../mod/packet/bytes.ts";
import {
  checksum,
  csumReplace16,
  csumUpdate16,
  csumUpdate32,
  udpCsumReplace32,
} from "../mod/packet/checksum.ts";
import { l3Offset, l3Type, macSwap, vlanTci } from "../mod/packet/ether.ts";
import {
  Ipv4,
  ipv4Checksum,
  ipv4ChecksumOk,
  ipv4DecTtl,
  l4Checksum,
  setIpv4Addr,
} from "../mod/packet/ip.ts";
import { Icmp, newL4Info, parseL4, Tcp, Udp } from "../mod/packet/l4.ts";
import { checkIpv4Checksums, icmp4Echo, refChecksum, tcp4, udp4, udp6 } from "./lib/frames.ts";

Deno.test("packet: the Internet checksum equals the reference on random data of every parity", () => {
  for (let len = 0; len < 300; len++) {
    const b = Uint8Array.from({ length: len + 3 }, () => Math.floor(Math.random() * 256));
    assert.equal(checksum(b, 3, len), refChecksum(b.subarray(3, 3 + len)), `length ${len}`);
  }
});

Deno.test("packet: RFC 1624 updates equal a full recomputation (16- and 32-bit fields)", () => {
  for (let t = 0; t < 2000; t++) {
    const b = Uint8Array.from({ length: 40 }, () => Math.floor(Math.random() * 256));
    b[10] = 0;
    b[11] = 0;
    set16(b, 10, checksum(b, 0, 40));
    const at = 2 * Math.floor(Math.random() * 14) + 12; // a word after the checksum
    if (t % 2 === 0) {
      const old = get16(b, at);
      const now = Math.floor(Math.random() * 65536);
      set16(b, at, now);
      csumReplace16(b, 10, old, now);
    } else {
      const at4 = at - (at % 4);
      const old = get32(b, at4);
      const now = Math.floor(Math.random() * 2 ** 32);
      for (let k = 0; k < 4; k++) b[at4 + k] = now >>> (24 - 8 * k);
      const c = csumUpdate32(get16(b, 10), old, now);
      set16(b, 10, c);
    }
    assert.equal(checksum(b, 0, 40), 0, `trial ${t}`);
  }
  // RFC 1624's own example (section 4): HC = 0xdd2f, m = 0x5555 -> m' = 0x3285 gives 0x0000.
  assert.equal(csumUpdate16(0xdd2f, 0x5555, 0x3285), 0x0000);
});

Deno.test("packet: UDP's 'no checksum' stays 0; a computed 0 is sent as 0xffff", () => {
  const f = udp4({ noUdpChecksum: true });
  const l3 = 14;
  const l4 = 34;
  setIpv4Addr(f, l3, Ipv4.SRC, 0xc0a80001);
  udpCsumReplace32(f, l4 + Udp.CSUM, 0x0a000001, 0xc0a80001);
  assert.equal(get16(f, l4 + Udp.CSUM), 0);
  assert.deepEqual(checkIpv4Checksums(f), []);
  // An address change that makes the UDP checksum come out as 0 (searched), then applied.
  const g = udp4();
  const cs = get16(g, l4 + Udp.CSUM);
  const old = get32(g, l3 + Ipv4.SRC);
  let now = -1;
  for (let low = 0; low < 0x10000 && now < 0; low++) {
    const a = ((old & 0xffff0000) | low) >>> 0;
    if (csumUpdate32(cs, old, a) === 0) now = a;
  }
  assert.ok(now >= 0, "some address yields a computed 0");
  setIpv4Addr(g, l3, Ipv4.SRC, now);
  udpCsumReplace32(g, l4 + Udp.CSUM, old, now);
  assert.equal(get16(g, l4 + Udp.CSUM), 0xffff);
  assert.deepEqual(checkIpv4Checksums(g), []);
});

Deno.test("packet: header offsets behind 0, 1 and 2 VLAN tags; parseL4 for UDP, TCP, ICMP, IPv6", () => {
  const info = newL4Info();
  for (
    const tags of [[], [[0x8100, 5]], [[0x88a8, 100], [0x8100, 7]]] as [number, number][][]
  ) {
    const f = udp4({ tags, sport: 1234, dport: 53 });
    const l3 = 14 + 4 * tags.length;
    assert.equal(l3Offset(f, 0, f.length), l3);
    assert.equal(l3Type(f, 0, f.length), 0x0800);
    assert.equal(vlanTci(f, 0, f.length), tags.length > 0 ? tags[0][1] : -1);
    assert.ok(parseL4(f, 0, f.length, info));
    assert.deepEqual(info, { l3, l4: l3 + 20, proto: 17, l4Len: f.length - l3 - 20 });
    assert.equal(get16(f, info.l4 + Udp.SPORT), 1234);
    assert.equal(get16(f, info.l4 + Udp.DPORT), 53);
    assert.ok(ipv4ChecksumOk(f, l3));
    assert.equal(ipv4Checksum(f, l3), get16(f, l3 + Ipv4.CSUM));
    assert.equal(
      l4Checksum(f, l3, info.l4, info.l4Len, 17, Udp.CSUM),
      get16(f, info.l4 + Udp.CSUM),
    );
  }
  const t = tcp4({ sport: 40001, dport: 443 });
  assert.ok(parseL4(t, 0, t.length, info));
  assert.equal(info.proto, 6);
  assert.equal(l4Checksum(t, 14, 34, info.l4Len, 6, Tcp.CSUM), get16(t, 34 + Tcp.CSUM));
  const icmp = icmp4Echo();
  assert.ok(parseL4(icmp, 0, icmp.length, info));
  assert.equal(info.proto, 1);
  assert.equal(icmp[34 + Icmp.TYPE], Icmp.ECHO_REQUEST);
  const v6 = udp6();
  assert.ok(parseL4(v6, 0, v6.length, info));
  assert.deepEqual(info, { l3: 14, l4: 54, proto: 17, l4Len: v6.length - 54 });
  assert.equal(l4Checksum(v6, 14, 54, info.l4Len, 17, Udp.CSUM), get16(v6, 54 + Udp.CSUM));
});

Deno.test("packet: malformed and partial frames: no transport header, no read past the frame", () => {
  const info = newL4Info();
  const f = udp4();
  // Cut short: every prefix is refused or parsed within its length.
  for (let len = 0; len < f.length; len++) {
    const ok = parseL4(f, 0, len, info);
    assert.ok(!ok, `a ${len}-byte prefix parsed`);
  }
  // A later fragment: IP found, no transport header.
  const frag = udp4();
  set16(frag, 14 + Ipv4.FRAG, 0x0010);
  assert.ok(!parseL4(frag, 0, frag.length, info));
  assert.equal(info.l3, 14);
  assert.equal(info.l4, -1);
  // IHL below 5, and a total length beyond the frame.
  const bad = udp4();
  bad[14] = 0x44;
  assert.ok(!parseL4(bad, 0, bad.length, info));
  const long = udp4();
  set16(long, 14 + Ipv4.TOTAL_LEN, 1000);
  assert.ok(!parseL4(long, 0, long.length, info));
  // ARP: not IP.
  const arp = udp4();
  set16(arp, 12, 0x0806);
  assert.ok(!parseL4(arp, 0, arp.length, info));
  assert.equal(info.proto, -1);
});

Deno.test("packet: MAC swap, TTL decrement with its checksum", () => {
  const f = udp4();
  const before = f.slice();
  macSwap(f, 0);
  assert.deepEqual(f.subarray(0, 6), before.subarray(6, 12));
  assert.deepEqual(f.subarray(6, 12), before.subarray(0, 6));
  assert.equal(ipv4DecTtl(f, 14), 63);
  assert.deepEqual(checkIpv4Checksums(f), []);
  assert.equal(get16(f, 14 + Ipv4.CSUM), ipv4Checksum(f, 14));
});
