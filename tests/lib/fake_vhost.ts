/**
 * A misbehaving vhost-user backend for tests, in a subprocess (`deno eval`). It listens on a
 * path, accepts one connection after another (until none comes for 10 s), answers the handshake
 * (VERSION_1 and PROTOCOL_FEATURES; protocol features REPLY_ACK and STATUS) and then misbehaves
 * as its mode says:
 *
 * - `ok`: nothing (answers every request that wants an answer)
 * - `nack-mem`: refuses SET_MEM_TABLE; `nack-enable`: refuses SET_VRING_ENABLE
 * - `hangup`: closes the connection at SET_MEM_TABLE (every time)
 * - `wrong-reply`: answers GET_FEATURES with a reply to GET_PROTOCOL_FEATURES
 * - `short-reply`: answers GET_PROTOCOL_FEATURES without payload
 * - `drop-features-ok`: answers GET_STATUS without FEATURES_OK
 * - `deaf-stop`: never answers GET_VRING_BASE
 * - `ctrl-tamper`: at the first DRIVER_OK, reads `DESC_ADDR AVAIL_IDX_ADDR USED_IDX_ADDR SIZE
 *   AHEAD SECONDS` from stdin (front-end user addresses of a ring's descriptor table, avail.idx
 *   and used.idx, and its size) and, through the memory table's file descriptors as any backend
 *   could, makes every descriptor a 1-byte buffer chained to the next (in a circle), then keeps
 *   writing avail.idx = used.idx + AHEAD for that long. AHEAD -1: an avail index always one
 *   step behind (65535 ahead of) what was used; each entry a chain that never ends.
 *
 * It prints one line per event: "conn" per connection, "status N" per SET_STATUS, "mem" per
 * SET_MEM_TABLE, "closed" when a connection ends, "tampering" and "tampered N" around ctrl-tamper.
 */

const CODE = `
  import { UnixListener } from "SOCKET_URL";
  import { pread, pwrite } from "LIBC_URL";
  const [path, mode] = Deno.args;
  const l = new UnixListener(path);
  const hdr = new Uint8Array(12), dv = new DataView(hdr.buffer);
  const body = new Uint8Array(512), bv = new DataView(body.buffer);
  let tampered = false;
  for (;;) {
    const s = l.accept(10000);
    if (s === null) break;
    console.log("conn");
    const fds = [];
    let regions = [];
    let status = 0;
    const reply = (req, u64, size = 8) => {
      const m = new Uint8Array(12 + size), v = new DataView(m.buffer);
      v.setUint32(0, req, true); v.setUint32(4, 1 | 4, true); v.setUint32(8, size, true);
      if (size === 8) v.setBigUint64(12, BigInt(u64), true);
      s.send(m);
    };
    // The region holding front-end address a, a's offset in its file, and the region's gpa.
    const at = (a) => {
      const r = regions.find((r) => a >= r.uaddr && a < r.uaddr + r.size);
      return [r.fd, a - r.uaddr + r.offset, r.gpa];
    };
    const tamper = () => {
      const line = new Uint8Array(200);
      const n = Deno.stdin.readSync(line);
      const [desc, avail, used, size, ahead, secs] = new TextDecoder().decode(line.subarray(0, n))
        .trim().split(" ").map(Number);
      const [df, dof, gpa] = at(desc), [af, ao] = at(avail), [uf, uo] = at(used);
      // struct virtq_desc { le64 addr; le32 len; le16 flags; le16 next; }, flags NEXT = 1.
      const table = new Uint8Array(16 * size), tv = new DataView(table.buffer);
      for (let i = 0; i < size; i++) {
        tv.setBigUint64(16 * i, BigInt(gpa), true);
        tv.setUint32(16 * i + 8, 1, true);
        tv.setUint16(16 * i + 12, 1, true);
        tv.setUint16(16 * i + 14, (i + 1) % size, true);
      }
      pwrite(df, table, dof);
      const u16 = new Uint8Array(2), w = new DataView(u16.buffer);
      console.log("tampering");
      let times = 0;
      for (const end = Date.now() + secs * 1000; Date.now() < end; times++) {
        pread(uf, u16, uo);
        w.setUint16(0, (w.getUint16(0, true) + ahead) & 0xffff, true);
        pwrite(af, u16, ao);
      }
      console.log("tampered " + times);
    };
    try {
      for (;;) {
        fds.length = 0;
        s.recvExact(hdr, 12, fds, 10000);
        const req = dv.getUint32(0, true), flags = dv.getUint32(4, true);
        const size = dv.getUint32(8, true);
        if (size) s.recvExact(body, size, fds, 10000);
        if (req === 39) {
          status = Number(bv.getBigUint64(0, true));
          console.log("status " + status);
        }
        if (req === 5) {
          console.log("mem");
          regions = [];
          for (let i = 0; i < bv.getUint32(0, true); i++) {
            const o = 8 + 32 * i;
            regions.push({
              gpa: Number(bv.getBigUint64(o, true)),
              size: Number(bv.getBigUint64(o + 8, true)),
              uaddr: Number(bv.getBigUint64(o + 16, true)),
              offset: Number(bv.getBigUint64(o + 24, true)),
              fd: fds[i],
            });
          }
        }
        if (req === 1) reply(mode === "wrong-reply" ? 15 : 1, (1n << 32n) | (1n << 30n));
        else if (req === 15) reply(15, (1n << 3n) | (1n << 16n), mode === "short-reply" ? 0 : 8);
        else if (req === 40) reply(40, mode === "drop-features-ok" ? status & ~8 : status);
        else if (req === 11) { if (mode !== "deaf-stop") reply(11, bv.getUint32(0, true)); }
        else if (req === 5 && mode === "hangup") break;
        else if (flags & 8) {
          const refuse = (req === 5 && mode === "nack-mem") || (req === 18 && mode === "nack-enable");
          reply(req, refuse ? 1 : 0);
        }
        if (req === 39 && (status & 4) && mode === "ctrl-tamper" && !tampered) {
          tampered = true;
          tamper();
        }
      }
    } catch {
      // the front-end hung up, or went silent
    }
    console.log("closed");
    s.close();
  }
  l.close();
`;

