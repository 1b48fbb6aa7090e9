/**
 * A multiqueue tap device on the host, for a guest NIC with several queue pairs: QEMU's dgram
 * netdev (traffic.ts) has one queue, `-netdev tap,queues=N` has N. A frame written to the packet
 * socket bound to the tap enters the guest NIC; `listen` hands over every frame the guest sends.
 * The host's own IPv6 is turned off on the tap, so that nothing but the test's frames passes.
 * Needs root (CAP_NET_ADMIN), /dev/net/tun and the `ip` tool.
 */

const libc = Deno.dlopen("libc.so.6", {
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  write: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  recv: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize" },
  close: { parameters: ["i32"], result: "i32" },
}).symbols;
const AF_PACKET = 17;
const SOCK_RAW = 3;
const SOCK_CLOEXEC = 0x80000;
const SOCK_NONBLOCK = 0x800;
/** ETH_P_ALL in network byte order: a packet socket that receives every frame. */
const ETH_P_ALL_BE = 0x0300;
const MAX_FRAME = 65536;

function ip(args: string[]): void {
  const out = new Deno.Command("ip", { args, stdout: "null", stderr: "piped" }).outputSync();
  if (!out.success) {
    throw new Error(`ip ${args.join(" ")}: ${new TextDecoder().decode(out.stderr).trim()}`);
  }
}

/** A tap device with a packet socket to send frames into whatever reads it (QEMU). */
export class TapWire {
  readonly name: string;
  /** Frames written, and writes that failed. */
  readonly counters = { sent: 0, sendErrors: 0, received: 0 };
  #fd: number;
  readonly #ifindex: number;
  #rxFd = -1;
  #timer: ReturnType<typeof setInterval> | undefined;

  private constructor(name: string, fd: number, ifindex: number) {
    this.name = name;
    this.#fd = fd;
    this.#ifindex = ifindex;
  }

  /** Create tap `name` (multi_queue, up) and a packet socket bound to it. */
  static create(name: string): TapWire {
    ip(["tuntap", "add", "dev", name, "mode", "tap", "multi_queue"]);
    try {
      Deno.writeTextFileSync(`/proc/sys/net/ipv6/conf/${name}/disable_ipv6`, "1");
      ip(["link", "set", name, "up"]);
      const ifindex = Number(Deno.readTextFileSync(`/sys/class/net/${name}/ifindex`).trim());
      return new TapWire(name, packetSocket(name, ifindex, 0, 0), ifindex);
    } catch (e) {
      ip(["link", "del", name]);
      throw e;
    }
  }

  /** QEMU arguments for a netdev `id` on this tap with `queues` queues. */
  netdev(id: string, queues: number): string[] {
    return [
      "-netdev",
      `tap,id=${id},ifname=${this.name},queues=${queues},script=no,downscript=no,vhost=off`,
    ];
  }

  /** Send one frame into the tap (to the guest). */
  send(frame: Uint8Array<ArrayBuffer>): boolean {
    const ok = Number(libc.write(this.#fd, frame, BigInt(frame.length))) === frame.length;
    if (ok) this.counters.sent++;
    else this.counters.sendErrors++;
    return ok;
  }

  /** Call `onFrame` with every frame the guest sends (a view valid during the call), from now on. */
  listen(onFrame: (frame: Uint8Array) => void): void {
    this.#rxFd = packetSocket(this.name, this.#ifindex, ETH_P_ALL_BE, SOCK_NONBLOCK);
    const buf = new Uint8Array(MAX_FRAME);
    const fd = this.#rxFd;
    this.#timer = setInterval(() => {
      for (;;) {
        const n = Number(libc.recv(fd, buf, BigInt(MAX_FRAME), 0));
        if (n <= 0) return;
        this.counters.received++;
        onFrame(buf.subarray(0, n));
      }
    }, 1);
  }

  /** Close the sockets and delete the tap. */
  close(): void {
    if (this.#fd < 0) return;
    clearInterval(this.#timer);
    if (this.#rxFd >= 0) libc.close(this.#rxFd);
    libc.close(this.#fd);
    this.#fd = -1;
    ip(["link", "del", this.name]);
  }
}

/** A packet socket bound to interface `ifindex` for `protocol` (network order; 0: send only). */
function packetSocket(name: string, ifindex: number, protocol: number, flags: number): number {
  const fd = libc.socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC | flags, protocol);
  if (fd < 0) throw new Error(`${name}: no packet socket (root needed)`);
  // struct sockaddr_ll: u16 family, be16 protocol, i32 ifindex, then zeros.
  const sll = new Uint8Array(20);
  const v = new DataView(sll.buffer);
  v.setUint16(0, AF_PACKET, true);
  v.setUint16(2, protocol, true);
  v.setInt32(4, ifindex, true);
  if (libc.bind(fd, sll, sll.length) !== 0) {
    libc.close(fd);
    throw new Error(`${name}: cannot bind a packet socket to it`);
  }
  return fd;
}
