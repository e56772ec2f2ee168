/**
 * Layer decompression for the two cases that need it: computing a schema1
 * layer's diff_id, and turning zstd layers into plain tar for loaders that
 * cannot read zstd (Docker 20.10). Both stream; neither holds a layer in
 * memory.
 *
 * zstd streams are split into frames here (RFC 8878), because `node:zlib`'s
 * decompressor silently stops after the first frame: every frame goes to a
 * fresh decompressor and skippable frames (zstd:chunked metadata) are
 * dropped. Registry content is hostile until its diff_id verifies, so the
 * uncompressed size is bounded (a decompression bomb is refused) and, when
 * writing, free space is watched so that the disk never fills.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import { createReadStream } from "node:fs";
import { type FileHandle, open, statfs } from "node:fs/promises";
import { dirname } from "node:path";
import type { Transform } from "node:stream";
import { createGunzip, createZstdDecompress } from "node:zlib";
import { DigestHasher } from "./digest.ts";
import { ImgpullError, InvalidContentError, LocalIoError } from "./errors.ts";
import type { LayerCompression } from "./media_types.ts";
import { localIoError } from "./store.ts";

const GZIP_MAGIC = [0x1f, 0x8b];
const ZSTD_MAGIC = [0x28, 0xb5, 0x2f, 0xfd];

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

/** Output chunk size of the decompressors (larger chunks: fewer writes and hash calls). */
const CHUNK_BYTES = 256 * KiB;

/** Detects gzip or zstd from a file's first bytes; anything else is taken as plain tar. */
export async function sniffCompression(path: string): Promise<LayerCompression> {
  using file = await Deno.open(path, { read: true });
  const head = new Uint8Array(4);
  const n = (await file.read(head)) ?? 0;
  const starts = (magic: number[]) => n >= magic.length && magic.every((b, i) => head[i] === b);
  if (starts(GZIP_MAGIC)) return "gzip";
  if (starts(ZSTD_MAGIC)) return "zstd";
  return "none";
}

// ---------------------------------------------------------------------------
// Limits

/** Below this many uncompressed bytes, the default limit never refuses a layer. */
export const RATIO_FLOOR_BYTES: number = 1 * GiB;
/** Past {@link RATIO_FLOOR_BYTES}, the default limit refuses layers that expand more than this. */
export const MAX_DEFAULT_RATIO = 100;

/**
 * The uncompressed size a layer may reach when the user set no limit:
 * 100× its compressed size, but never less than 1 GiB. Real layers rarely
 * expand more than 10× (text compresses ~4–8×); a huge ratio past 1 GiB is
 * a decompression bomb (zeros compress ~30000× in zstd). A genuine image
 * with huge sparse files needs an explicit limit (`maxBytes`,
 * `--max-layer-size`).
 */
export function defaultMaxLayerBytes(compressedSize: number): number {
  return Math.max(RATIO_FLOOR_BYTES, MAX_DEFAULT_RATIO * compressedSize);
}

/** Disk space always left free while a layer is decompressed onto it: 5% of the filesystem, at most 256 MiB. */
export function freeSpaceMargin(filesystemBytes: number): number {
  return Math.min(256 * MiB, Math.floor(filesystemBytes / 20));
}

/**
 * Parses a size as the CLI takes it: bytes, or a number with a binary unit
 * (`512K`, `100M`, `1.5G`, `2T`; `KiB`/`MB`/`GB` spellings too, all powers of
 * 1024). Returns undefined for anything else.
 */
export function parseByteSize(text: string): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$/i.exec(text);
  if (!m) return undefined;
  const unit = { "": 1, k: KiB, m: MiB, g: GiB, t: 1024 * GiB }[m[2].toLowerCase()]!;
  const bytes = Math.floor(Number(m[1]) * unit);
  return Number.isSafeInteger(bytes) && bytes > 0 ? bytes : undefined;
}

/** `1.5 GiB`, `300 MiB`, `12 KiB`, `7 bytes`. */
export function formatBytes(n: number): string {
  const units: [number, string][] = [[1024 * GiB, "TiB"], [GiB, "GiB"], [MiB, "MiB"], [KiB, "KiB"]];
  for (const [size, name] of units) {
    if (n >= size) return `${Number((n / size).toFixed(1))} ${name}`;
  }
  return `${n} bytes`;
}

// ---------------------------------------------------------------------------
// zstd frames (RFC 8878, section 3.1)

