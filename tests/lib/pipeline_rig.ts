/**
 * A pipeline over simulated ports, in process: frames are injected on a sim's wire (the
 * generators are off unless asked for), the pipeline engine forwards them through the real
 * driver queues, and what each sim's wire was given to send is collected (copies).
 */
import { buildStreams, reclaimSent } from "../../mod/fwd/streams.ts";
import { ForwardLoop } from "../../mod/fwd/loop.ts";
import { MbufPool } from "../../mod/mbuf.ts";
import { Port } from "../../mod/port.ts";
import { openTransport } from "../../mod/portspec.ts";
import type { SimTransport } from "../../mod/sim/transport.ts";
import type { BurstFunction } from "../../mod/pipeline/api.ts";
import { createPipelineEngine, type PipelineEngine } from "../../mod/pipeline/engine.ts";

export interface PipeRig {
  sims: SimTransport[];
  ports: Port[];
  pool: MbufPool;
  loop: ForwardLoop;
  pe: PipelineEngine;
  /** Frames each sim's wire was given to send (copies, in order). */
  sent: Uint8Array[][];
  /** Lines the engine logged. */
  logged: string[];
  close(): void;
}

export interface PipeRigOptions {
  burst?: number;
  vlanStrip?: boolean;
  vlanInsert?: number;
  mtu?: number;
  poolCount?: number;
}

/** Ports for `specs` (sim specs, e.g. `sim:a,gen=off`) running `fn`. */
export function pipeRig(specs: string[], fn: BurstFunction, o: PipeRigOptions = {}): PipeRig {
  const sims: SimTransport[] = [];
  const ports: Port[] = [];
  let pool: MbufPool | null = null;
  const close = () => {
    for (const p of ports) p.close();
    for (const s of sims) s.close();
    pool?.close();
  };
  try {
    for (const s of specs) sims.push(openTransport(s) as SimTransport);
    pool = new MbufPool({ count: o.poolCount ?? 4096, kind: sims[0].dmaKinds[0] });
    const sent: Uint8Array[][] = [];
    for (let i = 0; i < sims.length; i++) {
      const port = new Port(i, sims[i], { log: () => {} });
      ports.push(port);
      port.configure({ pool, vlanStrip: o.vlanStrip, vlanInsert: o.vlanInsert, mtu: o.mtu });
      port.start();
      const got: Uint8Array[] = [];
      sent.push(got);
      sims[i].wire.onTransmit = (f) => {
        if (got.length < 100_000) got.push(f.slice());
      };
    }
    const burst = o.burst ?? 32;
    const logged: string[] = [];
    const pe = createPipelineEngine({ pool, burst, ports, fn, log: (m) => logged.push(m) });
    const loop = new ForwardLoop(ports, buildStreams(ports, "io", 1, burst), pe.engine);
    return { sims, ports, pool, loop, pe, sent, logged, close };
  } catch (e) {
    close();
    throw e;
  }
}

/**
 * Run until `done()` (or 5 s passed), drain, and stop the ports (their buffers go back to the
 * pool); returns whether `done()` held.
 */
export async function pump(r: PipeRig, done: () => boolean, ms = 5000): Promise<boolean> {
  const until = performance.now() + ms;
  while (!done() && performance.now() < until) {
    await r.loop.run({ untilMs: performance.now() + 5 });
  }
  await r.loop.drain(20, 500);
  reclaimSent(r.ports, 1);
  for (const p of r.ports) p.stop();
  return done();
}

/** Frames sent by all wires together. */
export function totalSent(r: PipeRig): number {
  return r.sent.reduce((a, s) => a + s.length, 0);
}

/** Inject `frames` on sim `i`'s wire (they reach the driver as received frames). */
export function inject(r: PipeRig, i: number, frames: Uint8Array[]): void {
  for (const f of frames) {
    if (!r.sims[i].wire.inject(f)) throw new Error("inject queue full");
  }
}
