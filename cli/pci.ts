/**
 * `vpmd devices [--json]`, `vpmd bind [--force] ADDR...`, `vpmd unbind ADDR...`: list virtio-net
 * PCI functions and move them between the kernel's virtio-pci and uio_pci_generic.
 *
 * Binding follows the kernel's sysfs ABI (Documentation/ABI/testing/sysfs-bus-pci): unbind from
 * the current driver, write the wanted driver to `driver_override`, write the address to
 * `/sys/bus/pci/drivers_probe`. Unbinding clears the override and probes again, so the kernel's
 * own virtio-pci takes the function back and its network interface returns.
 */
import { argsErrorMessage } from "./args_error.ts";
import { parseArgs } from "cli-args";
import { has, NetConfig, NetFeature } from "../mod/virtio/constants.ts";
import {
  configHidden,
  isVirtioNet,
  msixEnabled,
  parseVirtioCaps,
  PciConfigHiddenError,
  virtioNetKind,
} from "../mod/pci/config.ts";
import { SysfsIoBar } from "../mod/pci/io_bar.ts";
import { type PciFunction, Sysfs } from "../mod/pci/sysfs.ts";
import { LegacyReg } from "../mod/transport/pci_legacy.ts";
import { peekDeviceConfig } from "../mod/transport/pci_modern.ts";
import { KERNEL_DRIVER, USERSPACE_DRIVER } from "../mod/transport/pci.ts";

/** One row of `vpmd devices`. */
export interface DeviceInfo {
  address: string;
  /** null when it cannot be told: legacy or transitional with `needsRoot`, or `error`. */
  kind: "legacy" | "transitional" | "modern" | null;
  driver: string | null;
  mac: string | null;
  link: "up" | "down" | null;
  interfaces: string[];
  uio: string | null;
  /** Only the 64-byte header of the configuration space is readable (mod/pci/config.ts). */
  needsRoot: boolean;
  /** Why the function could not be examined (e.g. a corrupt capability list), else null. */
  error: string | null;
}

/** How long bind/unbind wait for the kernel to finish probing (ms). */
const PROBE_WAIT_MS = 3000;

const hex2 = (b: number) => b.toString(16).padStart(2, "0");
const macText = (b: Uint8Array) => Array.from(b.subarray(0, 6), hex2).join(":");

/**
 * Every virtio-net function under `sysfs`, with what can be learnt without disturbing it. A
 * function that cannot be examined is listed with `needsRoot` or `error`, never dropped.
 */
export function listDevices(sysfs: Sysfs = new Sysfs()): DeviceInfo[] {
  const out: DeviceInfo[] = [];
  for (const address of sysfs.addresses()) {
    const fn = sysfs.function(address);
    let config: Uint8Array;
    try {
      config = fn.readConfig();
    } catch {
      continue;
    }
    if (!isVirtioNet(config)) continue;
    const info: DeviceInfo = {
      address,
      kind: null,
      driver: fn.driver(),
      mac: null,
      link: null,
      interfaces: fn.interfaces(),
      uio: fn.uioDevice(),
      needsRoot: configHidden(config),
      error: null,
    };
    try {
      info.kind = virtioNetKind(config); // a modern function is known from the header alone
    } catch (e) {
      if (!(e instanceof PciConfigHiddenError)) info.error = (e as Error).message;
    }
    const ifname = info.interfaces[0];
    if (ifname !== undefined) {
      info.mac = sysfs.interfaceAddress(ifname);
      const carrier = sysfs.interfaceUp(ifname) ? sysfs.interfaceCarrier(ifname) : null;
      info.link = carrier === null ? null : carrier ? "up" : "down";
    } else if (info.kind !== null && !info.needsRoot) {
      try {
        Object.assign(info, peekNetConfig(fn, info.kind, config));
      } catch {
        // the registers are not reachable (no root, no BAR): leave MAC and link unknown
      }
    }
    out.push(info);
  }
  return out;
}

