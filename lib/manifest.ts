/**
 * Parsing and validating manifests (OCI index and manifest, Docker manifest
 * list, schema2 and schema1). Everything a registry sends is untrusted: each
 * field is checked before it is used, and digests are validated so that they
 * are safe to use as file names.
 *
 * @example
 * ```ts
 * const m = parseManifest(bytes, response.headers.get("content-type"));
 * if (m.kind === "index") console.log(m.manifests.length);
 * ```
 * @module
 */
import { decodeBase64Url } from "./encoding.ts";
import { parseDigest } from "./digest.ts";
import { InvalidContentError } from "./errors.ts";
import { isIndexType, MediaType } from "./media_types.ts";
import type { Platform } from "./platform.ts";

/** Largest manifest body we read. */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;
/** Upper bounds that keep hostile manifests from exhausting us. */
const MAX_INDEX_ENTRIES = 10_000;
const MAX_LAYERS = 1_000;

/** A content descriptor whose digest and size have been validated. */
export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  urls?: string[];
  platform?: Platform;
  annotations?: Record<string, string>;
  /** OCI 1.1: the type of the artifact this descriptor points at. */
  artifactType?: string;
}

/** An OCI image index or Docker manifest list. */
export interface IndexManifest {
  kind: "index";
  mediaType: string;
  manifests: Descriptor[];
  /** OCI 1.1: set on indexes that are artifacts rather than multi-platform images. */
  artifactType?: string;
}

/** An OCI image manifest or Docker schema2 manifest. */
export interface ImageManifest {
  kind: "image";
  mediaType: string;
  config: Descriptor;
  /** Bottom layer first. */
  layers: Descriptor[];
  /** OCI 1.1: set on manifests of artifacts (signatures, SBOMs, charts), never on images. */
  artifactType?: string;
  /** OCI 1.1: the manifest this one refers to (a signature's image, say). */
  subject?: Descriptor;
}

/** One layer of a schema1 manifest, bottom first (reversed from the wire order). */
export interface Schema1Layer {
  blobSum: string;
  /** The raw `v1Compatibility` JSON text. */
  v1Compatibility: string;
  /** Parsed `v1Compatibility`. */
  v1: Record<string, unknown>;
  /** Marked `throwaway`: an empty layer that contributes no diff_id. */
  throwaway: boolean;
}

/** A Docker schema1 manifest (signed or not). */
export interface Schema1Manifest {
  kind: "schema1";
  mediaType: string;
  name: string;
  tag: string;
  architecture: string;
  /** Bottom layer first. */
  layers: Schema1Layer[];
}

export type Manifest = IndexManifest | ImageManifest | Schema1Manifest;

type Json = Record<string, unknown>;

function fail(message: string): never {
  throw new InvalidContentError(`invalid manifest: ${message}`);
}

function isObject(value: unknown): value is Json {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function optionalString(obj: Json, key: string): string | undefined {
  const value = obj[key];
  if (value === undefined) return undefined;
  if (typeof value !== "string") fail(`"${key}" must be a string`);
  return value;
}

function parseStringMap(value: unknown, what: string): Record<string, string> | undefined {
  if (value === undefined || value === null) return undefined;
  if (!isObject(value)) fail(`${what} must be an object`);
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(value)) {
    if (typeof v !== "string") fail(`${what}.${k} must be a string`);
    out[k] = v;
  }
  return out;
}

function parsePlatformField(value: unknown): Platform | undefined {
  if (value === undefined || value === null) return undefined;
  if (!isObject(value)) fail("platform must be an object");
  const os = value.os, architecture = value.architecture, variant = value.variant;
  if (typeof os !== "string" || typeof architecture !== "string") {
    fail("platform needs string os and architecture");
  }
  if (variant !== undefined && typeof variant !== "string") {
    fail("platform.variant must be a string");
  }
  const platform: Platform = { os, architecture };
  if (variant) platform.variant = variant;
  if (typeof value["os.version"] === "string") platform["os.version"] = value["os.version"];
  return platform;
}

/** Validates one descriptor object. */
export function parseDescriptor(value: unknown, what: string): Descriptor {
  if (!isObject(value)) fail(`${what} must be an object`);
  const mediaType = optionalString(value, "mediaType") ?? "";
  const digest = parseDigest(value.digest, `${what} digest`).value;
  const size = value.size;
  if (typeof size !== "number" || !Number.isSafeInteger(size) || size < 0) {
    fail(`${what} has an invalid size`);
  }
  const descriptor: Descriptor = { mediaType, digest, size };
  if (value.urls !== undefined && value.urls !== null) {
    if (!Array.isArray(value.urls) || !value.urls.every((u) => typeof u === "string")) {
      fail(`${what}.urls must be a list of strings`);
    }
    descriptor.urls = value.urls as string[];
  }
  const platform = parsePlatformField(value.platform);
  if (platform) descriptor.platform = platform;
  const annotations = parseStringMap(value.annotations, `${what}.annotations`);
  if (annotations) descriptor.annotations = annotations;
  const artifactType = optionalString(value, "artifactType");
  if (artifactType) descriptor.artifactType = artifactType;
  return descriptor;
}

