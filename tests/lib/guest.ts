/**
 * Test harness for running things inside the QEMU guest lab (scripts/lab/).
 *
 * The guest: Debian's kernel under QEMU/TCG (q35, 2 vCPUs, 1.5 GiB, 128 × 2 MiB hugepages reserved
 * and hugetlbfs on /dev/hugepages), busybox, deno (same version as the repo), dpdk-testpmd with the
 * virtio PMD, modules virtio_pci, virtio_net, uio, uio_pci_generic, 9p, bridge loaded.
 * The repo is mounted read-only at /vpmd (commands start there; write to /tmp or /lab).
 * Default NICs (kernel virtio_net bound; interfaces eth0..eth2 in that order):
 *   n0 legacy-only   0000:00:04.0  1af4:1000  52:54:00:12:34:10
 *   n1 modern-only   0000:00:05.0  1af4:1041  52:54:00:12:34:11
 *   n2 transitional  0000:00:06.0  1af4:1000  52:54:00:12:34:12
 * Each NIC is a `-netdev dgram` UDP link to the host; `g.nics[i].wire` is the host end.
 *
 * API:
 *   guestTest(name, async (g) => { ... }, opts?)   // peerTest + withGuest: boots, runs, cleans up
 *   withGuest(opts, async (g) => { ... })          // boot with the command agent, run fn, halt
 *   runInGuest({ script, ...opts }) -> { code, output, console }   // one script per boot
 *   g.exec(script, timeoutSec?) -> { code, output }                // sh script in /vpmd
 *   g.spawn(script) -> p; p.waitForOutput(/re/), p.output(), p.wait(timeoutSec) -> { code, output }
 *   g.monitor("set_link n1 off") -> HMP reply text
 *   g.nics[i]: { id, kind, pciAddress, mac, qemuPort, hostPort, wire }
 *   traffic: generate(wire, { count, rate, sizes, stream, dst, src, flow }) sends paced test
 *            frames; with `flow: checker` at most `window` (64) frames are in flight, so a stalled
 *            guest pauses the sender instead of overflowing the UDP link (use it in correctness
 *            tests; warm up first: a forwarder may print "ready" before its rings take frames);
 *            new FrameChecker(wire, { record, firstSeq }) counts ok/foreign/bad/seqGaps/reordered,
 *            waitFor(n, timeoutSec, idleSec?) (false early once the wire is idle idleSec),
 *            settle(quietMs); frames (copies, when recording); detach() before the next checker
 *            on the same wire; expectedFrame(seq, opts) gives the exact bytes for comparisons;
 *            wire.send(frame) and wire.onFrame = (view) => ... for raw access (the view is valid
 *            only during the call);
 *            measureForwarding(fromWire, toWire, { rate, seconds, size }) -> { sent, received,
 *            pps, lossPct, ... } for benchmarks (rates are never asserted in tests).
 *   g.console() (kernel + /init output), g.diagnose() (why it failed, console tail).
 * Options (GuestOptions): nics (kinds, in PCI slot order from 04.0), extraNicOptions
 * ({ 1: "ctrl_vlan=off,rx_queue_size=1024" }), timeoutSec (hard limit: QEMU is killed), memoryMiB,
 * cpus, keep (or LAB_KEEP=1: keep the run folder with console.log and command outputs).
 * Everything (QEMU, sockets, run folder) is gone when withGuest/runInGuest/guestTest returns.
 * Timings here (TCG, 2 shared cores): boot to a ready agent 4-11 s depending on host load; deno in
 * the guest: `--version` 0.1 s, a run importing the driver ~3 s cold (DENO_DIR is /tmp), ~2 s warm.
 * UDP between QEMU and the host can drop frames when the host is busy: assert no corruption,
 * reordering or invention, and tolerate a small loss (tests here use >= 99 % delivered at 2 kpps).
 */
import { type Peer, peerTest } from "./peers.ts";
import { Guest, guestAvailable, type GuestOptions } from "../../scripts/lab/run-guest.ts";

export {
  Guest,
  type GuestNic,
  type GuestOptions,
  GuestProcess,
  type GuestResult,
  type NicKind,
  runInGuest,
} from "../../scripts/lab/run-guest.ts";
export {
  expectedFrame,
  type ForwardingResult,
  FrameChecker,
  generate,
  type GenerateOptions,
  measureForwarding,
  UdpWire,
} from "../../scripts/lab/traffic.ts";
export { parseMac } from "../../mod/mac.ts";

/** The repository's path inside the guest. */
export const GUEST_REPO = "/vpmd";

/** The peer every guest test registers with. */
export const guestLab: Peer = {
  what: "QEMU guest lab (qemu-system-x86, kernel, initramfs)",
  setup: "scripts/lab/build-guest.sh",
  available: () => guestAvailable(),
};

/**
 * Boot a guest with the command agent, wait until it is ready, run `fn`, then halt it. QEMU, the
 * host sockets and the run folder are gone afterwards, also when `fn` throws.
 */
export async function withGuest<T>(
  opts: Omit<GuestOptions, "script" | "interactive">,
  fn: (g: Guest) => Promise<T>,
): Promise<T> {
  const g = await bootReady(opts);
  try {
    const result = await fn(g);
    const st = await g.halt(0);
    if (st !== 0) throw new Error(`guest did not halt cleanly: ${await g.diagnose()}`);
    return result;
  } finally {
    await g.close();
  }
}

/**
 * Boot and wait for the agent. QEMU's UDP ports are free when chosen but another process may bind
 * one before QEMU does; that boot is retried on fresh ports.
 */
async function bootReady(opts: Omit<GuestOptions, "script" | "interactive">): Promise<Guest> {
  for (let attempt = 1;; attempt++) {
    const g = await Guest.boot({ timeoutSec: 180, ...opts });
    try {
      await g.ready();
      return g;
    } catch (e) {
      await g.close();
      if (attempt >= 3 || !g.qemuErrors.includes("Address already in use")) throw e;
    }
  }
}

/** A `peerTest` on the guest lab whose body runs inside `withGuest`. */
export function guestTest(
  name: string,
  fn: (g: Guest, t: Deno.TestContext) => Promise<void>,
  opts: Omit<GuestOptions, "script" | "interactive"> = {},
): void {
  peerTest(guestLab, name, (t) => withGuest(opts, (g) => fn(g, t)));
}
