/**
 * Run the lab guest (built by scripts/lab/build-guest.sh) under QEMU/TCG.
 *
 * As a module: `Guest.boot(options)` starts QEMU with three virtio-net-pci NICs on host UDP sockets
 * (legacy-only at 0000:00:04.0, modern-only at 05.0, transitional at 06.0 by default), the repo
 * shared read-only over 9p at /vpmd, a per-run host folder shared at /lab, an HMP monitor socket,
 * isa-debug-exit for the exit status and the serial console captured to a file. tests/lib/guest.ts
 * wraps it for tests.
 *
 * As a CLI:
 *   deno run -A scripts/lab/run-guest.ts [--timeout S] [--nics legacy,modern,transitional]
 *       [--nic-opt N:key=value,...] [--keep] [--interactive] [-- 'shell command']
 * runs the command in the guest (working directory /vpmd), prints its output and exits with its
 * status; `--interactive` gives a shell on the serial console instead.
 */
import { UdpWire } from "./traffic.ts";

export type NicKind = "legacy" | "modern" | "transitional";

/** One guest NIC and the host end of its UDP link. */
export interface GuestNic {
  /** Netdev id, also the HMP name: "n0", "n1", ... (`set_link n0 off`). */
  id: string;
  kind: NicKind;
  /** PCI address in the guest, e.g. "0000:00:04.0". */
  pciAddress: string;
  mac: string;
  /** QEMU's UDP port (frames sent here reach the guest) and the host's (guest frames come here). */
  qemuPort: number;
  hostPort: number;
  /** The host end: send frames to the guest, receive what it transmits. */
  wire: UdpWire;
}

export interface GuestOptions {
  /** NIC kinds in order, at PCI slots 4, 5, 6, ... (default legacy, modern, transitional). */
  nics?: NicKind[];
  /** Extra `-device virtio-net-pci` options per NIC index, e.g. { 1: "ctrl_vlan=off" }. */
  extraNicOptions?: Record<number, string>;
  /** Hard limit for the whole run: QEMU is killed after it (default 180 s). */
  timeoutSec?: number;
  /** Run this shell script in /vpmd and exit with its status (else the command agent runs). */
  script?: string;
  /** Serial console on this process's stdio (CLI `--interactive`); no script, no agent. */
  interactive?: boolean;
  /** More kernel command line parameters and more QEMU arguments. */
  appendArgs?: string[];
  qemuArgs?: string[];
  memoryMiB?: number;
  cpus?: number;
  /** Repository to share (default: this checkout) and the build folder (default REPO/build/lab). */
  repo?: string;
  labDir?: string;
  /** Keep the run folder (console log, outputs) after close. Also LAB_KEEP=1. */
  keep?: boolean;
}

/** The result of a command run in the guest. */
export interface GuestResult {
  code: number;
  output: string;
}

const REPO = new URL("../..", import.meta.url).pathname.replace(/\/$/, "");
const NIC_MODE: Record<NicKind, string> = {
  legacy: "disable-modern=on",
  modern: "disable-legacy=on",
  transitional: "disable-legacy=off,disable-modern=off",
};
const FIRST_NIC_SLOT = 4;
/** Terminal redraw codes (ESC [ ... letter, ESC D/E) and CRs in HMP output. */
const ESCAPES = new RegExp(String.fromCharCode(27) + "(\\[[0-9;]*[A-Za-z]|[DE])|\r", "g");

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

async function readText(path: string): Promise<string | null> {
  try {
    return await Deno.readTextFile(path);
  } catch {
    return null;
  }
}

const RUN_PREFIX = "vpmd-lab-";

/**
 * Remove run folders left by a harness process that was killed (its QEMU died with it through
 * `timeout`); folders kept on purpose (LAB_KEEP=1) have no owner.pid once closed.
 */
async function removeOrphanRunDirs(): Promise<void> {
  const tmp = Deno.env.get("TMPDIR") ?? "/tmp";
  try {
    for await (const e of Deno.readDir(tmp)) {
      if (!e.isDirectory || !e.name.startsWith(RUN_PREFIX)) continue;
      const dir = `${tmp}/${e.name}`;
      const pid = Number((await readText(`${dir}/owner.pid`))?.trim());
      if (!pid || pid === Deno.pid) continue;
      try {
        Deno.statSync(`/proc/${pid}`);
      } catch {
        await Deno.remove(dir, { recursive: true }).catch(() => {});
      }
    }
  } catch {
    // no readable temp folder: nothing to tidy
  }
}

