/**
 * Shape builders of the conformance corpus: tiny images (busybox-static + `/marker`), indexes of
 * any nesting, attestations, schema1, artifacts, pushed to a real Distribution with
 * tests/helpers/push.ts.
 * @module
 */
import { pushBlob, pushManifest } from "../push.ts";
import { encodeLayer, type LayerEncoding, layerMediaType, sha256 } from "./compress.ts";
import type { TarInput } from "./tar.ts";

/** Media types the corpus writes. */
export const CT = {
  dockerManifest: "application/vnd.docker.distribution.manifest.v2+json",
  dockerList: "application/vnd.docker.distribution.manifest.list.v2+json",
  dockerConfig: "application/vnd.docker.container.image.v1+json",
  dockerForeign: "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
  ociManifest: "application/vnd.oci.image.manifest.v1+json",
  ociIndex: "application/vnd.oci.image.index.v1+json",
  ociConfig: "application/vnd.oci.image.config.v1+json",
  ociNondistributableGzip: "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
  ociEmpty: "application/vnd.oci.empty.v1+json",
  schema1Signed: "application/vnd.docker.distribution.manifest.v1+prettyjws",
  inToto: "application/vnd.in-toto+json",
} as const;

/** os/architecture/variant. */
export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

/** `os/arch[/variant]`. */
export function platformString(p: Platform): string {
  return [p.os, p.architecture, p.variant].filter(Boolean).join("/");
}

export const AMD64: Platform = { os: "linux", architecture: "amd64" };
export const ARM64: Platform = { os: "linux", architecture: "arm64", variant: "v8" };

/** Where builders push, and the shared bytes they use. */
export interface BuildContext {
  /** `http://127.0.0.1:PORT` of the shared registry. */
  registryUrl: string;
  /** `/bin/busybox` (static). */
  busybox: Uint8Array;
}

/** A descriptor of something pushed. */
export interface Pushed {
  mediaType: string;
  digest: string;
  size: number;
}

/** A pushed image manifest. */
export interface PushedImage extends Pushed {
  platform: Platform;
  configDigest: string;
}

const encoder = new TextEncoder();

function json(value: unknown): Uint8Array {
  return encoder.encode(JSON.stringify(value, null, 2));
}

/** `/bin` with busybox and the two applets the images use. */
export function busyboxEntries(busybox: Uint8Array): TarInput[] {
  return [
    { path: "bin", type: "dir", mode: 0o755 },
    { path: "bin/busybox", type: "file", mode: 0o755, content: busybox },
    { path: "bin/cat", type: "symlink", mode: 0o777, linkTarget: "busybox" },
    { path: "bin/sh", type: "symlink", mode: 0o777, linkTarget: "busybox" },
  ];
}

/** `/marker` holding `text` and a newline (what `docker run` of the image prints). */
export function markerEntries(text: string): TarInput[] {
  return [{ path: "marker", type: "file", mode: 0o644, content: encoder.encode(`${text}\n`) }];
}

/** One layer of an image to build. */
export interface LayerSpec {
  entries: TarInput[];
  encoding: LayerEncoding;
  /** Overrides the media type derived from encoding and flavour (foreign layers). */
  mediaType?: string;
  urls?: string[];
}

/** An image manifest to build. */
export interface ImageSpec {
  flavour: "oci" | "docker";
  platform: Platform;
  layers: LayerSpec[];
  /** Extra top-level config fields (e.g. a huge `config.Labels`). */
  labels?: Record<string, string>;
  /** Also tag the manifest. */
  tag?: string;
}

