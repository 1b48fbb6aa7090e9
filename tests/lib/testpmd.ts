/**
 * A dpdk-testpmd peer for tests and benchmarks: started with a unique --file-prefix, driven by
 * interactive commands on stdin, its counters read through the DPDK telemetry socket
 * (/var/run/dpdk/<prefix>/dpdk_telemetry.v2, command `/ethdev/stats,<port>`), always killed by
 * `stop()` (call it in `finally`). Its output goes to a log file so a busy test never blocks it.
 */
import { UnixSocket } from "../../ffi/socket.ts";
import { freeHugepages, haveCommand, type Peer } from "./peers.ts";

export const TESTPMD = "dpdk-testpmd";

/** The peer every vhost-user test needs. */
export const testpmdPeer: Peer = {
  what: "dpdk-testpmd (Debian dpdk-dev) and free hugepages",
  setup: "scripts/setup-dpdk.sh",
  available: () => haveCommand(TESTPMD) && freeHugepages() >= 128,
};

export interface TestpmdOptions {
  /** One --vdev (e.g. `net_vhost0,iface=/tmp/s.sock,queues=1`). */
  vdev: string;
  /** testpmd --forward-mode (default io). */
  fwd?: string;
  /** Start forwarding at once (--auto-start); default false (use `cmd("start")`). */
  autoStart?: boolean;
  /** EAL lcores and the main lcore (default "0,1" with main 0: forwarding on lcore 1). */
  lcores?: string;
  mainLcore?: number;
  /** Memory in MiB (-m), default 256. */
  memMb?: number;
  noHuge?: boolean;
  /** Extra EAL arguments (before `--`) and application arguments (after). */
  eal?: string[];
  app?: string[];
}

/** Counters from `/ethdev/stats` (names as DPDK's telemetry gives them). */
export interface EthStats {
  ipackets: number;
  opackets: number;
  ibytes: number;
  obytes: number;
  imissed: number;
  ierrors: number;
  oerrors: number;
  rx_nombuf: number;
}

let counter = 0;
/** Where scripts/setup-dpdk.sh mounts hugetlbfs (DPDK's default). */
const HUGETLBFS = "/dev/hugepages";
const SOCK_SEQPACKET = 5;

export class Testpmd {
  readonly prefix: string;
  readonly logPath: string;
  readonly args: string[];
  readonly #child: Deno.ChildProcess;
  readonly #stdin: WritableStreamDefaultWriter<Uint8Array>;
  #exited = false;
  readonly #status: Promise<Deno.CommandStatus>;

