/**
 * zstd streams of several frames (the shape of zstd:chunked), skippable frames, raw/RLE/empty
 * blocks, checksums on and off: decompressLayer must give exactly what `zstd -d` gives. Blobs are
 * made with the zstd CLI; the skippable frames by hand.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import {
  decompressLayer,
  type FramePiece,
  zstdDecompressFrames,
  ZstdFrameSplitter,
} from "../../lib/compression.ts";
import { ExitCode, InvalidContentError } from "../../lib/errors.ts";
import { concat } from "../helpers/layers.ts";
import { pseudoRandomBytes } from "../helpers/random.ts";

const KiB = 1024;
const MiB = 1024 * KiB;

async function zstd(args: string[], input: Uint8Array): Promise<Uint8Array> {
  const child = new Deno.Command("zstd", {
    args: ["-q", ...args],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  const [out] = await Promise.all([
    child.output(),
    writer.write(input).then(() => writer.close()),
  ]);
  if (!out.success) {
    throw new Error(`zstd ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  }
  return out.stdout;
}

/** Writes `input` to a file first, so that the frame records its content size. */
async function zstdFile(args: string[], input: Uint8Array, dir: string): Promise<Uint8Array> {
  const path = join(dir, `in-${crypto.randomUUID()}`);
  await Deno.writeFile(path, input);
  const out = await new Deno.Command("zstd", { args: ["-q", "-c", ...args, path] }).output();
  await Deno.remove(path);
  if (!out.success) throw new Error(new TextDecoder().decode(out.stderr));
  return out.stdout;
}

/** A skippable frame (magic 0x184D2A5X, 4-byte little-endian size, then the payload). */
function skippable(payload: Uint8Array, nibble = 0): Uint8Array {
  const frame = new Uint8Array(8 + payload.byteLength);
  const view = new DataView(frame.buffer);
  view.setUint32(0, 0x184d2a50 + nibble, true);
  view.setUint32(4, payload.byteLength, true);
  frame.set(payload, 8);
  return frame;
}

const sha256 = (b: Uint8Array) => `sha256:${createHash("sha256").update(b).digest("hex")}`;

const RANDOM = pseudoRandomBytes(700 * KiB, 7);
const REPETITIVE = new TextEncoder().encode("layer line\n".repeat(90_000));
const ZEROS = new Uint8Array(3 * MiB);

