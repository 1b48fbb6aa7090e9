/**
 * An echo responder that answers on the port a frame came in by: ICMP echo requests (IPv4) and
 * ICMPv6 echo requests get their reply, UDP datagrams to the echo port come back to their sender,
 * and with an address given, ARP requests for it get an answer. Everything else is dropped.
 *
 *   vpmd fwd PORT --pipeline examples/echo.ts [--pipeline-arg ip=10.0.0.2] [--pipeline-arg udp=7]
 *
 * `ip`: answer only for this IPv4 address, and ARP for it (without it: any address, no ARP);
 * `udp`: the UDP port echoed (default 7, the echo service of RFC 862).
 *
 * Replies are the requests rewritten in place: addresses and ports swapped (which leaves every
 * checksum right: a one's complement sum does not depend on the order of its words), the ICMP
 * type changed with an incremental checksum update (RFC 1624), the source MAC set to the port's.
 */
import {
  Arp,
  type Burst,
  csumReplace16,
  Ether,
  EtherType,
  get16,
  get32,
  Icmp,
  IpProto,
  Ipv4,
  ipv4Dst,
  Ipv6,
  newL4Info,
  parseIpv4,
  parseL4,
  type PipelineContext,
  set16,
  set32,
  setMac,
  Udp,
} from "../mod/pipeline/mod.ts";

let macs: Uint8Array[] = [];
/** Our address (-1: answer for any, and no ARP). */
let myIp = -1;
let echoPort = 7;
const info = newL4Info();

export function init(ctx: PipelineContext): void {
  macs = ctx.ports.map((p) => p.mac);
  myIp = ctx.args.ip === undefined ? -1 : parseIpv4(ctx.args.ip);
  echoPort = Number(ctx.args.udp ?? 7);
  if (!Number.isInteger(echoPort) || echoPort < 1 || echoPort > 65535) {
    throw new Error(`echo: udp=${ctx.args.udp}: not a port`);
  }
}

/** Swap the `n` bytes at `a` and at `c`. */
function swap(bytes: Uint8Array, a: number, c: number, n: number): void {
  for (let k = 0; k < n; k++) {
    const t = bytes[a + k];
    bytes[a + k] = bytes[c + k];
    bytes[c + k] = t;
  }
}

/** Address the reply: back to the sender, from this port's MAC. */
function reply(b: Burst, i: number, o: number): void {
  const bytes = b.bytes;
  for (let k = 0; k < Ether.ADDR_LEN; k++) bytes[o + Ether.DST + k] = bytes[o + Ether.SRC + k];
  setMac(bytes, o + Ether.SRC, macs[b.port]);
  b.back(i);
}

/** An ARP request for our address becomes the reply (RFC 826); returns false for anything else. */
function arp(b: Burst, i: number, o: number, len: number): boolean {
  const bytes = b.bytes;
  const a = o + Ether.HDR_LEN;
  if (
    myIp < 0 || len < Ether.HDR_LEN + Arp.LEN || get16(bytes, o + Ether.TYPE) !== EtherType.ARP ||
    get16(bytes, a + Arp.HTYPE) !== Arp.HTYPE_ETHERNET ||
    get16(bytes, a + Arp.PTYPE) !== EtherType.IPV4 || get16(bytes, a + Arp.OPER) !== Arp.REQUEST ||
    get32(bytes, a + Arp.TPA) !== myIp
  ) {
    return false;
  }
  set16(bytes, a + Arp.OPER, Arp.REPLY);
  for (let k = 0; k < Ether.ADDR_LEN; k++) bytes[a + Arp.THA + k] = bytes[a + Arp.SHA + k];
  set32(bytes, a + Arp.TPA, get32(bytes, a + Arp.SPA));
  setMac(bytes, a + Arp.SHA, macs[b.port]);
  set32(bytes, a + Arp.SPA, myIp);
  reply(b, i, o);
  return true;
}

export default function echo(b: Burst): void {
  const bytes = b.bytes;
  for (let i = 0; i < b.count; i++) {
    const o = b.offset(i);
    const len = b.segmentLength(i);
    if (arp(b, i, o, len)) continue;
    if (!parseL4(bytes, o, len, info)) {
      b.drop(i);
      continue;
    }
    const l3 = o + info.l3;
    const l4 = o + info.l4;
    const v4 = bytes[l3] >>> 4 === 4;
    if (v4 && myIp >= 0 && ipv4Dst(bytes, l3) !== myIp) {
      b.drop(i);
      continue;
    }
    const p = info.proto;
    if (v4 && p === IpProto.ICMP && bytes[l4 + Icmp.TYPE] === Icmp.ECHO_REQUEST) {
      const old = get16(bytes, l4 + Icmp.TYPE);
      bytes[l4 + Icmp.TYPE] = Icmp.ECHO_REPLY;
      csumReplace16(bytes, l4 + Icmp.CSUM, old, get16(bytes, l4 + Icmp.TYPE));
    } else if (!v4 && p === IpProto.ICMPV6 && bytes[l4 + Icmp.TYPE] === Icmp.V6_ECHO_REQUEST) {
      const old = get16(bytes, l4 + Icmp.TYPE);
      bytes[l4 + Icmp.TYPE] = Icmp.V6_ECHO_REPLY;
      csumReplace16(bytes, l4 + Icmp.CSUM, old, get16(bytes, l4 + Icmp.TYPE));
    } else if (p === IpProto.UDP && get16(bytes, l4 + Udp.DPORT) === echoPort) {
      swap(bytes, l4 + Udp.SPORT, l4 + Udp.DPORT, 2);
    } else {
      b.drop(i);
      continue;
    }
    if (v4) swap(bytes, l3 + Ipv4.SRC, l3 + Ipv4.DST, 4);
    else swap(bytes, l3 + Ipv6.SRC, l3 + Ipv6.DST, Ipv6.ADDR_LEN);
    reply(b, i, o);
  }
}
