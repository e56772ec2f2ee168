/**
 * Decompression bombs and disk space: decompressLayer stops at the size limit (the user's, or
 * 100× the compressed size past 1 GiB) and before the disk fills, removing its partial output.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import {
  decompressLayer,
  defaultMaxLayerBytes,
  formatBytes,
  freeSpaceMargin,
  parseByteSize,
} from "../../lib/compression.ts";
import { ExitCode, InvalidContentError, LocalIoError } from "../../lib/errors.ts";
import { mountTmpfs, unmount } from "../helpers/hostile_runner.ts";

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

/** `zstd -c` of `size` zero bytes, made by the CLI without holding them in memory. */
async function zstdZeros(path: string, size: number): Promise<void> {
  const cmd = `head -c ${size} /dev/zero | zstd -q -c > '${path}'`;
  const out = await new Deno.Command("sh", { args: ["-c", cmd] }).output();
  assert.ok(out.success, new TextDecoder().decode(out.stderr));
}

async function withDir(body: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "imgpull-compression-" });
  try {
    await body(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("compression: the default limit is 100x the compressed size, at least 1 GiB", () => {
  assert.equal(defaultMaxLayerBytes(145_000), GiB);
  assert.equal(defaultMaxLayerBytes(0), GiB);
  assert.equal(defaultMaxLayerBytes(50 * MiB), 5000 * MiB);
  assert.equal(freeSpaceMargin(100 * GiB), 256 * MiB);
  assert.equal(freeSpaceMargin(100 * MiB), 5 * MiB);
});

Deno.test("compression: sizes as the CLI takes them", () => {
  assert.equal(parseByteSize("1048576"), MiB);
  assert.equal(parseByteSize("512K"), 512 * KiB);
  assert.equal(parseByteSize("100M"), 100 * MiB);
  assert.equal(parseByteSize("100MiB"), 100 * MiB);
  assert.equal(parseByteSize("1.5g"), 1.5 * GiB);
  assert.equal(parseByteSize("2TB"), 2 * 1024 * GiB);
  for (const bad of ["", "0", "-1M", "1X", "M", "1 M M", "1e9"]) {
    assert.equal(parseByteSize(bad), undefined, bad);
  }
  assert.equal(formatBytes(GiB), "1 GiB");
  assert.equal(formatBytes(1536 * KiB), "1.5 MiB");
  assert.equal(formatBytes(12), "12 bytes");
});

Deno.test("compression: a zstd or gzip bomb stops at the limit, exit 8, output removed", async () => {
  await withDir(async (dir) => {
    const zst = join(dir, "bomb.zst");
    await zstdZeros(zst, 512 * MiB);
    const gz = join(dir, "bomb.gz");
    await Deno.writeFile(gz, gzipSync(new Uint8Array(64 * MiB)));
    for (const [path, compression] of [[zst, "zstd"], [gz, "gzip"]] as const) {
      const out = join(dir, "out");
      const started = performance.now();
      await assert.rejects(
        decompressLayer(path, compression, out, { maxBytes: 4 * MiB, label: "sha256:abc" }),
        (e) =>
          e instanceof InvalidContentError && e.exitCode === ExitCode.invalidContent &&
          /layer sha256:abc decompresses to more than 4 MiB/.test(e.message),
      );
      assert.ok(performance.now() - started < 2000, "stops at the limit, not at the end");
      await assert.rejects(Deno.stat(out), Deno.errors.NotFound, "partial output removed");
      // Hash-only (schema1 diff_ids) is bounded too.
      await assert.rejects(
        decompressLayer(path, compression, undefined, { maxBytes: 4 * MiB }),
        InvalidContentError,
      );
      // Exactly at the limit is fine.
      const exact = compression === "zstd" ? 512 * MiB : 64 * MiB;
      assert.equal(
        (await decompressLayer(path, compression, undefined, { maxBytes: exact })).size,
        exact,
      );
    }
  });
});

Deno.test("compression: without a limit, a 40 kB layer that expands past 1 GiB is refused", async () => {
  await withDir(async (dir) => {
    const zst = join(dir, "bomb.zst");
    await zstdZeros(zst, GiB + MiB);
    assert.ok((await Deno.stat(zst)).size < 100 * KiB);
    await assert.rejects(decompressLayer(zst, "zstd"), /more than 1 GiB .* refusing it/);
  });
});

Deno.test("compression: stops before the disk fills (free space reported low)", async () => {
  await withDir(async (dir) => {
    const zst = join(dir, "big.zst");
    await zstdZeros(zst, 200 * MiB);
    const out = join(dir, "out");
    let written = 0;
    // A 1 GiB disk with 100 MiB free: the margin (51 MiB) is reached after ~49 MiB.
    const diskSpace = async () => {
      written = (await Deno.stat(out).catch(() => ({ size: 0 }))).size;
      return { free: 100 * MiB - written, total: GiB };
    };
    await assert.rejects(
      decompressLayer(zst, "zstd", out, { diskSpace }),
      (e) => e instanceof LocalIoError && /not enough disk space/.test(e.message),
    );
    assert.ok(written <= 49 * MiB + 64 * KiB, `wrote ${written} bytes`);
    await assert.rejects(Deno.stat(out), Deno.errors.NotFound);
  });
});

Deno.test({
  name: "compression: on a real 32 MiB tmpfs, a 200 MiB layer stops with exit 7, nothing left",
  ignore: Deno.uid() !== 0,
  fn: async () => {
    await withDir(async (dir) => {
      const zst = join(dir, "big.zst");
      await zstdZeros(zst, 200 * MiB);
      const mount = join(dir, "mnt");
      await Deno.mkdir(mount);
      await mountTmpfs(mount, "size=32m");
      try {
        const out = join(mount, "out");
        await assert.rejects(
          decompressLayer(zst, "zstd", out),
          (e) => e instanceof LocalIoError && e.exitCode === ExitCode.localIo,
        );
        assert.deepEqual([...Deno.readDirSync(mount)], []);
      } finally {
        await unmount(mount);
      }
    });
  },
});
