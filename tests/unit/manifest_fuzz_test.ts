/**
 * Property tests of the manifest parser: for seeded random and mutated OCI indexes, image
 * manifests, Docker lists and manifests and schema1 documents (signed or not), under random
 * Content-Types, `parseManifest` either returns a manifest whose every digest and size is
 * valid, or throws `InvalidContentError` — never anything else, and never slowly. The same holds
 * for `schema1PayloadBytes` (the bytes a schema1 digest is computed over, run on every schema1
 * manifest pulled) and `schema1Config`.
 *
 * Failures print the seed and a reproducer; `IMGPULL_FUZZ_SEED=<n>` reruns one seed.
 */
import assert from "node:assert/strict";
import { isDigest } from "../../lib/digest.ts";
import { InvalidContentError } from "../../lib/errors.ts";
import {
  type Descriptor,
  type Manifest,
  MAX_MANIFEST_BYTES,
  parseManifest,
  schema1Config,
  schema1PayloadBytes,
} from "../../lib/manifest.ts";
import { MediaType } from "../../lib/media_types.ts";
import { prng } from "../helpers/random.ts";

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

const encoder = new TextEncoder();
const D = (c: string) => `sha256:${c.repeat(64)}`;
const b64url = (s: string) => btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");

function signedSchema1(): string {
  const payload = JSON.stringify(
    {
      schemaVersion: 1,
      name: "library/busybox",
      tag: "latest",
      architecture: "amd64",
      fsLayers: [{ blobSum: D("a") }, { blobSum: D("b") }],
      history: [
        { v1Compatibility: JSON.stringify({ id: "2", parent: "1", throwaway: true }) },
        {
          v1Compatibility: JSON.stringify({
            id: "1",
            os: "linux",
            created: "2020-01-01T00:00:00Z",
            container_config: { Cmd: ["/bin/sh", "-c", "echo"] },
          }),
        },
      ],
    },
    null,
    3,
  );
  const formatLength = payload.length - 2;
  const tail = payload.slice(formatLength);
  const protectedHeader = b64url(
    JSON.stringify({ formatLength, formatTail: b64url(tail), time: "2020-01-01T00:00:00Z" }),
  );
  return payload.slice(0, formatLength) +
    `,\n   "signatures": [{"header": {"alg": "ES256"}, "signature": "c2ln", ` +
    `"protected": "${protectedHeader}"}]\n}`;
}

const descriptor = (mediaType: string, c: string, size: number, extra: Json = {}) => ({
  mediaType,
  digest: D(c),
  size,
  ...(extra as Record<string, Json>),
});

/** Valid documents of every kind the parser reads. */
const SEEDS: { doc: string; contentType: string | null }[] = [
  {
    contentType: MediaType.ociIndex,
    doc: JSON.stringify({
      schemaVersion: 2,
      mediaType: MediaType.ociIndex,
      manifests: [
        descriptor(MediaType.ociManifest, "1", 500, {
          platform: { os: "linux", architecture: "arm64", variant: "v8" },
        }),
        descriptor(MediaType.ociManifest, "2", 501, {
          platform: { os: "unknown", architecture: "unknown" },
          annotations: { "vnd.docker.reference.type": "attestation-manifest" },
        }),
      ],
    }),
  },
  {
    contentType: MediaType.dockerManifestList,
    doc: JSON.stringify({
      schemaVersion: 2,
      mediaType: MediaType.dockerManifestList,
      manifests: [
        descriptor(MediaType.dockerManifest, "3", 428, {
          platform: { os: "windows", architecture: "amd64", "os.version": "10.0.17763.1" },
        }),
      ],
    }),
  },
  {
    contentType: MediaType.ociManifest,
    doc: JSON.stringify({
      schemaVersion: 2,
      mediaType: MediaType.ociManifest,
      config: descriptor(MediaType.ociConfig, "4", 1000),
      layers: [
        descriptor(MediaType.ociLayerGzip, "5", 12345),
        descriptor(MediaType.ociLayerZstd, "6", 0, { urls: ["https://example.com/l"] }),
      ],
      annotations: { "org.opencontainers.image.created": "2020" },
    }),
  },
  {
    contentType: MediaType.dockerManifest,
    doc: JSON.stringify({
      schemaVersion: 2,
      mediaType: MediaType.dockerManifest,
      config: descriptor(MediaType.dockerConfig, "7", 1500),
      layers: [descriptor(MediaType.dockerLayerGzip, "8", 99)],
    }),
  },
  {
    // An old OCI manifest without mediaType, labelled generically.
    contentType: "application/json",
    doc: JSON.stringify({
      schemaVersion: 2,
      config: descriptor(MediaType.ociConfig, "9", 10),
      layers: [],
    }),
  },
  { contentType: MediaType.dockerSchema1Signed, doc: signedSchema1() },
  {
    contentType: MediaType.dockerSchema1,
    doc: JSON.stringify({
      schemaVersion: 1,
      name: "x",
      tag: "y",
      architecture: "arm",
      fsLayers: [{ blobSum: D("c") }],
      history: [{ v1Compatibility: "{}" }],
    }),
  },
];

