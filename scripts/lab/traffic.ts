/**
 * Host-side traffic tools for the guest lab. Each guest NIC is a QEMU `-netdev dgram` on
 * 127.0.0.1: one UDP datagram is one Ethernet frame. The host end of a NIC is a {@link UdpWire}
 * (a bound UDP socket that sends to QEMU's socket); {@link generate} sends paced test frames
 * (mod/testframe.ts) into it and a {@link FrameChecker} counts and verifies what comes out of it.
 *
 * Pacing matters: an unpaced sender eats a host core that TCG needs and throughput collapses.
 */
import dgram from "node:dgram";
import { Buffer } from "node:buffer";
import { checkTestFrame, FrameCheck, TEST_FRAME_MIN, writeTestFrame } from "../../mod/testframe.ts";

/** The host end of one guest NIC: receives what the guest transmits, sends what it receives. */
export class UdpWire {
  /** Called for every frame the guest transmitted on this NIC (a fresh Uint8Array each time). */
  onFrame: ((frame: Uint8Array) => void) | null = null;
  /** Frames received from the guest and sent to it, and sends that failed. */
  readonly counters = { received: 0, sent: 0, sendErrors: 0 };
  #socket: dgram.Socket;
  #closed = false;

  private constructor(socket: dgram.Socket, readonly port: number, public peerPort: number) {
    this.#socket = socket;
    socket.on("message", (msg: Uint8Array) => {
      this.counters.received++;
      // A plain Uint8Array (not a node Buffer) so frames compare equal to expected bytes.
      this.onFrame?.(new Uint8Array(msg.buffer, msg.byteOffset, msg.byteLength));
    });
    socket.on("error", () => this.counters.sendErrors++);
  }

  /** Bind a UDP socket on 127.0.0.1 (`port` 0 = any free port); frames go to `peerPort`. */
  static async open(port = 0, peerPort = 0): Promise<UdpWire> {
    const s = dgram.createSocket("udp4");
    await new Promise<void>((resolve, reject) => {
      s.once("error", reject);
      s.bind(port, "127.0.0.1", () => {
        s.off("error", reject);
        resolve();
      });
    });
    return new UdpWire(s, s.address().port, peerPort);
  }

  /** Send one frame to the guest NIC (copied: the caller may reuse `frame`). */
  send(frame: Uint8Array): void {
    if (this.#closed) return;
    this.counters.sent++;
    this.#socket.send(Buffer.from(frame), this.peerPort, "127.0.0.1", (err) => {
      if (err) this.counters.sendErrors++;
    });
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.onFrame = null;
    this.#socket.close();
  }
}

/** A free UDP port on 127.0.0.1 right now (for QEMU's end of a NIC). */
export async function freeUdpPort(): Promise<number> {
  const w = await UdpWire.open();
  const p = w.port;
  w.close();
  return p;
}

export interface GenerateOptions {
  /** Frames to send. */
  count: number;
  /** Frames per second (default 5000). Keep it paced: see the note at the top. */
  rate?: number;
  /** Frame lengths, used in turn (default [64]; at least 60). */
  sizes?: number[];
  /** Stream number written into every frame (default 0). */
  stream?: number;
  /** First sequence number (default 0). */
  firstSeq?: number;
  /** Destination and source MAC (default broadcast / 02:00:00:00:00:01). */
  dst?: Uint8Array;
  src?: Uint8Array;
  /** Give up after this many seconds (default: count / rate + 30). */
  timeoutSec?: number;
}

/** Parse "52:54:00:12:34:56" into 6 bytes. */
export function parseMac(s: string): Uint8Array {
  const parts = s.split(":");
  if (parts.length !== 6 || parts.some((p) => !/^[0-9a-fA-F]{2}$/.test(p))) {
    throw new Error(`bad MAC address '${s}' (want XX:XX:XX:XX:XX:XX)`);
  }
  return Uint8Array.from(parts.map((p) => parseInt(p, 16)));
}