/** Where the built guest lives, or an Error naming the build script. */
export function guestImage(labDir = `${REPO}/build/lab`): { kernel: string; initrd: string } {
  const kernel = `${labDir}/vmlinux`;
  const initrd = `${labDir}/initramfs.cpio`;
  for (const f of [kernel, initrd]) {
    try {
      Deno.statSync(f);
    } catch {
      throw new Error(`guest image ${f} missing: run 'sudo bash scripts/lab/build-guest.sh'`);
    }
  }
  return { kernel, initrd };
}

/** True when QEMU and the built guest image are present (cheap, synchronous). */
export function guestAvailable(labDir?: string): boolean {
  try {
    guestImage(labDir);
    return Deno.statSync("/usr/bin/qemu-system-x86_64").isFile;
  } catch {
    return false;
  }
}

/** A running guest. Always `close()` it (tests/lib/guest.ts does). */
export class Guest {
  readonly nics: GuestNic[];
  /** The host folder shared as /lab: console.log, output.log, cmd/N.{sh,out,rc}. */
  readonly runDir: string;
  readonly consoleLog: string;
  readonly monitorPath: string;
  /** Exit status once QEMU ended: the guest's status, or a negative QEMU failure code. */
  exitStatus: number | null = null;
  #child: Deno.ChildProcess;
  #exited: Promise<number>;
  #timer: ReturnType<typeof setTimeout>;
  #timedOut = false;
  #nextCmd = 0;
  #keep: boolean;
  #stderr = "";

