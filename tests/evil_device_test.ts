/**
 * The driver against a misbehaving simulated device (`sim:NAME,evil=MODE`, every 7th received
 * frame wrong): it counts an error, drops the frame, never throws out of the burst loop, keeps
 * forwarding the good frames with correct content, and gets every buffer back at stop. (A bad
 * num_buffers in a buffer with room left is not seen: such a buffer is a whole frame.) Counters
 * count frames, so the forwarder's accounting adds up in every mode, and no piece of a broken
 * frame is ever forwarded as a frame.
 */
import assert from "assert";
import { accountFrames } from "../cli/accounting.ts";
import { buildStreams, reclaimSent } from "../mod/fwd/streams.ts";
import { createEngine } from "../mod/fwd/engines.ts";
import { ForwardLoop } from "../mod/fwd/loop.ts";
import { StatsReporter } from "../cli/stats.ts";
import { MbufPool } from "../mod/mbuf.ts";
import { Port } from "../mod/port.ts";
import { EVIL_MODES, PACKED_ONLY_EVIL } from "../mod/sim/device.ts";
import { SimTransport } from "../mod/sim/transport.ts";

const VARIANTS: { what: string; spec: Record<string, string>; mtu: number | undefined }[] = [
  { what: "", spec: {}, mtu: undefined },
  // 3000-byte frames need two 2048-byte buffers: the mergeable-RX path (num_buffers 2).
  { what: " (mergeable 3000-byte frames)", spec: { size: "64+3000", mtu: "9000" }, mtu: 9000 },
  // VIRTIO_F_IN_ORDER: the driver must keep ring order through every error (the device checks).
  {
    what: " (in order, mergeable 3000-byte frames)",
    spec: { size: "64+3000", mtu: "9000", in_order: "1" },
    mtu: 9000,
  },
];

/** Modes for split rings (tests/packed_test.ts has the packed ones). */
const SPLIT_MODES = EVIL_MODES.filter((m) => !PACKED_ONLY_EVIL.includes(m));

for (const mode of SPLIT_MODES) {
  for (const v of VARIANTS) {
    Deno.test(`evil device ${mode}${v.what}: errors counted, good frames forwarded intact, buffers back`, async () => {
      const evil = SimTransport.fromSpec("evil", { evil: mode, ...v.spec });
      const good = SimTransport.fromSpec(
        "good",
        v.mtu ? { gen: "off", mtu: "9000", ...(v.spec.in_order ? { in_order: "1" } : {}) } : {
          gen: "off",
        },
      );
      const pool = new MbufPool({ count: 4096, kind: evil.dmaKinds[0] });
      const ports = [new Port(0, evil, { log: () => {} }), new Port(1, good, { log: () => {} })];
      try {
        for (const p of ports) {
          p.configure({ pool, mtu: v.mtu });
          p.start();
        }
        const engine = createEngine("io", { pool, burst: 32, peers: [] });
        const loop = new ForwardLoop(ports, buildStreams(ports, "io", 1, 32), engine);
        await loop.run({ untilMs: performance.now() + 300 });
        evil.wire.stopGenerator();
        await loop.drain(20, 2000);
        reclaimSent(ports, 1);
        const s = ports[0].stats;
        assert.ok(evil.device.evilCount > 0, "the device misbehaved");
        if (v.spec.in_order) {
          for (const p of ports) {
            assert.ok((p.features & (1n << 35n)) !== 0n, "IN_ORDER negotiated");
          }
          assert.ok(evil.device.batchedEntries > 0, "the device wrote batched used entries");
          assert.ok(good.device.batchedEntries > 0, "and on the TX side");
        }
        assert.equal(evil.device.needsReset, false, "the device itself saw nothing wrong");
        if (mode === "bad-num-buffers" && !v.mtu) {
          // Every frame fits its buffer with room left, so it is whole (5.1.6.4.1) and the
          // driver does not read num_buffers: the bad counts go unnoticed, nothing is lost.
          assert.equal(s.rxErrors, 0);
          assert.equal(s.rxPackets, evil.wire.counters.delivered);
        } else if (mode === "idx-jump") {
          // No frame is lost to a used index that jumps: counted apart, not in rxErrors.
          assert.ok(s.rxIdxErrors > 0, `rxIdxErrors ${s.rxIdxErrors}`);
          assert.equal(s.rxErrors, 0);
          assert.equal(s.rxPackets, evil.wire.counters.delivered);
        } else {
          assert.ok(s.rxErrors > 0, `rxErrors ${s.rxErrors}`);
        }
        assert.ok(s.rxPackets > 100, `good frames still received: ${s.rxPackets}`);
        // Most frames are good: at most a few frames lost per bad entry.
        assert.ok(
          s.rxPackets > evil.wire.counters.delivered / 2,
          `received ${s.rxPackets} of ${evil.wire.counters.delivered}`,
        );
        const w = good.wire.counters;
        assert.equal(w.txFrames, ports[1].stats.txPackets);
        assert.equal(w.badFrames, 0, "no corrupted frame was forwarded");
        assert.equal(w.checkedOk, w.txFrames);
        if (v.mtu) assert.ok(w.txBytes > w.txFrames * 1000, "big frames went through too");
        for (const p of ports) p.stop();
        assert.equal(pool.available, pool.count, "every buffer back in the pool");
      } finally {
        for (const p of ports) p.close();
        evil.close();
        good.close();
        pool.close();
      }
    });
  }
}

