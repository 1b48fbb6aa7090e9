/**
 * vhost-user front-end ("virtio-user"): a virtio-net device whose data path is a vhost-user
 * backend in another process (DPDK's vhost PMD, OVS-DPDK, VPP), reached over a unix socket
 * (QEMU's "Vhost-user Protocol" document). Layouts live in ./vhost_user_protocol.ts.
 *
 * How the VirtioTransport calls map onto the protocol:
 * - Opening connects (client mode, retrying until `timeout`) or listens and accepts (`server`),
 *   then SET_OWNER, GET_FEATURES, GET/SET_PROTOCOL_FEATURES (MQ, REPLY_ACK, STATUS when offered).
 * - Device status (2.1): with the STATUS protocol feature every status the driver sets goes to
 *   the backend with SET_STATUS. At FEATURES_OK the features go out (SET_FEATURES) and the status
 *   is read back with GET_STATUS: a backend that dropped FEATURES_OK fails the driver's check
 *   (3.1.1 step 6). Memory and queues are recorded; the backend gets them when the driver sets
 *   DRIVER_OK: SET_MEM_TABLE (one memfd per region, gpa = region iova, user address = region
 *   address, mmap offset 0), then per data vring SET_VRING_CALL, NUM, BASE, ADDR, KICK, and
 *   SET_VRING_ENABLE for all of them (DPDK becomes ready only once both vrings of a pair are
 *   complete and enabled), then SET_STATUS with DRIVER_OK. `reset()` stops the vrings with
 *   GET_VRING_BASE and sets status 0.
 * - Device configuration (5.1.4) does not exist on vhost-user: it is synthesized (MAC from
 *   `mac=` or a random locally administered one, LINK_UP while the backend is connected and
 *   running, max_virtqueue_pairs).
 * - The control queue (5.1.6.5) is answered here, not by the backend: receive-mode and MAC-table
 *   commands have no meaning on a vhost-user link and are accepted, a MAC address set is
 *   recorded, VQ_PAIRS_SET is checked against the pairs that exist. CTRL_VQ, CTRL_RX,
 *   CTRL_MAC_ADDR, MAC and STATUS are offered to the driver and never to the backend. Its ring
 *   lies in memory the backend maps and may write: here vpmd is the device side of a ring the
 *   backend can tamper with, so every poll serves at most CTRL_PER_POLL chains of at most the
 *   ring's size, and what the driver never writes (an avail index more than the ring's size
 *   ahead of the last one served, or behind it; a malformed chain) is a device error: counted,
 *   told once, and the queue is no longer served until a reset sets it up again.
 * - A backend that goes away is noticed in `poll()` (one poll(2) every CHECK_EVERY polls):
 *   DEVICE_LOST | CONFIG_CHANGED, link down. Client mode reconnects, server mode accepts again;
 *   after the first messages the transport reports DEVICE_RETURNED and the port sets the device
 *   up again from reset (fresh rings; frames in flight are dropped there). The link is up once
 *   the port has set DRIVER_OK on the new connection. Every failure (nobody listening, a hang-up
 *   or a refusal at any message, a connection that ends within RECONNECT_STABLE_MS) doubles the
 *   wait before the next attempt, from RECONNECT_INTERVAL_MS up to RECONNECT_BACKOFF_MAX_MS; a
 *   connection that lasted starts it over.
 * - What the user should hear about (backend lost or back, a failed reconnect or stop, a device
 *   error) goes to the `notice` sink given at opening, one kind of `Notice` each.
 * - `notify(q)` writes the queue's kick eventfd (8 bytes); the port calls it only when the
 *   backend did not set VRING_USED_F_NO_NOTIFY.
 */
import { parseOwnMac } from "../mac.ts";
import type { DmaKind, DmaRegion } from "../../ffi/dma.ts";
import { close as closeFd, EFD_CLOEXEC, EFD_NONBLOCK, eventfd, raw } from "../../ffi/libc.ts";
import { UnixListener, UnixSocket } from "../../ffi/socket.ts";
import {
  Avail,
  bit,
  Ctrl,
  Desc,
  Feature,
  has,
  NetConfig,
  NetFeature,
  PackedDesc,
  Status,
  Used,
} from "../virtio/constants.ts";
import {
  DeviceError,
  type NoticeSink,
  type QueueMemory,
  type RingLayout,
  TransportEvent,
  type VirtioTransport,
} from "../virtio/transport.ts";
import {
  Header,
  MemTable,
  Message,
  ProtocolFeature,
  Request,
  requestName,
  U64_PAYLOAD,
  VringAddr,
  VringFile,
  VringState,
  WANTED_PROTOCOL_FEATURES,
} from "./vhost_user_protocol.ts";

export interface VhostUserOptions {
  /** Socket path. */
  path: string;
  /** Listen on `path` and let the backend connect (vhost PMD `client=1`); default: connect. */
  server?: boolean;
  /** Queue pairs (default 1); more than 1 needs the backend's MQ protocol feature. */
  queues?: number;
  /** Offer VIRTIO_NET_F_MRG_RXBUF to the driver when the backend has it (default true). */
  mrg?: boolean;
  /** Offer VIRTIO_F_IN_ORDER to the driver when the backend has it (default true). */
  inOrder?: boolean;
  /** Offer VIRTIO_F_RING_PACKED (2.8) to the driver when the backend has it (default false). */
  packed?: boolean;
  /**
   * Offer VIRTIO_F_INDIRECT_DESC (2.7.5.3, 2.8.7) to the driver when the backend has it (default
   * false): multi-segment frames then go out through indirect tables.
   */
  indirect?: boolean;
  /** Largest ring size offered (default 1024). */
  qsize?: number;
  /** Device MAC reported in the synthesized config (default: random, locally administered). */
  mac?: Uint8Array;
  /** How long opening waits for the backend (default 10 s client, 60 s server). */
  timeoutMs?: number;
  /** Receives the transport's notices (kinds in `Notice`); default: dropped. */
  notice?: NoticeSink;
}

