/**
 * Counters that outgrow V8's small integers (2^31: a byte counter at 1 Gbit/s within 20 s, a
 * frame counter at 2 Mpps within 18 minutes) change their field's representation the first time
 * they do, which deoptimizes every function that updates them: the forwarding path runs
 * unoptimized for a moment, boxing every number it computes, and the garbage costs a burst of
 * collections mid-run. Storing a fraction into every numeric field once, before any code runs on
 * the object, gives the fields their final representation (a double, updated in place) up front.
 */
export function widenCounters<T extends object>(counters: T): T {
  const o = counters as Record<string, unknown>;
  for (const k of Object.keys(o)) {
    const v = o[k];
    if (typeof v !== "number") continue;
    o[k] = 0.5;
    o[k] = v;
  }
  return counters;
}