const CONTENT_TYPES: (string | null | undefined)[] = [
  null,
  undefined,
  "",
  "application/json",
  "text/plain; charset=utf-8",
  ...Object.values(MediaType),
  `${MediaType.ociIndex}; charset=utf-8`,
  MediaType.dockerManifest.toUpperCase(),
  "application/vnd.example.unknown+json",
  ";;;",
];

const STRINGS = [
  "",
  D("0"),
  `sha512:${"f".repeat(128)}`,
  "sha256:../../x",
  `sha256:${"A".repeat(64)}`,
  `sha256:${"1".repeat(63)}`,
  `md5:${"1".repeat(32)}`,
  `sha384:${"1".repeat(96)}`,
  `${D("1")}\n`,
  "__proto__",
  "constructor",
  "linux",
  "amd64",
  "\u0000",
  "\ud800",
  "é😀",
  "x".repeat(5000),
  ...Object.values(MediaType),
];

function randomJson(rand: () => number, depth: number): Json {
  const r = rand();
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)];
  if (depth <= 0 || r < 0.15) return null;
  if (r < 0.25) return rand() < 0.5;
  if (r < 0.45) {
    return pick([
      0,
      -1,
      1,
      0.5,
      2 ** 53,
      2 ** 53 + 2,
      -(2 ** 31),
      1e308,
      -0,
      Number.MAX_SAFE_INTEGER,
      Math.floor(rand() * 1e6),
    ]);
  }
  if (r < 0.7) return pick(STRINGS);
  if (r < 0.85) {
    return Array.from({ length: Math.floor(rand() * 4) }, () => randomJson(rand, depth - 1));
  }
  const obj: Record<string, Json> = {};
  const keys = [
    "mediaType",
    "digest",
    "size",
    "platform",
    "os",
    "architecture",
    "variant",
    "urls",
    "annotations",
    "schemaVersion",
    "manifests",
    "config",
    "layers",
    "fsLayers",
    "history",
    "blobSum",
    "v1Compatibility",
    "signatures",
    "protected",
    "__proto__",
    "os.version",
  ];
  for (let i = Math.floor(rand() * 5); i > 0; i--) {
    // defineProperty: "__proto__" becomes an own key, as JSON.parse makes it.
    Object.defineProperty(obj, pick(keys), {
      value: randomJson(rand, depth - 1),
      enumerable: true,
      writable: true,
      configurable: true,
    });
  }
  return obj;
}

/** Every (container, key) pair in a JSON tree, for picking a spot to mutate. */
function spots(value: Json, out: [Record<string, Json> | Json[], string | number][] = []) {
  if (Array.isArray(value)) {
    value.forEach((v, i) => {
      out.push([value, i]);
      spots(v, out);
    });
  } else if (value && typeof value === "object") {
    for (const [k, v] of Object.entries(value)) {
      out.push([value, k]);
      spots(v, out);
    }
  }
  return out;
}

