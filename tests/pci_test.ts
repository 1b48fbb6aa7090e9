/**
 * Host-side tests of the PCI code that need no device: the generated ELF stub library, virtio
 * capability parsing from configuration spaces captured from QEMU 7.2's virtio-net-pci in the guest
 * lab, and sysfs enumeration, the devices/bind commands and both PCI transports on a fake sysfs
 * tree (BARs are regular files: sysfs `resourceN` for the legacy I/O BAR is read with pread/pwrite,
 * the modern memory BAR is mmap'd, exactly as on the real device).
 */
import assert from "assert";
import { buildSharedObject, elfHash, loadSharedObject } from "../ffi/elf.ts";
import { PORT_IO_STUBS } from "../ffi/portio.ts";
import {
  listCapabilities,
  msixEnabled,
  parseVirtioCaps,
  PciCommand,
  virtioNetKind,
} from "../mod/pci/config.ts";
import { listDevices, runPciCommand } from "../cli/pci.ts";
import { PolledConfigChange } from "../mod/pci/interrupts.ts";
import { normalizeAddress, parseResources, Sysfs } from "../mod/pci/sysfs.ts";
import type { IoBar } from "../mod/pci/io_bar.ts";
import { PciTransport } from "../mod/transport/pci.ts";
import { LegacyPciTransport, LegacyReg } from "../mod/transport/pci_legacy.ts";
import { CommonCfg } from "../mod/transport/pci_modern.ts";
import { TransportEvent } from "../mod/virtio/transport.ts";
import type { QueueMemory } from "../mod/virtio/transport.ts";
import { bit, NetConfig, NetFeature } from "../mod/virtio/constants.ts";

// Configuration spaces (first bytes; the rest is zero) of the lab's NICs, bound to virtio-pci
// (MSI-X enabled by the kernel driver): `od -An -tx1 /sys/bus/pci/devices/ADDR/config`.
const LEGACY_CONFIG = `
f4 1a 00 10 07 05 10 00 00 00 00 02 00 00 00 00
41 c0 00 00 00 a0 bf fe 00 00 00 00 00 00 00 00
00 00 00 00 00 00 00 00 00 00 00 00 f4 1a 01 00
00 00 00 00 40 00 00 00 00 00 00 00 0a 01 00 00
11 00 03 80 01 00 00 00 01 08 00 00 00 00 00 00`;
const MODERN_CONFIG = `
f4 1a 41 10 07 05 10 00 01 00 00 02 00 00 00 00
00 00 00 00 00 b0 bf fe 00 00 00 00 00 00 00 00
0c 80 be fe 00 00 00 00 00 00 00 00 f4 1a 00 11
00 00 00 00 98 00 00 00 00 00 00 00 0a 01 00 00
09 00 10 01 04 00 00 00 00 00 00 00 00 10 00 00
09 40 10 03 04 00 00 00 00 10 00 00 00 10 00 00
09 50 10 04 04 00 00 00 00 20 00 00 00 10 00 00
09 60 14 02 04 00 00 00 00 30 00 00 00 10 00 00
04 00 00 00 09 70 14 05 00 00 00 00 00 00 00 00
00 00 00 00 00 00 00 00 11 84 03 80 01 00 00 00
01 08 00 00 00 00 00 00 00 00 00 00 00 00 00 00`;
const TRANSITIONAL_CONFIG = `
f4 1a 00 10 07 05 10 00 00 00 00 02 00 00 00 00
61 c0 00 00 00 c0 bf fe 00 00 00 00 00 00 00 00
0c c0 be fe 00 00 00 00 00 00 00 00 f4 1a 01 00
00 00 00 00 98 00 00 00 00 00 00 00 0b 01 00 00
09 00 10 01 04 00 00 00 00 00 00 00 00 10 00 00
09 40 10 03 04 00 00 00 00 10 00 00 00 10 00 00
09 50 10 04 04 00 00 00 00 20 00 00 00 10 00 00
09 60 14 02 04 00 00 00 00 30 00 00 00 10 00 00
04 00 00 00 09 70 14 05 00 00 00 00 00 00 00 00
00 00 00 00 00 00 00 00 11 84 03 80 01 00 00 00
01 08 00 00 00 00 00 00 00 00 00 00 00 00 00 00`;
const LEGACY_RESOURCE = `0x000000000000c040 0x000000000000c05f 0x0000000000040101
0x00000000febfa000 0x00000000febfafff 0x0000000000040200
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
`;
const MODERN_RESOURCE = `0x0000000000000000 0x0000000000000000 0x0000000000000000
0x00000000febfb000 0x00000000febfbfff 0x0000000000040200
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x00000000febe8000 0x00000000febebfff 0x000000000014220c
0x0000000000000000 0x0000000000000000 0x0000000000000000
`;

function config(hex: string): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(256);
  out.set(hex.trim().split(/\s+/).map((h) => parseInt(h, 16)));
  return out;
}