/** Generator size mixes of the matrix below: MTU, pool data room without mergeable buffers. */
const MIXES: { name: string; size: string; mtu: number | undefined; bigRoom: boolean }[] = [
  { name: "64", size: "64", mtu: undefined, bigRoom: false },
  { name: "64+3000+9000", size: "64+3000+9000", mtu: 9000, bigRoom: true },
  {
    name: "60..1514",
    size: "60+64+127+256+511+777+1024+1280+1514",
    mtu: undefined,
    bigRoom: false,
  },
];

/**
 * io between an evil sim and a good one for `ms`, drained and stopped: the summary rows (with the
 * wire counters), the accounting and how often the device misbehaved.
 */
async function evilRun(
  evil: string,
  mrg: boolean,
  inOrder: boolean,
  mix: typeof MIXES[number],
  ms: number,
) {
  const common: Record<string, string> = {
    mrg: mrg ? "1" : "0",
    in_order: inOrder ? "1" : "0",
    ...(mix.mtu ? { mtu: String(mix.mtu) } : {}),
  };
  const a = SimTransport.fromSpec("a", { evil, size: mix.size, ...common });
  const b = SimTransport.fromSpec("b", { size: mix.size, ...common });
  // Without mergeable buffers a 9000-byte frame needs a buffer that holds it.
  const pool = new MbufPool({
    count: 2048,
    kind: a.dmaKinds[0],
    dataRoom: !mrg && mix.bigRoom ? 9216 : undefined,
  });
  const ports = [new Port(0, a, { log: () => {} }), new Port(1, b, { log: () => {} })];
  try {
    for (const p of ports) {
      p.configure({ pool, mtu: mix.mtu, mrgRxbuf: mrg });
      p.start();
    }
    const engine = createEngine("io", { pool, burst: 32, peers: [] });
    const loop = new ForwardLoop(ports, buildStreams(ports, "io", 1, 32), engine);
    await loop.run({ untilMs: performance.now() + ms });
    a.wire.stopGenerator();
    b.wire.stopGenerator();
    await loop.drain(20, 2000);
    reclaimSent(ports, 1);
    for (const p of ports) p.stop();
    const rows = new StatsReporter(
      ports,
      ["a", "b"],
      "json",
      0,
      (i) => ({ ...[a, b][i].wire.counters }),
    ).rows();
    return {
      rows,
      acc: accountFrames("io", rows)!,
      evilCount: a.device.evilCount,
      mrgUsed: (ports[0].features & (1n << 15n)) !== 0n,
      poolBack: pool.available === pool.count,
    };
  } finally {
    for (const p of ports) p.close();
    a.close();
    b.close();
    pool.close();
  }
}