function mutateJson(doc: Json, rand: () => number): Json {
  const all = spots(doc);
  if (all.length === 0) return randomJson(rand, 3);
  const [container, key] = all[Math.floor(rand() * all.length)];
  const op = rand();
  const get = () => (container as Record<string | number, Json>)[key];
  const set = (v: Json) => ((container as Record<string | number, Json>)[key] = v);
  if (op < 0.25) set(randomJson(rand, 3));
  else if (op < 0.4) {
    if (Array.isArray(container)) container.splice(key as number, 1);
    else delete container[key as string];
  } else if (op < 0.5) set([get()]);
  else if (op < 0.6) set({ value: get() });
  else if (op < 0.7) {
    const v = get();
    if (Array.isArray(v) && v.length > 0) {
      // Many copies: stresses the entry limits.
      set(Array.from({ length: rand() < 0.5 ? 1001 : 10_001 }, () => v[0]));
    } else set(randomJson(rand, 2));
  } else if (op < 0.8) {
    const v = get();
    if (typeof v === "string") set(v.slice(0, Math.floor(rand() * v.length)));
    else if (typeof v === "number") set(-v - 1);
    else set(String(v));
  } else if (op < 0.9) {
    // Decode a JWS protected header, change a field, encode it again.
    const v = get();
    if (typeof v === "string" && key === "protected") {
      try {
        const header = JSON.parse(atob(v.replace(/-/g, "+").replace(/_/g, "/")));
        const field = rand() < 0.5 ? "formatLength" : "formatTail";
        header[field] = randomJson(rand, 2);
        if (rand() < 0.3) header.formatTail = "!!!not base64!!!";
        set(b64url(JSON.stringify(header)));
      } catch {
        set(randomJson(rand, 2));
      }
    } else set(randomJson(rand, 2));
  } else {
    const names = ["mediaType", "schemaVersion", "manifests", "config", "layers", "fsLayers"];
    if (!Array.isArray(container)) {
      container[names[Math.floor(rand() * names.length)]] = randomJson(rand, 3);
    }
  }
  return doc;
}

function mutateBytes(bytes: Uint8Array, rand: () => number): Uint8Array {
  const out = [...bytes];
  const edits = 1 + Math.floor(rand() * 6);
  for (let e = 0; e < edits; e++) {
    const at = Math.floor(rand() * (out.length + 1));
    const op = rand();
    if (op < 0.25) out.splice(at, 1 + Math.floor(rand() * 8));
    else if (op < 0.5) out.splice(at, 0, Math.floor(rand() * 256));
    else if (op < 0.7 && out.length > 0) out[at % out.length] ^= 1 << Math.floor(rand() * 8);
    else if (op < 0.8) out.splice(at, 0, 0xc3, 0x28); // invalid UTF-8
    else if (op < 0.9) out.length = at; // truncate
    else out.splice(at, 0, ...encoder.encode(`"${D("e")}"`));
  }
  return new Uint8Array(out);
}

/** One failure, with what reproduces it. */
interface Failure {
  kind: string;
  seed: number;
  input: string;
}

function describeInput(bytes: Uint8Array, contentType: string | null | undefined): string {
  const text = new TextDecoder().decode(bytes.subarray(0, 600));
  return `${JSON.stringify(contentType)} ${JSON.stringify(text)}${
    bytes.byteLength > 600 ? "…" : ""
  }`;
}

function checkDescriptor(d: Descriptor, where: string): string | undefined {
  if (!isDigest(d.digest)) return `${where}: invalid digest ${JSON.stringify(d.digest)}`;
  if (!Number.isSafeInteger(d.size) || d.size < 0) return `${where}: invalid size ${d.size}`;
  if (typeof d.mediaType !== "string") return `${where}: mediaType is not a string`;
  if (d.urls && !d.urls.every((u) => typeof u === "string")) return `${where}: bad urls`;
  return undefined;
}

/** The invariants of a parsed manifest; a message when one does not hold. */
function invariant(m: Manifest): string | undefined {
  if (m.kind === "index") {
    if (m.manifests.length > 10_000) return "index with more than 10000 entries";
    for (const [i, d] of m.manifests.entries()) {
      const bad = checkDescriptor(d, `manifests[${i}]`);
      if (bad) return bad;
      if (
        d.platform &&
        (typeof d.platform.os !== "string" || typeof d.platform.architecture !== "string")
      ) {
        return `manifests[${i}]: platform without os/architecture`;
      }
    }
    return undefined;
  }
  if (m.kind === "image") {
    if (m.layers.length > 1000) return "image with more than 1000 layers";
    return checkDescriptor(m.config, "config") ??
      m.layers.map((l, i) => checkDescriptor(l, `layers[${i}]`)).find((x) => x);
  }
  if (m.kind === "schema1") {
    if (m.layers.length === 0 || m.layers.length > 1000) return "schema1 layer count";
    for (const l of m.layers) {
      if (!isDigest(l.blobSum)) return `schema1 blobSum ${JSON.stringify(l.blobSum)}`;
      if (typeof l.v1 !== "object" || l.v1 === null) return "schema1 v1Compatibility";
    }
    return undefined;
  }
  return `unknown kind ${(m as { kind: unknown }).kind}`;
}