/** The kinds of notice this transport gives. */
export const Notice = {
  /** The connection ended (the backend closed it, or a request failed); link down. */
  BACKEND_LOST: "backend-lost",
  /** A new connection passed the handshake; the port sets the device up again. */
  BACKEND_RETURNED: "backend-returned",
  /** A reconnect attempt failed (nobody listening: once per outage); the next waits longer. */
  RECONNECT_FAILED: "reconnect-failed",
  /** GET_VRING_BASE or SET_STATUS 0 failed while stopping; the connection was closed. */
  STOP_FAILED: "stop-failed",
  /** The backend cleared FEATURES_OK (GET_STATUS): the driver's start fails. */
  FEATURES_REFUSED: "features-refused",
  /**
   * The control ring held what the driver never writes (an avail index moved back or too far, a
   * malformed chain): the backend wrote into it. The queue is no longer served until a reset.
   */
  CTRL_RING_ERROR: "ctrl-ring-error",
} as const;

/** Virtio features passed through from the backend to the driver (when the backend offers them). */
const PASSED_THROUGH = bit(Feature.VERSION_1) | bit(NetFeature.MRG_RXBUF) |
  bit(Feature.EVENT_IDX) | bit(Feature.INDIRECT_DESC) | bit(Feature.ANY_LAYOUT) |
  bit(Feature.IN_ORDER) | bit(Feature.RING_PACKED);

/** Features this transport implements itself (synthesized config, local control queue). */
const LOCAL_FEATURES = bit(NetFeature.MAC) | bit(NetFeature.STATUS) | bit(NetFeature.CTRL_VQ) |
  bit(NetFeature.CTRL_RX) | bit(NetFeature.CTRL_MAC_ADDR);

/** Polls between two liveness checks of the socket (one poll(2) each). */
const CHECK_EVERY = 4096;
/** Wait before the first reconnect attempt after a connection that lasted. */
const RECONNECT_INTERVAL_MS = 100;
/** Each failure doubles the wait before the next attempt, up to this. */
const RECONNECT_BACKOFF_MAX_MS = 1000;
/** A connection that ends sooner than this after its handshake counts as a failed attempt. */
const RECONNECT_STABLE_MS = 2000;
/** Longest wait for a reply from the backend. */
const REPLY_TIMEOUT_MS = 5000;
/**
 * From a reconnect until the backend runs again (all of it inside the forwarding loop's poll()):
 * a shorter wait per reply, so that a backend that accepts but stops answering at some message
 * stalls forwarding on the other ports briefly, and (with the backoff) rarely.
 */
const RECONNECT_REPLY_TIMEOUT_MS = 500;
/**
 * Wait per reply while stopping (GET_VRING_BASE): a backend that does not answer is let go by
 * closing the connection, which is also what makes it unmap our memory.
 */
const STOP_REPLY_TIMEOUT_MS = 1000;
const CTRL_QUEUE_SIZE = 64;
/** SET_VRING_BASE of a fresh packed ring: index 0, the wrap counter (bit 15) 1. */
const PACKED_FRESH_BASE = 1 << 15;
/**
 * Control chains served per poll at most. The driver has one command in flight at a time
 * (mod/virtio/ctrl_queue.ts); the cap bounds what a backend that rewrites the ring can make a
 * poll do (CTRL_PER_POLL chains of at most CTRL_QUEUE_SIZE descriptors).
 */
const CTRL_PER_POLL = 4;
/** Largest control command accepted (a MAC table of ~680 entries). */
const CTRL_MAX_BYTES = 4096;
const DEFAULT_QSIZE = 1024;

/** What an error of an exchange suggests checking (not repeated in notices). */
const CHECK_BACKEND = "; is the vhost-user backend running and healthy?";

const TRUE_WORDS = new Set(["", "1", "on", "yes", "true"]);
const FALSE_WORDS = new Set(["0", "off", "no", "false"]);
const SPEC_OPTIONS = [
  "server",
  "queues",
  "mrg",
  "in_order",
  "packed",
  "indirect",
  "qsize",
  "mac",
  "timeout",
];

function flag(name: string, v: string): boolean {
  if (TRUE_WORDS.has(v)) return true;
  if (FALSE_WORDS.has(v)) return false;
  throw new Error(`vhost-user option ${name}=${v}: expected 0 or 1`);
}

function positiveInt(name: string, v: string, max: number): number {
  const n = Number(v);
  if (!/^\d+$/.test(v) || n < 1 || n > max) {
    throw new Error(`vhost-user option ${name}=${v}: expected an integer from 1 to ${max}`);
  }
  return n;
}

function randomLocalMac(): Uint8Array {
  const mac = crypto.getRandomValues(new Uint8Array(6));
  mac[0] = (mac[0] & 0xfe) | 0x02; // unicast, locally administered
  return mac;
}

/** Per data vring: what the driver gave us and the eventfds we created for it. */
interface Vring {
  q: QueueMemory;
  kickFd: number;
  callFd: number;
}

export class VhostUserTransport implements VirtioTransport {
  readonly name: string;
  readonly ringLayout: RingLayout = { placement: "separate", usedAlign: 4 };
  readonly dmaKinds: readonly DmaKind[] = ["hugepage-memfd", "memfd"];
  readonly queueSizeFixed = false;
  readonly path: string;
  readonly server: boolean;
  readonly pairs: number;
  readonly mac: Uint8Array;

  readonly #mrg: boolean;
  readonly #inOrder: boolean;
  readonly #packed: boolean;
  readonly #indirect: boolean;
  readonly #qsize: number;
  readonly #notice: NoticeSink;
  readonly #msg = new Message();
  readonly #kickValue = new Uint8Array(new BigUint64Array([1n]).buffer);

  #sock: UnixSocket | null = null;
  #listener: UnixListener | null = null;
  #backendFeatures = 0n;
  #protocolFeatures = 0n;
  #driverFeatures = 0n;
  #backendNegotiated = 0n;
  #status = 0;
  /** SET_FEATURES was sent since the last reset. */
  #featuresSent = false;
  /** Status last sent with SET_STATUS on this connection. */
  #backendStatus = 0;
  #regions: DmaRegion[] = [];
  #vrings: (Vring | null)[] = [];
  /** True while the backend has our vrings (between a successful start and reset/loss). */
  #running = false;
  #pending = 0;
  #polls = 0;
  #lastAttempt = 0;
  /** Wait between reconnect attempts now: doubles after each failure (see the module comment). */
  #retryInterval = RECONNECT_INTERVAL_MS;
  /** When the current (or last) connection passed its handshake. */
  #connectedAt = 0;
  /** "Nobody is listening" was told during this outage (it is told once). */
  #toldNobody = false;
  /**
   * Wait per reply: REPLY_TIMEOUT_MS, RECONNECT_REPLY_TIMEOUT_MS from a reconnect until the
   * backend runs, STOP_REPLY_TIMEOUT_MS while stopping.
   */
  #replyTimeout = REPLY_TIMEOUT_MS;
  #closed = false;

