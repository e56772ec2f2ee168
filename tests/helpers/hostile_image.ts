/**
 * Small images for the fault registry, and independent checks of what a pull left behind: the
 * archive (a minimal tar reader and a SHA-256 of every blob, without lib/ code), the blob cache
 * (every file under `blobs/` hashes to its name) and directory snapshots (no file left behind,
 * an existing destination unchanged).
 * @module
 */
import { createHash } from "node:crypto";
import { pseudoRandomBytes } from "./random.ts";

/** Media types, spelled out here so that the checks do not depend on lib/. */
export const MT = {
  ociIndex: "application/vnd.oci.image.index.v1+json",
  ociManifest: "application/vnd.oci.image.manifest.v1+json",
  ociConfig: "application/vnd.oci.image.config.v1+json",
  ociLayerGzip: "application/vnd.oci.image.layer.v1.tar+gzip",
  dockerList: "application/vnd.docker.distribution.manifest.list.v2+json",
  dockerManifest: "application/vnd.docker.distribution.manifest.v2+json",
  dockerConfig: "application/vnd.docker.container.image.v1+json",
  dockerLayerGzip: "application/vnd.docker.image.rootfs.diff.tar.gzip",
  schema1Signed: "application/vnd.docker.distribution.manifest.v1+prettyjws",
} as const;

export const KiB = 1024;
export const MiB = 1024 * 1024;

const encoder = new TextEncoder();

/** JSON bytes of a value. */
export function jsonBytes(value: unknown): Uint8Array<ArrayBuffer> {
  return encoder.encode(JSON.stringify(value));
}

