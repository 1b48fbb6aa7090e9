/**
 * Worker that waits for interrupts on a uio device (Documentation/driver-api/uio-howto.rst: a
 * read(2) of /dev/uioN returns the 32-bit interrupt count once an interrupt has arrived) without
 * busy-waiting: it sleeps in poll(2) on the uio descriptor and a stop eventfd. Each interrupt
 * stores the count in shared memory, where the transport's poll() sees it with one load.
 *
 * uio_pci_generic masks INTx in the PCI command register when the interrupt fires; the line stays
 * quiet until the transport has read the ISR and cleared the mask, so this loop cannot spin.
 */
/// <reference lib="deno.worker" />
import { EINTR, errno, POLLIN, raw } from "../../ffi/libc.ts";
import { UioSlot } from "./uio_slots.ts";

interface Start {
  shared: SharedArrayBuffer;
  uioFd: number;
  stopFd: number;
}

self.onmessage = (ev: MessageEvent<Start>) => {
  const { shared, uioFd, stopFd } = ev.data;
  const flags = new Int32Array(shared);
  // struct pollfd { int fd; short events; short revents; } x 2 (poll.h)
  const fds = new Int32Array(4);
  const fdsU8 = new Uint8Array(fds.buffer);
  const fds16 = new Int16Array(fds.buffer);
  const count = new Uint8Array(4);
  const countView = new Uint32Array(count.buffer);
  Atomics.store(flags, UioSlot.READY, 1);
  Atomics.notify(flags, UioSlot.READY);
  while (Atomics.load(flags, UioSlot.STOP) === 0) {
    fds[0] = uioFd;
    fds[2] = stopFd;
    fds16[2] = POLLIN;
    fds16[3] = 0;
    fds16[6] = POLLIN;
    fds16[7] = 0;
    const r = raw.poll(fdsU8, 2n, -1);
    if (r < 0) {
      if (errno() === EINTR) continue;
      Atomics.store(flags, UioSlot.ERROR, errno());
      break;
    }
    if (Atomics.load(flags, UioSlot.STOP) !== 0) break;
    if ((fds16[3] & POLLIN) !== 0) {
      if (Number(raw.read(uioFd, count, 4n)) === 4) {
        Atomics.store(flags, UioSlot.COUNT, countView[0] | 0);
      }
    }
  }
  Atomics.store(flags, UioSlot.EXITED, 1);
  Atomics.notify(flags, UioSlot.EXITED);
  self.close();
};
