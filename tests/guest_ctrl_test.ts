/**
 * Control path, VLAN, queue sizes, link and guest announce against QEMU's own virtio-net in the
 * guest lab (scripts/lab/, tests/lib/guest.ts). QEMU's receive filter really drops frames
 * (promiscuous first, then the VLAN table, then unicast/multicast rules), so what reaches the
 * host through `vpmd fwd` (io forwarding n0 <-> n1) shows what the control queue set.
 *
 * Everything runs `vpmd fwd` (main.ts) in the guest, so the CLI flags are what is tested. Frames
 * go from the host into n0 (legacy, 0000:00:04.0); port 0 receives them and port 1 (n1, modern,
 * 0000:00:05.0) transmits them to the host, where they are counted per stream.
 */
import assert from "assert";
import { type Guest, type GuestNic, guestTest, parseMac, type UdpWire } from "./lib/guest.ts";
import { checkTestFrame, FrameCheck, writeTestFrame } from "../mod/testframe.ts";
import { writeAnnounce } from "../mod/announce.ts";

const VPMD = "deno run -A /vpmd/main.ts";
const PORT_MAC = "52:54:00:12:34:10"; // n0 (tests/lib/guest.ts)
const FOREIGN = "02:00:00:00:00:99";
const MCAST_A = "01:00:5e:00:00:01";
const MCAST_B = "01:00:5e:00:00:02";
const BCAST = "ff:ff:ff:ff:ff:ff";
const SRC = parseMac("02:00:00:00:00:01");

async function bindAll(g: Guest): Promise<void> {
  const r = await g.exec(`${VPMD} bind --force ${g.nics.map((n) => n.pciAddress).join(" ")}`, 90);
  assert.equal(r.code, 0, r.output);
}

/** A test frame of `stream`/`seq` to `dst`, optionally with 802.1Q tags (outermost first). */
function frame(
  stream: number,
  seq: number,
  dst: string,
  tags: number[] = [],
  len = 100,
): Uint8Array {
  const plain = new Uint8Array(len);
  writeTestFrame(plain, 0, len, stream, seq, parseMac(dst), SRC);
  const out = new Uint8Array(len + 4 * tags.length);
  out.set(plain.subarray(0, 12), 0);
  tags.forEach((tci, i) => out.set([0x81, 0x00, tci >> 8, tci & 0xff], 12 + 4 * i));
  out.set(plain.subarray(12), 12 + 4 * tags.length);
  return out;
}

