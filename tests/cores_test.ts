/**
 * `vpmd fwd --cores C`: streams spread over workers as testpmd spreads them over forwarding
 * cores; memory mapped once and viewed by every worker; each worker's buffers its own; every
 * frame accounted for across workers on simulated devices in every mode, with RSS, on a stop
 * signal; bad usage refused; and, against DPDK's vhost with two queue pairs, each queue served by
 * its own worker with testpmd's counts matching vpmd's.
 */
import assert from "assert";
import { DmaRegion } from "../ffi/dma.ts";
import { streamsOfCores } from "../mod/fwd/workers.ts";
import { MbufPool } from "../mod/mbuf.ts";
import { peerTest } from "./lib/peers.ts";
import { socketPath, Testpmd, testpmdPeer } from "./lib/testpmd.ts";
import { runVpmd, summaryOf } from "./lib/vpmd.ts";

const str = (cores: { rx: number; tx: number; queue: number }[][]) =>
  cores.map((ss) => ss.map((s) => `${s.rx}:${s.queue}->${s.tx}:${s.queue}`));

Deno.test("cores: streams are spread as testpmd spreads them over forwarding cores", () => {
  // Queue by queue, each port in turn; runs of consecutive streams, the last ones longer.
  assert.deepEqual(str(streamsOfCores(2, "io", 2, 2)), [
    ["0:0->1:0", "1:0->0:0"],
    ["0:1->1:1", "1:1->0:1"],
  ]);
  assert.deepEqual(str(streamsOfCores(2, "io", 3, 4)), [
    ["0:0->1:0"],
    ["1:0->0:0"],
    ["0:1->1:1", "1:1->0:1"],
    ["0:2->1:2", "1:2->0:2"],
  ]);
  assert.deepEqual(str(streamsOfCores(3, "mac", 1, 2)), [["0:0->1:0"], ["1:0->0:0", "2:0->2:0"]]);
  assert.deepEqual(str(streamsOfCores(1, "txonly", 2, 2)), [["0:0->0:0"], ["0:1->0:1"]]);
  assert.throws(() => streamsOfCores(2, "io", 1, 3), /--cores 3: there are 2 streams/);
});

Deno.test("cores: every queue has one worker: no RX or TX queue in two workers' streams", () => {
  for (const [ports, queues, cores] of [[2, 2, 2], [2, 3, 2], [3, 2, 4], [4, 4, 3], [1, 4, 3]]) {
    for (const mode of ["io", "txonly"] as const) {
      const owner = new Map<string, number>();
      streamsOfCores(ports, mode, queues, cores).forEach((ss, w) => {
        for (const s of ss) {
          for (const q of [`rx ${s.rx}:${s.queue}`, `tx ${s.tx}:${s.queue}`]) {
            assert.ok(!owner.has(q) || owner.get(q) === w, `${q} in workers ${owner.get(q)}, ${w}`);
            owner.set(q, w);
          }
        }
      });
      assert.equal(
        owner.size,
        2 * ports * queues,
        `${ports}x${queues} ${mode}: every queue served`,
      );
    }
  }
});

Deno.test("cores: a region viewed again (attach) is the same memory, and closing the view unmaps nothing", () => {
  const r = DmaRegion.create({ size: 8192, kind: "memfd" });
  try {
    const v = DmaRegion.attach(r.share());
    assert.equal(v.iova(100), r.iova(100));
    v.u32[7] = 0xdeadbeef;
    assert.equal(r.u32[7], 0xdeadbeef);
    assert.throws(() => v.alloc(64), /is full/, "the view reserves nothing");
    v.close();
    r.u8[0] = 1; // still mapped
    assert.equal(r.u8[0], 1);
  } finally {
    r.close();
  }
});

Deno.test("cores: buffers lent from a pool make a pool of their own over the same memory", () => {
  const pool = new MbufPool({ count: 64, kind: "memfd" });
  try {
    const lent = pool.lend(40);
    assert.equal(pool.available, 24);
    assert.throws(() => pool.lend(25), /25 buffers to lend, 24 free/);
    const view = DmaRegion.attach(pool.region.share());
    const mine = new MbufPool({ count: 40, kind: "memfd", slice: { region: view, bufOff: lent } });
    const taken = new Set<number>();
    for (let i = 0; i < 40; i++) {
      const m = mine.alloc();
      taken.add(mine.bufOff[m]);
      assert.equal(mine.iovaLo[m] + mine.iovaHi[m] * 2 ** 32, pool.region.iova(mine.bufOff[m]));
    }
    assert.equal(mine.alloc(), -1, "40 buffers, no more");
    assert.deepEqual([...taken].sort((a, b) => a - b), [...lent].sort((a, b) => a - b));
    for (let i = 0; i < 24; i++) assert.ok(!taken.has(pool.bufOff[pool.alloc()]), "none twice");
    mine.close(); // leaves the region mapped
    pool.bytes[0] = 1;
  } finally {
    pool.close();
  }
});