Deno.test("elf: a generated shared object is dlopen'ed and its functions called", () => {
  // lea eax, [rdi + rsi]; ret   |   mov eax, edi; sub eax, esi; ret   |   ret
  const fns = [
    { name: "add", code: Uint8Array.of(0x8d, 0x04, 0x37, 0xc3) },
    { name: "sub", code: Uint8Array.of(0x89, 0xf8, 0x29, 0xf0, 0xc3) },
    { name: "nop", code: Uint8Array.of(0xc3) },
  ];
  const sig = {
    add: { parameters: ["u32", "u32"], result: "u32" },
    sub: { parameters: ["u32", "u32"], result: "u32" },
    nop: { parameters: [], result: "void" },
  } as const;
  const a = loadSharedObject("vpmd-test-a.so", fns, sig);
  try {
    assert.equal(a.symbols.add(40, 2), 42);
    assert.equal(a.symbols.add(0xffffffff, 2), 1);
    assert.equal(a.symbols.sub(10, 3), 7);
    a.symbols.nop();
  } finally {
    a.close();
  }
  // A second library after the first is gone (same memfd number reused) is really the new one.
  const b = loadSharedObject("vpmd-test-b.so", [{ name: "sub", code: fns[1].code }], {
    sub: sig.sub,
  });
  try {
    assert.equal(b.symbols.sub(100, 1), 99);
  } finally {
    b.close();
  }
});

Deno.test("elf: image layout and SysV hash", () => {
  assert.equal(elfHash(""), 0);
  assert.equal(elfHash("printf"), 0x077905a6); // gABI example value
  const img = buildSharedObject("vpmd-portio.so", PORT_IO_STUBS);
  assert.deepEqual(Array.from(img.subarray(0, 4)), [0x7f, 0x45, 0x4c, 0x46]);
  const v = new DataView(img.buffer);
  assert.equal(v.getUint16(16, true), 3); // ET_DYN
  assert.equal(v.getUint16(18, true), 62); // EM_X86_64
  // The stubs' machine code is in the image (in dx, al ... ; out dx, eax).
  const text = Array.from(img).map((b) => b.toString(16).padStart(2, "0")).join("");
  assert.ok(text.includes("89faec0fb6c0c3"), "inb stub");
  assert.ok(text.includes("89fa89f0efc3"), "outl stub");
  assert.throws(
    () => buildSharedObject("big.so", [{ name: "x", code: new Uint8Array(5000) }]),
    /larger than one page/,
  );
});

Deno.test("pci config: virtio capabilities of QEMU's modern, transitional and legacy NICs", () => {
  const modern = config(MODERN_CONFIG);
  assert.deepEqual(listCapabilities(modern).map((c) => [c.id, c.offset]), [
    [0x11, 0x98], // MSI-X
    [0x09, 0x84], // virtio PCI_CFG
    [0x09, 0x70], // notify
    [0x09, 0x60], // device
    [0x09, 0x50], // ISR
    [0x09, 0x40], // common
  ]);
  const caps = parseVirtioCaps(modern);
  assert.deepEqual(caps, {
    common: { bar: 4, offset: 0x0000, length: 0x1000 },
    isr: { bar: 4, offset: 0x1000, length: 0x1000 },
    device: { bar: 4, offset: 0x2000, length: 0x1000 },
    notify: { bar: 4, offset: 0x3000, length: 0x1000 },
    notifyOffMultiplier: 4,
  });
  assert.equal(virtioNetKind(modern), "modern");
  assert.equal(virtioNetKind(config(TRANSITIONAL_CONFIG)), "transitional");
  assert.equal(virtioNetKind(config(LEGACY_CONFIG)), "legacy");
  assert.equal(parseVirtioCaps(config(LEGACY_CONFIG)).common, null);
  // MSI-X was enabled by the kernel driver when these were captured.
  assert.equal(msixEnabled(config(LEGACY_CONFIG)), true);
  const noMsix = config(LEGACY_CONFIG);
  noMsix[0x43] &= 0x7f;
  assert.equal(msixEnabled(noMsix), false);
});

Deno.test("pci config: not virtio-net, corrupt capability lists, truncated caps", () => {
  const other = config(MODERN_CONFIG);
  other[0] = 0x86; // Intel
  other[1] = 0x80;
  assert.equal(virtioNetKind(other), null);
  const blk = config(TRANSITIONAL_CONFIG);
  blk[0x2e] = 2; // subsystem id 2 = block device
  assert.equal(virtioNetKind(blk), null);
  assert.equal(virtioNetKind(new Uint8Array(16)), null);
  const loop = config(MODERN_CONFIG);
  loop[0x41] = 0x98; // the last capability (common, 0x40) points back to the first
  assert.throws(() => parseVirtioCaps(loop), /corrupt PCI capability list/);
  const intoHeader = config(MODERN_CONFIG);
  intoHeader[0x34] = 0x10;
  assert.throws(() => listCapabilities(intoHeader), /corrupt PCI capability list/);
  const shortCap = config(TRANSITIONAL_CONFIG);
  shortCap[0x72] = 0x10; // notify cap too short for notify_off_multiplier: ignored
  const caps = parseVirtioCaps(shortCap);
  assert.equal(caps.notify, null);
  assert.equal(virtioNetKind(shortCap), "legacy"); // no usable modern interface left
  const badBar = config(MODERN_CONFIG);
  badBar[0x44] = 7; // common cfg in a reserved BAR number: ignored
  assert.equal(parseVirtioCaps(badBar).common, null);
});

