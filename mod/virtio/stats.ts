/**
 * A port's counters: the RX and TX queues write them (once per burst), the port sums them, and
 * programs read them (`Port.stats`, `Port.queueStats`).
 */
/**
 * Counters, plain numbers updated once per burst. rxDropped counts every frame the driver
 * discarded on receive (rxNoMbuf: no buffer to replace it; rxErrors: the device described it with
 * a bad used entry or header, one count per frame however many buffers it spans). rxIdxErrors
 * counts impossible used.idx values on RX (more than a ring ahead, or moved back), once per value:
 * no frame is lost by one, so it is in neither rxErrors nor rxDropped. txDropped counts frames not
 * sent: refused by txBurst (added by the caller) or malformed (also in txErrors), and frames lost
 * in flight when the device went away or was reset (taken out of txPackets and txBytes again).
 * txErrors also counts bad used entries on the TX ring.
 */
export interface PortStats {
  /** Frames received. */
  rxPackets: number;
  /** Frames sent. */
  txPackets: number;
  /** Bytes received (frames without the virtio-net header). */
  rxBytes: number;
  /** Bytes sent (frames without the virtio-net header). */
  txBytes: number;
  /** Frames discarded on receive. */
  rxDropped: number;
  /** Frames not sent. */
  txDropped: number;
  /** Received frames dropped because no buffer could replace theirs. */
  rxNoMbuf: number;
  /** Bad used entries on the RX ring (each one dropped). */
  rxErrors: number;
  /** Malformed frames refused, and bad used entries on the TX ring. */
  txErrors: number;
  /** Impossible used.idx values on the RX ring (more than a ring ahead, or moved back). */
  rxIdxErrors: number;
}
