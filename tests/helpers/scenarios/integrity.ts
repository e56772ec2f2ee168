/**
 * Reliability scenarios, hostile content: blob and manifest bytes that differ from their
 * digests and sizes, malformed or unsupported manifests and configs, digests that are not
 * algorithm:hex, and huge error bodies and manifests.
 * @module
 */
import { join } from "node:path";
import { type FaultContext, type FaultRequest, serveBytes } from "../fault_registry.ts";
import {
  buildImage,
  buildIndex,
  type ImageOptions,
  jsonBytes,
  KiB,
  listFiles,
  manifestBlob,
  MiB,
  MT,
  putManifest,
  sha256,
  type TestImage,
} from "../hostile_image.ts";
import type { Scenario } from "../hostile_runner.ts";
import {
  corrupt,
  endlessBody,
  exactly,
  expect,
  fault,
  type FaultRun,
  type FaultSetup,
  pathOf,
  rangeStart,
  type Target,
  targetPath,
} from "./kit.ts";

/** Report rows / tests of this module. */
export const CLASSES: { id: string; title: string }[] = [
  { id: "blob-integrity", title: "blob bytes or sizes differ from the descriptor" },
  { id: "manifest-integrity", title: "manifest bytes differ from the digest pulled or indexed" },
  { id: "invalid-content", title: "malformed, oversized or unsupported manifests and configs" },
  { id: "bad-digests", title: "digests that are not algorithm:hex (traversal, algorithms)" },
  { id: "huge-bodies", title: "huge error bodies and manifests" },
];

// ---------------------------------------------------------------------------------------------
// Blob integrity.

function layerFault(
  id: string,
  title: string,
  respond: (bytes: Uint8Array, ctx: FaultContext) => Response,
  options: Partial<Scenario> & {
    target?: Target;
    imageOptions?: ImageOptions;
    args?: string[];
    /** Which requests count for "not retried" (default: all of the target's). */
    counted?: (r: FaultRequest) => boolean;
  } = {},
): Scenario {
  const target = options.target ?? "layer";
  const counted = options.counted ?? (() => true);
  return fault({
    id,
    cls: "blob-integrity",
    title,
    code: options.code ?? 5,
    message: options.message ?? /digest|bytes|size/,
    preexisting: options.preexisting,
    cache: options.cache,
  }, () => ({
    imageOptions: options.imageOptions,
    handler: (image) => (req, ctx) =>
      pathOf(req) === targetPath(image, target) && ctx.bytes ? respond(ctx.bytes, ctx) : undefined,
    args: options.args,
    check: (run) => {
      const n = run.requests(target).filter(counted).length;
      return expect(n === 1, `${n} requests for the ${target}: integrity failures are final`);
    },
  }));
}

function streamOf(bytes: Uint8Array): ReadableStream<Uint8Array> {
  return new ReadableStream({
    start(controller) {
      controller.enqueue(bytes.slice());
      controller.close();
    },
  });
}