function parseDescriptorList(value: unknown, what: string, max: number): Descriptor[] {
  if (!Array.isArray(value)) fail(`"${what}" must be a list`);
  if (value.length > max) fail(`"${what}" has ${value.length} entries (at most ${max})`);
  return value.map((item, i) => parseDescriptor(item, `${what}[${i}]`));
}

/**
 * One digest names one content, so it has one size. A document that gives a digest two sizes
 * is refused: the archive is laid out from sizes, and a second size would let the (verified)
 * bytes of one entry spill into the space planned for the next.
 */
function requireOneSizePerDigest(descriptors: readonly Descriptor[]): void {
  const sizes = new Map<string, number>();
  for (const d of descriptors) {
    const known = sizes.get(d.digest);
    if (known !== undefined && known !== d.size) {
      fail(`${d.digest} is listed with two sizes (${known} and ${d.size})`);
    }
    sizes.set(d.digest, d.size);
  }
}

/** Infers the media type when neither the body nor the response names one. */
function inferMediaType(obj: Json): string {
  if (obj.schemaVersion === 1) return MediaType.dockerSchema1;
  if (Array.isArray(obj.manifests)) return MediaType.ociIndex;
  if (isObject(obj.config)) return MediaType.ociManifest;
  return "";
}

/**
 * Parses a manifest body. The media type is taken from the body's
 * `mediaType`, else from the response's `Content-Type`, else inferred from
 * the shape (older OCI manifests omit it).
 */