  private constructor(
    child: Deno.ChildProcess,
    nics: GuestNic[],
    runDir: string,
    timeoutSec: number,
    keep: boolean,
    stderrPiped: boolean,
  ) {
    this.#child = child;
    this.nics = nics;
    this.runDir = runDir;
    this.consoleLog = `${runDir}/console.log`;
    this.monitorPath = `${runDir}/monitor.sock`;
    this.#keep = keep;
    this.#timer = setTimeout(() => {
      this.#timedOut = true;
      this.#kill();
    }, timeoutSec * 1000);
    const errText = stderrPiped ? this.#collectStderr(child.stderr) : Promise.resolve();
    this.#exited = child.status.then(async (st) => {
      clearTimeout(this.#timer);
      await errText;
      this.exitStatus = this.#decode(st.code);
      return this.exitStatus;
    });
  }

  async #collectStderr(s: ReadableStream<Uint8Array>): Promise<void> {
    const dec = new TextDecoder();
    for await (const chunk of s) this.#stderr += dec.decode(chunk);
  }

  /** QEMU exits with (status << 1) | 1 through isa-debug-exit; /lab/status has the exact one. */
  #decode(qemuCode: number): number {
    let status: number;
    if (this.#timedOut) status = -2;
    else if (qemuCode % 2 === 1) status = (qemuCode - 1) / 2;
    else status = -1; // QEMU failed, or the guest powered off/rebooted without a status
    if (status >= 0) {
      try {
        const s = Deno.readTextFileSync(`${this.runDir}/status`).trim();
        if (/^\d+$/.test(s)) status = Number(s);
      } catch {
        // agent mode or no share: the isa-debug-exit value stands
      }
    }
    return status;
  }

  /** Start QEMU. Resolves once the process runs (not once the guest booted). */
  static async boot(opts: GuestOptions = {}): Promise<Guest> {
    const repo = opts.repo ?? REPO;
    const img = guestImage(opts.labDir ?? `${repo}/build/lab`);
    const kinds = opts.nics ?? ["legacy", "modern", "transitional"];
    const keep = opts.keep ?? Deno.env.get("LAB_KEEP") === "1";
    await removeOrphanRunDirs();
    const runDir = await Deno.makeTempDir({ prefix: RUN_PREFIX });
    await Deno.writeTextFile(`${runDir}/owner.pid`, String(Deno.pid));
    const nics: GuestNic[] = [];
    // QEMU's ports stay bound here until just before QEMU starts, so a later NIC's host socket
    // cannot be given one of them.
    const reserved: UdpWire[] = [];
    try {
      for (let i = 0; i < kinds.length; i++) {
        const wire = await UdpWire.open();
        const hold = await UdpWire.open();
        reserved.push(hold);
        const qemuPort = hold.port;
        wire.peerPort = qemuPort;
        const slot = (FIRST_NIC_SLOT + i).toString(16).padStart(2, "0");
        nics.push({
          id: `n${i}`,
          kind: kinds[i],
          pciAddress: `0000:00:${slot}.0`,
          mac: `52:54:00:12:34:${(0x10 + i).toString(16).padStart(2, "0")}`,
          qemuPort,
          hostPort: wire.port,
          wire,
        });
      }
      const append = [
        "console=ttyS0",
        "quiet",
        "panic=-1",
        // TCG on a loaded host can be too slow for the kernel's IO-APIC timer check, which then
        // panics ("IO-APIC + timer doesn't work!"); skip the check.
        "no_timer_check",
        "hugepagesz=2M",
        "hugepages=128",
      ];
      if (opts.script !== undefined) {
        await Deno.writeTextFile(`${runDir}/script.sh`, opts.script);
        append.push("vpmd.script=/lab/script.sh");
      } else if (!opts.interactive) {
        append.push("vpmd.agent=1");
      }
      const args = [
        "-machine",
        "q35",
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-m",
        String(opts.memoryMiB ?? 1536),
        "-smp",
        String(opts.cpus ?? 2),
        "-display",
        "none",
        "-vga",
        "none",
        "-no-reboot",
        "-kernel",
        img.kernel,
        "-initrd",
        img.initrd,
        "-append",
        [...append, ...(opts.appendArgs ?? [])].join(" "),
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-monitor",
        `unix:${runDir}/monitor.sock,server=on,wait=off`,
        "-serial",
        opts.interactive ? "mon:stdio" : `file:${runDir}/console.log`,
        "-fsdev",
        `local,id=fsrepo,path=${repo},security_model=none,readonly=on`,
        "-device",
        "virtio-9p-pci,fsdev=fsrepo,mount_tag=vpmd,addr=0x10",
        "-fsdev",
        `local,id=fslab,path=${runDir},security_model=none`,
        "-device",
        "virtio-9p-pci,fsdev=fslab,mount_tag=lab,addr=0x11",
      ];
      for (let i = 0; i < nics.length; i++) {
        const n = nics[i];
        args.push(
          "-netdev",
          `dgram,id=${n.id},local.type=inet,local.host=127.0.0.1,local.port=${n.qemuPort},` +
            `remote.type=inet,remote.host=127.0.0.1,remote.port=${n.hostPort}`,
          "-device",
          `virtio-net-pci,netdev=${n.id},mac=${n.mac},addr=0x${
            (FIRST_NIC_SLOT + i).toString(16)
          },` +
            `romfile=,${NIC_MODE[n.kind]}` +
            (opts.extraNicOptions?.[i] ? `,${opts.extraNicOptions[i]}` : ""),
        );
      }
      args.push(...(opts.qemuArgs ?? []));
      await Deno.writeTextFile(`${runDir}/qemu.args`, args.join("\n") + "\n");
      // coreutils timeout also ends QEMU when this process dies without closing the guest; our own
      // timer (SIGTERM, relayed to QEMU) normally fires first.
      const limit = opts.timeoutSec ?? 180;
      for (const r of reserved) r.close();
      const child = new Deno.Command("timeout", {
        args: [
          ...(opts.interactive ? ["--foreground"] : []),
          "-k",
          "5",
          String(limit + 10),
          "qemu-system-x86_64",
          ...args,
        ],
        stdin: opts.interactive ? "inherit" : "null",
        stdout: opts.interactive ? "inherit" : "null",
        stderr: opts.interactive ? "inherit" : "piped",
      }).spawn();
      return new Guest(child, nics, runDir, limit, keep, !opts.interactive);
    } catch (e) {
      for (const r of reserved) r.close();
      for (const n of nics) n.wire.close();
      if (!keep) await Deno.remove(runDir, { recursive: true }).catch(() => {});
      throw e;
    }
  }

  /** The console output so far (kernel messages, /init, the script's output). */
  async console(): Promise<string> {
    return (await readText(this.consoleLog)) ?? "";
  }

  /** QEMU's own error output (e.g. a bad NIC option). */
  get qemuErrors(): string {
    return this.#stderr;
  }

  /** Resolves with the exit status: >= 0 the guest's, -1 QEMU failed or no status, -2 timeout. */
  wait(): Promise<number> {
    return this.#exited;
  }

  get running(): boolean {
    return this.exitStatus === null;
  }

  /** A short description of why a run failed, with the console's tail, for error messages. */
  async diagnose(): Promise<string> {
    const con = (await this.console()).split("\n").slice(-40).join("\n");
    const why = this.#timedOut ? "timed out" : `exit status ${this.exitStatus}`;
    return `guest ${why}; QEMU stderr: ${this.#stderr.trim() || "(none)"}\n` +
      `console tail (${this.consoleLog}):\n${con}`;
  }

  /** Wait until the command agent is up (agent mode only). */
  async ready(timeoutSec = 60): Promise<void> {
    const end = performance.now() + timeoutSec * 1000;
    while (performance.now() < end) {
      if (!this.running) {
        throw new Error(`guest ended before its agent started: ${await this.diagnose()}`);
      }
      if ((await readText(`${this.runDir}/agent.ready`)) !== null) return;
      await sleep(50);
    }
    throw new Error(`guest agent not ready after ${timeoutSec} s: ${await this.diagnose()}`);
  }

  /** Start a shell script in the guest (agent mode; cwd /vpmd). Does not wait for it. */
  async spawn(script: string): Promise<GuestProcess> {
    if (!this.running) throw new Error(`guest is not running: ${await this.diagnose()}`);
    const n = this.#nextCmd++;
    const base = `${this.runDir}/cmd/${n}`;
    await Deno.mkdir(`${this.runDir}/cmd`, { recursive: true });
    await Deno.writeTextFile(`${base}.tmp`, script);
    await Deno.rename(`${base}.tmp`, `${base}.sh`);
    return new GuestProcess(this, base);
  }

  /** Run a shell script in the guest and wait for it (agent mode; cwd /vpmd). */
  async exec(script: string, timeoutSec = 60): Promise<GuestResult> {
    return await (await this.spawn(script)).wait(timeoutSec);
  }

  /**
   * Send an HMP command (e.g. "set_link n1 off") and return its reply text (HMP reports most
   * errors as text: check it). An unknown command throws.
   */
  async monitor(command: string, timeoutSec = 10): Promise<string> {
    const conn = await Deno.connect({ transport: "unix", path: this.monitorPath });
    const dec = new TextDecoder();
    let text = "";
    const buf = new Uint8Array(4096);
    const timer = setTimeout(() => conn.close(), timeoutSec * 1000);
    const readUntilPrompt = async (from: number) => {
      while (text.indexOf("(qemu) ", from) < 0) {
        const n = await conn.read(buf);
        if (n === null) throw new Error(`monitor closed before replying to '${command}'`);
        text += dec.decode(buf.subarray(0, n));
      }
      return text.indexOf("(qemu) ", from) + 7;
    };
    try {
      const start = await readUntilPrompt(0);
      await conn.write(new TextEncoder().encode(command + "\n"));
      const end = await readUntilPrompt(start);
      // HMP echoes the command with terminal redraw codes before the reply.
      const reply = text.slice(start, end - 7).replace(ESCAPES, "");
      const answer = reply.split("\n").slice(1).join("\n").trim();
      if (/^unknown command/i.test(answer)) throw new Error(answer);
      return answer;
    } catch (e) {
      throw new Error(`monitor command '${command}' failed: ${(e as Error).message}`);
    } finally {
      clearTimeout(timer);
      try {
        conn.close();
      } catch {
        // closed by the timeout
      }
    }
  }

  /** Ask the agent to exit with `status`, then wait (up to `timeoutSec`) for QEMU to end. */
  async halt(status = 0, timeoutSec = 20): Promise<number> {
    if (this.running) {
      await Deno.writeTextFile(`${this.runDir}/halt.tmp`, String(status));
      await Deno.rename(`${this.runDir}/halt.tmp`, `${this.runDir}/halt`);
      const t = setTimeout(() => this.#kill(), timeoutSec * 1000);
      await this.wait();
      clearTimeout(t);
    }
    return this.exitStatus!;
  }

  /** SIGTERM to `timeout`, which relays it to QEMU (and SIGKILLs it 5 s later if need be). */
  #kill(): void {
    try {
      this.#child.kill("SIGTERM");
    } catch {
      // already gone
    }
  }

  /** Kill QEMU (if still running), close the host sockets, remove the run folder. */
  async close(): Promise<void> {
    if (this.running) this.#kill();
    await this.wait();
    for (const n of this.nics) n.wire.close();
    if (!this.#keep) await Deno.remove(this.runDir, { recursive: true }).catch(() => {});
    else await Deno.remove(`${this.runDir}/owner.pid`).catch(() => {});
  }
}