const blobIntegrity: Scenario[] = [
  layerFault(
    "blob-corrupt",
    "layer bytes do not match the digest",
    (b) => new Response(corrupt(b)),
    { preexisting: true },
  ),
  layerFault(
    "blob-longer-declared",
    "layer has 3 bytes more than the descriptor (Content-Length says so)",
    (b) => new Response(new Uint8Array([...b, 1, 2, 3])),
  ),
  layerFault(
    "blob-longer-chunked",
    "layer has 3 bytes more than the descriptor (chunked)",
    (b) => new Response(streamOf(new Uint8Array([...b, 1, 2, 3]))),
  ),
  layerFault(
    "blob-shorter-declared",
    "layer has 100 bytes fewer than the descriptor (Content-Length says so)",
    (b) => new Response(b.slice(0, b.byteLength - 100)),
  ),
  layerFault(
    "blob-shorter-chunked",
    "layer body ends cleanly 100 bytes early (chunked)",
    (b) => new Response(streamOf(b.slice(0, b.byteLength - 100))),
    { args: ["--retries", "1"] },
  ),
  fault({
    id: "blob-segment-corrupt",
    cls: "blob-integrity",
    title: "one Range segment of a 3 MiB layer is corrupt",
    code: 5,
    message: /digest/,
    cache: true,
  }, () => {
    // The first segment after byte 0 that is asked for (imgpull chooses the segments).
    let corrupted: number | undefined;
    return {
      imageOptions: { layers: [3 * MiB, 48 * KiB] },
      // Far (answers after 15 ms): fetched in Range segments from the start.
      latencyMs: 15,
      handler: (image) => (req, ctx) => {
        if (pathOf(req) !== targetPath(image, "layer") || !ctx.bytes || !ctx.range) {
          return undefined;
        }
        const { start } = ctx.range;
        if (start > 0 && (corrupted === undefined || corrupted === start)) {
          corrupted = start;
          const bad = ctx.bytes.slice();
          bad[start] ^= 0xff; // the first byte this segment sends
          return serveBytes(bad, ctx.range);
        }
        return undefined;
      },
      args: ["--segment-size", "1"],
      check: (run) => {
        const n = run.requests("layer").filter((r) => rangeStart(r) === corrupted).length;
        return [
          ...expect(corrupted !== undefined, "the layer was not fetched in Range segments"),
          ...expect(n === 1, `the corrupt segment was requested ${n} times: integrity is final`),
        ];
      },
    };
  }),
  layerFault(
    "config-corrupt",
    "config bytes do not match the digest",
    (b) => new Response(corrupt(b)),
    { target: "config", cache: true },
  ),
  layerFault(
    "config-longer-declared",
    "config has 3 bytes more than the descriptor",
    (b) => new Response(new Uint8Array([...b, 0x20, 0x20, 0x20])),
    { target: "config" },
  ),
  fault({
    id: "config-longer-endless",
    cls: "blob-integrity",
    title: "config body goes on far beyond the descriptor size: exit 5, read stops early",
    code: 5,
    message: /digest|bytes|size/,
  }, () => {
    const counter = { bytes: 0 };
    return {
      handler: (image) => (req, ctx) =>
        pathOf(req) === targetPath(image, "config") && ctx.bytes
          ? new Response(endlessBody(ctx.bytes, counter))
          : undefined,
      check: () =>
        expect(
          counter.bytes < 8 * MiB,
          `the registry had to produce ${(counter.bytes / MiB).toFixed(1)} MiB for a ` +
            `config of a few hundred bytes`,
        ),
    };
  }),
];

// ---------------------------------------------------------------------------------------------
// Manifest integrity.

/** An index whose only entry points (by digest and size) at the index's own bytes. */
function selfReferencingIndex(): { bytes: Uint8Array; digest: string } {
  const loop = `sha256:${"0".repeat(63)}1`;
  let size = 0;
  for (let i = 0; i < 5; i++) {
    const bytes = jsonBytes({
      schemaVersion: 2,
      mediaType: MT.ociIndex,
      manifests: [{
        mediaType: MT.ociIndex,
        digest: loop,
        size,
        platform: { os: "linux", architecture: "amd64" },
      }],
    });
    if (bytes.byteLength === size) return { bytes, digest: loop };
    size = bytes.byteLength;
  }
  throw new Error("no fixed point for the self-referencing index");
}

