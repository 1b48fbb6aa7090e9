/**
 * A VLAN bridge: one trunk port carries 802.1Q-tagged frames, every other port is an access port
 * of one VLAN. A frame from the trunk loses its tag and leaves by the access port of its VLAN; a
 * frame from an access port gets its VLAN's tag and leaves by the trunk.
 *
 *   vpmd fwd TRUNK ACCESS1 ACCESS2 --pipeline examples/vlan_bridge.ts \
 *     --pipeline-arg map=10:1,20:2 [--pipeline-arg trunk=0]
 *
 * `map` lists VLAN:PORT pairs (VLAN ids 1 to 4094, port indexes as on the command line); `trunk`
 * is the trunk's index (default 0). Dropped: trunk frames untagged or of a VLAN not in the map,
 * and tagged frames from an access port. With --vlan-strip the driver has already taken the tag
 * off (the burst says which, `b.vlan(i)`); without it the pipeline pops it.
 */
import {
  type Burst,
  Ether,
  etherType,
  isVlanTpid,
  type PipelineContext,
} from "../mod/pipeline/mod.ts";

/** Access port of each VLAN id (-1: none), and VLAN id of each port (-1: the trunk). */
const portOf = new Int16Array(4096).fill(-1);
let vlanOf = new Int16Array(0);
let trunk = 0;

export function init(ctx: PipelineContext): void {
  const n = ctx.ports.length;
  trunk = Number(ctx.args.trunk ?? 0);
  if (!Number.isInteger(trunk) || trunk < 0 || trunk >= n) {
    throw new Error(`vlan_bridge: trunk=${ctx.args.trunk}: not a port index (0 to ${n - 1})`);
  }
  portOf.fill(-1);
  vlanOf = new Int16Array(n).fill(-1);
  for (const pair of (ctx.args.map ?? "").split(",").filter((s) => s !== "")) {
    const m = /^(\d+):(\d+)$/.exec(pair);
    const vid = Number(m?.[1]);
    const port = Number(m?.[2]);
    if (m === null || vid < 1 || vid > 4094 || port >= n || port === trunk) {
      throw new Error(`vlan_bridge: map entry '${pair}': expected VLAN:PORT, an access port`);
    }
    if (vlanOf[port] >= 0) throw new Error(`vlan_bridge: port ${port} is given two VLANs`);
    portOf[vid] = port;
    vlanOf[port] = vid;
  }
  ctx.log(
    `vlan_bridge: trunk port ${trunk}; ` +
      [...vlanOf].map((v, p) => (v >= 0 ? `VLAN ${v} <-> port ${p}` : "")).filter((s) => s).join(
        ", ",
      ),
  );
}

export default function vlanBridge(b: Burst): void {
  if (b.port === trunk) {
    for (let i = 0; i < b.count; i++) {
      let tci = b.vlan(i); // stripped by the driver (--vlan-strip)
      if (tci < 0) tci = b.vlanPop(i);
      const to = tci < 0 ? -1 : portOf[tci & 0xfff];
      if (to < 0) b.drop(i);
      else b.sendTo(i, to);
    }
    return;
  }
  const vid = vlanOf[b.port];
  const bytes = b.bytes;
  for (let i = 0; i < b.count; i++) {
    const unfit = b.segmentLength(i) < Ether.HDR_LEN || b.vlan(i) >= 0 ||
      isVlanTpid(etherType(bytes, b.offset(i)));
    if (vid < 0 || unfit || !b.vlanPush(i, vid)) b.drop(i);
    else b.sendTo(i, trunk);
  }
}
