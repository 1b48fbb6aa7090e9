/**
 * The calling thread's own CPU time (clock_gettime(CLOCK_THREAD_CPUTIME_ID), time.h): with the
 * wall-clock time it tells how much of it the thread actually ran, and so a thread that waited for
 * a CPU (preempted) from one that had work to do. Cold path: read at clock checks.
 */
import { check, raw } from "./libc.ts";

/** Linux clock id (time.h). */
const CLOCK_THREAD_CPUTIME_ID = 3;

/** struct timespec { time_t tv_sec; long tv_nsec; } on x86-64. */
const ts = new BigInt64Array(2);
const tsBytes = new Uint8Array(ts.buffer);

/** Milliseconds of CPU the calling thread has used since it started. */
export function threadCpuMs(): number {
  check("clock_gettime", raw.clock_gettime(CLOCK_THREAD_CPUTIME_ID, tsBytes));
  return Number(ts[0]) * 1000 + Number(ts[1]) / 1e6;
}
