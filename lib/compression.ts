/**
 * Layer decompression for the two cases that need it: computing a schema1
 * layer's diff_id, and turning zstd layers into plain tar for loaders that
 * cannot read zstd (Docker 20.10). Both stream; neither holds a layer in
 * memory.
 *
 * @module
 */
import { createReadStream, createWriteStream } from "node:fs";
import { pipeline } from "node:stream/promises";
import { createGunzip, createZstdDecompress } from "node:zlib";
import { DigestHasher } from "./digest.ts";
import { IntegrityError } from "./errors.ts";
import type { LayerCompression } from "./media_types.ts";

const GZIP_MAGIC = [0x1f, 0x8b];
const ZSTD_MAGIC = [0x28, 0xb5, 0x2f, 0xfd];

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

/** Result of {@link decompressLayer}. */
export interface UncompressedLayer {
  /** SHA-256 of the uncompressed bytes: the layer's diff_id. */
  diffId: string;
  size: number;
}

/**
 * Streams `path` through the decompressor for `compression` and hashes the
 * uncompressed bytes; with `outputPath`, also writes them there.
 */
export async function decompressLayer(
  path: string,
  compression: LayerCompression,
  outputPath?: string,
): Promise<UncompressedLayer> {
  const hasher = new DigestHasher("sha256");
  const source = createReadStream(path, { highWaterMark: 1024 * 1024 });
  const hash = async function* (chunks: AsyncIterable<Uint8Array>) {
    for await (const chunk of chunks) {
      hasher.update(chunk);
      yield chunk;
    }
  };
  const drain = async (chunks: AsyncIterable<Uint8Array>) => {
    for await (const _ of chunks) { /* hashing happened upstream */ }
  };
  const sink = outputPath ? createWriteStream(outputPath, { flags: "wx" }) : drain;
  try {
    if (compression === "none") {
      await pipeline(source, hash, sink);
    } else {
      const decompressor = compression === "gzip"
        ? createGunzip({ chunkSize: 256 * 1024 })
        : createZstdDecompress();
      await pipeline(source, decompressor, hash, sink);
    }
  } catch (e) {
    throw new IntegrityError(`cannot decompress layer ${path.split("/").pop()} (${compression})`, {
      cause: e,
    });
  }
  return { diffId: hasher.digest(), size: hasher.length };
}
