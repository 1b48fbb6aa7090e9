/**
 * AF_UNIX sockets through libc: connect, listen/accept, whole-message send and receive with file
 * descriptors passed as SCM_RIGHTS ancillary data (unix(7), cmsg(3)), and poll(2) helpers with
 * timeouts so nothing waits forever for a peer.
 *
 * Everything here is cold path (control messages, connection checks). The struct layouts below
 * are Linux x86_64 (LP64) and are written once, as data.
 */
import {
  addressOf,
  AF_UNIX,
  check,
  close,
  cstr,
  EAGAIN,
  EINTR,
  errno,
  MSG_DONTWAIT,
  MSG_NOSIGNAL,
  POLLERR,
  POLLHUP,
  POLLIN,
  raw,
  SCM_RIGHTS,
  SOCK_CLOEXEC,
  SOCK_NONBLOCK,
  SOCK_STREAM,
  SOL_SOCKET,
  SysError,
} from "./libc.ts";

/** struct sockaddr_un { sa_family_t sun_family; char sun_path[108]; } (unix(7)). */
const SockaddrUn = { FAMILY: 0, PATH: 2, PATH_MAX: 108, SIZE: 110 } as const;

/** struct msghdr (sendmsg(2)), LP64: pointers and size_t are 8 bytes. */
const MsgHdr = {
  NAME: 0,
  NAMELEN: 8,
  IOV: 16,
  IOVLEN: 24,
  CONTROL: 32,
  CONTROLLEN: 40,
  FLAGS: 48,
  SIZE: 56,
} as const;

/** struct iovec { void *iov_base; size_t iov_len; }. */
const IoVec = { BASE: 0, LEN: 8, SIZE: 16 } as const;

/** struct cmsghdr { size_t cmsg_len; int cmsg_level; int cmsg_type; } then data, 8-aligned. */
const CmsgHdr = { LEN: 0, LEVEL: 8, TYPE: 12, DATA: 16 } as const;

/** struct pollfd { int fd; short events; short revents; }. */
const PollFd = { FD: 0, EVENTS: 4, REVENTS: 6, SIZE: 8 } as const;

/** Most descriptors accepted in one message (vhost-user sends at most 8, the memory table). */
export const MAX_FDS = 8;
const CONTROL_SPACE = CmsgHdr.DATA + MAX_FDS * 4;

const ENOENT = 2;
const ECONNREFUSED = 111;

/**
 * One connect(2) attempt on a fresh non-blocking socket: the descriptor, or -errno. A listener
 * whose backlog is full answers EAGAIN at once instead of blocking.
 */