const ZSTD_FRAME_MAGIC = 0xfd2fb528;
/** Skippable frames: 0x184D2A50–0x184D2A5F, then a 4-byte little-endian size. */
const SKIPPABLE_MASK = 0xfffffff0;
const SKIPPABLE_MAGIC = 0x184d2a50;
/** Block_Maximum_Size can never exceed 128 KiB. */
const MAX_BLOCK_BYTES = 128 * KiB;

/** A piece of a zstd stream, as {@link ZstdFrameSplitter} cuts it. */
export type FramePiece =
  | { kind: "start" }
  /** Bytes of the current frame (header included), in order. */
  | { kind: "bytes"; bytes: Uint8Array }
  | { kind: "end" };

type SplitState =
  | "magic"
  | "skippable-size"
  | "skippable-body"
  | "frame-header"
  | "frame-header-rest"
  | "block-header"
  | "block-body"
  | "checksum";

/** Bytes a state collects before deciding (headers); the others count bytes through. */
const HEAD_BYTES: Partial<Record<SplitState, number>> = {
  "magic": 4,
  "skippable-size": 4,
  "frame-header": 1,
  "block-header": 3,
};

const FCS_BYTES = [0, 2, 4, 8];
const DICTIONARY_ID_BYTES = [0, 1, 2, 4];

/**
 * Cuts a zstd stream into frames by reading frame headers and block headers
 * (never the compressed data itself): zstd frames come out as
 * start/bytes…/end pieces, skippable frames are dropped. Works on chunks as
 * they arrive; the `bytes` pieces are views into the pushed chunks, and none
 * spans the end of a block (so one piece decompresses to at most 128 KiB).
 */
export class ZstdFrameSplitter {
  #state: SplitState = "magic";
  readonly #head = new Uint8Array(4);
  #have = 0;
  /** Bytes left in a counted state. */
  #remaining = 0;
  #lastBlock = false;
  #checksum = false;
  #inFrame = false;
  /** Bytes consumed so far (for messages). */
  #offset = 0;
  #frames = 0;
  /** Set when a block ends: pieces never span a block end, which bounds the output of one. */
  #blockEnded = false;
  #pieces: FramePiece[] = [];

  /** zstd frames seen so far (skippable frames not counted). */
  get frames(): number {
    return this.#frames;
  }

