/**
 * A stateless firewall: every IPv4 frame is matched against 5-tuple rules read from a JSON file,
 * first match wins; frames no rule matches get the default action.
 *
 *   vpmd fwd PORT PORT --pipeline examples/firewall.ts --pipeline-arg rules=rules.json
 *
 * rules.json:
 *   { "default": "pass",
 *     "nonIp": "pass",
 *     "rules": [ { "action": "drop", "proto": "udp", "dst": "10.0.0.0/8", "dport": 53 },
 *                { "action": "pass", "proto": "tcp", "src": "192.168.1.7", "dport": "1024-65535" } ] }
 *
 * A rule's fields: `action` (pass or drop, required); `proto` (tcp, udp, icmp or a protocol
 * number); `src`, `dst` (an address or a network A.B.C.D/N); `sport`, `dport` (a port or LO-HI).
 * A missing field matches anything; a rule with ports matches only TCP and UDP frames that carry
 * them (a later fragment has none). `nonIp` is the action for frames that are not IPv4 (ARP,
 * IPv6; default pass); a malformed IPv4 frame is dropped. At close each rule's hits are printed.
 *
 * The rules are compiled at init into typed arrays, so matching allocates nothing.
 */
import {
  type Burst,
  dstPort,
  EtherType,
  IpProto,
  ipv4Dst,
  ipv4Src,
  l3Type,
  newL4Info,
  parseCidr,
  parseL4,
  type PipelineContext,
  srcPort,
} from "../mod/pipeline/mod.ts";

interface RuleJson {
  action: string;
  proto?: string | number;
  src?: string;
  dst?: string;
  sport?: number | string;
  dport?: number | string;
}

const PROTOS: Record<string, number> = { tcp: IpProto.TCP, udp: IpProto.UDP, icmp: IpProto.ICMP };
const PASS = 0;
const DROP = 1;

let n = 0;
let srcNet = new Uint32Array(0);
let srcMask = new Uint32Array(0);
let dstNet = new Uint32Array(0);
let dstMask = new Uint32Array(0);
let proto = new Int16Array(0);
let ports = new Uint8Array(0);
let spLo = new Int32Array(0);
let spHi = new Int32Array(0);
let dpLo = new Int32Array(0);
let dpHi = new Int32Array(0);
let action = new Uint8Array(0);
/** Frames each rule matched; the last entry counts frames no rule matched. */
let hits = new Float64Array(0);
let defaultAction = PASS;
let nonIpAction = PASS;
let log: (msg: string) => void = () => {};
const info = newL4Info();

function verdictOf(s: string | undefined, what: string, dflt: number): number {
  if (s === undefined) return dflt;
  if (s === "pass") return PASS;
  if (s === "drop") return DROP;
  throw new Error(`${what}: '${s}' is not pass or drop`);
}

function portRange(v: number | string | undefined, what: string): [number, number] {
  if (v === undefined) return [0, 65535];
  const m = /^(\d+)(?:-(\d+))?$/.exec(String(v));
  const lo = Number(m?.[1]);
  const hi = m?.[2] === undefined ? lo : Number(m[2]);
  if (m === null || lo > hi || hi > 65535) {
    throw new Error(`${what}: '${v}' is not a port or LO-HI`);
  }
  return [lo, hi];
}

/** Read and compile the rules (`--pipeline-arg rules=FILE`). */
export function init(ctx: PipelineContext): void {
  const file = ctx.args.rules;
  if (file === undefined) {
    throw new Error("firewall: give the rules: --pipeline-arg rules=FILE.json");
  }
  const json = JSON.parse(Deno.readTextFileSync(file)) as {
    default?: string;
    nonIp?: string;
    rules?: RuleJson[];
  };
  const rules = json.rules ?? [];
  n = rules.length;
  srcNet = new Uint32Array(n);
  srcMask = new Uint32Array(n);
  dstNet = new Uint32Array(n);
  dstMask = new Uint32Array(n);
  proto = new Int16Array(n);
  ports = new Uint8Array(n);
  spLo = new Int32Array(n);
  spHi = new Int32Array(n);
  dpLo = new Int32Array(n);
  dpHi = new Int32Array(n);
  action = new Uint8Array(n);
  hits = new Float64Array(n + 1);
  defaultAction = verdictOf(json.default, "default", PASS);
  nonIpAction = verdictOf(json.nonIp, "nonIp", PASS);
  rules.forEach((r, i) => {
    const what = `${file}: rule ${i + 1}`;
    action[i] = verdictOf(r.action ?? "", what, PASS);
    const p = r.proto === undefined ? -1 : typeof r.proto === "number" ? r.proto : PROTOS[r.proto];
    if (p === undefined || !(p >= -1 && p <= 255)) {
      throw new Error(`${what}: unknown proto '${r.proto}'`);
    }
    proto[i] = p;
    const s = parseCidr(r.src ?? "0.0.0.0/0");
    const d = parseCidr(r.dst ?? "0.0.0.0/0");
    [srcNet[i], srcMask[i], dstNet[i], dstMask[i]] = [s.net, s.mask, d.net, d.mask];
    ports[i] = r.sport !== undefined || r.dport !== undefined ? 1 : 0;
    [spLo[i], spHi[i]] = portRange(r.sport, `${what}: sport`);
    [dpLo[i], dpHi[i]] = portRange(r.dport, `${what}: dport`);
  });
  log = ctx.log;
  ctx.log(`firewall: ${n} rules from ${file}, default ${json.default ?? "pass"}`);
}

export default function firewall(b: Burst): void {
  const bytes = b.bytes;
  for (let i = 0; i < b.count; i++) {
    const o = b.offset(i);
    const len = b.segmentLength(i);
    const found = parseL4(bytes, o, len, info);
    if (info.l3 < 0 || info.proto < 0 || (bytes[o + info.l3] >>> 4) !== 4) {
      // Not IPv4, or IPv4 whose header is malformed.
      const ipv4 = l3Type(bytes, o, len) === EtherType.IPV4;
      if (ipv4 || nonIpAction === DROP) b.drop(i);
      continue;
    }
    const l3 = o + info.l3;
    const src = ipv4Src(bytes, l3);
    const dst = ipv4Dst(bytes, l3);
    const pr = info.proto;
    let sp = -1;
    let dp = -1;
    if (found && (pr === IpProto.TCP || pr === IpProto.UDP)) {
      sp = srcPort(bytes, o + info.l4);
      dp = dstPort(bytes, o + info.l4);
    }
    let r = 0;
    for (; r < n; r++) {
      if (((src & srcMask[r]) >>> 0) !== srcNet[r] || ((dst & dstMask[r]) >>> 0) !== dstNet[r]) {
        continue;
      }
      if (proto[r] >= 0 && proto[r] !== pr) continue;
      if (ports[r] === 1 && (sp < spLo[r] || sp > spHi[r] || dp < dpLo[r] || dp > dpHi[r])) {
        continue;
      }
      break;
    }
    hits[r]++;
    if ((r < n ? action[r] : defaultAction) === DROP) b.drop(i);
  }
}

/** Print each rule's hits. */
export function close(): void {
  const per = Array.from(hits.subarray(0, n), (h, i) => `rule ${i + 1}: ${h}`);
  log(`firewall: ${[...per, `default: ${hits[n]}`].join(", ")}`);
}