/** MAC and link from the device configuration (5.1.4) of a function no kernel driver holds. */
function peekNetConfig(
  fn: PciFunction,
  kind: NonNullable<DeviceInfo["kind"]>,
  config: Uint8Array,
): Pick<DeviceInfo, "mac" | "link"> {
  const wanted = NetConfig.STATUS + 2;
  if (kind === "modern") {
    // Reading the feature bits needs a select write; QEMU and the spec's MAC/STATUS are assumed.
    const b = peekDeviceConfig(fn, parseVirtioCaps(config), fn.resources(), wanted);
    if (b === null) return { mac: null, link: null };
    return { mac: macText(b), link: (b[NetConfig.STATUS] & NetConfig.S_LINK_UP) ? "up" : "down" };
  }
  // Every read below must lie inside BAR0 (io_bar.ts: the accessors check nothing).
  const base = msixEnabled(config) ? LegacyReg.DEVICE_CONFIG_MSIX : LegacyReg.DEVICE_CONFIG;
  const res = fn.resources()[0];
  if (res === undefined || res.kind !== "io" || base + wanted > res.size) {
    return { mac: null, link: null };
  }
  const bar = new SysfsIoBar(fn.resourcePath(0), res.size);
  try {
    const features = BigInt(bar.read32(LegacyReg.DEVICE_FEATURES) >>> 0);
    const b = new Uint8Array(wanted);
    for (let i = 0; i < wanted; i++) b[i] = bar.read8(base + i);
    return {
      mac: has(features, NetFeature.MAC) ? macText(b) : null,
      link: has(features, NetFeature.STATUS)
        ? ((b[NetConfig.STATUS] & NetConfig.S_LINK_UP) ? "up" : "down")
        : null,
    };
  } finally {
    bar.close();
  }
}

/** A virtio-net function by address, or an Error that says why not. */
function virtioNet(sysfs: Sysfs, address: string): PciFunction {
  const fn = sysfs.function(address);
  const config = fn.readConfig();
  if (!isVirtioNet(config)) {
    const id = (o: number) => (config[o] | (config[o + 1] << 8)).toString(16).padStart(4, "0");
    throw new Error(`${fn.address} is not a virtio-net device (${id(0)}:${id(2)})`);
  }
  if (configHidden(config)) {
    throw new Error(`${fn.address}: needs root (binding writes sysfs files only root may write)`);
  }
  return fn;
}

async function waitFor(cond: () => boolean, ms = PROBE_WAIT_MS): Promise<boolean> {
  const until = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > until) return false;
    await new Promise((r) => setTimeout(r, 20));
  }
  return true;
}

async function loadModule(sysfs: Sysfs, driver: string, module: string): Promise<void> {
  if (sysfs.hasDriver(driver)) return;
  let ok = false;
  let why = "";
  try {
    const r = await new Deno.Command("modprobe", { args: [module], stderr: "piped" }).output();
    ok = r.success;
    why = new TextDecoder().decode(r.stderr).trim();
  } catch (e) {
    why = (e as Error).message;
  }
  if (!ok || !(await waitFor(() => sysfs.hasDriver(driver), 1000))) {
    throw new Error(`cannot load the kernel module ${module}${why ? `: ${why}` : ""}`);
  }
}

/** Moves a function to uio_pci_generic. Returns its /dev/uioN. */
export async function bindDevice(sysfs: Sysfs, address: string, force: boolean): Promise<string> {
  const fn = virtioNet(sysfs, address);
  if (fn.driver() === USERSPACE_DRIVER && fn.uioDevice() !== null) return fn.uioDevice()!;
  if (!force) {
    const up = fn.interfaces().filter((i) => sysfs.interfaceUp(i));
    if (up.length > 0) {
      throw new Error(
        `${fn.address}: interface ${up.join(", ")} is up in the kernel; take it down ` +
          `(ip link set ${up[0]} down) or use --force`,
      );
    }
  }
  await loadModule(sysfs, USERSPACE_DRIVER, USERSPACE_DRIVER);
  fn.unbindDriver();
  fn.setDriverOverride(USERSPACE_DRIVER);
  sysfs.probe(fn.address);
  if (!(await waitFor(() => fn.driver() === USERSPACE_DRIVER && fn.uioDevice() !== null))) {
    throw new Error(
      `${fn.address}: ${USERSPACE_DRIVER} did not take the device (driver now: ${
        fn.driver() ?? "none"
      })`,
    );
  }
  return fn.uioDevice()!;
}