const BROADCAST = new Uint8Array([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
const HOST_MAC = new Uint8Array([0x02, 0, 0, 0, 0, 1]);

/**
 * Send `count` test frames into `wire` at `rate` frames/s (sequence numbers firstSeq..).
 * Resolves with the number sent and the seconds it took.
 */
export async function generate(
  wire: UdpWire,
  opts: GenerateOptions,
): Promise<{ sent: number; seconds: number }> {
  const rate = opts.rate ?? 5000;
  const sizes = opts.sizes ?? [64];
  const stream = opts.stream ?? 0;
  const seq0 = opts.firstSeq ?? 0;
  const dst = opts.dst ?? BROADCAST;
  const src = opts.src ?? HOST_MAC;
  for (const s of sizes) {
    if (!Number.isInteger(s) || s < TEST_FRAME_MIN || s > 65507) {
      throw new Error(`bad frame size ${s} (${TEST_FRAME_MIN}..65507)`);
    }
  }
  const buf = new Uint8Array(Math.max(...sizes));
  const t0 = performance.now();
  const deadline = t0 + (opts.timeoutSec ?? opts.count / rate + 30) * 1000;
  let sent = 0;
  while (sent < opts.count) {
    const now = performance.now();
    if (now > deadline) break;
    const due = Math.min(opts.count, Math.floor(((now - t0) / 1000) * rate) + 1);
    for (; sent < due; sent++) {
      const len = writeTestFrame(buf, 0, sizes[sent % sizes.length], stream, seq0 + sent, dst, src);
      wire.send(buf.subarray(0, len));
    }
    await new Promise((r) => setTimeout(r, 1));
  }
  return { sent, seconds: (performance.now() - t0) / 1000 };
}

/** What a {@link FrameChecker} saw. */
export interface CheckerCounts {
  received: number;
  /** Valid test frames (checksum, length, every payload byte). */
  ok: number;
  /** Not test frames (e.g. the guest kernel's own IPv6/ARP traffic). */
  foreign: number;
  /** Test frames with a wrong length, IP checksum or payload byte. */
  bad: number;
  /** Valid frames whose sequence number was not the next one of their stream. */
  seqGaps: number;
  /** Valid frames whose sequence number went backwards or repeated. */
  reordered: number;
  /** Total bytes of valid frames. */
  okBytes: number;
}

/**
 * Verifies every frame the guest transmits on a wire: counts, per-stream sequence gaps, byte-exact
 * content; optionally records the raw frames (`record: true`) for exact comparison.
 */
export class FrameChecker {
  readonly counts: CheckerCounts = {
    received: 0,
    ok: 0,
    foreign: 0,
    bad: 0,
    seqGaps: 0,
    reordered: 0,
    okBytes: 0,
  };
  /** Next expected sequence number per stream. */
  readonly nextSeq = new Map<number, number>();
  /** Raw frames in arrival order when recording. */
  readonly frames: Uint8Array[] = [];
  #out = new Uint32Array(4);
  #waiters: { n: number; resolve: () => void }[] = [];

  constructor(readonly wire: UdpWire, readonly opts: { record?: boolean } = {}) {
    wire.onFrame = (f) => this.#take(f);
  }

  #take(f: Uint8Array): void {
    const c = this.counts;
    c.received++;
    if (this.opts.record) this.frames.push(f);
    const r = checkTestFrame(f, 0, f.length, this.#out);
    if (r === FrameCheck.FOREIGN) c.foreign++;
    else if (r !== FrameCheck.OK) c.bad++;
    else {
      c.ok++;
      c.okBytes += f.length;
      const stream = this.#out[0];
      const seq = this.#out[1];
      const want = this.nextSeq.get(stream);
      if (want !== undefined && seq !== want) {
        if (seq > want) c.seqGaps++;
        else c.reordered++;
      }
      if (want === undefined || seq >= want) this.nextSeq.set(stream, seq + 1);
    }
    this.#waiters = this.#waiters.filter((w) => {
      if (c.ok < w.n) return true;
      w.resolve();
      return false;
    });
  }

  /** Resolves true once `n` valid frames arrived, false after `timeoutSec`. */
  waitFor(n: number, timeoutSec: number): Promise<boolean> {
    if (this.counts.ok >= n) return Promise.resolve(true);
    return new Promise((resolve) => {
      const w = {
        n,
        resolve: () => {
          clearTimeout(timer);
          resolve(true);
        },
      };
      const timer = setTimeout(() => {
        this.#waiters = this.#waiters.filter((x) => x !== w);
        resolve(false);
      }, timeoutSec * 1000);
      this.#waiters.push(w);
    });
  }

  /** Resolves once no frame arrived for `quietMs` (or after `timeoutSec`). */
  async settle(quietMs = 500, timeoutSec = 10): Promise<void> {
    const end = performance.now() + timeoutSec * 1000;
    let last = this.counts.received;
    while (performance.now() < end) {
      await new Promise((r) => setTimeout(r, quietMs));
      if (this.counts.received === last) return;
      last = this.counts.received;
    }
  }

  /** Stop receiving on the wire. */
  detach(): void {
    if (this.wire.onFrame) this.wire.onFrame = null;
  }
}

/** The exact bytes `generate` sends for sequence `seq` (for comparing recorded frames). */
export function expectedFrame(
  seq: number,
  opts: Omit<GenerateOptions, "count" | "rate" | "timeoutSec">,
): Uint8Array {
  const sizes = opts.sizes ?? [64];
  const i = seq - (opts.firstSeq ?? 0);
  const len = Math.max(TEST_FRAME_MIN, sizes[i % sizes.length]);
  const b = new Uint8Array(len);
  writeTestFrame(b, 0, len, opts.stream ?? 0, seq, opts.dst ?? BROADCAST, opts.src ?? HOST_MAC);
  return b;
}

/** Result of {@link measureForwarding}. */
export interface ForwardingResult {
  sent: number;
  /** Valid test frames that came out of the other NIC. */
  received: number;
  /** Corrupted test frames, and the sequence gaps seen. */
  bad: number;
  seqGaps: number;
  /** Seconds the sender ran, and received frames per second of it. */
  seconds: number;
  pps: number;
  /** Percentage of sent frames that never came back. */
  lossPct: number;
}

/**
 * Offer `rate` frames/s of `size`-byte test frames for `seconds` into `from` and count what
 * comes out of `to` (the guest forwards between the two NICs). Waits `drainMs` after sending.
 */
export async function measureForwarding(
  from: UdpWire,
  to: UdpWire,
  opts: { rate: number; seconds: number; size?: number; stream?: number; drainMs?: number },
): Promise<ForwardingResult> {
  const checker = new FrameChecker(to);
  try {
    const gen = await generate(from, {
      count: Math.round(opts.rate * opts.seconds),
      rate: opts.rate,
      sizes: [opts.size ?? 64],
      stream: opts.stream ?? 0,
    });
    await new Promise((r) => setTimeout(r, opts.drainMs ?? 500));
    const c = checker.counts;
    return {
      sent: gen.sent,
      received: c.ok,
      bad: c.bad,
      seqGaps: c.seqGaps,
      seconds: gen.seconds,
      pps: c.ok / gen.seconds,
      lossPct: gen.sent ? 100 * (1 - c.ok / gen.sent) : 0,
    };
  } finally {
    checker.detach();
  }
}