/** Builds and pushes an image manifest (by digest, and by `spec.tag` if given). */
export async function pushImage(
  ctx: BuildContext,
  repo: string,
  spec: ImageSpec,
): Promise<PushedImage> {
  const layers: Record<string, unknown>[] = [];
  const diffIds: string[] = [];
  for (const l of spec.layers) {
    const encoded = await encodeLayer(l.entries, l.encoding);
    const digest = await pushBlob(ctx.registryUrl, repo, encoded.bytes);
    diffIds.push(encoded.diffId);
    layers.push({
      mediaType: l.mediaType ?? layerMediaType(l.encoding, spec.flavour),
      size: encoded.bytes.byteLength,
      digest,
      ...(l.urls ? { urls: l.urls } : {}),
      ...(encoded.annotations ? { annotations: encoded.annotations } : {}),
    });
  }
  const config = json({
    architecture: spec.platform.architecture,
    os: spec.platform.os,
    ...(spec.platform.variant ? { variant: spec.platform.variant } : {}),
    created: "1970-01-01T00:00:00Z",
    config: {
      Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
      Cmd: ["/bin/cat", "/marker"],
      ...(spec.labels ? { Labels: spec.labels } : {}),
    },
    rootfs: { type: "layers", diff_ids: diffIds },
    history: diffIds.map((_, i) => ({
      created: "1970-01-01T00:00:00Z",
      created_by: `imgpull corpus layer ${i}`,
    })),
  });
  const configDigest = await pushBlob(ctx.registryUrl, repo, config);
  const docker = spec.flavour === "docker";
  const mediaType = docker ? CT.dockerManifest : CT.ociManifest;
  const bytes = json({
    schemaVersion: 2,
    mediaType,
    config: {
      mediaType: docker ? CT.dockerConfig : CT.ociConfig,
      size: config.byteLength,
      digest: configDigest,
    },
    layers,
  });
  const digest = await pushManifest(ctx.registryUrl, repo, sha256(bytes), bytes, mediaType);
  if (spec.tag) await pushManifest(ctx.registryUrl, repo, spec.tag, bytes, mediaType);
  return { mediaType, digest, size: bytes.byteLength, platform: spec.platform, configDigest };
}

/** The usual two-layer image: busybox, then `/marker`. */
export function simpleImage(
  ctx: BuildContext,
  repo: string,
  opts: {
    marker: string;
    platform?: Platform;
    flavour?: "oci" | "docker";
    encoding?: LayerEncoding;
    tag?: string;
  },
): Promise<PushedImage> {
  const encoding = opts.encoding ?? "gzip";
  return pushImage(ctx, repo, {
    flavour: opts.flavour ?? "oci",
    platform: opts.platform ?? AMD64,
    tag: opts.tag,
    layers: [
      { entries: busyboxEntries(ctx.busybox), encoding },
      { entries: markerEntries(opts.marker), encoding },
    ],
  });
}

/** An entry of an index to build. */
export interface IndexEntry {
  target: Pushed;
  /** `null`: no `platform` field at all. */
  platform: Platform | null;
  annotations?: Record<string, string>;
}

/** Builds and pushes an index (OCI) or manifest list (Docker), tagged if `tag` is given. */
export async function pushIndex(
  ctx: BuildContext,
  repo: string,
  tag: string | undefined,
  flavour: "oci" | "docker",
  entries: IndexEntry[],
): Promise<Pushed> {
  const mediaType = flavour === "docker" ? CT.dockerList : CT.ociIndex;
  const bytes = json({
    schemaVersion: 2,
    mediaType,
    manifests: entries.map((e) => ({
      mediaType: e.target.mediaType,
      size: e.target.size,
      digest: e.target.digest,
      ...(e.platform
        ? {
          platform: {
            architecture: e.platform.architecture,
            os: e.platform.os,
            ...(e.platform.variant ? { variant: e.platform.variant } : {}),
          },
        }
        : {}),
      ...(e.annotations ? { annotations: e.annotations } : {}),
    })),
  });
  const digest = await pushManifest(ctx.registryUrl, repo, sha256(bytes), bytes, mediaType);
  if (tag) await pushManifest(ctx.registryUrl, repo, tag, bytes, mediaType);
  return { mediaType, digest, size: bytes.byteLength };
}

