/**
 * Security scenarios (fetch): what a registry can make the downloader do with layer bytes —
 * decompression bombs, foreign-layer URLs that point anywhere, schema1 layers without a size
 * and an endless body — and the retry policy over a link that keeps dropping.
 * @module
 */
import { createHash } from "node:crypto";
import type { FaultContext } from "../fault_registry.ts";
import {
  buildImage,
  jsonBytes,
  manifestBlob,
  MiB,
  MT,
  putManifest,
  sha256,
  type TestImage,
} from "../hostile_image.ts";
import type { Scenario } from "../hostile_runner.ts";
import { cutEvery, endlessBody, exactly, expect, fault, pathOf } from "./kit.ts";

/** Report rows / tests of this module. */
export const CLASSES: { id: string; title: string }[] = [
  { id: "decompression-bomb", title: "zstd/gzip layers that expand to gigabytes are refused" },
  {
    id: "foreign-urls",
    title: "foreign layer URLs: plain HTTP, file: and loopback are not fetched",
  },
  { id: "schema1-unbounded", title: "a schema1 layer (no size) with an endless body is cut off" },
  { id: "retries-progress", title: "retries count failures without progress, not cuts" },
];

const ZSTD_LAYER = "application/vnd.oci.image.layer.v1.tar+zstd";
const FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
const SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json";

/** `size` zero bytes compressed by the CLI (`zstd` or `gzip`), never held in memory. */
async function compressedZeros(tool: "zstd" | "gzip", size: number): Promise<Uint8Array> {
  const out = await new Deno.Command("sh", {
    args: ["-c", `head -c ${size} /dev/zero | ${tool} -c`],
    stdout: "piped",
  }).output();
  if (!out.success) throw new Error(`${tool} failed`);
  return out.stdout;
}

/** `sha256:` of `size` zero bytes. */
function zerosDigest(size: number): string {
  const hash = createHash("sha256");
  const block = new Uint8Array(MiB);
  for (let left = size; left > 0; left -= MiB) hash.update(block.subarray(0, Math.min(MiB, left)));
  return `sha256:${hash.digest("hex")}`;
}

/**
 * Replaces the image's manifest: `layers` (descriptor fields plus bytes, or no bytes for a blob
 * the registry does not have) with `diffIds` in the config.
 */
function withLayers(
  image: TestImage,
  layers: { mediaType: string; bytes: Uint8Array; urls?: string[]; absent?: boolean }[],
  diffIds: string[],
): TestImage {
  const config = jsonBytes({
    architecture: "amd64",
    os: "linux",
    rootfs: { type: "layers", diff_ids: diffIds },
  });
  image.blobs.clear();
  image.blobs.set(sha256(config), config);
  for (const l of layers) if (!l.absent) image.blobs.set(sha256(l.bytes), l.bytes);
  const manifest = manifestBlob({
    schemaVersion: 2,
    mediaType: MT.ociManifest,
    config: { mediaType: MT.ociConfig, digest: sha256(config), size: config.byteLength },
    layers: layers.map((l) => ({
      mediaType: l.mediaType,
      digest: sha256(l.bytes),
      size: l.bytes.byteLength,
      ...(l.urls ? { urls: l.urls } : {}),
    })),
  }, MT.ociManifest);
  putManifest(image, image.tag, manifest);
  return image;
}

/** An unsigned schema1 manifest with one layer. */
function schema1Image(layer: Uint8Array): TestImage {
  const image = buildImage();
  const digest = sha256(layer);
  image.blobs.set(digest, layer);
  putManifest(image, image.tag, {
    mediaType: SCHEMA1,
    bytes: jsonBytes({
      schemaVersion: 1,
      name: image.repository,
      tag: image.tag,
      architecture: "amd64",
      fsLayers: [{ blobSum: digest }],
      history: [{
        v1Compatibility: JSON.stringify({ id: "1".repeat(64), os: "linux", architecture: "amd64" }),
      }],
    }),
  });
  return image;
}

const bombs: Scenario[] = [
  fault({
    id: "zstd-bomb-limit",
    cls: "decompression-bomb",
    title: "a 10 kB zstd layer of 256 MiB zeros (valid diff_id) with --max-layer-size 16M",
    code: 8,
    message: /decompresses to more than 16 MiB/,
  }, async () => {
    const size = 256 * MiB;
    const layer = await compressedZeros("zstd", size);
    const image = withLayers(buildImage(), [{ mediaType: ZSTD_LAYER, bytes: layer }], [
      zerosDigest(size),
    ]);
    return {
      image,
      args: ["--max-layer-size", "16M"],
      expected: null,
      check: (_run, outcome) => expect(outcome.elapsedMs < 15_000, "took too long"),
    };
  }),
  fault({
    id: "zstd-bomb-default",
    cls: "decompression-bomb",
    title: "a 40 kB zstd layer of 1.25 GiB zeros, no limit given: refused past 1 GiB",
    code: 8,
    message: /decompresses to more than 1 GiB/,
  }, async () => {
    const layer = await compressedZeros("zstd", 1280 * MiB);
    const image = withLayers(buildImage(), [{ mediaType: ZSTD_LAYER, bytes: layer }], [
      sha256(new Uint8Array(1)),
    ]);
    return { image, expected: null };
  }),
  fault({
    id: "gzip-bomb-schema1",
    cls: "decompression-bomb",
    title: "a schema1 gzip layer of 128 MiB zeros with --max-layer-size 8M (diff_id computation)",
    code: 8,
    message: /decompresses to more than 8 MiB/,
  }, async () => ({
    image: schema1Image(await compressedZeros("gzip", 128 * MiB)),
    args: ["--max-layer-size", "8M"],
    expected: null,
  })),
];