  /** Consumes `chunk`; returns the pieces it completes. Throws on a malformed stream. */
  push(chunk: Uint8Array): FramePiece[] {
    this.#pieces = [];
    let pos = 0;
    let forwardFrom = this.#inFrame ? 0 : -1;
    const flush = (to: number) => {
      if (forwardFrom >= 0 && to > forwardFrom) {
        this.#pieces.push({ kind: "bytes", bytes: chunk.subarray(forwardFrom, to) });
      }
      forwardFrom = -1;
    };
    while (pos < chunk.byteLength) {
      const need = HEAD_BYTES[this.#state];
      if (need !== undefined) {
        const n = Math.min(need - this.#have, chunk.byteLength - pos);
        this.#head.set(chunk.subarray(pos, pos + n), this.#have);
        this.#have += n;
        pos += n;
        this.#offset += n;
        if (this.#have < need) break;
        this.#have = 0;
        const wasInFrame = this.#inFrame;
        this.#decide();
        // A frame starts: its magic was consumed before we knew, so it goes as a copy.
        if (!wasInFrame && this.#inFrame) {
          this.#pieces.push({ kind: "start" });
          this.#pieces.push({ kind: "bytes", bytes: this.#head.slice(0, 4) });
          forwardFrom = pos;
        }
      } else {
        const n = Math.min(this.#remaining, chunk.byteLength - pos);
        pos += n;
        this.#offset += n;
        this.#remaining -= n;
        if (this.#remaining > 0) break;
        this.#afterCounted();
      }
      if (this.#state === "magic" && this.#inFrame) {
        // The frame just ended.
        this.#inFrame = false;
        flush(pos);
        this.#pieces.push({ kind: "end" });
      } else if (this.#blockEnded && this.#inFrame) {
        flush(pos);
        forwardFrom = pos;
      }
      this.#blockEnded = false;
    }
    flush(chunk.byteLength);
    return this.#pieces;
  }

  /** The stream ended: throws unless it ended between frames after at least one frame. */
  finish(): void {
    if (this.#state !== "magic" || this.#have > 0) {
      throw new InvalidContentError(`zstd stream truncated at byte ${this.#offset}`);
    }
    if (this.#offset === 0) throw new InvalidContentError("empty zstd stream");
  }

  #enterCounted(state: SplitState, bytes: number): void {
    this.#state = state;
    this.#remaining = bytes;
    if (bytes === 0) this.#afterCounted();
  }

  #decide(): void {
    const h = this.#head;
    switch (this.#state) {
      case "magic": {
        const magic = (h[0] | h[1] << 8 | h[2] << 16 | h[3] << 24) >>> 0;
        if (magic === ZSTD_FRAME_MAGIC) {
          this.#inFrame = true;
          this.#frames++;
          this.#state = "frame-header";
        } else if (((magic & SKIPPABLE_MASK) >>> 0) === SKIPPABLE_MAGIC) {
          this.#state = "skippable-size";
        } else {
          throw new InvalidContentError(
            `not a zstd frame at byte ${this.#offset - 4} (magic 0x${magic.toString(16)})`,
          );
        }
        return;
      }
      case "skippable-size":
        return this.#enterCounted(
          "skippable-body",
          (h[0] | h[1] << 8 | h[2] << 16 | h[3] << 24) >>> 0,
        );
      case "frame-header": {
        const descriptor = h[0];
        if (descriptor & 0x08) {
          throw new InvalidContentError(
            `zstd frame header at byte ${this.#offset - 5} has its reserved bit set`,
          );
        }
        const fcsFlag = descriptor >> 6;
        const singleSegment = (descriptor >> 5) & 1;
        this.#checksum = ((descriptor >> 2) & 1) === 1;
        const rest = (singleSegment ? 0 : 1) + DICTIONARY_ID_BYTES[descriptor & 3] +
          (fcsFlag === 0 ? singleSegment : FCS_BYTES[fcsFlag]);
        return this.#enterCounted("frame-header-rest", rest);
      }
      case "block-header": {
        const header = h[0] | h[1] << 8 | h[2] << 16;
        this.#lastBlock = (header & 1) === 1;
        const type = (header >> 1) & 3;
        const size = header >>> 3;
        if (type === 3 || size > MAX_BLOCK_BYTES) {
          throw new InvalidContentError(
            `invalid zstd block header at byte ${this.#offset - 3}` +
              (type === 3 ? " (reserved block type)" : ` (block of ${size} bytes)`),
          );
        }
        // An RLE block carries one byte, repeated `size` times on decompression.
        return this.#enterCounted("block-body", type === 1 ? 1 : size);
      }
    }
  }

  #afterCounted(): void {
    switch (this.#state) {
      case "skippable-body":
        this.#state = "magic";
        return;
      case "frame-header-rest":
        this.#state = "block-header";
        return;
      case "block-body":
        this.#blockEnded = true;
        if (!this.#lastBlock) {
          this.#state = "block-header";
          return;
        }
        return this.#enterCounted("checksum", this.#checksum ? 4 : 0);
      case "checksum":
        this.#state = "magic";
        return;
    }
  }
}

// ---------------------------------------------------------------------------
// Streaming stages

/** Reads a file in 1 MiB chunks; read failures are local IO errors. */
async function* readFile(path: string): AsyncGenerator<Uint8Array> {
  const stream = createReadStream(path, { highWaterMark: MiB });
  try {
    for await (const chunk of stream) yield chunk as Uint8Array;
  } catch (e) {
    throw localIoError(e, `cannot read layer ${path}`);
  } finally {
    stream.destroy();
  }
}

/** Writes `bytes`; resolves once the stream took them, closed, or `signal` aborted. */
function written(stream: Transform, bytes: Uint8Array, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      stream.off("close", done);
      signal.removeEventListener("abort", done);
      resolve();
    };
    stream.on("close", done);
    signal.addEventListener("abort", done);
    stream.write(bytes, done);
  });
}

/**
 * Runs `input` through one node:zlib decompressor and yields its output, one
 * write at a time (`beforeWrite` runs before each). Errors of the input pass
 * through unchanged; errors of the decompressor are the layer's fault
 * ({@link InvalidContentError}, with the cause).
 */
