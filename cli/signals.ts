/**
 * The signals that stop `vpmd fwd`: SIGINT (Ctrl-C), SIGTERM (kill, service managers) and SIGHUP
 * (the terminal went away) all ask for the same clean stop: drain, reset the devices so that the
 * kernel or the backend can take them back, print the summary, exit 0. A second one while that is
 * under way means "now": `onForce` resets the devices and the process exits with 128 + the
 * signal's number, as a shell reports a process killed by it.
 */

/** Signal numbers (Linux), for the exit code of a forced stop. */
export const STOP_SIGNALS = { SIGHUP: 1, SIGINT: 2, SIGTERM: 15 } as const;
export type StopSignal = keyof typeof STOP_SIGNALS;

export class StopSignals {
  /** The first signal received, null while none came. */
  by: StopSignal | null = null;
  /** What the first signal does (stop the forwarding loop); may be set after a signal came. */
  #onStop: (() => void) | null = null;
  readonly #onForce: (sig: StopSignal) => void;
  readonly #listeners: [StopSignal, () => void][] = [];

  /** Listen from now on; `onForce` is called for a second signal (it resets the devices). */
  constructor(onForce: (sig: StopSignal) => void) {
    this.#onForce = onForce;
    for (const sig of Object.keys(STOP_SIGNALS) as StopSignal[]) {
      const fn = () => this.#got(sig);
      Deno.addSignalListener(sig, fn);
      this.#listeners.push([sig, fn]);
    }
  }

  set onStop(fn: () => void) {
    this.#onStop = fn;
    if (this.by !== null) fn();
  }

  #got(sig: StopSignal): void {
    if (this.by === null) {
      this.by = sig;
      this.#onStop?.();
      return;
    }
    this.#onForce(sig);
    Deno.exit(128 + STOP_SIGNALS[sig]);
  }

  close(): void {
    for (const [sig, fn] of this.#listeners) Deno.removeSignalListener(sig, fn);
    this.#listeners.length = 0;
  }
}