/** Run `vpmd fwd` on simulated ports with --cores; returns the summary. */
async function fwd(args: string[], seconds = "1") {
  const r = await runVpmd(["fwd", ...args, "--duration", seconds, "--stats-period", "0", "--json"]);
  assert.equal(r.code, 0, r.stderr);
  return summaryOf(r);
}

Deno.test("cores: --cores 2 on two sims with 2 queue pairs: every frame accounted for, both workers forward", async () => {
  const s = await fwd(["sim:a,queues=2", "sim:b,queues=2", "--queues", "2", "--cores", "2"]);
  assert.equal(s.accounting.ok, true, s.accounting.message);
  assert.ok(s.accounting.frames > 1000, s.accounting.message);
  assert.equal(s.poolAvailable, s.poolSize, "every buffer back in some pool");
  assert.equal(s.workers.length, 2);
  assert.deepEqual(s.workers.map((w: { streams: string[] }) => w.streams), [
    ["0:0->1:0", "1:0->0:0"],
    ["0:1->1:1", "1:1->0:1"],
  ]);
  for (const w of s.workers) {
    assert.ok(w.rxPackets > 0 && w.wallMs > 0 && w.cpuMs > 0, JSON.stringify(w));
    assert.ok(w.onCpu > 0 && w.onCpu <= 1.05 && w.busy > 0 && w.busy <= 1, JSON.stringify(w));
  }
  const frames = s.workers.reduce((a: number, w: { rxPackets: number }) => a + w.rxPackets, 0);
  assert.equal(frames, s.totals.rxPackets, "the workers' frames are the ports' frames");
  for (const p of s.ports) {
    assert.ok(p.queues.every((q: { rxPackets: number }) => q.rxPackets > 0), JSON.stringify(p));
    assert.equal(p.rxPackets, p.queues[0].rxPackets + p.queues[1].rxPackets);
  }
});

Deno.test("cores: one core (the default) forwards on the main thread and says how much it ran", async () => {
  const s = await fwd(["sim:a,queues=2", "sim:b,queues=2", "--queues", "2"]);
  assert.equal(s.accounting.ok, true, s.accounting.message);
  assert.equal(s.workers, undefined);
  const m = s.mainThread;
  assert.ok(m.wallMs > 500 && m.cpuMs > 0 && m.onCpu > 0 && m.onCpu <= 1.05, JSON.stringify(m));
});

for (const mode of ["mac", "macswap", "rxonly", "txonly"]) {
  Deno.test(`cores: --cores 2 --mode ${mode}: every frame accounted for across workers`, async () => {
    const s = await fwd([
      "sim:a,queues=2",
      "sim:b,queues=2",
      "--queues",
      "2",
      "--cores",
      "2",
      "--mode",
      mode,
    ]);
    assert.equal(s.accounting.ok, true, s.accounting.message);
    assert.ok(s.accounting.frames > 1000, s.accounting.message);
    assert.equal(s.poolAvailable, s.poolSize);
  });
}

Deno.test("cores: --cores 2 with --rss udp and paced sims (rate shared by the workers)", async () => {
  const s = await fwd([
    "sim:a,queues=2,rate=20000",
    "sim:b,queues=2,rate=20000",
    "--queues",
    "2",
    "--cores",
    "2",
    "--rss",
    "udp",
  ], "2");
  assert.equal(s.accounting.ok, true, s.accounting.message);
  for (const p of s.ports) {
    // About 2 s at 20000 frames/s, shared by the two workers' copies of the device.
    assert.ok(p.wire.generated > 20000 && p.wire.generated < 60000, JSON.stringify(p.wire));
    assert.ok(p.queues.every((q: { rxPackets: number }) => q.rxPackets > 0), JSON.stringify(p));
  }
});

Deno.test("cores: --cores 3 odd streams, one port to itself: accounted for", async () => {
  const s = await fwd(["sim:a,queues=3", "--queues", "3", "--cores", "3"]);
  assert.equal(s.accounting.ok, true, s.accounting.message);
  assert.equal(s.workers.length, 3);
});

