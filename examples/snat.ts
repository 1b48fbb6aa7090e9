/**
 * Source NAT, the way a home router does it: frames from the inside port leave with the public
 * address as their source and a public port (an ICMP echo: a public identifier) chosen per flow;
 * answers to the public address and port come back translated to the inside host. Every checksum
 * is updated incrementally (RFC 1624): the IPv4 header's for the address, TCP's and UDP's for the
 * address (their pseudo-header) and the port, ICMP's for the identifier. A UDP checksum of 0
 * ("none") stays 0.
 *
 *   vpmd fwd INSIDE OUTSIDE --pipeline examples/snat.ts --pipeline-arg public=203.0.113.1 \
 *     [--pipeline-arg inside=0] [--pipeline-arg net=192.168.0.0/16] [--pipeline-arg ports=20000-29999]
 *
 * `inside`: the inside port's index (default 0; the other port of the pair is the outside);
 * `net`: only sources in this network are translated (default all); `ports`: the public ports
 * (and ICMP identifiers) handed out. Mappings are kept in typed arrays made at init and never
 * expire; once every public port is taken, new flows are dropped (`exhausted`). Dropped as well:
 * outside frames to the public address that match no mapping, IPv4 fragments after the first
 * (they carry no port), and inside frames that are not IPv4. The MAC addresses are left as they
 * are (use the mac forwarding of a router in front, or rewrite them here).
 */
import {
  type Burst,
  csumReplace16,
  csumReplace32,
  EtherType,
  get16,
  Icmp,
  IpProto,
  Ipv4,
  ipv4Dst,
  ipv4Src,
  l3Type,
  newL4Info,
  parseCidr,
  parseIpv4,
  parseL4,
  type PipelineContext,
  set16,
  setIpv4Addr,
  Tcp,
  Udp,
  udpCsumReplace16,
  udpCsumReplace32,
} from "../mod/pipeline/mod.ts";

let publicIp = 0;
let inside = 0;
let netAddr = 0;
let netMask = 0;
let firstPort = 0;
let nPorts = 0;
/** Per protocol slot (TCP, UDP, ICMP) and public port index: the inside address and port. */
let revIp = new Uint32Array(0);
let revPort = new Int32Array(0);
/** Inside (address, port, slot) -> public port index: open addressing, 2 entries per port. */
let fwdIp = new Uint32Array(0);
let fwdKey = new Int32Array(0);
let fwdIdx = new Int32Array(0);
const nextFree = new Int32Array(3);
let exhausted = 0;
let log: (msg: string) => void = () => {};
const info = newL4Info();

/** Slot of a protocol in the tables, -1 for protocols without ports. */
function slotOf(proto: number): number {
  return proto === IpProto.TCP ? 0 : proto === IpProto.UDP ? 1 : proto === IpProto.ICMP ? 2 : -1;
}

export function init(ctx: PipelineContext): void {
  if (ctx.args.public === undefined) {
    throw new Error("snat: give the public address: --pipeline-arg public=A.B.C.D");
  }
  publicIp = parseIpv4(ctx.args.public);
  inside = Number(ctx.args.inside ?? 0);
  if (!(inside >= 0 && inside < ctx.ports.length)) {
    throw new Error(`snat: inside=${ctx.args.inside}: no such port`);
  }
  const net = parseCidr(ctx.args.net ?? "0.0.0.0/0");
  netAddr = net.net;
  netMask = net.mask;
  const m = /^(\d+)-(\d+)$/.exec(ctx.args.ports ?? "20000-29999");
  firstPort = Number(m?.[1]);
  const last = Number(m?.[2]);
  if (m === null || firstPort < 1 || last > 65535 || last < firstPort) {
    throw new Error(`snat: ports=${ctx.args.ports}: expected LO-HI within 1-65535`);
  }
  nPorts = last - firstPort + 1;
  revIp = new Uint32Array(3 * nPorts);
  revPort = new Int32Array(3 * nPorts).fill(-1);
  const size = 2 ** Math.ceil(Math.log2(2 * 3 * nPorts));
  fwdIp = new Uint32Array(size);
  fwdKey = new Int32Array(size).fill(-1);
  fwdIdx = new Int32Array(size);
  nextFree.fill(0);
  exhausted = 0;
  log = ctx.log;
  ctx.log(`snat: port ${inside} inside, ${ctx.args.public} ports ${firstPort}-${last} outside`);
}

