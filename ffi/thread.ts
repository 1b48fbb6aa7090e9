/**
 * The calling thread's own CPU time (clock_gettime(CLOCK_THREAD_CPUTIME_ID), time.h): with the
 * wall-clock time it tells how much of it the thread actually ran, and so a thread that waited for
 * a CPU (preempted) from one that had work to do. Read at clock checks; like ffi/clock.ts it
 * allocates nothing (one reused buffer, read as 32-bit halves: no BigInt).
 */
import { check, raw } from "./libc.ts";

/** Linux clock id (time.h). */
const CLOCK_THREAD_CPUTIME_ID = 3;

/** struct timespec on x86-64: i64 tv_sec, i64 tv_nsec. */
const ts8 = new Uint8Array(16);
const ts32 = new Uint32Array(ts8.buffer);

/** Milliseconds of CPU the calling thread has used since it started. */
export function threadCpuMs(): number {
  check("clock_gettime", raw.clock_gettime(CLOCK_THREAD_CPUTIME_ID, ts8));
  return (ts32[1] * 4294967296 + ts32[0]) * 1000 + ts32[2] / 1e6;
}