/** Start the fake on `path` in `mode` (see the module comment); stdout piped, stdin piped. */
export function fakeBackend(path: string, mode: string): Deno.ChildProcess {
  const code = CODE.replace("SOCKET_URL", new URL("../../ffi/socket.ts", import.meta.url).href)
    .replace("LIBC_URL", new URL("../../ffi/libc.ts", import.meta.url).href);
  return new Deno.Command(Deno.execPath(), {
    args: ["eval", code, path, mode],
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
}

/** A running fake: its socket path, its output as text, its stdin. */
export interface Fake {
  path: string;
  out: ReadableStreamDefaultReader<string>;
  stdin: WritableStreamDefaultWriter<Uint8Array>;
  /** Everything read from `out` so far (by `readUntil`). */
  text: string;
  /** Read the fake's output until all of it matches `re` (or it ends); returns all of it. */
  readUntil(re: RegExp): Promise<string>;
  /** Kill the fake and return all it printed. */
  finish(): Promise<string>;
}

/** Run `fn` against a fake backend in `mode` at `path`. Kills it and removes the socket after. */
export async function withFake(
  path: string,
  mode: string,
  fn: (fake: Fake) => void | Promise<void>,
): Promise<void> {
  const child = fakeBackend(path, mode);
  const kill = () => {
    try {
      child.kill("SIGKILL");
    } catch {
      // already exited
    }
  };
  const fake: Fake = {
    path,
    out: child.stdout.pipeThrough(new TextDecoderStream()).getReader(),
    stdin: child.stdin.getWriter(),
    text: "",
    async readUntil(re: RegExp): Promise<string> {
      while (!re.test(this.text)) {
        const { value, done } = await this.out.read();
        if (done) break;
        this.text += value;
      }
      return this.text;
    },
    finish(): Promise<string> {
      kill();
      return this.readUntil(/(?!)/); // never matches: reads to the end
    },
  };
  try {
    await fn(fake);
  } finally {
    kill();
    await fake.out.cancel();
    await fake.stdin.close().catch(() => {});
    await child.status;
    try {
      Deno.removeSync(path);
    } catch {
      // removed by the fake
    }
  }
}