  // Control queue, answered locally.
  #ctrl: QueueMemory | null = null;
  #ctrlIndex = 2;
  #ctrlLastAvail = 0;
  #ctrlAvailIdx = 0; // u16 index of avail.idx in the region
  /** Our used.idx: kept here, since the copy in the ring is the backend's to overwrite too. */
  #ctrlUsedIdx = 0;
  /** Packed control ring (2.8): the wrap counter of the next slot (`#ctrlLastAvail`) to serve. */
  #ctrlWrap = 1;
  readonly #ctrlData = new Uint8Array(CTRL_MAX_BYTES);
  /**
   * Control commands answered, and what made the queue be given up: a malformed chain, an avail
   * index that moved back or too far (for tests and notices).
   */
  readonly ctrlStats = { ok: 0, rejected: 0, malformed: 0, ringErrors: 0 };
  /** Times the backend went away and came back. */
  readonly linkStats = { lost: 0, returned: 0 };

  constructor(opts: VhostUserOptions) {
    this.path = opts.path;
    this.server = opts.server ?? false;
    this.pairs = opts.queues ?? 1;
    this.#mrg = opts.mrg ?? true;
    this.#inOrder = opts.inOrder ?? true;
    this.#packed = opts.packed ?? false;
    this.#indirect = opts.indirect ?? false;
    this.#qsize = opts.qsize ?? DEFAULT_QSIZE;
    this.mac = opts.mac ?? randomLocalMac();
    this.#notice = opts.notice ?? (() => {});
    this.name = `vhost-user:${this.path}${this.server ? ",server" : ""}`;
    if (this.#qsize & (this.#qsize - 1) || this.#qsize > 32768) {
      throw new Error(`${this.name}: qsize ${this.#qsize} is not a power of two up to 32768`);
    }
    const timeout = opts.timeoutMs ?? (this.server ? 60_000 : 10_000);
    if (this.server) {
      try {
        this.#listener = new UnixListener(this.path);
      } catch (e) {
        throw new Error(`${this.name}: ${(e as Error).message}`);
      }
      const s = this.#listener.accept(timeout);
      if (s === null) {
        this.#listener.close();
        throw new Error(
          `${this.name}: no vhost-user backend connected within ${timeout} ms ` +
            `(start it with iface=${this.path},client=1)`,
        );
      }
      this.#sock = s;
    } else {
      try {
        this.#sock = UnixSocket.connect(this.path, timeout);
      } catch (e) {
        const nobody = /nobody is listening/.test((e as Error).message);
        throw new Error(
          `${this.name}: ${(e as Error).message}${
            nobody ? "; is the vhost-user backend running?" : ""
          }`,
        );
      }
    }
    try {
      this.#handshake();
    } catch (e) {
      this.close();
      throw e;
    }
    this.#connectedAt = performance.now();
  }

  /**
   * `vhost-user:PATH[,server][,queues=N][,mrg=0|1][,in_order=0|1][,packed=0|1][,indirect=0|1]
   * [,qsize=N][,mac=XX:..][,timeout=S]`. `notice` receives the transport's notices.
   */
  static fromSpec(
    path: string,
    options: Record<string, string>,
    notice?: NoticeSink,
  ): VhostUserTransport {
    if (path === "") throw new Error("vhost-user: a socket path is required (vhost-user:PATH)");
    for (const k of Object.keys(options)) {
      if (!SPEC_OPTIONS.includes(k)) {
        throw new Error(
          `vhost-user:${path}: unknown option '${k}' (known: ${SPEC_OPTIONS.join(", ")})`,
        );
      }
    }
    const o = options;
    return new VhostUserTransport({
      path,
      server: o.server !== undefined ? flag("server", o.server) : false,
      queues: o.queues !== undefined ? positiveInt("queues", o.queues, 128) : 1,
      mrg: o.mrg !== undefined ? flag("mrg", o.mrg) : true,
      inOrder: o.in_order !== undefined ? flag("in_order", o.in_order) : true,
      packed: o.packed !== undefined ? flag("packed", o.packed) : false,
      indirect: o.indirect !== undefined ? flag("indirect", o.indirect) : false,
      qsize: o.qsize !== undefined ? positiveInt("qsize", o.qsize, 32768) : undefined,
      mac: o.mac !== undefined ? parseOwnMac(`vhost-user:${path}: mac=${o.mac}`, o.mac) : undefined,
      timeoutMs: o.timeout !== undefined
        ? positiveInt("timeout", o.timeout, 86400) * 1000
        : undefined,
      notice,
    });
  }

  /** True while the backend is connected and (after DRIVER_OK) has taken our vrings. */
  get linkUp(): boolean {
    return this.#sock !== null && (this.#running || (this.#status & Status.DRIVER_OK) === 0);
  }

  /** Features the backend offered on the current (or last) connection. */
  get backendFeatures(): bigint {
    return this.#backendFeatures;
  }

  /** Virtio features last sent to the backend with SET_FEATURES. */
  get backendNegotiated(): bigint {
    return this.#backendNegotiated;
  }

  /** Protocol features negotiated with the backend. */
  get protocolFeatures(): bigint {
    return this.#protocolFeatures;
  }

  // ---- VirtioTransport -------------------------------------------------------------------

