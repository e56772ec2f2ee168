/**
 * From a reference and a platform to one verified image manifest: fetch
 * the manifest, verify its digest whenever it is known, walk an index to
 * the best platform match (skipping attestations), and check the platform
 * of single-platform images against their config.
 *
 * @module
 */
import { digestOf, parseDigest } from "./digest.ts";
import {
  IntegrityError,
  InvalidContentError,
  PlatformMismatchError,
  PlatformNotFoundError,
} from "./errors.ts";
import type { PullEventSink } from "./events.ts";
import {
  type Descriptor,
  type ImageManifest,
  type IndexManifest,
  type Manifest,
  parseManifest,
  type Schema1Manifest,
  schema1PayloadBytes,
} from "./manifest.ts";
import {
  formatPlatform,
  isAttestationPlatform,
  normalizePlatform,
  type Platform,
  selectPlatform,
} from "./platform.ts";
import { artifactKind, isIndexType, MediaType } from "./media_types.ts";
import type { FetchedManifest, RegistryClient } from "./registry.ts";
import type { BlobStore } from "./store.ts";
import { readCapped } from "./transport.ts";
import type { Reference } from "./reference.ts";

/** Indexes may nest (an index of indexes); deeper than this is refused. */
const MAX_INDEX_DEPTH = 4;
/** Image configs are JSON documents; this is generous. */
export const MAX_CONFIG_BYTES = 16 * 1024 * 1024;

/** The image chosen for a platform. */
export type ResolvedImage =
  & {
    /** Platform of the chosen image, as the registry writes it. */
    platform: string;
    /** False when a compatible, not identical, platform was chosen. */
    exactPlatform: boolean;
    /** Digest of the chosen image manifest (schema1: of its payload). */
    manifestDigest: string;
    /** The manifest exactly as the registry sent it (verified by digest). */
    manifestBytes: Uint8Array;
    /** Its descriptor: from the index when chosen from one (with `platform`), else made here. */
    descriptor: Descriptor;
  }
  & (
    | {
      kind: "image";
      manifest: ImageManifest;
      /** The config blob exactly as the registry sent it (verified). */
      configBytes: Uint8Array<ArrayBuffer>;
      config: ImageConfig;
    }
    | { kind: "schema1"; manifest: Schema1Manifest }
  );

/** The fields of an image config we use. */
export interface ImageConfig {
  os: string;
  architecture: string;
  variant?: string;
  diffIds: string[];
}

/** One entry of an index, for `--list-platforms`. */
export interface PlatformEntry {
  platform: string;
  digest: string;
  mediaType: string;
}

/** A manifest or index, verified, with the bytes the registry sent. */
export interface FetchedDocument {
  manifest: Manifest;
  digest: string;
  bytes: Uint8Array;
}

/** The descriptor of a fetched document (as an index would list it). */
function descriptorOf(fetched: FetchedDocument, platform?: Platform): Descriptor {
  const d: Descriptor = {
    mediaType: fetched.manifest.mediaType,
    digest: fetched.digest,
    size: fetched.bytes.byteLength,
  };
  if (platform) d.platform = platform;
  return d;
}

/**
 * Parses a fetched manifest and checks it against the digest we asked for, or that an index
 * named. A schema1 digest covers the JWS payload, not the body: the manifest is parsed from
 * exactly those bytes, so that what is pulled is what was verified (a body whose signature
 * header points elsewhere cannot swap its own layers in).
 */
