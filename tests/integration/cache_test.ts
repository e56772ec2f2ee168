/**
 * The blob cache through the CLI: warm re-pulls transfer no blob bytes,
 * concurrent processes share one cache without downloading a blob twice or
 * corrupting it, an interrupted download resumes in the next run, a
 * damaged cache entry never reaches an archive, and pruning works.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { imgpull } from "../helpers/cli.ts";
import {
  cutAfter,
  type FaultHandler,
  type FaultRequest,
  startFaultRegistry,
} from "../helpers/fault_registry.ts";
import { buildImage, expectedArchive, MiB, verifyArchive } from "../helpers/hostile_image.ts";
import { layerImage } from "../helpers/scenarios/security_rootfs.ts";

/** One 12 MiB layer (segmented) and one small one, opaque bytes: digests are what is checked. */
const testImage = () => buildImage({ layers: [12 * MiB + 777, 5000], seed: 7 });

async function withRegistry(
  fault: FaultHandler | undefined,
  body: (
    ctx: {
      host: string;
      dir: string;
      blobGets: () => number;
      reset: () => void;
      requests: () => FaultRequest[];
    },
  ) => Promise<void>,
) {
  const image = testImage();
  const registry = startFaultRegistry({ blobs: image.blobs, manifests: image.manifests, fault });
  const dir = await Deno.makeTempDir();
  try {
    await body({
      host: registry.host,
      dir,
      blobGets: () => registry.requests.filter((r) => r.path.includes("/blobs/")).length,
      reset: () => registry.requests.splice(0),
      requests: () => registry.requests,
    });
  } finally {
    await registry.close();
    await Deno.remove(dir, { recursive: true });
  }
}

function cli(args: string[], dir: string) {
  return imgpull(args, { cwd: dir, env: { HOME: dir } });
}

Deno.test("cache: a warm re-pull transfers no blob bytes", async () => {
  await withRegistry(undefined, async ({ host, dir, blobGets, reset }) => {
    const cache = join(dir, "cache");
    const cold = await cli([`${host}/test/img`, "--cache-dir", cache, "-o", "a.tar"], dir);
    assert.equal(cold.code, 0, cold.stderr);
    assert.ok(blobGets() >= 3);
    reset();
    const warm = await cli([`${host}/test/img`, "--cache-dir", cache, "-o", "b.tar"], dir);
    assert.equal(warm.code, 0, warm.stderr);
    assert.equal(blobGets(), 0, "manifests only");
    assert.deepEqual(
      await Deno.readFile(join(dir, "a.tar")),
      await Deno.readFile(join(dir, "b.tar")),
    );
    const info = await cli(["--cache-info", "--cache-dir", cache], dir);
    assert.match(info.stdout, /Blobs: 3 /);
    const prune = await cli(["--cache-prune", "--cache-dir", cache], dir);
    assert.equal(prune.code, 0, prune.stderr);
    const after = await cli(["--cache-info", "--cache-dir", cache], dir);
    assert.match(after.stdout, /Blobs: 0 /);
  });
});

Deno.test("cache: concurrent processes share one cache and download each blob once", async () => {
  await withRegistry(undefined, async ({ host, dir, blobGets, requests }) => {
    const cache = join(dir, "cache");
    const runs = await Promise.all(
      [1, 2, 3, 4].map((i) =>
        cli([`${host}/test/img`, "--cache-dir", cache, "-o", `p${i}.tar`, "-q"], dir)
      ),
    );
    for (const r of runs) assert.equal(r.code, 0, r.stderr);
    const first = await Deno.readFile(join(dir, "p1.tar"));
    for (const i of [2, 3, 4]) assert.deepEqual(await Deno.readFile(join(dir, `p${i}.tar`)), first);
    // Every blob (and every Range segment of the big one) was fetched by one process only.
    const fetched = requests().filter((r) => r.path.includes("/blobs/"));
    const distinct = new Set(fetched.map((r) => `${r.path} ${r.range}`));
    assert.equal(distinct.size, fetched.length, "no blob or segment fetched twice");
    assert.equal(new Set(fetched.map((r) => r.path)).size, 3);
    assert.equal(blobGets(), fetched.length);
  });
});

