/**
 * The forwarding loop: every stream's engine once per iteration, then `poll()` on every port
 * (device work for in-process devices, link events, backend reconnects).
 *
 * A synchronous loop would block signals and timers, so the loop gives the event loop a turn
 * (`setImmediate`, ~1 µs; `setTimeout(0)` costs ~2 ms) about every `yieldMs`. Reading the clock
 * costs ~90 ns, so it is read only every `checkEvery` iterations, a number adapted so that checks
 * fall roughly every quarter of `yieldMs` whatever an iteration costs. Nothing is allocated per
 * iteration except one promise per yield. An iteration that moved nothing ends with `idlePause`.
 */
import { setImmediate } from "node:timers";
import type { Port } from "../port.ts";
import type { Engine, Stream } from "./engines.ts";

/** When `ForwardLoop.run` returns, and what it calls meanwhile. */
export interface RunOptions {
  /** Stop at this `performance.now()` time (ms); default: never. */
  untilMs?: number;
  /** Stop once no frame moved for this many ms (draining); default: never. */
  quietMs?: number;
  /** Called at every clock check with the time (stats output). */
  onClock?: (nowMs: number) => void;
  /** Run only `poll()` on the ports, not the engine (draining a txonly forwarder). */
  pollOnly?: boolean;
}

const MIN_CHECK = 16;
const MAX_CHECK = 1 << 14;

/** `Atomics.pause` calls after an iteration that moved nothing (~25 ns each here: ~1 µs). */
const IDLE_PAUSES = 40;

/**
 * Wait about a microsecond without touching memory: what a polling loop does after an iteration
 * that moved nothing. Polling again at once reads the used rings' lines while the device is still
 * writing them, and each read takes a line the device then has to fetch back; waiting lets the
 * device finish a burst, and the next poll finds more of it (docs/performance.md).
 */
export function idlePause(): void {
  for (let i = 0; i < IDLE_PAUSES; i++) Atomics.pause();
}

/** Runs an engine on every stream and polls every port until told to stop. */
export class ForwardLoop {
  /** Ports polled after every iteration. */
  readonly ports: Port[];
  /** Streams the engine runs on, each once per iteration. */
  readonly streams: Stream[];
  /** The forwarding engine (`createEngine`). */
  readonly engine: Engine;
  /** Time between turns given to the event loop. */
  readonly yieldMs: number;
  /** Iterations run so far (all runs). */
  iterations = 0;
  #stopped = false;
  #checkEvery = 256;

  /** A loop over started `ports`; it gives the event loop a turn every `yieldMs`. */
  constructor(ports: Port[], streams: Stream[], engine: Engine, yieldMs = 2) {
    this.ports = ports;
    this.streams = streams;
    this.engine = engine;
    this.yieldMs = yieldMs;
  }

  /** Ask a running `run()` to return at its next clock check (SIGINT handler). */
  stop(): void {
    this.#stopped = true;
  }

  /** True once `stop()` was called (until the next `drain`). */
  get stopRequested(): boolean {
    return this.#stopped;
  }

  /**
   * After a stop: keep going until nothing moved for `quietMs` (at most `maxMs`), so frames in
   * flight are delivered and counted rather than lost. A new `stop()` ends it at once.
   */
  drain(quietMs: number, maxMs: number, pollOnly = false): Promise<void> {
    this.#stopped = false;
    return this.run({ quietMs, untilMs: performance.now() + maxMs, pollOnly });
  }

  /** Forward until `stop()`, the deadline, or (with quietMs) nothing moving; resolves then. */
  async run(opts: RunOptions = {}): Promise<void> {
    const { ports, streams, engine } = this;
    const untilMs = opts.untilMs ?? Infinity;
    const quietMs = opts.quietMs ?? Infinity;
    const pollOnly = opts.pollOnly === true;
    const nStreams = streams.length;
    const nPorts = ports.length;
    const checkSlice = this.yieldMs / 4;
    let last = performance.now();
    let lastYield = last;
    let lastMove = last;
    while (!this.#stopped) {
      const k = this.#checkEvery;
      let moved = 0;
      for (let it = 0; it < k; it++) {
        let m = 0;
        if (!pollOnly) {
          for (let i = 0; i < nStreams; i++) m += engine(streams[i]);
        }
        for (let i = 0; i < nPorts; i++) m += ports[i].poll() === 0 ? 0 : 1;
        if (m === 0) idlePause();
        moved += m;
      }
      this.iterations += k;
      const now = performance.now();
      const took = now - last;
      last = now;
      if (took < checkSlice / 2 && k < MAX_CHECK) this.#checkEvery = k * 2;
      else if (took > checkSlice * 2 && k > MIN_CHECK) this.#checkEvery = k >> 1;
      if (moved > 0) lastMove = now;
      opts.onClock?.(now);
      if (now >= untilMs || now - lastMove >= quietMs) break;
      if (now - lastYield >= this.yieldMs) {
        await new Promise<void>((resolve) => setImmediate(resolve));
        lastYield = performance.now();
      }
    }
  }
}