  private constructor(opts: TestpmdOptions, prefix: string) {
    this.prefix = prefix;
    this.logPath = `/tmp/${prefix}.log`;
    this.args = [
      "-l",
      opts.lcores ?? "0,1",
      "--main-lcore",
      String(opts.mainLcore ?? 0),
      "--no-pci",
      `--file-prefix=${prefix}`,
      ...(opts.noHuge ? ["--no-huge"] : []),
      "-m",
      String(opts.memMb ?? 256),
      "--vdev",
      opts.vdev,
      ...(opts.eal ?? []),
      "--",
      "-i",
      `--forward-mode=${opts.fwd ?? "io"}`,
      "--nb-cores=1",
      "--total-num-mbufs=16384",
      ...(opts.autoStart ? ["--auto-start"] : []),
      ...(opts.app ?? []),
    ];
    const quoted = [TESTPMD, ...this.args].map((a) => `'${a.replaceAll("'", "'\\''")}'`).join(" ");
    this.#child = new Deno.Command("sh", {
      args: ["-c", `exec stdbuf -oL -eL ${quoted} >'${this.logPath}' 2>&1`],
      stdin: "piped",
      stdout: "null",
      stderr: "null",
    }).spawn();
    this.#stdin = this.#child.stdin.getWriter();
    this.#status = this.#child.status.then((s) => {
      this.#exited = true;
      return s;
    });
  }

  /** Start testpmd and wait (up to `timeoutMs`) for its interactive prompt. */
  static async start(opts: TestpmdOptions, timeoutMs = 20_000): Promise<Testpmd> {
    const prefix = `vpmd-t${Deno.pid}-${counter++}`;
    const t = new Testpmd(opts, prefix);
    try {
      await t.waitLog(/testpmd> /, timeoutMs);
    } catch (e) {
      await t.stop();
      throw e;
    }
    return t;
  }

  get exited(): boolean {
    return this.#exited;
  }

  get pid(): number {
    return this.#child.pid;
  }

  /** Everything testpmd printed so far. */
  log(): string {
    try {
      return Deno.readTextFileSync(this.logPath);
    } catch {
      return "";
    }
  }

  /** Wait until the log (from byte `from`) matches `re`; returns the match. */
  async waitLog(re: RegExp, timeoutMs = 10_000, from = 0): Promise<RegExpMatchArray> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = this.log().slice(from).match(re);
      if (m) return m;
      if (this.#exited) {
        throw new Error(`testpmd exited while waiting for ${re}:\n${this.tail()}`);
      }
      if (Date.now() > deadline) {
        throw new Error(`testpmd: no ${re} within ${timeoutMs} ms:\n${this.tail()}`);
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** The last lines of the log, for error messages. */
  tail(lines = 30): string {
    return this.log().split("\n").slice(-lines).join("\n");
  }

  /**
   * Run an interactive command and wait for the next prompt (or `expect`). Returns what it
   * printed.
   */
  async cmd(line: string, expect: RegExp = /testpmd> /, timeoutMs = 10_000): Promise<string> {
    const from = this.log().length;
    await this.#stdin.write(new TextEncoder().encode(line + "\n"));
    const m = await this.waitLog(expect, timeoutMs, from);
    const out = this.log().slice(from);
    return out.slice(0, (m.index ?? 0) + m[0].length);
  }

  /** Read port counters through the telemetry socket. */
  stats(port = 0): EthStats {
    const r = this.telemetry(`/ethdev/stats,${port}`) as Record<string, Record<string, number>>;
    const s = r["/ethdev/stats"];
    if (!s) throw new Error(`testpmd telemetry: no /ethdev/stats in ${JSON.stringify(r)}`);
    return {
      ipackets: s.ipackets,
      opackets: s.opackets,
      ibytes: s.ibytes,
      obytes: s.obytes,
      imissed: s.imissed,
      ierrors: s.ierrors,
      oerrors: s.oerrors,
      rx_nombuf: s.rx_nombuf,
    };
  }

  /** One telemetry command; returns the parsed JSON reply. */
  telemetry(command: string): unknown {
    const path = `/var/run/dpdk/${this.prefix}/dpdk_telemetry.v2`;
    const s = UnixSocket.connect(path, 5000, SOCK_SEQPACKET);
    try {
      const buf = new Uint8Array(1 << 16);
      const fds: number[] = [];
      if (s.recv(buf, fds, 5000) <= 0) throw new Error("telemetry: no greeting");
      s.send(new TextEncoder().encode(command));
      const n = s.recv(buf, fds, 5000);
      if (n <= 0) throw new Error(`telemetry: no answer to ${command}`);
      return JSON.parse(new TextDecoder().decode(buf.subarray(0, n)));
    } finally {
      s.close();
    }
  }

  /** Send SIGKILL now (to test a backend that dies). */
  kill(): Promise<Deno.CommandStatus> {
    if (!this.#exited) {
      try {
        this.#child.kill("SIGKILL");
      } catch {
        // already gone
      }
    }
    return this.#status;
  }

  /** Quit (killing it if it does not exit within `timeoutMs`) and remove its runtime files. */
  async stop(timeoutMs = 10_000): Promise<void> {
    if (!this.#exited) {
      try {
        await this.#stdin.write(new TextEncoder().encode("stop\nquit\n"));
      } catch {
        // stdin closed: it is exiting
      }
    }
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timedOut = new Promise<"timeout">((r) => {
      timer = setTimeout(() => r("timeout"), timeoutMs);
    });
    if ((await Promise.race([this.#status, timedOut])) === "timeout") await this.kill();
    clearTimeout(timer);
    try {
      await this.#stdin.close();
    } catch {
      // already closed
    }
    try {
      Deno.removeSync(`/var/run/dpdk/${this.prefix}`, { recursive: true });
    } catch {
      // nothing left behind
    }
    // A killed testpmd leaves its hugepage files behind (holding the pages): remove them.
    try {
      for (const e of Deno.readDirSync(HUGETLBFS)) {
        if (e.name.startsWith(`${this.prefix}map_`)) Deno.removeSync(`${HUGETLBFS}/${e.name}`);
      }
    } catch {
      // no hugetlbfs mounted there
    }
    if (!Deno.env.get("VPMD_KEEP_LOGS")) {
      try {
        Deno.removeSync(this.logPath);
      } catch {
        // no log
      }
    }
  }
}

/** A fresh socket path for one test. */
export function socketPath(tag: string): string {
  return `/tmp/vpmd-${tag}-${Deno.pid}-${counter++}.sock`;
}

/** The forwarding lcore's cost, as testpmd prints it on `stop` when run with `--record-core-cycles`. */
export interface CoreCycles {
  /** Busy cycles (bursts that moved packets) per packet. */
  perPacket: number;
  /** The cycle counter's rate. */
  mhz: number;
}

/** CoreCycles from the output of `stop`; null when it has none. */
export function coreCycles(stopOutput: string): CoreCycles | null {
  const m = stopOutput.match(/CPU cycles\/packet=([\d.]+).*?at (\d+) MHz/s);
  return m === null ? null : { perPacket: Number(m[1]), mhz: Number(m[2]) };
}