function verifiedManifest(
  fetched: FetchedManifest,
  expected: string | undefined,
  what: string,
): FetchedDocument {
  let manifest = parseManifest(fetched.bytes, fetched.contentType);
  let verifiedBytes: Uint8Array = fetched.bytes;
  if (manifest.kind === "schema1") {
    verifiedBytes = schema1PayloadBytes(fetched.bytes);
    if (verifiedBytes !== fetched.bytes) {
      manifest = parseManifest(verifiedBytes, fetched.contentType);
      if (manifest.kind !== "schema1") {
        throw new InvalidContentError(`${what}: the schema1 signature covers another document`);
      }
    }
  }
  // The digest names its algorithm (sha256, or sha512 for an index or pin that uses it).
  const algorithm = expected ? parseDigest(expected).algorithm : "sha256";
  const actual = digestOf(verifiedBytes, algorithm);
  if (expected && actual !== expected) {
    throw new IntegrityError(`${what}: expected digest ${expected}, content has ${actual}`);
  }
  return { manifest, digest: actual, bytes: fetched.bytes };
}

async function fetchManifest(
  client: RegistryClient,
  reference: string,
  expected?: Descriptor | string,
): Promise<FetchedDocument> {
  const what = `manifest ${reference}`;
  const fetched = await client.getManifest(reference);
  const expectedDigest = typeof expected === "string" ? expected : expected?.digest;
  if (typeof expected === "object" && fetched.bytes.byteLength !== expected.size) {
    throw new IntegrityError(
      `${what}: expected ${expected.size} bytes, received ${fetched.bytes.byteLength}`,
    );
  }
  return verifiedManifest(fetched, expectedDigest, what);
}

function isAttestation(entry: Descriptor): boolean {
  return isAttestationPlatform(entry.platform) ||
    entry.annotations?.["vnd.docker.reference.type"] === "attestation-manifest";
}

/** The platforms an index offers, attestations left out (one level; see {@link listPlatforms}). */
export function indexPlatforms(index: IndexManifest): PlatformEntry[] {
  return index.manifests.filter((m) => !isAttestation(m)).map((m) => ({
    platform: m.platform ? formatPlatform(m.platform) : "unknown",
    digest: m.digest,
    mediaType: m.mediaType,
  }));
}

/** The top-level manifest of a reference, verified when pulled by digest. */
export function fetchTopManifest(
  client: RegistryClient,
  ref: Reference,
): Promise<FetchedDocument> {
  if (ref.digest) parseDigest(ref.digest);
  return fetchManifest(client, ref.digest ?? ref.tag ?? "latest", ref.digest);
}

/** An image manifest an index leads to, with the platform it was found for. */
interface IndexLeaf {
  descriptor: Descriptor;
  /** From the index entry, or (entries without one) from the image's own config. */
  platform?: Platform;
  /** Already fetched and verified (entries without a platform are looked at). */
  fetched?: FetchedDocument;
}

/**
 * Walks an index down to its image manifests: nested indexes (an index entry that is itself
 * an index, as containerd and some mirrors write them) are fetched, verified by digest and
 * walked, at most {@link MAX_INDEX_DEPTH} deep. Attestations are left out. Entries without a
 * platform are fetched to read it from their config; artifacts (signatures, charts) among
 * them are left out.
 */
async function indexLeaves(
  client: RegistryClient,
  index: IndexManifest,
  seen: Set<string>,
  depth = 1,
): Promise<IndexLeaf[]> {
  if (depth > MAX_INDEX_DEPTH) {
    throw new InvalidContentError(`image index nests deeper than ${MAX_INDEX_DEPTH} levels`);
  }
  const groups = await Promise.all(index.manifests.map(async (entry): Promise<IndexLeaf[]> => {
    if (isAttestation(entry)) return [];
    if (seen.has(entry.digest)) {
      throw new InvalidContentError(`image index refers to itself (${entry.digest})`);
    }
    if (entry.platform && !isIndexType(entry.mediaType)) {
      return [{ descriptor: entry, platform: entry.platform }];
    }
    const fetched = await fetchManifest(client, entry.digest, entry);
    const manifest = fetched.manifest;
    if (manifest.kind === "index") {
      return await indexLeaves(client, manifest, new Set([...seen, entry.digest]), depth + 1);
    }
    if (entry.platform) return [{ descriptor: entry, platform: entry.platform, fetched }];
    if (manifest.kind === "schema1") {
      const platform = { os: "linux", architecture: manifest.architecture };
      return [{ descriptor: entry, platform, fetched }];
    }
    if (artifactKind(manifest)) return [];
    const { config } = await fetchConfig(client, manifest);
    return [{ descriptor: entry, platform: platformOf(config), fetched }];
  }));
  return groups.flat();
}

