/**
 * A monotonic clock in milliseconds that allocates nothing. `performance.now()` returns a new
 * heap number on every call (16 bytes): read every half millisecond by the forwarding loop, or
 * on every poll by a paced simulated wire, that alone fills V8's young generation within
 * seconds. clock_gettime(CLOCK_MONOTONIC) through FFI writes into one reused buffer, and the
 * result stays an unboxed double in the caller once this small function is inlined.
 */
import { raw } from "./libc.ts";

/** Linux: CLOCK_MONOTONIC (time.h), the clock performance.now() also follows. */
const CLOCK_MONOTONIC = 1;

/** struct timespec on x86-64: i64 tv_sec, i64 tv_nsec; read as 32-bit halves (no BigInt). */
const ts8 = new Uint8Array(16);
const ts32 = new Uint32Array(ts8.buffer);

/** Milliseconds on CLOCK_MONOTONIC (since boot; subtract two readings, or see `clockOffsetMs`). */
export function monotonicMs(): number {
  raw.clock_gettime(CLOCK_MONOTONIC, ts8);
  return (ts32[1] * 4294967296 + ts32[0]) * 1000 + ts32[2] / 1e6;
}

/** What to add to `monotonicMs()` to get `performance.now()` time (read once, both are monotonic). */
export function clockOffsetMs(): number {
  return performance.now() - monotonicMs();
}
