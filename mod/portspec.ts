/**
 * Port specs: how a port is named on the command line, and opening its transport.
 *
 *   sim:NAME[,k=v...]          in-process simulated device (mod/sim/transport.ts)
 *   vhost-user:PATH[,k=v...]   vhost-user front-end (mod/transport/vhost_user.ts)
 *   DDDD:BB:DD.F[,k=v...]      PCI function (mod/transport/pci.ts); `BB:DD.F` means domain 0000
 *
 * Options are `key=value` or a bare `key` (value ""); each transport checks its own options. Every
 * error is one line, fit for the CLI (which exits with code 2).
 */
import { basename, dirname, join, resolve } from "node:path";
import { SimTransport } from "./sim/transport.ts";
import { PciTransport } from "./transport/pci.ts";
import type { NoticeSink, VirtioTransport } from "./virtio/transport.ts";
import { VhostUserTransport } from "./transport/vhost_user.ts";

/** The transport a port spec names. */
export type PortKind = "sim" | "vhost-user" | "pci";

/** A parsed port spec (`parsePortSpec`). */
export interface PortSpec {
  /** Which transport. */
  kind: PortKind;
  /** Device name (sim), socket path (vhost-user) or full PCI address `DDDD:BB:DD.F`. */
  target: string;
  /** The `,key=value` options (a bare `key` has the value ""), checked by the transport. */
  options: Record<string, string>;
}

const PCI_ADDRESS = /^(?:([0-9a-fA-F]{4}):)?([0-9a-fA-F]{2}):([0-1][0-9a-fA-F])\.([0-7])$/;
const SIM_NAME = /^[A-Za-z0-9_.-]+$/;
const OPTION_KEY = /^[a-z][a-z0-9_]*$/;

const USAGE = "expected sim:NAME, vhost-user:PATH or a PCI address like 0000:00:04.0";

/** Split and check a port spec; throws an Error with a one-line message on anything malformed. */
export function parsePortSpec(s: string): PortSpec {
  const bad = (why: string): never => {
    throw new Error(`bad port '${s}': ${why}`);
  };
  if (s.trim() === "") bad(USAGE);
  const [head, ...rest] = s.split(",");
  const options: Record<string, string> = {};
  for (const opt of rest) {
    const eq = opt.indexOf("=");
    const key = eq < 0 ? opt : opt.slice(0, eq);
    if (!OPTION_KEY.test(key)) bad(`option '${opt}' is not key=value`);
    if (key in options) bad(`option '${key}' given twice`);
    options[key] = eq < 0 ? "" : opt.slice(eq + 1);
  }
  if (head.startsWith("sim:")) {
    const name = head.slice(4);
    if (!SIM_NAME.test(name)) bad("a sim port needs a name of letters, digits, '_', '.', '-'");
    return { kind: "sim", target: name, options };
  }
  if (head.startsWith("vhost-user:")) {
    const path = head.slice("vhost-user:".length);
    if (path === "") bad("a vhost-user port needs a socket path (vhost-user:PATH)");
    return { kind: "vhost-user", target: path, options };
  }
  const m = PCI_ADDRESS.exec(head);
  if (m === null) bad(USAGE);
  const [, domain, bus, dev, fn] = m!;
  const target = `${
    (domain ?? "0000").toLowerCase()
  }:${bus.toLowerCase()}:${dev.toLowerCase()}.${fn}`;
  return { kind: "pci", target, options };
}

/** The canonical text of a parsed spec (used as the port's name in output). */
export function formatPortSpec(spec: PortSpec): string {
  const head = spec.kind === "pci" ? spec.target : `${spec.kind}:${spec.target}`;
  const opts = Object.entries(spec.options).map(([k, v]) => (v === "" ? k : `${k}=${v}`));
  return [head, ...opts].join(",");
}

/**
 * What a spec points at, for spotting one device given twice: the spec text, except that a
 * vhost-user path is resolved to the socket file itself (`/tmp//a.sock`, `./a.sock` from /tmp, a
 * symlinked directory and a symlink to the socket all name /tmp/a.sock). A socket not there yet
 * is named by its resolved directory.
 */
export function deviceKey(spec: PortSpec): string {
  if (spec.kind !== "vhost-user") return `${spec.kind}:${spec.target}`;
  const abs = resolve(spec.target);
  try {
    return `vhost-user:${Deno.realPathSync(abs)}`;
  } catch {
    // nothing there yet (a server-mode socket, a backend not started): resolve the directory
  }
  let dir = dirname(abs);
  try {
    dir = Deno.realPathSync(dir);
  } catch {
    // no such directory (yet): the normalized text is all there is to compare
  }
  return `vhost-user:${join(dir, basename(abs))}`;
}

/**
 * Open the transport a spec names; `notice` receives what it has to tell the user while it runs
 * (vhost-user: backend lost, back, reconnect failures). Errors (bad options, missing device) are
 * one-line messages.
 */
export function openTransport(spec: PortSpec | string, notice?: NoticeSink): VirtioTransport {
  const p = typeof spec === "string" ? parsePortSpec(spec) : spec;
  switch (p.kind) {
    case "sim":
      return SimTransport.fromSpec(p.target, p.options);
    case "vhost-user":
      return VhostUserTransport.fromSpec(p.target, p.options, notice);
    case "pci":
      return PciTransport.fromSpec(p.target, p.options);
  }
}
