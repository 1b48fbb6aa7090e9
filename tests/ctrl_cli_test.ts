/**
 * Without a guest: the `vpmd fwd` receive-filter and MTU flags (cli/filters.ts) checked
 * and applied through the port against the simulated device (whose receive filter drops
 * injected frames like QEMU's), CTRL_VLAN negotiated only for --vlan-filter, queue-size rules,
 * stopped-only configuration and the library flow stop/configure/start, the announce frame's
 * bytes, the CLI's exit code for a device without the feature, and the error class (exit 1) for a
 * device that refuses a command.
 */
import assert from "assert";
import { ANNOUNCE_FRAME_BYTES, writeAnnounce } from "../mod/announce.ts";
import { applyFilters, type FilterOptions, parseFilterFlags } from "../cli/filters.ts";
import { MbufPool } from "../mod/mbuf.ts";
import { Port, type PortConfig } from "../mod/port.ts";
import { SimTransport } from "../mod/sim/transport.ts";
import { writeTestFrame } from "../mod/testframe.ts";
import { parseMac } from "../mod/mac.ts";
import type { VirtioTransport } from "../mod/virtio/transport.ts";
import { bit, has, NetFeature } from "../mod/virtio/constants.ts";
import { CtrlCommandError } from "../mod/virtio/ctrl_queue.ts";

const PORT_MAC = "02:00:00:00:aa:01";

function open(spec: Record<string, string>) {
  const t = SimTransport.fromSpec("ctrl", { gen: "off", mac: PORT_MAC, ...spec });
  const pool = new MbufPool({ count: 4096, kind: t.dmaKinds[0] });
  const logs: string[] = [];
  const port = new Port(0, t, { log: (m) => logs.push(m) });
  const close = () => {
    port.close();
    t.close();
    pool.close();
  };
  return { t, pool, port, logs, close };
}

/** A 100-byte test frame to `dst`, with an 802.1Q tag when `vid` is given. */
function frame(dst: string, vid?: number): Uint8Array {
  const plain = new Uint8Array(100);
  writeTestFrame(plain, 0, 100, 1, 0, parseMac(dst), parseMac("02:00:00:00:00:01"));
  if (vid === undefined) return plain;
  const out = new Uint8Array(104);
  out.set(plain.subarray(0, 12));
  out.set([0x81, 0x00, vid >> 8, vid & 0xff], 12);
  out.set(plain.subarray(12), 16);
  return out;
}

/** Inject `f` and report whether the port received it. */
function passes(t: SimTransport, port: Port, pool: MbufPool, f: Uint8Array): boolean {
  assert.ok(t.wire.inject(f));
  const pkts = new Uint32Array(8);
  let got = 0;
  for (let i = 0; i < 5; i++) {
    port.poll();
    const n = port.rxBurst(0, pkts, 8);
    for (let k = 0; k < n; k++) pool.free(pkts[k]);
    got += n;
  }
  return got === 1;
}

function withFilters(
  args: Parameters<typeof parseFilterFlags>[0],
  spec: Record<string, string>,
  fn: (s: ReturnType<typeof open>, f: FilterOptions) => void,
): void {
  const s = open(spec);
  try {
    const f = parseFilterFlags(args, 1);
    s.port.configure({ pool: s.pool, mtu: f.mtu, vlanFilter: f.vlans.length > 0 });
    applyFilters(s.port, 0, f);
    s.port.start();
    fn(s, f);
  } finally {
    s.close();
  }
}

