/**
 * Frame accounting for forwarders whose every port is a simulated device: each frame a sim wire
 * generated must be seen again (checked at the wire it was forwarded to) or counted as a drop.
 *
 * Per direction of a pair (port A receives, port B transmits; B = A for a port alone):
 *   generated(A) = checkedOk(B) + badFrames(B) + missed(A) + rxDropped(A) + txDropped(B)
 *                  + txLinkDown(B)
 * where `missed` is what A's device could not deliver (no RX buffers), `rxDropped` what the
 * driver discarded on receive, `txDropped` what B did not send and `txLinkDown` what B's device
 * dropped because its link was down. Content is verified when no frame failed the wire's check.
 * rxonly: generated(A) = rxPackets(A) + rxDropped(A) + missed(A).
 * txonly: the frames A built are txPackets(A) + txDropped(A) (a full ring refuses some), and
 * every frame A sent reaches A's wire and passes the check or met A's link down.
 *
 * A run in which frames failed is never "all accounted for", even though each failed frame is
 * counted as a drop: TX errors (a frame no TX ring can take, malformed, or a bad used entry on a
 * TX ring) are failures, not load.
 */
import type { Mode } from "../mod/fwd/engines.ts";
import type { PortRow } from "./stats.ts";

export type WireCounters = Record<string, number>;

export interface Direction {
  from: number;
  to: number;
  generated: number;
  /** Frames seen again at the receiving wire, checked OK. */
  checked: number;
  badFrames: number;
  drops: number;
  /** generated - checked - badFrames - drops: frames nobody can account for (0 when all is well). */
  lost: number;
}

export interface Accounting {
  ok: boolean;
  frames: number;
  contentVerified: boolean;
  directions: Direction[];
  message: string;
}

const n = (w: WireCounters | undefined, k: string) => w?.[k] ?? 0;

/** Accounting for `rows` (all ports must be simulated: otherwise null). */
export function accountFrames(mode: Mode, rows: PortRow[]): Accounting | null {
  if (rows.length === 0 || rows.some((r) => r.wire === undefined)) return null;
  const directions: Direction[] = [];
  for (let a = 0; a < rows.length; a++) {
    const A = rows[a];
    if (mode === "txonly") {
      const built = A.txPackets + A.txDropped;
      const checked = n(A.wire, "checkedOk");
      const bad = n(A.wire, "badFrames");
      const drops = A.txDropped + n(A.wire, "txLinkDown");
      directions.push({
        from: a,
        to: a,
        generated: built,
        checked,
        badFrames: bad,
        drops,
        lost: built - checked - bad - drops,
      });
      continue;
    }
    const b = mode === "rxonly" ? a : (a ^ 1) < rows.length ? a ^ 1 : a;
    const B = rows[b];
    const generated = n(A.wire, "generated");
    const missed = n(A.wire, "missed");
    if (mode === "rxonly") {
      const drops = A.rxDropped + missed;
      directions.push({
        from: a,
        to: a,
        generated,
        checked: A.rxPackets,
        badFrames: 0,
        drops,
        lost: generated - A.rxPackets - drops,
      });
      continue;
    }
    const checked = n(B.wire, "checkedOk");
    const bad = n(B.wire, "badFrames");
    const drops = missed + A.rxDropped + B.txDropped + n(B.wire, "txLinkDown");
    directions.push({
      from: a,
      to: b,
      generated,
      checked,
      badFrames: bad,
      drops,
      lost: generated - checked - bad - drops,
    });
  }
  // A port forwarding to itself, or a pair, is one closed system per direction; with pairs each
  // direction's receiving wire also sees only that direction's frames.
  const frames = directions.reduce((s, d) => s + d.generated, 0);
  const bad = directions.reduce((s, d) => s + d.badFrames, 0);
  const contentVerified = mode !== "rxonly" && bad === 0;
  const failures = rows.flatMap((r, i) =>
    r.txErrors > 0 ? [`port ${i}: ${r.txErrors} TX errors (${r.txPackets} frames sent)`] : []
  );
  const ok = directions.every((d) => d.lost === 0) && bad === 0 && failures.length === 0;
  const what = mode === "txonly" ? "built" : "generated";
  let message: string;
  if (ok) {
    const drops = directions.reduce((s, d) => s + d.drops, 0);
    message = `all ${frames} frames accounted for` +
      (mode === "rxonly" ? " (received or counted as dropped)" : ", content verified") +
      (drops > 0 ? ` (${drops} counted drops)` : "");
  } else {
    const parts = directions.filter((d) => d.lost !== 0 || d.badFrames !== 0).map((d) =>
      `port ${d.from}->${d.to}: ${what} ${d.generated}, checked ${d.checked}, bad ${d.badFrames}, ` +
      `dropped ${d.drops}, unaccounted ${d.lost}`
    );
    message = [
      ...(parts.length > 0 ? [`frames do not add up: ${parts.join("; ")}`] : []),
      ...(failures.length > 0 ? [`frames failed: ${failures.join("; ")}`] : []),
    ].join("; ");
  }
  return { ok, frames, contentVerified, directions, message };
}
