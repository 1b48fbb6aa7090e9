/**
 * Capturing a port's frames into a pcap file, for any forwarding mode: the port's `rxBurst`
 * and/or `txBurst` are wrapped, on that port object only, by functions that write what the call
 * moved. Received frames are written as they came (a VLAN tag stripped on receive is put back, as
 * it was on the wire); sent frames as the TX queue took them (after a --vlan-insert tag), only
 * those it took, and not the ones it refused as malformed (freed, counted as TX errors).
 * The clock is read once per burst. A port without a capture runs the unwrapped methods: capture
 * off costs nothing.
 *
 * A sent frame is read just after `txBurst` returns: the TX queue owns it until the device is
 * done, and a device only reads transmit buffers (5.1.6.2). So the capture shows what was handed
 * to the device: a frame the device has not taken when the port stops (then counted as dropped,
 * not sent) is in the capture all the same.
 */
import type { MbufPool } from "../mbuf.ts";
import type { Port } from "../port.ts";
import { CaptureClock, type PcapWriter } from "./writer.ts";

/** Which frames of a port a capture writes. */
export type CaptureDir = "rx" | "tx" | "both";

/** One `--pcap PORT:FILE[:DIR]`. */
export interface CaptureSpec {
  /** Port index. */
  port: number;
  /** The pcap file written. */
  file: string;
  /** Which frames. */
  dir: CaptureDir;
}

/** A capture attached to one port (one capture per port and direction). */
export class PortCapture {
  /** The port captured. */
  readonly port: Port;
  /** Where its frames go. */
  readonly writer: PcapWriter;
  /** Which of its frames. */
  readonly dir: CaptureDir;
  readonly #pool: MbufPool;
  readonly #clock: CaptureClock;
  #attached = false;

  /** A capture of `port`'s frames (in `pool`) to `writer`, not yet attached. */
  constructor(
    port: Port,
    pool: MbufPool,
    writer: PcapWriter,
    dir: CaptureDir,
    clock?: CaptureClock,
  ) {
    this.port = port;
    this.#pool = pool;
    this.writer = writer;
    this.dir = dir;
    this.#clock = clock ?? new CaptureClock();
  }

  /** Start writing the port's frames. */
  attach(): void {
    if (this.#attached) return;
    this.#attached = true;
    const { port, writer } = this;
    const pool = this.#pool;
    const clock = this.#clock;
    if (this.dir !== "tx") {
      const rxBurst = Object.getPrototypeOf(port).rxBurst as Port["rxBurst"];
      port.rxBurst = (q, pkts, max) => {
        const n = rxBurst.call(port, q, pkts, max);
        if (n > 0) {
          clock.read();
          for (let i = 0; i < n; i++) {
            writer.writePacket(pool, pkts[i], true, clock.sec, clock.nsec, clock.nowMs);
          }
        }
        return n;
      };
    }
    if (this.dir !== "rx") {
      const txBurst = Object.getPrototypeOf(port).txBurst as Port["txBurst"];
      port.txBurst = (q, pkts, n) => {
        const k = txBurst.call(port, q, pkts, n);
        if (k > 0) {
          clock.read();
          for (let i = 0; i < k; i++) {
            const m = pkts[i];
            if (!pool.isFree(m)) {
              writer.writePacket(pool, m, false, clock.sec, clock.nsec, clock.nowMs);
            }
          }
        }
        return k;
      };
    }
  }

  /** Stop writing (the port's own methods again). */
  detach(): void {
    if (!this.#attached) return;
    this.#attached = false;
    if (this.dir !== "tx") Reflect.deleteProperty(this.port, "rxBurst");
    if (this.dir !== "rx") Reflect.deleteProperty(this.port, "txBurst");
  }

  /** Detach, flush and close the file. */
  close(): void {
    this.detach();
    this.writer.close();
  }
}
