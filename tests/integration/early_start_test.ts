/**
 * The early start of a docker-archive pull: the layers of an image chosen from an index are
 * requested while its config is being fetched, and the config's checks still decide whether
 * anything is committed, with the same errors as when the config came first. A layer the cache
 * holds under its diff_id (which only the config tells) sends the pull back to the usual path.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { IntegrityError, InvalidContentError } from "../../lib/errors.ts";
import type { PullEvent } from "../../lib/events.ts";
import { pull } from "../../lib/pull.ts";
import { BlobStore } from "../../lib/store.ts";
import { type FaultHandler, serveBytes, startFaultRegistry } from "../helpers/fault_registry.ts";
import {
  buildImage,
  buildIndex,
  expectedArchive,
  jsonBytes,
  KiB,
  listFiles,
  manifestBlob,
  MT,
  pseudoRandom,
  putManifest,
  readTar,
  sha256,
  type TestImage,
  verifyArchive,
} from "../helpers/hostile_image.ts";

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** `image` under an index tagged `multi`. */
function indexed(image: TestImage): TestImage {
  const index = buildIndex([{ manifest: image.manifest }]);
  putManifest(image, "multi", index);
  return image;
}

/** Serves `image` with `fault`; runs `fn` in a fresh directory. */
async function withRegistry(
  image: TestImage,
  fault: FaultHandler,
  fn: (host: string, dir: string, requests: () => { path: string; time: number }[]) => Promise<
    void
  >,
): Promise<void> {
  const registry = startFaultRegistry({ blobs: image.blobs, manifests: image.manifests, fault });
  const dir = await Deno.makeTempDir({ prefix: "imgpull-early-" });
  try {
    await fn(registry.host, dir, () => registry.requests);
  } finally {
    await registry.close();
    await Deno.remove(dir, { recursive: true });
  }
}

/** Delays the answer for the config blob by `ms`. */
function slowConfig(image: TestImage, ms: number, bytes?: Uint8Array): FaultHandler {
  return (req) => {
    if (!new URL(req.url).pathname.endsWith(`/blobs/${image.config.digest}`)) return undefined;
    return sleep(ms).then(() => new Response((bytes ?? image.config.bytes).slice()));
  };
}

Deno.test("early start: layers are requested before the config arrives, and the archive is whole", async () => {
  const image = indexed(buildImage({ layers: [600 * KiB, 48 * KiB] }));
  await withRegistry(image, slowConfig(image, 400), async (host, dir, requests) => {
    const events: PullEvent[] = [];
    const output = join(dir, "out.tar");
    const result = await pull({
      reference: `${host}/${image.repository}:multi`,
      output,
      platform: "linux/amd64",
      onEvent: (e) => events.push(e),
    });
    assert.equal(result.imageId, image.config.digest);
    assert.deepEqual(await verifyArchive(output, expectedArchive(image)), []);
    const config = requests().find((r) => r.path.endsWith(image.config.digest))!;
    const layers = requests().filter((r) => image.layers.some((l) => r.path.endsWith(l.digest)));
    assert.ok(layers.length >= 2);
    // Answered 400 ms after it was asked: every layer was asked for before.
    assert.ok(layers.every((r) => r.time < config.time + 300), "layers waited for the config");
    assert.ok(
      events.some((e) => e.type === "debug" && /layers requested while config/.test(e.message)),
    );
  });
});

Deno.test("early start: an OCI archive gets its config in place once verified", async () => {
  const image = indexed(buildImage({ layers: [600 * KiB, 48 * KiB] }));
  await withRegistry(image, slowConfig(image, 400), async (host, dir, requests) => {
    const output = join(dir, "out.tar");
    const result = await pull({
      reference: `${host}/${image.repository}:multi`,
      output,
      format: "oci-archive",
      platform: "linux/amd64",
    });
    assert.equal(result.imageId, image.config.digest);
    const files = readTar(await Deno.readFile(output));
    for (const blob of [image.config, ...image.layers, image.manifest]) {
      const bytes = files.get(`blobs/${blob.digest.replace(":", "/")}`);
      assert.ok(bytes && sha256(bytes) === blob.digest, `${blob.digest} in the layout`);
    }
    const index = JSON.parse(new TextDecoder().decode(files.get("index.json")));
    assert.equal(index.manifests[0].digest, image.manifest.digest);
    const config = requests().find((r) => r.path.endsWith(image.config.digest))!;
    const layers = requests().filter((r) => image.layers.some((l) => r.path.endsWith(l.digest)));
    assert.ok(layers.length >= 2 && layers.every((r) => r.time < config.time + 300));
  });
  const corrupt = image.config.bytes.slice();
  corrupt[corrupt.length - 2] ^= 1;
  await withRegistry(image, slowConfig(image, 200, corrupt), async (host, dir) => {
    await assert.rejects(
      pull({
        reference: `${host}/${image.repository}:multi`,
        output: join(dir, "out.tar"),
        format: "oci-archive",
        platform: "linux/amd64",
      }),
      IntegrityError,
    );
    assert.deepEqual(await listFiles(dir), []);
  });
});