/** A local server standing for a host the foreign URLs point at; counts what it is asked. */
function startTarget(
  body: Uint8Array,
): { url: string; hits: () => number; close(): Promise<void> } {
  let hits = 0;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, () => {
    hits++;
    return new Response(body.slice());
  });
  return {
    url: `http://127.0.0.1:${server.addr.port}/layer.tar.gz`,
    hits: () => hits,
    close: () => server.shutdown(),
  };
}

const foreignUrls: Scenario[] = [
  fault({
    id: "foreign-urls-refused",
    cls: "foreign-urls",
    title: "an HTTPS registry lists http://example.invalid, file:///etc/passwd, http://127.0.0.1",
    code: 8,
    message: /foreign URLs are refused/,
  }, () => {
    const layer = new Uint8Array(50_000).fill(5);
    const target = startTarget(layer);
    const urls = ["http://example.invalid/layer.tar.gz", "file:///etc/passwd", target.url];
    const image = withLayers(buildImage(), [
      { mediaType: FOREIGN_LAYER, bytes: layer, urls, absent: true },
    ], [sha256(layer)]);
    return {
      image,
      tls: true,
      expected: null,
      extraClose: () => target.close(),
      check: () =>
        expect(target.hits() === 0, `the loopback URL was fetched ${target.hits()} times`),
    };
  }),
];

const schema1Unbounded: Scenario[] = [
  fault({
    id: "schema1-endless-layer",
    cls: "schema1-unbounded",
    title: "a schema1 layer served as an endless body, --max-layer-size 4M",
    code: 8,
    message: /larger than 4 MiB/,
  }, () => {
    const counter = { bytes: 0 };
    const image = schema1Image(new Uint8Array(1000).fill(1));
    const layerPath = `/v2/${image.repository}/blobs/${sha256(new Uint8Array(1000).fill(1))}`;
    return {
      image,
      args: ["--max-layer-size", "4M", "--retries", "0"],
      expected: null,
      handler: () => (req) =>
        pathOf(req) === layerPath
          ? new Response(endlessBody(new Uint8Array(0), counter, 4096 * MiB))
          : undefined,
      check: () => expect(counter.bytes < 64 * MiB, `the registry sent ${counter.bytes} bytes`),
    };
  }),
];

/**
 * Serves a layer from the requested offset and cuts the connection at the next multiple of
 * `every` bytes (with `fixed`: always at byte `every`), announcing the full remainder.
 */
function cutting(image: TestImage, every: number, fixed: boolean) {
  const layerPath = `/v2/${image.repository}/blobs/${image.layers[0].digest}`;
  const cut = cutEvery(every, fixed);
  return (req: Request, ctx: FaultContext) => pathOf(req) === layerPath ? cut(req, ctx) : undefined;
}

const retriesProgress: Scenario[] = [
  fault({
    id: "cut-every-mib",
    cls: "retries-progress",
    title: "a 6 MiB layer over a link that drops every 1 MiB, --retries 2, one connection",
    code: 0,
  }, () => ({
    imageOptions: { layers: [6 * MiB, 1000] },
    args: ["--retries", "2", "--max-concurrent-downloads", "1"],
    handler: (image) => cutting(image, MiB, false),
    check: (run) => exactly(run, "layer", 6, "one request per MiB, each resuming"),
  })),
  fault({
    id: "cut-same-byte",
    cls: "retries-progress",
    title: "a layer cut at the same byte every time still fails after --retries 2",
    code: 6,
    message: /cannot reach|connection|closed|error reading/i,
  }, () => ({
    imageOptions: { layers: [3 * MiB, 1000] },
    args: ["--retries", "2", "--max-concurrent-downloads", "1"],
    handler: (image) => cutting(image, MiB, true),
    expected: null,
    check: (run) => exactly(run, "layer", 3, "the first attempt, then 2 retries without progress"),
  })),
];

/** The scenarios, in class order. */
export const SCENARIOS: Scenario[] = [
  ...bombs,
  ...foreignUrls,
  ...schema1Unbounded,
  ...retriesProgress,
];
