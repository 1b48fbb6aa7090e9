/**
 * `vpmd fwd` receive-filter and MTU flags: what they mean for each port, checked once, then
 * applied through the port's control-queue API (mod/port.ts, virtio 1.2 5.1.6.5).
 *
 *   --promisc / --no-promisc   promiscuous mode (default on, as testpmd; only sent when the
 *                              device has VIRTIO_NET_F_CTRL_RX unless asked for explicitly)
 *   --allmulti                 receive every multicast frame (default off, also sent when the
 *                              device has CTRL_RX)
 *   --mac [N,]ADDR             set port N's MAC address (default port 0; CTRL_MAC_ADDR)
 *   --mcast ADDR,...           multicast MAC table of every port (CTRL_RX)
 *   --vlan-filter VID,...      accept tagged frames of these VLANs only (CTRL_VLAN); without it
 *                              CTRL_VLAN is not negotiated and every VLAN passes
 *   --mtu N                    port MTU (default 1500 or the device's smaller maximum)
 *
 * Every malformed value is an Error with a one-line message (the CLI turns it into exit 2).
 */
import type { Port } from "../mod/port.ts";
import { has, NetFeature } from "../mod/virtio/constants.ts";
import { parseMac, parseOwnMac } from "../mod/mac.ts";

/** parseArgs option definitions for these flags (merged into `vpmd fwd`'s). */
export const FILTER_FLAGS = {
  promisc: { type: "boolean" },
  "no-promisc": { type: "boolean" },
  allmulti: { type: "boolean" },
  mac: { type: "string", multiple: true },
  mcast: { type: "string" },
  "vlan-filter": { type: "string" },
  mtu: { type: "string" },
} as const;

export interface FilterOptions {
  /** null: not asked (on when the device can do it, as testpmd). */
  promisc: boolean | null;
  allmulti: boolean;
  /** Per port index: its MAC address, when asked. */
  macs: (Uint8Array | undefined)[];
  /** Multicast table for every port, when asked. */
  mcast: Uint8Array[] | null;
  vlans: number[];
  mtu: number | undefined;
}

interface FilterValues {
  promisc?: boolean;
  "no-promisc"?: boolean;
  allmulti?: boolean;
  mac?: string[];
  mcast?: string;
  "vlan-filter"?: string;
  mtu?: string;
}

function mac(flag: string, s: string): Uint8Array {
  try {
    return parseMac(s);
  } catch (e) {
    throw new Error(`--${flag} ${s}: ${(e as Error).message}`);
  }
}

/** Check the flags' values for `ports` ports. */
export function parseFilterFlags(v: FilterValues, ports: number): FilterOptions {
  if (v.promisc && v["no-promisc"]) throw new Error("--promisc and --no-promisc contradict");
  const macs: (Uint8Array | undefined)[] = [];
  for (const m of v.mac ?? []) {
    const comma = m.indexOf(",");
    const id = comma < 0 ? "0" : m.slice(0, comma);
    if (!/^\d+$/.test(id) || Number(id) >= ports) {
      throw new Error(`--mac ${m}: expected [PORT,]MAC with PORT from 0 to ${ports - 1}`);
    }
    const a = parseOwnMac(`--mac ${m}`, m.slice(comma + 1));
    macs[Number(id)] = a;
  }
  let mcast: Uint8Array[] | null = null;
  if (v.mcast !== undefined) {
    mcast = v.mcast.split(",").map((s) => mac("mcast", s));
    for (const [i, a] of mcast.entries()) {
      if ((a[0] & 1) === 0) {
        throw new Error(`--mcast ${v.mcast.split(",")[i]}: not a multicast address`);
      }
    }
  }
  let vlans: number[] = [];
  if (v["vlan-filter"] !== undefined) {
    const s = v["vlan-filter"];
    if (!/^\d+(,\d+)*$/.test(s)) {
      throw new Error(`--vlan-filter ${s}: expected VLAN ids like 100,200`);
    }
    vlans = s.split(",").map(Number);
    const bad = vlans.find((id) => id > 4095);
    if (bad !== undefined) throw new Error(`--vlan-filter ${s}: VLAN id ${bad} is not in 0..4095`);
  }
  let mtu: number | undefined;
  if (v.mtu !== undefined) {
    if (!/^\d+$/.test(v.mtu) || Number(v.mtu) < 68 || Number(v.mtu) > 65535) {
      throw new Error(`--mtu ${v.mtu}: expected an integer from 68 to 65535`);
    }
    mtu = Number(v.mtu);
  }
  return {
    promisc: v.promisc ? true : v["no-promisc"] ? false : null,
    allmulti: v.allmulti === true,
    macs,
    mcast,
    vlans,
    mtu,
  };
}

/**
 * Ask port `i` (configured, not started) for the filters: each call checks the device has the
 * feature (an Error naming it and the flag otherwise) and is sent when the port starts.
 */
export function applyFilters(port: Port, i: number, f: FilterOptions): void {
  // Not asked: promiscuous on and all-multicast off (testpmd's defaults), sent whenever the
  // device can take them, so that a device's own reset state does not decide.
  const rx = has(port.features, NetFeature.CTRL_RX);
  const promisc = f.promisc ?? (rx ? true : null);
  if (promisc !== null) port.setPromiscuous(promisc);
  if (f.allmulti || rx) port.setAllMulticast(f.allmulti);
  if (f.mcast !== null) port.setMacTable([], f.mcast);
  const m = f.macs[i];
  if (m !== undefined) port.setMacAddress(m);
  for (const vid of f.vlans) port.addVlan(vid);
}
