/**
 * Frame accounting for simulated ports when frames are not the mode's test frames going their
 * fixed way: a pipeline may rewrite, drop and redirect them, a replay sends a capture's frames.
 * Their content cannot be checked, and a frame may leave by any port, so the count is over the
 * whole forwarder:
 *
 *   pipeline: Σ generated = Σ sent at the wires + Σ (missed + rxDropped + txDropped) + dropped by
 *             the pipeline (verdicts and bursts lost to errors)
 *   replay:   Σ built (txPackets + txDropped) = Σ sent at the wires + Σ txDropped
 *
 * A run with TX errors is never "all accounted for" (as ./accounting.ts).
 */
import type { Accounting, Direction } from "./accounting.ts";
import type { PortRow } from "./stats.ts";

const w = (r: PortRow, k: string) => r.wire?.[k] ?? 0;

/** Accounting by counts (all ports must be simulated: otherwise null). */
export function accountCounted(
  kind: "pipeline" | "replay",
  rows: PortRow[],
  pipelineDrops: number,
): Accounting | null {
  if (rows.length === 0 || rows.some((r) => r.wire === undefined)) return null;
  const sum = (f: (r: PortRow) => number) => rows.reduce((a, r) => a + f(r), 0);
  const sent = sum((r) => w(r, "txFrames") + w(r, "txLinkDown"));
  const frames = kind === "pipeline"
    ? sum((r) => w(r, "generated"))
    : sum((r) => r.txPackets + r.txDropped);
  const drops = kind === "pipeline"
    ? sum((r) => w(r, "missed") + r.rxDropped + r.txDropped) + pipelineDrops
    : sum((r) => r.txDropped);
  const lost = frames - sent - drops;
  const d: Direction = {
    from: 0,
    to: rows.length - 1,
    generated: frames,
    checked: sent,
    badFrames: 0,
    drops,
    lost,
  };
  const failures = rows.flatMap((r, i) =>
    r.txErrors > 0 ? [`port ${i}: ${r.txErrors} TX errors (${r.txPackets} frames sent)`] : []
  );
  const ok = lost === 0 && failures.length === 0;
  const what = kind === "pipeline" ? "generated" : "built";
  const message = ok
    ? `all ${frames} frames accounted for (sent or counted as dropped; content not checked: ` +
      `${kind === "pipeline" ? "the pipeline may change frames" : "the frames are the capture's"})`
    : [
      ...(lost !== 0
        ? [
          `frames do not add up: ${what} ${frames}, sent ${sent}, dropped ${drops}, unaccounted ${lost}`,
        ]
        : []),
      ...(failures.length > 0 ? [`frames failed: ${failures.join("; ")}`] : []),
    ].join("; ");
  return { ok, frames, contentVerified: false, directions: [d], message };
}
