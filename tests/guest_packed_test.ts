/**
 * Packed virtqueues (virtio 1.2, 2.8) against QEMU's own virtio-net in the guest lab
 * (tests/lib/guest.ts): the modern NIC (n1, 0000:00:05.0) and the transitional one used as modern
 * (n2, 0000:00:06.0) get `-device virtio-net-pci,...,packed=on`, and `vpmd fwd` runs with
 * `packed=1` on both: what QEMU negotiated is read back, frames are forwarded byte-exact both
 * ways (jumbo frames too, through mergeable RX buffers and multi-descriptor TX buffers), and
 * `packed=1` on a legacy interface is refused with one line and exit code 2.
 */
import assert from "assert";
import { type Guest, guestTest } from "./lib/guest.ts";
import { expectForwarded, forward, VPMD } from "./lib/guest_fwd.ts";
import { Feature } from "../mod/virtio/constants.ts";

const PACKED_BIT = 1n << BigInt(Feature.RING_PACKED);

/** The features each spec's port negotiates with QEMU (tests/lib/port_features.ts). */
async function negotiated(g: Guest, specs: string[]): Promise<bigint[]> {
  const r = await g.exec(`deno run -A tests/lib/port_features.ts ${specs.join(" ")}`, 90);
  assert.equal(r.code, 0, r.output);
  const rows = JSON.parse(r.output.trim().split("\n").pop()!) as { features: string }[];
  return rows.map((row) => BigInt(row.features));
}

guestTest(
  "packed guest: packed=1 on modern NICs with packed=on forwards byte-exact both ways, jumbo too",
  async (g, t) => {
    const bound = await g.exec(
      `${VPMD} bind --force ${g.nics.map((n) => n.pciAddress).join(" ")}`,
      90,
    );
    assert.equal(bound.code, 0, bound.output);
    const [, modern, transitional] = g.nics;
    const specs: [string, string] = [
      `${modern.pciAddress},packed=1`,
      `${transitional.pciAddress},mode=modern,packed=1`,
    ];

    await t.step("QEMU negotiates packed rings with packed=1, split rings without", async () => {
      const [a, b, plain] = await negotiated(g, [...specs, modern.pciAddress]);
      assert.notEqual(a & PACKED_BIT, 0n, `modern: 0x${a.toString(16)}`);
      assert.notEqual(b & PACKED_BIT, 0n, `transitional: 0x${b.toString(16)}`);
      assert.equal(plain & PACKED_BIT, 0n, `without packed=1: 0x${plain.toString(16)}`);
    });

    await t.step("io forwarding over packed rings, byte-exact both ways", async () => {
      const count = 2000;
      const { summary } = await forward(g, [modern, transitional], specs, async () => {
        await expectForwarded(modern, transitional, 0x21, count);
        await expectForwarded(transitional, modern, 0x22, count);
      });
      // Warm-up 200 + counted frames, each way.
      assert.equal(summary.ports[0].rxPackets, count + 200);
      assert.equal(summary.ports[1].txPackets, count + 200);
      assert.equal(summary.ports[1].rxPackets, count + 200);
      assert.equal(summary.ports[0].txPackets, count + 200);
    });

    await t.step("--mtu 9000: jumbo frames over mergeable RX and chained TX buffers", async () => {
      const sizes = [9014, 60, 4000, 1514, 2049];
      const count = 300;
      const { summary } = await forward(g, [modern, transitional], specs, async () => {
        await expectForwarded(modern, transitional, 0x23, count, sizes, 16);
        await expectForwarded(transitional, modern, 0x24, count, sizes, 16);
      }, ["--mtu", "9000"]);
      const bytes = sizes.reduce((a, s) => a + s, 0) * (count / sizes.length) + 200 * 64;
      assert.equal(summary.ports[0].rxBytes, bytes);
      assert.equal(summary.ports[1].txBytes, bytes);
    });

    await t.step("packed=1 on a legacy interface: one line, exit code 2", async () => {
      const legacySpecs = [
        `${g.nics[0].pciAddress},packed=1`,
        `${transitional.pciAddress},mode=legacy,packed=1`,
      ];
      for (const spec of legacySpecs) {
        const r = await g.exec(`${VPMD} fwd ${spec} --duration 1`, 90);
        assert.equal(r.code, 2, r.output);
        const lines = r.output.trim().split("\n");
        assert.equal(lines.length, 1, r.output);
        assert.match(lines[0], /packed=1 needs a modern \(virtio 1\.x\) device/);
      }
    });
  },
  { timeoutSec: 600, extraNicOptions: { 1: "packed=on", 2: "packed=on" } },
);
