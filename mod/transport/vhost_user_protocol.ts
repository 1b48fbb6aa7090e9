/**
 * vhost-user message layouts, as data. Section names refer to QEMU's "Vhost-user Protocol"
 * document (docs/interop/vhost-user.rst). All fields are little-endian.
 *
 * Only what a polling virtio-net front-end needs is listed; the encoders below are cold path
 * (one message per control step) and write into one reused buffer.
 */

/** "Message Specification" / "Header": u32 request, u32 flags, u32 size (of the payload). */
export const Header = {
  REQUEST: 0,
  FLAGS: 4,
  SIZE: 8,
  LENGTH: 12,
  /** Flags: bits 0-1 are the version (always 1), bit 2 marks a reply, bit 3 asks for one. */
  VERSION: 0x1,
  VERSION_MASK: 0x3,
  F_REPLY: 0x4,
  F_NEED_REPLY: 0x8,
} as const;

/** "Front-end message types" (the request codes this front-end sends). */
export const Request = {
  GET_FEATURES: 1,
  SET_FEATURES: 2,
  SET_OWNER: 3,
  RESET_OWNER: 4,
  SET_MEM_TABLE: 5,
  SET_VRING_NUM: 8,
  SET_VRING_ADDR: 9,
  SET_VRING_BASE: 10,
  GET_VRING_BASE: 11,
  SET_VRING_KICK: 12,
  SET_VRING_CALL: 13,
  GET_PROTOCOL_FEATURES: 15,
  SET_PROTOCOL_FEATURES: 16,
  GET_QUEUE_NUM: 17,
  SET_VRING_ENABLE: 18,
  SET_STATUS: 39,
  GET_STATUS: 40,
} as const;

/** "Protocol features" (bit numbers of the GET/SET_PROTOCOL_FEATURES mask). */
export const ProtocolFeature = {
  MQ: 0,
  LOG_SHMFD: 1,
  RARP: 2,
  REPLY_ACK: 3,
  NET_MTU: 4,
  BACKEND_REQ: 5,
  CONFIG: 9,
  RESET_DEVICE: 13,
  CONFIGURE_MEM_SLOTS: 15,
  STATUS: 16,
} as const;

/** Protocol features this front-end uses when the backend offers them. */
export const WANTED_PROTOCOL_FEATURES = (1n << BigInt(ProtocolFeature.MQ)) |
  (1n << BigInt(ProtocolFeature.REPLY_ACK)) | (1n << BigInt(ProtocolFeature.STATUS));

/** "A single 64-bit integer" payload (features, reply-ack status, kick/call index + flag). */
export const U64_PAYLOAD = 8;

/** "A vring state description": u32 index, u32 num (NUM, BASE, ENABLE, GET_VRING_BASE reply). */
export const VringState = { INDEX: 0, NUM: 4, SIZE: 8 } as const;

/**
 * "A vring address description": u32 index, u32 flags, u64 descriptor, u64 used, u64 available,
 * u64 log. Note the order: the used ring's address comes before the available ring's. Addresses
 * are the front-end's own (user virtual) addresses.
 */
export const VringAddr = {
  INDEX: 0,
  FLAGS: 4,
  DESC: 8,
  USED: 16,
  AVAIL: 24,
  LOG: 32,
  SIZE: 40,
} as const;

/**
 * "Memory regions description": u32 nregions, u32 padding, then per region u64 guest address,
 * u64 size, u64 user address, u64 mmap offset; one file descriptor per region travels with the
 * message. At most 8 regions (VHOST_MEMORY_BASELINE_NREGIONS).
 */
export const MemTable = {
  NREGIONS: 0,
  REGIONS: 8,
  REGION_SIZE: 32,
  GPA: 0,
  SIZE: 8,
  UADDR: 16,
  MMAP_OFFSET: 24,
  MAX_REGIONS: 8,
} as const;

/**
 * SET_VRING_KICK / SET_VRING_CALL payload (a u64): bits 0-7 are the vring index, bit 8 says no
 * file descriptor is attached ("polling" mode).
 */
export const VringFile = { INDEX_MASK: 0xff, NO_FD: 0x100 } as const;

/** Largest payload this front-end sends or accepts (the memory table with 8 regions). */
export const MAX_PAYLOAD = MemTable.REGIONS + MemTable.MAX_REGIONS * MemTable.REGION_SIZE;

/** Names for errors and logs. */
export function requestName(code: number): string {
  return Object.entries(Request).find(([, v]) => v === code)?.[0] ?? `REQUEST_${code}`;
}

/** One reusable message buffer: header + payload, encoded with a DataView (cold path). */
export class Message {
  readonly bytes = new Uint8Array(Header.LENGTH + MAX_PAYLOAD);
  readonly view = new DataView(this.bytes.buffer);

  /** Start a message: writes the header, zeroes the payload. Returns the payload's DataView offset. */
  begin(request: number, size: number, needReply: boolean): void {
    this.bytes.fill(0, 0, Header.LENGTH + size);
    this.view.setUint32(Header.REQUEST, request, true);
    this.view.setUint32(
      Header.FLAGS,
      Header.VERSION | (needReply ? Header.F_NEED_REPLY : 0),
      true,
    );
    this.view.setUint32(Header.SIZE, size, true);
  }

  get request(): number {
    return this.view.getUint32(Header.REQUEST, true);
  }

  get flags(): number {
    return this.view.getUint32(Header.FLAGS, true);
  }

  get size(): number {
    return this.view.getUint32(Header.SIZE, true);
  }

  /** Total bytes on the wire (header + payload). */
  get length(): number {
    return Header.LENGTH + this.size;
  }

  u32(payloadOffset: number): number {
    return this.view.getUint32(Header.LENGTH + payloadOffset, true);
  }

  setU32(payloadOffset: number, v: number): void {
    this.view.setUint32(Header.LENGTH + payloadOffset, v, true);
  }

  u64(payloadOffset: number): bigint {
    return this.view.getBigUint64(Header.LENGTH + payloadOffset, true);
  }

  setU64(payloadOffset: number, v: bigint | number): void {
    this.view.setBigUint64(Header.LENGTH + payloadOffset, BigInt(v), true);
  }
}
