/**
 * Link state of a simulated device (5.1.4 status, VIRTIO_NET_S_LINK_UP) as the driver sees it:
 * changes arrive as configuration-change events and onLinkChange calls; while the link is down
 * nothing is received, transmitted frames are dropped (and counted) and the control queue still
 * works; a device that starts with the link down comes up later; VIRTIO_NET_S_ANNOUNCE makes the
 * port send a RARP for its address and acknowledge.
 */
import assert from "assert";
import { MbufPool } from "../mod/mbuf.ts";
import { Port } from "../mod/port.ts";
import { SimTransport } from "../mod/sim/transport.ts";
import { writeTestFrame } from "../mod/testframe.ts";
import { TransportEvent } from "../mod/virtio/transport.ts";
import { Eth } from "../mod/eth.ts";

function setup(spec: Record<string, string>) {
  const t = SimTransport.fromSpec("link", spec);
  const pool = new MbufPool({ count: 2048, kind: t.dmaKinds[0] });
  const port = new Port(0, t, { log: () => {} });
  const close = () => {
    port.close();
    t.close();
    pool.close();
  };
  try {
    port.configure({ pool });
    port.start();
  } catch (e) {
    close();
    throw e;
  }
  return { t, pool, port, close };
}

/** Poll and receive (freeing) for `polls` rounds; returns the frames received. */
function drain(port: Port, pool: MbufPool, polls = 20): number {
  const pkts = new Uint32Array(64);
  let got = 0;
  for (let i = 0; i < polls; i++) {
    port.poll();
    const n = port.rxBurst(0, pkts, 64);
    for (let k = 0; k < n; k++) pool.free(pkts[k]);
    got += n;
  }
  return got;
}

Deno.test("link: down and up are seen as config changes and onLinkChange events", () => {
  const { t, port, close } = setup({ gen: "off" });
  try {
    const seen: boolean[] = [];
    port.onLinkChange = (up) => seen.push(up);
    assert.equal(port.linkUp, true);
    assert.equal(port.poll(), 0, "nothing changed yet");
    t.device.setLink(false);
    assert.equal(port.poll() & TransportEvent.CONFIG_CHANGED, TransportEvent.CONFIG_CHANGED);
    assert.equal(port.linkUp, false);
    assert.equal(port.poll(), 0, "reported once");
    t.device.setLink(false); // no change, no event
    assert.equal(port.poll(), 0);
    t.device.setLink(true);
    port.poll();
    assert.equal(port.linkUp, true);
    assert.deepEqual(seen, [false, true]);
  } finally {
    close();
  }
});

Deno.test("link: while down nothing arrives, TX is dropped and counted, control still works", () => {
  const { t, pool, port, close } = setup({});
  try {
    assert.ok(drain(port, pool) > 0, "frames flow while up");
    t.device.setLink(false);
    // What was already in the ring before the link went down.
    for (let i = 0; i < 100 && drain(port, pool, 1) > 0; i++);
    const before = t.wire.counters.delivered;
    assert.equal(drain(port, pool), 0, "nothing received while down");
    assert.equal(t.wire.counters.delivered, before);
    const f = new Uint8Array(64);
    writeTestFrame(f, 0, 64, 3, 0, Uint8Array.of(2, 0, 0, 0, 0, 3), port.mac);
    const pkts = Uint32Array.of(pool.fromBytes(f), pool.fromBytes(f));
    assert.equal(port.txBurst(0, pkts, 2), 2);
    port.poll();
    assert.equal(t.wire.counters.txLinkDown, 2);
    assert.equal(t.wire.counters.txFrames, 0);
    port.setPromiscuous(false); // answered although the link is down
    assert.equal(t.device.filter.promisc, false);
    t.device.setLink(true);
    assert.ok(drain(port, pool) > 0, "frames flow again");
  } finally {
    close();
  }
});

Deno.test("link: a device that starts with the link down comes up later", () => {
  const { t, pool, port, close } = setup({ link: "down" });
  try {
    const seen: boolean[] = [];
    port.onLinkChange = (up) => seen.push(up);
    assert.equal(port.linkUp, false);
    assert.equal(drain(port, pool), 0);
    t.device.setLink(true);
    assert.ok(drain(port, pool) > 0);
    assert.deepEqual(seen, [true]);
  } finally {
    close();
  }
});

Deno.test("link: an announce request gets a RARP for the port's address, then an ack", () => {
  const { t, port, close } = setup({ gen: "off" });
  try {
    const sent: Uint8Array[] = [];
    t.wire.onTransmit = (f) => sent.push(f.slice());
    t.device.announce();
    for (let i = 0; i < 5; i++) port.poll();
    assert.equal(t.device.announcing, false, "acknowledged");
    assert.equal(t.device.announceAcked, 1);
    assert.equal(sent.length, 1);
    const f = sent[0];
    assert.equal((f[Eth.TYPE] << 8) | f[Eth.TYPE + 1], Eth.TYPE_RARP);
    assert.deepEqual(f.subarray(Eth.SRC, Eth.SRC + 6), port.mac);
    assert.ok(f.subarray(0, 6).every((b) => b === 0xff), "broadcast");
  } finally {
    close();
  }
});

Deno.test("link: a paced generator sends nothing while down and no burst when back up", async () => {
  const { t, pool, port, close } = setup({ rate: "10000" });
  try {
    t.device.setLink(false);
    drain(port, pool, 1);
    const before = t.wire.counters.generated;
    for (let i = 0; i < 20; i++) {
      drain(port, pool, 1);
      await new Promise((r) => setTimeout(r, 5));
    }
    assert.equal(t.wire.counters.generated, before, "nothing generated while down");
    t.device.setLink(true);
    drain(port, pool, 1);
    const t0 = performance.now();
    await new Promise((r) => setTimeout(r, 10));
    drain(port, pool, 1);
    const ms = performance.now() - t0;
    const burst = t.wire.counters.generated - before;
    assert.ok(
      burst <= 10 * ms + 16,
      `${burst} frames in ${ms.toFixed(1)} ms after the link came up`,
    );
    assert.equal(t.wire.counters.missed, 0);
  } finally {
    close();
  }
});
