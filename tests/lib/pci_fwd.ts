/**
 * Guest-side helper for tests/guest_pci_test.ts and scripts/bench-guest.ts: io-forwards between
 * two PCI ports in both directions (port 0 RX -> port 1 TX and back) with the driver's Port, and
 * prints `Port N: link state change event (up|down)` on link changes.
 *
 *   deno run -A tests/lib/pci_fwd.ts [--duration S] [--idle S] [--stop-file PATH] [--rxd N]
 *       [--txd N] [--retry]
 *       0000:00:04.0[,portio=sysfs] 0000:00:05.0[,mode=modern]
 *
 * A frame the other port's TX ring cannot take is dropped (counted in txDropped), as testpmd's io
 * mode does; with `--retry` it is held and offered again (the tests use this: a stalled TX ring
 * then slows RX down instead of losing frames).
 *
 * Prints `ready` once both ports are started, and a final JSON line `{"ports":[stats, stats],
 * "seconds": S}`. Stops after `--duration` seconds, or `--idle` seconds without a frame once
 * frames have flowed, or once PATH exists (checked every 200 ms; the loop is synchronous, so no
 * signals are handled). Ports are stopped (device reset) before the process exits.
 */
import { parseArgs } from "cli-args";
import { MbufPool } from "../../mod/mbuf.ts";
import { Port } from "../../mod/port.ts";
import { PciTransport } from "../../mod/transport/pci.ts";

const BURST = 32;

function openPort(id: number, spec: string): Port {
  const [address, ...rest] = spec.split(",");
  const options: Record<string, string> = {};
  for (const kv of rest) {
    const [k, v] = kv.split("=");
    options[k] = v ?? "";
  }
  const port = new Port(id, PciTransport.fromSpec(address, options));
  port.onLinkChange = (up) =>
    console.log(`Port ${id}: link state change event (${up ? "up" : "down"})`);
  return port;
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

function main(): number {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: {
      duration: { type: "string", default: "60" },
      idle: { type: "string", default: "0" },
      rxd: { type: "string", default: "256" },
      txd: { type: "string", default: "256" },
      retry: { type: "boolean", default: false },
      "stop-file": { type: "string" },
    },
  });
  if (positionals.length !== 2) throw new Error("two PCI port specs wanted");
  const pool = new MbufPool({ count: 4096, kind: "physical", name: "pci-fwd" });
  const ports: Port[] = positionals.map((s: string, i: number) => openPort(i, s));
  try {
    for (const p of ports) {
      p.configure({ pool, rxd: Number(values.rxd), txd: Number(values.txd) });
      p.start();
    }
    for (const p of ports) {
      console.log(`Port ${p.id}: ${p.transport.name} link ${p.linkUp ? "up" : "down"}`);
    }
    console.log("ready");
    // Per direction: frames received on port i that port 1 - i has not taken yet.
    const held = [new Uint32Array(BURST), new Uint32Array(BURST)];
    const heldN = [0, 0];
    const retry = values.retry;
    const start = performance.now();
    const end = start + Number(values.duration) * 1000;
    const idleMs = Number(values.idle) * 1000;
    let lastFrame = start;
    let flowed = false;
    let iter = 0;
    const stopFile = values["stop-file"];
    let nextStopCheck = 0;
    for (;;) {
      for (let i = 0; i < 2; i++) {
        const pkts = held[i];
        if (heldN[i] === 0) {
          heldN[i] = ports[i].rxBurst(0, pkts, BURST);
          if (heldN[i] > 0) {
            flowed = true;
            lastFrame = -1; // refreshed at the next clock check
          }
        }
        const n = heldN[i];
        if (n > 0) {
          const out = ports[1 - i];
          const k = out.txBurst(0, pkts, n);
          if (retry) {
            // Back-pressure: keep the rest for the next round (the RX ring absorbs the stall).
            if (k < n) pkts.copyWithin(0, k, n);
            heldN[i] = n - k;
          } else {
            for (let j = k; j < n; j++) pool.free(pkts[j]);
            out.stats.txDropped += n - k;
            heldN[i] = 0;
          }
        }
        ports[i].poll();
      }
      if ((++iter & 1023) === 0) {
        const now = performance.now();
        if (lastFrame < 0) lastFrame = now;
        if (now > end || (idleMs > 0 && flowed && now - lastFrame > idleMs)) break;
        if (stopFile !== undefined && now > nextStopCheck) {
          nextStopCheck = now + 200;
          if (exists(stopFile)) break;
        }
      }
    }
    for (let i = 0; i < 2; i++) for (let j = 0; j < heldN[i]; j++) pool.free(held[i][j]);
    const seconds = (performance.now() - start) / 1000;
    console.log(JSON.stringify({ ports: ports.map((p) => p.stats), seconds }));
    return 0;
  } finally {
    for (const p of ports) {
      p.close();
      p.transport.close();
    }
    pool.close();
  }
}

if (import.meta.main) Deno.exit(main());
