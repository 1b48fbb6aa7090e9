/**
 * A multiqueue tap device on the host, for a guest NIC with several queue pairs: QEMU's dgram
 * netdev (traffic.ts) has one queue, `-netdev tap,queues=N` has N. A frame written to the packet
 * socket bound to the tap enters the guest NIC. Needs root (CAP_NET_ADMIN), /dev/net/tun and the
 * `ip` tool; `TapWire.create` says which is missing.
 */

const libc = Deno.dlopen("libc.so.6", {
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  write: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  close: { parameters: ["i32"], result: "i32" },
}).symbols;
const AF_PACKET = 17;
const SOCK_RAW = 3;
const SOCK_CLOEXEC = 0x80000;

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
  readonly counters = { sent: 0, sendErrors: 0 };
  #fd: number;

  private constructor(name: string, fd: number) {
    this.name = name;
    this.#fd = fd;
  }

  /** Create tap `name` (multi_queue, up) and a packet socket bound to it. */
  static create(name: string): TapWire {
    ip(["tuntap", "add", "dev", name, "mode", "tap", "multi_queue"]);
    try {
      ip(["link", "set", name, "up"]);
      const ifindex = Number(Deno.readTextFileSync(`/sys/class/net/${name}/ifindex`).trim());
      const fd = libc.socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
      if (fd < 0) throw new Error(`${name}: no packet socket (root needed)`);
      // struct sockaddr_ll: u16 family, be16 protocol (0: send only), i32 ifindex, then zeros.
      const sll = new Uint8Array(20);
      const v = new DataView(sll.buffer);
      v.setUint16(0, AF_PACKET, true);
      v.setInt32(4, ifindex, true);
      if (libc.bind(fd, sll, sll.length) !== 0) {
        libc.close(fd);
        throw new Error(`${name}: cannot bind a packet socket to it`);
      }
      return new TapWire(name, fd);
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

  /** Close the socket and delete the tap. */
  close(): void {
    if (this.#fd < 0) return;
    libc.close(this.#fd);
    this.#fd = -1;
    ip(["link", "del", this.name]);
  }
}