Deno.test("cache: an interrupted download resumes in the next run", async () => {
  let cut = true;
  const fault: FaultHandler = (_req, ctx) => {
    if (cut && ctx.bytes && ctx.bytes.byteLength > MiB) {
      cut = false;
      return cutAfter(ctx.bytes.slice(0, 5 * MiB), 200, {
        "content-length": String(ctx.bytes.byteLength),
      });
    }
    return undefined;
  };
  await withRegistry(fault, async ({ host, dir }) => {
    const cache = join(dir, "cache");
    const args = [
      `${host}/test/img`,
      "--cache-dir",
      cache,
      "--connections",
      "1",
      "--retries",
      "0",
    ];
    const first = await cli(args, dir);
    assert.equal(first.code, 6, first.stderr);
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name).sort(), ["cache"]);
    const info = await cli(["--cache-info", "--cache-dir", cache], dir);
    assert.match(info.stdout, /Partial downloads: 1 \(5\.2 MB\)/);
    const second = await cli([...args, "--verbose"], dir);
    assert.equal(second.code, 0, second.stderr);
    assert.match(second.stderr, /resuming sha256:[0-9a-f]+ from a previous run \(5242880 bytes/);
    const done = await cli(["--cache-info", "--cache-dir", cache], dir);
    assert.match(done.stdout, /Partial downloads: 0 /);
  });
});

Deno.test("cache: a damaged cache entry never reaches the archive", async () => {
  await withRegistry(undefined, async ({ host, dir, blobGets, reset }) => {
    const image = testImage();
    const cache = join(dir, "cache");
    const args = (out: string) => [`${host}/test/img`, "--cache-dir", cache, "-o", out];
    const cold = await cli(args("a.tar"), dir);
    assert.equal(cold.code, 0, cold.stderr);
    // Flip 4 bytes inside the cached big layer.
    const blob = join(cache, "blobs", "sha256", image.layers[0].digest.slice(7));
    const bytes = await Deno.readFile(blob);
    for (let i = 0; i < 4; i++) bytes[5 * MiB + i] ^= 0xff;
    await Deno.writeFile(blob, bytes);
    reset();
    const warm = await cli(args("b.tar"), dir);
    // Repaired on the fly: evicted, downloaded again, with a warning.
    assert.equal(warm.code, 0, warm.stderr);
    assert.match(warm.stderr, /damaged/);
    assert.deepEqual(await verifyArchive(join(dir, "b.tar"), expectedArchive(image)), []);
    assert.ok(blobGets() > 0, "the damaged layer was downloaded again");
    assert.deepEqual(await Deno.readFile(blob), image.layers[0].bytes, "the cache entry repaired");
    assert.deepEqual(
      (await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name).sort(),
      ["a.tar", "b.tar", "cache"],
    );
  });
});

Deno.test("cache: a damaged cached layer is fetched again before it is decompressed (rootfs)", async () => {
  const image = layerImage([
    [{ name: "etc", type: "dir" }, { name: "etc/big", content: "x".repeat(200 * 1024) }],
    [{ name: "etc/top", content: "top\n" }],
  ], "cache/rootfs");
  const registry = startFaultRegistry({ blobs: image.blobs, manifests: image.manifests });
  const dir = await Deno.makeTempDir();
  try {
    const cache = join(dir, "cache");
    const ref = `${registry.host}/${image.repository}:${image.tag}`;
    const pull = (out: string) =>
      cli([ref, "--format", "rootfs", "--cache-dir", cache, "-o", out], dir);
    const cold = await pull("a.tar");
    assert.equal(cold.code, 0, cold.stderr);
    // Damage the first layer in the cache: its gzip stream no longer decompresses.
    const blob = join(cache, "blobs", "sha256", image.layers[0].digest.slice(7));
    const bytes = await Deno.readFile(blob);
    for (let i = 0; i < 4; i++) bytes[100 + i] ^= 0xff;
    await Deno.writeFile(blob, bytes);
    registry.requests.splice(0);
    const warm = await pull("b.tar");
    assert.equal(warm.code, 0, warm.stderr);
    assert.match(warm.stderr, /damaged/);
    assert.ok(registry.requests.some((r) => r.path.endsWith(image.layers[0].digest)));
    assert.deepEqual(
      await Deno.readFile(join(dir, "b.tar")),
      await Deno.readFile(join(dir, "a.tar")),
    );
    assert.deepEqual(await Deno.readFile(blob), image.layers[0].bytes, "the cache entry repaired");
  } finally {
    await registry.close();
    await Deno.remove(dir, { recursive: true });
  }
});