/** A buildx-style attestation manifest for `subject`, as an index entry (`unknown/unknown`). */
export async function pushAttestation(
  ctx: BuildContext,
  repo: string,
  subject: PushedImage,
): Promise<IndexEntry> {
  const statement = json({
    _type: "https://in-toto.io/Statement/v0.1",
    predicateType: "https://slsa.dev/provenance/v0.2",
    subject: [{ name: `pkg:docker/${repo}`, digest: { sha256: subject.digest.slice(7) } }],
    predicate: { builder: { id: "imgpull-corpus" } },
  });
  const layerDigest = await pushBlob(ctx.registryUrl, repo, statement);
  const config = json({
    architecture: "unknown",
    os: "unknown",
    config: {},
    rootfs: { type: "layers", diff_ids: [layerDigest] },
  });
  const configDigest = await pushBlob(ctx.registryUrl, repo, config);
  const bytes = json({
    schemaVersion: 2,
    mediaType: CT.ociManifest,
    config: { mediaType: CT.ociConfig, digest: configDigest, size: config.byteLength },
    layers: [{
      mediaType: CT.inToto,
      digest: layerDigest,
      size: statement.byteLength,
      annotations: { "in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2" },
    }],
  });
  const digest = await pushManifest(ctx.registryUrl, repo, sha256(bytes), bytes, CT.ociManifest);
  return {
    target: { mediaType: CT.ociManifest, digest, size: bytes.byteLength },
    platform: { os: "unknown", architecture: "unknown" },
    annotations: {
      "vnd.docker.reference.digest": subject.digest,
      "vnd.docker.reference.type": "attestation-manifest",
    },
  };
}

/**
 * Stores a real schema1 manifest under `tag`: Distribution converts the schema2 image tagged
 * `fromTag` when asked with a schema1-only `Accept` (and signs it with its own key); that signed
 * manifest is then pushed back under `tag` (the registry runs with schema1 pushes enabled), so
 * every client gets schema1 for `tag`, whatever it accepts.
 */
export async function pushSchema1(
  ctx: BuildContext,
  repo: string,
  fromTag: string,
  tag: string,
): Promise<Pushed> {
  const res = await fetch(`${ctx.registryUrl}/v2/${repo}/manifests/${fromTag}`, {
    headers: { Accept: CT.schema1Signed },
  });
  const bytes = new Uint8Array(await res.arrayBuffer());
  if (res.status !== 200 || res.headers.get("Content-Type") !== CT.schema1Signed) {
    throw new Error(`schema1 conversion of ${repo}:${fromTag} failed: HTTP ${res.status}`);
  }
  const put = await fetch(`${ctx.registryUrl}/v2/${repo}/manifests/${tag}`, {
    method: "PUT",
    headers: { "Content-Type": CT.schema1Signed },
    body: bytes as Uint8Array<ArrayBuffer>,
  });
  const text = await put.text();
  if (put.status !== 201) throw new Error(`schema1 push failed: HTTP ${put.status} ${text}`);
  return {
    mediaType: CT.schema1Signed,
    digest: put.headers.get("Docker-Content-Digest") ?? "",
    size: bytes.byteLength,
  };
}

/** A non-image artifact to push: a config blob and layer blobs with their own media types. */
export interface ArtifactSpec {
  artifactType?: string;
  config: { mediaType: string; bytes: Uint8Array };
  layers: { mediaType: string; bytes: Uint8Array; annotations?: Record<string, string> }[];
  annotations?: Record<string, string>;
  tag: string;
}

/** Pushes an OCI manifest describing an artifact (Helm chart, cosign signature, OCI 1.1). */
export async function pushArtifact(
  ctx: BuildContext,
  repo: string,
  spec: ArtifactSpec,
): Promise<Pushed> {
  const configDigest = await pushBlob(ctx.registryUrl, repo, spec.config.bytes);
  const layers = [];
  for (const l of spec.layers) {
    layers.push({
      mediaType: l.mediaType,
      digest: await pushBlob(ctx.registryUrl, repo, l.bytes),
      size: l.bytes.byteLength,
      ...(l.annotations ? { annotations: l.annotations } : {}),
    });
  }
  const bytes = json({
    schemaVersion: 2,
    mediaType: CT.ociManifest,
    ...(spec.artifactType ? { artifactType: spec.artifactType } : {}),
    config: {
      mediaType: spec.config.mediaType,
      digest: configDigest,
      size: spec.config.bytes.byteLength,
    },
    layers,
    ...(spec.annotations ? { annotations: spec.annotations } : {}),
  });
  const digest = await pushManifest(ctx.registryUrl, repo, spec.tag, bytes, CT.ociManifest);
  return { mediaType: CT.ociManifest, digest, size: bytes.byteLength };
}