Deno.test("evil device matrix: every mode x mergeable x in order x size mix, the frames add up and rxErrors counts frames", async (t) => {
  for (const evil of SPLIT_MODES) {
    for (const mrg of [false, true]) {
      for (const inOrder of [false, true]) {
        for (const mix of MIXES) {
          const name = `evil=${evil} mrg=${+mrg} in_order=${+inOrder} size=${mix.name}`;
          await t.step(name, async () => {
            const r = await evilRun(evil, mrg, inOrder, mix, 200);
            const a = r.rows[0];
            assert.equal(r.mrgUsed, mrg, "MRG_RXBUF negotiated as asked");
            assert.ok(r.evilCount > 0, "the device misbehaved");
            assert.ok(r.acc.ok, `${name}: ${r.acc.message}`);
            for (const row of r.rows) {
              assert.ok(row.rxDropped >= row.rxErrors + row.rxNoMbuf, JSON.stringify(row));
            }
            if (evil === "bad-id" || evil === "bad-len") {
              // Every bent frame is one error, however many buffers it spans.
              assert.equal(a.rxErrors, r.evilCount, JSON.stringify(a));
            } else if (evil === "bad-num-buffers") {
              // Seen only in a full first buffer (mergeable, frames over one buffer).
              assert.ok(a.rxErrors <= r.evilCount);
              if (mrg && mix.bigRoom) assert.ok(a.rxErrors > 0);
              if (!mrg || !mix.bigRoom) assert.equal(a.rxErrors, 0);
            } else {
              // A used index that jumps is no frame: counted apart, nothing dropped for it.
              assert.equal(a.rxErrors, 0);
              assert.ok(a.rxIdxErrors > 0, JSON.stringify(a));
            }
            assert.ok(r.poolBack, "every buffer back in the pool");
          });
        }
      }
    }
  }
});

Deno.test("evil device bad-id (mergeable): a frame whose continuation holds 01 00 at the num_buffers offset is dropped whole, never delivered in pieces", async () => {
  const evil = SimTransport.fromSpec("evil", { evil: "bad-id", gen: "off", mtu: "9000" });
  const good = SimTransport.fromSpec("good", { gen: "off", mtu: "9000" });
  const pool = new MbufPool({ count: 4096, kind: evil.dmaKinds[0] });
  const ports = [new Port(0, evil, { log: () => {} }), new Port(1, good, { log: () => {} })];
  try {
    for (const p of ports) {
      p.configure({ pool, mtu: 9000 });
      p.start();
    }
    // The device bends every 7th frame it delivers. Frames 1-6 and 8-10: 100 bytes; frame 7:
    // 5000 bytes over three 2060-byte buffers (12-byte header + 2048), whose second buffer
    // starts at frame byte 2048, so frame bytes 2058-2059 sit where a header's num_buffers is.
    const room = 12 + pool.dataRoom;
    const lens = [100, 100, 100, 100, 100, 100, 5000, 100, 100, 100];
    for (const [i, len] of lens.entries()) {
      const f = new Uint8Array(len).fill(0x5a);
      f[0] = 0x02; // unicast, locally administered
      f[12] = 0x88;
      f[13] = 0xb5;
      f[14] = i;
      if (len > 2 * room) {
        f[room - 12 + 10] = 1;
        f[room - 12 + 11] = 0;
      }
      evil.wire.inject(f);
    }
    const got: number[] = [];
    good.wire.onTransmit = (f) => got.push(f.length);
    const engine = createEngine("io", { pool, burst: 32, peers: [] });
    const loop = new ForwardLoop(ports, buildStreams(ports, "io", 1, 32), engine);
    await loop.drain(50, 3000);
    reclaimSent(ports, 1);
    assert.equal(evil.device.evilCount, 1);
    assert.deepEqual(got, [100, 100, 100, 100, 100, 100, 100, 100, 100]);
    assert.equal(ports[0].stats.rxErrors, 1);
    assert.equal(ports[0].stats.rxDropped, 1);
    for (const p of ports) p.stop();
    assert.equal(pool.available, pool.count);
  } finally {
    for (const p of ports) p.close();
    evil.close();
    good.close();
    pool.close();
  }
});

Deno.test("evil device: the CLI's summary adds up for bad-id with 64+3000+9000-byte mergeable frames", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL("../main.ts", import.meta.url).pathname,
      "fwd",
      "sim:a,evil=bad-id,mrg=1,size=64+3000+9000,mtu=9000",
      "sim:b,mtu=9000",
      "--mtu",
      "9000",
      "--duration",
      "0.5",
      "--json",
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout).trim().split("\n");
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  const summary = JSON.parse(text[text.length - 1]);
  assert.ok(summary.accounting.ok, summary.accounting.message);
  const a = summary.ports[0];
  assert.ok(a.rxErrors > 0 && a.rxDropped >= a.rxErrors + a.rxNoMbuf, JSON.stringify(a));
});