const manifestIntegrity: Scenario[] = [
  fault({
    id: "by-digest-mismatch",
    cls: "manifest-integrity",
    title: "pull by @sha256, the manifest served has another digest",
    code: 5,
    message: /digest/,
  }, () => {
    const image = buildImage();
    putManifest(image, image.manifest.digest, buildImage({ seed: 3 }).manifest);
    return { image, ref: (img, reg) => `${reg.host}/${img.repository}@${img.manifest.digest}` };
  }),
  fault({
    id: "index-child-digest-mismatch",
    cls: "manifest-integrity",
    title: "the manifest an index points at has another digest",
    code: 5,
    message: /digest|bytes/,
  }, () => {
    const image = buildImage();
    const other = buildImage({ seed: 4 }).manifest;
    const index = buildIndex([{
      manifest: { ...image.manifest, size: other.size },
    }]);
    putManifest(image, "latest", index);
    putManifest(image, image.manifest.digest, other);
    return { image };
  }),
  fault({
    id: "index-child-size-mismatch",
    cls: "manifest-integrity",
    title: "the index gives a wrong size for the manifest",
    code: 5,
    message: /bytes|size/,
  }, () => {
    const image = buildImage();
    putManifest(
      image,
      "latest",
      buildIndex([{ manifest: { ...image.manifest, size: image.manifest.size + 7 } }]),
    );
    return { image };
  }),
  fault({
    id: "index-points-at-itself",
    cls: "manifest-integrity",
    title: "an index whose entry is served as the index itself: no loop, exit 5",
    code: 5,
    message: /digest/,
  }, () => {
    const image = buildImage();
    const self = selfReferencingIndex();
    putManifest(image, "latest", { bytes: self.bytes, mediaType: MT.ociIndex });
    putManifest(image, self.digest, { bytes: self.bytes, mediaType: MT.ociIndex });
    return {
      image,
      check: (run) => {
        const n = run.registry.requests.filter((r) => r.path.includes("/manifests/")).length;
        return expect(n === 2, `${n} manifest requests, expected 2`);
      },
    };
  }),
];

// ---------------------------------------------------------------------------------------------
// Invalid content.

function manifestFault(
  id: string,
  title: string,
  body: (image: TestImage) => { bytes: Uint8Array; mediaType: string },
  options: { code?: number; message?: RegExp; check?: FaultSetup["check"] } = {},
): Scenario {
  return fault({
    id,
    cls: "invalid-content",
    title,
    code: options.code ?? 8,
    message: options.message ?? /invalid manifest|unsupported|not valid|manifest/,
  }, () => {
    const image = buildImage();
    putManifest(image, "latest", body(image));
    return { image, check: options.check };
  });
}

function schema1WithTail(image: TestImage): Uint8Array {
  const header = { formatLength: 10, formatTail: "!!!!" };
  const protectedHeader = btoa(JSON.stringify(header)).replace(/=+$/, "");
  return jsonBytes({
    schemaVersion: 1,
    name: image.repository,
    tag: "latest",
    architecture: "amd64",
    fsLayers: [{ blobSum: image.layers[0].digest }],
    history: [{ v1Compatibility: JSON.stringify({ id: "a".repeat(64), os: "linux" }) }],
    signatures: [{ header: { alg: "ES256" }, signature: "c2ln", protected: protectedHeader }],
  });
}

/** A chain of `depth` indexes over the image's manifest; the outermost is tagged. */
function nestedIndexes(image: TestImage, depth: number): void {
  let inner = image.manifest;
  for (let i = 0; i < depth; i++) {
    inner = buildIndex([{ manifest: inner }]);
    putManifest(image, inner.digest, inner);
  }
  putManifest(image, "latest", inner);
}

const noLayerRequests = (run: FaultRun) => exactly(run, "layer", 0, "rejected before any download");

