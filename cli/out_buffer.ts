/**
 * Text built in one reused byte buffer: ASCII labels, pre-encoded bytes and integers written
 * digit by digit. Statistics printed every second this way make no strings, so a forwarder in
 * steady state leaves the garbage collector nothing to do (see mod/fwd/loop.ts).
 */
export class OutBuffer {
  #buf = new Uint8Array(4096);
  /** Bytes written since the last `reset`. */
  length = 0;

  reset(): void {
    this.length = 0;
  }

  #room(n: number): Uint8Array {
    if (this.length + n > this.#buf.length) {
      const b = new Uint8Array(Math.max(2 * this.#buf.length, this.length + n));
      b.set(this.#buf.subarray(0, this.length));
      this.#buf = b;
    }
    return this.#buf;
  }

  /** ASCII text (labels, punctuation: one byte per character). */
  text(s: string): void {
    const b = this.#room(s.length);
    let n = this.length;
    for (let i = 0; i < s.length; i++) b[n++] = s.charCodeAt(i) & 0x7f;
    this.length = n;
  }

  /** Bytes encoded beforehand (names, JSON keys). */
  bytes(u8: Uint8Array): void {
    this.#room(u8.length).set(u8, this.length);
    this.length += u8.length;
  }

  /** The byte `c`, `n` times (padding, bars); nothing for n <= 0. */
  repeat(c: number, n: number): void {
    if (n <= 0) return;
    this.#room(n).fill(c, this.length, this.length + n);
    this.length += n;
  }

  /** A number as String() and JSON.stringify write it; integers digit by digit. */
  num(v: number): void {
    if (!Number.isSafeInteger(v)) return this.text(String(v)); // not a counter: rare, allocates
    const b = this.#room(17);
    let n = this.length;
    if (v < 0) {
      b[n++] = 0x2d; // "-"
      v = -v;
    }
    const first = n;
    do {
      const q = Math.floor(v / 10);
      b[n++] = 0x30 + (v - q * 10);
      v = q;
    } while (v > 0);
    for (let i = first, j = n - 1; i < j; i++, j--) {
      const t = b[i];
      b[i] = b[j];
      b[j] = t;
    }
    this.length = n;
  }

  /** Write everything to `sink` (whole, however many calls it takes). */
  flush(sink: { writeSync(p: Uint8Array): number }): void {
    let off = 0;
    while (off < this.length) off += sink.writeSync(this.#buf.subarray(off, this.length));
    this.length = 0;
  }
}

/** Characters String(v) takes for a number `v` (for padding without making the string). */
export function numWidth(v: number): number {
  if (!Number.isSafeInteger(v)) return String(v).length;
  let w = v < 0 ? 2 : 1;
  for (let x = Math.abs(v); x >= 10; x = Math.floor(x / 10)) w++;
  return w;
}