Deno.test("pci sysfs: resources and addresses", () => {
  assert.deepEqual(parseResources(MODERN_RESOURCE)[4], {
    index: 4,
    start: 0xfebe8000,
    size: 0x4000,
    kind: "mem",
  });
  assert.deepEqual(parseResources(LEGACY_RESOURCE)[0], {
    index: 0,
    start: 0xc040,
    size: 0x20,
    kind: "io",
  });
  assert.equal(parseResources(LEGACY_RESOURCE)[2].kind, "none");
  assert.equal(normalizeAddress("00:04.0"), "0000:00:04.0");
  assert.equal(normalizeAddress("0000:00:1F.7"), "0000:00:1f.7");
  assert.throws(() => normalizeAddress("eth0"), /not a PCI address/);
});

/** A fake /sys with the three lab NICs; BAR files are regular files. */
function fakeSysfs(): { root: string; sysfs: Sysfs; cleanup: () => void } {
  const root = Deno.makeTempDirSync({ prefix: "vpmd-sysfs-" });
  const dev = (a: string) => `${root}/bus/pci/devices/${a}`;
  Deno.mkdirSync(`${root}/bus/pci/drivers/virtio-pci`, { recursive: true });
  Deno.mkdirSync(`${root}/bus/pci/drivers/uio_pci_generic`, { recursive: true });
  const add = (a: string, cfg: string, res: string, driver: string | null, iface?: string) => {
    Deno.mkdirSync(dev(a), { recursive: true });
    Deno.writeFileSync(`${dev(a)}/config`, config(cfg));
    Deno.writeTextFileSync(`${dev(a)}/resource`, res);
    if (driver) Deno.symlinkSync(`${root}/bus/pci/drivers/${driver}`, `${dev(a)}/driver`);
    if (iface) {
      Deno.mkdirSync(`${dev(a)}/virtio0/net/${iface}`, { recursive: true });
      Deno.mkdirSync(`${root}/class/net/${iface}`, { recursive: true });
      Deno.writeTextFileSync(`${root}/class/net/${iface}/flags`, "0x1003\n");
      Deno.writeTextFileSync(`${root}/class/net/${iface}/carrier`, "1\n");
      Deno.writeTextFileSync(`${root}/class/net/${iface}/address`, "52:54:00:12:34:10\n");
    }
  };
  add("0000:00:04.0", LEGACY_CONFIG, LEGACY_RESOURCE, "virtio-pci", "eth0");
  add("0000:00:05.0", MODERN_CONFIG, MODERN_RESOURCE, "uio_pci_generic");
  add(
    "0000:00:06.0",
    TRANSITIONAL_CONFIG,
    MODERN_RESOURCE.replace(/^.*\n/, LEGACY_RESOURCE.split("\n")[0] + "\n"),
    null,
  );
  const host = config(LEGACY_CONFIG);
  host.set([0x86, 0x80, 0x37, 0x12]); // an Intel host bridge
  Deno.mkdirSync(dev("0000:00:00.0"));
  Deno.writeFileSync(`${dev("0000:00:00.0")}/config`, host);
  // Modern BAR4 (16 KiB): device config MAC + status, num_queues 3, queue sizes 256.
  const bar4 = new Uint8Array(0x4000);
  bar4.set([0x52, 0x54, 0x00, 0x12, 0x34, 0x11, 0x01, 0x00], 0x2000);
  bar4[CommonCfg.NUM_QUEUES] = 3;
  bar4[CommonCfg.QUEUE_SIZE + 1] = 1; // 256
  bar4[CommonCfg.QUEUE_NOTIFY_OFF] = 5;
  Deno.writeFileSync(`${dev("0000:00:05.0")}/resource4`, bar4);
  Deno.writeFileSync(`${dev("0000:00:06.0")}/resource4`, bar4);
  // Legacy BAR0 (32 bytes; MSI-X is off on an unbound function: config at 20).
  const bar0 = new Uint8Array(0x20);
  new DataView(bar0.buffer).setUint32(LegacyReg.DEVICE_FEATURES, 0x79bf8064, true);
  new DataView(bar0.buffer).setUint16(LegacyReg.QUEUE_SIZE, 256, true);
  bar0.set([0x52, 0x54, 0x00, 0x12, 0x34, 0x12, 0x01, 0x00], LegacyReg.DEVICE_CONFIG);
  Deno.writeFileSync(`${dev("0000:00:06.0")}/resource0`, bar0);
  const noMsix = config(TRANSITIONAL_CONFIG);
  noMsix[0x9b] &= 0x7f; // MSI-X off (uio_pci_generic does not enable it)
  Deno.writeFileSync(`${dev("0000:00:06.0")}/config`, noMsix);
  return {
    root,
    sysfs: new Sysfs(root),
    cleanup: () => Deno.removeSync(root, { recursive: true }),
  };
}

