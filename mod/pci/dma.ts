/** What memory a PCI function can reach by DMA. */
import type { DmaRegion } from "../../ffi/dma.ts";

/** PCI devices without an IOMMU reach only memory addressed physically (ffi/dma.ts "physical"). */
export function requirePhysical(address: string, region: DmaRegion): void {
  if (region.kind !== "physical") {
    throw new Error(
      `${address}: DMA memory must be 'physical' (hugepages with physical addresses), ` +
        `not '${region.kind}'`,
    );
  }
}
