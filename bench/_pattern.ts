/**
 * The byte pattern of the streaming benchmark: byte `i` of a body is
 * `i % 251`, so a lost, repeated or reordered chunk shows as a mismatch.
 */

const PERIOD = 251;

/** The chunk size the generators use. */
export const CHUNK_BYTES = 64 * 1024;

const SOURCE = new Uint8Array(CHUNK_BYTES + PERIOD);
for (let i = 0; i < SOURCE.length; i++) SOURCE[i] = i % PERIOD;

/** A fresh copy of the pattern's bytes `[offset, offset + size)`; `size` is at most {@linkcode CHUNK_BYTES}. */
export function patternChunk(offset: number, size: number): Uint8Array {
  const start = offset % PERIOD;
  return SOURCE.slice(start, start + size);
}

/** Yields `total` bytes of the pattern in chunks of {@linkcode CHUNK_BYTES}, one fresh buffer each. */
export function* patternChunks(total: number): Generator<Uint8Array> {
  for (let offset = 0; offset < total; offset += CHUNK_BYTES) {
    yield patternChunk(offset, Math.min(CHUNK_BYTES, total - offset));
  }
}

/** A readable stream of `total` pattern bytes that makes each chunk only when the reader asks. */
export function patternStream(total: number): ReadableStream<Uint8Array> {
  const chunks = patternChunks(total);
  return new ReadableStream<Uint8Array>({
    pull(controller) {
      const next = chunks.next();
      if (next.done) controller.close();
      else controller.enqueue(next.value);
    },
  }, { highWaterMark: 0 });
}

/** Counts bytes and checks each one against the pattern. */
export class PatternChecker {
  /** Bytes seen. */
  bytes = 0;
  /** The offset of the first wrong byte, if any. */
  firstMismatch: number | undefined;

  /** Checks the next chunk of the body. */
  update(chunk: Uint8Array): void {
    if (this.firstMismatch === undefined) {
      let expected = this.bytes % PERIOD;
      for (let i = 0; i < chunk.length; i++) {
        if (chunk[i] !== expected) {
          this.firstMismatch = this.bytes + i;
          break;
        }
        if (++expected === PERIOD) expected = 0;
      }
    }
    this.bytes += chunk.length;
  }

  /** True when every byte matched and there were `total` of them. */
  verified(total: number): boolean {
    return this.firstMismatch === undefined && this.bytes === total;
  }
}