/** Records every frame the guest sends on a wire; counts test frames per stream (tags skipped). */
class Recorder {
  readonly frames: Uint8Array[] = [];
  readonly perStream = new Map<number, number>();
  #out = new Uint32Array(4);
  constructor(readonly wire: UdpWire) {
    wire.onFrame = (f) => this.#take(f);
  }
  #take(f: Uint8Array): void {
    const copy = f.slice();
    this.frames.push(copy);
    let off = 0;
    while (off + 16 <= copy.length && copy[12 + off] === 0x81 && copy[13 + off] === 0) off += 4;
    const plain = off === 0
      ? copy
      : new Uint8Array([...copy.subarray(0, 12), ...copy.subarray(12 + off)]);
    if (checkTestFrame(plain, 0, plain.length, this.#out) === FrameCheck.OK) {
      this.perStream.set(this.#out[0], (this.perStream.get(this.#out[0]) ?? 0) + 1);
    }
  }
  count(stream: number): number {
    return this.perStream.get(stream) ?? 0;
  }
  /** Wait until `stream` has `n` frames (or `timeoutSec`), then (`settle`) for 300 ms of quiet. */
  async waitFor(stream: number, n: number, timeoutSec = 20, settle = true): Promise<void> {
    const end = performance.now() + timeoutSec * 1000;
    while (this.count(stream) < n && performance.now() < end) await sleep(20);
    for (let last = -1; settle && last !== this.frames.length;) {
      last = this.frames.length;
      await sleep(300);
    }
  }
  detach(): void {
    this.wire.onFrame = null;
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Send `frames` into `nic` at about 1000 frames/s. */
async function send(nic: GuestNic, frames: Uint8Array[]): Promise<void> {
  for (let i = 0; i < frames.length; i++) {
    nic.wire.send(frames[i]);
    if (i % 10 === 9) await sleep(10);
  }
}

/** A category of frames: `n` frames of `stream` to `dst` with `tags`, expected through or not. */
interface Probe {
  what: string;
  stream: number;
  dst: string;
  tags?: number[];
  pass: boolean;
}

/**
 * Start `vpmd fwd n0 n1 FLAGS` in the guest, send every probe's frames into n0, then a marker
 * stream to the port MAC, and check which streams came out of n1. Stops vpmd with SIGINT and
 * returns its output (the JSON summary is its last line).
 */
async function filterRun(g: Guest, flags: string, probes: Probe[], n = 50): Promise<string> {
  const [n0, n1] = g.nics;
  const p = await g.spawn(
    `echo $$ > /tmp/fwd.pid; exec ${VPMD} fwd ${n0.pciAddress} ${n1.pciAddress} ${flags} ` +
      `--json --stats-period 1 --duration 120`,
  );
  await p.waitForOutput(/^\{"t":/m, 90);
  const rec = new Recorder(n1.wire);
  try {
    // Warm-up: the first frames after start may meet a cold JIT; wait until frames flow.
    const marker = 0x70;
    await send(n0, Array.from({ length: 20 }, (_, i) => frame(marker, i, PORT_MAC)));
    await rec.waitFor(marker, 15, 30);
    for (const pr of probes) {
      await send(n0, Array.from({ length: n }, (_, i) => frame(pr.stream, i, pr.dst, pr.tags)));
    }
    await send(n0, Array.from({ length: 20 }, (_, i) => frame(marker, 20 + i, PORT_MAC)));
    await rec.waitFor(marker, 35, 30);
    for (const pr of probes) {
      const got = rec.count(pr.stream);
      if (pr.pass) {
        assert.ok(got >= n * 0.95 && got <= n, `${flags}: ${pr.what}: ${got} of ${n} arrived`);
      } else {
        assert.equal(got, 0, `${flags}: ${pr.what}: ${got} of ${n} arrived, 0 expected`);
      }
    }
  } finally {
    rec.detach();
    await g.exec("kill -INT $(cat /tmp/fwd.pid)", 10).catch(() => {});
  }
  const end = await p.wait(60);
  assert.equal(end.code, 0, end.output);
  return end.output;
}

guestTest(
  "ctrl: QEMU's receive filter follows --no-promisc, --allmulti, --mcast, --vlan-filter",
  async (g, t) => {
    await bindAll(g);
    const unicast: Probe = { what: "to the port MAC", stream: 1, dst: PORT_MAC, pass: true };
    const bcast: Probe = { what: "broadcast", stream: 2, dst: BCAST, pass: true };
    const foreign = (pass: boolean): Probe => ({
      what: "to a foreign unicast MAC",
      stream: 3,
      dst: FOREIGN,
      pass,
    });
    const mcastA = (pass: boolean): Probe => ({ what: MCAST_A, stream: 4, dst: MCAST_A, pass });
    const mcastB = (pass: boolean): Probe => ({ what: MCAST_B, stream: 5, dst: MCAST_B, pass });
    const vlan = (vid: number, stream: number, pass: boolean): Probe => ({
      what: `tagged VLAN ${vid}`,
      stream,
      dst: PORT_MAC,
      tags: [vid],
      pass,
    });
    await t.step("default (promiscuous): every frame", async () => {
      await filterRun(g, "", [
        unicast,
        bcast,
        foreign(true),
        mcastA(true),
        vlan(100, 6, true),
        vlan(200, 7, true),
      ]);
    });
    await t.step(
      "--no-promisc: port MAC and broadcast only; no VLAN filter: both VLANs",
      async () => {
        await filterRun(g, "--no-promisc", [
          unicast,
          bcast,
          foreign(false),
          mcastA(false),
          vlan(100, 6, true),
          vlan(200, 7, true),
        ]);
      },
    );
    await t.step("--no-promisc --allmulti: every multicast, still no foreign unicast", async () => {
      await filterRun(g, "--no-promisc --allmulti", [
        unicast,
        foreign(false),
        mcastA(true),
        mcastB(true),
      ]);
    });
    await t.step("--no-promisc --mcast A --vlan-filter 100: A and VLAN 100 only", async () => {
      await filterRun(g, `--no-promisc --mcast ${MCAST_A} --vlan-filter 100`, [
        unicast,
        foreign(false),
        mcastA(true),
        mcastB(false),
        vlan(100, 6, true),
        vlan(200, 7, false),
      ]);
    });
  },
);

guestTest(
  "ctrl: VLAN strip + insert and --mtu 9000 frames are byte-exact at the host",
  async (g) => {
    await bindAll(g);
    const [n0, n1] = g.nics;
    const p = await g.spawn(
      `echo $$ > /tmp/fwd.pid; exec ${VPMD} fwd ${n0.pciAddress} ${n1.pciAddress} ` +
        `--vlan-strip --vlan-insert 200 --json --stats-period 1 --duration 120`,
    );
    await p.waitForOutput(/^\{"t":/m, 90);
    const rec = new Recorder(n1.wire);
    try {
      await send(n0, Array.from({ length: 20 }, (_, i) => frame(0x70, i, PORT_MAC)));
      await rec.waitFor(0x70, 15, 30);
      rec.frames.length = 0;
      // Untagged in: tag 200 inserted. Tagged 100 in: stripped, then 200 inserted. Two tags
      // (100 outer, 300 inner): only the outer one is stripped, 200 pushed in front of 300.
      const cases: [Uint8Array, Uint8Array][] = [];
      for (let i = 0; i < 30; i++) {
        cases.push([
          frame(1, i, PORT_MAC, [], 64 + i * 40),
          frame(1, i, PORT_MAC, [200], 64 + i * 40),
        ]);
        cases.push([frame(2, i, PORT_MAC, [100]), frame(2, i, PORT_MAC, [200])]);
        cases.push([frame(3, i, PORT_MAC, [100, 300]), frame(3, i, PORT_MAC, [200, 300])]);
      }
      await send(n0, cases.map(([input]) => input));
      await rec.waitFor(3, 29, 30);
      assert.ok(
        rec.frames.length >= cases.length * 0.95,
        `${rec.frames.length} of ${cases.length}`,
      );
      const want = new Map(cases.map(([, out]) => [out.join(","), out]));
      for (const f of rec.frames) {
        assert.ok(want.has(f.join(",")), `unexpected frame from n1: ${hex(f.subarray(0, 24))}`);
      }
    } finally {
      rec.detach();
      await g.exec("kill -INT $(cat /tmp/fwd.pid)", 10).catch(() => {});
    }
    const end = await p.wait(60);
    assert.equal(end.code, 0, end.output);

    // --mtu 9000: 9014-byte frames come in through mergeable RX buffers (2 KiB each) and leave as
    // chained TX descriptors, unchanged.
    const j = await g.spawn(
      `echo $$ > /tmp/fwd.pid; exec ${VPMD} fwd ${n0.pciAddress} ${n1.pciAddress} --mtu 9000 ` +
        `--json --stats-period 1 --duration 120`,
    );
    await j.waitForOutput(/^\{"t":/m, 90);
    const jrec = new Recorder(n1.wire);
    try {
      await send(n0, Array.from({ length: 20 }, (_, i) => frame(0x70, i, PORT_MAC)));
      await jrec.waitFor(0x70, 15, 30);
      const big = Array.from({ length: 20 }, (_, i) => frame(4, i, PORT_MAC, [], 9014));
      await send(n0, big);
      await jrec.waitFor(4, 19, 30);
      assert.ok(jrec.count(4) >= 19, `${jrec.count(4)} of 20 jumbo frames`);
      const want = new Set(big.map((f) => f.join(",")));
      const got = jrec.frames.filter((f) => f.length > 1514);
      assert.equal(got.length, jrec.count(4));
      for (const f of got) {
        assert.ok(
          want.has(f.join(",")),
          `jumbo frame changed: ${f.length} bytes`,
        );
      }
    } finally {
      jrec.detach();
      await g.exec("kill -INT $(cat /tmp/fwd.pid)", 10).catch(() => {});
    }
    const jend = await j.wait(60);
    assert.equal(jend.code, 0, jend.output);
  },
);

function hex(b: Uint8Array): string {
  return [...b].map((x) => x.toString(16).padStart(2, "0")).join(" ");
}

guestTest(
  "ctrl: ctrl_vlan=off error, host_mtu, rx_queue_size=1024 (legacy fixed, modern honoured), " +
    "link flap under traffic, announce_self",
  async (g, t) => {
    await bindAll(g);
    const [n0, n1] = g.nics;
    const fwd = `${VPMD} fwd ${n0.pciAddress} ${n1.pciAddress} --duration 1 --stats-period 0`;
    await t.step(
      "--vlan-filter on a NIC with ctrl_vlan=off: exit 2 naming the feature",
      async () => {
        const r = await g.exec(`${fwd} --vlan-filter 100`, 90);
        assert.equal(r.code, 2, r.output);
        assert.match(
          r.output,
          /port 1: the device does not offer VIRTIO_NET_F_CTRL_VLAN, so VLAN filters cannot be set; run without --vlan-filter/,
        );
      },
    );
    await t.step("--mtu above the device's host_mtu: exit 2 naming the maximum", async () => {
      const r = await g.exec(`${fwd} --mtu 1500`, 90);
      assert.equal(r.code, 2, r.output);
      assert.match(
        r.output,
        /MTU 1500 is not possible: the device's maximum is 1400 \(VIRTIO_NET_F_MTU\)/,
      );
    });
    await t.step(
      "rx_queue_size=1024: legacy NIC warns once and uses 1024, modern honours",
      async () => {
        // Port 0 is legacy (the device fixes the size: one warning), port 1 modern takes the size.
        const r = await g.exec(`${fwd} --mtu 1400 --rxd 512`, 90);
        assert.equal(r.code, 0, r.output);
        assert.equal((r.output.match(/warning/g) ?? []).length, 1, r.output);
        assert.match(
          r.output,
          /port 0: warning: --rxd 512 ignored, the device's queue size 1024 is fixed/,
        );
        const same = await g.exec(`${fwd} --mtu 1400 --rxd 1024`, 90);
        assert.equal(same.code, 0, same.output);
        assert.doesNotMatch(same.output, /warning/);
        const big = await g.exec(`${fwd} --mtu 1400 --rxd 2048`, 90);
        assert.equal(big.code, 2, big.output);
        assert.match(
          big.output,
          /port 1: --rxd 2048 must be a power of two no larger than the device's 1024/,
        );
      },
    );
    await t.step(
      "link flap under traffic; announce_self answered with a RARP for --mac",
      async () => {
        const newMac = "02:00:00:00:00:42";
        const p = await g.spawn(
          `echo $$ > /tmp/fwd.pid; exec ${VPMD} fwd ${n0.pciAddress} ${n1.pciAddress} --mtu 1400 ` +
            `--mac 1,${newMac} --json --stats-period 1 --duration 150`,
        );
        await p.waitForOutput(/^\{"t":/m, 90);
        const rec = new Recorder(n1.wire);
        let sending = true;
        let seq = 0;
        const traffic = (async () => {
          while (sending) {
            n0.wire.send(frame(1, seq++, PORT_MAC));
            await sleep(5);
          }
        })();
        try {
          await rec.waitFor(1, 50, 30, false);
          assert.ok(rec.count(1) >= 50, `traffic before the flap: ${rec.count(1)} frames`);
          assert.match(await g.monitor("set_link n1 off"), /^$/);
          await p.waitForOutput(/Port 1: link state change event \(down\)/, 20);
          await sleep(500);
          assert.match(await g.monitor("set_link n1 on"), /^$/);
          await p.waitForOutput(/Port 1: link state change event \(up\)/, 20);
          const before = rec.count(1);
          await sleep(2000);
          assert.ok(
            rec.count(1) > before + 100,
            `forwarding resumed: ${before} -> ${rec.count(1)}`,
          );

          rec.frames.length = 0;
          assert.equal(await g.monitor("announce_self"), "");
          await p.waitForOutput(/port 1: announce requested: RARP sent/, 20);
          await sleep(1500);
          const rarp = new Uint8Array(60);
          writeAnnounce(rarp, 0, parseMac(newMac));
          const ours = rec.frames.filter((f) => f.length === 60 && f.join() === rarp.join());
          assert.ok(ours.length >= 1, `no RARP for ${newMac} among ${rec.frames.length} frames`);
        } finally {
          sending = false;
          await traffic;
          rec.detach();
          await g.exec("kill -INT $(cat /tmp/fwd.pid)", 10).catch(() => {});
        }
        const end = await p.wait(60);
        assert.equal(end.code, 0, end.output);
        assert.doesNotMatch(end.output, /announce ack|control queue/, end.output);
      },
    );
  },
  {
    timeoutSec: 420,
    extraNicOptions: {
      0: "rx_queue_size=1024,host_mtu=1400",
      1: "ctrl_vlan=off,rx_queue_size=1024",
    },
  },
);