const invalidContent: Scenario[] = [
  manifestFault("manifest-malformed-json", "the manifest is not JSON", () => ({
    bytes: new TextEncoder().encode('{"schemaVersion": 2, "mediaType": '),
    mediaType: MT.dockerManifest,
  })),
  manifestFault("manifest-not-utf8", "the manifest is not UTF-8", () => ({
    bytes: new Uint8Array([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x3a, 0x31, 0x7d]),
    mediaType: MT.dockerManifest,
  })),
  manifestFault("manifest-empty", "the manifest body is empty", () => ({
    bytes: new Uint8Array(0),
    mediaType: MT.dockerManifest,
  })),
  manifestFault("manifest-unknown-type", "unknown manifest media type", () => ({
    bytes: jsonBytes({ schemaVersion: 2, mediaType: "application/vnd.example.thing.v1+json" }),
    mediaType: "application/vnd.example.thing.v1+json",
  }), { message: /unsupported manifest media type/ }),
  manifestFault(
    "manifest-unknown-type-image-shaped",
    "a manifest that declares an unknown media type but has config and layers",
    (image) => {
      const m = JSON.parse(new TextDecoder().decode(image.manifest.bytes));
      m.mediaType = "application/vnd.example.artifact.v1+json";
      return { bytes: jsonBytes(m), mediaType: m.mediaType };
    },
    { message: /unsupported manifest media type/, check: noLayerRequests },
  ),
  manifestFault(
    "schema1-bad-signature",
    "a signed schema1 manifest whose signature header has an invalid formatTail",
    (image) => ({ bytes: schema1WithTail(image), mediaType: MT.schema1Signed }),
  ),
  fault({
    id: "layer-unknown-media-type",
    cls: "invalid-content",
    title: "unknown layer media type: exit 8 before any layer is downloaded",
    code: 8,
    message: /unsupported layer media type/,
  }, () => ({
    imageOptions: { layerMediaType: "application/vnd.example.layer.v1+weird" },
    check: noLayerRequests,
  })),
  fault({
    id: "config-not-an-image",
    cls: "invalid-content",
    title: "the config media type is not an image's (a Helm chart)",
    code: 8,
    message: /not a container image/,
  }, () => ({
    imageOptions: { configMediaType: "application/vnd.cncf.helm.config.v1+json" },
    check: noLayerRequests,
  })),
  fault({
    id: "config-not-json",
    cls: "invalid-content",
    title: "the config is not JSON (digest and size match)",
    code: 8,
    message: /config/,
  }, () => {
    const image = buildImage();
    const config = new TextEncoder().encode("<html>not a config</html>");
    const digest = sha256(config);
    const m = JSON.parse(new TextDecoder().decode(image.manifest.bytes));
    m.config = { mediaType: MT.dockerConfig, digest, size: config.byteLength };
    image.blobs.set(digest, config);
    putManifest(image, "latest", manifestBlob(m, MT.dockerManifest));
    return { image, expected: null };
  }),
  fault({
    id: "config-diff-ids-mismatch",
    cls: "invalid-content",
    title: "the config lists fewer diff_ids than the manifest has layers",
    code: 8,
    message: /diff_ids/,
  }, () => {
    const image = buildImage();
    const config = jsonBytes({
      architecture: "amd64",
      os: "linux",
      rootfs: { type: "layers", diff_ids: [image.layers[0].digest] },
    });
    const digest = sha256(config);
    const m = JSON.parse(new TextDecoder().decode(image.manifest.bytes));
    m.config = { mediaType: MT.dockerConfig, digest, size: config.byteLength };
    image.blobs.set(digest, config);
    putManifest(image, "latest", manifestBlob(m, MT.dockerManifest));
    return { image, expected: null };
  }),
  fault({
    id: "index-too-deep",
    cls: "invalid-content",
    title: "indexes nested 6 deep (more than allowed)",
    code: 8,
    message: /nest/,
  }, () => {
    const image = buildImage();
    nestedIndexes(image, 6);
    return {
      image,
      check: (run) => {
        const n = run.registry.requests.filter((r) => r.path.includes("/manifests/")).length;
        return expect(n <= 6, `${n} manifest requests for a 6-deep chain`);
      },
    };
  }),
  fault({
    id: "index-nested-ok",
    cls: "invalid-content",
    title: "an index of an index (2 deep, allowed) pulls fine",
    code: 0,
  }, () => {
    const image = buildImage();
    nestedIndexes(image, 2);
    return { image };
  }),
];

