/**
 * Indirect descriptors (VIRTIO_F_INDIRECT_DESC; virtio 1.2, 2.7.5.3 split, 2.8.7 packed) against
 * QEMU's own virtio-net in the guest lab (tests/lib/guest.ts), which offers them by default: with
 * `indirect=1` the bit is negotiated (legacy and modern interfaces), and jumbo frames, received
 * through mergeable RX buffers and sent as several segments, each go out as one descriptor
 * pointing at an indirect table: byte-exact at the host both ways, on split and packed rings.
 */
import assert from "assert";
import { type Guest, guestTest } from "./lib/guest.ts";
import { expectForwarded, forward, VPMD } from "./lib/guest_fwd.ts";
import { Feature } from "../mod/virtio/constants.ts";

const INDIRECT_BIT = 1n << BigInt(Feature.INDIRECT_DESC);
const PACKED_BIT = 1n << BigInt(Feature.RING_PACKED);
/** Jumbo frames of up to 5 buffers of 2 KiB, and small ones in between. */
const SIZES = [9014, 60, 4000, 1514, 2049];

/** The features each spec's port negotiates with QEMU (tests/lib/port_features.ts). */
async function negotiated(g: Guest, specs: string[]): Promise<bigint[]> {
  const r = await g.exec(`deno run -A tests/lib/port_features.ts ${specs.join(" ")}`, 90);
  assert.equal(r.code, 0, r.output);
  const rows = JSON.parse(r.output.trim().split("\n").pop()!) as { features: string }[];
  return rows.map((row) => BigInt(row.features));
}

guestTest(
  "indirect guest: indirect=1 sends multi-segment jumbo frames byte-exact through QEMU",
  async (g, t) => {
    const bound = await g.exec(
      `${VPMD} bind --force ${g.nics.map((n) => n.pciAddress).join(" ")}`,
      90,
    );
    assert.equal(bound.code, 0, bound.output);
    const [legacy, modern, transitional] = g.nics;
    const split: [string, string] = [
      `${legacy.pciAddress},indirect=1`,
      `${transitional.pciAddress},mode=modern,indirect=1`,
    ];
    const packed: [string, string] = [
      `${modern.pciAddress},packed=1,indirect=1`,
      `${transitional.pciAddress},mode=modern,packed=1,indirect=1`,
    ];

    await t.step("QEMU negotiates indirect descriptors with indirect=1 only", async () => {
      const f = await negotiated(g, [...split, packed[0], modern.pciAddress]);
      for (const [i, x] of f.slice(0, 3).entries()) {
        assert.notEqual(x & INDIRECT_BIT, 0n, `port ${i}: 0x${x.toString(16)}`);
      }
      assert.equal(f[1] & PACKED_BIT, 0n);
      assert.notEqual(f[2] & PACKED_BIT, 0n);
      assert.equal(f[3] & INDIRECT_BIT, 0n, `without indirect=1: 0x${f[3].toString(16)}`);
    });

    for (
      const [kind, specs, nics] of [
        ["split (legacy <-> transitional as modern)", split, [legacy, transitional]],
        ["packed (modern <-> transitional as modern)", packed, [modern, transitional]],
      ] as const
    ) {
      await t.step(`--mtu 9000 over ${kind}: byte-exact both ways`, async () => {
        const count = 300;
        const { summary } = await forward(g, [nics[0], nics[1]], specs, async () => {
          await expectForwarded(nics[0], nics[1], 0x31, count, SIZES, 16);
          await expectForwarded(nics[1], nics[0], 0x32, count, SIZES, 16);
        }, ["--mtu", "9000"]);
        const bytes = SIZES.reduce((a, s) => a + s, 0) * (count / SIZES.length) + 200 * 64;
        assert.equal(summary.ports[0].rxBytes, bytes);
        assert.equal(summary.ports[1].txBytes, bytes);
        assert.equal(summary.ports[1].rxBytes, bytes);
        assert.equal(summary.ports[0].txBytes, bytes);
      });
    }
  },
  { timeoutSec: 600, extraNicOptions: { 1: "packed=on", 2: "packed=on" } },
);