Deno.test("pci sysfs: enumeration and devices listing on a fake tree", () => {
  const { sysfs, cleanup } = fakeSysfs();
  try {
    assert.deepEqual(sysfs.addresses(), [
      "0000:00:00.0",
      "0000:00:04.0",
      "0000:00:05.0",
      "0000:00:06.0",
    ]);
    const rows = listDevices(sysfs);
    assert.deepEqual(
      rows.map((r) => [r.address, r.kind, r.driver, r.mac, r.link, r.interfaces]),
      [
        ["0000:00:04.0", "legacy", "virtio-pci", "52:54:00:12:34:10", "up", ["eth0"]],
        ["0000:00:05.0", "modern", "uio_pci_generic", "52:54:00:12:34:11", "up", []],
        ["0000:00:06.0", "transitional", null, "52:54:00:12:34:12", "up", []],
      ],
    );
    assert.equal(sysfs.function("0000:00:04.0").uioDevice(), null);
  } finally {
    cleanup();
  }
});

Deno.test("pci commands: clear errors for bad addresses, kernel-held devices, usage", async () => {
  const { sysfs, cleanup } = fakeSysfs();
  const errors: string[] = [];
  const origError = console.error;
  const origLog = console.log;
  console.error = (m: string) => errors.push(m);
  console.log = () => {};
  try {
    assert.equal(await runPciCommand("bind", ["0000:00:04.0"], sysfs), 1);
    assert.match(errors.pop()!, /interface eth0 is up in the kernel.*--force/);
    // A missing device or a bad address is bad usage, found before anything is moved.
    assert.equal(await runPciCommand("bind", ["0000:00:09.0"], sysfs), 2);
    assert.match(errors.pop()!, /no PCI device 0000:00:09\.0/);
    assert.equal(await runPciCommand("bind", ["0000:00:00.0"], sysfs), 2);
    assert.match(errors.pop()!, /0000:00:00\.0 is not a virtio-net device \(8086:1237\)/);
    assert.equal(await runPciCommand("unbind", ["nonsense"], sysfs), 2);
    assert.match(errors.pop()!, /'nonsense' is not a PCI address/);
    assert.equal(await runPciCommand("bind", ["--force", "0000:00:04.0", "00:09.0"], sysfs), 2);
    assert.match(errors.pop()!, /no PCI device 0000:00:09\.0/);
    assert.equal(sysfs.function("0000:00:04.0").driver(), "virtio-pci", "00:04.0 was not moved");
    assert.equal(await runPciCommand("bind", [], sysfs), 2);
    assert.equal(await runPciCommand("devices", ["--bogus"], sysfs), 2);
    assert.equal(await runPciCommand("devices", ["--json"], sysfs), 0);
  } finally {
    console.error = origError;
    console.log = origLog;
    cleanup();
  }
});

