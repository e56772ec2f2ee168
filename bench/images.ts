/**
 * Generated, deterministic benchmark images, cached on disk and pushed to a registry.
 *
 * - `nginx-like` (`bench/nginx-like:v1`): an OCI index with linux/amd64 and linux/arm64/v8
 *   entries; each platform has 7 gzip layers: two large ones of realistic compressible content
 *   (a mixture of text and binary-looking files, about 25 MB each compressed) and five tiny ones,
 *   about 54 MB per platform.
 * - `big` (`bench/big:v1`): a Docker schema2 manifest, linux/amd64, with one layer: a tar
 *   holding one 512 MiB file of random bytes, gzip-compressed (random data stays ~512 MiB).
 * - `many` (`bench/many:v1`): a Docker schema2 manifest, linux/amd64, 25 layers of about 3 MB
 *   each compressed.
 *
 * Every byte comes from a seeded xorshift128 generator, a fixed tar layout and node:zlib, so the
 * digests are stable (for a given Deno / zlib build). Blobs are cached under
 * `<cacheDir>/images/v<N>/`; a rerun only reads the small plan files.
 * @module
 */
import { join } from "node:path";
import { createHash } from "node:crypto";
import { gzipSync } from "node:zlib";
import { pushBlob, pushManifest } from "../tests/helpers/push.ts";

/** Bump when the generated content changes: old caches are then ignored. */
const GENERATOR_VERSION = 1;

/** The images this module can make. */
export const IMAGE_NAMES = ["nginx-like", "big", "many"] as const;
/** One of {@link IMAGE_NAMES}. */
export type ImageName = typeof IMAGE_NAMES[number];

const MT = {
  ociIndex: "application/vnd.oci.image.index.v1+json",
  ociManifest: "application/vnd.oci.image.manifest.v1+json",
  ociConfig: "application/vnd.oci.image.config.v1+json",
  ociLayer: "application/vnd.oci.image.layer.v1.tar+gzip",
  dockerManifest: "application/vnd.docker.distribution.manifest.v2+json",
  dockerConfig: "application/vnd.docker.container.image.v1+json",
  dockerLayer: "application/vnd.docker.image.rootfs.diff.tar.gzip",
} as const;

/** A blob of an image (layer, config or manifest). */
export interface BlobRef {
  digest: string;
  size: number;
}

/** A generated image, as recorded in its plan file. */
export interface BenchImage {
  name: ImageName;
  /** Repository, e.g. `bench/nginx-like`. */
  repo: string;
  tag: string;
  /** `repo:tag`. */
  reference: string;
  /** The platform the benchmarks pull. */
  platform: string;
  /** Every blob (layers and configs of every platform) to push, in push order. */
  blobs: BlobRef[];
  /** Manifest PUTs in order (children before the index); the last one is the tag. */
  manifests: { reference: string; digest: string; mediaType: string }[];
  /** What a pull of `platform` fetches: the manifests on the way, the config and the layers. */
  pull: { manifests: BlobRef[]; config: BlobRef; layers: BlobRef[] };
  /** Uncompressed size of the pulled layers (what decompressing pullers write). */
  uncompressedBytes: number;
}

/** Total bytes a pull of `image` downloads: manifests, config and layers. */
export function pullBytes(image: BenchImage): number {
  const { manifests, config, layers } = image.pull;
  return [...manifests, config, ...layers].reduce((sum, b) => sum + b.size, 0);
}

/** Where a blob of the cache lives. */
export function blobPath(cacheDir: string, digest: string): string {
  return join(imagesDir(cacheDir), "blobs", digest.replace(":", "-"));
}

function imagesDir(cacheDir: string): string {
  return join(cacheDir, "images", `v${GENERATOR_VERSION}`);
}

// ---------------------------------------------------------------------------------------------
// Deterministic bytes

/** xorshift128 (Marsaglia 2003), seeded from a string through SHA-256. */
export class Rng {
  #x: number;
  #y: number;
  #z: number;
  #w: number;