/** Gives a function back to the kernel's virtio-pci. Returns its interface names. */
export async function unbindDevice(sysfs: Sysfs, address: string): Promise<string[]> {
  const fn = virtioNet(sysfs, address);
  if (fn.driver() !== KERNEL_DRIVER) {
    await loadModule(sysfs, KERNEL_DRIVER, "virtio_pci");
    fn.unbindDriver();
    fn.setDriverOverride("");
    sysfs.probe(fn.address);
  }
  if (!(await waitFor(() => fn.driver() === KERNEL_DRIVER && fn.interfaces().length > 0))) {
    throw new Error(
      `${fn.address}: ${KERNEL_DRIVER} did not take the device back (driver now: ${
        fn.driver() ?? "none"
      }; is virtio_net loaded?)`,
    );
  }
  return fn.interfaces();
}

function table(rows: DeviceInfo[]): string {
  const note = (r: DeviceInfo) => r.needsRoot ? "needs root" : r.error ?? "";
  const head = ["ADDRESS", "TYPE", "DRIVER", "MAC", "LINK", "INTERFACE"];
  const cells = rows.map((r) => [
    r.address,
    r.kind ?? "-",
    r.driver ?? "-",
    r.mac ?? "-",
    r.link ?? "-",
    r.interfaces.join(",") || r.uio || "-",
  ]);
  // The NOTE column appears only when a function has something to say.
  if (rows.some((r) => note(r) !== "")) {
    head.push("NOTE");
    cells.forEach((c, i) => c.push(note(rows[i])));
  }
  const widths = head.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i].length)));
  return [head, ...cells].map((c) => c.map((s, i) => s.padEnd(widths[i])).join("  ").trimEnd())
    .join("\n");
}

/**
 * Runs `vpmd devices|bind|unbind` with its arguments; returns the exit code (0 ok, 1 an operation
 * failed, 2 bad usage: also an address that is no virtio-net function). Errors are one line on
 * stderr.
 */
export async function runPciCommand(
  cmd: string,
  args: string[],
  sysfs: Sysfs = new Sysfs(),
): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: true,
      options: {
        json: { type: "boolean", default: false },
        force: { type: "boolean", default: false },
      },
    });
  } catch (e) {
    console.error(`vpmd ${cmd}: ${argsErrorMessage(e, cmd)}`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (cmd === "devices") {
    if (positionals.length > 0 || values.force) {
      console.error(`vpmd devices: usage: vpmd devices [--json]`);
      return 2;
    }
    const rows = listDevices(sysfs);
    if (values.json) console.log(JSON.stringify(rows));
    else if (rows.length === 0) console.log("no virtio-net PCI devices");
    else console.log(table(rows));
    return 0;
  }
  if (cmd !== "bind" && cmd !== "unbind") {
    console.error(`vpmd: unknown command '${cmd}'`);
    return 2;
  }
  if (positionals.length === 0 || values.json || (cmd === "unbind" && values.force)) {
    console.error(`vpmd ${cmd}: usage: vpmd ${cmd}${cmd === "bind" ? " [--force]" : ""} ADDR...`);
    return 2;
  }
  // Every address must name a virtio-net function before anything is moved: a typo or a missing
  // device is bad usage (2), and stops the command before it half-binds a list.
  for (const address of positionals) {
    try {
      virtioNet(sysfs, address);
    } catch (e) {
      console.error(`vpmd ${cmd}: ${(e as Error).message}`);
      return 2;
    }
  }
  let rc = 0;
  for (const address of positionals) {
    try {
      if (cmd === "bind") {
        const uio = await bindDevice(sysfs, address, values.force);
        console.log(`${address}: bound to ${USERSPACE_DRIVER} (${uio})`);
      } else {
        const ifs = await unbindDevice(sysfs, address);
        console.log(`${address}: bound to ${KERNEL_DRIVER} (interface ${ifs.join(", ")})`);
      }
    } catch (e) {
      console.error(`vpmd ${cmd}: ${(e as Error).message}`);
      rc = 1;
    }
  }
  return rc;
}