/** A script started with `Guest.spawn`. */
export class GuestProcess {
  constructor(readonly guest: Guest, readonly base: string) {}

  /** Its output so far. */
  async output(): Promise<string> {
    return (await readText(`${this.base}.out`)) ?? "";
  }

  /** Its status, or null while it runs. */
  async status(): Promise<number | null> {
    const s = await readText(`${this.base}.rc`);
    return s === null ? null : Number(s.trim());
  }

  /** Wait until its output matches `re`; returns the match. Throws after `timeoutSec`. */
  async waitForOutput(re: RegExp, timeoutSec = 60): Promise<RegExpMatchArray> {
    const end = performance.now() + timeoutSec * 1000;
    while (true) {
      const m = (await this.output()).match(re);
      if (m) return m;
      if ((await this.status()) !== null || !this.guest.running || performance.now() > end) {
        throw new Error(
          `guest command output never matched ${re}:\n${await this.output()}\n` +
            (this.guest.running ? "" : await this.guest.diagnose()),
        );
      }
      await sleep(100);
    }
  }

  /** Wait for it to end; throws after `timeoutSec` or if the guest ends first. */
  async wait(timeoutSec = 60): Promise<GuestResult> {
    const end = performance.now() + timeoutSec * 1000;
    while (true) {
      const code = await this.status();
      if (code !== null) return { code, output: await this.output() };
      if (!this.guest.running) {
        throw new Error(`guest ended while a command ran: ${await this.guest.diagnose()}`);
      }
      if (performance.now() > end) {
        throw new Error(
          `guest command still running after ${timeoutSec} s; output so far:\n${await this
            .output()}`,
        );
      }
      await sleep(50);
    }
  }
}