Deno.test("ctrl cli: filter flags parse; bad values are one-line errors", () => {
  const f = parseFilterFlags({
    "no-promisc": true,
    allmulti: true,
    mac: ["1,02:00:00:00:00:42", "02:00:00:00:00:41"],
    mcast: "01:00:5e:00:00:01,33:33:00:00:00:01",
    "vlan-filter": "100,4095,0",
    mtu: "9000",
  }, 2);
  assert.equal(f.promisc, false);
  assert.equal(f.allmulti, true);
  assert.deepEqual(f.macs[0], parseMac("02:00:00:00:00:41"));
  assert.deepEqual(f.macs[1], parseMac("02:00:00:00:00:42"));
  assert.deepEqual(f.mcast, [parseMac("01:00:5e:00:00:01"), parseMac("33:33:00:00:00:01")]);
  assert.deepEqual(f.vlans, [100, 4095, 0]);
  assert.equal(f.mtu, 9000);
  assert.equal(parseFilterFlags({}, 1).promisc, null, "not asked: default");
  const bad: [Parameters<typeof parseFilterFlags>[0], RegExp][] = [
    [{ promisc: true, "no-promisc": true }, /--promisc and --no-promisc contradict/],
    [{ mac: ["2,02:00:00:00:00:01"] }, /--mac 2,02:00:00:00:00:01: expected \[PORT,\]MAC/],
    [{ mac: ["01:00:5e:00:00:01"] }, /--mac 01:00:5e:00:00:01: .* must be unicast/],
    [{ mac: ["00:00:00:00:00:00"] }, /not all zero/],
    [{ mac: ["zz"] }, /--mac zz: bad MAC/i],
    [{ mcast: "02:00:00:00:00:01" }, /--mcast 02:00:00:00:00:01: not a multicast address/],
    [{ "vlan-filter": "100,x" }, /--vlan-filter 100,x: expected VLAN ids/],
    [{ "vlan-filter": "4096" }, /VLAN id 4096 is not in 0..4095/],
    [{ mtu: "67" }, /--mtu 67: expected an integer from 68 to 65535/],
    [{ mtu: "1e3" }, /--mtu 1e3/],
  ];
  for (const [v, re] of bad) {
    assert.throws(() => parseFilterFlags(v, 2), re, JSON.stringify(v));
  }
});

Deno.test("ctrl cli: --no-promisc, --allmulti, --mcast, --vlan-filter as the device filters", async (t) => {
  const foreign = "02:00:00:00:00:99";
  const mA = "01:00:5e:00:00:01";
  const mB = "01:00:5e:00:00:02";
  await t.step("default: promiscuous (sent because the device has CTRL_RX)", () => {
    withFilters({}, {}, ({ t, port, pool }) => {
      assert.equal(t.device.filter.promisc, true);
      assert.ok(passes(t, port, pool, frame(foreign)));
      assert.ok(passes(t, port, pool, frame(PORT_MAC, 200)));
      assert.equal(has(port.features, NetFeature.CTRL_VLAN), false, "no --vlan-filter");
    });
  });
  await t.step("--no-promisc: own address and broadcast; any VLAN without --vlan-filter", () => {
    withFilters({ "no-promisc": true }, {}, ({ t, port, pool }) => {
      assert.equal(t.device.filter.promisc, false);
      assert.ok(passes(t, port, pool, frame(PORT_MAC)));
      assert.ok(passes(t, port, pool, frame("ff:ff:ff:ff:ff:ff")));
      assert.ok(!passes(t, port, pool, frame(foreign)));
      assert.ok(!passes(t, port, pool, frame(mA)));
      assert.ok(passes(t, port, pool, frame(PORT_MAC, 100)));
      assert.ok(passes(t, port, pool, frame(PORT_MAC, 200)));
    });
  });
  await t.step("--no-promisc --mcast A --vlan-filter 100 --mac", () => {
    const args = {
      "no-promisc": true,
      mcast: mA,
      "vlan-filter": "100",
      mac: ["02:00:00:00:00:42"],
    };
    withFilters(args, {}, ({ t, port, pool }) => {
      assert.deepEqual(t.device.filter.multicast, [parseMac(mA)]);
      assert.deepEqual([...t.device.filter.vlans], [100]);
      assert.deepEqual(port.mac, parseMac("02:00:00:00:00:42"));
      assert.ok(passes(t, port, pool, frame("02:00:00:00:00:42")));
      assert.ok(passes(t, port, pool, frame(mA)));
      assert.ok(!passes(t, port, pool, frame(mB)));
      assert.ok(passes(t, port, pool, frame("02:00:00:00:00:42", 100)));
      assert.ok(!passes(t, port, pool, frame("02:00:00:00:00:42", 200)));
    });
  });
  await t.step("--no-promisc --allmulti: every multicast", () => {
    withFilters({ "no-promisc": true, allmulti: true }, {}, ({ t, port, pool }) => {
      assert.ok(passes(t, port, pool, frame(mA)));
      assert.ok(passes(t, port, pool, frame(mB)));
      assert.ok(!passes(t, port, pool, frame(foreign)));
    });
  });
  await t.step("a device without CTRL_RX: default skipped, explicit flags name the feature", () => {
    withFilters({}, { ctrl_rx: "0" }, ({ port }) => {
      assert.equal(has(port.features, NetFeature.CTRL_RX), false);
    });
    assert.throws(
      () => withFilters({ allmulti: true }, { ctrl_rx: "0" }, () => {}),
      /the device does not offer VIRTIO_NET_F_CTRL_RX, so all-multicast mode cannot be set; run without --allmulti/,
    );
    assert.throws(
      () => withFilters({ "vlan-filter": "5" }, { ctrl_vlan: "0" }, () => {}),
      /does not offer VIRTIO_NET_F_CTRL_VLAN, so VLAN filters cannot be set; run without --vlan-filter/,
    );
    assert.throws(
      () => withFilters({ mac: ["02:00:00:00:00:42"] }, { ctrl: "0" }, () => {}),
      /does not offer VIRTIO_NET_F_CTRL_VQ, so the MAC address cannot be set; run without --mac/,
    );
  });
});