Deno.test("pci transport: spec errors (options, kernel driver, wrong mode, not virtio)", () => {
  const { sysfs, cleanup } = fakeSysfs();
  try {
    const open = (a: string, o: Record<string, string> = {}) => PciTransport.fromSpec(a, o, sysfs);
    assert.throws(() => open("0000:00:05.0", { speed: "fast" }), /unknown option 'speed'/);
    assert.throws(() => open("0000:00:05.0", { portio: "mmio" }), /portio=mmio is not one of/);
    assert.throws(
      () => open("0000:00:04.0"),
      /bound to the kernel driver virtio-pci \(interface eth0\).*vpmd bind 0000:00:04\.0/,
    );
    assert.throws(() => open("0000:00:05.0", { mode: "legacy" }), /modern-only device/);
    assert.throws(() => open("0000:00:05.0", { portio: "sysfs" }), /modern-only device/);
    assert.throws(() => open("0000:00:06.0", { mode: "modern", portio: "sysfs" }), /portio=/);
    assert.throws(() => open("0000:00:00.0"), /not a virtio-net device \(8086:1237/);
    assert.throws(() => open("0000:00:07.0"), /no PCI device 0000:00:07\.0/);
    assert.throws(() => open("0000:00:05.0", { irq: "uio" }), /no \/dev\/uio device/);
    // A transitional function is driven as modern unless told otherwise. (Never the ioperm path
    // here: on a machine where ioperm works, the fake BAR's port numbers could be real ports.)
    for (
      const [opts, name] of [
        [{}, /^0000:00:06\.0 \(transitional as modern, poll link events\)$/],
        [{ portio: "sysfs" }, /^0000:00:06\.0 \(legacy, sysfs, poll link events\)$/],
      ] as const
    ) {
      const t = open("0000:00:06.0", opts);
      try {
        assert.match(t.name, name);
      } finally {
        t.close();
      }
    }
  } finally {
    cleanup();
  }
});

const fakeQueue = (index: number, size: number, desc: number, avail: number, used: number) =>
  ({
    index,
    size,
    region: null,
    descOffset: 0,
    availOffset: 0,
    usedOffset: 0,
    descIova: desc,
    availIova: avail,
    usedIova: used,
  }) as unknown as QueueMemory;

Deno.test("pci transport: modern register layout on a file-backed BAR", () => {
  const { root, sysfs, cleanup } = fakeSysfs();
  const bar = `${root}/bus/pci/devices/0000:00:05.0/resource4`;
  try {
    const t = PciTransport.fromSpec("0000:00:05.0", {}, sysfs);
    try {
      assert.match(t.name, /^0000:00:05\.0 \(modern, poll link events\)$/);
      assert.equal(t.queueSizeFixed, false);
      assert.deepEqual(t.ringLayout, { placement: "separate", usedAlign: 4 });
      assert.deepEqual(t.dmaKinds, ["physical"]);
      t.reset();
      assert.deepEqual(Array.from(t.readConfig(0, 6)), [0x52, 0x54, 0x00, 0x12, 0x34, 0x11]);
      assert.deepEqual(Array.from(t.readConfig(6, 2)), [1, 0]);
      assert.throws(() => t.readConfig(0x1000 - 1, 2), /outside/);
      assert.equal(t.queueMaxSize(1), 256);
      assert.equal(t.queueMaxSize(3), 0); // num_queues = 3
      t.setDriverFeatures(0x1_0000_0020n); // VERSION_1 | MAC: high word written last
      t.setupQueue(fakeQueue(1, 128, 0x1_2345_6000, 0x1_2345_7000, 0x1_2345_8000));
      t.notify(1);
      t.setStatus(7);
      const b = new DataView(Deno.readFileSync(bar).buffer);
      assert.equal(b.getUint32(CommonCfg.DRIVER_FEATURE_SELECT, true), 1);
      assert.equal(b.getUint32(CommonCfg.DRIVER_FEATURE, true), 1);
      assert.equal(b.getUint16(CommonCfg.QUEUE_SELECT, true), 1);
      assert.equal(b.getUint16(CommonCfg.QUEUE_SIZE, true), 128);
      assert.equal(b.getBigUint64(CommonCfg.QUEUE_DESC, true), 0x1_2345_6000n);
      assert.equal(b.getBigUint64(CommonCfg.QUEUE_DRIVER, true), 0x1_2345_7000n);
      assert.equal(b.getBigUint64(CommonCfg.QUEUE_DEVICE, true), 0x1_2345_8000n);
      assert.equal(b.getUint16(CommonCfg.QUEUE_ENABLE, true), 1);
      // notify cap offset 0x3000 + queue_notify_off 5 * multiplier 4
      assert.equal(b.getUint16(0x3000 + 5 * 4, true), 1);
      assert.equal(b.getUint8(CommonCfg.DEVICE_STATUS), 7);
      assert.throws(
        () => t.setupQueue(fakeQueue(0, 100, 0, 0, 0)),
        /queue 0 size 100 must be a power of two/,
      );
      // Bus mastering and INTx masking were set in the command register.
      const cmd = sysfs.function("0000:00:05.0").readConfig16(4);
      assert.equal(cmd & PciCommand.BUS_MASTER, PciCommand.BUS_MASTER);
      assert.equal(cmd & PciCommand.INTX_DISABLE, PciCommand.INTX_DISABLE);
    } finally {
      t.close();
    }
    // close() resets the device (status 0) so it stops using memory.
    assert.equal(Deno.readFileSync(bar)[CommonCfg.DEVICE_STATUS], 0);
  } finally {
    cleanup();
  }
});

Deno.test("pci transport: legacy register layout through sysfs resource0 (pread/pwrite)", () => {
  const { root, sysfs, cleanup } = fakeSysfs();
  const bar = `${root}/bus/pci/devices/0000:00:06.0/resource0`;
  try {
    const t = PciTransport.fromSpec("0000:00:06.0", { portio: "sysfs" }, sysfs);
    try {
      assert.match(t.name, /^0000:00:06\.0 \(legacy, sysfs, poll link events\)$/);
      assert.equal(t.queueSizeFixed, true);
      assert.deepEqual(t.ringLayout, { placement: "contiguous", usedAlign: 4096 });
      t.reset();
      // The device offers VIRTIO_F_INDIRECT_DESC (bit 28); it is passed on only with indirect=1.
      assert.equal(t.getDeviceFeatures(), 0x69bf8064n);
      const ti = PciTransport.fromSpec("0000:00:06.0", { portio: "sysfs", indirect: "1" }, sysfs);
      try {
        assert.equal(ti.getDeviceFeatures(), 0x79bf8064n);
      } finally {
        ti.close();
      }
      assert.deepEqual(Array.from(t.readConfig(0, 6)), [0x52, 0x54, 0x00, 0x12, 0x34, 0x12]);
      assert.equal(t.queueMaxSize(0), 256);
      assert.throws(() => t.setDriverFeatures(1n << 32n), /only feature bits 0-31/);
      t.setDriverFeatures(0x20n);
      // 2.7.2 legacy layout for 256 entries: desc 4096 B, avail 518 B, used at the next 4 KiB.
      const base = 0x7654_3000;
      t.setupQueue(fakeQueue(0, 256, base, base + 4096, base + 8192));
      assert.throws(
        () => t.setupQueue(fakeQueue(0, 256, base, base + 4096, base + 4096 + 520)),
        /not laid out as a legacy ring/,
      );
      assert.throws(() => t.setupQueue(fakeQueue(0, 128, base, 0, 0)), /has 256 entries/);
      t.notify(2);
      const b = new DataView(Deno.readFileSync(bar).buffer);
      assert.equal(b.getUint32(LegacyReg.DRIVER_FEATURES, true), 0x20);
      assert.equal(b.getUint32(LegacyReg.QUEUE_ADDRESS, true), base / 4096);
      assert.equal(b.getUint16(LegacyReg.QUEUE_NOTIFY, true), 2);
      // ISR bit 1 (configuration change) becomes one CONFIG_CHANGED event when polled.
      const f = Deno.openSync(bar, { write: true });
      f.seekSync(LegacyReg.ISR, Deno.SeekMode.Start);
      f.writeSync(Uint8Array.of(2));
      f.close();
      let events = 0;
      for (let i = 0; i < 4 * PolledConfigChange.CLOCK_EVERY; i++) events += t.poll();
      assert.equal(events, TransportEvent.CONFIG_CHANGED);
    } finally {
      t.close();
    }
  } finally {
    cleanup();
  }
});

Deno.test("pci interrupts: the polling fallback reads the clock rarely and is due periodically", async () => {
  const p = new PolledConfigChange(null, 30);
  let due = 0;
  for (let i = 0; i < PolledConfigChange.CLOCK_EVERY * 4; i++) if (p.due()) due++;
  assert.equal(due, 1); // first clock check is due, the next ones within 30 ms are not
  await new Promise((r) => setTimeout(r, 40));
  for (let i = 0; i < PolledConfigChange.CLOCK_EVERY; i++) if (p.due()) due++;
  assert.equal(due, 2);
  assert.equal(TransportEvent.CONFIG_CHANGED, 1);
});

Deno.test("pci transport: a closed transport never touches its old mappings", () => {
  const { sysfs, cleanup } = fakeSysfs();
  try {
    const modern = PciTransport.fromSpec("0000:00:05.0", {}, sysfs);
    modern.close();
    modern.notify(0); // ordinary memory now: no crash
    modern.reset();
    const legacy = PciTransport.fromSpec("0000:00:06.0", { portio: "sysfs" }, sysfs);
    legacy.close();
    assert.throws(() => legacy.notify(0), /EBADF|Bad file descriptor/);
  } finally {
    cleanup();
  }
});

// What a reader without CAP_SYS_ADMIN gets from sysfs `config`: the 64-byte header only.
const unprivileged = (hex: string) => config(hex).slice(0, 64);

Deno.test("pci config: the 64-byte unprivileged view means 'needs root', not a corrupt list", () => {
  for (const hex of [LEGACY_CONFIG, TRANSITIONAL_CONFIG, MODERN_CONFIG]) {
    assert.throws(
      () => listCapabilities(unprivileged(hex)),
      (e: Error) => /needs root/.test(e.message) && !/corrupt/.test(e.message),
    );
  }
  assert.throws(() => virtioNetKind(unprivileged(TRANSITIONAL_CONFIG)), /needs root/);
  // The header alone tells a modern function (by its device ID) and a function that is not
  // virtio-net at all.
  assert.equal(virtioNetKind(unprivileged(MODERN_CONFIG)), "modern");
  const other = unprivileged(LEGACY_CONFIG);
  other.set([0x86, 0x80, 0x37, 0x12]);
  assert.equal(virtioNetKind(other), null);
});

Deno.test("pci devices: as non-root, a 64-byte config is listed as 'needs root', the rest as usual", async () => {
  const { root, sysfs, cleanup } = fakeSysfs();
  const cfg = (a: string) => `${root}/bus/pci/devices/${a}/config`;
  Deno.writeFileSync(cfg("0000:00:06.0"), unprivileged(TRANSITIONAL_CONFIG));
  const out: string[] = [];
  const errors: string[] = [];
  const origLog = console.log;
  const origError = console.error;
  console.log = (m: string) => out.push(m);
  console.error = (m: string) => errors.push(m);
  try {
    const rows = listDevices(sysfs);
    assert.deepEqual(
      rows.map((r) => [r.address, r.kind, r.driver, r.mac, r.needsRoot, r.error]),
      [
        ["0000:00:04.0", "legacy", "virtio-pci", "52:54:00:12:34:10", false, null],
        ["0000:00:05.0", "modern", "uio_pci_generic", "52:54:00:12:34:11", false, null],
        // Legacy or transitional cannot be told without the capabilities; nothing else is read.
        ["0000:00:06.0", null, null, null, true, null],
      ],
    );
    assert.equal(await runPciCommand("devices", [], sysfs), 0);
    const lines = out.pop()!.split("\n");
    assert.match(lines[0], /^ADDRESS +TYPE +DRIVER +MAC +LINK +INTERFACE +NOTE$/);
    assert.match(lines[1], /^0000:00:04\.0 +legacy .*eth0$/);
    assert.match(lines[3], /^0000:00:06\.0 +- +- +- +- +- +needs root$/);
    assert.equal(await runPciCommand("devices", ["--json"], sysfs), 0);
    const json = JSON.parse(out.pop()!) as { address: string; needsRoot: boolean }[];
    assert.deepEqual(json.map((r) => [r.address, r.needsRoot]), [
      ["0000:00:04.0", false],
      ["0000:00:05.0", false],
      ["0000:00:06.0", true],
    ]);
    // A modern function is still known as modern from its header.
    Deno.writeFileSync(cfg("0000:00:05.0"), unprivileged(MODERN_CONFIG));
    assert.deepEqual(
      listDevices(sysfs).map((r) => [r.kind, r.mac, r.needsRoot]),
      [["legacy", "52:54:00:12:34:10", false], ["modern", null, true], [null, null, true]],
    );
    // Opening one as a port, or binding it, says plainly that it needs root.
    for (const a of ["0000:00:05.0", "0000:00:06.0"]) {
      assert.throws(
        () => PciTransport.fromSpec(a, {}, sysfs),
        new RegExp(`^Error: PCI port ${a.replaceAll(".", "\\.")} needs root: .*run vpmd as root$`),
      );
    }
    assert.equal(await runPciCommand("bind", ["0000:00:06.0"], sysfs), 2);
    assert.match(errors.pop()!, /0000:00:06\.0: needs root/);
    // Without a hidden function the table keeps its usual columns.
    Deno.writeFileSync(cfg("0000:00:05.0"), config(MODERN_CONFIG));
    Deno.writeFileSync(cfg("0000:00:06.0"), config(TRANSITIONAL_CONFIG));
    assert.equal(await runPciCommand("devices", [], sysfs), 0);
    assert.match(out.pop()!.split("\n")[0], /^ADDRESS +TYPE +DRIVER +MAC +LINK +INTERFACE$/);
  } finally {
    console.log = origLog;
    console.error = origError;
    cleanup();
  }
});

/**
 * An I/O BAR of `size` bytes that records every access outside it (on the ioperm path such an
 * access is an `in`/`out` on a port not granted: SIGSEGV).
 */
class SmallIoBar implements IoBar {
  readonly method = "ioperm";
  readonly regs: Uint8Array;
  readonly outside: string[] = [];
  constructor(readonly size: number) {
    this.regs = new Uint8Array(size);
  }
  #at(offset: number, width: number): number {
    if (offset < 0 || offset + width > this.size) this.outside.push(`${width}@${offset}`);
    let v = 0;
    for (let i = width - 1; i >= 0; i--) v = v * 256 + (this.regs[offset + i] ?? 0);
    return v;
  }
  #set(offset: number, width: number, value: number): void {
    if (offset < 0 || offset + width > this.size) this.outside.push(`${width}@${offset}`);
    for (let i = 0; i < width; i++) this.regs[offset + i] = (value >>> (8 * i)) & 0xff;
  }
  read8 = (o: number) => this.#at(o, 1);
  read16 = (o: number) => this.#at(o, 2);
  read32 = (o: number) => this.#at(o, 4);
  write8 = (o: number, v: number) => this.#set(o, 1, v);
  write16 = (o: number, v: number) => this.#set(o, 2, v);
  write32 = (o: number, v: number) => this.#set(o, 4, v);
  close(): void {}
}

