/**
 * Deterministic test images. Every byte is derived from constants and `/bin/busybox`, so digests
 * are the same on every run (given the same busybox, GNU tar and Deno). Layers are GNU tar
 * archives with normalised metadata, gzip-compressed with node:zlib (header mtime 0) or, for the
 * zstd image, zstd-compressed with node:zlib.
 *
 * Every image runs `/bin/cat /marker`, and `/marker` holds `imgpull-marker <platform> <name>`
 * plus a newline, so `docker run` of a loaded image proves which manifest was pulled.
 * @module
 */
import { join } from "node:path";
import { constants as zlibConstants, gzipSync, zstdCompressSync } from "node:zlib";
import { createHash } from "node:crypto";
import { runOk } from "./process.ts";
import { pushBlob, pushManifest, sha256Digest } from "./push.ts";

/** Media types used by the fixtures. */
export const MT = {
  dockerManifest: "application/vnd.docker.distribution.manifest.v2+json",
  dockerList: "application/vnd.docker.distribution.manifest.list.v2+json",
  dockerConfig: "application/vnd.docker.container.image.v1+json",
  dockerLayer: "application/vnd.docker.image.rootfs.diff.tar.gzip",
  dockerForeignLayer: "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
  ociManifest: "application/vnd.oci.image.manifest.v1+json",
  ociIndex: "application/vnd.oci.image.index.v1+json",
  ociConfig: "application/vnd.oci.image.config.v1+json",
  ociLayerGzip: "application/vnd.oci.image.layer.v1.tar+gzip",
  ociLayerZstd: "application/vnd.oci.image.layer.v1.tar+zstd",
  inToto: "application/vnd.in-toto+json",
} as const;

/** An OS/architecture/variant triple as it appears in configs and index entries. */
export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

/** A content descriptor of something pushed to the registry. */
export interface BlobInfo {
  mediaType: string;
  digest: string;
  size: number;
}

/** A layer descriptor plus the digest of its uncompressed tar (its `rootfs.diff_ids` entry). */
export interface LayerInfo extends BlobInfo {
  diffId: string;
  /** Only on the foreign layer. */
  urls?: string[];
}

/** One platform's image manifest. */
export interface PlatformManifest {
  platform: Platform;
  /** `os/arch[/variant]`, e.g. `linux/arm/v7`. */
  platformString: string;
  /** Manifest digest, media type and size. */
  digest: string;
  mediaType: string;
  size: number;
  config: BlobInfo;
  /** Bottom layer first, as in the manifest. */
  layers: LayerInfo[];
  markerLayer: LayerInfo;
  /** Content of `/marker` without its trailing newline (what `docker run` prints, trimmed). */
  marker: string;
}

/** The buildx-style attestation manifest of an index. */
export interface AttestationInfo extends BlobInfo {
  /** Digest of the platform manifest it attests (`vnd.docker.reference.digest`). */
  refersTo: string;
  /** The in-toto layer. */
  layer: BlobInfo;
}

/** A pushed image: a single manifest or an index/list with its children. */
export interface FixtureImage {
  /** Repository name, e.g. `fixtures/app`. */
  name: string;
  /** Tags the image is pushed under; the first is the main one. */
  tags: string[];
  /** `name:tags[0]`. */
  reference: string;
  /** Other repositories holding exactly the same manifests and tags. */
  aliases: string[];
  /** Digest, media type and size of what the tag points to (manifest or index). */
  digest: string;
  mediaType: string;
  size: number;
  /** True when the tag points to an index / manifest list. */
  isIndex: boolean;
  /** Platform manifests in index order (the attestation is not among them). */
  manifests: PlatformManifest[];
  attestation?: AttestationInfo;
  /** Marker by platform string (`linux/amd64` …). */
  markers: Record<string, string>;
}

