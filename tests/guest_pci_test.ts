/**
 * The PCI transports against QEMU's virtio-net-pci in the guest lab (scripts/lab/, tests/lib/
 * guest.ts): legacy (ioperm and sysfs port IO) and modern (MMIO) forwarding with byte-exact checks
 * at the host, a transitional NIC used as modern, link changes from HMP `set_link` seen as uio
 * interrupts (and by the ISR-polling fallback), and the devices/bind/unbind commands.
 *
 * NICs (tests/lib/guest.ts): n0 legacy 0000:00:04.0, n1 modern 0000:00:05.0, n2 transitional
 * 0000:00:06.0. The guest runs the real CLI: `vpmd bind|unbind|devices` and `vpmd fwd --mode io`
 * (both directions), stopped with SIGINT; its JSON summary must show every buffer back in the pool.
 */
import assert from "assert";
import { type Guest, guestTest } from "./lib/guest.ts";
import { expectForwarded, forward, VPMD } from "./lib/guest_fwd.ts";

/** Runs `vpmd devices|bind|unbind ARGS` in the guest. */
function pciCommand(g: Guest, cmd: string, args: string[]) {
  return g.exec(`${VPMD} ${cmd} ${args.join(" ")}`, 90);
}

async function bindAll(g: Guest): Promise<void> {
  const r = await pciCommand(g, "bind", ["--force", ...g.nics.map((n) => n.pciAddress)]);
  assert.equal(r.code, 0, r.output);
}

guestTest("pci: legacy (ioperm) <-> modern forwarding, byte-exact both ways", async (g) => {
  await bindAll(g);
  const [legacy, modern] = g.nics;
  const count = 3000;
  const { summary } = await forward(
    g,
    [legacy, modern],
    [`${legacy.pciAddress},portio=ioperm`, modern.pciAddress],
    async () => {
      await expectForwarded(legacy, modern, 1, count);
      await expectForwarded(modern, legacy, 2, count);
    },
  );
  // Warm-up 200 + counted frames, each way.
  assert.equal(summary.ports[0].rxPackets, count + 200);
  assert.equal(summary.ports[1].txPackets, count + 200);
  assert.equal(summary.ports[1].rxPackets, count + 200);
});

guestTest(
  "pci: legacy (portio=sysfs) <-> transitional used as modern, byte-exact both ways",
  async (g) => {
    await bindAll(g);
    const [legacy, , transitional] = g.nics;
    await forward(
      g,
      [legacy, transitional],
      [`${legacy.pciAddress},portio=sysfs`, `${transitional.pciAddress},mode=modern`],
      async () => {
        await expectForwarded(legacy, transitional, 3, 2000);
        await expectForwarded(transitional, legacy, 4, 2000);
      },
    );
  },
);

guestTest("pci: transitional used as legacy; HMP set_link seen as link events", async (g, t) => {
  await bindAll(g);
  const [legacy, modern, transitional] = g.nics;
  await t.step("transitional NIC in mode=legacy forwards to the legacy NIC", async () => {
    await forward(
      g,
      [transitional, legacy],
      [`${transitional.pciAddress},mode=legacy`, legacy.pciAddress],
      () => expectForwarded(transitional, legacy, 5, 1000),
    );
  });
  await t.step("set_link off/on: uio interrupt (modern) and ISR polling (legacy)", async () => {
    const { output } = await forward(
      g,
      [legacy, modern],
      [`${legacy.pciAddress},irq=poll`, `${modern.pciAddress},irq=uio`],
      async (output) => {
        const events = async (port: number, state: string) => {
          const re = new RegExp(`^Port ${port}: link state change event \\(${state}\\)$`, "m");
          const end = performance.now() + 20_000;
          while (!re.test(await output())) {
            if (performance.now() > end) {
              throw new Error(`no '${state}' event on port ${port}:\n${await output()}`);
            }
            await new Promise((r) => setTimeout(r, 100));
          }
        };
        for (const [nic, port] of [[modern, 1], [legacy, 0]] as const) {
          await g.monitor(`set_link ${nic.id} off`);
          await events(port, "down");
          await g.monitor(`set_link ${nic.id} on`);
          await events(port, "up");
        }
      },
    );
    assert.equal((output.match(/link state change event/g) ?? []).length, 4, output);
  });
});