/** `sha256:<hex>` of some bytes. */
export function sha256(bytes: Uint8Array): string {
  return `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
}

/** Deterministic bytes that do not compress (xorshift32). */
export const pseudoRandom: (size: number, seed: number) => Uint8Array<ArrayBuffer> =
  pseudoRandomBytes;

/** A blob with its descriptor fields. */
export interface Blob {
  mediaType: string;
  digest: string;
  size: number;
  bytes: Uint8Array<ArrayBuffer>;
}

function blob(bytes: Uint8Array<ArrayBuffer>, mediaType: string): Blob {
  return { mediaType, digest: sha256(bytes), size: bytes.byteLength, bytes };
}

/** A manifest as a registry stores it. */
export interface StoredManifest {
  bytes: Uint8Array;
  mediaType: string;
}

/** A single-platform image, ready to be served by the fault registry. */
export interface TestImage {
  repository: string;
  tag: string;
  config: Blob;
  layers: Blob[];
  manifest: Blob;
  /** Blobs by digest (config and layers). */
  blobs: Map<string, Uint8Array>;
  /** Manifests by `repository:tag` and `repository:digest`. */
  manifests: Map<string, StoredManifest>;
}

/** Options of {@link buildImage}. */
export interface ImageOptions {
  repository?: string;
  tag?: string;
  /** Layer sizes (pseudo-random content) or layer bytes; default one 200 KiB and one 48 KiB layer. */
  layers?: (number | Uint8Array<ArrayBuffer>)[];
  /** Seed of the pseudo-random layer content. */
  seed?: number;
  architecture?: string;
  layerMediaType?: string;
  configMediaType?: string;
  manifestMediaType?: string;
}

/**
 * Builds an image whose layers are opaque bytes (imgpull verifies digests and sizes, not tar
 * content, for gzip media types) and whose config lists the layer digests as diff_ids.
 */
export function buildImage(options: ImageOptions = {}): TestImage {
  const repository = options.repository ?? "test/img";
  const tag = options.tag ?? "latest";
  const seed = options.seed ?? 1;
  const layers = (options.layers ?? [200 * KiB, 48 * KiB]).map((l, i) =>
    blob(
      typeof l === "number" ? pseudoRandom(l, seed * 1000 + i + 1) : l,
      options.layerMediaType ?? MT.dockerLayerGzip,
    )
  );
  const config = blob(
    jsonBytes({
      architecture: options.architecture ?? "amd64",
      os: "linux",
      config: { Cmd: ["/bin/sh"] },
      rootfs: { type: "layers", diff_ids: layers.map((l) => l.digest) },
      history: layers.map((_, i) => ({ created_by: `layer ${i}` })),
    }),
    options.configMediaType ?? MT.dockerConfig,
  );
  const manifestMediaType = options.manifestMediaType ?? MT.dockerManifest;
  const manifest = blob(
    jsonBytes({
      schemaVersion: 2,
      mediaType: manifestMediaType,
      config: { mediaType: config.mediaType, digest: config.digest, size: config.size },
      layers: layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.size })),
    }),
    manifestMediaType,
  );
  const image: TestImage = {
    repository,
    tag,
    config,
    layers,
    manifest,
    blobs: new Map([config, ...layers].map((b) => [b.digest, b.bytes])),
    manifests: new Map(),
  };
  putManifest(image, tag, manifest);
  putManifest(image, manifest.digest, manifest);
  return image;
}

/** Serves `manifest` under `repository:reference` of `image`. */
export function putManifest(image: TestImage, reference: string, manifest: StoredManifest): void {
  image.manifests.set(`${image.repository}:${reference}`, {
    bytes: manifest.bytes,
    mediaType: manifest.mediaType,
  });
}

/** An index (OCI or Docker list) over `entries`, as a blob. */
export function buildIndex(
  entries: { manifest: Blob; platform?: Record<string, string> }[],
  mediaType: string = MT.ociIndex,
): Blob {
  return blob(
    jsonBytes({
      schemaVersion: 2,
      mediaType,
      manifests: entries.map((e) => ({
        mediaType: e.manifest.mediaType,
        digest: e.manifest.digest,
        size: e.manifest.size,
        platform: e.platform ?? { os: "linux", architecture: "amd64" },
      })),
    }),
    mediaType,
  );
}

/** Wraps a manifest body as a blob (digest and size of exactly these bytes). */
export function manifestBlob(value: unknown, mediaType: string): Blob {
  return blob(jsonBytes(value), mediaType);
}

/** What a verified archive must contain. */
export interface ExpectedArchive {
  configDigest: string;
  layerDigests: string[];
}

/** The expectation for a plain {@link TestImage}. */
export function expectedArchive(image: TestImage): ExpectedArchive {
  return { configDigest: image.config.digest, layerDigests: image.layers.map((l) => l.digest) };
}

const decoder = new TextDecoder();

function cString(bytes: Uint8Array): string {
  const end = bytes.indexOf(0);
  return decoder.decode(end < 0 ? bytes : bytes.subarray(0, end));
}

function tarSize(field: Uint8Array): number {
  if (field[0] & 0x80) {
    let n = 0;
    for (let i = 1; i < field.length; i++) n = n * 256 + field[i];
    return n;
  }
  const text = cString(field).trim();
  return text === "" ? 0 : parseInt(text, 8);
}

/**
 * Reads the regular files of a tar (ustar with prefix, pax `path`, GNU long names). Throws on
 * anything malformed: a corrupt archive must not pass for a good one.
 */
export function readTar(bytes: Uint8Array): Map<string, Uint8Array> {
  const files = new Map<string, Uint8Array>();
  let offset = 0;
  let longName: string | undefined;
  while (offset + 512 <= bytes.byteLength) {
    const header = bytes.subarray(offset, offset + 512);
    if (header.every((b) => b === 0)) return files;
    let sum = 0;
    for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 32 : header[i];
    const stored = parseInt(cString(header.subarray(148, 156)).trim(), 8);
    if (stored !== sum) throw new Error(`tar: bad header checksum at offset ${offset}`);
    const size = tarSize(header.subarray(124, 136));
    const type = String.fromCharCode(header[156] || 48);
    const prefix = cString(header.subarray(345, 500));
    let name = cString(header.subarray(0, 100));
    if (prefix) name = `${prefix}/${name}`;
    if (longName !== undefined) {
      name = longName;
      longName = undefined;
    }
    const dataStart = offset + 512;
    if (dataStart + size > bytes.byteLength) throw new Error(`tar: ${name} is truncated`);
    const data = bytes.subarray(dataStart, dataStart + size);
    if (type === "L") longName = cString(data);
    else if (type === "x") {
      const path = decoder.decode(data).match(/^\d+ path=(.*)$/m);
      if (path) longName = path[1];
    } else if (type === "0" || type === "\0") {
      if (files.has(name)) throw new Error(`tar: ${name} appears twice`);
      files.set(name, data);
    }
    offset = dataStart + Math.ceil(size / 512) * 512;
  }
  throw new Error("tar: no end-of-archive marker");
}

/**
 * Checks a docker-archive: it parses, `manifest.json` names a config and layers that are in
 * it, every `blobs/<alg>/<hex>` member hashes to its name, and (when given) the config and
 * layers are the expected ones. Returns the problems found (empty when it verifies).
 */
export async function verifyArchive(path: string, expected?: ExpectedArchive): Promise<string[]> {
  const problems: string[] = [];
  let files: Map<string, Uint8Array>;
  try {
    files = readTar(await Deno.readFile(path));
  } catch (e) {
    return [`archive does not parse: ${(e as Error).message}`];
  }
  for (const [name, data] of files) {
    const m = name.match(/^blobs\/sha256\/([0-9a-f]{64})$/);
    if (m && sha256(data) !== `sha256:${m[1]}`) problems.push(`archive member ${name} is corrupt`);
  }
  const manifestJson = files.get("manifest.json");
  if (!manifestJson) return [...problems, "archive has no manifest.json"];
  let entries: { Config?: string; Layers?: string[]; RepoTags?: string[] }[];
  try {
    entries = JSON.parse(decoder.decode(manifestJson));
  } catch {
    return [...problems, "manifest.json is not JSON"];
  }
  if (!Array.isArray(entries) || entries.length !== 1) {
    return [...problems, "manifest.json does not hold one image"];
  }
  const entry = entries[0];
  const members = [entry.Config, ...(entry.Layers ?? [])];
  for (const member of members) {
    if (typeof member !== "string" || !files.has(member)) {
      problems.push(`manifest.json names ${member}, which is not in the archive`);
    }
  }
  if (!Array.isArray(entry.RepoTags) || entry.RepoTags.length === 0) {
    problems.push("manifest.json has no RepoTags");
  }
  if (expected) {
    const name = (d: string) => `blobs/${d.replace(":", "/")}`;
    if (entry.Config !== name(expected.configDigest)) {
      problems.push(`Config is ${entry.Config}, expected ${name(expected.configDigest)}`);
    }
    const layers = JSON.stringify(entry.Layers);
    const want = JSON.stringify(expected.layerDigests.map(name));
    if (layers !== want) problems.push(`Layers are ${layers}, expected ${want}`);
  }
  return problems;
}

/** Every regular file under `dir` (relative paths, sorted), recursively. */
export async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (sub: string) => {
    for await (const entry of Deno.readDir(sub ? `${dir}/${sub}` : dir)) {
      const rel = sub ? `${sub}/${entry.name}` : entry.name;
      if (entry.isDirectory) await walk(rel);
      else out.push(rel);
    }
  };
  await walk("");
  return out.sort();
}

/**
 * Checks a blob cache after a pull, whatever its outcome: every file under `blobs/` hashes to its
 * name; `partial/` holds only `<hex>` + `<hex>.json` pairs of valid names; `tmp/` is empty.
 */
export async function verifyCache(root: string): Promise<string[]> {
  const problems: string[] = [];
  let files: string[];
  try {
    files = await listFiles(root);
  } catch (e) {
    return [`cache ${root} cannot be listed: ${(e as Error).message}`];
  }
  const partials = new Set(files.filter((f) => f.startsWith("partial/")));
  for (const file of files) {
    const [area] = file.split("/");
    if (area === "blobs") {
      const m = file.match(/^blobs\/(sha256|sha512)\/([0-9a-f]+)$/);
      if (!m) {
        problems.push(`cache holds a stray file ${file}`);
        continue;
      }
      const data = await Deno.readFile(`${root}/${file}`);
      const actual = `${m[1]}:${createHash(m[1]).update(data).digest("hex")}`;
      if (actual !== `${m[1]}:${m[2]}`) problems.push(`cache blob ${file} is corrupt`);
    } else if (area === "partial") {
      const m = file.match(/^partial\/(sha256\/[0-9a-f]{64}|sha512\/[0-9a-f]{128})(\.json)?$/);
      if (!m) problems.push(`cache holds a stray partial file ${file}`);
      else if (!partials.has(m[2] ? `partial/${m[1]}` : `partial/${m[1]}.json`)) {
        problems.push(`partial ${file} has no ${m[2] ? "data" : "resume information"}`);
      }
    } else if (area === "tmp") {
      problems.push(`cache tmp/ still holds ${file}`);
    } else if (area === "manifests") {
      // A manifest or index: its content type, a newline, then bytes hashing to the name.
      const m = file.match(/^manifests\/sha256\/([0-9a-f]{64})$/);
      if (!m) {
        problems.push(`cache holds a stray manifest file ${file}`);
        continue;
      }
      const raw = await Deno.readFile(`${root}/${file}`);
      const body = raw.subarray(raw.indexOf(0x0a) + 1);
      if (createHash("sha256").update(body).digest("hex") !== m[1]) {
        problems.push(`cached manifest ${file} is corrupt`);
      }
    } else if (area === "registries" || area === "tags") {
      if (!/^(registries|tags)\/sha256\/[0-9a-f]{64}$/.test(file)) {
        problems.push(`cache holds a stray file ${file}`);
      }
    } else if (area !== "locks" && area !== "diffids") {
      problems.push(`cache holds an unexpected file ${file}`);
    }
  }
  return problems;
}

/** A directory's entries (recursively): relative path → "dir" or the sha256 of the file. */
export async function snapshot(dir: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const walk = async (sub: string) => {
    for await (const entry of Deno.readDir(sub ? `${dir}/${sub}` : dir)) {
      const rel = sub ? `${sub}/${entry.name}` : entry.name;
      if (entry.isDirectory) {
        out.set(rel, "dir");
        await walk(rel);
      } else {
        let hash = "unreadable";
        try {
          hash = sha256(await Deno.readFile(`${dir}/${rel}`));
        } catch { /* reported as unreadable */ }
        out.set(rel, entry.isSymlink ? "symlink" : hash);
      }
    }
  };
  await walk("");
  return out;
}

/** Differences between two snapshots, as readable lines. */
export function snapshotDiff(before: Map<string, string>, after: Map<string, string>): string[] {
  const diff: string[] = [];
  for (const [path, hash] of after) {
    if (!before.has(path)) diff.push(`left behind: ${path}`);
    else if (before.get(path) !== hash) diff.push(`changed: ${path}`);
  }
  for (const path of before.keys()) if (!after.has(path)) diff.push(`removed: ${path}`);
  return diff;
}
