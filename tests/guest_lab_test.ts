/**
 * Proves the guest lab (scripts/lab/) that the PCI tests stand on: the guest boots, deno runs the
 * repo's code from the 9p share, the exit status reaches the host, the three NICs have the expected
 * PCI identities and virtio capabilities, frames from the host generator cross a bridge in the
 * guest byte-exact in both directions, HMP set_link reaches the guest, dpdk-testpmd runs there,
 * and a hung guest is killed at its time limit.
 */
import assert from "assert";
import { peerTest } from "./lib/peers.ts";
import {
  expectedFrame,
  FrameChecker,
  generate,
  type Guest,
  guestLab,
  guestTest,
  parseMac,
  runInGuest,
} from "./lib/guest.ts";

peerTest(
  guestLab,
  "guest lab: deno runs the repo's code from the 9p share; status reaches the host",
  async () => {
    const r = await runInGuest({
      timeoutSec: 120,
      script: [
        "cat > /tmp/frame.ts <<'EOF'",
        'import { checkTestFrame, FrameCheck, writeTestFrame } from "/vpmd/mod/testframe.ts";',
        "const b = new Uint8Array(128), out = new Uint32Array(4);",
        "const n = writeTestFrame(b, 0, 128, 3, 41, new Uint8Array(6).fill(255), new Uint8Array(6));",
        "const ok = checkTestFrame(b, 0, n, out) === FrameCheck.OK;",
        'console.log("guest-deno", Deno.version.deno, ok, out[0], out[1]);',
        "EOF",
        "deno run -A /tmp/frame.ts",
        'echo "cwd=$(pwd) hugepages=$(cat /proc/sys/vm/nr_hugepages)"',
        "exit 42",
      ].join("\n"),
    });
    assert.equal(r.code, 42, r.output);
    assert.match(
      r.output,
      new RegExp(`guest-deno ${Deno.version.deno.replace(/\./g, "\\.")} true 3 41`),
    );
    assert.match(r.output, /cwd=\/vpmd hugepages=128/);
  },
);

/** Vendor-specific (virtio) capability cfg_types in a PCI config space dump (virtio 1.2 4.1.4). */
function virtioCapTypes(config: Uint8Array): number[] {
  const types: number[] = [];
  // PCI status register bit 4: a capability list starts at the pointer at 0x34.
  if (!(config[0x06] & 0x10)) return types;
  let p = config[0x34] & 0xfc;
  for (let hops = 0; p !== 0 && hops < 48; hops++) {
    if (config[p] === 0x09) types.push(config[p + 3]); // cap_vndr 0x09, cfg_type at +3
    p = config[p + 1] & 0xfc;
  }
  return types.sort();
}

function hex(s: string): Uint8Array {
  const t = s.replace(/\s+/g, "");
  return Uint8Array.from(t.match(/../g) ?? [], (h) => parseInt(h, 16));
}

/** Kernel interface name of the guest NIC with this MAC. */
async function ifaceOf(g: Guest, mac: string): Promise<string> {
  const r = await g.exec(
    `for i in /sys/class/net/*; do [ "$(cat $i/address)" = "${mac}" ] && basename $i; done`,
  );
  const name = r.output.trim();
  assert.match(name, /^eth\d+$/, `no interface with MAC ${mac}: ${r.output}`);
  return name;
}

