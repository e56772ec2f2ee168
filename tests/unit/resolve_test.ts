/**
 * Platform resolution over a fake registry client: nested indexes, entries without a platform,
 * artifacts, empty indexes and the host-default rule for single-platform images.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { InvalidContentError, PlatformMismatchError } from "../../lib/errors.ts";
import type { PullEvent } from "../../lib/events.ts";
import { artifactKind, MediaType } from "../../lib/media_types.ts";
import { parsePlatform } from "../../lib/platform.ts";
import { parseReference } from "../../lib/reference.ts";
import type { RegistryClient } from "../../lib/registry.ts";
import { listPlatforms, resolveImage } from "../../lib/resolve.ts";

const encoder = new TextEncoder();

function sha256(bytes: Uint8Array): string {
  return `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
}

interface Doc {
  bytes: Uint8Array<ArrayBuffer>;
  digest: string;
  size: number;
  mediaType: string;
}

function doc(value: unknown, mediaType: string): Doc {
  const bytes = encoder.encode(JSON.stringify(value));
  return { bytes, digest: sha256(bytes), size: bytes.byteLength, mediaType };
}

/** A registry in memory: manifests by tag or digest, blobs by digest. */
class FakeRegistry {
  readonly manifests = new Map<string, Doc>();
  readonly blobs = new Map<string, Uint8Array<ArrayBuffer>>();
  readonly requests: string[] = [];

  manifest(d: Doc, tag?: string): Doc {
    this.manifests.set(d.digest, d);
    if (tag) this.manifests.set(tag, d);
    return d;
  }

  image(arch: string, configType: string = MediaType.ociConfig): Doc {
    const config = doc({ os: "linux", architecture: arch, rootfs: { diff_ids: [] } }, configType);
    this.blobs.set(config.digest, config.bytes);
    return this.manifest(doc({
      schemaVersion: 2,
      mediaType: MediaType.ociManifest,
      config: { mediaType: configType, digest: config.digest, size: config.size },
      layers: [],
    }, MediaType.ociManifest));
  }

  get client(): RegistryClient {
    const fake = {
      getManifest: (reference: string) => {
        this.requests.push(`manifest ${reference}`);
        const d = this.manifests.get(reference);
        if (!d) throw new Error(`no manifest ${reference}`);
        return Promise.resolve({ bytes: d.bytes, contentType: d.mediaType, digestHeader: null });
      },
      retrying: <T>(_what: string, op: (signal: AbortSignal) => Promise<T>) =>
        op(new AbortController().signal),
      openBlob: (digest: string) => {
        this.requests.push(`blob ${digest}`);
        return Promise.resolve(new Response(this.blobs.get(digest)));
      },
    };
    return fake as unknown as RegistryClient;
  }
}

function entry(d: Doc, platform?: Record<string, string>) {
  return { mediaType: d.mediaType, digest: d.digest, size: d.size, platform };
}

function index(entries: unknown[]): Doc {
  return doc(
    { schemaVersion: 2, mediaType: MediaType.ociIndex, manifests: entries },
    MediaType.ociIndex,
  );
}

const ref = parseReference("registry.test/app:1");
const amd64 = { platform: parsePlatform("linux/amd64"), enforced: false };

Deno.test("resolve: an index inside an index (outer entry without platform) is walked", async () => {
  const r = new FakeRegistry();
  const arm = r.image("arm64");
  const x86 = r.image("amd64");
  const inner = r.manifest(index([
    entry(arm, { os: "linux", architecture: "arm64" }),
    entry(x86, { os: "linux", architecture: "amd64" }),
  ]));
  r.manifest(index([entry(inner)]), "1");
  const resolved = await resolveImage(r.client, ref, amd64);
  assert.equal(resolved.manifestDigest, x86.digest);
  assert.equal(resolved.platform, "linux/amd64");
  const listed = await listPlatforms(r.client, ref);
  assert.deepEqual(listed.map((p) => p.platform), ["linux/arm64", "linux/amd64"]);
});

Deno.test("resolve: entries without a platform are read from their config", async () => {
  const r = new FakeRegistry();
  const x86 = r.image("amd64");
  const chart = r.image("amd64", "application/vnd.cncf.helm.config.v1+json");
  r.manifest(index([entry(chart), entry(x86)]), "1");
  const listed = await listPlatforms(r.client, ref);
  assert.deepEqual(listed.map((p) => p.platform), ["linux/amd64"], "no 'unknown', no chart");
  const resolved = await resolveImage(r.client, ref, amd64);
  assert.equal(resolved.manifestDigest, x86.digest);
});

Deno.test("resolve: an empty index is invalid content, also for --list-platforms", async () => {
  const r = new FakeRegistry();
  r.manifest(index([]), "1");
  await assert.rejects(() => resolveImage(r.client, ref, amd64), InvalidContentError);
  await assert.rejects(() => listPlatforms(r.client, ref), /index is empty/);
});

Deno.test("resolve: an index refering to itself through a nested index is refused", async () => {
  const r = new FakeRegistry();
  const x86 = r.image("amd64");
  const leaf = index([entry(x86, { os: "linux", architecture: "amd64" })]);
  r.manifest(leaf);
  let chain = leaf;
  for (let i = 0; i < 6; i++) chain = r.manifest(index([entry(chain)]));
  r.manifest(chain, "1");
  await assert.rejects(() => resolveImage(r.client, ref, amd64), /nests deeper/);
});

Deno.test("resolve: the host default is a preference on a single-platform image", async () => {
  const r = new FakeRegistry();
  const arm = r.image("arm64");
  r.manifest(arm, "1");
  const events: PullEvent[] = [];
  const resolved = await resolveImage(r.client, ref, amd64, (e) => events.push(e));
  assert.equal(resolved.platform, "linux/arm64");
  assert.ok(events.some((e) => e.type === "warning" && /linux\/arm64/.test(e.message)));
  await assert.rejects(
    () => resolveImage(r.client, ref, { ...amd64, enforced: true }),
    PlatformMismatchError,
  );
});

Deno.test("resolve: artifacts are refused before their config is fetched", async () => {
  const r = new FakeRegistry();
  const chart = r.image("amd64", "application/vnd.cncf.helm.config.v1+json");
  r.manifest(chart, "1");
  await assert.rejects(
    () => resolveImage(r.client, ref, amd64),
    /app:1 is not a container image \(Helm chart\)/,
  );
  assert.ok(!r.requests.some((q) => q.startsWith("blob ")), "no blob fetched");
});

Deno.test("artifactKind: names what users know, leaves images alone", () => {
  const layer = (mediaType: string) => ({ mediaType });
  assert.equal(
    artifactKind({
      config: { mediaType: MediaType.ociConfig },
      layers: [layer(MediaType.ociLayerGzip)],
    }),
    undefined,
  );
  assert.equal(
    artifactKind({ config: { mediaType: MediaType.dockerConfig }, layers: [] }),
    undefined,
  );
  assert.equal(
    artifactKind({
      config: { mediaType: MediaType.ociConfig },
      layers: [layer("application/vnd.dev.cosign.simplesigning.v1+json")],
    }),
    "cosign signature",
  );
  assert.match(
    artifactKind({
      artifactType: "application/vnd.example.sbom",
      config: { mediaType: "application/vnd.oci.empty.v1+json" },
      layers: [layer("application/json")],
    })!,
    /OCI artifact, artifactType application\/vnd.example.sbom/,
  );
  assert.match(
    artifactKind({ config: { mediaType: "application/x-weird" }, layers: [] })!,
    /artifact with config application\/x-weird/,
  );
});