// ---------------------------------------------------------------------------------------------
// Digests that are not algorithm:hex.

/** Replaces a digest in the manifest (layer 0, the config, or in a wrapping index). */
function badDigest(
  id: string,
  title: string,
  digest: (canary: string) => string,
  where: "layer" | "config" | "index",
): Scenario {
  return fault({
    id,
    cls: "bad-digests",
    title,
    code: 8,
    message: /invalid .*digest|digest/,
    cache: true,
  }, () => {
    const canary = `imgpull-pwned-${crypto.randomUUID().slice(0, 8)}`;
    const image = buildImage();
    const value = digest(canary);
    const m = JSON.parse(new TextDecoder().decode(image.manifest.bytes));
    if (where === "layer") m.layers[0].digest = value;
    if (where === "config") m.config.digest = value;
    if (where === "index") {
      putManifest(
        image,
        "latest",
        manifestBlob({
          schemaVersion: 2,
          mediaType: MT.ociIndex,
          manifests: [{
            mediaType: MT.dockerManifest,
            digest: value,
            size: image.manifest.size,
            platform: { os: "linux", architecture: "amd64" },
          }],
        }, MT.ociIndex),
      );
    } else putManifest(image, "latest", manifestBlob(m, MT.dockerManifest));
    // Serve something under the bad name too, in case it is asked for.
    image.blobs.set(value, image.layers[0].bytes);
    return {
      image,
      check: async (run, _outcome, dirs) => {
        const problems: string[] = [];
        const leaked = [`/tmp/${canary}`, join(dirs.work, "x"), join(dirs.cache, "x")];
        for (const path of leaked) {
          if (await Deno.lstat(path).then(() => true, () => false)) {
            problems.push(`created ${path}`);
            await Deno.remove(path, { recursive: true }).catch(() => {});
          }
        }
        const strays = (await listFiles(dirs.work).catch(() => [])).filter((f) =>
          f.includes(canary) || /(^|\/)x$/.test(f)
        );
        if (strays.length > 0) problems.push(`stray files ${strays.join(", ")}`);
        const asked = run.blobRequests().filter((r) => !/[0-9a-f]{64}$/.test(r.path));
        if (asked.length > 0) problems.push(`requested ${asked.map((r) => r.path).join(", ")}`);
        return problems;
      },
    };
  });
}

const badDigests: Scenario[] = [
  badDigest(
    "digest-traversal-layer",
    "layer digest sha256:../../x",
    () => "sha256:../../x",
    "layer",
  ),
  badDigest(
    "digest-traversal-deep-config",
    "config digest sha256:../../../../../../../../../../tmp/<canary>",
    (canary) => `sha256:${"../".repeat(10)}tmp/${canary}`,
    "config",
  ),
  badDigest(
    "digest-traversal-index",
    "index entry digest sha256:../../x",
    () => "sha256:../../x",
    "index",
  ),
  badDigest(
    "digest-short",
    "layer digest with 63 hex digits",
    () => `sha256:${"a".repeat(63)}`,
    "layer",
  ),
  badDigest(
    "digest-uppercase",
    "layer digest in upper-case hex",
    () => `sha256:${"A".repeat(64)}`,
    "layer",
  ),
  badDigest("digest-md5", "layer digest md5:<32 hex>", () => `md5:${"a".repeat(32)}`, "layer"),
  badDigest(
    "digest-sha384",
    "config digest sha384 (unsupported algorithm)",
    () => `sha384:${"b".repeat(96)}`,
    "config",
  ),
  fault({
    id: "digest-header-traversal",
    cls: "bad-digests",
    title: "a Docker-Content-Digest header of sha256:../../x is ignored; the pull completes",
    code: 0,
    cache: true,
  }, () => ({
    handler: (image) => (req, ctx) => {
      if (!ctx.bytes) return undefined;
      const headers = {
        "docker-content-digest": "sha256:../../x",
        "content-type": pathOf(req).includes("/manifests/")
          ? image.manifest.mediaType
          : "application/octet-stream",
      };
      return ctx.range ? undefined : new Response(ctx.bytes.slice(), { headers });
    },
    check: async (_run, _outcome, dirs) => {
      const strays = (await listFiles(dirs.work).catch(() => [])).filter((f) => /(^|\/)x$/.test(f));
      return expect(strays.length === 0, `stray files ${strays.join(", ")}`);
    },
  })),
  fault({
    id: "reference-md5",
    cls: "bad-digests",
    title: "pull by @md5:… is a usage error, no request is made",
    code: 2,
    message: /digest/,
  }, () => ({
    ref: (img, reg) => `${reg.host}/${img.repository}@md5:${"a".repeat(32)}`,
    check: (run) =>
      expect(run.registry.requests.length === 0, `${run.registry.requests.length} requests`),
  })),
];