export function parseManifest(bytes: Uint8Array, contentType?: string | null): Manifest {
  if (bytes.byteLength > MAX_MANIFEST_BYTES) {
    fail(`larger than ${MAX_MANIFEST_BYTES} bytes`);
  }
  let obj: unknown;
  try {
    obj = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (e) {
    throw new InvalidContentError("invalid manifest: not valid JSON", { cause: e });
  }
  if (!isObject(obj)) fail("not a JSON object");
  const headerType = contentType?.split(";")[0].trim().toLowerCase();
  const bodyType = optionalString(obj, "mediaType");
  const known = (type: string | undefined) =>
    type !== undefined && Object.values(MediaType).includes(type as never);
  // A type the document names itself is binding; without one, the response's
  // type, and failing that (registries label schema1 and old OCI manifests
  // with generic types) the document's shape decides.
  const mediaType = bodyType ? bodyType : known(headerType) ? headerType! : inferMediaType(obj);

  if (isIndexType(mediaType)) {
    const manifests = parseDescriptorList(obj.manifests, "manifests", MAX_INDEX_ENTRIES);
    requireOneSizePerDigest(manifests);
    const index: IndexManifest = { kind: "index", mediaType, manifests };
    const artifactType = optionalString(obj, "artifactType");
    if (artifactType) index.artifactType = artifactType;
    return index;
  }
  if (mediaType === MediaType.ociManifest || mediaType === MediaType.dockerManifest) {
    if (obj.schemaVersion !== 2) fail("schemaVersion must be 2");
    const config = parseDescriptor(obj.config, "config");
    const layers = parseDescriptorList(obj.layers, "layers", MAX_LAYERS);
    requireOneSizePerDigest([config, ...layers]);
    const image: ImageManifest = { kind: "image", mediaType, config, layers };
    const artifactType = optionalString(obj, "artifactType");
    if (artifactType) image.artifactType = artifactType;
    if (isObject(obj.subject)) image.subject = parseDescriptor(obj.subject, "subject");
    return image;
  }
  if (mediaType === MediaType.dockerSchema1 || mediaType === MediaType.dockerSchema1Signed) {
    return parseSchema1(obj, mediaType);
  }
  throw new InvalidContentError(
    `unsupported manifest media type ${
      JSON.stringify((bodyType || headerType || "").slice(0, 100))
    }`,
  );
}

function parseSchema1(obj: Json, mediaType: string): Schema1Manifest {
  if (obj.schemaVersion !== 1) fail("schemaVersion must be 1");
  const fsLayers = obj.fsLayers, history = obj.history;
  if (!Array.isArray(fsLayers) || !Array.isArray(history)) {
    fail("schema1 needs fsLayers and history");
  }
  if (fsLayers.length !== history.length) fail("schema1 fsLayers and history differ in length");
  if (fsLayers.length === 0 || fsLayers.length > MAX_LAYERS) {
    fail("schema1 has no or too many layers");
  }
  const layers: Schema1Layer[] = fsLayers.map((entry, i) => {
    if (!isObject(entry)) fail(`fsLayers[${i}] must be an object`);
    const h = history[i];
    if (!isObject(h) || typeof h.v1Compatibility !== "string") {
      fail(`history[${i}].v1Compatibility must be a string`);
    }
    let v1: unknown;
    try {
      v1 = JSON.parse(h.v1Compatibility);
    } catch {
      fail(`history[${i}].v1Compatibility is not JSON`);
    }
    if (!isObject(v1)) fail(`history[${i}].v1Compatibility is not an object`);
    return {
      blobSum: parseDigest(entry.blobSum, `fsLayers[${i}] blobSum`).value,
      v1Compatibility: h.v1Compatibility,
      v1,
      throwaway: v1.throwaway === true,
    };
  });
  // The wire order is top layer first; everything else here is bottom first.
  layers.reverse();
  return {
    kind: "schema1",
    mediaType,
    name: optionalString(obj, "name") ?? "",
    tag: optionalString(obj, "tag") ?? "",
    architecture: optionalString(obj, "architecture") ?? "",
    layers,
  };
}

/**
 * The bytes a schema1 manifest's digest is computed over: a signed manifest
 * is hashed without its JWS `signatures`, using the first signature's
 * `formatLength` and `formatTail`. Unsigned manifests are returned as they are.
 */
export function schema1PayloadBytes(bytes: Uint8Array): Uint8Array {
  let obj: unknown;
  try {
    obj = JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return bytes;
  }
  if (!isObject(obj) || !Array.isArray(obj.signatures) || obj.signatures.length === 0) return bytes;
  const signature = obj.signatures[0];
  if (!isObject(signature) || typeof signature.protected !== "string") return bytes;
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder().decode(decodeBase64Url(signature.protected)));
  } catch {
    fail("schema1 signature header is not valid");
  }
  if (!isObject(header)) fail("schema1 signature header is not an object");
  const { formatLength, formatTail } = header;
  if (
    typeof formatLength !== "number" || !Number.isSafeInteger(formatLength) || formatLength < 0 ||
    formatLength > bytes.byteLength || typeof formatTail !== "string"
  ) {
    fail("schema1 signature header lacks formatLength/formatTail");
  }
  let tail: Uint8Array;
  try {
    tail = decodeBase64Url(formatTail);
  } catch {
    fail("schema1 signature formatTail is not base64");
  }
  const payload = new Uint8Array(formatLength + tail.byteLength);
  payload.set(bytes.subarray(0, formatLength));
  payload.set(tail, formatLength);
  return payload;
}

/** Fields of a v1Compatibility entry that are not part of an image config. */
const V1_ONLY_FIELDS = ["id", "parent", "Size", "parent_id", "layer_id", "throwaway"];

/**
 * Builds an image config for a schema1 manifest, as `docker pull` does:
 * the top layer's v1Compatibility minus its v1-only fields, plus `rootfs`
 * with the given diff_ids (one per non-throwaway layer, bottom first) and
 * a `history` with one entry per schema1 layer.
 */
export function schema1Config(manifest: Schema1Manifest, diffIds: readonly string[]): Uint8Array {
  const top = manifest.layers[manifest.layers.length - 1].v1;
  const config: Json = {};
  for (const [key, value] of Object.entries(top)) {
    if (!V1_ONLY_FIELDS.includes(key)) config[key] = value;
  }
  if (!config.architecture && manifest.architecture) config.architecture = manifest.architecture;
  if (!config.os) config.os = "linux";
  config.rootfs = { type: "layers", diff_ids: [...diffIds] };
  config.history = manifest.layers.map((layer) => {
    const v1 = layer.v1;
    const containerConfig = isObject(v1.container_config) ? v1.container_config : {};
    const cmd = Array.isArray(containerConfig.Cmd) ? containerConfig.Cmd.join(" ") : "";
    const entry: Json = {};
    if (typeof v1.created === "string") entry.created = v1.created;
    if (typeof v1.author === "string") entry.author = v1.author;
    if (cmd) entry.created_by = cmd;
    if (typeof v1.comment === "string") entry.comment = v1.comment;
    if (layer.throwaway) entry.empty_layer = true;
    return entry;
  });
  return new TextEncoder().encode(JSON.stringify(config));
}
