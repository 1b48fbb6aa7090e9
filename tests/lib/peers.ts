/**
 * Tests that need a real peer (DPDK testpmd, QEMU, hugepages) register through `peerTest`.
 * On a user's machine without the peer they are skipped with a message naming the set-up script;
 * in CI (`CI=true`) they always run, so a missing peer fails there.
 */

export interface Peer {
  /** What is needed, e.g. "dpdk-testpmd and 512 hugepages". */
  what: string;
  /** The script that installs it, e.g. "scripts/setup-dpdk.sh". */
  setup: string;
  /** True when the peer is usable on this machine (cheap, synchronous). */
  available: () => boolean;
}

const inCI = (Deno.env.get("CI") ?? "") !== "" && Deno.env.get("CI") !== "false";
const announced = new Set<string>();

/** Deno.test that is skipped (with one message per peer) when `peer` is missing outside CI. */
export function peerTest(
  peer: Peer,
  name: string,
  fn: (t: Deno.TestContext) => Promise<void> | void,
  timeoutNote = "",
): void {
  const ok = peer.available();
  if (!ok && !inCI && !announced.has(peer.what)) {
    announced.add(peer.what);
    console.error(
      `skipping tests that need ${peer.what}: not found on this machine. ` +
        `Set it up with 'sudo bash ${peer.setup}'${timeoutNote ? ` (${timeoutNote})` : ""}.`,
    );
  }
  Deno.test({
    name,
    ignore: !ok && !inCI,
    fn: async (t) => {
      if (!ok) {
        throw new Error(`${peer.what} is missing: CI must provide it (bash ${peer.setup})`);
      }
      await fn(t);
    },
  });
}

/** True when an executable named `name` is on PATH or is an existing absolute path. */
export function haveCommand(name: string): boolean {
  const dirs = name.startsWith("/") ? [""] : (Deno.env.get("PATH") ?? "").split(":");
  for (const d of dirs) {
    try {
      const st = Deno.statSync(d ? `${d}/${name}` : name);
      if (st.isFile && ((st.mode ?? 0) & 0o111) !== 0) return true;
    } catch {
      // not in this directory
    }
  }
  return false;
}

/** Free 2 MiB hugepages right now (0 when none are reserved or the file is unreadable). */
export function freeHugepages(): number {
  try {
    const m = Deno.readTextFileSync("/proc/meminfo").match(/HugePages_Free:\s+(\d+)/);
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}