  constructor(seed: string) {
    const h = createHash("sha256").update(seed).digest();
    const view = new DataView(h.buffer, h.byteOffset, h.byteLength);
    this.#x = view.getUint32(0, true) || 1;
    this.#y = view.getUint32(4, true);
    this.#z = view.getUint32(8, true);
    this.#w = view.getUint32(12, true);
  }

  /** The next 32 random bits, as an unsigned integer. */
  next(): number {
    const t = this.#x ^ (this.#x << 11);
    this.#x = this.#y;
    this.#y = this.#z;
    this.#z = this.#w;
    this.#w = (this.#w ^ (this.#w >>> 19) ^ (t ^ (t >>> 8))) >>> 0;
    return this.#w;
  }

  /** An integer in [0, n). */
  below(n: number): number {
    return this.next() % n;
  }

  /** Fills `out` with random bytes (little-endian words, so the same on every host). */
  fill(out: Uint8Array): void {
    const words = Math.floor(out.byteLength / 4);
    if (out.byteOffset % 4 === 0) {
      const u32 = new Uint32Array(out.buffer, out.byteOffset, words);
      let x = this.#x, y = this.#y, z = this.#z, w = this.#w;
      for (let i = 0; i < words; i++) {
        const t = x ^ (x << 11);
        x = y;
        y = z;
        z = w;
        w = (w ^ (w >>> 19) ^ (t ^ (t >>> 8))) >>> 0;
        u32[i] = w;
      }
      this.#x = x;
      this.#y = y;
      this.#z = z;
      this.#w = w;
      // Uint32Array uses the host byte order; swap on big-endian hosts to stay deterministic.
      if (new Uint8Array(new Uint32Array([1]).buffer)[0] !== 1) {
        for (let i = 0; i < words * 4; i += 4) {
          [out[i], out[i + 1], out[i + 2], out[i + 3]] = [
            out[i + 3],
            out[i + 2],
            out[i + 1],
            out[i],
          ];
        }
      }
    } else {
      for (let i = 0; i < words * 4; i += 4) {
        const v = this.next();
        out[i] = v & 255;
        out[i + 1] = (v >>> 8) & 255;
        out[i + 2] = (v >>> 16) & 255;
        out[i + 3] = v >>> 24;
      }
    }
    for (let i = words * 4; i < out.byteLength; i++) out[i] = this.next() & 255;
  }
}

/**
 * Pseudo-words for text content: a skewed pick from a small fixed vocabulary; gzip makes it
 * about 3.4× smaller, like configuration files and documentation.
 */
class TextSource {
  readonly #words: Uint8Array[] = [];

  constructor(rng: Rng) {
    const letters = "etaoinshrdlucmfwypvbgkqjxz_0123456789";
    for (let i = 0; i < 512; i++) {
      const len = 2 + rng.below(10);
      const w = new Uint8Array(len);
      // Earlier letters are more likely (squared uniform), like English letter frequencies.
      for (let j = 0; j < len; j++) {
        const r = rng.below(1000) / 1000;
        w[j] = letters.charCodeAt(Math.floor(r * r * letters.length));
      }
      this.#words.push(w);
    }
  }

  /** Fills `out` with words separated by spaces, punctuation and newlines. */
  fill(rng: Rng, out: Uint8Array): void {
    let i = 0;
    let line = 0;
    while (i < out.byteLength) {
      const r = rng.next();
      // A squared uniform favours the first words of the vocabulary (Zipf-like).
      const u = (r & 0xfffff) / 0x100000;
      const index = Math.floor(512 * u * u);
      const word = this.#words[index];
      const n = Math.min(word.byteLength, out.byteLength - i);
      out.set(word.subarray(0, n), i);
      i += n;
      line += n;
      if (i >= out.byteLength) break;
      const sep = r >>> 28;
      if (line > 60 + (sep << 2)) {
        out[i++] = 10;
        line = 0;
      } else {
        out[i++] = sep === 0 ? 44 : sep === 1 ? 46 : 32;
        line++;
      }
    }
  }
}

