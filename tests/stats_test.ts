/**
 * Live statistics output: the JSON lines, plain lines and terminal blocks written from the
 * reused buffer say exactly what the summary's rows say (same keys, same order, same number
 * formatting as JSON.stringify and String), with rates from the counters' change per second.
 */
import assert from "assert";
import { OutBuffer } from "../cli/out_buffer.ts";
import { type OutputStyle, STAT_KEYS, StatsReporter } from "../cli/stats.ts";
import { emptyStats, type Port } from "../mod/port.ts";

/** Ports as the reporter sees them: id, link state and live counters. */
function fakePorts(): Port[] {
  return [0, 1].map((id) => ({ id, linkUp: id === 0, stats: emptyStats() }) as unknown as Port);
}

function capture(style: OutputStyle, wire: Record<string, number>[] | null) {
  const ports = fakePorts();
  const chunks: Uint8Array[] = [];
  const sink = {
    writeSync(p: Uint8Array): number {
      chunks.push(p.slice(0, Math.min(p.length, 100))); // a short write: the rest comes next
      return Math.min(p.length, 100);
    },
  };
  const names = ["sim:a", 'vhost-user:/tmp/"q"\u00e9'];
  const rep = new StatsReporter(ports, names, style, 1000, (i) => wire?.[i] ?? null, 0, sink);
  const take = () => {
    const s = new TextDecoder().decode(Uint8Array.from(chunks.flatMap((c) => [...c])));
    chunks.length = 0;
    return s;
  };
  return { ports, rep, take, names };
}

function setCounters(ports: Port[], base: number): void {
  ports.forEach((p, i) =>
    STAT_KEYS.forEach((k, j) => {
      p.stats[k] = base * (i + 1) + j * 7919 + (k === "rxBytes" ? 2 ** 40 : 0);
    })
  );
}

Deno.test("stats json: the per-period line is JSON.stringify of the rows plus rates", () => {
  const wire: Record<string, number>[] = [
    { generated: 12, missed: 3, txBytes: 2 ** 33 },
    { generated: 0, missed: 0 },
  ];
  const { ports, rep, take } = capture("json", wire);
  rep.tick(999);
  assert.equal(take(), "", "nothing before a period has passed");
  setCounters(ports, 1_000_000);
  rep.tick(1500);
  const rows = rep.rows();
  const rates = ports.map((p) => ({
    rxPps: Math.round(p.stats.rxPackets / 1.5),
    txPps: Math.round(p.stats.txPackets / 1.5),
  }));
  const want = JSON.stringify({ t: 1.5, ports: rows.map((r, i) => ({ ...r, ...rates[i] })) });
  assert.equal(take(), want + "\n");
  // The next line: rates since the last print (one of them negative), whole seconds as "3".
  ports[0].stats.rxPackets += 5000;
  ports[1].stats.txPackets -= 20;
  rep.tick(3000);
  const line = JSON.parse(take());
  assert.equal(line.t, 3);
  assert.deepEqual(line.ports.map((p: { rxPps: number }) => p.rxPps), [3333, 0]);
  assert.deepEqual(line.ports.map((p: { txPps: number }) => p.txPps), [0, -13]);
});

Deno.test("stats plain and terminal: the lines and blocks as String() and padEnd write them", () => {
  const plain = capture("plain", null);
  setCounters(plain.ports, 12345);
  plain.rep.tick(2000);
  const s = plain.ports.map((p) => p.stats);
  const part = (i: number) =>
    `port ${i} rx ${s[i].rxPackets} tx ${s[i].txPackets} drop ${s[i].rxDropped + s[i].txDropped} ` +
    `rx-pps ${Math.round(s[i].rxPackets / 2)} tx-pps ${Math.round(s[i].txPackets / 2)}`;
  assert.equal(plain.take(), `t=2s ${part(0)} | ${part(1)}\n`);

  const term = capture("terminal", [{ missed: 77 }, { missed: 0 }]);
  setCounters(term.ports, 999);
  term.rep.tick(1000);
  const out = term.take();
  const st = term.ports.map((p) => p.stats);
  assert.ok(out.startsWith("\x1b[H\x1b[2J  #"), JSON.stringify(out.slice(0, 40)));
  const title = ` NIC statistics for port 1 (${term.names[1]}, link down) `;
  const bar = "#".repeat(Math.max(4, Math.floor((76 - title.length) / 2)));
  assert.ok(out.includes(`  ${bar}${title}${bar}\n`));
  const col = (label: string, v: number) => `${label}: ${String(v).padEnd(14)}`;
  assert.ok(
    out.includes(
      `  ${col("RX-packets", st[0].rxPackets)}${col("RX-missed", 77)}` +
        `${col("RX-bytes", st[0].rxBytes)}\n`,
    ),
  );
  assert.ok(out.includes(`  ${col("TX-dropped", st[1].txDropped)}\n`));
  assert.ok(out.includes(`  Rx-pps: ${String(st[1].rxPackets).padStart(12)}\n`));
  assert.ok(out.includes(`  ${"#".repeat(bar.length * 2 + title.length)}\n  elapsed 1 s`));
  assert.ok(out.endsWith(" s (Ctrl-C to stop)\n"));
});

Deno.test("OutBuffer.num writes numbers as String() does", () => {
  const o = new OutBuffer();
  const values = [0, -0, 7, 10, 99, 100, -5, 2 ** 31, 2 ** 53 - 1, -(2 ** 40), 1.5, 1e21, NaN];
  for (const v of values) {
    o.reset();
    o.num(v);
    const chunks: Uint8Array[] = [];
    o.flush({ writeSync: (p) => (chunks.push(p.slice()), p.length) });
    assert.equal(new TextDecoder().decode(chunks[0]), String(v));
  }
});