async function* inflate(
  input: AsyncIterable<Uint8Array>,
  decompressor: Transform,
  what: string,
  beforeWrite?: () => void,
): AsyncGenerator<Uint8Array> {
  const stop = new AbortController();
  const feeding = (async () => {
    for await (const bytes of input) {
      if (stop.signal.aborted || decompressor.destroyed) return;
      beforeWrite?.();
      await written(decompressor, bytes, stop.signal);
    }
    if (!stop.signal.aborted && !decompressor.destroyed) decompressor.end();
  })();
  // An input failure ends the output with that failure.
  feeding.catch((e) => decompressor.destroy(e));
  try {
    for await (const out of decompressor) yield out as Uint8Array;
  } catch (e) {
    if (e instanceof ImgpullError) throw e;
    throw new InvalidContentError(`${what}: ${(e as Error).message ?? e}`, { cause: e });
  } finally {
    stop.abort();
    decompressor.destroy();
    await feeding.catch(() => {});
  }
}

/** Output buffer of a zstd decompressor: far more than one block (128 KiB) decompresses to. */
const ZSTD_OUT_BYTES = 1024 * KiB;

/**
 * Deno 2.9's zstd stream throws an uncaught exception (killing the process)
 * when corrupt data is found while it continues into a fresh output buffer;
 * the first attempt of each write reports errors properly. Each write is one
 * piece of at most one block, so it fits when at least 256 KiB of the output
 * buffer are free: make sure they are (earlier output keeps its own buffer).
 */
function roomForOneBlock(decompressor: Transform): () => void {
  const internals = decompressor as unknown as {
    _outBuffer?: Uint8Array;
    _outOffset?: number;
    _chunkSize?: number;
  };
  return () => {
    const size = internals._chunkSize;
    const offset = internals._outOffset;
    if (size === undefined || offset === undefined || internals._outBuffer === undefined) return;
    if (size - offset < 2 * MAX_BLOCK_BYTES) {
      internals._outBuffer = Buffer.allocUnsafe(size);
      internals._outOffset = 0;
    }
  };
}

/**
 * Decompresses a zstd stream of any number of frames: each frame goes to a
 * fresh decompressor (node:zlib's stops after the first), skippable frames
 * are skipped.
 */
export async function* zstdDecompressFrames(
  input: AsyncIterable<Uint8Array>,
  what = "zstd",
): AsyncGenerator<Uint8Array> {
  const splitter = new ZstdFrameSplitter();
  const pieces = (async function* () {
    for await (const chunk of input) yield* splitter.push(chunk);
    splitter.finish();
  })();
  try {
    for (;;) {
      const next = await pieces.next();
      if (next.done) return;
      // The splitter always opens a frame with "start".
      const frame = async function* () {
        for (;;) {
          const piece = await pieces.next();
          if (piece.done || piece.value.kind === "end") return;
          if (piece.value.kind === "bytes") yield piece.value.bytes;
        }
      };
      const decompressor = createZstdDecompress({ chunkSize: ZSTD_OUT_BYTES });
      yield* inflate(frame(), decompressor, what, roomForOneBlock(decompressor));
    }
  } finally {
    await pieces.return(undefined);
  }
}

// ---------------------------------------------------------------------------
// decompressLayer

/** Result of {@link decompressLayer}. */
export interface UncompressedLayer {
  /** SHA-256 of the uncompressed bytes: the layer's diff_id. */
  diffId: string;
  size: number;
}

/** Options of {@link decompressLayer}. */
export interface DecompressOptions {
  /**
   * Largest uncompressed size accepted, in bytes (the user's
   * `--max-layer-size`). Default: {@link defaultMaxLayerBytes} of the
   * compressed size. Past it: {@link InvalidContentError}, partial output removed.
   */
  maxBytes?: number;
  /** Names the layer in messages (e.g. its digest); default the file name. */
  label?: string;
  signal?: AbortSignal;
  /**
   * Free and total bytes of the filesystem holding `dir` (default `statfs`);
   * undefined when unknown, which turns the free-space watch off.
   */
  diskSpace?: (dir: string) => Promise<{ free: number; total: number } | undefined>;
}

async function statfsSpace(dir: string): Promise<{ free: number; total: number } | undefined> {
  try {
    const s = await statfs(dir);
    return { free: Number(s.bavail) * Number(s.bsize), total: Number(s.blocks) * Number(s.bsize) };
  } catch {
    return undefined;
  }
}

/**
 * Watches free space while a file grows: checks before the first write and
 * again after at most half of the space left above the margin was written,
 * so the margin is never crossed by our own writes.
 */
class FreeSpaceWatch {
  #untilCheck = 0;
  #off = false;