Deno.test("cores: SIGINT while workers forward stops cleanly, every frame accounted for", async () => {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL("../main.ts", import.meta.url).pathname,
      "fwd",
      "sim:a,queues=2",
      "sim:b,queues=2",
      "--queues",
      "2",
      "--cores",
      "2",
      "--json",
    ],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const killer = setTimeout(() => child.kill("SIGKILL"), 60_000);
  try {
    // The first statistics line says the workers forward.
    const reader = child.stdout.getReader();
    let out = "";
    while (!out.includes("\n")) {
      const { value, done } = await reader.read();
      if (done) break;
      out += new TextDecoder().decode(value);
    }
    child.kill("SIGINT");
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      out += new TextDecoder().decode(value);
    }
    const status = await child.status;
    const err = new TextDecoder().decode(await new Response(child.stderr).arrayBuffer());
    assert.equal(status.code, 0, err);
    const s = JSON.parse(out.trim().split("\n").pop()!);
    assert.equal(s.stoppedBy, "SIGINT");
    assert.equal(s.accounting.ok, true, s.accounting.message);
    assert.equal(s.poolAvailable, s.poolSize);
  } finally {
    clearTimeout(killer);
  }
});

Deno.test("cores: more cores than streams, or too few buffers, is bad usage (exit 2)", async () => {
  const more = await runVpmd(["fwd", "sim:a", "sim:b", "--cores", "3", "--duration", "1"]);
  assert.equal(more.code, 2, more.stderr);
  assert.match(more.stderr, /--cores 3: there are 2 streams \(2 ports x 1 queue pair\)/);
  const zero = await runVpmd(["fwd", "sim:a", "--cores", "0", "--duration", "1"]);
  assert.equal(zero.code, 2);
  assert.match(zero.stderr, /--cores 0: expected an integer from 1 to 64/);
  const few = await runVpmd([
    "fwd",
    "sim:a,queues=2",
    "--queues",
    "2",
    "--cores",
    "2",
    "--rxd",
    "512",
    "--txd",
    "512",
    "--mbufs",
    "2100",
    "--duration",
    "1",
  ]);
  assert.equal(few.code, 2, few.stderr);
  assert.match(few.stderr, /--mbufs 2100 is too small for 2 cores/);
});

// Against DPDK's vhost PMD with two queue pairs (skipped with a hint when testpmd is missing).

peerTest(
  testpmdPeer,
  "cores: vhost-user queues=2, --cores 2: each queue in its own worker; testpmd's counts match",
  async () => {
    for (const [pmdMode, vpmdMode] of [["txonly", "rxonly"], ["rxonly", "txonly"]]) {
      const sock = socketPath("cores");
      const pmd = await Testpmd.start({
        vdev: `net_vhost0,iface=${sock},queues=2`,
        fwd: pmdMode,
        app: ["--rxq=2", "--txq=2"],
      });
      try {
        await pmd.cmd("start");
        const r = await runVpmd([
          "fwd",
          `vhost-user:${sock},queues=2`,
          "--queues",
          "2",
          "--cores",
          "2",
          "--mode",
          vpmdMode,
          "--duration",
          "2",
          "--stats-period",
          "0",
          "--json",
        ]);
        assert.equal(r.code, 0, r.stderr);
        const s = summaryOf(r);
        const p = s.ports[0];
        await pmd.cmd("stop");
        const st = pmd.stats(0);
        assert.deepEqual(s.workers.map((w: { streams: string[] }) => w.streams), [
          ["0:0->0:0"],
          ["0:1->0:1"],
        ]);
        const key = vpmdMode === "rxonly" ? "rxPackets" : "txPackets";
        for (const q of p.queues) assert.ok(q[key] > 1000, `${vpmdMode}: ${JSON.stringify(p)}`);
        assert.equal(s.poolAvailable, s.poolSize);
        if (vpmdMode === "rxonly") {
          assert.equal(p.rxErrors, 0);
          // What testpmd enqueued was received, except at most a ring of frames per queue.
          assert.ok(st.opackets >= p.rxPackets, `testpmd sent ${st.opackets}, vpmd ${p.rxPackets}`);
          assert.ok(st.opackets - p.rxPackets <= 2 * 256, `${st.opackets} vs ${p.rxPackets}`);
        } else {
          // Sent = finished by the backend; what was in a ring at the stop is dropped instead.
          assert.equal(
            st.ipackets,
            p.txPackets,
            `testpmd got ${st.ipackets}, ${p.txDropped} dropped`,
          );
          assert.equal(p.txErrors, 0);
        }
      } finally {
        await pmd.stop();
      }
    }
  },
);

