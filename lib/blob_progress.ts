/**
 * Two small pieces of a blob download beside its scheduling (lib/segments.ts): the hash computed
 * over the whole blob in order while segments arrive out of order, and the resume information
 * saved now and then. lib/fetch.ts drives both.
 *
 * ```ts
 * import { InOrderHasher } from "./blob_progress.ts";
 * const segments = [{ start: 0, end: 10, written: 0 }];
 * const hasher = new InOrderHasher("sha256", { path: "blob.partial", offset: 0 }, () => segments);
 * hasher.offer(0, new Uint8Array(10)); // at the cursor: hashed now
 * await hasher.settle();                // anything written ahead of it is read back from disk
 * hasher.digest();
 * ```
 *
 * @module
 */
import { type DigestAlgorithm, DigestHasher } from "./digest.ts";
import type { Segment } from "./segments.ts";
import type { PartialState } from "./store.ts";

/** Bytes read back per read, and how much is hashed before other work gets a turn. */
const READ_BACK_BYTES = 1024 * 1024;
const YIELD_BYTES = 8 * 1024 * 1024;

/**
 * The digest of a blob whose segments arrive in any order. Bytes that arrive at the cursor (all
 * bytes before them are hashed) are hashed as they come; the others are on disk already, and are
 * read back from the file once the bytes before them are in.
 */
export class InOrderHasher {
  #hasher: DigestHasher;
  /** Everything before this offset is in the hash. */
  #cursor = 0;
  #pumping?: Promise<void>;
  #buffer?: Uint8Array;

  constructor(
    readonly algorithm: DigestAlgorithm,
    /** The file (and offset in it) the blob's bytes are written to, read back from. */
    readonly file: { path: string; offset: number },
    /** The blob's segments, in order (they may change: a tail split off, a restart). */
    readonly segments: () => readonly Segment[],
  ) {
    this.#hasher = new DigestHasher(algorithm);
  }

  /** Bytes hashed so far, from the start of the blob. */
  get cursor(): number {
    return this.#cursor;
  }

  /**
   * `bytes` were just written at `position`: hashed now when they are next in line, else left
   * for the read-back (started when something is waiting behind the cursor).
   */
  offer(position: number, bytes: Uint8Array): void {
    if (position === this.#cursor && !this.#pumping) {
      this.#hasher.update(bytes);
      this.#cursor += bytes.byteLength;
    }
    if (this.#cursor < position) this.schedule();
  }

  /** Starts reading back whatever is contiguous on disk after the cursor (once at a time). */
  schedule(): void {
    this.#pumping ??= this.#readBack().finally(() => this.#pumping = undefined);
  }

  /** Waits for a read-back in progress, then hashes whatever is contiguous on disk. */
  async settle(): Promise<void> {
    await this.#pumping;
    this.schedule();
    await this.#pumping;
  }

  /** Starts again from byte 0 (the server sent the whole blob again). */
  async reset(): Promise<void> {
    await this.#pumping;
    this.#hasher = new DigestHasher(this.algorithm);
    this.#cursor = 0;
  }

  /** `algorithm:hex` of what was hashed. */
  digest(): string {
    return this.#hasher.digest();
  }

  /** The contiguous bytes on disk from the cursor on. */
  #frontier(): number {
    for (const s of this.segments()) {
      if (this.#cursor < s.end) return Math.max(this.#cursor, s.start + s.written);
    }
    return this.#cursor;
  }

  async #readBack(): Promise<void> {
    if (this.#frontier() <= this.#cursor) return;
    using file = await Deno.open(this.file.path, { read: true });
    const buffer = this.#buffer ??= new Uint8Array(READ_BACK_BYTES);
    // Read synchronously (from the page cache, as written), letting the network in between.
    let sinceYield = 0;
    for (let frontier = this.#frontier(); this.#cursor < frontier; frontier = this.#frontier()) {
      file.seekSync(this.file.offset + this.#cursor, Deno.SeekMode.Start);
      const want = Math.min(buffer.byteLength, frontier - this.#cursor);
      const n = file.readSync(buffer.subarray(0, want));
      if (n === null || n === 0) break;
      this.#hasher.update(buffer.subarray(0, n));
      this.#cursor += n;
      sinceYield += n;
      if (sinceYield >= YIELD_BYTES) {
        sinceYield = 0;
        await new Promise((resolve) => setTimeout(resolve, 0));
      }
    }
  }
}

/**
 * Saves how much of a blob is on disk (its segments), at most once per `intervalMs` while it
 * downloads and on demand after a failure, so that the next run resumes. One save at a time.
 */
export class Checkpointer {
  #last = 0;
  #saving?: Promise<void>;

  constructor(
    readonly size: number,
    readonly segments: () => readonly Segment[],
    readonly save: (state: PartialState) => Promise<void>,
    readonly intervalMs: number,
  ) {}

  /** Saves now unless a save is running or the last one is recent. */
  maybe(): void {
    const now = Date.now();
    if (this.#saving || now - this.#last < this.intervalMs) return;
    this.#last = now;
    this.#saving = this.now().finally(() => this.#saving = undefined);
  }

  /** Saves now (after the save in progress, if any). Segments of unknown end are not saved. */
  async now(): Promise<void> {
    await this.#saving;
    const segments = this.segments();
    if (!segments.every((s) => Number.isFinite(s.end))) return;
    await this.save({ size: this.size, segments: segments.map((s) => ({ ...s })) });
  }

  /** Waits for the save in progress, if any. */
  async settled(): Promise<void> {
    await this.#saving;
  }
}