/** Runs parseManifest (and the schema1 follow-ups) on one input; returns a failure kind. */
function probe(
  bytes: Uint8Array,
  contentType: string | null | undefined,
  options: { schema1Payload?: boolean } = {},
): string | undefined {
  const start = performance.now();
  let manifest: Manifest | undefined;
  try {
    manifest = parseManifest(bytes, contentType);
  } catch (e) {
    if (!(e instanceof InvalidContentError)) {
      return `parseManifest threw ${(e as Error)?.constructor?.name}: ${(e as Error)?.message}`;
    }
  }
  const ms = performance.now() - start;
  if (ms > 1000) return `parseManifest took ${ms.toFixed(0)} ms`;
  if (!manifest) return undefined;
  const broken = invariant(manifest);
  if (broken) return `parseManifest returned an invalid manifest: ${broken}`;
  if (manifest.kind === "schema1") {
    try {
      const config = schema1Config(manifest, manifest.layers.map(() => D("d")));
      JSON.parse(new TextDecoder().decode(config));
    } catch (e) {
      return `schema1Config threw ${(e as Error)?.constructor?.name}: ${(e as Error)?.message}`;
    }
    if (options.schema1Payload) {
      try {
        schema1PayloadBytes(bytes);
      } catch (e) {
        if (!(e instanceof InvalidContentError)) {
          return `schema1PayloadBytes threw ${(e as Error)?.constructor?.name}: ${
            (e as Error)?.message
          }`;
        }
      }
    }
  }
  return undefined;
}

const ENV_SEED = (() => {
  try {
    const v = Deno.env.get("IMGPULL_FUZZ_SEED");
    return v === undefined ? undefined : Number(v);
  } catch {
    return undefined;
  }
})();
const SEED_LIST = ENV_SEED !== undefined ? [ENV_SEED] : [1, 2, 3, 0xbadd1e, 0x5eed];

/** Runs `iterations` generated cases per seed and fails with the distinct failures found. */
function fuzz(
  name: string,
  iterations: number,
  generate: (rand: () => number) => { bytes: Uint8Array; contentType: string | null | undefined },
  options: { schema1Payload?: boolean } = {},
): void {
  const failures = new Map<string, Failure>();
  const start = performance.now();
  for (const seed of SEED_LIST) {
    const rand = prng(seed);
    for (let i = 0; i < iterations; i++) {
      const { bytes, contentType } = generate(rand);
      const kind = probe(bytes, contentType, options);
      if (kind) {
        const key = kind.replace(/\d+/g, "N").slice(0, 120);
        if (!failures.has(key)) {
          failures.set(key, { kind, seed, input: describeInput(bytes, contentType) });
        }
      }
    }
  }
  const elapsed = performance.now() - start;
  const report = [...failures.values()].slice(0, 8).map((f) =>
    `- ${f.kind}\n  seed ${f.seed}: ${f.input}`
  ).join("\n");
  assert.equal(failures.size, 0, `${name}: ${failures.size} kind(s) of failure\n${report}`);
  assert.ok(elapsed < 20_000, `${name} took ${elapsed.toFixed(0)} ms`);
}

const pickFrom = <T>(rand: () => number, xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)];

Deno.test("manifest fuzz: JSON-level mutations of valid documents", () => {
  fuzz("json mutations", 1500, (rand) => {
    const seed = pickFrom(rand, SEEDS);
    let doc = JSON.parse(seed.doc) as Json;
    for (let n = 1 + Math.floor(rand() * 3); n > 0; n--) doc = mutateJson(doc, rand);
    return {
      bytes: encoder.encode(JSON.stringify(doc)),
      contentType: rand() < 0.6 ? seed.contentType : pickFrom(rand, CONTENT_TYPES),
    };
  });
});