guestTest(
  "guest lab: NIC identities, bridge traffic both ways byte-exact, set_link",
  async (g, t) => {
    await t.step("three NICs with the expected ids and capabilities", async () => {
      const want = [
        { kind: "legacy", id: "0x1af4 0x1000", caps: [] },
        { kind: "modern", id: "0x1af4 0x1041", caps: [1, 2, 3, 4] },
        { kind: "transitional", id: "0x1af4 0x1000", caps: [1, 2, 3, 4] },
      ];
      for (let i = 0; i < 3; i++) {
        const n = g.nics[i];
        assert.equal(n.kind, want[i].kind);
        const d = `/sys/bus/pci/devices/${n.pciAddress}`;
        const r = await g.exec(
          `echo $(cat ${d}/vendor ${d}/device ${d}/subsystem_device); ` +
            `basename $(readlink ${d}/driver); od -An -tx1 -v ${d}/config`,
        );
        assert.equal(r.code, 0, r.output);
        const [ids, driver, ...cfg] = r.output.split("\n");
        assert.equal(ids.split(" ").slice(0, 2).join(" "), want[i].id, `${n.pciAddress}: ${ids}`);
        assert.equal(driver, "virtio-pci");
        const config = hex(cfg.join(""));
        assert.ok(config.length >= 256, `config space of ${n.pciAddress}: ${config.length} bytes`);
        // common, notify, ISR, device config (PCI config access, type 5, is optional in QEMU)
        const caps = virtioCapTypes(config).filter((c) => c !== 5);
        assert.deepEqual(caps, want[i].caps, `${n.kind} NIC ${n.pciAddress} virtio caps`);
        if (i !== 1) assert.equal(ids.split(" ")[2], "0x0001", "legacy subsystem id 1 = network");
      }
    });

    const [if0, if1] = [await ifaceOf(g, g.nics[0].mac), await ifaceOf(g, g.nics[1].mac)];
    const up = await g.exec(
      `brctl addbr br0 && ` +
        `brctl addif br0 ${if0} && brctl addif br0 ${if1} && ` +
        `ip link set ${if0} up && ip link set ${if1} up && ip link set br0 up && ` +
        `sleep 1 && cat /sys/class/net/${if0}/statistics/rx_packets`,
    );
    assert.equal(up.code, 0, up.output);
    const rx0Before = Number(up.output.trim());

    for (const [from, to, stream] of [[0, 1, 1], [1, 0, 2]]) {
      await t.step(
        `bridge ${g.nics[from].kind} -> ${g.nics[to].kind}: frames arrive byte-exact`,
        async () => {
          const count = 2000;
          const gen = {
            stream,
            sizes: [64, 128, 1000, 1514, 60],
            dst: parseMac("02:00:00:00:00:99"), // unknown unicast: the bridge floods it
            src: parseMac(`02:00:00:00:0${from}:01`),
          };
          const checker = new FrameChecker(g.nics[to].wire, { record: true, firstSeq: 0 });
          try {
            const sent = await generate(g.nics[from].wire, {
              ...gen,
              count,
              rate: 2000,
              flow: checker,
            });
            assert.equal(sent.sent, count);
            // When the host is loaded (other TCG guests, benchmarks) QEMU's threads stall for tens
            // of ms and an open-loop sender overflowed the UDP link (seen: 63 of 2000 lost at load
            // 4.8 on 2 cores); the flow window prevents that. Nothing may be corrupted, reordered
            // or invented.
            await checker.waitFor(count, 30, 2);
            await checker.settle(300);
            const c = checker.counts;
            assert.ok(
              c.ok >= count * 0.99,
              `only ${c.ok} of ${count} frames arrived: ${JSON.stringify(c)}`,
            );
            assert.ok(c.ok <= count, JSON.stringify(c));
            assert.equal(c.bad, 0);
            assert.equal(c.reordered, 0, JSON.stringify(c));
            let mine = 0;
            for (const f of checker.frames) {
              if (f.length < 58 || f[42] !== 0x56) continue; // the guest's own frames (IPv6 etc.)
              const seq = ((f[50] << 24) | (f[51] << 16) | (f[52] << 8) | f[53]) >>> 0;
              assert.deepEqual(f, expectedFrame(seq, gen), `frame ${seq}`);
              mine++;
            }
            assert.equal(mine, c.ok);
          } finally {
            checker.detach();
          }
        },
      );
    }

    await t.step("the guest kernel counted the frames", async () => {
      const r = await g.exec(`cat /sys/class/net/${if0}/statistics/rx_packets`);
      assert.ok(
        Number(r.output) - rx0Before >= 1900,
        `${if0} rx_packets ${rx0Before} -> ${r.output}`,
      );
    });

    await t.step("HMP set_link off/on reaches the guest", async () => {
      const carrier = `cat /sys/class/net/${if1}/carrier`;
      await g.monitor(`set_link ${g.nics[1].id} off`);
      assert.equal((await g.exec(`sleep 0.3; ${carrier}`)).output.trim(), "0");
      const info = await g.monitor("info network");
      assert.match(info, new RegExp(`${g.nics[1].id}:`), info);
      await g.monitor(`set_link ${g.nics[1].id} on`);
      assert.equal((await g.exec(`sleep 0.3; ${carrier}`)).output.trim(), "1");
      await assert.rejects(() => g.monitor("definitely_not_a_command"), /unknown command/);
    });

    await t.step("extra NIC options reach QEMU's device", async () => {
      const qtree = await g.monitor("info qtree");
      // The PCI function's block (class line, then its virtio-net-device) up to the next device.
      const at = qtree.indexOf(`addr ${g.nics[2].pciAddress.slice(5)},`);
      assert.ok(at >= 0, "transitional NIC not in info qtree");
      const next = qtree.indexOf("dev: virtio-net-pci", at);
      const props = qtree.slice(at, next < 0 ? undefined : next);
      assert.match(props, new RegExp(`mac = "${g.nics[2].mac}"`), props);
      assert.match(props, /rx_queue_size = 1024/, props);
      assert.match(props, /ctrl_vlan = false/, props);
    });
  },
  { extraNicOptions: { 2: "rx_queue_size=1024,ctrl_vlan=off" } },
);