/** Everything {@link pushFixtures} pushed, with the digests tests assert against. */
export interface Fixtures {
  registryUrl: string;
  /** The gzip busybox layer shared by every image (same bytes for every platform). */
  busyboxLayer: { digest: string; size: number; diffId: string };
  /** The gzip `/etc/imgpull-release` layer shared by every image. */
  releaseLayer: { digest: string; size: number; diffId: string };
  /** Content of `/etc/imgpull-release`. */
  releaseText: string;
  /** The extra layer of `fixtures/foreign:v1`. */
  foreignLayer: LayerInfo;
  images: {
    /** `fixtures/app:v1`: Docker schema2, linux/amd64. */
    app: FixtureImage;
    /** `fixtures/multi:latest`: OCI index, 7 platforms plus an attestation manifest. */
    multi: FixtureImage;
    /** `fixtures/multi-docker:latest`: Docker manifest list, the same 7 platforms. */
    multiDocker: FixtureImage;
    /** `fixtures/armv6only:latest`: OCI index with linux/arm/v6 only. */
    armv6only: FixtureImage;
    /** `fixtures/arm64-single:v1`: one Docker schema2 manifest for linux/arm64/v8. */
    arm64Single: FixtureImage;
    /** `library/nginx:latest` and `:1.27` (also pushed as `nginx`): OCI index amd64 + arm64/v8. */
    nginx: FixtureImage;
    /** `fixtures/zstd:v1`: OCI manifest, linux/amd64, zstd marker layer. */
    zstd: FixtureImage;
    /** `fixtures/foreign:v1`: Docker schema2 with a foreign layer whose blob is also pushed. */
    foreign: FixtureImage;
  };
  /** Every blob and manifest pushed, by digest. */
  blobs: Map<string, Uint8Array>;
}

/** The seven platforms of the multi-platform fixtures, in index order. */
export const MULTI_PLATFORMS: readonly Platform[] = [
  { os: "linux", architecture: "amd64" },
  { os: "linux", architecture: "arm64", variant: "v8" },
  { os: "linux", architecture: "arm", variant: "v7" },
  { os: "linux", architecture: "arm", variant: "v6" },
  { os: "linux", architecture: "386" },
  { os: "linux", architecture: "ppc64le" },
  { os: "linux", architecture: "s390x" },
];

/** URL put in the foreign layer's `urls`: port 9 (discard) so nothing ever answers there. */
export const FOREIGN_LAYER_URL = "http://127.0.0.1:9/never";

const RELEASE_TEXT = "imgpull test fixtures 1\n";
const EPOCH = "1970-01-01T00:00:00Z";
const ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"];
const CMD = ["/bin/cat", "/marker"];

/** `os/arch[/variant]`. */
export function platformString(p: Platform): string {
  return [p.os, p.architecture, p.variant].filter(Boolean).join("/");
}

/** The text of `/marker` (without trailing newline) for an image name and platform. */
export function markerText(platform: Platform | string, imageName: string): string {
  const p = typeof platform === "string" ? platform : platformString(platform);
  return `imgpull-marker ${p} ${imageName}`;
}

const encoder = new TextEncoder();

function json(value: unknown): Uint8Array {
  return encoder.encode(JSON.stringify(value, null, 2));
}