/** The public port index of inside (ip, port) for `slot`, made on first use; -1 when none is left. */
function publicIndex(ip: number, port: number, slot: number): number {
  const key = (slot << 16) | port;
  const mask = fwdKey.length - 1;
  let h = (Math.imul(ip ^ Math.imul(key, 0x9e3779b1), 0x85ebca6b) >>> 0) & mask;
  for (let k = 0; k <= mask; k++, h = (h + 1) & mask) {
    if (fwdKey[h] === key && fwdIp[h] === ip) return fwdIdx[h];
    if (fwdKey[h] === -1) {
      const idx = nextFree[slot];
      if (idx >= nPorts) return -1;
      nextFree[slot] = idx + 1;
      fwdKey[h] = key;
      fwdIp[h] = ip;
      fwdIdx[h] = idx;
      revIp[slot * nPorts + idx] = ip;
      revPort[slot * nPorts + idx] = port;
      return idx;
    }
  }
  return -1;
}

/** Where a protocol keeps its port (or ICMP identifier), and its checksum field. */
function portField(slot: number, outbound: boolean): number {
  if (slot === 2) return Icmp.ID;
  return outbound ? Tcp.SPORT : Tcp.DPORT; // the same offsets in UDP
}

/** Rewrite the port (or identifier) at `at` and the transport checksum at `cs` for it. */
function rewritePort(bytes: Uint8Array, slot: number, at: number, cs: number, port: number): void {
  const old = get16(bytes, at);
  set16(bytes, at, port);
  if (slot === 1) udpCsumReplace16(bytes, cs, old, port);
  else csumReplace16(bytes, cs, old, port);
}

/** The transport checksum follows the address through the pseudo-header (not ICMP's). */
function rewriteAddr(
  bytes: Uint8Array,
  l3: number,
  field: number,
  slot: number,
  cs: number,
  addr: number,
) {
  const old = field === Ipv4.SRC ? ipv4Src(bytes, l3) : ipv4Dst(bytes, l3);
  setIpv4Addr(bytes, l3, field, addr);
  if (slot === 0) csumReplace32(bytes, cs, old, addr);
  else if (slot === 1) udpCsumReplace32(bytes, cs, old, addr);
}

function csumAt(slot: number, l4: number): number {
  return l4 + (slot === 0 ? Tcp.CSUM : slot === 1 ? Udp.CSUM : Icmp.CSUM);
}

export default function snat(b: Burst): void {
  const bytes = b.bytes;
  const outbound = b.port === inside;
  for (let i = 0; i < b.count; i++) {
    const o = b.offset(i);
    const len = b.segmentLength(i);
    const found = parseL4(bytes, o, len, info);
    if (info.l3 < 0 || bytes[o + info.l3] >>> 4 !== 4) {
      // Not IPv4 (or malformed): inside, nothing leaves untranslated; outside, pass (ARP...).
      if (outbound || l3Type(bytes, o, len) === EtherType.IPV4) b.drop(i);
      continue;
    }
    const l3 = o + info.l3;
    const l4 = o + info.l4;
    let slot = slotOf(info.proto);
    if (slot === 2 && found) {
      // ICMP: only echo requests (out) and replies (in) carry an identifier to map.
      const type = bytes[l4 + Icmp.TYPE];
      if (type !== (outbound ? Icmp.ECHO_REQUEST : Icmp.ECHO_REPLY)) slot = -1;
    }
    if (!found && slot >= 0) {
      b.drop(i); // a later fragment, or a transport header cut short
      continue;
    }
    if (outbound) {
      const src = ipv4Src(bytes, l3);
      if (((src & netMask) >>> 0) !== netAddr) continue; // not ours to translate: forwarded as is
      if (slot < 0) {
        rewriteAddr(bytes, l3, Ipv4.SRC, slot, 0, publicIp);
        continue;
      }
      const at = l4 + portField(slot, true);
      const idx = publicIndex(src, get16(bytes, at), slot);
      if (idx < 0) {
        exhausted++;
        b.drop(i);
        continue;
      }
      const cs = csumAt(slot, l4);
      rewriteAddr(bytes, l3, Ipv4.SRC, slot, cs, publicIp);
      rewritePort(bytes, slot, at, cs, firstPort + idx);
    } else {
      if (ipv4Dst(bytes, l3) !== publicIp) continue; // not for us: forwarded as is
      const at = l4 + portField(slot, false);
      const idx = slot < 0 ? -1 : get16(bytes, at) - firstPort;
      const r = slot * nPorts + idx;
      if (idx < 0 || idx >= nPorts || revPort[r] < 0) {
        b.drop(i);
        continue;
      }
      const cs = csumAt(slot, l4);
      rewriteAddr(bytes, l3, Ipv4.DST, slot, cs, revIp[r]);
      rewritePort(bytes, slot, at, cs, revPort[r]);
    }
  }
}

export function close(): void {
  const used = [...nextFree].reduce((a, c) => a + c, 0);
  log(`snat: ${used} mappings, ${exhausted} frames dropped for want of a public port`);
}