Deno.test("ctrl cli: vlanFilter false keeps CTRL_VLAN off and says so on addVlan", () => {
  const s = open({});
  try {
    s.port.configure({ pool: s.pool, vlanFilter: false });
    assert.throws(
      () => s.port.addVlan(5),
      /^Error: port 0: VLAN filtering is turned off \(vlanFilter: false\), so VLAN filters cannot be set$/,
    );
    s.port.start();
    assert.equal(has(s.port.features, NetFeature.CTRL_VLAN), false);
  } finally {
    s.close();
  }
});

Deno.test("ctrl cli: queue sizes: fixed device warns once and uses its size; others checked", () => {
  const fixed = open({ qsize: "1024", qfixed: "1" });
  try {
    fixed.port.configure({ pool: fixed.pool, rxd: 512, txd: 1024 });
    fixed.port.start(); // the simulated device refuses any size but 1024 when fixed
    assert.deepEqual(fixed.logs, [
      "port 0: warning: --rxd 512 ignored, the device's queue size 1024 is fixed",
    ]);
  } finally {
    fixed.close();
  }
  const free = open({ qsize: "1024" });
  try {
    free.port.configure({ pool: free.pool, rxd: 512, txd: 128 });
    free.port.start(); // the device refuses a size it was not given
    assert.deepEqual(free.logs, []);
    free.port.stop();
    for (const rxd of [300, 2048, 1]) {
      const re = rxd === 1
        ? null
        : new RegExp(`--rxd ${rxd} must be a power of two no larger than the device's 1024`);
      if (re) assert.throws(() => free.port.configure({ pool: free.pool, rxd }), re);
      else free.port.configure({ pool: free.pool, rxd });
    }
  } finally {
    free.close();
  }
});

Deno.test("ctrl cli: configuration only while stopped; stop, reconfigure, start", () => {
  const s = open({ queues: "2", gen: "on" });
  try {
    const base: PortConfig = { pool: s.pool };
    s.port.configure(base);
    s.port.start();
    const changes: Partial<PortConfig>[] = [
      { queues: 2 },
      { mtu: 9000 },
      { vlanStrip: true },
      { vlanInsert: 7 },
      { rxd: 512 },
    ];
    for (const c of changes) {
      assert.throws(
        () => s.port.configure({ ...base, ...c }),
        /^Error: port 0: cannot configure a started port; stop the port first$/,
        JSON.stringify(c),
      );
    }
    assert.throws(() => s.port.configure(base), /stop the port first/);
    // The documented flow: stop, configure, start.
    s.port.stop();
    assert.equal(s.pool.available, s.pool.count, "every buffer back");
    s.port.configure({ ...base, queues: 2, mtu: 9000, rxd: 512 });
    s.port.start();
    assert.equal(has(s.port.features, NetFeature.MQ), true);
    const pkts = new Uint32Array(32);
    let got = [0, 0];
    for (let i = 0; i < 50; i++) {
      s.port.poll();
      for (const q of [0, 1]) {
        const n = s.port.rxBurst(q, pkts, 32);
        for (let k = 0; k < n; k++) s.pool.free(pkts[k]);
        got = got.map((g, j) => (j === q ? g + n : g));
      }
    }
    assert.ok(got[0] > 0 && got[1] > 0, `both queues receive after reconfiguring: ${got}`);
  } finally {
    s.close();
  }
});