Deno.test("manifest fuzz: byte-level mutations of valid documents", () => {
  fuzz("byte mutations", 1500, (rand) => {
    const seed = pickFrom(rand, SEEDS);
    return {
      bytes: mutateBytes(encoder.encode(seed.doc), rand),
      contentType: rand() < 0.6 ? seed.contentType : pickFrom(rand, CONTENT_TYPES),
    };
  });
});

Deno.test("manifest fuzz: random documents under random Content-Types", () => {
  fuzz("random documents", 1500, (rand) => {
    const kind = rand();
    const doc: Json = kind < 0.3
      ? { schemaVersion: 2, manifests: [randomJson(rand, 3), randomJson(rand, 3)] }
      : kind < 0.6
      ? { schemaVersion: 2, config: randomJson(rand, 3), layers: [randomJson(rand, 3)] }
      : kind < 0.8
      ? {
        schemaVersion: 1,
        fsLayers: [randomJson(rand, 2)],
        history: [{ v1Compatibility: JSON.stringify(randomJson(rand, 2)) }],
      }
      : randomJson(rand, 5);
    return {
      bytes: encoder.encode(JSON.stringify(doc)),
      contentType: pickFrom(rand, CONTENT_TYPES),
    };
  });
});

Deno.test("manifest fuzz: schema1 digest payload returns or throws InvalidContentError", () => {
  // schema1PayloadBytes runs on every schema1 manifest a registry sends (its digest).
  fuzz("schema1 payload", 1500, (rand) => {
    const seed = SEEDS.find((s) => s.contentType === MediaType.dockerSchema1Signed)!;
    let doc = JSON.parse(seed.doc) as Json;
    for (let n = 1 + Math.floor(rand() * 2); n > 0; n--) doc = mutateJson(doc, rand);
    return { bytes: encoder.encode(JSON.stringify(doc)), contentType: seed.contentType };
  }, { schema1Payload: true });
});

Deno.test("manifest fuzz: hostile sizes and shapes are rejected quickly", () => {
  const cases: [string, Uint8Array, string | null][] = [
    ["4 MiB + 1", new Uint8Array(MAX_MANIFEST_BYTES + 1).fill(0x20), MediaType.ociIndex],
    ["deeply nested arrays", encoder.encode("[".repeat(200_000) + "]".repeat(200_000)), null],
    [
      "deeply nested objects",
      encoder.encode('{"a":'.repeat(100_000) + "1" + "}".repeat(100_000)),
      null,
    ],
    ["unclosed nesting", encoder.encode("[".repeat(500_000)), null],
    [
      "10001 index entries",
      encoder.encode(JSON.stringify({
        schemaVersion: 2,
        mediaType: MediaType.ociIndex,
        manifests: Array.from({ length: 10_001 }, () => descriptor(MediaType.ociManifest, "1", 1)),
      })),
      null,
    ],
    [
      "1001 layers",
      encoder.encode(JSON.stringify({
        schemaVersion: 2,
        mediaType: MediaType.ociManifest,
        config: descriptor(MediaType.ociConfig, "1", 1),
        layers: Array.from({ length: 1001 }, () => descriptor(MediaType.ociLayerGzip, "2", 1)),
      })),
      null,
    ],
    [
      "schema1 with 100000 history entries",
      encoder.encode(JSON.stringify({
        schemaVersion: 1,
        fsLayers: Array.from({ length: 100_000 }, () => ({ blobSum: D("a") })),
        history: Array.from({ length: 100_000 }, () => ({ v1Compatibility: "{}" })),
      })),
      MediaType.dockerSchema1,
    ],
    [
      "a BOM before the JSON",
      new Uint8Array([0xef, 0xbb, 0xbf, ...encoder.encode(SEEDS[0].doc)]),
      null,
    ],
    ["UTF-16", new Uint8Array([0xff, 0xfe, 0x7b, 0x00, 0x7d, 0x00]), null],
    ["NUL bytes", new Uint8Array(1000), null],
  ];
  for (const [name, bytes, contentType] of cases) {
    const failure = probe(bytes, contentType, { schema1Payload: true });
    assert.equal(failure, undefined, `${name}: ${failure}`);
  }
});