/**
 * Lists an image's platforms (one entry for a single-platform image). Nested indexes are
 * walked; an index that lists nothing is invalid content.
 */
export async function listPlatforms(
  client: RegistryClient,
  ref: Reference,
): Promise<PlatformEntry[]> {
  const top = await fetchTopManifest(client, ref);
  if (top.manifest.kind === "index") {
    const leaves = await indexLeaves(client, top.manifest, new Set([top.digest]));
    if (leaves.length === 0) throw emptyIndex(top.manifest);
    return leaves.map((leaf) => ({
      platform: leaf.platform ? formatPlatform(leaf.platform) : "unknown",
      digest: leaf.descriptor.digest,
      mediaType: leaf.descriptor.mediaType,
    }));
  }
  if (top.manifest.kind === "schema1") {
    return [{
      platform: `linux/${top.manifest.architecture}`,
      digest: top.digest,
      mediaType: top.manifest.mediaType,
    }];
  }
  refuseArtifact(top.manifest, ref);
  const { config } = await fetchConfig(client, top.manifest);
  return [{
    platform: configPlatformText(config),
    digest: top.digest,
    mediaType: top.manifest.mediaType,
  }];
}

function emptyIndex(index: IndexManifest): InvalidContentError {
  return new InvalidContentError(
    index.manifests.length === 0
      ? "the image index is empty: it lists no manifests"
      : "the image index lists no image manifests (only attestations or artifacts)",
  );
}

/** How the platform to pull was chosen. */
export interface PlatformRequest {
  platform: Platform;
  /**
   * True when the user asked for it (`--platform`, `DOCKER_DEFAULT_PLATFORM`): a
   * single-platform image for another platform is then refused. The host default is only a
   * preference: it chooses in an index, and a mismatch elsewhere is a warning.
   */
  enforced: boolean;
}

/** Resolves `ref` to the image for the requested platform. */
export async function resolveImage(
  client: RegistryClient,
  ref: Reference,
  request: PlatformRequest,
  onEvent: PullEventSink = () => {},
  store?: BlobStore,
  /** The top manifest, when the caller fetched it already (choosing an endpoint). */
  top?: FetchedDocument,
): Promise<ResolvedImage> {
  const resolved = await resolveImageEarly(client, ref, request, onEvent, store, top);
  return resolved.kind === "early" ? await resolved.complete : resolved;
}

/**
 * An image manifest chosen from an index (so its platform is known) whose config is still on
 * its way: what a pull may start with while the config is fetched. Nothing may be committed
 * before {@link complete} has resolved (the config verified against its digest, its diff_ids
 * counted against the layers); a failure of it is the pull's failure, as it would have been
 * before any download.
 */
export interface EarlyImage {
  kind: "early";
  manifest: ImageManifest;
  platform: string;
  exactPlatform: boolean;
  manifestDigest: string;
  manifestBytes: Uint8Array;
  descriptor: Descriptor;
  /** The image with its verified config (already requested; never an unhandled rejection). */
  complete: Promise<Extract<ResolvedImage, { kind: "image" }>>;
}

/**
 * As {@link resolveImage}, except that an image chosen from an index is returned as soon as
 * its manifest is verified, its config being fetched meanwhile ({@link EarlyImage}). A
 * single-platform image is returned complete: its platform is only known from its config.
 */