/** Boot, run `script` in /vpmd, return its status and output; QEMU is always gone afterwards. */
export async function runInGuest(
  opts: GuestOptions & { script: string },
): Promise<GuestResult & { console: string }> {
  const g = await Guest.boot(opts);
  try {
    const code = await g.wait();
    const output = (await readText(`${g.runDir}/output.log`)) ?? "";
    const con = await g.console();
    if (code < 0) throw new Error(await g.diagnose());
    return { code, output, console: con };
  } finally {
    await g.close();
  }
}

async function main(): Promise<number> {
  const { parseArgs } = await import("cli-args");
  const { values, positionals } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: {
      timeout: { type: "string", default: "300" },
      nics: { type: "string", default: "legacy,modern,transitional" },
      "nic-opt": { type: "string", multiple: true, default: [] },
      keep: { type: "boolean", default: false },
      interactive: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(
      "usage: run-guest.ts [--timeout S] [--nics legacy,modern,transitional] " +
        "[--nic-opt N:key=value,...] [--keep] [--interactive] [-- 'shell command']",
    );
    return 0;
  }
  const nics = values.nics.split(",").filter((s: string) => s) as NicKind[];
  for (const k of nics) {
    if (!(k in NIC_MODE)) throw new Error(`bad NIC kind '${k}' (legacy, modern, transitional)`);
  }
  const extraNicOptions: Record<number, string> = {};
  for (const o of values["nic-opt"]) {
    const m = o.match(/^(\d+):(.+)$/);
    if (!m) throw new Error(`bad --nic-opt '${o}' (want N:key=value,...)`);
    extraNicOptions[Number(m[1])] = m[2];
  }
  const timeoutSec = Number(values.timeout);
  if (!(timeoutSec > 0)) throw new Error(`bad --timeout '${values.timeout}' (seconds > 0)`);
  const base = { nics, extraNicOptions, timeoutSec, keep: values.keep };
  if (values.interactive) {
    const g = await Guest.boot({ ...base, interactive: true });
    const code = await g.wait();
    await g.close();
    return Math.max(code, 0);
  }
  const script = positionals.join(" ");
  if (!script) throw new Error("no command given (or use --interactive)");
  const g = await Guest.boot({ ...base, script });
  for (const n of g.nics) {
    console.error(
      `run-guest: ${n.id} ${n.kind} ${n.pciAddress} ${n.mac} qemu udp ${n.qemuPort}`,
    );
  }
  let shown = 0;
  while (g.running) {
    await sleep(200);
    const out = (await readText(`${g.runDir}/output.log`)) ?? "";
    Deno.stdout.writeSync(new TextEncoder().encode(out.slice(shown)));
    shown = out.length;
  }
  const code = await g.wait();
  const out = (await readText(`${g.runDir}/output.log`)) ?? "";
  Deno.stdout.writeSync(new TextEncoder().encode(out.slice(shown)));
  if (code < 0) console.error(await g.diagnose());
  await g.close();
  return code < 0 ? 1 : code;
}

if (import.meta.main) {
  try {
    Deno.exit(await main());
  } catch (e) {
    console.error(`run-guest: ${(e as Error).message}`);
    Deno.exit(2);
  }
}
