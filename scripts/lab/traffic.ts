/**
 * Host-side traffic tools for the guest lab. Each guest NIC is a QEMU `-netdev dgram` on
 * 127.0.0.1: one UDP datagram is one Ethernet frame. The host end of a NIC is a {@link UdpWire}
 * (a bound UDP socket that sends to QEMU's socket); {@link generate} sends paced test frames
 * (mod/testframe.ts) into it and a {@link FrameChecker} counts and verifies what comes out of it.
 *
 * Pacing matters: an unpaced sender eats a host core that TCG needs and throughput collapses.
 */
import { checkTestFrame, FrameCheck, TEST_FRAME_MIN, writeTestFrame } from "../../mod/testframe.ts";

/*
 * The sockets go through libc directly: sendto is synchronous and copies nothing on our side, and
 * a 1 ms poll drains the non-blocking socket in one loop. node:dgram's per-frame async send and
 * per-frame Buffer made the host, not the guest, the bottleneck above ~10 kframes/s.
 */
const libc = Deno.dlopen("libc.so.6", {
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  sendto: { parameters: ["i32", "buffer", "usize", "i32", "buffer", "u32"], result: "isize" },
  recv: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize" },
  close: { parameters: ["i32"], result: "i32" },
}).symbols;
const AF_INET = 2;
const SOCK_DGRAM = 2;
const SOCK_NONBLOCK = 0x800;
const SOCK_CLOEXEC = 0x80000;
const SOL_SOCKET = 1;
const SO_RCVBUF = 8;
const SO_RCVBUFFORCE = 33; // root may exceed rmem_max
const RCVBUF_BYTES = 8 << 20;
const MAX_FRAME = 65536;
const RX_LEN = BigInt(MAX_FRAME);

/** struct sockaddr_in for 127.0.0.1:port (family host order, port network order). */
function loopbackAddr(port: number): Uint8Array {
  const a = new Uint8Array(16);
  a[0] = AF_INET;
  a[2] = port >> 8;
  a[3] = port & 0xff;
  a.set([127, 0, 0, 1], 4);
  return a;
}

/** The host end of one guest NIC: receives what the guest transmits, sends what it receives. */
export class UdpWire {
  /**
   * Called for every frame the guest transmitted on this NIC. The view is valid only during the
   * call (copy it to keep it).
   */
  onFrame: ((frame: Uint8Array) => void) | null = null;
  /** Frames received from the guest and sent to it, and sends that failed. */
  readonly counters = { received: 0, sent: 0, sendErrors: 0 };
  #fd: number;
  #peer: Uint8Array;
  #peerPort: number;
  #rx = new Uint8Array(MAX_FRAME);
  #timer: ReturnType<typeof setInterval>;

  private constructor(fd: number, readonly port: number, peerPort: number) {
    this.#fd = fd;
    this.#peerPort = peerPort;
    this.#peer = loopbackAddr(peerPort);
    this.#timer = setInterval(() => this.#drain(), 1);
  }

