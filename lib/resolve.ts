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
import type { FetchedManifest, RegistryClient } from "./registry.ts";
import type { BlobStore } from "./store.ts";
import { readCapped } from "./transport.ts";
import type { Reference } from "./reference.ts";

/** Indexes may nest (an index of indexes); deeper than this is refused. */
const MAX_INDEX_DEPTH = 4;
/** Image configs are JSON documents; this is generous. */
const MAX_CONFIG_BYTES = 16 * 1024 * 1024;

/** The image chosen for a platform. */
export type ResolvedImage =
  & {
    /** Platform of the chosen image, as the registry writes it. */
    platform: string;
    /** False when a compatible, not identical, platform was chosen. */
    exactPlatform: boolean;
    /** Digest of the chosen image manifest (schema1: of its payload). */
    manifestDigest: string;
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
): { manifest: Manifest; digest: string } {
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
  const actual = digestOf(verifiedBytes);
  if (expected && actual !== expected) {
    throw new IntegrityError(`${what}: expected digest ${expected}, content has ${actual}`);
  }
  return { manifest, digest: actual };
}

async function fetchManifest(
  client: RegistryClient,
  reference: string,
  expected?: Descriptor | string,
): Promise<{ manifest: Manifest; digest: string }> {
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

/** The platforms an index offers, attestations left out. */
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
): Promise<{ manifest: Manifest; digest: string }> {
  if (ref.digest) parseDigest(ref.digest);
  return fetchManifest(client, ref.digest ?? ref.tag ?? "latest", ref.digest);
}

/** Lists an image's platforms (one entry for a single-platform image). */
export async function listPlatforms(
  client: RegistryClient,
  ref: Reference,
): Promise<PlatformEntry[]> {
  const top = await fetchTopManifest(client, ref);
  if (top.manifest.kind === "index") return indexPlatforms(top.manifest);
  if (top.manifest.kind === "schema1") {
    return [{
      platform: `linux/${top.manifest.architecture}`,
      digest: top.digest,
      mediaType: top.manifest.mediaType,
    }];
  }
  const { config } = await fetchConfig(client, top.manifest);
  return [{
    platform: configPlatformText(config),
    digest: top.digest,
    mediaType: top.manifest.mediaType,
  }];
}

/** Resolves `ref` to the image for `platform`. */
export async function resolveImage(
  client: RegistryClient,
  ref: Reference,
  platform: Platform,
  onEvent: PullEventSink = () => {},
  store?: BlobStore,
): Promise<ResolvedImage> {
  const requested = formatPlatform(platform);
  let current = await fetchTopManifest(client, ref);
  let chosenPlatform: string | undefined;
  let exact = true;
  const seen = new Set<string>([current.digest]);
  for (let depth = 0; current.manifest.kind === "index"; depth++) {
    if (depth >= MAX_INDEX_DEPTH) {
      throw new InvalidContentError(`image index nests deeper than ${MAX_INDEX_DEPTH} levels`);
    }
    const entries = current.manifest.manifests.filter((m) => !isAttestation(m));
    const match = selectPlatform(platform, entries.map((m) => m.platform));
    if (!match) {
      throw new PlatformNotFoundError(
        requested,
        indexPlatforms(current.manifest).map((p) => p.platform),
      );
    }
    const entry = entries[match.index];
    if (seen.has(entry.digest)) {
      throw new InvalidContentError(`image index refers to itself (${entry.digest})`);
    }
    seen.add(entry.digest);
    chosenPlatform = formatPlatform(entry.platform!);
    exact &&= match.exact;
    onEvent({ type: "platform", requested, chosen: chosenPlatform, exact, digest: entry.digest });
    current = await fetchManifest(client, entry.digest, entry);
  }
  const manifest = current.manifest;
  if (manifest.kind === "schema1") {
    const actual = normalizePlatform({ os: "linux", architecture: manifest.architecture });
    checkSinglePlatform(platform, actual, chosenPlatform);
    const display = chosenPlatform ?? formatPlatform(actual);
    if (!chosenPlatform) onEvent({ type: "platform", requested, chosen: display, exact: true });
    return {
      kind: "schema1",
      manifest,
      platform: display,
      exactPlatform: exact,
      manifestDigest: current.digest,
    };
  }
  const { config, configBytes } = await fetchConfig(client, manifest, store);
  if (!chosenPlatform) {
    checkSinglePlatform(platform, config, undefined);
    onEvent({ type: "platform", requested, chosen: configPlatformText(config), exact: true });
  }
  return {
    kind: "image",
    manifest,
    config,
    configBytes,
    platform: chosenPlatform ?? configPlatformText(config),
    exactPlatform: exact,
    manifestDigest: current.digest,
  };
}

function configPlatformText(config: ImageConfig): string {
  return formatPlatform({
    os: config.os,
    architecture: config.architecture,
    ...(config.variant ? { variant: config.variant } : {}),
  });
}

/** A single-platform image must match the request exactly (after normalisation). */
function checkSinglePlatform(
  requested: Platform,
  actual: Platform,
  chosenFromIndex: string | undefined,
): void {
  if (chosenFromIndex) return;
  const match = selectPlatform(requested, [actual]);
  if (!match?.exact) {
    throw new PlatformMismatchError(formatPlatform(requested), formatPlatform(actual));
  }
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
  // A config in the store was verified when it was stored.
  const stored = async () => {
    if (await store?.size(descriptor.digest) !== descriptor.size) return undefined;
    const configBytes = await Deno.readFile(store!.blobPath(descriptor.digest));
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