Deno.test("pci legacy: config fields past a small BAR0 are an error, never an access outside it", () => {
  const { sysfs, cleanup } = fakeSysfs();
  const fn = sysfs.function("0000:00:06.0");
  try {
    // 32 bytes with MSI-X on: 24 bytes of registers, 8 of device configuration (mac, status),
    // but the device offers MQ and MTU, whose fields would be at 32-35.
    const bar = new SmallIoBar(32);
    const offered = bit(NetFeature.MAC) | bit(NetFeature.STATUS) | bit(NetFeature.CTRL_VQ) |
      bit(NetFeature.MQ) | bit(NetFeature.MTU);
    bar.write32(LegacyReg.DEVICE_FEATURES, Number(offered));
    bar.regs.set([0x52, 0x54, 0x00, 0x12, 0x34, 0x12, 0x01, 0x00], LegacyReg.DEVICE_CONFIG_MSIX);
    const t = new LegacyPciTransport(fn, bar, true, new PolledConfigChange(null));
    assert.equal(t.getDeviceFeatures(), offered);
    assert.deepEqual(Array.from(t.readConfig(NetConfig.MAC, 6)), [0x52, 0x54, 0, 0x12, 0x34, 0x12]);
    assert.deepEqual(Array.from(t.readConfig(NetConfig.STATUS, 2)), [1, 0]);
    assert.throws(
      () => t.readConfig(NetConfig.MTU, 2),
      /0000:00:06\.0: device configuration field mtu \(offset 10, 2 bytes, with VIRTIO_NET_F_MTU\) lies past the end of BAR0 \(32 bytes, device configuration from byte 24\)/,
    );
    assert.throws(
      () => t.readConfig(NetConfig.MAX_VIRTQUEUE_PAIRS, 2),
      /field max_virtqueue_pairs \(offset 8, 2 bytes, with VIRTIO_NET_F_MQ\) lies past the end of BAR0 \(32 bytes/,
    );
    assert.throws(() => t.readConfig(6, 3), /bytes \[6, 9\).* past the end of BAR0/);
    // Negotiating a feature whose field the BAR lacks fails before the device sees the features.
    assert.throws(
      () => t.setDriverFeatures(bit(NetFeature.MAC) | bit(NetFeature.MTU)),
      /field mtu .* past the end of BAR0 \(32 bytes/,
    );
    assert.equal(bar.read32(LegacyReg.DRIVER_FEATURES), 0);
    t.setDriverFeatures(bit(NetFeature.MAC) | bit(NetFeature.STATUS));
    assert.equal(
      bar.read32(LegacyReg.DRIVER_FEATURES),
      Number(bit(NetFeature.MAC) | bit(NetFeature.STATUS)),
    );
    t.notify(1);
    t.close();
    // Without MSI-X the same BAR holds every field up to mtu (configuration from byte 20).
    const t2 = new LegacyPciTransport(fn, bar, false, new PolledConfigChange(null));
    t2.setDriverFeatures(offered);
    assert.equal(t2.readConfig(NetConfig.MTU, 2).length, 2);
    t2.close();
    assert.deepEqual(bar.outside, []);
    // A BAR too small for the registers themselves is refused before any access.
    const tiny = new SmallIoBar(16);
    assert.throws(
      () => new LegacyPciTransport(fn, tiny, false, new PolledConfigChange(null)),
      /0000:00:06\.0: BAR0 has 16 bytes, fewer than the 20 bytes of legacy registers/,
    );
    assert.deepEqual(tiny.outside, []);
  } finally {
    cleanup();
  }
});

Deno.test("pci legacy: through sysfs resource0, a field past the BAR names the field and BAR size", () => {
  const { root, sysfs, cleanup } = fakeSysfs();
  const dev = `${root}/bus/pci/devices/0000:00:06.0`;
  // MSI-X on (24 bytes of registers) and a device offering MTU in its 32-byte BAR0.
  Deno.writeFileSync(`${dev}/config`, config(TRANSITIONAL_CONFIG));
  const bar0 = Deno.readFileSync(`${dev}/resource0`);
  new DataView(bar0.buffer).setUint32(
    LegacyReg.DEVICE_FEATURES,
    Number(bit(NetFeature.MAC) | bit(NetFeature.STATUS) | bit(NetFeature.MTU)),
    true,
  );
  Deno.writeFileSync(`${dev}/resource0`, bar0);
  try {
    const t = PciTransport.fromSpec("0000:00:06.0", { portio: "sysfs" }, sysfs);
    try {
      assert.equal(t.readConfig(NetConfig.MAC, 6).length, 6);
      assert.throws(
        () => t.readConfig(NetConfig.MTU, 2),
        /field mtu \(offset 10, 2 bytes, with VIRTIO_NET_F_MTU\) lies past the end of BAR0 \(32 bytes/,
      );
      assert.throws(() => t.setDriverFeatures(t.getDeviceFeatures()), /field mtu/);
    } finally {
      t.close();
    }
    // A resource file listing BAR0 smaller than the legacy registers: refused when opened.
    const res = Deno.readTextFileSync(`${dev}/resource`).replace(
      /^0x000000000000c040 0x000000000000c05f/,
      "0x000000000000c040 0x000000000000c04f",
    );
    Deno.writeTextFileSync(`${dev}/resource`, res);
    assert.throws(
      () => PciTransport.fromSpec("0000:00:06.0", { portio: "sysfs" }, sysfs),
      /BAR0 has 16 bytes, fewer than the 24 bytes of legacy registers \(with MSI-X\)/,
    );
  } finally {
    cleanup();
  }
});