async function withDir(body: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "imgpull-zstd-" });
  try {
    await body(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** decompressLayer of `blob` equals `zstd -d` of it (and `expected`), with and without output. */
async function assertLikeCli(dir: string, blob: Uint8Array, expected: Uint8Array, what: string) {
  const cli = await zstd(["-d", "-c"], blob);
  assert.equal(sha256(cli), sha256(expected), `${what}: zstd -d agrees with the test`);
  const path = join(dir, `blob-${crypto.randomUUID()}`);
  await Deno.writeFile(path, blob);
  const hashed = await decompressLayer(path, "zstd");
  assert.deepEqual(hashed, { diffId: sha256(expected), size: expected.byteLength }, what);
  const out = join(dir, `out-${crypto.randomUUID()}`);
  await decompressLayer(path, "zstd", out);
  assert.ok((await Deno.readFile(out)).every((b, i) => b === expected[i]), `${what}: output`);
  assert.equal((await Deno.stat(out)).size, expected.byteLength);
}

Deno.test("zstd: one frame, checksum on and off, content size known or not", async () => {
  await withDir(async (dir) => {
    for (const data of [RANDOM, REPETITIVE, ZEROS]) {
      await assertLikeCli(dir, await zstd(["-c"], data), data, "streamed, checksum");
      await assertLikeCli(dir, await zstd(["-c", "--no-check"], data), data, "streamed, no check");
      await assertLikeCli(dir, await zstdFile(["--content-size"], data, dir), data, "with size");
      await assertLikeCli(dir, await zstdFile(["-19", "--no-check"], data, dir), data, "level 19");
    }
  });
});

Deno.test("zstd: several frames and skippable frames (zstd:chunked shape) all decompress", async () => {
  await withDir(async (dir) => {
    const frames = [
      await zstd(["-c"], RANDOM), // raw blocks (incompressible)
      await zstd(["-c", "--no-check"], ZEROS), // RLE blocks
      await zstd(["-c"], new Uint8Array(0)), // an empty frame
      await zstdFile(["-3"], REPETITIVE, dir), // compressed blocks, content size
      await zstd(["-c", "-1"], RANDOM.subarray(0, 1)),
    ];
    const data = concat([RANDOM, ZEROS, REPETITIVE, RANDOM.subarray(0, 1)]);
    const meta = new TextEncoder().encode('{"zstd:chunked":"manifest"}');
    const blob = concat([
      skippable(meta, 0),
      frames[0],
      frames[1],
      skippable(new Uint8Array(0), 15),
      frames[2],
      frames[3],
      skippable(pseudoRandomBytes(200 * KiB, 3), 7),
      frames[4],
      skippable(meta, 0xe),
    ]);
    await assertLikeCli(dir, blob, data, "multi-frame with skippable frames");
    // Many small frames, as zstd:chunked cuts a layer into one frame per file.
    const small = Array.from(
      { length: 40 },
      (_, i) => REPETITIVE.subarray(i * 1000, i * 1000 + 999),
    );
    const many = concat(await Promise.all(small.map((s) => zstd(["-c"], s))));
    await assertLikeCli(dir, many, concat(small), "40 frames");
  });
});

Deno.test("zstd: frames split at every possible chunk boundary", async () => {
  const data = concat([REPETITIVE.subarray(0, 5000), RANDOM.subarray(0, 3000)]);
  const blob = concat([
    skippable(new Uint8Array([1, 2, 3])),
    await zstd(["-c"], data.subarray(0, 5000)),
    await zstd(["-c", "--no-check"], data.subarray(5000)),
    await zstd(["-c"], new Uint8Array(0)),
  ]);
  for (const size of [1, 2, 3, 5, 7, 13, 4096]) {
    const chunks = async function* () {
      for (let i = 0; i < blob.byteLength; i += size) yield blob.slice(i, i + size);
    };
    const out = concat(await Array.fromAsync(zstdDecompressFrames(chunks())));
    assert.equal(sha256(out), sha256(data), `chunks of ${size}`);
  }
});

Deno.test("zstd: the splitter reads frame headers with dictionary ids and all size fields", () => {
  // Hand-built frames of raw blocks; only the splitter looks at them.
  const raw = (last: boolean, bytes: number[]) => {
    const header = (last ? 1 : 0) | (0 << 1) | (bytes.length << 3);
    return [header & 0xff, (header >> 8) & 0xff, header >> 16, ...bytes];
  };
  const rle = (last: boolean, byte: number, count: number) => {
    const header = (last ? 1 : 0) | (1 << 1) | (count << 3);
    return [header & 0xff, (header >> 8) & 0xff, header >> 16, byte];
  };
  const magic = [0x28, 0xb5, 0x2f, 0xfd];
  const frames = [
    // DID flag 1 (1 byte), window descriptor, no content size, checksum.
    [...magic, 0x05, 0x50, 0x42, ...raw(false, [1, 2]), ...raw(true, [3]), 9, 9, 9, 9],
    // Single segment, FCS flag 3 (8 bytes), DID flag 3 (4 bytes).
    [...magic, 0xe3, 1, 2, 3, 4, 6, 0, 0, 0, 0, 0, 0, 0, ...rle(true, 7, 6)],
    // Single segment, FCS flag 0 (1 byte), DID flag 2 (2 bytes), an empty last block.
    [...magic, 0x22, 5, 6, 0, ...raw(true, [])],
    // FCS flag 1 (2 bytes), window descriptor.
    [...magic, 0x40, 0x50, 0, 1, ...raw(true, [4])],
  ];
  const blob = new Uint8Array(frames.flat());
  for (const size of [1, 3, blob.byteLength]) {
    const splitter = new ZstdFrameSplitter();
    const pieces: FramePiece[] = [];
    for (let i = 0; i < blob.byteLength; i += size) {
      pieces.push(...splitter.push(blob.slice(i, i + size)));
    }
    splitter.finish();
    const got: number[][] = [];
    for (const p of pieces) {
      if (p.kind === "start") got.push([]);
      else if (p.kind === "bytes") got[got.length - 1].push(...p.bytes);
    }
    assert.deepEqual(got, frames, `chunks of ${size}`);
    assert.equal(pieces.filter((p) => p.kind === "end").length, 4);
    assert.equal(splitter.frames, 4);
  }
});

Deno.test("zstd: broken streams are invalid content (exit 8), and leave no output", async () => {
  await withDir(async (dir) => {
    const good = await zstd(["-c"], REPETITIVE);
    const corrupt = good.slice();
    corrupt[Math.floor(corrupt.byteLength / 2)] ^= 0x55;
    const cases: [string, Uint8Array][] = [
      ["empty", new Uint8Array(0)],
      ["truncated", good.subarray(0, good.byteLength - 3)],
      ["truncated skippable frame", concat([good, skippable(new Uint8Array(10)).subarray(0, 12)])],
      ["trailing garbage", concat([good, new Uint8Array([1, 2, 3, 4, 5])])],
      ["corrupt block", corrupt],
      ["reserved block type", new Uint8Array([0x28, 0xb5, 0x2f, 0xfd, 0x20, 0, 0x07, 0, 0])],
    ];
    for (const [name, blob] of cases) {
      const path = join(dir, "blob");
      const out = join(dir, "out");
      await Deno.writeFile(path, blob);
      await assert.rejects(
        decompressLayer(path, "zstd", out),
        (e) => e instanceof InvalidContentError && e.exitCode === ExitCode.invalidContent,
        name,
      );
      await assert.rejects(Deno.stat(out), Deno.errors.NotFound, `${name}: output removed`);
    }
    // Only skippable frames: zstd -d accepts it as empty, and so do we.
    await Deno.writeFile(join(dir, "skip"), skippable(new Uint8Array(5)));
    assert.equal((await decompressLayer(join(dir, "skip"), "zstd")).size, 0);
  });
});