export async function resolveImageEarly(
  client: RegistryClient,
  ref: Reference,
  request: PlatformRequest,
  onEvent: PullEventSink = () => {},
  store?: BlobStore,
  /** The top manifest, when the caller fetched it already (choosing an endpoint). */
  top?: FetchedDocument,
): Promise<ResolvedImage | EarlyImage> {
  const { platform } = request;
  const requested = formatPlatform(platform);
  let current = top ?? await fetchTopManifest(client, ref);
  let chosenPlatform: string | undefined;
  let exact = true;
  let listed: Descriptor | undefined;
  if (current.manifest.kind === "index") {
    const leaves = await indexLeaves(client, current.manifest, new Set([current.digest]));
    if (leaves.length === 0) throw emptyIndex(current.manifest);
    const match = selectPlatform(platform, leaves.map((leaf) => leaf.platform));
    if (!match) {
      throw new PlatformNotFoundError(
        requested,
        leaves.map((leaf) => leaf.platform ? formatPlatform(leaf.platform) : "unknown"),
      );
    }
    const leaf = leaves[match.index];
    listed = { ...leaf.descriptor, platform: leaf.platform };
    chosenPlatform = formatPlatform(leaf.platform!);
    exact = match.exact;
    const digest = leaf.descriptor.digest;
    onEvent({ type: "platform", requested, chosen: chosenPlatform, exact, digest });
    current = leaf.fetched ?? await fetchManifest(client, digest, leaf.descriptor);
    if (current.manifest.kind === "index") {
      throw new InvalidContentError(`manifest ${digest} is an index where an image was listed`);
    }
  }
  const manifest = current.manifest;
  if (manifest.kind === "schema1") {
    const actual = normalizePlatform({ os: "linux", architecture: manifest.architecture });
    const display = chosenPlatform ?? formatPlatform(actual);
    if (!chosenPlatform) checkSinglePlatform(request, actual, onEvent);
    return {
      kind: "schema1",
      manifest,
      platform: display,
      exactPlatform: exact,
      manifestDigest: current.digest,
      manifestBytes: current.bytes,
      descriptor: listed ?? descriptorOf(current, actual),
    };
  }
  refuseArtifact(manifest, ref);
  if (chosenPlatform !== undefined && listed) {
    const platform = chosenPlatform;
    const descriptor = listed;
    const chosen = current;
    const complete = fetchConfig(client, manifest, store).then((
      { config, configBytes },
    ): Extract<ResolvedImage, { kind: "image" }> => ({
      kind: "image",
      manifest,
      config,
      configBytes,
      platform,
      exactPlatform: exact,
      manifestDigest: chosen.digest,
      manifestBytes: chosen.bytes,
      descriptor,
    }));
    // Whoever takes the early image awaits this; until then its failure is not unhandled.
    complete.catch(() => {});
    return {
      kind: "early",
      manifest,
      platform,
      exactPlatform: exact,
      manifestDigest: current.digest,
      manifestBytes: current.bytes,
      descriptor,
      complete,
    };
  }
  const { config, configBytes } = await fetchConfig(client, manifest, store);
  if (!chosenPlatform) checkSinglePlatform(request, platformOf(config), onEvent);
  return {
    kind: "image",
    manifest,
    config,
    configBytes,
    platform: chosenPlatform ?? configPlatformText(config),
    exactPlatform: exact,
    manifestDigest: current.digest,
    manifestBytes: current.bytes,
    descriptor: listed ?? descriptorOf(current, platformOf(config)),
  };
}

/** Everything an image with all its platforms consists of, for an OCI layout. */
export interface ImageTree {
  /** The top document (the index, or a single manifest), as index.json lists it. */
  top: Descriptor;
  /** Every index and manifest in the tree, byte for byte, by digest. */
  documents: Map<string, Uint8Array>;
  /** Every config and layer the manifests refer to, by digest. */
  blobs: Map<string, Descriptor>;
}

/**
 * `--all-platforms`: the reference's index (or single manifest) and everything under it,
 * byte for byte: nested indexes, every manifest (attestations included), their configs and
 * layers. Every document is verified by the digest its parent lists.
 */
