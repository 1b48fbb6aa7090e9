/**
 * Prints, as one JSON line, the feature bits each port negotiates once started:
 * `deno run -A tests/lib/port_features.ts SPEC...` -> [{ "spec": ..., "features": "0x..." }, ...].
 * The guest tests run it to see which ring kind (and which options) a device really took, which
 * forwarding alone does not show.
 */
import { closePort, openPort, poolForPorts } from "../../mod/open.ts";

const ports = Deno.args.map((spec, id) => openPort(spec, { id }));
const pool = poolForPorts(ports, { count: 2048 });
const out: { spec: string; features: string }[] = [];
try {
  for (const [i, port] of ports.entries()) {
    port.configure({ pool });
    port.start();
    out.push({ spec: Deno.args[i], features: `0x${port.features.toString(16)}` });
  }
} finally {
  for (const port of ports) closePort(port);
  pool.close();
}
console.log(JSON.stringify(out));
