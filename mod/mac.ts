/**
 * MAC addresses (IEEE 802 48-bit): parsing, and the rule for a port's own address.
 */

/** Parse `XX:XX:XX:XX:XX:XX` (hex, either case) into 6 bytes; throws a one-line error. */
export function parseMac(s: string): Uint8Array {
  const parts = s.split(":");
  if (parts.length !== 6 || parts.some((p) => !/^[0-9a-fA-F]{2}$/.test(p))) {
    throw new Error(`bad MAC address '${s}': expected six hex bytes like 02:00:00:00:00:01`);
  }
  return Uint8Array.from(parts.map((p) => parseInt(p, 16)));
}

/**
 * Parse a port's own address: unicast (the first byte's lowest bit, the group bit, clear) and not
 * all zero. `where` (port and option or flag) starts the error message.
 */
export function parseOwnMac(where: string, s: string): Uint8Array {
  let mac: Uint8Array;
  try {
    mac = parseMac(s);
  } catch (e) {
    throw new Error(`${where}: ${(e as Error).message}`);
  }
  if ((mac[0] & 1) !== 0 || mac.every((b) => b === 0)) {
    throw new Error(
      `${where}: a port's own address must be unicast (first byte even) and not all zero, ` +
        `e.g. 02:00:00:00:00:01`,
    );
  }
  return mac;
}