export async function resolveTree(
  client: RegistryClient,
  ref: Reference,
  fetched?: FetchedDocument,
): Promise<ImageTree> {
  const top = fetched ?? await fetchTopManifest(client, ref);
  const tree: ImageTree = { top: descriptorOf(top), documents: new Map(), blobs: new Map() };
  const walk = async (doc: FetchedDocument, depth: number): Promise<void> => {
    tree.documents.set(doc.digest, doc.bytes);
    const manifest = doc.manifest;
    if (manifest.kind === "schema1") {
      throw new InvalidContentError(
        `${ref.repository}: a schema1 manifest cannot be kept byte for byte in an OCI layout; ` +
          `pull one platform instead`,
      );
    }
    if (manifest.kind === "image") {
      for (const d of [manifest.config, ...manifest.layers]) tree.blobs.set(d.digest, d);
      return;
    }
    if (depth >= MAX_INDEX_DEPTH) {
      throw new InvalidContentError(`image index nests deeper than ${MAX_INDEX_DEPTH} levels`);
    }
    await Promise.all(manifest.manifests.map(async (entry) => {
      if (tree.documents.has(entry.digest)) return;
      await walk(await fetchManifest(client, entry.digest, entry), depth + 1);
    }));
  };
  await walk(top, 0);
  return tree;
}

/**
 * A new index listing exactly `images`' manifests, each with the descriptor its own index gave
 * it (unchanged); the media type follows the original top document (OCI or Docker list).
 */
export function subsetIndex(
  images: readonly ResolvedImage[],
  mediaType: string,
): { bytes: Uint8Array; descriptor: Descriptor } {
  const listType = mediaType === MediaType.dockerManifestList
    ? MediaType.dockerManifestList
    : MediaType.ociIndex;
  const bytes = new TextEncoder().encode(JSON.stringify({
    schemaVersion: 2,
    mediaType: listType,
    manifests: images.map((image) => image.descriptor),
  }));
  return {
    bytes,
    descriptor: { mediaType: listType, digest: digestOf(bytes), size: bytes.byteLength },
  };
}

/**
 * Artifacts stored in registries (Helm charts, signatures, SBOMs) are not images: refused from
 * their media types, before their config is read or any layer fetched.
 */
function refuseArtifact(manifest: ImageManifest, ref: Reference): void {
  const kind = artifactKind(manifest);
  if (!kind) return;
  const name = ref.digest ? `${ref.repository}@${ref.digest}` : `${ref.repository}:${ref.tag}`;
  throw new InvalidContentError(`${name} is not a container image (${kind})`, {
    hint: "imgpull pulls images; artifacts can be copied with oras or skopeo",
  });
}

function platformOf(config: ImageConfig): Platform {
  return {
    os: config.os,
    architecture: config.architecture,
    ...(config.variant ? { variant: config.variant } : {}),
  };
}

function configPlatformText(config: ImageConfig): string {
  return formatPlatform({
    os: config.os,
    architecture: config.architecture,
    ...(config.variant ? { variant: config.variant } : {}),
  });
}

/**
 * A single-platform image (or a pull by a platform manifest's digest) must match a platform the
 * user asked for; against the host default, a mismatch is a warning and the pull goes on, as
 * `docker pull` does.
 */
function checkSinglePlatform(
  request: PlatformRequest,
  actual: Platform,
  onEvent: PullEventSink,
): void {
  const requested = formatPlatform(request.platform);
  const match = selectPlatform(request.platform, [actual]);
  const chosen = formatPlatform(actual);
  if (!match?.exact) {
    if (request.enforced) throw new PlatformMismatchError(requested, chosen);
    onEvent({
      type: "warning",
      message: `the image is for ${chosen}, not the host's ${requested}; pulling it anyway ` +
        `(give --platform to insist on one)`,
    });
  }
  onEvent({ type: "platform", requested, chosen, exact: true });
}