for (const packed of [false, true]) {
  peerTest(
    testpmdPeer,
    `cores: vhost-user${
      packed ? " packed" : ""
    } backend killed and restarted: the workers serve both queues of the new connection`,
    async () => {
      const sock = socketPath("cores-re");
      const vdev = `net_vhost0,iface=${sock},queues=2`;
      const app = ["--rxq=2", "--txq=2"];
      let pmd = await Testpmd.start({ vdev, fwd: "txonly", app, autoStart: true });
      const child = new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          new URL("../main.ts", import.meta.url).pathname,
          "fwd",
          `vhost-user:${sock},queues=2${packed ? ",packed=1" : ""}`,
          "--queues",
          "2",
          "--cores",
          "2",
          "--mode",
          "rxonly",
          "--duration",
          "14",
          "--stats-period",
          "0.5",
          "--json",
        ],
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      const killer = setTimeout(() => child.kill("SIGKILL"), 90_000);
      try {
        const reader = child.stdout.getReader();
        let out = "";
        // Forwarding from the first backend.
        while (!/"rxPackets":[1-9]\d{3}/.test(out)) {
          const { value, done } = await reader.read();
          if (done) break;
          out += new TextDecoder().decode(value);
        }
        await pmd.kill();
        await pmd.stop();
        Deno.removeSync(sock); // the killed server left its socket file behind
        pmd = await Testpmd.start({ vdev, fwd: "txonly", app, autoStart: true });
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          out += new TextDecoder().decode(value);
        }
        const status = await child.status;
        const err = new TextDecoder().decode(await new Response(child.stderr).arrayBuffer());
        assert.equal(status.code, 0, err);
        assert.match(err, /link state change event \(down\)[\s\S]*link state change event \(up\)/);
        const st = pmd.telemetry("/ethdev/stats,0") as Record<string, { q_opackets: number[] }>;
        const q = st["/ethdev/stats"].q_opackets;
        // A queue nobody served again would take one ring of frames and no more.
        assert.ok(q[0] > 1000 && q[1] > 1000, `the second backend sent ${q[0]} and ${q[1]}`);
        const s = JSON.parse(out.trim().split("\n").pop()!);
        assert.equal(s.poolAvailable, s.poolSize, "every buffer back, old rings' included");
        assert.equal(s.ports[0].rxErrors, 0);
      } finally {
        clearTimeout(killer);
        await pmd.stop();
      }
    },
  );
}

Deno.test("cores: --pcap and --tx-pcap run on one core only: bad usage with --cores (exit 2, saying why)", async () => {
  const pcap = await runVpmd([
    "fwd",
    "sim:a,queues=2",
    "--queues",
    "2",
    "--cores",
    "2",
    "--pcap",
    "0:/tmp/vpmd-cores-never.pcap",
    "--duration",
    "1",
  ]);
  assert.equal(pcap.code, 2, pcap.stderr);
  assert.match(pcap.stderr, /--pcap runs on one core \(a capture file is written by one thread/);
  const replay = await runVpmd([
    "fwd",
    "sim:a,queues=2",
    "--queues",
    "2",
    "--cores",
    "2",
    "--tx-pcap",
    "/tmp/vpmd-cores-never.pcap",
    "--mode",
    "txonly",
    "--duration",
    "1",
  ]);
  assert.equal(replay.code, 2, replay.stderr);
  assert.match(replay.stderr, /--tx-pcap runs on one core \(a replay is one sequence of frames/);
});

Deno.test("cores: packed rings (packed=1) on two workers: every frame accounted for (io, macswap)", async () => {
  for (const mode of ["io", "macswap"]) {
    const s = await fwd([
      "sim:a,queues=2,packed=1",
      "sim:b,queues=2,packed=1",
      "--queues",
      "2",
      "--cores",
      "2",
      "--mode",
      mode,
    ]);
    assert.equal(s.accounting.ok, true, `${mode}: ${s.accounting.message}`);
    assert.ok(s.accounting.frames > 1000, s.accounting.message);
    assert.equal(s.poolAvailable, s.poolSize);
    for (const w of s.workers) assert.ok(w.rxPackets > 1000, JSON.stringify(s.workers));
    for (const p of s.ports) {
      assert.ok(p.queues.every((q: { rxPackets: number }) => q.rxPackets > 0), JSON.stringify(p));
    }
  }
});

/** `vpmd fwd ARGS` as a child whose stdout lines (JSON with --json) can be waited for. */
function spawnFwd(args: string[]) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("../main.ts", import.meta.url).pathname, "fwd", ...args],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const killer = setTimeout(() => child.kill("SIGKILL"), 90_000);
  const reader = child.stdout.getReader();
  let out = "";
  return {
    child,
    /** Read on until `re` matches what was printed (null: until the output ends). */
    async waitOut(re: RegExp | null): Promise<void> {
      while (re === null || !re.test(out)) {
        const { value, done } = await reader.read();
        if (done) return;
        out += new TextDecoder().decode(value);
      }
    },
    /** Wait for the end: exit code, the summary (last line), stderr. */
    async end() {
      try {
        await this.waitOut(null);
        const code = (await child.status).code;
        const err = new TextDecoder().decode(await new Response(child.stderr).arrayBuffer());
        const last = out.trim().split("\n").pop()!;
        return { code, err, s: code === 0 ? JSON.parse(last) : null };
      } finally {
        clearTimeout(killer);
      }
    },
  };
}

