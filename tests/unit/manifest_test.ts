import assert from "node:assert/strict";
import { digestOf, isDigest, parseDigest } from "../../lib/digest.ts";
import { InvalidContentError } from "../../lib/errors.ts";
import { parseManifest, schema1Config, schema1PayloadBytes } from "../../lib/manifest.ts";
import { MediaType } from "../../lib/media_types.ts";

const enc = (v: unknown) => new TextEncoder().encode(JSON.stringify(v));
const D1 = `sha256:${"1".repeat(64)}`;
const D2 = `sha256:${"2".repeat(64)}`;

Deno.test("digest: only well-formed sha256/sha512 digests pass", () => {
  assert.ok(isDigest(D1));
  assert.ok(isDigest(`sha512:${"a".repeat(128)}`));
  for (
    const bad of [
      "sha256:../../x",
      `sha256:${"A".repeat(64)}`,
      `sha256:${"1".repeat(63)}`,
      `md5:${"1".repeat(32)}`,
      `sha256:${"1".repeat(64)}/..`,
      "",
      `sha256:${"1".repeat(64)}\n`,
    ]
  ) {
    assert.ok(!isDigest(bad), bad);
    assert.throws(() => parseDigest(bad), InvalidContentError);
  }
});

Deno.test("manifest: OCI index, image manifest and inference without mediaType", () => {
  const index = parseManifest(enc({
    schemaVersion: 2,
    mediaType: MediaType.ociIndex,
    manifests: [{
      mediaType: MediaType.ociManifest,
      digest: D1,
      size: 10,
      platform: { os: "linux", architecture: "arm64", variant: "v8" },
    }],
  }));
  assert.equal(index.kind, "index");
  if (index.kind === "index") assert.equal(index.manifests[0].platform?.variant, "v8");
  const image = parseManifest(enc({
    schemaVersion: 2,
    config: { mediaType: MediaType.ociConfig, digest: D1, size: 5 },
    layers: [{ mediaType: MediaType.ociLayerGzip, digest: D2, size: 7 }],
  }));
  assert.equal(image.kind, "image");
  assert.equal(image.mediaType, MediaType.ociManifest);
});

Deno.test("manifest: hostile input is rejected with InvalidContentError", () => {
  const cases: unknown[] = [
    "not json",
    [],
    { schemaVersion: 2, mediaType: "application/x-unknown" },
    { schemaVersion: 2, mediaType: MediaType.ociManifest, config: {}, layers: [] },
    {
      schemaVersion: 2,
      mediaType: MediaType.ociManifest,
      config: { digest: "sha256:../../etc/passwd", size: 1 },
      layers: [],
    },
    {
      schemaVersion: 2,
      mediaType: MediaType.ociManifest,
      config: { digest: D1, size: -1 },
      layers: [],
    },
    { schemaVersion: 2, mediaType: MediaType.ociIndex, manifests: "x" },
  ];
  for (const c of cases) {
    const bytes = typeof c === "string" ? new TextEncoder().encode(c) : enc(c);
    assert.throws(() => parseManifest(bytes), InvalidContentError, JSON.stringify(c));
  }
  assert.throws(() => parseManifest(new Uint8Array(5 * 1024 * 1024)), /larger than/);
});

Deno.test("manifest: schema1 is reversed, throwaway marked, config synthesised", () => {
  const v1 = (o: Record<string, unknown>) => ({ v1Compatibility: JSON.stringify(o) });
  const m = parseManifest(
    enc({
      schemaVersion: 1,
      name: "app",
      tag: "v1",
      architecture: "amd64",
      fsLayers: [{ blobSum: D2 }, { blobSum: D1 }],
      history: [
        v1({
          id: "top",
          parent: "base",
          throwaway: true,
          created: "2020-01-01T00:00:00Z",
          container_config: { Cmd: ["/bin/sh", "-c", "#(nop) CMD"] },
          config: { Cmd: ["/bin/cat", "/marker"] },
          os: "linux",
        }),
        v1({ id: "base", created: "2019-01-01T00:00:00Z" }),
      ],
    }),
    MediaType.dockerSchema1Signed,
  );
  assert.equal(m.kind, "schema1");
  if (m.kind !== "schema1") return;
  assert.deepEqual(m.layers.map((l) => l.blobSum), [D1, D2]);
  assert.deepEqual(m.layers.map((l) => l.throwaway), [false, true]);
  const config = JSON.parse(new TextDecoder().decode(schema1Config(m, [D1])));
  assert.equal(config.architecture, "amd64");
  assert.deepEqual(config.rootfs, { type: "layers", diff_ids: [D1] });
  assert.deepEqual(config.config, { Cmd: ["/bin/cat", "/marker"] });
  assert.equal(config.id, undefined);
  assert.equal(config.history.length, 2);
  assert.equal(config.history[1].empty_layer, true);
});

Deno.test("manifest: schema1 signed payload excludes the signatures", () => {
  const payload = '{\n   "schemaVersion": 1,\n   "name": "x"\n}';
  const formatLength = payload.length - 2;
  const tail = payload.slice(formatLength);
  const b64url = (s: string) => btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  const protectedHeader = b64url(JSON.stringify({ formatLength, formatTail: b64url(tail) }));
  const signed = payload.slice(0, formatLength) +
    `,\n   "signatures": [{"protected": "${protectedHeader}"}]\n}`;
  const bytes = new TextEncoder().encode(signed);
  assert.equal(new TextDecoder().decode(schema1PayloadBytes(bytes)), payload);
  assert.equal(digestOf(schema1PayloadBytes(bytes)), digestOf(new TextEncoder().encode(payload)));
});
