/**
 * tcpdump as the independent reader of vpmd's capture files (Debian's package; CI installs it
 * with scripts/setup-dpdk.sh).
 */
import { haveCommand, type Peer } from "./peers.ts";

export const tcpdumpPeer: Peer = {
  what: "tcpdump",
  setup: "scripts/setup-dpdk.sh",
  available: () => haveCommand("tcpdump"),
};

/** A frame as tcpdump printed it: its header line, and its bytes (with `-xx`). */
export interface DumpedFrame {
  line: string;
  bytes: Uint8Array;
}

/**
 * `tcpdump -r FILE -nn -e -xx --time-stamp-precision=nano` (plus `extra`, e.g. a filter): every
 * frame's line and bytes. Throws with tcpdump's message when it fails.
 */
export async function tcpdumpRead(file: string, extra: string[] = []): Promise<DumpedFrame[]> {
  const out = await new Deno.Command("tcpdump", {
    args: ["-r", file, "-nn", "-e", "-xx", "--time-stamp-precision=nano", ...extra],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) {
    throw new Error(`tcpdump -r ${file} failed: ${new TextDecoder().decode(out.stderr)}`);
  }
  const frames: DumpedFrame[] = [];
  let cur: { line: string; hex: string[] } | null = null;
  const flush = () => {
    if (cur === null) return;
    const hex = cur.hex.join("");
    const bytes = new Uint8Array(hex.length / 2);
    for (let i = 0; i < bytes.length; i++) bytes[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
    frames.push({ line: cur.line, bytes });
  };
  for (const l of text.split("\n")) {
    const m = l.match(/^\s+0x[0-9a-f]+:\s+((?:[0-9a-f]{2,4}\s?)+)/);
    if (m !== null && cur !== null) {
      cur.hex.push(m[1].replace(/\s+/g, ""));
    } else if (l.trim() !== "") {
      flush();
      cur = { line: l, hex: [] };
    }
  }
  flush();
  return frames;
}

/** How many frames tcpdump reads from `file` (with an optional filter expression). */
export async function tcpdumpCount(file: string, filter: string[] = []): Promise<number> {
  const out = await new Deno.Command("tcpdump", {
    args: ["-r", file, "-nn", "-q", ...filter],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new Error(`tcpdump -r ${file} failed: ${new TextDecoder().decode(out.stderr)}`);
  }
  return new TextDecoder().decode(out.stdout).split("\n").filter((l) => l.trim() !== "").length;
}
