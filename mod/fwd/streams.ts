/**
 * Streams for the forwarding loop as `vpmd fwd` builds them, and taking back what the devices have
 * sent before ports stop.
 */
import type { Port } from "../port.ts";
import type { Mode, Stream } from "./engines.ts";

/** Streams like testpmd's: port 2k forwards to 2k+1 and back; an odd last port to itself. */
export function buildStreams(ports: Port[], mode: Mode, queues: number, burst: number): Stream[] {
  const streams: Stream[] = [];
  for (let i = 0; i < ports.length; i++) {
    const peer = mode === "txonly" || mode === "rxonly" ? i : (i ^ 1) < ports.length ? i ^ 1 : i;
    for (let q = 0; q < queues; q++) {
      streams.push({ rx: ports[i], tx: ports[peer], queue: q, pkts: new Uint32Array(burst) });
    }
  }
  return streams;
}

/**
 * Let every TX queue take back what the device has finished with (a burst of 0 frames), so that
 * stopping the port counts as dropped only frames really still in flight.
 */
export function reclaimSent(ports: Port[], queues: number): void {
  const none = new Uint32Array(0);
  for (const p of ports) {
    for (let q = 0; q < queues; q++) p.txBurst(q, none, 0);
  }
}