guestTest("pci: vpmd devices / bind / unbind round trip", async (g) => {
  const addrs = g.nics.map((n) => n.pciAddress);
  const listing = async () => {
    const r = await pciCommand(g, "devices", ["--json"]);
    assert.equal(r.code, 0, r.output);
    return JSON.parse(r.output.trim().split("\n").pop()!) as {
      address: string;
      kind: string;
      driver: string | null;
      mac: string | null;
      interfaces: string[];
      uio: string | null;
    }[];
  };
  const before = await listing();
  assert.deepEqual(before.map((d) => [d.address, d.kind, d.driver]), [
    [addrs[0], "legacy", "virtio-pci"],
    [addrs[1], "modern", "virtio-pci"],
    [addrs[2], "transitional", "virtio-pci"],
  ]);
  assert.deepEqual(before.map((d) => d.mac), g.nics.map((n) => n.mac));
  const if0 = before[0].interfaces[0];
  assert.match(if0, /^eth\d+$/);

  // An interface that is up in the kernel is refused without --force.
  assert.equal((await g.exec(`ip link set ${if0} up`)).code, 0);
  const refused = await pciCommand(g, "bind", [addrs[0]]);
  assert.equal(refused.code, 1);
  assert.match(refused.output, new RegExp(`interface ${if0} is up in the kernel.*--force`));
  // Clear errors for a missing device, a non-virtio device, bad usage (all exit 2, as for fwd).
  const missing = await pciCommand(g, "bind", ["0000:00:1f.7"]);
  assert.equal(missing.code, 2);
  assert.match(missing.output, /no PCI device 0000:00:1f\.7/);
  const notNet = await pciCommand(g, "bind", ["0000:00:00.0"]);
  assert.equal(notNet.code, 2);
  assert.match(notNet.output, /0000:00:00\.0 is not a virtio-net device/);
  assert.equal((await pciCommand(g, "bind", [])).code, 2);

  // bind loads uio_pci_generic itself when it is missing.
  assert.equal(
    (await g.exec("rmmod uio_pci_generic && ! [ -d /sys/bus/pci/drivers/uio_pci_generic ]")).code,
    0,
  );
  const bound = await pciCommand(g, "bind", ["--force", ...addrs]);
  assert.equal(bound.code, 0, bound.output);
  const mid = await listing();
  for (const d of mid) {
    assert.equal(d.driver, "uio_pci_generic");
    assert.match(d.uio ?? "", /^\/dev\/uio\d$/);
    assert.deepEqual(d.interfaces, []);
  }
  // MACs are read from the devices' own configuration now that no kernel driver holds them.
  assert.deepEqual(mid.map((d) => d.mac), g.nics.map((n) => n.mac));

  const unbound = await pciCommand(g, "unbind", addrs);
  assert.equal(unbound.code, 0, unbound.output);
  const after = await listing();
  for (const [i, d] of after.entries()) {
    assert.equal(d.driver, "virtio-pci");
    assert.equal(d.interfaces.length, 1, JSON.stringify(d));
    assert.equal(d.mac, g.nics[i].mac);
  }
  const carrier = await g.exec(
    `ip link set ${after[1].interfaces[0]} up && sleep 0.5 && ` +
      `cat /sys/class/net/${after[1].interfaces[0]}/carrier`,
  );
  assert.equal(carrier.output.trim(), "1", carrier.output);
});

guestTest(
  "pci: as non-root, vpmd devices lists every NIC as 'needs root'; a port says so",
  async (g) => {
    // The kernel shows a reader without CAP_SYS_ADMIN only the 64-byte header of sysfs `config`.
    const asNobody = (cmd: string) =>
      g.exec(
        `echo 'nobody:x:65534:65534:nobody:/tmp:/bin/sh' >>/etc/passwd && ` +
          `mkdir -p /tmp/deno-nobody && chown 65534 /tmp/deno-nobody && ` +
          `su nobody -s /bin/sh -c 'cd /vpmd && DENO_DIR=/tmp/deno-nobody HOME=/tmp ${cmd}'`,
        120,
      );
    const r = await asNobody(`${VPMD} devices --json`);
    assert.equal(r.code, 0, r.output);
    const rows = JSON.parse(r.output.trim().split("\n").pop()!) as {
      address: string;
      kind: string | null;
      mac: string | null;
      needsRoot: boolean;
    }[];
    // Legacy and transitional cannot be told apart from the header; the kernel's interfaces still
    // give the MACs.
    assert.deepEqual(rows.map((d) => [d.address, d.kind, d.mac, d.needsRoot]), [
      [g.nics[0].pciAddress, null, g.nics[0].mac, true],
      [g.nics[1].pciAddress, "modern", g.nics[1].mac, true],
      [g.nics[2].pciAddress, null, g.nics[2].mac, true],
    ]);
    const port = await asNobody(`${VPMD} fwd ${g.nics[2].pciAddress} --duration 1`);
    assert.equal(port.code, 2, port.output);
    assert.match(port.output, /PCI port 0000:00:06\.0 needs root: .*run vpmd as root/);
  },
);
