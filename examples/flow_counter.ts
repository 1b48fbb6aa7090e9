/**
 * A flow counter: frames are forwarded unchanged (to the paired port) and counted per flow, an
 * IPv4 5-tuple (source and destination address, protocol, and the ports of TCP and UDP); every
 * second a report says how many flows there are, how many are new, and the busiest.
 *
 *   vpmd fwd PORT PORT --pipeline examples/flow_counter.ts [--pipeline-arg every=1] \
 *     [--pipeline-arg top=5] [--pipeline-arg flows=65536]
 *
 * The flows live in an open-addressing hash table of typed arrays made at init (`flows` entries,
 * a power of two); counting allocates nothing. Once the table is full, new flows are counted in
 * `untracked` only. Other frames (not IPv4) are counted as such.
 */
import {
  type Burst,
  formatIpv4,
  IpProto,
  ipv4Dst,
  ipv4Src,
  newL4Info,
  parseL4,
  type PipelineContext,
} from "../mod/pipeline/mod.ts";

let size = 0;
let keySrc = new Uint32Array(0);
let keyDst = new Uint32Array(0);
/** Source and destination port (TCP, UDP: source << 16 | destination), protocol + 1 (0: empty). */
let keyPorts = new Uint32Array(0);
let keyProto = new Uint16Array(0);
let packets = new Float64Array(0);
let bytesOf = new Float64Array(0);
let flows = 0;
let newFlows = 0;
let untracked = 0;
let notIpv4 = 0;
let timer: ReturnType<typeof setInterval> | undefined;
const info = newL4Info();

/** The busiest flows (the report's; also for tests). */
export function topFlows(k: number): { flow: string; packets: number; bytes: number }[] {
  const idx: number[] = [];
  for (let i = 0; i < size; i++) if (keyProto[i] !== 0) idx.push(i);
  idx.sort((a, c) => packets[c] - packets[a]);
  return idx.slice(0, k).map((i) => {
    const proto = keyProto[i] - 1;
    const ports = proto === IpProto.TCP || proto === IpProto.UDP
      ? [`:${keyPorts[i] >>> 16}`, `:${keyPorts[i] & 0xffff}`]
      : ["", ""];
    return {
      flow: `${formatIpv4(keySrc[i])}${ports[0]} > ${formatIpv4(keyDst[i])}${
        ports[1]
      } proto ${proto}`,
      packets: packets[i],
      bytes: bytesOf[i],
    };
  });
}

/** Flows in the table, frames of flows it had no room for, frames that are not IPv4. */
export function counts(): { flows: number; untracked: number; notIpv4: number } {
  return { flows, untracked, notIpv4 };
}

export function init(ctx: PipelineContext): void {
  size = Number(ctx.args.flows ?? 65536);
  if (!Number.isInteger(size) || size < 16 || (size & (size - 1)) !== 0) {
    throw new Error(`flow_counter: flows=${ctx.args.flows}: expected a power of two, at least 16`);
  }
  keySrc = new Uint32Array(size);
  keyDst = new Uint32Array(size);
  keyPorts = new Uint32Array(size);
  keyProto = new Uint16Array(size);
  packets = new Float64Array(size);
  bytesOf = new Float64Array(size);
  flows =
    newFlows =
    untracked =
    notIpv4 =
      0;
  const every = Number(ctx.args.every ?? 1) * 1000;
  const top = Number(ctx.args.top ?? 5);
  timer = setInterval(() => {
    const lines = topFlows(top).map((f) => `  ${f.flow}: ${f.packets} frames, ${f.bytes} bytes`);
    ctx.log(
      `flows: ${flows} (${newFlows} new), untracked frames ${untracked}, not IPv4 ${notIpv4}` +
        (lines.length > 0 ? `\n${lines.join("\n")}` : ""),
    );
    newFlows = 0;
  }, every);
}

export default function countFlows(b: Burst): void {
  const bytes = b.bytes;
  const mask = size - 1;
  for (let i = 0; i < b.count; i++) {
    const o = b.offset(i);
    const found = parseL4(bytes, o, b.segmentLength(i), info);
    if (info.l3 < 0 || bytes[o + info.l3] >>> 4 !== 4) {
      notIpv4++;
      continue;
    }
    const l3 = o + info.l3;
    const src = ipv4Src(bytes, l3);
    const dst = ipv4Dst(bytes, l3);
    const proto = info.proto + 1;
    const l4 = o + info.l4;
    const hasPorts = found && (info.proto === IpProto.TCP || info.proto === IpProto.UDP);
    const ports = hasPorts
      ? (((bytes[l4] << 24) | (bytes[l4 + 1] << 16) | (bytes[l4 + 2] << 8) | bytes[l4 + 3]) >>> 0)
      : 0;
    // A multiplicative hash of the tuple; linear probing, at most `size` steps.
    let h = (Math.imul(src ^ Math.imul(dst, 0x9e3779b1) ^ ports ^ (proto << 8), 0x85ebca6b) >>> 0) &
      mask;
    let k = 0;
    for (; k < size; k++, h = (h + 1) & mask) {
      const p = keyProto[h];
      if (p === 0) {
        keySrc[h] = src;
        keyDst[h] = dst;
        keyPorts[h] = ports;
        keyProto[h] = proto;
        flows++;
        newFlows++;
        break;
      }
      if (p === proto && keySrc[h] === src && keyDst[h] === dst && keyPorts[h] === ports) break;
    }
    if (k === size) {
      untracked++;
      continue;
    }
    packets[h]++;
    bytesOf[h] += b.length(i);
  }
}

export function close(): void {
  clearInterval(timer);
  timer = undefined;
}
