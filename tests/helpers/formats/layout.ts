/**
 * Independent readers of what the format writers produce (no lib/ code): an OCI image layout as a
 * directory or as a tar, and a docker-archive with several images. The checks here are the
 * layout-level facts consumers rely on; the consumers themselves run in ./consumers.ts.
 * @module
 */
import { createHash } from "node:crypto";
import { join } from "node:path";
import { readTar, type TarEntry } from "../corpus/tar.ts";

/** Media types of indexes and manifests (spelled out: no lib/ code in the checks). */
export const INDEX_TYPES = [
  "application/vnd.oci.image.index.v1+json",
  "application/vnd.docker.distribution.manifest.list.v2+json",
];
/** Media types of image manifests. */
export const MANIFEST_TYPES = [
  "application/vnd.oci.image.manifest.v1+json",
  "application/vnd.docker.distribution.manifest.v2+json",
];

/** A descriptor as it appears in indexes and manifests. */
export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  platform?: { os: string; architecture: string; variant?: string };
  annotations?: Record<string, string>;
}

/** An OCI image layout read into memory. */
export interface Layout {
  /** Text of `oci-layout`. */
  ociLayout: string;
  /** `index.json` parsed. */
  index: { schemaVersion: number; mediaType?: string; manifests: Descriptor[] };
  /** Blobs by digest (`sha256:<hex>`), exactly as stored. */
  blobs: Map<string, Uint8Array>;
  /** Every path in the layout (files and directories), relative, sorted. */
  paths: string[];
  /** Tar only: the raw member names, in archive order (to see prefixes and duplicates). */
  members?: string[];
}