peerTest(guestLab, "guest lab: a hung guest is killed at its time limit", async () => {
  const t0 = performance.now();
  await assert.rejects(
    () => runInGuest({ timeoutSec: 12, script: "echo hanging; sleep 600" }),
    /timed out/,
  );
  assert.ok(performance.now() - t0 < 20_000);
});

/** Move a guest NIC from virtio-pci to uio_pci_generic (what `vpmd bind` does, in shell). */
function bindUioScript(addr: string): string {
  const d = `/sys/bus/pci/devices/${addr}`;
  return `echo ${addr} > ${d}/driver/unbind && echo uio_pci_generic > ${d}/driver_override && ` +
    `echo ${addr} > /sys/bus/pci/drivers_probe && [ -d ${d}/uio ]`;
}

guestTest("guest lab: dpdk-testpmd io-forwards legacy -> modern in the guest", async (g) => {
  const [legacy, modern] = [g.nics[0], g.nics[1]];
  const bind = await g.exec(
    `${bindUioScript(legacy.pciAddress)} && ${bindUioScript(modern.pciAddress)}`,
  );
  assert.equal(bind.code, 0, bind.output);
  const pmd = await g.spawn(
    `exec timeout -s INT 90 dpdk-testpmd -l 0,1 -m 128 --file-prefix lab ` +
      `-a ${legacy.pciAddress} -a ${modern.pciAddress} -- --forward-mode=io ` +
      `--total-num-mbufs=4096 --auto-start --stats-period 3600 --nb-cores=1`,
  );
  await pmd.waitForOutput(/io packet forwarding/, 60);
  // Warm-up: testpmd prints its forwarding line before its ports take frames.
  const warm = new FrameChecker(modern.wire);
  await generate(legacy.wire, { count: 200, rate: 1000, stream: 0x7f, flow: warm });
  assert.ok(await warm.waitFor(150, 30, 5), `warm-up: ${JSON.stringify(warm.counts)}`);
  await warm.settle(300);
  warm.detach();
  const gen = { stream: 7, sizes: [64, 600, 1514], src: parseMac("02:00:00:00:00:07") };
  const checker = new FrameChecker(modern.wire, { record: true, firstSeq: 0 });
  try {
    const count = 2000;
    await generate(legacy.wire, { ...gen, count, rate: 2000, flow: checker });
    await checker.waitFor(count, 30, 2);
    await checker.settle(300);
    const c = checker.counts;
    assert.ok(
      c.ok >= count * 0.99,
      `only ${c.ok} of ${count} frames arrived: ${JSON.stringify(c)}`,
    );
    assert.equal(c.bad + c.reordered, 0, JSON.stringify(c));
    for (const f of checker.frames) {
      const seq = ((f[50] << 24) | (f[51] << 16) | (f[52] << 8) | f[53]) >>> 0;
      assert.deepEqual(f, expectedFrame(seq, gen), `frame ${seq}`);
    }
    assert.equal(checker.frames.length, c.ok, "testpmd sent nothing but our frames");
  } finally {
    checker.detach();
    await g.exec("killall -INT dpdk-testpmd");
  }
  const end = await pmd.wait(30);
  assert.match(end.output, /Bye/, end.output);
});
