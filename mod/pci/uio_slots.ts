/** Int32 slots of the memory shared between a transport and its uio worker (mod/pci/uio.ts). */
export const UioSlot = {
  /** Interrupt count last read from /dev/uioN (uio-howto: read(2) returns it). */
  COUNT: 0,
  /** Set by the transport: the worker must leave. */
  STOP: 1,
  /** Set by the worker once it is waiting. */
  READY: 2,
  /** Set by the worker when it has left its loop. */
  EXITED: 3,
  /** errno of a failed poll(2) in the worker, 0 otherwise. */
  ERROR: 4,
  COUNT_OF_SLOTS: 5,
} as const;
