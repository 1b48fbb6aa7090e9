/**
 * The forwarding loop: every stream's engine once per iteration, then `poll()` on every port
 * (device work for in-process devices, link events, backend reconnects).
 *
 * A synchronous loop would block signals and timers, so the loop gives the event loop a turn
 * (`setImmediate`; `setTimeout(0)` costs ~2 ms) every `yieldMs`. A turn is not free: the
 * Immediate and the promise allocate about 1 KB and the turn takes tens of microseconds, so turns
 * are spaced (100 ms by default: a signal waits at most that long) and forwarding in steady
 * state leaves V8 nothing to collect. The clock (`monotonicMs`, which allocates nothing, unlike
 * `performance.now()`) is read every `checkEvery` iterations, a number adapted so that checks fall
 * about every `CHECK_MS` whatever an iteration costs: stop requests, deadlines and `onClock` are
 * seen that soon. An iteration that moved nothing ends with `idlePause`.
 */
import { setImmediate } from "node:timers";
import { clockOffsetMs, monotonicMs } from "../../ffi/clock.ts";
import type { Port } from "../port.ts";
import type { Engine, Stream } from "./engines.ts";

/** When `ForwardLoop.run` returns, and what it calls meanwhile. */
export interface RunOptions {
  /** Stop at this `performance.now()` time (ms); default: never. */
  untilMs?: number;
  /** Stop once no frame moved for this many ms (draining); default: never. */
  quietMs?: number;
  /**
   * Called at every clock check with the `performance.now()` time (stats output). Keep the
   * common path small (compare and return) so it inlines: a call that is not inlined boxes the
   * time into a new heap number.
   */
  onClock?: (nowMs: number) => void;
  /** Run only `poll()` on the ports, not the engine (draining a txonly forwarder). */
  pollOnly?: boolean;
  /**
   * Stop once the engine moved this many frames in this run (received; txonly: sent), seen at
   * the next clock check; default: never.
   */
  maxPackets?: number;
}

/** Time between clock checks (ms). */
const CHECK_MS = 0.5;
/** Default time between turns given to the event loop (ms). */
export const DEFAULT_YIELD_MS = 100;
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
  /** When a frame last moved (performance.now() time), kept across the slices of one run. */
  #lastMove = 0;
  /** Frames the engine moved in this run. */
  #runPackets = 0;

  /** Resolves a yield's promise from the next event loop turn (one function for every yield). */
  readonly #defer = (resolve: () => void): void => {
    setImmediate(resolve);
  };

  /** A loop over started `ports`; it gives the event loop a turn every `yieldMs`. */
  constructor(ports: Port[], streams: Stream[], engine: Engine, yieldMs = DEFAULT_YIELD_MS) {
    this.ports = ports;
    this.streams = streams;
    this.engine = engine;
    this.yieldMs = yieldMs;
    // Pass 2^31 within minutes: double fields from the start (see mod/counters.ts).
    this.iterations = 0.5;
    this.iterations = 0;
    this.#runPackets = 0.5;
    this.#runPackets = 0;
  }

  /** Ask a running `run()` to return at its next clock check (SIGINT handler). */
  stop(): void {
    this.#stopped = true;
  }

  /** Frames the engine moved in the current or last run (received; txonly: sent). */
  get packets(): number {
    return this.#runPackets;
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
    const untilMs = opts.untilMs ?? Infinity;
    const quietMs = opts.quietMs ?? Infinity;
    const pollOnly = opts.pollOnly === true;
    const maxPackets = opts.maxPackets ?? Infinity;
    // Deadlines are given in performance.now() time; the loop's clock runs on CLOCK_MONOTONIC.
    const offset = clockOffsetMs();
    this.#lastMove = monotonicMs() + offset;
    this.#runPackets = 0;
    while (this.#slice(untilMs, quietMs, maxPackets, pollOnly, opts.onClock, offset)) {
      await new Promise<void>(this.#defer);
    }
  }

  /**
   * Forward for up to `yieldMs`: true when the event loop's turn is due, false when the run is
   * over. A plain method rather than the body of `run`: in an async function the times kept
   * across iterations live in the suspended frame as tagged values, and each new time would be
   * boxed into a heap number (about 64 KB a second at this check rate).
   */
  #slice(
    untilMs: number,
    quietMs: number,
    maxPackets: number,
    pollOnly: boolean,
    onClock: ((nowMs: number) => void) | undefined,
    offset: number,
  ): boolean {
    const { ports, streams, engine } = this;
    const nStreams = streams.length;
    const nPorts = ports.length;
    let last = monotonicMs() + offset;
    const yieldAt = last + this.yieldMs;
    let lastMove = this.#lastMove;
    while (!this.#stopped) {
      const k = this.#checkEvery;
      let moved = 0;
      let packets = 0;
      for (let it = 0; it < k; it++) {
        let f = 0;
        if (!pollOnly) {
          for (let i = 0; i < nStreams; i++) f += engine(streams[i]);
        }
        let m = f;
        for (let i = 0; i < nPorts; i++) m += ports[i].poll() === 0 ? 0 : 1;
        if (m === 0) idlePause();
        moved += m;
        packets += f;
      }
      this.iterations += k;
      this.#runPackets += packets;
      const now = monotonicMs() + offset;
      const took = now - last;
      last = now;
      if (took < CHECK_MS / 2 && k < MAX_CHECK) this.#checkEvery = k * 2;
      else if (took > CHECK_MS * 2 && k > MIN_CHECK) this.#checkEvery = k >> 1;
      if (moved > 0) lastMove = now;
      if (onClock !== undefined) onClock(now);
      if (now >= untilMs || now - lastMove >= quietMs || this.#runPackets >= maxPackets) {
        return false;
      }
      if (now >= yieldAt) {
        this.#lastMove = lastMove;
        return true;
      }
    }
    return false;
  }
}