/** Fetches and verifies an image config, and reads the fields we need. */
export async function fetchConfig(
  client: RegistryClient,
  manifest: ImageManifest,
  store?: BlobStore,
): Promise<{ config: ImageConfig; configBytes: Uint8Array<ArrayBuffer> }> {
  const descriptor = manifest.config;
  if (descriptor.size > MAX_CONFIG_BYTES) {
    throw new InvalidContentError(`image config is ${descriptor.size} bytes, too large`);
  }
  // A config in the store is hashed again: a cache entry may have rotted or been changed since
  // it was verified; a damaged one is fetched again (and replaced).
  const stored = async () => {
    if (await store?.size(descriptor.digest) !== descriptor.size) return undefined;
    const configBytes = await Deno.readFile(store!.blobPath(descriptor.digest));
    const algorithm = parseDigest(descriptor.digest).algorithm;
    if (digestOf(configBytes, algorithm) !== descriptor.digest) return undefined;
    return { config: parseImageConfig(configBytes, manifest.layers.length), configBytes };
  };
  const cached = await stored();
  if (cached) return cached;
  // Another process fetching the same config: wait for it instead of fetching twice.
  const lock = await store?.lock(descriptor.digest);
  try {
    return (await stored()) ??
      await client.retrying(
        `config ${manifest.config.digest}`,
        (signal) => downloadConfig(client, manifest, signal, store),
      );
  } finally {
    lock?.release();
  }
}

async function downloadConfig(
  client: RegistryClient,
  manifest: ImageManifest,
  signal: AbortSignal,
  store?: BlobStore,
): Promise<{ config: ImageConfig; configBytes: Uint8Array<ArrayBuffer> }> {
  const descriptor = manifest.config;
  const response = await client.openBlob(descriptor.digest, { signal });
  // Never read past the size the manifest promised.
  const configBytes = await readCapped(
    response,
    descriptor.size,
    "image config",
    () => new IntegrityError(`config ${descriptor.digest}: more than ${descriptor.size} bytes`),
  );
  if (configBytes.byteLength !== descriptor.size) {
    throw new IntegrityError(
      `config ${descriptor.digest}: expected ${descriptor.size} bytes, received ${configBytes.byteLength}`,
    );
  }
  const actual = digestOf(configBytes, parseDigest(descriptor.digest).algorithm);
  if (actual !== descriptor.digest) {
    throw new IntegrityError(`config ${descriptor.digest}: content has digest ${actual}`);
  }
  const config = parseImageConfig(configBytes, manifest.layers.length);
  if (store) {
    const temp = store.tempPath("config");
    await Deno.writeFile(temp, configBytes);
    await store.commit(temp, descriptor.digest);
  }
  return { config, configBytes };
}

/** Reads os/architecture/variant and the diff_ids from a config, validating them. */
export function parseImageConfig(bytes: Uint8Array, layerCount: number): ImageConfig {
  let obj: Record<string, unknown>;
  try {
    obj = JSON.parse(new TextDecoder().decode(bytes));
  } catch (e) {
    throw new InvalidContentError("image config is not valid JSON", { cause: e });
  }
  if (typeof obj !== "object" || obj === null) {
    throw new InvalidContentError("image config is not a JSON object");
  }
  const rootfs = obj.rootfs as { diff_ids?: unknown } | undefined;
  const rawIds = rootfs?.diff_ids;
  if (!Array.isArray(rawIds)) throw new InvalidContentError("image config has no rootfs.diff_ids");
  const diffIds = rawIds.map((id) => parseDigest(id, "diff_id").value);
  if (diffIds.length !== layerCount) {
    throw new InvalidContentError(
      `image config lists ${diffIds.length} diff_ids for ${layerCount} layers`,
    );
  }
  const str = (v: unknown) => (typeof v === "string" ? v : "");
  const platform = normalizePlatform({
    os: str(obj.os) || "linux",
    architecture: str(obj.architecture) || "unknown",
    ...(str(obj.variant) ? { variant: str(obj.variant) } : {}),
  });
  return { ...platform, diffIds } as ImageConfig;
}
