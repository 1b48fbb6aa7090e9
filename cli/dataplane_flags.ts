/**
 * `vpmd fwd` flags of the programmable data plane and of capture and replay:
 *
 *   --pipeline FILE             run the TypeScript module FILE on every received burst
 *                               (mod/pipeline/api.ts); replaces --mode io
 *   --pipeline-arg K=V          an argument for the pipeline's init (repeatable)
 *   --pcap PORT:FILE[:rx|tx|both]  capture port PORT's frames into FILE, classic pcap with
 *                               nanosecond timestamps (repeatable; default both directions)
 *   --pcap-snaplen N            bytes kept per captured frame (default 65535)
 *   --pcap-count N              frames per capture file at most
 *   --pcap-max-bytes N          bytes per capture file at most
 *   --tx-pcap FILE              txonly: send the frames of a capture (pcap or pcapng) instead of
 *                               test frames
 *   --tx-pcap-loop N            send the capture N times (default 1; 0 = until stopped)
 *
 * Every malformed value is an Error with a one-line message (the CLI turns it into exit 2).
 */
import type { CaptureDir, CaptureSpec } from "../mod/pcap/capture.ts";
import { MAX_SNAPLEN } from "../mod/pcap/format.ts";

/** parseArgs option definitions for these flags (merged into `vpmd fwd`'s). */
export const DATAPLANE_FLAGS = {
  pipeline: { type: "string" },
  "pipeline-arg": { type: "string", multiple: true },
  pcap: { type: "string", multiple: true },
  "pcap-snaplen": { type: "string" },
  "pcap-count": { type: "string" },
  "pcap-max-bytes": { type: "string" },
  "tx-pcap": { type: "string" },
  "tx-pcap-loop": { type: "string" },
} as const;

/** What the flags ask for. */
export interface DataPlaneOptions {
  pipeline: string | undefined;
  pipelineArgs: Record<string, string>;
  pcaps: CaptureSpec[];
  snaplen: number;
  pcapCount: number | undefined;
  pcapMaxBytes: number | undefined;
  txPcap: string | undefined;
  /** Times to send the capture; 0 = until stopped. */
  txPcapLoop: number;
}

interface DataPlaneValues {
  mode?: string;
  txpkts?: string;
  pipeline?: string;
  "pipeline-arg"?: string[];
  pcap?: string[];
  "pcap-snaplen"?: string;
  "pcap-count"?: string;
  "pcap-max-bytes"?: string;
  "tx-pcap"?: string;
  "tx-pcap-loop"?: string;
}

const DIRS: readonly CaptureDir[] = ["rx", "tx", "both"];

function count(flag: string, v: string | undefined, min: number, max: number): number | undefined {
  if (v === undefined) return undefined;
  if (!/^\d+$/.test(v) || Number(v) < min || Number(v) > max) {
    throw new Error(`--${flag} ${v}: expected an integer from ${min} to ${max}`);
  }
  return Number(v);
}

/** `PORT:FILE[:rx|tx|both]` (a FILE may hold colons; a last `:rx`, `:tx` or `:both` is the direction). */
function parseCapture(s: string, ports: number): CaptureSpec {
  const colon = s.indexOf(":");
  const port = colon < 0 ? "" : s.slice(0, colon);
  if (!/^\d+$/.test(port) || Number(port) >= ports) {
    throw new Error(
      `--pcap ${s}: expected PORT:FILE[:rx|tx|both] with PORT from 0 to ${ports - 1}`,
    );
  }
  let file = s.slice(colon + 1);
  let dir: CaptureDir = "both";
  const last = file.lastIndexOf(":");
  if (last >= 0 && (DIRS as readonly string[]).includes(file.slice(last + 1))) {
    dir = file.slice(last + 1) as CaptureDir;
    file = file.slice(0, last);
  }
  if (file === "") throw new Error(`--pcap ${s}: no file name`);
  return { port: Number(port), file, dir };
}

/** Check the flags' values for `ports` ports; `v.mode` is the --mode given, if any. */
export function parseDataPlaneFlags(v: DataPlaneValues, ports: number): DataPlaneOptions {
  const pipelineArgs: Record<string, string> = {};
  for (const a of v["pipeline-arg"] ?? []) {
    const eq = a.indexOf("=");
    if (eq <= 0) throw new Error(`--pipeline-arg ${a}: expected KEY=VALUE`);
    const k = a.slice(0, eq);
    if (k in pipelineArgs) throw new Error(`--pipeline-arg ${k} given twice`);
    pipelineArgs[k] = a.slice(eq + 1);
  }
  if (v.pipeline !== undefined) {
    if (v.mode !== undefined && v.mode !== "io") {
      throw new Error(
        `--pipeline replaces the forwarding mode: leave out --mode ${v.mode} (frames go where ` +
          `the pipeline's verdicts say)`,
      );
    }
    if (v.pipeline === "") throw new Error("--pipeline needs a file (a TypeScript module)");
  } else if (v["pipeline-arg"] !== undefined) {
    throw new Error("--pipeline-arg is for a pipeline: give --pipeline FILE too");
  }
  if (v["tx-pcap"] !== undefined) {
    if (v.mode !== "txonly") throw new Error("--tx-pcap sends a capture: it needs --mode txonly");
    if (v.txpkts !== undefined) {
      throw new Error("--tx-pcap and --txpkts contradict: the capture gives the frames");
    }
    if (v["tx-pcap"] === "") throw new Error("--tx-pcap needs a file (pcap or pcapng)");
  } else if (v["tx-pcap-loop"] !== undefined) {
    throw new Error("--tx-pcap-loop is for a replay: give --tx-pcap FILE too");
  }
  const pcaps = (v.pcap ?? []).map((s) => parseCapture(s, ports));
  const files = new Set<string>();
  const taps = new Set<string>();
  for (const c of pcaps) {
    if (files.has(c.file)) {
      throw new Error(`--pcap: file ${c.file} given twice (one file per port; use :both)`);
    }
    files.add(c.file);
    for (const d of c.dir === "both" ? ["rx", "tx"] : [c.dir]) {
      if (taps.has(`${c.port}:${d}`)) {
        throw new Error(`--pcap: port ${c.port}'s ${d} frames are captured twice`);
      }
      taps.add(`${c.port}:${d}`);
    }
  }
  const limits = ["pcap-snaplen", "pcap-count", "pcap-max-bytes"] as const;
  for (const f of limits) {
    if (v[f] !== undefined && pcaps.length === 0) {
      throw new Error(`--${f} is for a capture: give --pcap PORT:FILE too`);
    }
  }
  return {
    pipeline: v.pipeline,
    pipelineArgs,
    pcaps,
    snaplen: count("pcap-snaplen", v["pcap-snaplen"], 1, MAX_SNAPLEN) ?? MAX_SNAPLEN,
    pcapCount: count("pcap-count", v["pcap-count"], 1, Number.MAX_SAFE_INTEGER),
    pcapMaxBytes: count("pcap-max-bytes", v["pcap-max-bytes"], 64, Number.MAX_SAFE_INTEGER),
    txPcap: v["tx-pcap"],
    txPcapLoop: count("tx-pcap-loop", v["tx-pcap-loop"], 0, 2 ** 31) ?? 1,
  };
}
