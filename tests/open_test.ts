/**
 * The library's way in (mod/open.ts, exported by mod.ts): ports opened from spec strings, one
 * pool for them all, and closing a port with its transport.
 */
import assert from "assert";
import { closePort, openPort, poolForPorts, Port, type VirtioTransport } from "../mod.ts";

Deno.test("open: openPort takes the CLI's grammar and numbers the port", () => {
  const p = openPort("sim:lib0,qsize=512,mac=02:00:00:00:00:07", { id: 3, log: () => {} });
  try {
    assert.equal(p.id, 3);
    assert.equal(p.transport.name, "sim:lib0");
    assert.equal(p.transport.queueMaxSize(0), 512);
    assert.equal(p.started, false);
  } finally {
    closePort(p);
  }
  assert.throws(() => openPort("sim:lib1,qsize=3"), /^Error: sim:lib1: qsize=3: expected a power/);
  assert.throws(() => openPort("eth0"), /^Error: bad port 'eth0': expected sim:NAME/);
});

Deno.test("open: poolForPorts leaves room for every port's rings and forwards", () => {
  const log: string[] = [];
  const ports = [0, 1].map((id) =>
    openPort(`sim:lib-ring${id},qsize=4096`, { id, log: (m) => log.push(m) })
  );
  // Rings of 4096 entries: two ports' rings need more than a pool's default room (256 KiB).
  const pool = poolForPorts(ports, { count: 10_000, rxd: 4096, txd: 4096 });
  try {
    assert.equal(pool.region.kind, "memfd"); // the first kind both sim transports reach
    const before = pool.region.remaining;
    for (const p of ports) {
      p.configure({ pool, rxd: 4096, txd: 4096 });
      p.start();
    }
    const used = before - pool.region.remaining;
    assert.ok(used > 2 * 2 * 16 * 4096, `the rings took ${used} bytes of the pool`);
    const pkts = new Uint32Array(32);
    let moved = 0;
    for (let i = 0; i < 10_000 && moved < 1000; i++) {
      ports[0].poll();
      ports[1].poll();
      const n = ports[0].rxBurst(0, pkts, 32);
      moved += ports[1].txBurst(0, pkts, n);
    }
    assert.ok(moved >= 1000, `${moved} frames forwarded`);
    assert.deepEqual(log, []);
  } finally {
    for (const p of ports) closePort(p);
    pool.close();
  }
});

/** A transport that only says what memory it reaches and counts `close` calls. */
function fakeTransport(name: string, kinds: VirtioTransport["dmaKinds"]) {
  const t = { name, dmaKinds: kinds, closed: 0, close: () => void t.closed++ };
  return t;
}

Deno.test("open: poolForPorts refuses ports that share no kind of memory", () => {
  const a = fakeTransport("pci-like", ["physical"]);
  const b = fakeTransport("vhost-like", ["hugepage-memfd", "memfd"]);
  const ports = [a, b].map((t, i) => new Port(i, t as unknown as VirtioTransport));
  assert.throws(
    () => poolForPorts(ports, { count: 64 }),
    /share no kind of DMA memory \(pci-like: physical; vhost-like: hugepage-memfd\/memfd\)/,
  );
});

Deno.test("open: closePort closes the transport too", () => {
  const t = fakeTransport("fake", ["memfd"]);
  closePort(new Port(0, t as unknown as VirtioTransport));
  assert.equal(t.closed, 1);
  const p = openPort("sim:lib-close");
  closePort(p);
  const pool = poolForPorts([p], { count: 64 });
  try {
    p.configure({ pool });
    assert.throws(() => p.start(), /sim:lib-close: the device is closed/);
  } finally {
    pool.close();
  }
});
