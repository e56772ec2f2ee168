/**
 * The docker-archive format: the tar that `docker load` and `podman load` read, for one image
 * or several (as `docker save a b` writes). Layout (all names relative, no `./`):
 *
 * ```
 * blobs/sha256/<config hex>      each config, byte for byte (image ID = its digest)
 * blobs/sha256/<layer hex>       each layer once, as the registry sent it (gzip stays gzip)
 * manifest.json                  [{"Config","RepoTags","Layers"[,"LayerSources"]}, …] one per image
 * repositories                   {"<name>":{"<tag>":"<image id hex>"}} for every image
 * ```
 *
 * The entries are placed by the layout engine ({@link ./assembly.ts}): laid out at once in a
 * hidden temporary file, layer bytes written straight to their offsets, renamed when complete.
 *
 * @example
 * ```ts
 * const archive = await ArchiveFile.create("nginx.tar", image);
 * try {
 *   for (const layer of image.layers) await archive.copyIn(layer.digest, layer.path!);
 *   await archive.commit();
 * } catch (e) {
 *   await archive.discard();
 *   throw e;
 * }
 * ```
 * @module
 */
import { parseDigest } from "../digest.ts";
import type { Descriptor } from "../manifest.ts";
import { type AssemblyEntry, type PlacedEntry, planTar, TarAssembly } from "./assembly.ts";

export { removeAbandonedArchives } from "./assembly.ts";

/** One layer of the archive. */
export interface ArchiveLayer {
  /** Digest of the bytes archived (names the member). */
  digest: string;
  size: number;
  /** Where the bytes are on disk, when they are (not for layers written in place). */
  path?: string;
  /** For foreign layers: the descriptor, recorded in `LayerSources` like `docker save`. */
  foreignSource?: { diffId: string; descriptor: Descriptor };
}

/** Everything one image contributes to an archive. */
export interface ArchiveImage {
  /** `name:tag` entries, e.g. `nginx:latest`; empty loads the image untagged. */
  repoTags: string[];
  configDigest: string;
  configBytes: Uint8Array;
  /** Bottom layer first, one per diff_id. */
  layers: ArchiveLayer[];
}

/** `blobs/<algorithm>/<hex>`: where a blob lives in the archive (and in an OCI layout). */
export function blobName(digest: string): string {
  const d = parseDigest(digest);
  return `blobs/${d.algorithm}/${d.hex}`;
}

function asList(images: ArchiveImage | readonly ArchiveImage[]): readonly ArchiveImage[] {
  return Array.isArray(images) ? images as readonly ArchiveImage[] : [images as ArchiveImage];
}

/** Splits `name:tag` at the tag's colon (a registry port has a colon too). */
function splitRepoTag(repoTag: string): [string, string] {
  const colon = repoTag.lastIndexOf(":");
  return [repoTag.slice(0, colon), repoTag.slice(colon + 1)];
}

/** The `manifest.json` and `repositories` documents for one image or several. */
export function archiveDocuments(
  images: ArchiveImage | readonly ArchiveImage[],
): { manifest: string; repositories: string } {
  const list = asList(images);
  const repositories: Record<string, Record<string, string>> = {};
  const manifest = list.map((image) => {
    const entry: Record<string, unknown> = {
      Config: blobName(image.configDigest),
      RepoTags: image.repoTags,
      Layers: image.layers.map((l) => blobName(l.digest)),
    };
    const sources = image.layers.filter((l) => l.foreignSource);
    if (sources.length > 0) {
      entry.LayerSources = Object.fromEntries(
        sources.map((l) => [l.foreignSource!.diffId, l.foreignSource!.descriptor]),
      );
    }
    const id = parseDigest(image.configDigest).hex;
    for (const repoTag of image.repoTags) {
      const [name, tag] = splitRepoTag(repoTag);
      (repositories[name] ??= {})[tag] = id;
    }
    return entry;
  });
  return { manifest: JSON.stringify(manifest), repositories: JSON.stringify(repositories) };
}

/**
 * The entries of a docker-archive holding `images`: each config and each distinct layer once
 * (a layer shared by several images, or listed twice by one, is stored once).
 */
export function dockerArchiveEntries(
  images: ArchiveImage | readonly ArchiveImage[],
): AssemblyEntry[] {
  const list = asList(images);
  const encoder = new TextEncoder();
  const docs = archiveDocuments(list);
  const entries: AssemblyEntry[] = [
    { name: "blobs/", type: "directory", size: 0 },
    { name: "blobs/sha256/", type: "directory", size: 0 },
  ];
  const seen = new Set<string>();
  for (const image of list) {
    if (!seen.has(image.configDigest)) {
      seen.add(image.configDigest);
      entries.push({
        name: blobName(image.configDigest),
        type: "file",
        size: image.configBytes.byteLength,
        bytes: image.configBytes,
      });
    }
    for (const layer of image.layers) {
      if (seen.has(layer.digest)) continue;
      seen.add(layer.digest);
      entries.push({
        name: blobName(layer.digest),
        type: "file",
        size: layer.size,
        digest: layer.digest,
      });
    }
  }
  const manifest = encoder.encode(docs.manifest);
  entries.push({ name: "manifest.json", type: "file", size: manifest.byteLength, bytes: manifest });
  const repositories = encoder.encode(docs.repositories);
  entries.push({
    name: "repositories",
    type: "file",
    size: repositories.byteLength,
    bytes: repositories,
  });
  return entries;
}

/** Lays out the members of the archive for `image`, with their offsets. */
export function planArchive(
  image: ArchiveImage | readonly ArchiveImage[],
): { members: PlacedEntry[]; size: number } {
  const plan = planTar(dockerArchiveEntries(image));
  return { members: plan.entries, size: plan.size };
}

/** A docker-archive being assembled in a temporary file beside its destination. */
export class ArchiveFile {
  /** Creates the temporary archive for `images` (see {@link TarAssembly.create}). */
  static create(
    destination: string,
    images: ArchiveImage | readonly ArchiveImage[],
  ): Promise<TarAssembly> {
    return TarAssembly.create(destination, dockerArchiveEntries(images));
  }
}

/** Writes `images`, whose layers are all on disk, as a docker-archive at `destination`. */
export async function writeDockerArchive(
  destination: string,
  images: ArchiveImage | readonly ArchiveImage[],
): Promise<void> {
  const list = asList(images);
  const archive = await ArchiveFile.create(destination, list);
  try {
    const copied = new Set<string>();
    for (const layer of list.flatMap((image) => image.layers)) {
      if (copied.has(layer.digest)) continue;
      copied.add(layer.digest);
      if (!layer.path) throw new Error(`layer ${layer.digest} has no file`);
      await archive.copyIn(layer.digest, layer.path);
    }
    await archive.commit();
  } catch (e) {
    await archive.discard();
    throw e;
  }
}