  constructor(
    readonly dir: string,
    readonly what: string,
    readonly space: NonNullable<DecompressOptions["diskSpace"]>,
  ) {}

  async wrote(bytes: number): Promise<void> {
    if (this.#off) return;
    this.#untilCheck -= bytes;
    if (this.#untilCheck > 0) return;
    const space = await this.space(this.dir);
    if (!space) {
      this.#off = true;
      return;
    }
    const margin = freeSpaceMargin(space.total);
    if (space.free <= margin) {
      throw new LocalIoError(
        `not enough disk space to decompress ${this.what}: ${formatBytes(space.free)} free ` +
          `in ${this.dir}, stopped to keep ${formatBytes(margin)} free`,
        { hint: "free some space, or write the archive elsewhere with -o" },
      );
    }
    this.#untilCheck = Math.max(64 * KiB, Math.min(64 * MiB, (space.free - margin) / 2));
  }
}

/**
 * Streams `path` through the decompressor for `compression` and hashes the
 * uncompressed bytes; with `outputPath`, also writes them there (a new file).
 *
 * Bounded: more than `options.maxBytes` (default
 * {@link defaultMaxLayerBytes}) uncompressed bytes is an
 * {@link InvalidContentError}; with `outputPath`, free space is checked as
 * the file grows and the work stops with a {@link LocalIoError} before the
 * disk fills ({@link freeSpaceMargin}). A stream that does not decompress is
 * an {@link InvalidContentError} (its digest verified: the bytes are the
 * registry's, they are just not a valid layer). On any failure the output
 * file is removed.
 */
export async function decompressLayer(
  path: string,
  compression: LayerCompression,
  outputPath?: string,
  options: DecompressOptions = {},
): Promise<UncompressedLayer> {
  const label = options.label ?? path.split("/").pop()!;
  const what = `layer ${label}`;
  let compressedSize: number;
  try {
    compressedSize = (await Deno.stat(path)).size;
  } catch (e) {
    throw localIoError(e, `cannot read ${what}`);
  }
  const limit = options.maxBytes ?? defaultMaxLayerBytes(compressedSize);
  const hasher = new DigestHasher("sha256");
  const source = readFile(path);
  const chunks = compression === "none"
    ? source
    : compression === "gzip"
    ? inflate(source, createGunzip({ chunkSize: CHUNK_BYTES }), `cannot decompress ${what} (gzip)`)
    : zstdDecompressFrames(source, `cannot decompress ${what} (zstd)`);
  let output: FileHandle | undefined;
  let created = false;
  try {
    if (outputPath) {
      try {
        output = await open(outputPath, "wx");
      } catch (e) {
        throw localIoError(e, `cannot create ${outputPath}`);
      }
      created = true;
    }
    const watch = outputPath
      ? new FreeSpaceWatch(dirname(outputPath), what, options.diskSpace ?? statfsSpace)
      : undefined;
    await watch?.wrote(0);
    for await (const chunk of chunks) {
      options.signal?.throwIfAborted();
      if (hasher.length + chunk.byteLength > limit) {
        throw new InvalidContentError(
          `${what} decompresses to more than ${formatBytes(limit)} ` +
            `(${formatBytes(compressedSize)} compressed); refusing it`,
          {
            hint: options.maxBytes === undefined
              ? "a layer this expansive is likely a decompression bomb; " +
                "if the image is genuine, raise the limit with --max-layer-size"
              : "raise the limit with --max-layer-size if the image is genuine",
          },
        );
      }
      hasher.update(chunk);
      if (output) {
        try {
          for (let done = 0; done < chunk.byteLength;) {
            done += (await output.write(chunk, done, chunk.byteLength - done)).bytesWritten;
          }
        } catch (e) {
          throw localIoError(e, `cannot write ${outputPath}`);
        }
        await watch!.wrote(chunk.byteLength);
      }
    }
    if (output) {
      const file = output;
      output = undefined;
      await file.close().catch((e) => {
        throw localIoError(e, `cannot write ${outputPath}`);
      });
    }
  } catch (e) {
    await output?.close().catch(() => {});
    if (created) await Deno.remove(outputPath!).catch(() => {});
    if (e instanceof ImgpullError || options.signal?.aborted) throw e;
    throw new InvalidContentError(`cannot decompress ${what} (${compression})`, { cause: e });
  } finally {
    await chunks.return?.(undefined);
  }
  return { diffId: hasher.digest(), size: hasher.length };
}