peerTest(
  testpmdPeer,
  "cores: packed vhost-user queues=2, --cores 2: testpmd -> vpmd rxonly, every frame and byte counted",
  async () => {
    const sock = socketPath("cores-pk-rx");
    const pmd = await Testpmd.start({
      vdev: `net_vhost0,iface=${sock},queues=2`,
      fwd: "txonly",
      app: ["--rxq=2", "--txq=2"],
    });
    try {
      const v = spawnFwd([
        `vhost-user:${sock},queues=2,packed=1`,
        "--queues",
        "2",
        "--cores",
        "2",
        "--mode",
        "rxonly",
        "--stats-period",
        "0.2",
        "--json",
      ]);
      // The workers forward (a first statistics line): testpmd sends, then stops, then vpmd.
      await v.waitOut(/\n/);
      await pmd.cmd("start");
      await v.waitOut(/"rxPackets":[1-9]\d{5}/);
      await pmd.cmd("stop");
      await new Promise((r) => setTimeout(r, 500));
      v.child.kill("SIGINT");
      const { code, err, s } = await v.end();
      assert.equal(code, 0, err);
      const m = pmd.log().match(/negotiated Virtio features: 0x([0-9a-f]+)/);
      assert.ok(m && (BigInt(`0x${m[1]}`) & (1n << 34n)) !== 0n, "backend negotiated packed");
      const p = s.ports[0];
      const st = pmd.stats(0);
      assert.deepEqual(s.workers.map((w: { streams: string[] }) => w.streams), [
        ["0:0->0:0"],
        ["0:1->0:1"],
      ]);
      for (const q of p.queues) assert.ok(q.rxPackets > 1000, JSON.stringify(p));
      assert.equal(p.rxPackets, st.opackets, `testpmd sent ${st.opackets}`);
      assert.equal(p.rxBytes, st.obytes, `testpmd sent ${st.obytes} bytes`);
      assert.equal(p.rxErrors + p.rxNoMbuf + p.rxDropped, 0, JSON.stringify(p));
      assert.equal(s.poolAvailable, s.poolSize);
    } finally {
      await pmd.stop();
    }
  },
);

peerTest(
  testpmdPeer,
  "cores: packed vhost-user queues=2, --cores 2: vpmd txonly -> testpmd, every frame and byte counted",
  async () => {
    const sock = socketPath("cores-pk-tx");
    const pmd = await Testpmd.start({
      vdev: `net_vhost0,iface=${sock},queues=2`,
      fwd: "rxonly",
      app: ["--rxq=2", "--txq=2"],
    });
    try {
      await pmd.cmd("start");
      const r = await runVpmd([
        "fwd",
        `vhost-user:${sock},queues=2,packed=1`,
        "--queues",
        "2",
        "--cores",
        "2",
        "--mode",
        "txonly",
        "--duration",
        "2",
        "--stats-period",
        "0",
        "--json",
      ]);
      assert.equal(r.code, 0, r.stderr);
      const s = summaryOf(r);
      const p = s.ports[0];
      await pmd.cmd("stop");
      const st = pmd.stats(0);
      for (const q of p.queues) assert.ok(q.txPackets > 1000, JSON.stringify(p));
      // Sent = finished by the backend; what was in a ring at the stop is dropped instead.
      assert.equal(st.ipackets, p.txPackets, `testpmd got ${st.ipackets}, ${p.txDropped} dropped`);
      assert.equal(st.ibytes, p.txBytes);
      assert.equal(p.txErrors, 0);
      assert.equal(s.poolAvailable, s.poolSize);
    } finally {
      await pmd.stop();
    }
  },
);
