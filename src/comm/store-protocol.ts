/**
 * Wire format of the rendezvous store (store.ts). A message is a frame: a u32 little-endian payload length, then
 * the payload. A request is `u8 op, u32 id, fields`; its reply is `u32 id, u8 status, body`, and replies may come
 * back in any order (a `get` waits for its key while later requests are answered). Byte strings travel as a u32
 * length and the bytes, so keys and values may hold anything, NULs included.
 */

export const Op = { set: 1, get: 2, add: 3, check: 4, delete: 5 } as const;

export const Status = { ok: 0, timeout: 1, error: 2 } as const;

/** Values of a few MB (IPC handles, NCCL ids, small tensors) fit; a stray length read from garbage does not. */
export const MAX_FRAME_BYTES = 64 * 2 ** 20;

/** Builds one frame field by field. */
export class FrameWriter {
  readonly #parts: Buffer[] = [];
  #length = 0;

  u8(value: number): this {
    return this.#push(Buffer.of(value));
  }

  u32(value: number): this {
    const b = Buffer.allocUnsafe(4);
    b.writeUInt32LE(value);
    return this.#push(b);
  }

  f64(value: number): this {
    const b = Buffer.allocUnsafe(8);
    b.writeDoubleLE(value);
    return this.#push(b);
  }

  bytes(value: Uint8Array): this {
    this.u32(value.length);
    return this.#push(Buffer.from(value.buffer, value.byteOffset, value.length));
  }

  /** The frame: its length header and every field, in one buffer ready for socket.write. */
  finish(): Buffer {
    if (this.#length > MAX_FRAME_BYTES)
      throw new RangeError(`a store message of ${this.#length} bytes exceeds the limit of ${MAX_FRAME_BYTES} bytes`);
    const header = Buffer.allocUnsafe(4);
    header.writeUInt32LE(this.#length);
    return Buffer.concat([header, ...this.#parts], 4 + this.#length);
  }

  #push(part: Buffer): this {
    this.#parts.push(part);
    this.#length += part.length;
    return this;
  }
}

/** Reads the fields of one frame in order; reading past the end throws (the peer sent garbage). */
export class FrameReader {
  #offset = 0;

  constructor(readonly frame: Buffer) {}

  u8(): number {
    return this.frame.readUInt8(this.#advance(1));
  }

  u32(): number {
    return this.frame.readUInt32LE(this.#advance(4));
  }

  f64(): number {
    return this.frame.readDoubleLE(this.#advance(8));
  }

  bytes(): Buffer {
    const length = this.u32();
    const start = this.#advance(length);
    return this.frame.subarray(start, start + length);
  }

  #advance(n: number): number {
    const start = this.#offset;
    if (start + n > this.frame.length)
      throw new RangeError(`malformed store message: field of ${n} bytes at offset ${start} runs past its end`);
    this.#offset += n;
    return start;
  }
}

/**
 * Cuts a byte stream into frames, each a little-endian length header (`headerBytes`: 4, the store's, or 8) and its
 * payload. Chunks are kept as they arrive and joined only once a whole frame is there, so a multi-MB value costs one
 * copy, not one per chunk. A frame may be a view of a received chunk: copy it before transferring it.
 */
export class FrameSplitter {
  #chunks: Buffer[] = [];
  #buffered = 0;
  /** Payload length of the frame being read, or -1 while its header is still incomplete. */
  #expected = -1;

  constructor(
    private readonly headerBytes: 4 | 8 = 4,
    private readonly maxBytes = MAX_FRAME_BYTES,
  ) {}

  push(chunk: Buffer): Buffer[] {
    this.#chunks.push(chunk);
    this.#buffered += chunk.length;
    const frames: Buffer[] = [];
    for (;;) {
      if (this.#expected < 0) {
        if (this.#buffered < this.headerBytes) return frames;
        const header = this.#take(this.headerBytes);
        this.#expected = this.headerBytes === 4 ? header.readUInt32LE(0) : Number(header.readBigUInt64LE(0));
        if (this.#expected > this.maxBytes)
          throw new RangeError(`a message of ${this.#expected} bytes exceeds the limit of ${this.maxBytes} bytes`);
      }
      if (this.#buffered < this.#expected) return frames;
      frames.push(this.#take(this.#expected));
      this.#expected = -1;
    }
  }

  #take(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0);
    let first = this.#chunks[0]!;
    if (first.length < n) {
      first = Buffer.concat(this.#chunks, this.#buffered);
      this.#chunks = [first];
    }
    if (first.length === n) this.#chunks.shift();
    else this.#chunks[0] = first.subarray(n);
    this.#buffered -= n;
    return first.subarray(0, n);
  }
}

/** Key bytes as a Map key: latin1 maps every byte to one character and back, so distinct keys stay distinct. */
export function keyId(key: Uint8Array): string {
  return Buffer.from(key.buffer, key.byteOffset, key.length).toString('latin1');
}