Deno.test("early start: a config that fails its checks is the pull's error, and nothing is left", async (t) => {
  const image = indexed(buildImage({ layers: [600 * KiB, 48 * KiB] }));
  const corrupt = image.config.bytes.slice();
  corrupt[corrupt.length - 2] ^= 1;
  await t.step("wrong bytes: IntegrityError", async () => {
    await withRegistry(image, slowConfig(image, 200, corrupt), async (host, dir) => {
      await assert.rejects(
        pull({
          reference: `${host}/${image.repository}:multi`,
          output: join(dir, "out.tar"),
          platform: "linux/amd64",
        }),
        IntegrityError,
      );
      assert.deepEqual(await listFiles(dir), []);
    });
  });
  await t.step("fewer diff_ids than layers: InvalidContentError", async () => {
    const short = buildImage({ layers: [600 * KiB, 48 * KiB] });
    const config = jsonBytes({
      architecture: "amd64",
      os: "linux",
      rootfs: { type: "layers", diff_ids: [short.layers[0].digest] },
    });
    const digest = sha256(config);
    short.blobs.set(digest, config);
    const m = JSON.parse(new TextDecoder().decode(short.manifest.bytes));
    m.config = { mediaType: MT.dockerConfig, digest, size: config.byteLength };
    const manifest = manifestBlob(m, MT.dockerManifest);
    putManifest(short, manifest.digest, manifest);
    putManifest(short, "multi", buildIndex([{ manifest }]));
    const fault: FaultHandler = (req) =>
      new URL(req.url).pathname.endsWith(digest)
        ? sleep(200).then(() => new Response(config.slice()))
        : undefined;
    await withRegistry(short, fault, async (host, dir) => {
      await assert.rejects(
        pull({
          reference: `${host}/${short.repository}:multi`,
          output: join(dir, "out.tar"),
          platform: "linux/amd64",
        }),
        (e) => e instanceof InvalidContentError && /diff_ids/.test(e.message),
      );
      assert.deepEqual(await listFiles(dir), []);
    });
  });
});

Deno.test("early start: a layer the cache holds by its diff_id is taken from there, as without it", async () => {
  // Layer 0's uncompressed form is in the cache; only the config says so.
  const plain = pseudoRandom(100 * KiB, 77);
  const image = buildImage({ layers: [600 * KiB, 48 * KiB] });
  const config = jsonBytes({
    architecture: "amd64",
    os: "linux",
    rootfs: { type: "layers", diff_ids: [sha256(plain), image.layers[1].digest] },
  });
  const configDigest = sha256(config);
  image.blobs.set(configDigest, config);
  const m = JSON.parse(new TextDecoder().decode(image.manifest.bytes));
  m.config = { mediaType: MT.dockerConfig, digest: configDigest, size: config.byteLength };
  const manifest = manifestBlob(m, MT.dockerManifest);
  putManifest(image, manifest.digest, manifest);
  putManifest(image, "multi", buildIndex([{ manifest }]));
  // Layer 0 is still on its way when the config tells.
  const fault: FaultHandler = (req, ctx) => {
    const path = new URL(req.url).pathname;
    if (path.endsWith(configDigest)) return sleep(200).then(() => new Response(config.slice()));
    if (path.endsWith(image.layers[0].digest)) {
      return sleep(1_500).then(() => serveBytes(ctx.bytes!, ctx.range));
    }
    return undefined;
  };
  await withRegistry(image, fault, async (host, dir) => {
    const cache = join(dir, "cache");
    const store = await BlobStore.open(cache);
    const temp = store.tempPath("plain");
    await Deno.writeFile(temp, plain);
    await store.commit(temp, sha256(plain));
    const events: PullEvent[] = [];
    const output = join(dir, "out.tar");
    await pull({
      reference: `${host}/${image.repository}:multi`,
      output,
      platform: "linux/amd64",
      cacheDir: cache,
      onEvent: (e) => events.push(e),
    });
    assert.deepEqual(
      await verifyArchive(output, {
        configDigest,
        layerDigests: [sha256(plain), image.layers[1].digest],
      }),
      [],
    );
    const said = events.filter((e) => e.type === "notice" || e.type === "debug")
      .map((e) => (e as { message: string }).message);
    assert.ok(
      said.some((m) => /early start abandoned: the cache holds layer/.test(m)),
      said.join("\n"),
    );
    assert.ok(said.some((m) => /found in the cache by its diff_id/.test(m)), said.join("\n"));
  });
});

Deno.test("early start: to standard output, the config is still there when the stream is written", async () => {
  const image = indexed(buildImage({ layers: [600 * KiB, 48 * KiB] }));
  for (const format of ["docker-archive", "oci-archive"] as const) {
    await withRegistry(image, slowConfig(image, 200), async (host, dir) => {
      const chunks: Uint8Array[] = [];
      const stdout = new WritableStream<Uint8Array>({
        write: (chunk) => void chunks.push(chunk.slice()),
      });
      const events: PullEvent[] = [];
      await pull({
        reference: `${host}/${image.repository}:multi`,
        output: "-",
        stdout,
        format,
        platform: "linux/amd64",
        cacheDir: join(dir, "cache"),
        onEvent: (e) => events.push(e),
      });
      assert.ok(
        events.some((e) => e.type === "debug" && /layers requested while config/.test(e.message)),
        format,
      );
      const total = chunks.reduce((n, c) => n + c.byteLength, 0);
      const all = new Uint8Array(total);
      let at = 0;
      for (const c of chunks) {
        all.set(c, at);
        at += c.byteLength;
      }
      const files = readTar(all);
      const config = files.get(`blobs/${image.config.digest.replace(":", "/")}`);
      assert.ok(config && sha256(config) === image.config.digest, format);
      // No temporary file of the early start is left in the cache.
      assert.deepEqual(
        (await listFiles(join(dir, "cache"))).filter((f) => /config/.test(f)),
        [],
        format,
      );
    });
  }
});
