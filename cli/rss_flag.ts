/**
 * `vpmd fwd --rss ip|udp|tcp[,...]`: receive-side scaling on every port (virtio 1.2, 5.1.6.5.7).
 * `ip` hashes IPv4 packets over their addresses; `udp` and `tcp` also over the ports of UDP or TCP
 * packets (and imply `ip` for the others, 5.1.6.4.3). The key is DEFAULT_RSS_KEY and the
 * indirection table spreads the hashes evenly over the `--queues` queue pairs (mod/virtio/rss.ts).
 */
import { HashType } from "../mod/virtio/constants.ts";

const TYPES: Record<string, number> = {
  ip: HashType.IPv4,
  udp: HashType.IPv4 | HashType.UDPv4,
  tcp: HashType.IPv4 | HashType.TCPv4,
};

/** The hash types `--rss` names; throws a one-line Error for anything else. */
export function parseRssFlag(v: string): number {
  let types = 0;
  for (const name of v.split(",")) {
    const t = TYPES[name];
    if (t === undefined) {
      throw new Error(`--rss ${v}: expected ip, udp or tcp (or several, like udp,tcp)`);
    }
    types |= t;
  }
  return types;
}
