/**
 * Steady-state forwarding leaves V8's young generation almost nothing to collect: `vpmd fwd`
 * between two simulated ports, with a JSON line every second, runs under `--trace-gc`, and a
 * window of WINDOW frames after WARMUP frames (counted in frames, not time) may hold at most one
 * scavenge. One can fall there whatever the forwarder does, collecting what start-up and warm-up
 * left in the young generation (1 MB); a second needs the window itself to allocate a young
 * generation's worth. Forwarding allocates about 10 KB a second (a turn for the event loop every
 * 100 ms, the statistics line): a megabyte takes minutes, while the window takes seconds. Before
 * that work it allocated ~600 KB a second, a scavenge every 1.4 to 3 s.
 *
 * V8 prints its trace lines to stdout through C's buffered stdio, so their order against the
 * JSON lines is lost; their timestamps (ms since the isolate started, which is after the spawn)
 * place them instead. A scavenge stamped at or after the moment the JSON line showing WARMUP
 * frames arrived here (measured from the spawn) certainly happened after warm-up; one stamped
 * before the moment the line showing WARMUP + WINDOW frames arrived, less the isolate's start-up
 * delay, certainly happened before the window closed.
 */
import assert from "assert";

const MAIN = new URL("../main.ts", import.meta.url).pathname;
/** Frames received by both ports together before the window opens (tier-up, first outputs). */
const WARMUP = 4_000_000;
/** Frames in the window: ~13 s here when the machine is quiet. */
const WINDOW = 30_000_000;
/** What the forwarder forwards after the window, so that a JSON line closes it. */
const TAIL = 5_000_000;
/** The isolate starts within this long of the spawn (V8's clock starts there). */
const START_MS = 300;

interface Period {
  /** ms since the spawn when the line arrived. */
  at: number;
  frames: number;
}

Deno.test("fwd io between two sims: at most one scavenge over 30 M frames in steady state", async () => {
  const spawned = performance.now();
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "--v8-flags=--trace-gc",
      MAIN,
      "fwd",
      "sim:p0",
      "sim:p1",
      "--mode",
      "io",
      "--json",
      "--stats-period",
      "1",
      "--max-packets",
      String(WARMUP + WINDOW + TAIL),
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  const killer = setTimeout(() => child.kill("SIGKILL"), 180_000);
  const periods: Period[] = [];
  let text = "";
  try {
    const stderr = new Response(child.stderr).text();
    const dec = new TextDecoder();
    let pending = "";
    for await (const chunk of child.stdout) {
      const at = performance.now() - spawned;
      const s = dec.decode(chunk, { stream: true });
      text += s;
      pending += s;
      const lines = pending.split("\n");
      pending = lines.pop()!;
      for (const line of lines) {
        const i = line.indexOf('{"t":');
        if (i < 0) continue;
        const o = JSON.parse(line.slice(i));
        periods.push({
          at,
          frames: o.ports.reduce((a: number, p: PortLine) => a + p.rxPackets, 0),
        });
      }
    }
    const status = await child.status;
    assert.equal(status.code, 0, await stderr);
  } finally {
    clearTimeout(killer);
  }
  const summary = JSON.parse(text.trim().split("\n").filter((l) => l.startsWith('{"ports"'))[0]);
  assert.equal(summary.stoppedBy, "max-packets");
  assert.ok(summary.accounting.ok, summary.accounting.message);
  const open = periods.find((p) => p.frames >= WARMUP);
  const close = periods.find((p) => p.frames >= WARMUP + WINDOW);
  assert.ok(open && close, `no JSON line closed the window: ${JSON.stringify(periods)}`);
  const scavenges = [...text.matchAll(/(\d+) ms: Scavenge[^\n]*/g)].map((m) => ({
    at: Number(m[1]),
    line: m[0],
  }));
  assert.ok(scavenges.length > 0, "no --trace-gc output: start-up always collects");
  const inWindow = scavenges.filter((s) => s.at >= open.at && s.at < close.at - START_MS);
  assert.ok(
    inWindow.length <= 1,
    `${inWindow.length} scavenges in the window from ${open.at.toFixed(0)} ms ` +
      `(${open.frames} frames) to ${close.at.toFixed(0)} ms (${close.frames} frames): ` +
      inWindow.map((s) => s.line).join(" | "),
  );
});

interface PortLine {
  rxPackets: number;
}