Deno.test("ctrl cli: the announce frame is a broadcast RARP request-reverse for the MAC", () => {
  const mac = parseMac("02:00:00:00:00:42");
  const out = new Uint8Array(ANNOUNCE_FRAME_BYTES + 4).fill(0xee);
  assert.equal(writeAnnounce(out, 2, mac), 60);
  const expect = new Uint8Array(60);
  expect.set([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, ...mac, 0x80, 0x35]); // RFC 903 ethertype
  expect.set([0, 1, 0x08, 0x00, 6, 4, 0, 3], 14); // Ethernet, IPv4, 6, 4, op 3
  expect.set(mac, 22); // sender hardware address; sender IP 0.0.0.0
  expect.set(mac, 32); // target hardware address; target IP 0.0.0.0
  assert.deepEqual(out.subarray(2, 62), expect);
  assert.equal(out[1], 0xee);
  assert.equal(out[62], 0xee, "nothing written outside the frame");
  assert.throws(() => writeAnnounce(out, 0, new Uint8Array(5)), /6 bytes/);
});

async function vpmd(args: string[]): Promise<{ code: number; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("../main.ts", import.meta.url).pathname, "fwd", ...args],
    stdout: "null",
    stderr: "piped",
  }).output();
  return { code: out.code, stderr: new TextDecoder().decode(out.stderr) };
}

Deno.test("ctrl cli: vpmd fwd exits 2 naming the missing feature and the flag", async () => {
  const r = await vpmd(["sim:a,ctrl_vlan=0", "sim:b", "--vlan-filter", "100", "--duration", "0.2"]);
  assert.equal(r.code, 2, r.stderr);
  assert.equal(
    r.stderr.trim(),
    "vpmd fwd: port 0: the device does not offer VIRTIO_NET_F_CTRL_VLAN, so VLAN filters " +
      "cannot be set; run without --vlan-filter",
  );
  const m = await vpmd(["sim:a", "sim:b", "--mac", "2,02:00:00:00:00:01"]);
  assert.equal(m.code, 2, m.stderr);
  assert.match(m.stderr, /^vpmd fwd: --mac 2,02:00:00:00:00:01: expected \[PORT,\]MAC/);
  const ok = await vpmd([
    "sim:a",
    "sim:b",
    "--no-promisc",
    "--allmulti",
    "--mcast",
    "01:00:5e:00:00:01",
    "--vlan-filter",
    "1,2",
    "--mac",
    "1,02:00:00:00:00:07",
    "--mtu",
    "9000",
    "--duration",
    "0.3",
    "--stats-period",
    "0",
  ]);
  assert.equal(ok.code, 0, ok.stderr);
});

Deno.test("ctrl cli: a device that refuses a command gives a CtrlCommandError (CLI exit 1)", () => {
  // The device takes the features but not CTRL_RX's commands (it answers VIRTIO_NET_ERR).
  const sim = SimTransport.fromSpec("refuse", { gen: "off" });
  const t: VirtioTransport = {
    name: "refusing",
    ringLayout: sim.ringLayout,
    dmaKinds: sim.dmaKinds,
    queueSizeFixed: sim.queueSizeFixed,
    reset: () => sim.reset(),
    getStatus: () => sim.getStatus(),
    setStatus: (s) => sim.setStatus(s),
    getDeviceFeatures: () => sim.getDeviceFeatures(),
    setDriverFeatures: (f) => sim.setDriverFeatures(f & ~bit(NetFeature.CTRL_RX)),
    readConfig: (o, n) => sim.readConfig(o, n),
    queueMaxSize: (i) => sim.queueMaxSize(i),
    setupQueue: (q) => sim.setupQueue(q),
    addMemory: (r) => sim.addMemory(r),
    notify: (i) => sim.notify(i),
    poll: () => sim.poll(),
    close: () => sim.close(),
  };
  const pool = new MbufPool({ count: 1024, kind: t.dmaKinds[0] });
  const port = new Port(0, t, { log: () => {} });
  try {
    port.configure({ pool });
    applyFilters(port, 0, parseFilterFlags({ "no-promisc": true }, 1));
    assert.throws(
      () => port.start(),
      (e: unknown) =>
        e instanceof CtrlCommandError &&
        /^port 0: promiscuous mode: the device refused the command \(ack 1\)$/.test(e.message),
    );
    assert.equal(port.started, false);
    assert.equal(pool.available, pool.count, "every buffer back after the failed start");
  } finally {
    port.close();
    t.close();
    pool.close();
  }
});