  reset(): void {
    this.#ctrl = null; // first: the driver may unmap the ring memory right after a reset
    if (this.#running) this.#stopBackend();
    else if (this.#sock !== null && this.#backendStatus !== 0) this.#resetStatus();
    this.#running = false;
    this.#status = 0;
    this.#featuresSent = false;
    this.#driverFeatures = 0n;
    this.#regions = [];
    for (const v of this.#vrings) if (v) this.#closeVring(v);
    this.#vrings = [];
  }

  getStatus(): number {
    return this.#status;
  }

  setStatus(status: number): void {
    if (status === 0) {
      this.reset();
      return;
    }
    const added = status & ~this.#status;
    this.#status = status;
    if (this.#sock !== null && added !== 0) {
      try {
        if ((added & Status.DRIVER_OK) !== 0) this.#startBackend();
        else if ((added & Status.FEATURES_OK) !== 0) this.#negotiate();
        else this.#sendStatus(this.#status);
      } catch (e) {
        // A backend that vanished mid-setup is a link down (it may come back), not an error.
        const vanished = this.#sock.peerGone(false);
        // Either way the connection ends here: the backend may already hold our memory table
        // and vrings, and closing is what makes it let go of them before the caller frees the
        // memory (a refused request leaves no clean state to stop from). What is thrown is told
        // by the caller; a vanished backend only by the notice.
        this.#pending |= this.#lost(`set-up failed: ${this.#why(e)}`, vanished);
        if (!vanished) throw e;
      }
    }
    if ((added & Status.DRIVER_OK) !== 0) this.#pending |= TransportEvent.CONFIG_CHANGED;
  }

  getDeviceFeatures(): bigint {
    let f = (this.#backendFeatures & PASSED_THROUGH) | LOCAL_FEATURES;
    if (!this.#mrg) f &= ~bit(NetFeature.MRG_RXBUF);
    if (!this.#inOrder) f &= ~bit(Feature.IN_ORDER);
    if (!this.#packed) f &= ~bit(Feature.RING_PACKED);
    if (!this.#indirect) f &= ~bit(Feature.INDIRECT_DESC);
    if (this.pairs > 1) f |= bit(NetFeature.MQ);
    return f;
  }

  setDriverFeatures(features: bigint): void {
    const extra = features & ~this.getDeviceFeatures();
    if (extra !== 0n) {
      throw new Error(
        `${this.name}: the driver asked for features not offered (0x${extra.toString(16)})`,
      );
    }
    this.#driverFeatures = features;
    this.#ctrlIndex = 2 * (has(features, NetFeature.MQ) ? this.pairs : 1);
  }

  readConfig(offset: number, length: number): Uint8Array {
    // 5.1.4: mac[6], le16 status, le16 max_virtqueue_pairs (mtu and later fields are not offered).
    const cfg = new Uint8Array(NetConfig.MTU);
    cfg.set(this.mac, NetConfig.MAC);
    const dv = new DataView(cfg.buffer);
    dv.setUint16(NetConfig.STATUS, this.linkUp ? NetConfig.S_LINK_UP : 0, true);
    dv.setUint16(NetConfig.MAX_VIRTQUEUE_PAIRS, this.pairs, true);
    const out = new Uint8Array(length);
    if (offset < cfg.length) out.set(cfg.subarray(offset, Math.min(cfg.length, offset + length)));
    return out;
  }

  queueMaxSize(index: number): number {
    if (index === this.#ctrlIndex && has(this.#driverFeatures, NetFeature.CTRL_VQ)) {
      return CTRL_QUEUE_SIZE;
    }
    if (index < 2 * this.pairs) return this.#qsize;
    return index === 2 * this.pairs ? CTRL_QUEUE_SIZE : 0;
  }

  setupQueue(q: QueueMemory): void {
    if (q.index === this.#ctrlIndex && has(this.#driverFeatures, NetFeature.CTRL_VQ)) {
      this.#ctrl = q;
      this.#ctrlLastAvail = 0;
      this.#ctrlUsedIdx = 0;
      this.#ctrlWrap = 1;
      this.#ctrlAvailIdx = (q.availOffset + Avail.IDX) >> 1;
      this.addMemory(q.region);
      return;
    }
    if (q.index >= 2 * this.pairs) {
      throw new Error(`${this.name}: queue ${q.index} does not exist (${this.pairs} pairs)`);
    }
    const old = this.#vrings[q.index];
    if (old) this.#closeVring(old);
    this.#vrings[q.index] = {
      q,
      kickFd: eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK),
      callFd: eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK),
    };
    this.addMemory(q.region);
  }

  addMemory(region: DmaRegion): void {
    if (this.#regions.includes(region)) return;
    if (region.fd < 0) {
      throw new Error(
        `${this.name}: DMA region ${region.name} (${region.kind}) has no file descriptor; ` +
          `vhost-user needs memfd or hugepage-memfd memory`,
      );
    }
    if (this.#regions.length >= MemTable.MAX_REGIONS) {
      throw new Error(
        `${this.name}: more than ${MemTable.MAX_REGIONS} memory regions (vhost-user's limit)`,
      );
    }
    this.#regions.push(region);
  }

  notify(index: number): void {
    const v = this.#vrings[index];
    if (v !== undefined && v !== null) {
      raw.write(v.kickFd, this.#kickValue, 8n);
    } else if (this.#ctrl !== null && index === this.#ctrlIndex) {
      this.#serveCtrl();
    }
  }

  /**
   * The eventfd that notifies data queue `index`, -1 when none is set up: a worker thread serving
   * the queue writes it itself (mod/fwd/workers.ts). A new one comes with every set-up.
   */
  kickFd(index: number): number {
    return this.#vrings[index]?.kickFd ?? -1;
  }

  poll(): number {
    let ev = this.#pending;
    this.#pending = 0;
    if (this.#ctrl !== null && this.#ctrlPending()) this.#serveCtrl();
    if (++this.#polls < CHECK_EVERY) return ev;
    this.#polls = 0;
    if (this.#sock !== null) {
      if (this.#sock.peerGone(true)) ev |= this.#lost("it closed the connection");
    } else if (!this.#closed) {
      ev |= this.#tryReturn();
    }
    return ev;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#ctrl = null;
    try {
      if (this.#running) this.#stopBackend();
    } finally {
      this.#running = false;
      for (const v of this.#vrings) if (v) this.#closeVring(v);
      this.#vrings = [];
      this.#sock?.close();
      this.#sock = null;
      this.#listener?.close();
      this.#listener = null;
    }
  }

  // ---- connection ------------------------------------------------------------------------

  /** First messages on a new connection: ownership, features, protocol features. */
  #handshake(): void {
    this.#request(Request.SET_OWNER, 0, false);
    this.#request(Request.GET_FEATURES, 0, true);
    const features = this.#msg.u64(0);
    if (this.#status !== 0 && (this.#driverFeatures & ~LOCAL_FEATURES & ~features) !== 0n) {
      throw new DeviceError(
        `${this.name}: the backend that connected no longer offers the negotiated features ` +
          `(offers 0x${features.toString(16)}, negotiated 0x${this.#driverFeatures.toString(16)})`,
      );
    }
    this.#backendFeatures = features;
    this.#protocolFeatures = 0n;
    this.#featuresSent = false;
    this.#backendStatus = 0;
    if (has(features, Feature.VHOST_USER_PROTOCOL_FEATURES)) {
      this.#request(Request.GET_PROTOCOL_FEATURES, 0, true);
      const offered = this.#msg.u64(0);
      const use = offered & WANTED_PROTOCOL_FEATURES;
      this.#msg.begin(Request.SET_PROTOCOL_FEATURES, U64_PAYLOAD, false);
      this.#msg.setU64(0, use);
      this.#send([]);
      this.#protocolFeatures = use;
    }
    if (this.pairs > 1) {
      if (!has(this.#protocolFeatures, ProtocolFeature.MQ)) {
        throw new Error(`${this.name}: queues=${this.pairs} but the backend has no MQ support`);
      }
      this.#request(Request.GET_QUEUE_NUM, 0, true);
      const max = Number(this.#msg.u64(0));
      if (max < this.pairs) {
        throw new Error(`${this.name}: queues=${this.pairs} but the backend allows ${max}`);
      }
    }
  }

  /** Program the backend with everything recorded since reset (see the module comment). */
  #startBackend(): void {
    if (!this.#featuresSent) this.#sendFeatures(); // a driver without the FEATURES_OK step

    this.#msg.begin(
      Request.SET_MEM_TABLE,
      MemTable.REGIONS + this.#regions.length * MemTable.REGION_SIZE,
      this.#ack,
    );
    this.#msg.setU32(MemTable.NREGIONS, this.#regions.length);
    this.#regions.forEach((r, i) => {
      const at = MemTable.REGIONS + i * MemTable.REGION_SIZE;
      this.#msg.setU64(at + MemTable.GPA, r.iova(0));
      this.#msg.setU64(at + MemTable.SIZE, r.size);
      this.#msg.setU64(at + MemTable.UADDR, r.addr);
      this.#msg.setU64(at + MemTable.MMAP_OFFSET, 0);
    });
    this.#sendChecked(this.#regions.map((r) => r.fd));

    for (let i = 0; i < this.#vrings.length; i++) {
      const v = this.#vrings[i];
      if (!v) continue;
      this.#vringFile(Request.SET_VRING_CALL, i, v.callFd);
      this.#vringState(Request.SET_VRING_NUM, i, v.q.size);
      // Rings are fresh after every reset. A packed ring's base carries the driver's wrap counter
      // in bit 15 (QEMU's vhost-user document, "Ring states"), 1 at the start (2.8.1).
      this.#vringState(Request.SET_VRING_BASE, i, this.#ringsPacked ? PACKED_FRESH_BASE : 0);
      this.#msg.begin(Request.SET_VRING_ADDR, VringAddr.SIZE, this.#ack);
      this.#msg.setU32(VringAddr.INDEX, i);
      this.#msg.setU64(VringAddr.DESC, v.q.region.addr + v.q.descOffset);
      this.#msg.setU64(VringAddr.USED, v.q.region.addr + v.q.usedOffset);
      this.#msg.setU64(VringAddr.AVAIL, v.q.region.addr + v.q.availOffset);
      this.#sendChecked([]);
      this.#vringFile(Request.SET_VRING_KICK, i, v.kickFd);
    }
    if (has(this.#backendNegotiated, Feature.VHOST_USER_PROTOCOL_FEATURES)) {
      for (let i = 0; i < this.#vrings.length; i++) {
        if (this.#vrings[i]) this.#vringState(Request.SET_VRING_ENABLE, i, 1);
      }
    }
    this.#sendStatus(this.#status);
    this.#running = true;
    this.#replyTimeout = REPLY_TIMEOUT_MS;
  }

  /** GET_VRING_BASE for every vring (the backend stops them) and SET_STATUS 0. */
  #stopBackend(): void {
    this.#running = false;
    if (this.#sock === null) return;
    this.#replyTimeout = STOP_REPLY_TIMEOUT_MS;
    try {
      for (let i = 0; i < this.#vrings.length; i++) {
        if (!this.#vrings[i]) continue;
        this.#msg.begin(Request.GET_VRING_BASE, VringState.SIZE, false);
        this.#msg.setU32(VringState.INDEX, i);
        this.#send([]);
        this.#reply(Request.GET_VRING_BASE);
      }
      this.#sendStatus(0);
    } catch (e) {
      this.#lost(`stopping the vrings failed: ${this.#why(e)}`, true, Notice.STOP_FAILED);
    } finally {
      this.#replyTimeout = REPLY_TIMEOUT_MS;
    }
  }

  /** A reset before DRIVER_OK: the backend forgets the status it was told (SET_STATUS 0). */
  #resetStatus(): void {
    try {
      this.#sendStatus(0);
    } catch (e) {
      this.#pending |= this.#lost(`reset failed: ${this.#why(e)}`);
    }
  }

  /** SET_FEATURES: the driver's features that the backend implements (LOCAL_FEATURES are ours). */
  #sendFeatures(): void {
    // MQ is offered to the driver when queues=N (the backend's protocol feature MQ was checked
    // at the handshake); the virtio bit goes to the backend only if it offers it too.
    const features = (this.#driverFeatures & ~LOCAL_FEATURES & this.#backendFeatures) |
      (this.#backendFeatures & bit(Feature.VHOST_USER_PROTOCOL_FEATURES));
    this.#msg.begin(Request.SET_FEATURES, U64_PAYLOAD, this.#ack);
    this.#msg.setU64(0, features);
    this.#sendChecked([]);
    this.#backendNegotiated = features;
    this.#featuresSent = true;
  }

  /**
   * FEATURES_OK (3.1.1 steps 5-6): SET_FEATURES; with the STATUS protocol feature the backend is
   * told FEATURES_OK and asked (GET_STATUS) whether it kept it. If it did not, FEATURES_OK is
   * cleared here too, and the driver's read-back fails the start.
   */
  #negotiate(): void {
    this.#sendFeatures();
    if (!has(this.#protocolFeatures, ProtocolFeature.STATUS)) return;
    this.#sendStatus(this.#status);
    this.#request(Request.GET_STATUS, 0, true);
    const theirs = Number(this.#msg.u64(0) & 0xffn);
    if ((theirs & Status.FEATURES_OK) === 0) {
      this.#status &= ~Status.FEATURES_OK;
      this.#notice(
        Notice.FEATURES_REFUSED,
        `the backend did not accept the features 0x${this.#backendNegotiated.toString(16)} ` +
          `(its status 0x${theirs.toString(16)})`,
      );
    }
  }

  /** SET_STATUS (when the STATUS protocol feature is negotiated): the device status byte (2.1). */
  #sendStatus(status: number): void {
    if (!has(this.#protocolFeatures, ProtocolFeature.STATUS)) return;
    this.#msg.begin(Request.SET_STATUS, U64_PAYLOAD, this.#ack);
    this.#msg.setU64(0, status & 0xff);
    this.#sendChecked([]);
    this.#backendStatus = status & 0xff;
  }

  /**
   * The connection ends (the backend closed it, or a request failed): link down, and the wait
   * before the next attempt starts over or doubles (module comment). `tell`: give `kind`'s notice.
   * Returns the events to report.
   */
  #lost(why: string, tell = true, kind: string = Notice.BACKEND_LOST): number {
    this.#sock?.close();
    this.#sock = null;
    this.#running = false;
    this.#backendStatus = 0;
    this.#replyTimeout = REPLY_TIMEOUT_MS;
    this.linkStats.lost++;
    const now = performance.now();
    this.#lastAttempt = now;
    this.#retryInterval = now - this.#connectedAt >= RECONNECT_STABLE_MS
      ? RECONNECT_INTERVAL_MS
      : Math.min(2 * this.#retryInterval, RECONNECT_BACKOFF_MAX_MS);
    this.#toldNobody = false;
    if (tell && kind === Notice.BACKEND_LOST) {
      const next = this.server
        ? "waiting for it to connect again"
        : `next attempt in ${this.#retryInterval} ms`;
      this.#notice(kind, `backend lost (${why}); link down; ${next}`);
    } else if (tell) {
      this.#notice(kind, `${why}; connection closed`);
    }
    return TransportEvent.DEVICE_LOST | TransportEvent.CONFIG_CHANGED;
  }

  /** While the backend is away: reconnect or accept (rate limited). */
  #tryReturn(): number {
    const now = performance.now();
    if (now - this.#lastAttempt < this.#retryInterval) return 0;
    this.#lastAttempt = now;
    let s: UnixSocket | null;
    try {
      s = this.server ? this.#listener!.accept(0) : UnixSocket.tryConnect(this.path);
    } catch (e) {
      // Not "nobody there yet" but a fault (the path became a file, no descriptors left, ...).
      return this.#retryLater((e as Error).message);
    }
    if (s === null) {
      // Server mode: nobody connected, and nothing failed (one poll(2)). Client mode: nobody
      // listens; told once per outage, since it is what every attempt says until it is back.
      if (this.server) return 0;
      const tell = !this.#toldNobody;
      this.#toldNobody = true;
      return this.#retryLater(`nobody is listening on ${this.path}`, tell);
    }
    this.#sock = s;
    // Short replies until the backend runs again: the port's set-up follows from this poll.
    this.#replyTimeout = RECONNECT_REPLY_TIMEOUT_MS;
    try {
      this.#handshake();
    } catch (e) {
      s.close();
      this.#sock = null;
      this.#replyTimeout = REPLY_TIMEOUT_MS;
      return this.#retryLater(this.#why(e));
    }
    this.#connectedAt = performance.now();
    this.linkStats.returned++;
    this.#notice(
      Notice.BACKEND_RETURNED,
      `backend returned (features 0x${this.#backendFeatures.toString(16)}, protocol features ` +
        `0x${this.#protocolFeatures.toString(16)}); setting the device up again`,
    );
    return TransportEvent.DEVICE_RETURNED | TransportEvent.CONFIG_CHANGED;
  }

  /** A reconnect attempt failed: wait twice as long before the next; `tell`: say why. */
  #retryLater(why: string, tell = true): number {
    this.#retryInterval = Math.min(2 * this.#retryInterval, RECONNECT_BACKOFF_MAX_MS);
    if (tell) {
      this.#notice(
        Notice.RECONNECT_FAILED,
        `reconnect failed (${why}); next attempt in ${this.#retryInterval} ms`,
      );
    }
    return 0;
  }

  /** An error's message for a notice: without this transport's name (notices name no port). */
  #why(e: unknown): string {
    const m = (e as Error).message.replace(CHECK_BACKEND, "");
    return m.startsWith(`${this.name}: `) ? m.slice(this.name.length + 2) : m;
  }

  // ---- messages --------------------------------------------------------------------------

  get #ack(): boolean {
    return has(this.#protocolFeatures, ProtocolFeature.REPLY_ACK);
  }

  #send(fds: number[]): void {
    if (this.#sock === null) throw new DeviceError(`${this.name}: the backend is not connected`);
    try {
      this.#sock.send(this.#msg.bytes.subarray(0, this.#msg.length), fds, this.#replyTimeout);
    } catch (e) {
      throw this.#failed(this.#msg.request, e);
    }
  }

  /** An error of the exchange for `request`, saying which port, which request and what to check. */
  #failed(request: number, e: unknown): Error {
    return new DeviceError(
      `${this.name}: ${requestName(request)}: ${(e as Error).message}${CHECK_BACKEND}`,
    );
  }

  /** Send the message built in #msg; when it asked for an ack, wait for it and check it. */
  #sendChecked(fds: number[]): void {
    const request = this.#msg.request;
    const needReply = (this.#msg.flags & Header.F_NEED_REPLY) !== 0;
    this.#send(fds);
    if (!needReply) return;
    this.#reply(request);
    const status = this.#msg.u64(0);
    if (status !== 0n) {
      throw new DeviceError(
        `${this.name}: the backend refused ${requestName(request)} (${status})`,
      );
    }
  }

  /** Send a request without payload (or with none needed) and, if `reply`, read its reply. */
  #request(request: number, size: number, reply: boolean): void {
    this.#msg.begin(request, size, false);
    this.#send([]);
    if (reply) this.#reply(request);
  }

  #vringState(request: number, index: number, num: number): void {
    this.#msg.begin(request, VringState.SIZE, this.#ack);
    this.#msg.setU32(VringState.INDEX, index);
    this.#msg.setU32(VringState.NUM, num);
    this.#sendChecked([]);
  }

  #vringFile(request: number, index: number, fd: number): void {
    this.#msg.begin(request, U64_PAYLOAD, this.#ack);
    this.#msg.setU64(0, index & VringFile.INDEX_MASK);
    this.#sendChecked([fd]);
  }

  /** Read one reply into #msg and check that it answers `request`. */
  #reply(request: number): void {
    if (this.#sock === null) throw new DeviceError(`${this.name}: the backend is not connected`);
    const fds: number[] = [];
    const m = this.#msg;
    try {
      this.#sock.recvExact(m.bytes, Header.LENGTH, fds, this.#replyTimeout);
      const size = m.size;
      if (size > m.bytes.length - Header.LENGTH) {
        throw new Error(`reply too large (${size} bytes)`);
      }
      if (size > 0) {
        this.#sock.recvExact(m.bytes.subarray(Header.LENGTH), size, fds, this.#replyTimeout);
      }
    } catch (e) {
      throw this.#failed(request, e);
    } finally {
      for (const fd of fds) closeFd(fd); // no reply we ask for carries descriptors
    }
    if (m.request !== request || (m.flags & Header.F_REPLY) === 0) {
      throw new DeviceError(
        `${this.name}: expected a reply to ${requestName(request)}, got ${
          requestName(m.request)
        } (flags 0x${m.flags.toString(16)})`,
      );
    }
    // Every reply we ask for carries one u64, or a vring state of the same size; anything else
    // would leave old bytes where the value is read.
    if ((m.flags & Header.VERSION_MASK) !== Header.VERSION || m.size !== U64_PAYLOAD) {
      throw new DeviceError(
        `${this.name}: malformed reply to ${requestName(request)} (version ${
          m.flags & Header.VERSION_MASK
        }, ${m.size} bytes of payload, expected version 1 and ${U64_PAYLOAD})`,
      );
    }
  }

  #closeVring(v: Vring): void {
    closeFd(v.kickFd);
    closeFd(v.callFd);
  }

  // ---- control queue (5.1.6.5), answered locally ----------------------------------------

  /** Translate a descriptor address (iova) to [region, offset], or null when it is nowhere. */
  #locate(iova: number, len: number): [DmaRegion, number] | null {
    for (const r of this.#regions) {
      const off = iova - r.iovaBase;
      if (off >= 0 && off + len <= r.size) return [r, off];
    }
    return null;
  }

  /**
   * Serve what the driver made available (at most CTRL_PER_POLL chains). The ring is the driver's
   * to write, but the backend maps it too: nothing read from it is trusted (2.7.6: the driver
   * never has more than the ring's size outstanding, so an avail index further ahead, or behind,
   * was written by someone else).
   */
  #serveCtrl(): void {
    const q = this.#ctrl!;
    if (this.#ringsPacked) {
      for (let n = 0; n < CTRL_PER_POLL && this.#ctrl !== null && this.#ctrlPending(); n++) {
        this.#servePackedChain(q);
      }
      return;
    }
    const availIdx = q.region.u16[this.#ctrlAvailIdx];
    const pending = (availIdx - this.#ctrlLastAvail) & 0xffff;
    if (pending > q.size) {
      this.#ctrlRingError(q, availIdx);
      return;
    }
    for (let n = Math.min(pending, CTRL_PER_POLL); n > 0 && this.#ctrl !== null; n--) {
      this.#serveChain(q);
    }
  }

  /** Answer the chain in the next avail slot and return it in the used ring. */
  #serveChain(q: QueueMemory): void {
    const u16 = q.region.u16;
    const u32 = q.region.u32;
    const slot = this.#ctrlLastAvail % q.size;
    const head = u16[(q.availOffset + Avail.RING + 2 * slot) >> 1];
    let got = 0;
    let ackAt: [DmaRegion, number] | null = null;
    let ok = head < q.size;
    for (let d = head, hops = 0; ok; hops++) {
      const at = q.descOffset + d * Desc.SIZE;
      const iova = u32[(at + Desc.ADDR) >> 2] + u32[(at + Desc.ADDR + 4) >> 2] * 2 ** 32;
      const len = u32[(at + Desc.LEN) >> 2];
      const flags = u16[(at + Desc.FLAGS) >> 1];
      const place = this.#locate(iova, len);
      if (place === null || hops >= q.size) {
        ok = false;
        break;
      }
      if ((flags & Desc.F_WRITE) !== 0) {
        if (len >= 1) ackAt = place;
      } else if (got + len <= CTRL_MAX_BYTES) {
        this.#ctrlData.set(place[0].u8.subarray(place[1], place[1] + len), got);
        got += len;
      } else {
        ok = false;
      }
      if ((flags & Desc.F_NEXT) === 0) break;
      d = u16[(at + Desc.NEXT) >> 1];
      if (d >= q.size) ok = false;
    }
    let written = 0;
    if (ok && ackAt !== null && got >= 2) {
      const ack = this.#ctrlCommand(this.#ctrlData[0], this.#ctrlData[1], got - 2);
      ackAt[0].u8[ackAt[1]] = ack;
      written = 1;
      if (ack === Ctrl.OK) this.ctrlStats.ok++;
      else this.ctrlStats.rejected++;
    }
    const e = q.usedOffset + Used.RING + (this.#ctrlUsedIdx % q.size) * Used.ELEM_SIZE;
    u32[(e + Used.ELEM_ID) >> 2] = head;
    u32[(e + Used.ELEM_LEN) >> 2] = written;
    this.#ctrlUsedIdx = (this.#ctrlUsedIdx + 1) & 0xffff;
    Atomics.store(u16, (q.usedOffset + Used.IDX) >> 1, this.#ctrlUsedIdx);
    this.#ctrlLastAvail = (this.#ctrlLastAvail + 1) & 0xffff;
    if (written === 0) {
      // Returned without an ack, so the driver's command fails at once.
      this.ctrlStats.malformed++;
      this.#ctrlGiveUp(`a malformed command chain (descriptor ${head})`);
    }
  }

  /** VIRTIO_F_RING_PACKED was negotiated: every ring is packed (2.8). */
  get #ringsPacked(): boolean {
    return has(this.#driverFeatures, Feature.RING_PACKED);
  }

  /** The driver made a command available since the last one served. */
  #ctrlPending(): boolean {
    const q = this.#ctrl!;
    if (!this.#ringsPacked) return q.region.u16[this.#ctrlAvailIdx] !== this.#ctrlLastAvail;
    return this.#packedAvail(q, this.#ctrlLastAvail, this.#ctrlWrap);
  }

  /** Descriptor `slot` of packed ring `q` is available for wrap counter `wrap` (2.8.1). */
  #packedAvail(q: QueueMemory, slot: number, wrap: number): boolean {
    const f = q.region.u16[(q.descOffset + slot * PackedDesc.SIZE + PackedDesc.FLAGS) >> 1];
    return ((f & PackedDesc.F_AVAIL) !== 0) === (wrap === 1) &&
      ((f & PackedDesc.F_USED) !== 0) !== (wrap === 1);
  }

  /**
   * Packed control ring (2.8): answer the buffer at the next slot (its descriptors at consecutive
   * slots, each available for its round, 2.8.6) and mark it used in place, its first slot, with
   * the Buffer ID of its last descriptor. Commands are served one at a time and in order, so the
   * used position is the available one. A buffer that runs past the ring, or a descriptor in it
   * that is not available, is something the driver never writes (see #ctrlGiveUp).
   */
  #servePackedChain(q: QueueMemory): void {
    const u16 = q.region.u16;
    const u32 = q.region.u32;
    const head = this.#ctrlLastAvail;
    const headWrap = this.#ctrlWrap;
    let slot = head;
    let wrap = headWrap;
    let got = 0;
    let ackAt: [DmaRegion, number] | null = null;
    let ok = true;
    let id = 0;
    for (let count = 0;; count++) {
      if (count >= q.size || !this.#packedAvail(q, slot, wrap)) {
        ok = false;
        break;
      }
      const at = q.descOffset + slot * PackedDesc.SIZE;
      const iova = u32[(at + PackedDesc.ADDR) >> 2] +
        u32[(at + PackedDesc.ADDR + 4) >> 2] * 2 ** 32;
      const len = u32[(at + PackedDesc.LEN) >> 2];
      const flags = u16[(at + PackedDesc.FLAGS) >> 1];
      id = u16[(at + PackedDesc.ID) >> 1];
      slot++;
      if (slot === q.size) {
        slot = 0;
        wrap ^= 1;
      }
      const place = this.#locate(iova, len);
      if (place === null) ok = false;
      else if ((flags & PackedDesc.F_WRITE) !== 0) {
        if (len >= 1) ackAt = place;
      } else if (got + len <= CTRL_MAX_BYTES) {
        this.#ctrlData.set(place[0].u8.subarray(place[1], place[1] + len), got);
        got += len;
      } else {
        ok = false;
      }
      if ((flags & PackedDesc.F_NEXT) === 0 || !ok) break;
    }
    if (!ok) {
      this.ctrlStats.malformed++;
      this.#ctrlGiveUp(`a malformed command buffer at slot ${head}`);
      return;
    }
    let written = 0;
    if (ackAt !== null && got >= 2) {
      const ack = this.#ctrlCommand(this.#ctrlData[0], this.#ctrlData[1], got - 2);
      ackAt[0].u8[ackAt[1]] = ack;
      written = 1;
      if (ack === Ctrl.OK) this.ctrlStats.ok++;
      else this.ctrlStats.rejected++;
    }
    const at = q.descOffset + head * PackedDesc.SIZE;
    u32[(at + PackedDesc.LEN) >> 2] = written;
    u16[(at + PackedDesc.ID) >> 1] = id;
    const used = (written > 0 ? PackedDesc.F_WRITE : 0) |
      (headWrap === 1 ? PackedDesc.F_AVAIL | PackedDesc.F_USED : 0);
    Atomics.store(u16, (at + PackedDesc.FLAGS) >> 1, used);
    this.#ctrlLastAvail = slot;
    this.#ctrlWrap = wrap;
    if (written === 0) {
      this.ctrlStats.malformed++;
      this.#ctrlGiveUp(`a command buffer without its ack (slot ${head})`);
    }
  }

  /** The avail index is not one the driver wrote (see #serveCtrl). */
  #ctrlRingError(q: QueueMemory, availIdx: number): void {
    this.ctrlStats.ringErrors++;
    this.#ctrlGiveUp(
      `avail.idx ${availIdx} with ${this.#ctrlLastAvail} served, not within the ring's ` +
        `${q.size} entries ahead`,
    );
  }

  /**
   * The control ring held `what`, which the driver never writes: the backend wrote into it (it
   * maps that memory). Told once, and the queue is no longer served until a reset sets it up
   * again: serving on would let the backend decide how much work every poll does.
   */
  #ctrlGiveUp(what: string): void {
    this.#ctrl = null;
    this.#notice(
      Notice.CTRL_RING_ERROR,
      `control queue: ${what}, which the driver never writes: the ring was written by the ` +
        `backend; the control queue is no longer served until the port restarts`,
    );
  }

  /** Answer one command; `n` bytes of data follow class and command in #ctrlData. */
  #ctrlCommand(cls: number, cmd: number, n: number): number {
    const data = this.#ctrlData;
    switch (cls) {
      case Ctrl.RX:
        // Receive modes filter nothing on a vhost-user link: every frame reaches us anyway.
        return cmd <= Ctrl.RX_NOBCAST && n >= 1 ? Ctrl.OK : Ctrl.ERR;
      case Ctrl.MAC:
        if (cmd === Ctrl.MAC_TABLE_SET) return Ctrl.OK; // no filtering on vhost-user
        if (cmd === Ctrl.MAC_ADDR_SET && n >= 6) {
          this.mac.set(data.subarray(2, 8));
          return Ctrl.OK;
        }
        return Ctrl.ERR;
      case Ctrl.MQ: {
        if (cmd !== Ctrl.MQ_VQ_PAIRS_SET || n < 2) return Ctrl.ERR;
        const pairs = data[2] | (data[3] << 8);
        return pairs >= 1 && pairs <= this.pairs ? Ctrl.OK : Ctrl.ERR;
      }
      case Ctrl.ANNOUNCE:
        return cmd === Ctrl.ANNOUNCE_ACK ? Ctrl.OK : Ctrl.ERR;
      default:
        return Ctrl.ERR; // VLAN filtering and offloads are not offered
    }
  }
}