  /** Bind a UDP socket on 127.0.0.1 (`port` 0 = any free port); frames go to `peerPort`. */
  static open(port = 0, peerPort = 0): Promise<UdpWire> {
    const fd = libc.socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return Promise.reject(new Error("socket(AF_INET, SOCK_DGRAM) failed"));
    const size = new Int32Array([RCVBUF_BYTES]);
    if (libc.setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, size, 4) !== 0) {
      libc.setsockopt(fd, SOL_SOCKET, SO_RCVBUF, size, 4);
    }
    const addr = loopbackAddr(port);
    if (libc.bind(fd, addr, 16) !== 0) {
      libc.close(fd);
      return Promise.reject(new Error(`cannot bind UDP 127.0.0.1:${port}`));
    }
    const len = new Uint32Array([16]);
    libc.getsockname(fd, addr, len);
    return Promise.resolve(new UdpWire(fd, (addr[2] << 8) | addr[3], peerPort));
  }

  /** QEMU's UDP port: where frames for the guest go. */
  get peerPort(): number {
    return this.#peerPort;
  }
  set peerPort(p: number) {
    this.#peerPort = p;
    this.#peer = loopbackAddr(p);
  }

  /** Send one frame to the guest NIC now (synchronous; the caller may reuse `frame` at once). */
  send(frame: Uint8Array): void {
    if (this.#fd < 0) return;
    if (
      Number(libc.sendto(this.#fd, frame, BigInt(frame.length), 0, this.#peer, 16)) === frame.length
    ) {
      this.counters.sent++;
    } else {
      this.counters.sendErrors++;
    }
  }

  #drain(): void {
    const rx = this.#rx;
    for (let i = 0; i < 4096 && this.#fd >= 0; i++) {
      const n = Number(libc.recv(this.#fd, rx, RX_LEN, 0));
      if (n < 0) return; // EAGAIN: drained
      this.counters.received++;
      this.onFrame?.(rx.subarray(0, n));
    }
  }

  close(): void {
    if (this.#fd < 0) return;
    clearInterval(this.#timer);
    libc.close(this.#fd);
    this.#fd = -1;
    this.onFrame = null;
  }
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
  /**
   * Flow control for correctness tests: never have more than `window` (default 64) frames sent
   * but not yet counted valid by this checker (on the wire the frames come out of). A stalled
   * guest then pauses the sender instead of overflowing QEMU's socket buffer or the guest's ring.
   * After `stallMs` (default 1000) without progress the frames in flight are given up as lost.
   */
  flow?: FrameChecker;
  window?: number;
  stallMs?: number;
}

const BROADCAST = new Uint8Array([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
const HOST_MAC = new Uint8Array([0x02, 0, 0, 0, 0, 1]);

/**
 * Send `count` test frames into `wire` at `rate` frames/s (sequence numbers firstSeq..), open
 * loop or, with `flow`, windowed. Resolves with the number sent, the seconds it took and how often
 * the window was given up after a stall.
 */
export async function generate(
  wire: UdpWire,
  opts: GenerateOptions,
): Promise<{ sent: number; seconds: number; stalls: number }> {
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
  const flow = opts.flow;
  const window = opts.window ?? 64;
  const okAtStart = flow ? flow.counts.ok : 0;
  let givenUp = 0; // frames of the window declared lost after a stall
  let stalls = 0;
  let lastOk = okAtStart;
  let lastProgress = t0;
  let credit = 1;
  let last = t0;
  while (sent < opts.count) {
    const now = performance.now();
    if (now > deadline) break;
    // Token bucket: the rate holds across timer jitter, but a host stall does not cause a burst
    // of more than 50 ms worth of frames.
    credit = Math.min(credit + ((now - last) / 1000) * rate, Math.max(1, rate * 0.05));
    last = now;
    let n = Math.min(Math.floor(credit), opts.count - sent);
    if (flow) {
      const ok = flow.counts.ok;
      if (ok !== lastOk) {
        lastOk = ok;
        lastProgress = now;
      }
      const inFlight = sent - (ok - okAtStart) - givenUp;
      if (inFlight >= window && now - lastProgress > (opts.stallMs ?? 1000)) {
        givenUp += inFlight; // lost on the way: stop waiting for them
        stalls++;
        lastProgress = now;
      }
      n = Math.min(n, window - (sent - (ok - okAtStart) - givenUp));
    }
    for (let i = 0; i < n; i++, sent++) {
      const len = writeTestFrame(buf, 0, sizes[sent % sizes.length], stream, seq0 + sent, dst, src);
      wire.send(buf.subarray(0, len));
    }
    if (n > 0) credit -= n;
    await new Promise((r) => setTimeout(r, 1));
  }
  return { sent, seconds: (performance.now() - t0) / 1000, stalls };
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

  /**
   * `record`: keep a copy of every frame. `firstSeq`: the sequence number every stream starts at,
   * so frames lost before the first arrival count as a gap too (default: the first one seen).
   */
  constructor(
    readonly wire: UdpWire,
    readonly opts: { record?: boolean; firstSeq?: number } = {},
  ) {
    wire.onFrame = (f) => this.#take(f);
  }

  #take(f: Uint8Array): void {
    const c = this.counts;
    c.received++;
    if (this.opts.record) this.frames.push(f.slice());
    const r = checkTestFrame(f, 0, f.length, this.#out);
    if (r === FrameCheck.FOREIGN) c.foreign++;
    else if (r !== FrameCheck.OK) c.bad++;
    else {
      c.ok++;
      c.okBytes += f.length;
      const stream = this.#out[0];
      const seq = this.#out[1];
      const want = this.nextSeq.get(stream) ?? this.opts.firstSeq;
      if (want !== undefined && seq !== want) {
        if (seq > want) c.seqGaps++;
        else c.reordered++;
      }
      if (want === undefined || seq >= want) this.nextSeq.set(stream, seq + 1);
    }
  }

  /**
   * Resolves true once `n` valid frames arrived; false after `timeoutSec`, or once no frame at all
   * arrived for `idleSec` (so a lossy run does not wait for frames that will never come).
   */
  async waitFor(n: number, timeoutSec: number, idleSec = timeoutSec): Promise<boolean> {
    const end = performance.now() + timeoutSec * 1000;
    let last = this.counts.received;
    let lastChange = performance.now();
    while (this.counts.ok < n) {
      const now = performance.now();
      if (now > end || now - lastChange > idleSec * 1000) return false;
      await new Promise((r) => setTimeout(r, 20));
      if (this.counts.received !== last) {
        last = this.counts.received;
        lastChange = performance.now();
      }
    }
    return true;
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
