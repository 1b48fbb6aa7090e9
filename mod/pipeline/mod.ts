/**
 * Everything a pipeline module needs, from one import: the Burst API and its types
 * (./api.ts) and the packet helpers (../packet/), plain functions over `(bytes, offset)` that
 * allocate nothing.
 *
 * @example A pipeline (its burst function exported as `burst`; a default export works too) that
 * sends every frame back out of the port it came in by, MACs swapped
 * ```ts
 * import { type Burst, macSwap } from "./mod.ts";
 *
 * export function burst(b: Burst): void {
 *   for (let i = 0; i < b.count; i++) {
 *     macSwap(b.bytes, b.offset(i));
 *     b.back(i);
 *   }
 * }
 * ```
 *
 * @module
 */
export {
  Burst,
  type BurstFunction,
  HEADER_ROOM,
  type PipelineContext,
  type PipelineModule,
  type PipelinePort,
  Verdict,
} from "./api.ts";
export * from "../packet/bytes.ts";
export * from "../packet/checksum.ts";
export * from "../packet/ether.ts";
export * from "../packet/ip.ts";
export * from "../packet/l4.ts";