/**
 * Binary-looking content, like compiled code: 64-byte blocks that are random (20%), drawn from a
 * small alphabet (40%), or copies of a recent block (40%). Gzip makes it about 2× smaller.
 */
function fillBinary(rng: Rng, out: Uint8Array): void {
  const alphabet = new Uint8Array(16);
  rng.fill(alphabet);
  alphabet[0] = 0;
  const block = new Uint8Array(64);
  for (let i = 0; i < out.byteLength; i += 64) {
    const n = Math.min(64, out.byteLength - i);
    const kind = rng.below(10);
    if (kind < 2 || i < 4096) {
      rng.fill(block);
      out.set(block.subarray(0, n), i);
    } else if (kind < 6) {
      for (let j = 0; j < n; j += 8) {
        const r = rng.next();
        const r2 = rng.next();
        for (let k = 0; k < 8 && j + k < n; k++) {
          out[i + j + k] = alphabet[((k < 4 ? r : r2) >>> ((k & 3) * 8)) & 15];
        }
      }
    } else {
      const back = 64 * (1 + rng.below(Math.min(511, i / 64)));
      out.copyWithin(i, i - back, i - back + n);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Tar

/** A file or directory of a layer. */
interface TarEntry {
  name: string;
  /** Absent for directories. */
  data?: Uint8Array;
  mode?: number;
}

const MTIME = 1_700_000_000;

function octal(value: number, width: number): string {
  return value.toString(8).padStart(width - 1, "0") + "\0";
}

function tarHeader(name: string, size: number, mode: number, dir: boolean): Uint8Array {
  if (name.length > 100) throw new Error(`tar name too long: ${name}`);
  const h = new Uint8Array(512);
  const put = (offset: number, text: string) => {
    for (let i = 0; i < text.length; i++) h[offset + i] = text.charCodeAt(i);
  };
  put(0, name);
  put(100, octal(mode, 8));
  put(108, octal(0, 8));
  put(116, octal(0, 8));
  put(124, octal(size, 12));
  put(136, octal(MTIME, 12));
  put(148, "        ");
  put(156, dir ? "5" : "0");
  put(257, "ustar\x0000");
  put(265, "root");
  put(297, "root");
  let sum = 0;
  for (const b of h) sum += b;
  put(148, sum.toString(8).padStart(6, "0") + "\0 ");
  return h;
}

/** A POSIX ustar archive of `entries` (in the given order), with fixed metadata. */
export function makeTar(entries: TarEntry[]): Uint8Array {
  let total = 1024;
  for (const e of entries) total += 512 + Math.ceil((e.data?.byteLength ?? 0) / 512) * 512;
  const out = new Uint8Array(total);
  let offset = 0;
  for (const e of entries) {
    const dir = e.data === undefined;
    const size = e.data?.byteLength ?? 0;
    out.set(
      tarHeader(dir ? `${e.name}/` : e.name, size, e.mode ?? (dir ? 0o755 : 0o644), dir),
      offset,
    );
    offset += 512;
    if (e.data) {
      out.set(e.data, offset);
      offset += Math.ceil(size / 512) * 512;
    }
  }
  return out;
}

/** Adds the parent directories of every file, sorted, so the tar looks like a real layer. */
function withDirectories(files: TarEntry[]): TarEntry[] {
  const dirs = new Set<string>();
  for (const f of files) {
    const parts = f.name.split("/");
    for (let i = 1; i < parts.length; i++) dirs.add(parts.slice(0, i).join("/"));
  }
  const all: TarEntry[] = [...[...dirs].map((name) => ({ name })), ...files];
  return all.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

// ---------------------------------------------------------------------------------------------
// Layers

interface Layer {
  gz: Uint8Array;
  diffId: string;
  uncompressed: number;
}

function sha256(bytes: Uint8Array): string {
  return `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
}

function gzipLayer(tar: Uint8Array, level: number): Layer {
  return {
    gz: new Uint8Array(gzipSync(tar, { level })),
    diffId: sha256(tar),
    uncompressed: tar.byteLength,
  };
}

const BINARY_DIRS = ["usr/lib/x86_64-linux-gnu", "usr/bin", "usr/sbin", "usr/lib/nginx/modules"];
const TEXT_DIRS = ["usr/share/doc", "etc", "usr/share/perl5", "usr/share/zoneinfo-text"];

/**
 * A layer of about `targetBytes` uncompressed: files of log-uniform sizes (4 KiB – 2 MiB),
 * `binaryShare` of the bytes binary-looking, the rest text.
 */
function contentLayer(seed: string, targetBytes: number, binaryShare: number): Layer {
  const rng = new Rng(seed);
  const text = new TextSource(rng);
  const files: TarEntry[] = [];
  let total = 0;
  for (let i = 0; total < targetBytes; i++) {
    const size = Math.min(
      targetBytes - total,
      Math.round(4096 * Math.pow(512, rng.below(10_000) / 10_000)),
    );
    const binary = rng.below(10_000) / 10_000 < binaryShare;
    const data = new Uint8Array(Math.max(size, 1));
    if (binary) fillBinary(rng, data);
    else text.fill(rng, data);
    const dirs = binary ? BINARY_DIRS : TEXT_DIRS;
    const dir = dirs[i % dirs.length];
    const name = binary ? `${dir}/lib${seed.length}-${i}.so.1` : `${dir}/pkg-${i}/file-${i}.txt`;
    files.push({ name, data, mode: binary ? 0o755 : 0o644 });
    total += data.byteLength;
  }
  return gzipLayer(makeTar(withDirectories(files)), 6);
}

/** A tiny layer like nginx's entrypoint scripts. */
function tinyLayer(seed: string, index: number): Layer {
  const rng = new Rng(seed);
  const body = new Uint8Array(200 + rng.below(3000));
  new TextSource(rng).fill(rng, body);
  const script = new TextEncoder().encode(`#!/bin/sh\n# ${seed}\n`);
  const data = new Uint8Array(script.byteLength + body.byteLength);
  data.set(script);
  data.set(body, script.byteLength);
  const name = index === 0
    ? "docker-entrypoint.sh"
    : `docker-entrypoint.d/${10 * index}-bench-${index}.sh`;
  return gzipLayer(makeTar(withDirectories([{ name, data, mode: 0o755 }])), 6);
}

/** One layer: a tar with `/data/random.bin` of `size` random bytes. */
function randomLayer(seed: string, size: number): Layer {
  const header = 512 + 512; // the directory and the file
  const tar = new Uint8Array(header + Math.ceil(size / 512) * 512 + 1024);
  tar.set(tarHeader("data/", 0, 0o755, true), 0);
  tar.set(tarHeader("data/random.bin", size, 0o644, false), 512);
  new Rng(seed).fill(tar.subarray(header, header + size));
  // Default gzip level, as `docker push` would: random data comes out in stored blocks.
  return gzipLayer(tar, 6);
}

// ---------------------------------------------------------------------------------------------
// Images

interface PlatformSpec {
  os: string;
  architecture: string;
  variant?: string;
}

const encoder = new TextEncoder();
const json = (v: unknown) => encoder.encode(JSON.stringify(v, null, 2));

/** Collects blobs to write into the cache. */
class Writer {
  readonly blobs: BlobRef[] = [];
  readonly manifests: BenchImage["manifests"] = [];
  readonly #seen = new Set<string>();

  constructor(readonly cacheDir: string) {}

  async blob(bytes: Uint8Array): Promise<BlobRef> {
    const digest = sha256(bytes);
    const ref = { digest, size: bytes.byteLength };
    if (!this.#seen.has(digest)) {
      this.#seen.add(digest);
      this.blobs.push(ref);
      await Deno.writeFile(blobPath(this.cacheDir, digest), bytes);
    }
    return ref;
  }

  async manifest(reference: string, bytes: Uint8Array, mediaType: string): Promise<BlobRef> {
    const digest = sha256(bytes);
    await Deno.writeFile(blobPath(this.cacheDir, digest), bytes);
    this.manifests.push({ reference, digest, mediaType });
    return { digest, size: bytes.byteLength };
  }
}

interface BuiltManifest {
  manifest: BlobRef;
  /** The manifest's bytes; the caller writes them (by digest or under a tag). */
  bytes: Uint8Array;
  mediaType: string;
  config: BlobRef;
  layers: BlobRef[];
  uncompressed: number;
}

async function platformManifest(
  w: Writer,
  layers: Layer[],
  platform: PlatformSpec,
  oci: boolean,
  what: string,
): Promise<BuiltManifest> {
  const layerRefs: BlobRef[] = [];
  for (const l of layers) layerRefs.push(await w.blob(l.gz));
  const config = json({
    architecture: platform.architecture,
    os: platform.os,
    ...(platform.variant ? { variant: platform.variant } : {}),
    created: "2024-01-01T00:00:00Z",
    config: {
      Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
      Cmd: ["/docker-entrypoint.sh"],
    },
    rootfs: { type: "layers", diff_ids: layers.map((l) => l.diffId) },
    history: layers.map((_, i) => ({
      created: "2024-01-01T00:00:00Z",
      created_by: `imgpull benchmark ${what} layer ${i + 1}`,
    })),
  });
  const configRef = await w.blob(config);
  const mediaType = oci ? MT.ociManifest : MT.dockerManifest;
  const layerType = oci ? MT.ociLayer : MT.dockerLayer;
  const manifestBytes = json({
    schemaVersion: 2,
    mediaType,
    config: {
      mediaType: oci ? MT.ociConfig : MT.dockerConfig,
      size: configRef.size,
      digest: configRef.digest,
    },
    layers: layerRefs.map((l) => ({ mediaType: layerType, size: l.size, digest: l.digest })),
  });
  return {
    manifest: { digest: sha256(manifestBytes), size: manifestBytes.byteLength },
    mediaType,
    config: configRef,
    layers: layerRefs,
    bytes: manifestBytes,
    uncompressed: layers.reduce((s, l) => s + l.uncompressed, 0),
  };
}

async function generate(name: ImageName, cacheDir: string): Promise<BenchImage> {
  const w = new Writer(cacheDir);
  const repo = `bench/${name}`;
  const tag = "v1";
  const amd64: PlatformSpec = { os: "linux", architecture: "amd64" };
  if (name === "nginx-like") {
    const platforms: PlatformSpec[] = [amd64, {
      os: "linux",
      architecture: "arm64",
      variant: "v8",
    }];
    const built: BuiltManifest[] = [];
    for (const p of platforms) {
      const s = `nginx-like/${p.architecture}`;
      const layers = [
        contentLayer(`${s}/base`, 77_000_000, 0.45),
        contentLayer(`${s}/nginx`, 66_500_000, 0.45),
        ...[0, 1, 2, 3, 4].map((i) => tinyLayer(`${s}/tiny-${i}`, i)),
      ];
      const m = await platformManifest(w, layers, p, true, name);
      await w.manifest(m.manifest.digest, m.bytes, m.mediaType);
      built.push(m);
    }
    const index = json({
      schemaVersion: 2,
      mediaType: MT.ociIndex,
      manifests: built.map((m, i) => ({
        mediaType: m.mediaType,
        size: m.manifest.size,
        digest: m.manifest.digest,
        platform: platforms[i],
      })),
    });
    const indexRef = await w.manifest(tag, index, MT.ociIndex);
    return plan(name, repo, tag, w, [indexRef, built[0].manifest], built[0]);
  }
  const layers = name === "big"
    ? [randomLayer("big/random", 512 * 1024 * 1024)]
    : Array.from({ length: 25 }, (_, i) => contentLayer(`many/${i}`, 8_000_000, 0.45));
  const m = await platformManifest(w, layers, amd64, false, name);
  await w.manifest(tag, m.bytes, m.mediaType);
  return plan(name, repo, tag, w, [m.manifest], m);
}

function plan(
  name: ImageName,
  repo: string,
  tag: string,
  w: Writer,
  manifests: BlobRef[],
  m: BuiltManifest,
): BenchImage {
  return {
    name,
    repo,
    tag,
    reference: `${repo}:${tag}`,
    platform: "linux/amd64",
    blobs: w.blobs,
    manifests: w.manifests,
    pull: { manifests, config: m.config, layers: m.layers },
    uncompressedBytes: m.uncompressed,
  };
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * Returns the plan of image `name`, generating its blobs into the cache first unless a
 * complete earlier generation is there. `log` gets progress lines.
 */
export async function prepareImage(
  name: ImageName,
  cacheDir: string,
  log: (line: string) => void = () => {},
): Promise<BenchImage> {
  const dir = imagesDir(cacheDir);
  await Deno.mkdir(join(dir, "blobs"), { recursive: true });
  const planPath = join(dir, `${name}.json`);
  if (await exists(planPath)) {
    const image = JSON.parse(await Deno.readTextFile(planPath)) as BenchImage;
    const paths = [...image.blobs, ...image.manifests].map((b) => blobPath(cacheDir, b.digest));
    if ((await Promise.all(paths.map(exists))).every(Boolean)) return image;
  }
  const started = performance.now();
  log(`generating image ${name} into ${dir} …`);
  const image = await generate(name, cacheDir);
  await Deno.writeTextFile(planPath, JSON.stringify(image, null, 2));
  log(
    `generated ${name}: ${image.pull.layers.length} layers, ${
      (pullBytes(image) / 1e6).toFixed(1)
    } MB compressed for ${image.platform}, in ${
      ((performance.now() - started) / 1000).toFixed(1)
    } s`,
  );
  return image;
}

/**
 * Pushes `image` to a registry that accepts anonymous pushes (e.g. a `mode: "http"` registry of
 * tests/helpers/registry.ts). Blobs the registry already has are not read from the cache.
 */
export async function pushImage(
  registryUrl: string,
  image: BenchImage,
  cacheDir: string,
): Promise<void> {
  for (const blob of image.blobs) {
    const head = await fetch(new URL(`/v2/${image.repo}/blobs/${blob.digest}`, registryUrl), {
      method: "HEAD",
    });
    await head.body?.cancel();
    if (head.status === 200) continue;
    await pushBlob(registryUrl, image.repo, await Deno.readFile(blobPath(cacheDir, blob.digest)));
  }
  for (const m of image.manifests) {
    const bytes = await Deno.readFile(blobPath(cacheDir, m.digest));
    await pushManifest(registryUrl, image.repo, m.reference, bytes, m.mediaType);
  }
}

if (import.meta.main) {
  // `deno run -A bench/images.ts [CACHE_DIR] [NAME…]`: generate and describe the images.
  const cacheDir = Deno.args[0] ?? join(Deno.env.get("TMPDIR") ?? "/tmp", "imgpull-bench");
  const names = (Deno.args.length > 1 ? Deno.args.slice(1) : [...IMAGE_NAMES]) as ImageName[];
  for (const name of names) {
    const image = await prepareImage(name, cacheDir, console.log);
    console.log(
      `${image.reference}: ${image.pull.layers.length} layers (${
        image.pull.layers.map((l) => (l.size / 1e6).toFixed(2)).join(", ")
      } MB), ${(pullBytes(image) / 1e6).toFixed(1)} MB to pull, ${
        (image.uncompressedBytes / 1e6).toFixed(1)
      } MB uncompressed`,
    );
  }
}
