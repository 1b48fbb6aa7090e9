/**
 * How a PCI transport learns that the device's configuration changed (virtio 1.2 4.1.4.5 "ISR
 * status capability": bit 1 = configuration change; reading the ISR acknowledges it and
 * de-asserts INTx; the legacy ISR register, 4.1.4.10, behaves the same).
 *
 * - `uio`: the function is bound to uio_pci_generic. A Worker sleeps in poll(2) on /dev/uioN and
 *   publishes the interrupt count in shared memory; `due()` is one typed-array load. After the
 *   ISR is read, `rearm()` clears the INTx mask (PCI command bit 10) that uio_pci_generic set
 *   when the interrupt fired (write(2) on /dev/uioN is not supported by that driver).
 * - `poll`: no uio device: `due()` becomes true every `intervalMs` (the clock is read once every
 *   `CLOCK_EVERY` calls), and the transport reads the ISR then. INTx stays masked so an unbound
 *   function does not raise an interrupt no one handles.
 */
import { close, EFD_CLOEXEC, eventfd, O_CLOEXEC, O_RDONLY, open, write } from "../../ffi/libc.ts";
import { PciCommand } from "./config.ts";
import type { PciFunction } from "./sysfs.ts";
import { UioSlot } from "./uio_slots.ts";

export interface ConfigChangeSource {
  readonly kind: "uio" | "poll";
  /** Hot path (once per forwarding-loop iteration): true when the ISR should be read now. */
  due(): boolean;
  /** Called after the ISR was read. */
  rearm(): void;
  close(): void;
}

/** Worker start-up and shut-down waits (ms). */
const WORKER_WAIT_MS = 2000;

export class UioInterrupts implements ConfigChangeSource {
  readonly kind = "uio";
  readonly #fn: PciFunction;
  readonly #flags: Int32Array<SharedArrayBuffer>;
  readonly #worker: Worker;
  readonly #uioFd: number;
  readonly #stopFd: number;
  #seen = 0;
  #closed = false;

  constructor(fn: PciFunction, uioPath: string) {
    this.#fn = fn;
    this.#uioFd = open(uioPath, O_RDONLY | O_CLOEXEC);
    this.#stopFd = eventfd(0, EFD_CLOEXEC);
    this.#flags = new Int32Array(new SharedArrayBuffer(4 * UioSlot.COUNT_OF_SLOTS));
    this.#worker = new Worker(new URL("./uio_worker.ts", import.meta.url).href, {
      type: "module",
    });
    this.#worker.postMessage({
      shared: this.#flags.buffer,
      uioFd: this.#uioFd,
      stopFd: this.#stopFd,
    });
    // Wait (blocking, cold path) until the worker listens, so no interrupt is missed.
    Atomics.wait(this.#flags, UioSlot.READY, 0, WORKER_WAIT_MS);
    if (Atomics.load(this.#flags, UioSlot.READY) !== 1) {
      this.close();
      throw new Error(`${fn.address}: the interrupt worker for ${uioPath} did not start`);
    }
    this.rearm();
  }

  due(): boolean {
    const n = this.#flags[UioSlot.COUNT];
    if (n === this.#seen) return false;
    this.#seen = n;
    return true;
  }

  rearm(): void {
    this.#fn.updateCommand(0, PciCommand.INTX_DISABLE);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    Atomics.store(this.#flags, UioSlot.STOP, 1);
    write(this.#stopFd, new Uint8Array(new BigUint64Array([1n]).buffer));
    Atomics.wait(this.#flags, UioSlot.EXITED, 0, WORKER_WAIT_MS);
    this.#worker.terminate();
    close(this.#uioFd);
    close(this.#stopFd);
    try {
      this.#fn.updateCommand(PciCommand.INTX_DISABLE, 0);
    } catch {
      // the device may be gone; nothing else to undo
    }
  }
}

export class PolledConfigChange implements ConfigChangeSource {
  readonly kind = "poll";
  static readonly CLOCK_EVERY = 1024;
  #calls = 0;
  #next = 0;

  constructor(fn: PciFunction | null, readonly intervalMs = 100) {
    fn?.updateCommand(PciCommand.INTX_DISABLE, 0);
  }

  due(): boolean {
    if (++this.#calls < PolledConfigChange.CLOCK_EVERY) return false;
    this.#calls = 0;
    const now = performance.now();
    if (now < this.#next) return false;
    this.#next = now + this.intervalMs;
    return true;
  }

  rearm(): void {}

  close(): void {}
}