function sha256Hex(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/** Builds a GNU tar of `entries` (top-level names inside `dir`) with normalised metadata. */
async function makeTar(dir: string, entries: string[]): Promise<Uint8Array> {
  const out = `${dir}.tar`;
  await runOk("tar", [
    "--create",
    "--file",
    out,
    "--format=gnu",
    "--sort=name",
    "--mtime=@0",
    "--owner=0",
    "--group=0",
    "--numeric-owner",
    // Modes from the staging dir depend on the umask: pin them.
    "--mode=u=rwX,go=rX",
    "--no-acls",
    "--no-xattrs",
    "--no-selinux",
    "-C",
    dir,
    ...entries,
  ]);
  const bytes = await Deno.readFile(out);
  await Deno.remove(out);
  return bytes;
}

interface BuiltLayer {
  bytes: Uint8Array;
  info: LayerInfo;
}

/** Compressed bytes by source tar: the shared layers are compressed once, not per image. */
const gzipCache = new WeakMap<Uint8Array, Uint8Array>();

function gzipLayer(tar: Uint8Array, mediaType: string): BuiltLayer {
  let bytes = gzipCache.get(tar);
  if (!bytes) {
    // node:zlib writes a gzip header with mtime 0 and no file name: stable bytes.
    bytes = new Uint8Array(gzipSync(tar, { level: 9 }));
    gzipCache.set(tar, bytes);
  }
  return {
    bytes,
    info: {
      mediaType,
      digest: sha256Digest(bytes),
      size: bytes.byteLength,
      diffId: `sha256:${sha256Hex(tar)}`,
    },
  };
}

function zstdLayer(tar: Uint8Array): BuiltLayer {
  const bytes = new Uint8Array(
    zstdCompressSync(tar, { params: { [zlibConstants.ZSTD_c_compressionLevel]: 3 } }),
  );
  return {
    bytes,
    info: {
      mediaType: MT.ociLayerZstd,
      digest: sha256Digest(bytes),
      size: bytes.byteLength,
      diffId: `sha256:${sha256Hex(tar)}`,
    },
  };
}

/** Raw layer tars shared by all images. */
interface BaseTars {
  busybox: Uint8Array;
  release: Uint8Array;
  foreign: Uint8Array;
}

async function buildBaseTars(workDir: string): Promise<BaseTars> {
  const bb = join(workDir, "src-busybox");
  await Deno.mkdir(join(bb, "bin"), { recursive: true });
  await Deno.copyFile("/bin/busybox", join(bb, "bin", "busybox"));
  await Deno.chmod(join(bb, "bin", "busybox"), 0o755);
  for (const link of ["sh", "cat"]) {
    await Deno.symlink("busybox", join(bb, "bin", link));
  }

  const rel = join(workDir, "src-release");
  await Deno.mkdir(join(rel, "etc"), { recursive: true });
  await Deno.writeTextFile(join(rel, "etc", "imgpull-release"), RELEASE_TEXT);

  const foreign = join(workDir, "src-foreign");
  await Deno.mkdir(foreign, { recursive: true });
  await Deno.writeTextFile(join(foreign, "foreign-layer.txt"), "a foreign layer\n");

  return {
    busybox: await makeTar(bb, ["bin"]),
    release: await makeTar(rel, ["etc"]),
    foreign: await makeTar(foreign, ["foreign-layer.txt"]),
  };
}

/** Collects blobs and manifests to push, in push order per repository. */
export class PushPlan {
  readonly blobs = new Map<string, Uint8Array>();
  /** repo → blob digests to push. */
  readonly repoBlobs = new Map<string, Set<string>>();
  /** Manifest PUTs in order. */
  readonly manifests: { repo: string; reference: string; bytes: Uint8Array; mediaType: string }[] =
    [];

  blob(repo: string, bytes: Uint8Array): string {
    const digest = sha256Digest(bytes);
    this.blobs.set(digest, bytes);
    let set = this.repoBlobs.get(repo);
    if (!set) this.repoBlobs.set(repo, set = new Set());
    set.add(digest);
    return digest;
  }

  manifest(repo: string, reference: string, bytes: Uint8Array, mediaType: string): string {
    const digest = sha256Digest(bytes);
    this.blobs.set(digest, bytes);
    this.manifests.push({ repo, reference, bytes, mediaType });
    return digest;
  }
}

type Flavour = "docker" | "oci";

interface ImageSpec {
  name: string;
  flavour: Flavour;
  platform: Platform;
  zstdMarker?: boolean;
  foreign?: boolean;
}

/** Context shared while building one fixture set. */
interface Builder {
  workDir: string;
  plan: PushPlan;
  busybox: Uint8Array;
  release: Uint8Array;
  foreign: Uint8Array;
  counter: number;
}

/** Builds and plans one platform manifest, pushed by digest into every repo of `repos`. */
async function buildPlatformManifest(
  b: Builder,
  repos: string[],
  spec: ImageSpec,
): Promise<{ info: PlatformManifest; bytes: Uint8Array }> {
  const docker = spec.flavour === "docker";
  const layerType = docker ? MT.dockerLayer : MT.ociLayerGzip;
  const marker = markerText(spec.platform, spec.name);

  const markerDir = join(b.workDir, `src-marker-${b.counter++}`);
  await Deno.mkdir(markerDir, { recursive: true });
  await Deno.writeTextFile(join(markerDir, "marker"), `${marker}\n`);
  const markerTar = await makeTar(markerDir, ["marker"]);

  const busybox = gzipLayer(b.busybox, layerType);
  const markerLayer = spec.zstdMarker ? zstdLayer(markerTar) : gzipLayer(markerTar, layerType);
  const release = gzipLayer(b.release, layerType);
  const built: BuiltLayer[] = [busybox, markerLayer, release];
  const history: Record<string, unknown>[] = [
    { created: EPOCH, created_by: "COPY busybox /bin/ # imgpull fixture" },
    { created: EPOCH, created_by: "COPY marker /marker # imgpull fixture" },
    { created: EPOCH, created_by: "COPY release /etc/imgpull-release # imgpull fixture" },
  ];
  if (spec.foreign) {
    const foreign = gzipLayer(b.foreign, MT.dockerForeignLayer);
    foreign.info.urls = [FOREIGN_LAYER_URL];
    built.push(foreign);
    history.push({ created: EPOCH, created_by: "ADD foreign-layer.txt / # imgpull fixture" });
  }
  // An empty-layer entry like Dockerfile's CMD: schema1 conversion turns it into a throwaway
  // fsLayer, which exercises that code path in pullers.
  history.push({ created: EPOCH, created_by: `CMD ${JSON.stringify(CMD)}`, empty_layer: true });

  const config = json({
    architecture: spec.platform.architecture,
    os: spec.platform.os,
    ...(spec.platform.variant ? { variant: spec.platform.variant } : {}),
    created: EPOCH,
    config: { Env: ENV, Cmd: CMD, WorkingDir: "/" },
    rootfs: { type: "layers", diff_ids: built.map((l) => l.info.diffId) },
    history,
  });

  const configInfo: BlobInfo = {
    mediaType: docker ? MT.dockerConfig : MT.ociConfig,
    digest: sha256Digest(config),
    size: config.byteLength,
  };
  for (const repo of repos) {
    b.plan.blob(repo, config);
    for (const layer of built) b.plan.blob(repo, layer.bytes);
  }

  const descriptor = (l: LayerInfo) => ({
    mediaType: l.mediaType,
    size: l.size,
    digest: l.digest,
    ...(l.urls ? { urls: l.urls } : {}),
  });
  const manifestType = docker ? MT.dockerManifest : MT.ociManifest;
  const bytes = json({
    schemaVersion: 2,
    mediaType: manifestType,
    config: { mediaType: configInfo.mediaType, size: configInfo.size, digest: configInfo.digest },
    layers: built.map((l) => descriptor(l.info)),
  });
  return {
    bytes,
    info: {
      platform: spec.platform,
      platformString: platformString(spec.platform),
      digest: sha256Digest(bytes),
      mediaType: manifestType,
      size: bytes.byteLength,
      config: configInfo,
      layers: built.map((l) => l.info),
      markerLayer: markerLayer.info,
      marker,
    },
  };
}

function markersOf(manifests: PlatformManifest[]): Record<string, string> {
  return Object.fromEntries(manifests.map((m) => [m.platformString, m.marker]));
}

/** A single-manifest image: the tag points straight at the platform manifest. */
async function singleImage(
  b: Builder,
  name: string,
  tags: string[],
  spec: Omit<ImageSpec, "name">,
): Promise<FixtureImage> {
  const { info, bytes } = await buildPlatformManifest(b, [name], { ...spec, name });
  for (const tag of tags) b.plan.manifest(name, tag, bytes, info.mediaType);
  return {
    name,
    tags,
    reference: `${name}:${tags[0]}`,
    aliases: [],
    digest: info.digest,
    mediaType: info.mediaType,
    size: info.size,
    isIndex: false,
    manifests: [info],
    markers: markersOf([info]),
  };
}

/** An index (OCI) or manifest list (Docker) over `platforms`, optionally with an attestation. */
async function indexImage(
  b: Builder,
  name: string,
  tags: string[],
  flavour: Flavour,
  platforms: readonly Platform[],
  opts: { attestation?: boolean; aliases?: string[] } = {},
): Promise<FixtureImage> {
  const repos = [name, ...(opts.aliases ?? [])];
  const manifests: PlatformManifest[] = [];
  const children: { bytes: Uint8Array; info: PlatformManifest }[] = [];
  for (const platform of platforms) {
    const child = await buildPlatformManifest(b, repos, { name, flavour, platform });
    children.push(child);
    manifests.push(child.info);
  }
  // Children must exist before the index that references them.
  for (const repo of repos) {
    for (const c of children) b.plan.manifest(repo, c.info.digest, c.bytes, c.info.mediaType);
  }

  const entries: Record<string, unknown>[] = manifests.map((m) => ({
    mediaType: m.mediaType,
    size: m.size,
    digest: m.digest,
    platform: {
      architecture: m.platform.architecture,
      os: m.platform.os,
      ...(m.platform.variant ? { variant: m.platform.variant } : {}),
    },
  }));

  let attestation: AttestationInfo | undefined;
  if (opts.attestation) {
    attestation = planAttestation(b, repos, name, tags[0], manifests[0]);
    entries.push({
      mediaType: attestation.mediaType,
      size: attestation.size,
      digest: attestation.digest,
      annotations: {
        "vnd.docker.reference.digest": attestation.refersTo,
        "vnd.docker.reference.type": "attestation-manifest",
      },
      platform: { architecture: "unknown", os: "unknown" },
    });
  }

  const mediaType = flavour === "docker" ? MT.dockerList : MT.ociIndex;
  const bytes = json({ schemaVersion: 2, mediaType, manifests: entries });
  let digest = "";
  for (const repo of repos) {
    for (const tag of tags) digest = b.plan.manifest(repo, tag, bytes, mediaType);
  }
  return {
    name,
    tags,
    reference: `${name}:${tags[0]}`,
    aliases: opts.aliases ?? [],
    digest,
    mediaType,
    size: bytes.byteLength,
    isIndex: true,
    manifests,
    attestation,
    markers: markersOf(manifests),
  };
}

/** A buildx-style provenance attestation manifest for `subject`, planned for every repo. */
function planAttestation(
  b: Builder,
  repos: string[],
  name: string,
  tag: string,
  subject: PlatformManifest,
): AttestationInfo {
  const statement = json({
    _type: "https://in-toto.io/Statement/v0.1",
    predicateType: "https://slsa.dev/provenance/v0.2",
    subject: [{
      name: `pkg:docker/${name}@${tag}?platform=${encodeURIComponent(subject.platformString)}`,
      digest: { sha256: subject.digest.slice("sha256:".length) },
    }],
    predicate: { builder: { id: "https://github.com/imgpull/imgpull/tests/helpers/fixtures.ts" } },
  });
  const layer: BlobInfo = {
    mediaType: MT.inToto,
    digest: sha256Digest(statement),
    size: statement.byteLength,
  };
  const config = json({
    architecture: "unknown",
    os: "unknown",
    config: {},
    rootfs: { type: "layers", diff_ids: [layer.digest] },
  });
  for (const repo of repos) {
    b.plan.blob(repo, config);
    b.plan.blob(repo, statement);
  }
  const bytes = json({
    schemaVersion: 2,
    mediaType: MT.ociManifest,
    config: { mediaType: MT.ociConfig, digest: sha256Digest(config), size: config.byteLength },
    layers: [{
      ...layer,
      annotations: { "in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2" },
    }],
  });
  let digest = "";
  for (const repo of repos) {
    digest = b.plan.manifest(repo, sha256Digest(bytes), bytes, MT.ociManifest);
  }
  return {
    mediaType: MT.ociManifest,
    digest,
    size: bytes.byteLength,
    refersTo: subject.digest,
    layer,
  };
}

/** The planned content of the fixtures, before pushing. */
export interface FixturePlan {
  fixtures: Omit<Fixtures, "registryUrl">;
  plan: PushPlan;
}

/**
 * Builds every fixture image in memory. Layer trees are staged in a temporary directory under
 * `workDir` (created if missing) and removed afterwards. The same bytes on every run.
 */
export async function buildFixtures(workDir: string): Promise<FixturePlan> {
  await Deno.mkdir(workDir, { recursive: true });
  // A fresh staging dir, so a reused workDir never holds stale files (or existing symlinks).
  const stage = await Deno.makeTempDir({ dir: workDir, prefix: "fixture-src-" });
  try {
    return await buildInto(stage);
  } finally {
    await Deno.remove(stage, { recursive: true });
  }
}

async function buildInto(workDir: string): Promise<FixturePlan> {
  const base = await buildBaseTars(workDir);
  const plan = new PushPlan();
  const b: Builder = { workDir, plan, ...base, counter: 0 };
  const amd64: Platform = { os: "linux", architecture: "amd64" };
  const arm64: Platform = { os: "linux", architecture: "arm64", variant: "v8" };

  const images = {
    app: await singleImage(b, "fixtures/app", ["v1"], { flavour: "docker", platform: amd64 }),
    multi: await indexImage(b, "fixtures/multi", ["latest"], "oci", MULTI_PLATFORMS, {
      attestation: true,
    }),
    multiDocker: await indexImage(
      b,
      "fixtures/multi-docker",
      ["latest"],
      "docker",
      MULTI_PLATFORMS,
    ),
    armv6only: await indexImage(b, "fixtures/armv6only", ["latest"], "oci", [
      { os: "linux", architecture: "arm", variant: "v6" },
    ]),
    arm64Single: await singleImage(b, "fixtures/arm64-single", ["v1"], {
      flavour: "docker",
      platform: arm64,
    }),
    nginx: await indexImage(b, "library/nginx", ["latest", "1.27"], "oci", [amd64, arm64], {
      aliases: ["nginx"],
    }),
    zstd: await singleImage(b, "fixtures/zstd", ["v1"], {
      flavour: "oci",
      platform: amd64,
      zstdMarker: true,
    }),
    foreign: await singleImage(b, "fixtures/foreign", ["v1"], {
      flavour: "docker",
      platform: amd64,
      foreign: true,
    }),
  };

  const busybox = images.app.manifests[0].layers[0];
  const release = images.app.manifests[0].layers[2];
  return {
    plan,
    fixtures: {
      busyboxLayer: { digest: busybox.digest, size: busybox.size, diffId: busybox.diffId },
      releaseLayer: { digest: release.digest, size: release.size, diffId: release.diffId },
      releaseText: RELEASE_TEXT,
      foreignLayer: images.foreign.manifests[0].layers[3],
      images,
      blobs: plan.blobs,
    },
  };
}

/**
 * Builds the fixtures (see {@link buildFixtures}) and pushes them anonymously to the plain-HTTP
 * registry at `registryUrl`. Blobs go first, then child manifests by digest, then tags.
 */
export async function pushFixtures(registryUrl: string, workDir: string): Promise<Fixtures> {
  const { plan, fixtures } = await buildFixtures(workDir);
  // Repositories are independent: push them concurrently, each in order.
  const repos = new Set([...plan.repoBlobs.keys(), ...plan.manifests.map((m) => m.repo)]);
  await Promise.all([...repos].map(async (repo) => {
    for (const digest of plan.repoBlobs.get(repo) ?? []) {
      await pushBlob(registryUrl, repo, plan.blobs.get(digest)!);
    }
    for (const m of plan.manifests.filter((m) => m.repo === repo)) {
      await pushManifest(registryUrl, repo, m.reference, m.bytes, m.mediaType);
    }
  }));
  return { registryUrl, ...fixtures };
}