// ---------------------------------------------------------------------------------------------
// Huge bodies.

function hugeBody(
  id: string,
  title: string,
  code: number,
  target: Target,
  respond: (counter: { bytes: number }) => Response,
  options: { message?: RegExp; args?: string[] } = {},
): Scenario {
  return fault({ id, cls: "huge-bodies", title, code, message: options.message }, () => {
    const counter = { bytes: 0 };
    return {
      handler: (image) => (req) =>
        pathOf(req) === targetPath(image, target) ? respond(counter) : undefined,
      args: options.args,
      check: (_run, outcome) => [
        ...expect(
          counter.bytes < 32 * MiB,
          `the server produced ${(counter.bytes / MiB).toFixed(0)} MiB before imgpull stopped`,
        ),
        ...expect(outcome.elapsedMs < 15_000, `took ${Math.round(outcome.elapsedMs)} ms`),
      ],
    };
  });
}

const ERROR_PREFIX = new TextEncoder().encode('{"errors":[{"code":"NOT_FOUND","message":"');

const hugeBodies: Scenario[] = [
  hugeBody(
    "huge-404-manifest-endless",
    "404 on the manifest with an endless body",
    4,
    "manifest",
    (c) => new Response(endlessBody(ERROR_PREFIX, c), { status: 404 }),
    { message: /not found/ },
  ),
  hugeBody(
    "huge-404-layer-declared",
    "404 on a layer with a 50 MiB body (Content-Length)",
    4,
    "layer",
    (c) =>
      new Response(endlessBody(ERROR_PREFIX, c, 50 * MiB), {
        status: 404,
        headers: { "content-length": String(50 * MiB) },
      }),
    { message: /not found/ },
  ),
  hugeBody(
    "huge-500-layer-endless",
    "500 on a layer with an endless body, --retries 0",
    6,
    "layer",
    (c) => new Response(endlessBody(ERROR_PREFIX, c), { status: 500 }),
    { message: /500/, args: ["--retries", "0"] },
  ),
  hugeBody(
    "huge-manifest-declared",
    "a 5 MiB manifest (more than 4 MiB, Content-Length)",
    8,
    "manifest",
    (c) =>
      new Response(endlessBody(new TextEncoder().encode('{"schemaVersion":2,"x":"'), c, 5 * MiB), {
        headers: { "content-length": String(5 * MiB), "content-type": MT.dockerManifest },
      }),
    { message: /bytes|large/ },
  ),
  hugeBody(
    "huge-manifest-endless",
    "an endless manifest (chunked)",
    8,
    "manifest",
    (c) =>
      new Response(endlessBody(new TextEncoder().encode('{"schemaVersion":2,"x":"'), c), {
        headers: { "content-type": MT.dockerManifest },
      }),
    { message: /bytes|large/ },
  ),
];

/** Every scenario of this family, in class order. */
export const SCENARIOS: Scenario[] = [
  ...blobIntegrity,
  ...manifestIntegrity,
  ...invalidContent,
  ...badDigests,
  ...hugeBodies,
];
