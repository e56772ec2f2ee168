/**
 * The docker-archive sink: the tar that `docker load` and `podman load`
 * read. Layout (all names relative, no `./`):
 *
 * ```
 * blobs/sha256/<config hex>      the config, byte for byte (image ID = its digest)
 * blobs/sha256/<layer hex>       each layer as the registry sent it (gzip stays gzip)
 * manifest.json                  [{"Config","RepoTags","Layers"[,"LayerSources"]}]
 * repositories                   {"<name>":{"<tag>":"<image id hex>"}}
 * ```
 *
 * The archive is written to a hidden temporary file beside the destination
 * and renamed over it only when complete, so the destination never holds a
 * partial archive and an existing file survives a failed pull.
 *
 * @module
 */
import { parseDigest } from "../digest.ts";
import type { Descriptor } from "../manifest.ts";
import { localIoError } from "../store.ts";
import { TarWriter } from "../tar.ts";

/** One layer file to put in the archive. */
export interface ArchiveLayer {
  /** Digest of the bytes at `path` (names the file in the archive). */
  digest: string;
  path: string;
  size: number;
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

function blobName(digest: string): string {
  const d = parseDigest(digest);
  return `blobs/${d.algorithm}/${d.hex}`;
}

/** Splits `name:tag` at the tag's colon (a registry port has a colon too). */
function splitRepoTag(repoTag: string): [string, string] {
  const colon = repoTag.lastIndexOf(":");
  return [repoTag.slice(0, colon), repoTag.slice(colon + 1)];
}

/** The `manifest.json` and `repositories` documents for an image. */
export function archiveDocuments(image: ArchiveImage): { manifest: string; repositories: string } {
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
  const repositories: Record<string, Record<string, string>> = {};
  const id = parseDigest(image.configDigest).hex;
  for (const repoTag of image.repoTags) {
    const [name, tag] = splitRepoTag(repoTag);
    (repositories[name] ??= {})[tag] = id;
  }
  return {
    manifest: JSON.stringify([entry]),
    repositories: JSON.stringify(repositories),
  };
}

/** Writes `image` as a docker-archive at `destination`, atomically. */
export async function writeDockerArchive(destination: string, image: ArchiveImage): Promise<void> {
  const slash = destination.lastIndexOf("/");
  const dir = slash >= 0 ? destination.slice(0, slash) || "/" : ".";
  const base = destination.slice(slash + 1);
  const tempPath = `${dir}/.${base}.${crypto.randomUUID().slice(0, 8)}.partial`;
  let out: Deno.FsFile;
  try {
    out = await Deno.open(tempPath, { write: true, createNew: true });
  } catch (e) {
    throw localIoError(e, `cannot write to ${dir}`);
  }
  try {
    const tar = new TarWriter(out);
    const encoder = new TextEncoder();
    const written = new Set<string>();
    await tar.addDirectory("blobs");
    await tar.addDirectory("blobs/sha256");
    await tar.addBytes(blobName(image.configDigest), image.configBytes);
    written.add(image.configDigest);
    for (const layer of image.layers) {
      // An image may list the same layer twice; the archive needs it once.
      if (written.has(layer.digest)) continue;
      written.add(layer.digest);
      await tar.addFile(blobName(layer.digest), layer.path, layer.size);
    }
    const docs = archiveDocuments(image);
    await tar.addBytes("manifest.json", encoder.encode(docs.manifest));
    await tar.addBytes("repositories", encoder.encode(docs.repositories));
    await tar.finish();
    await out.sync();
    out.close();
    await Deno.rename(tempPath, destination);
  } catch (e) {
    try {
      out.close();
    } catch { /* already closed */ }
    await Deno.remove(tempPath).catch(() => {});
    throw localIoError(e, `cannot write ${destination}`);
  }
}
