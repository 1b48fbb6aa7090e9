/**
 * `vpmd fwd` between two NICs of the guest lab (tests/lib/guest.ts), checked at the host: frames
 * sent into one NIC must come out of the other, all of them, byte-exact. Used by the PCI tests
 * (tests/guest_pci_test.ts) and the packed-ring ones (tests/guest_packed_test.ts).
 */
import assert from "assert";
import {
  expectedFrame,
  FrameChecker,
  generate,
  type Guest,
  type GuestNic,
  parseMac,
} from "./guest.ts";

export const VPMD = "deno run -A main.ts";

/** Frame sizes sent by default: the smallest, a few in between and the largest without jumbo. */
export const DEFAULT_SIZES = [60, 64, 128, 1000, 1514];

/**
 * Frames the host sends into `from` must come out of `to`, all of them, byte-exact. At most
 * `window` frames are in flight: jumbo frames take several receive buffers each, and QEMU drops
 * what finds its receive ring empty (64 frames of 9014 bytes need 320 buffers of 2 KiB).
 */
export async function expectForwarded(
  from: GuestNic,
  to: GuestNic,
  stream: number,
  count: number,
  sizes: number[] = DEFAULT_SIZES,
  window = 64,
): Promise<void> {
  const gen = {
    stream,
    sizes,
    src: parseMac(`02:00:00:00:00:${stream.toString(16).padStart(2, "0")}`),
  };
  const checker = new FrameChecker(to.wire, { record: true });
  try {
    // Flow-controlled (at most 64 frames in flight): no socket buffer on the way overflows, and
    // the forwarder holds frames rather than dropping them (--retry), so every frame must arrive.
    const sent = await generate(from.wire, { ...gen, count, rate: 2000, flow: checker, window });
    assert.equal(sent.sent, count);
    await checker.waitFor(count, 30);
    await checker.settle(300);
    const c = checker.counts;
    assert.equal(c.ok, count, `${c.ok} of ${count} frames: ${JSON.stringify(c)}`);
    assert.equal(c.bad + c.reordered + c.foreign, 0, JSON.stringify(c));
    assert.equal(checker.frames.length, c.ok);
    for (const f of checker.frames) {
      const seq = ((f[50] << 24) | (f[51] << 16) | (f[52] << 8) | f[53]) >>> 0;
      assert.deepEqual(f, expectedFrame(seq, gen), `frame ${seq}`);
    }
  } finally {
    checker.detach();
  }
}

export interface FwdSummary {
  ports: {
    rxPackets: number;
    txPackets: number;
    rxBytes: number;
    txBytes: number;
    rxErrors: number;
    txErrors: number;
  }[];
  stoppedBy: string;
  poolAvailable: number;
  poolSize: number;
}

/**
 * Runs `vpmd fwd SPECS --mode io ARGS` in the guest until `traffic` is done, then stops it
 * (SIGINT); checks a clean stop, every buffer back in the pool and no ring errors.
 */
export async function forward(
  g: Guest,
  nics: [GuestNic, GuestNic],
  specs: [string, string],
  traffic: (output: () => Promise<string>) => Promise<void>,
  args: string[] = [],
): Promise<{ summary: FwdSummary; output: string }> {
  const p = await g.spawn(
    `exec ${VPMD} fwd ${specs.join(" ")} --mode io --json --stats-period 1 ${args.join(" ")}`,
  );
  const stop = async () => {
    await g.exec("killall -INT deno");
    return await p.wait(60);
  };
  try {
    await p.waitForOutput(/^\{"t":/m, 120); // the first statistics line: forwarding runs
    // Warm-up (JIT, first touches of the rings) before the counted streams, in both directions.
    for (const [from, to] of [[nics[0], nics[1]], [nics[1], nics[0]]]) {
      const warm = new FrameChecker(to.wire);
      await generate(from.wire, { count: 200, rate: 1000, stream: 0x7f, flow: warm });
      try {
        assert.ok(await warm.waitFor(200, 20), `warm-up: ${JSON.stringify(warm.counts)}`);
        await warm.settle(300);
      } finally {
        warm.detach();
      }
    }
    await traffic(() => p.output());
  } catch (e) {
    // Show what the forwarder counted next to what the host saw.
    const end = await stop().catch(() => null);
    throw new Error(`${(e as Error).message}\nforwarder: ${end?.output ?? await p.output()}`);
  }
  const end = await stop();
  assert.equal(end.code, 0, end.output);
  const line = end.output.split("\n").filter((l) => l.startsWith('{"ports":')).pop() ?? "";
  const summary = JSON.parse(line) as FwdSummary;
  assert.equal(summary.stoppedBy, "SIGINT", line);
  assert.equal(summary.poolAvailable, summary.poolSize, `buffers lost: ${line}`);
  for (const s of summary.ports) assert.equal(s.rxErrors + s.txErrors, 0, line);
  return { summary, output: end.output };
}