function connectFd(path: string, type: number): number {
  const fd = check("socket", raw.socket(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  const sa = sockaddr(path);
  if (raw.connect(fd, sa, sa.length) < 0) {
    const e = errno();
    close(fd);
    return -e;
  }
  return fd;
}

/**
 * poll(2) one descriptor for `events`; returns the revents mask (0 on timeout). `timeoutMs` < 0
 * waits forever (avoid), 0 only checks. EINTR is retried.
 */
export function pollFd(fd: number, events: number, timeoutMs: number): number {
  const pfd = new Uint8Array(PollFd.SIZE);
  const dv = new DataView(pfd.buffer);
  dv.setInt32(PollFd.FD, fd, true);
  dv.setInt16(PollFd.EVENTS, events, true);
  for (;;) {
    const r = raw.poll(pfd, 1n, timeoutMs);
    if (r < 0) {
      if (errno() === EINTR) continue;
      throw new SysError("poll", errno());
    }
    return r === 0 ? 0 : dv.getUint16(PollFd.REVENTS, true);
  }
}

function sockaddr(path: string): Uint8Array<ArrayBuffer> {
  const p = new TextEncoder().encode(path);
  if (p.length >= SockaddrUn.PATH_MAX) {
    throw new Error(`unix socket path too long (${p.length} bytes, max 107): ${path}`);
  }
  const sa = new Uint8Array(SockaddrUn.SIZE);
  new DataView(sa.buffer).setUint16(SockaddrUn.FAMILY, AF_UNIX, true);
  sa.set(p, SockaddrUn.PATH);
  return sa;
}

/** A connected AF_UNIX socket (stream or seqpacket). */
export class UnixSocket {
  #fd: number;
  // One msghdr/iovec/control block per socket, reused by every call (cold path, but no garbage).
  readonly #msg = new Uint8Array(MsgHdr.SIZE);
  readonly #iov = new Uint8Array(IoVec.SIZE);
  readonly #ctl = new Uint8Array(CONTROL_SPACE);
  readonly #msgView = new DataView(this.#msg.buffer);
  readonly #iovView = new DataView(this.#iov.buffer);
  readonly #ctlView = new DataView(this.#ctl.buffer);

  constructor(fd: number) {
    this.#fd = fd;
  }

  get fd(): number {
    return this.#fd;
  }

  get closed(): boolean {
    return this.#fd < 0;
  }

  /**
   * Connect to the socket at `path` (non-blocking: send and receive wait through poll). Returns
   * null when nobody listens there yet (ENOENT, ECONNREFUSED) or the listener does not accept
   * (EAGAIN: its backlog is full), so callers can retry without hanging; other errors throw.
   */
  static tryConnect(path: string, type = SOCK_STREAM): UnixSocket | null {
    const fd = connectFd(path, type);
    if (fd >= 0) return new UnixSocket(fd);
    if (-fd === ENOENT || -fd === ECONNREFUSED || -fd === EAGAIN) return null;
    throw new SysError("connect", -fd, path);
  }

  /**
   * Connect, retrying every 50 ms for up to `timeoutMs`; throws a clear error after that, or at
   * once when nobody could ever listen at `path` (its directory is missing, it is not a socket).
   */
  static connect(path: string, timeoutMs: number, type = SOCK_STREAM): UnixSocket {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const s = UnixSocket.tryConnect(path, type);
      if (s) return s;
      const dir = missingDirectory(path);
      if (dir !== null) {
        throw new Error(
          `cannot connect to unix socket ${path}: the directory ${dir} does not exist`,
        );
      }
      notASocket(path);
      if (Date.now() >= deadline) {
        throw new Error(
          `cannot connect to unix socket ${path}: nobody is listening there (waited ${timeoutMs} ms)`,
        );
      }
      pollFd(-1, 0, 50); // sleep 50 ms (poll ignores negative fds)
    }
  }

  /**
   * Send all of `data`; `fds` (at most MAX_FDS) travel as SCM_RIGHTS with the first byte.
   * Throws when the peer is gone (EPIPE, ECONNRESET) or the send does not finish in `timeoutMs`.
   */
  send(data: Uint8Array<ArrayBuffer>, fds: readonly number[] = [], timeoutMs = 5000): void {
    if (fds.length > MAX_FDS) throw new RangeError(`at most ${MAX_FDS} descriptors per message`);
    let sent = 0;
    let withFds = fds.length > 0;
    const deadline = Date.now() + timeoutMs;
    while (sent < data.length) {
      this.#prepare(data, sent, data.length - sent, withFds ? fds.length : 0);
      if (withFds) {
        const space = CmsgHdr.DATA + Math.ceil((fds.length * 4) / 8) * 8;
        this.#ctlView.setBigUint64(CmsgHdr.LEN, BigInt(CmsgHdr.DATA + fds.length * 4), true);
        this.#ctlView.setInt32(CmsgHdr.LEVEL, SOL_SOCKET, true);
        this.#ctlView.setInt32(CmsgHdr.TYPE, SCM_RIGHTS, true);
        for (let i = 0; i < fds.length; i++) {
          this.#ctlView.setInt32(CmsgHdr.DATA + 4 * i, fds[i], true);
        }
        this.#msgView.setBigUint64(MsgHdr.CONTROLLEN, BigInt(space), true);
      }
      const r = Number(raw.sendmsg(this.#liveFd(), this.#msg, MSG_NOSIGNAL | MSG_DONTWAIT));
      if (r < 0) {
        const e = errno();
        if (e === EINTR) continue;
        if (e === EAGAIN) {
          const left = deadline - Date.now();
          if (left <= 0) throw new Error(`unix socket send timed out after ${timeoutMs} ms`);
          pollFd(this.#fd, 0x4, /* POLLOUT */ Math.min(left, 100));
          continue;
        }
        throw new SysError("sendmsg", e);
      }
      sent += r;
      withFds = false;
    }
  }

  /**
   * Receive up to `buf.length` bytes, waiting at most `timeoutMs` for the first one. Descriptors
   * that arrive are appended to `fds`. Returns the byte count, 0 when the peer closed, -1 on
   * timeout.
   */
  recv(buf: Uint8Array<ArrayBuffer>, fds: number[], timeoutMs: number): number {
    const ev = pollFd(this.#liveFd(), POLLIN, timeoutMs);
    if (ev === 0) return -1;
    for (;;) {
      this.#prepare(buf, 0, buf.length, MAX_FDS);
      const r = Number(raw.recvmsg(this.#fd, this.#msg, MSG_DONTWAIT));
      if (r < 0) {
        const e = errno();
        if (e === EINTR) continue;
        if (e === EAGAIN) return -1;
        if (e === 104 /* ECONNRESET */) return 0;
        throw new SysError("recvmsg", e);
      }
      this.#collectFds(fds);
      return r;
    }
  }

  /**
   * Receive exactly `len` bytes into `buf[0..len)`, within `timeoutMs` in all. Throws when the
   * peer closes or the time runs out (a peer that stops answering never hangs the caller).
   */
  recvExact(buf: Uint8Array<ArrayBuffer>, len: number, fds: number[], timeoutMs: number): void {
    const deadline = Date.now() + timeoutMs;
    let got = 0;
    while (got < len) {
      const left = deadline - Date.now();
      const part = buf.subarray(got, len);
      const r = left > 0 ? this.recv(part, fds, left) : -1;
      if (r === 0) throw new Error("unix socket: the peer closed the connection");
      if (r < 0) throw new Error(`unix socket: no answer from the peer within ${timeoutMs} ms`);
      got += r;
    }
  }

  /**
   * Cheap liveness check (one poll(2), no wait): true when the peer hung up or the socket has an
   * error, or when unread data is waiting and `dataMeansClosed` (a protocol where the peer never
   * speaks unasked).
   */
  peerGone(dataMeansClosed: boolean): boolean {
    if (this.#fd < 0) return true;
    const ev = pollFd(this.#fd, POLLIN, 0);
    if ((ev & (POLLHUP | POLLERR)) !== 0) return true;
    return dataMeansClosed && (ev & POLLIN) !== 0;
  }

  close(): void {
    if (this.#fd < 0) return;
    close(this.#fd);
    this.#fd = -1;
  }

  #liveFd(): number {
    if (this.#fd < 0) throw new Error("unix socket is closed");
    return this.#fd;
  }

  /** Fill the reused msghdr for one iovec over `buf[off..off+len)` and `nfds` descriptors of room. */
  #prepare(buf: Uint8Array<ArrayBuffer>, off: number, len: number, nfds: number): void {
    this.#msg.fill(0);
    this.#ctl.fill(0);
    this.#iovView.setBigUint64(IoVec.BASE, addressOf(buf) + BigInt(off), true);
    this.#iovView.setBigUint64(IoVec.LEN, BigInt(len), true);
    this.#msgView.setBigUint64(MsgHdr.IOV, addressOf(this.#iov), true);
    this.#msgView.setBigUint64(MsgHdr.IOVLEN, 1n, true);
    if (nfds > 0) {
      this.#msgView.setBigUint64(MsgHdr.CONTROL, addressOf(this.#ctl), true);
      this.#msgView.setBigUint64(MsgHdr.CONTROLLEN, BigInt(CONTROL_SPACE), true);
    }
  }

  #collectFds(out: number[]): void {
    const controlLen = Number(this.#msgView.getBigUint64(MsgHdr.CONTROLLEN, true));
    let off = 0;
    while (off + CmsgHdr.DATA <= controlLen) {
      const len = Number(this.#ctlView.getBigUint64(off + CmsgHdr.LEN, true));
      if (len < CmsgHdr.DATA) break;
      const level = this.#ctlView.getInt32(off + CmsgHdr.LEVEL, true);
      const type = this.#ctlView.getInt32(off + CmsgHdr.TYPE, true);
      if (level === SOL_SOCKET && type === SCM_RIGHTS) {
        for (let p = off + CmsgHdr.DATA; p + 4 <= off + len; p += 4) {
          out.push(this.#ctlView.getInt32(p, true));
        }
      }
      off += Math.ceil(len / 8) * 8;
    }
  }
}

/**
 * A listening AF_UNIX stream socket. A socket file left at `path` by a process that is gone is
 * replaced; anything else there (a file that is not a socket, a socket someone listens on) is an
 * error and stays as it is. `close()` removes the socket file if it is still the one it created.
 */
export class UnixListener {
  #fd: number;
  readonly path: string;
  /** Inode of the socket file bound here, to recognise it at close. */
  readonly #ino: number | null;

  constructor(path: string, backlog = 1) {
    this.path = path;
    const sa = sockaddr(path);
    const dir = missingDirectory(path);
    if (dir !== null) {
      throw new Error(`cannot listen on ${path}: the directory ${dir} does not exist`);
    }
    removeStaleSocket(path);
    const fd = check(
      "socket",
      raw.socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0),
    );
    try {
      check("bind", raw.bind(fd, sa, sa.length), path);
      check("listen", raw.listen(fd, backlog), path);
    } catch (e) {
      close(fd);
      throw e;
    }
    this.#fd = fd;
    this.#ino = Deno.lstatSync(path).ino;
  }

  get fd(): number {
    return this.#fd;
  }

  /** Accept one connection, waiting at most `timeoutMs` (0: only check); null when none came. */
  accept(timeoutMs: number): UnixSocket | null {
    if (this.#fd < 0) throw new Error(`listener on ${this.path} is closed`);
    if (pollFd(this.#fd, POLLIN, timeoutMs) === 0) return null;
    const fd = raw.accept4(this.#fd, null, null, SOCK_CLOEXEC);
    if (fd < 0) {
      const e = errno();
      if (e === EAGAIN || e === EINTR) return null;
      throw new SysError("accept4", e, this.path);
    }
    return new UnixSocket(fd);
  }

  close(): void {
    if (this.#fd < 0) return;
    close(this.#fd);
    this.#fd = -1;
    if (lstatOrNull(this.path)?.ino === this.#ino) raw.unlink(cstr(this.path));
  }
}

/** What is at `path` itself (not following a link), or null when nothing is. */
function lstatOrNull(path: string): Deno.FileInfo | null {
  try {
    return Deno.lstatSync(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
}

/** The directory `path` would be in, when it does not exist (else null). */
function missingDirectory(path: string): string | null {
  const slash = path.lastIndexOf("/");
  const dir = slash < 0 ? "." : slash === 0 ? "/" : path.slice(0, slash);
  try {
    Deno.statSync(dir);
    return null;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return dir;
    throw e;
  }
}

/** Throws when something other than a socket is at `path` (no one could ever listen there). */
function notASocket(path: string): void {
  const info = lstatOrNull(path);
  if (info !== null && !info.isSocket) {
    throw new Error(`cannot connect to ${path}: it exists and is not a socket`);
  }
}

/**
 * Make way for a listener at `path`: nothing there, or a socket file nobody listens on any more
 * (removed). Throws, touching nothing, when `path` is something else or someone listens there.
 */
function removeStaleSocket(path: string): void {
  const info = lstatOrNull(path);
  if (info === null) return;
  if (!info.isSocket) {
    throw new Error(`${path} exists and is not a socket: remove it or choose another path`);
  }
  const fd = connectFd(path, SOCK_STREAM);
  if (fd >= 0 || -fd === EAGAIN) {
    if (fd >= 0) close(fd);
    throw new Error(`another process listens on ${path}: stop it or choose another path`);
  }
  if (-fd !== ECONNREFUSED && -fd !== ENOENT) throw new SysError("connect", -fd, path);
  raw.unlink(cstr(path));
}