/** `sha256:<hex>` of some bytes. */
export function sha256(bytes: Uint8Array): string {
  return `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
}

const decoder = new TextDecoder();

/** Parses JSON bytes. */
export function parseJson<T = Record<string, unknown>>(bytes: Uint8Array): T {
  return JSON.parse(decoder.decode(bytes)) as T;
}

function blobDigest(path: string): string | undefined {
  const m = path.match(/^blobs\/([a-z0-9]+)\/([0-9a-f]+)$/);
  return m ? `${m[1]}:${m[2]}` : undefined;
}

/** Reads an OCI layout directory. Throws when `oci-layout` or `index.json` is missing. */
export async function readLayoutDir(dir: string): Promise<Layout> {
  const files = new Map<string, Uint8Array>();
  const paths: string[] = [];
  const walk = async (abs: string, rel: string): Promise<void> => {
    for await (const e of Deno.readDir(abs)) {
      const path = rel ? `${rel}/${e.name}` : e.name;
      paths.push(path);
      const info = await Deno.lstat(join(abs, e.name));
      if (info.isDirectory) await walk(join(abs, e.name), path);
      else if (info.isFile) files.set(path, await Deno.readFile(join(abs, e.name)));
      else throw new Error(`${path} in ${dir} is neither a file nor a directory`);
    }
  };
  await walk(dir, "");
  return layoutFrom(files, paths.sort());
}

/** Reads an OCI layout from a tar file (or the tar's bytes). */
export async function readLayoutTar(tar: string | Uint8Array): Promise<Layout> {
  const bytes = typeof tar === "string" ? await Deno.readFile(tar) : tar;
  const files = new Map<string, Uint8Array>();
  const entries = readTar(bytes);
  for (const e of entries) {
    if (e.typeflag === "0" || e.typeflag === "7") {
      files.set(e.path, bytes.subarray(e.dataOffset, e.dataOffset + e.size));
    }
  }
  const layout = layoutFrom(files, [...new Set(entries.map((e) => e.path))].sort());
  layout.members = rawMemberNames(bytes, entries);
  return layout;
}

/** Member names as written (readTar normalises `./` away; we want to see it). */
function rawMemberNames(bytes: Uint8Array, entries: TarEntry[]): string[] {
  return entries.map((e) => {
    const h = bytes.subarray(e.dataOffset - 512, e.dataOffset);
    const raw = decoder.decode(h.subarray(0, 100)).replace(/\0.*$/s, "");
    const prefix = decoder.decode(h.subarray(345, 500)).replace(/\0.*$/s, "");
    // Long names come from PAX or GNU headers; their normalised path is what we have.
    return raw.length === 100 || prefix ? e.path : raw;
  });
}

function layoutFrom(files: Map<string, Uint8Array>, paths: string[]): Layout {
  const ociLayout = files.get("oci-layout");
  const index = files.get("index.json");
  if (!ociLayout) throw new Error(`no oci-layout file (paths: ${paths.join(", ")})`);
  if (!index) throw new Error(`no index.json (paths: ${paths.join(", ")})`);
  const blobs = new Map<string, Uint8Array>();
  for (const [path, data] of files) {
    const digest = blobDigest(path);
    if (digest) blobs.set(digest, data);
  }
  return { ociLayout: decoder.decode(ociLayout), index: parseJson(index), blobs, paths };
}

/** What a layout refers to, walked from index.json. */
export interface Reachable {
  /** Every digest reachable from index.json (indexes, manifests, configs, layers). */
  digests: Set<string>;
  /** Image manifests reachable (not indexes), by digest. */
  manifests: Map<string, { mediaType: string; config: Descriptor; layers: Descriptor[] }>;
}

/**
 * Problems of a layout: `oci-layout` content, blobs that do not hash to their name, a descriptor
 * whose size or blob is wrong or missing, blobs nothing refers to, files outside the layout.
 */
export function layoutProblems(layout: Layout): { problems: string[]; reachable: Reachable } {
  const problems: string[] = [];
  const reachable: Reachable = { digests: new Set(), manifests: new Map() };
  try {
    if (JSON.parse(layout.ociLayout).imageLayoutVersion !== "1.0.0") {
      problems.push(`oci-layout is ${layout.ociLayout}`);
    }
  } catch {
    problems.push(`oci-layout is not JSON: ${layout.ociLayout}`);
  }
  for (const [digest, bytes] of layout.blobs) {
    if (sha256(bytes) !== digest) problems.push(`blob ${digest} does not hash to its name`);
  }
  const visit = (d: Descriptor, from: string) => {
    const bytes = layout.blobs.get(d.digest);
    if (!bytes) {
      problems.push(`${from} refers to ${d.digest}, which is not in blobs/`);
      return;
    }
    if (bytes.byteLength !== d.size) {
      problems.push(`${d.digest}: size ${bytes.byteLength}, descriptor says ${d.size}`);
    }
    if (reachable.digests.has(d.digest)) return;
    reachable.digests.add(d.digest);
    if (INDEX_TYPES.includes(d.mediaType)) {
      const child = parseJson<{ manifests: Descriptor[] }>(bytes);
      for (const m of child.manifests) visit(m, d.digest);
    } else if (MANIFEST_TYPES.includes(d.mediaType)) {
      const m = parseJson<{ config: Descriptor; layers: Descriptor[] }>(bytes);
      reachable.manifests.set(d.digest, { mediaType: d.mediaType, ...m });
      visit(m.config, d.digest);
      for (const l of m.layers ?? []) visit(l, d.digest);
    }
  };
  for (const d of layout.index.manifests ?? []) visit(d, "index.json");
  for (const digest of layout.blobs.keys()) {
    if (!reachable.digests.has(digest)) problems.push(`blob ${digest} is not referenced`);
  }
  const allowed = /^(oci-layout|index\.json|blobs|blobs\/sha256|blobs\/sha256\/[0-9a-f]{64})$/;
  for (const p of layout.paths) {
    if (!allowed.test(p)) problems.push(`unexpected path ${p} in the layout`);
  }
  return { problems, reachable };
}

/** One image of a docker-archive's manifest.json. */
export interface ArchiveEntry {
  Config: string;
  RepoTags: string[] | null;
  Layers: string[];
}

/** A docker-archive (possibly with several images) read into memory. */
export interface DockerArchive {
  manifest: ArchiveEntry[];
  repositories?: Record<string, Record<string, string>>;
  /** Regular-file members by normalised path. */
  files: Map<string, Uint8Array>;
  /** Every entry (files, directories, links) in archive order, raw names. */
  members: string[];
  entries: TarEntry[];
}

/** Reads a docker-archive from a file or bytes. */
export async function readDockerArchive(tar: string | Uint8Array): Promise<DockerArchive> {
  const bytes = typeof tar === "string" ? await Deno.readFile(tar) : tar;
  const entries = readTar(bytes);
  const files = new Map<string, Uint8Array>();
  for (const e of entries) {
    if (e.typeflag === "0" || e.typeflag === "7") {
      files.set(e.path, bytes.subarray(e.dataOffset, e.dataOffset + e.size));
    }
  }
  const manifest = files.get("manifest.json");
  if (!manifest) throw new Error("no manifest.json in the archive");
  const repositories = files.get("repositories");
  return {
    manifest: parseJson<ArchiveEntry[]>(manifest),
    repositories: repositories ? parseJson(repositories) : undefined,
    files,
    members: rawMemberNames(bytes, entries),
    entries,
  };
}

/**
 * Problems of a docker-archive: a member named twice, two members with the same content (a blob
 * stored twice), a manifest.json path that is not a member.
 */
export function dockerArchiveProblems(archive: DockerArchive): string[] {
  const problems: string[] = [];
  const seen = new Set<string>();
  for (const e of archive.entries) {
    if (seen.has(e.path)) problems.push(`member ${e.path} appears twice`);
    seen.add(e.path);
  }
  const byContent = new Map<string, string>();
  for (const [path, data] of archive.files) {
    // Small JSON documents may coincide (two identical `json` files); blobs may not.
    if (data.byteLength < 1024) continue;
    const digest = sha256(data);
    const other = byContent.get(digest);
    if (other) problems.push(`${path} and ${other} hold the same ${data.byteLength} bytes`);
    byContent.set(digest, path);
  }
  for (const image of archive.manifest) {
    for (const p of [image.Config, ...image.Layers]) {
      if (!archive.files.has(p)) problems.push(`manifest.json names ${p}, not in the archive`);
    }
  }
  return problems;
}

/** Lists a directory tree (relative paths, sorted), or [] when it does not exist. */
export async function listTree(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (abs: string, rel: string): Promise<void> => {
    for await (const e of Deno.readDir(abs)) {
      const path = rel ? `${rel}/${e.name}` : e.name;
      out.push(path);
      if (e.isDirectory) await walk(join(abs, e.name), path);
    }
  };
  try {
    await walk(dir, "");
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  return out.sort();
}

/** SHA-256 of every regular file under `dir`, by relative path (to compare two runs). */
export async function treeHashes(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const path of await listTree(dir)) {
    const info = await Deno.lstat(join(dir, path));
    if (info.isFile) out[path] = sha256(await Deno.readFile(join(dir, path)));
  }
  return out;
}
