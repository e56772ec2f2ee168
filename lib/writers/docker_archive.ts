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
 * Every size is known before a byte is downloaded, so the whole tar is laid
 * out at once: {@link ArchiveFile.create} writes the headers and small
 * members of a hidden temporary file beside the destination, and each
 * layer's bytes then go straight to their final offset — written there by
 * the download itself, or copied from the blob cache. Only a complete,
 * verified archive is renamed onto the destination; a failed pull leaves
 * the destination as it was.
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
import { localIoError } from "../store.ts";
import { tarEntrySize, tarHeader } from "../tar.ts";

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

/** A member of the planned tar. */
interface Member {
  name: string;
  type: "file" | "directory";
  size: number;
  /** Offset of the 512-byte header; data follows it. */
  offset: number;
  /** Content written at creation (small members). */
  bytes?: Uint8Array;
  /** Layer digest, for members filled later. */
  digest?: string;
}

/** Lays out the members of the archive for `image`, with their offsets. */
export function planArchive(image: ArchiveImage): { members: Member[]; size: number } {
  const encoder = new TextEncoder();
  const docs = archiveDocuments(image);
  const members: Member[] = [];
  let offset = 0;
  const add = (member: Omit<Member, "offset">) => {
    members.push({ ...member, offset });
    offset += tarEntrySize(member.size);
  };
  add({ name: "blobs/", type: "directory", size: 0 });
  add({ name: "blobs/sha256/", type: "directory", size: 0 });
  add({
    name: blobName(image.configDigest),
    type: "file",
    size: image.configBytes.byteLength,
    bytes: image.configBytes,
  });
  const seen = new Set([image.configDigest]);
  for (const layer of image.layers) {
    // An image may list the same layer twice; the archive needs it once.
    if (seen.has(layer.digest)) continue;
    seen.add(layer.digest);
    add({ name: blobName(layer.digest), type: "file", size: layer.size, digest: layer.digest });
  }
  const manifest = encoder.encode(docs.manifest);
  add({ name: "manifest.json", type: "file", size: manifest.byteLength, bytes: manifest });
  const repositories = encoder.encode(docs.repositories);
  add({ name: "repositories", type: "file", size: repositories.byteLength, bytes: repositories });
  // Two zero blocks end the archive.
  return { members, size: offset + 1024 };
}

async function writeAt(file: Deno.FsFile, offset: number, bytes: Uint8Array): Promise<void> {
  await file.seek(offset, Deno.SeekMode.Start);
  let written = 0;
  while (written < bytes.byteLength) written += await file.write(bytes.subarray(written));
}

/** A docker-archive being assembled in a temporary file beside its destination. */
export class ArchiveFile {
  readonly #layers: Map<string, { offset: number; size: number }>;

  private constructor(
    readonly destination: string,
    /** The temporary file; downloads write layer bytes straight into it. */
    readonly path: string,
    layers: Map<string, { offset: number; size: number }>,
  ) {
    this.#layers = layers;
  }

  /** Creates the temporary archive with every header and small member in place. */
  static async create(destination: string, image: ArchiveImage): Promise<ArchiveFile> {
    const slash = destination.lastIndexOf("/");
    const dir = slash >= 0 ? destination.slice(0, slash) || "/" : ".";
    const base = destination.slice(slash + 1);
    const path = `${dir}/.${base}.${crypto.randomUUID().slice(0, 8)}.partial`;
    const plan = planArchive(image);
    const layers = new Map<string, { offset: number; size: number }>();
    try {
      using file = await Deno.open(path, { write: true, createNew: true });
      // Sets the final size at once (sparse until the layers arrive; ends in zero blocks).
      await file.truncate(plan.size);
      for (const member of plan.members) {
        await writeAt(file, member.offset, tarHeader(member.name, member.size, member.type));
        if (member.bytes) await writeAt(file, member.offset + 512, member.bytes);
        if (member.digest) {
          layers.set(member.digest, { offset: member.offset + 512, size: member.size });
        }
      }
    } catch (e) {
      await Deno.remove(path).catch(() => {});
      throw localIoError(e, `cannot write to ${dir}`);
    }
    return new ArchiveFile(destination, path, layers);
  }

  /** Where the bytes of layer `digest` go in the temporary file. */
  layerOffset(digest: string): number {
    return this.#layer(digest).offset;
  }

  #layer(digest: string): { offset: number; size: number } {
    const layer = this.#layers.get(digest);
    if (!layer) throw new Error(`layer ${digest} is not part of this archive`);
    return layer;
  }

  /** Copies a stored (verified) layer into its place; its size must be the planned one. */
  async copyIn(digest: string, sourcePath: string): Promise<void> {
    const { offset, size } = this.#layer(digest);
    let copied = 0;
    try {
      using source = await Deno.open(sourcePath, { read: true });
      using out = await Deno.open(this.path, { write: true });
      await out.seek(offset, Deno.SeekMode.Start);
      const buffer = new Uint8Array(1024 * 1024);
      for (;;) {
        const n = await source.read(buffer);
        if (n === null) break;
        copied += n;
        if (copied > size) break;
        let written = 0;
        while (written < n) written += await out.write(buffer.subarray(written, n));
      }
    } catch (e) {
      throw localIoError(e, `cannot write ${this.destination}`);
    }
    if (copied !== size) throw new Error(`${sourcePath} changed size while being archived`);
  }

  /** Flushes the archive and renames it onto the destination. */
  async commit(): Promise<void> {
    try {
      using file = await Deno.open(this.path, { write: true });
      await file.sync();
      await Deno.rename(this.path, this.destination);
    } catch (e) {
      await this.discard();
      throw localIoError(e, `cannot write ${this.destination}`);
    }
  }

  /** Removes the temporary file (after a failure). */
  async discard(): Promise<void> {
    await Deno.remove(this.path).catch(() => {});
  }
}

/** Writes `image`, whose layers are all on disk, as a docker-archive at `destination`. */
export async function writeDockerArchive(destination: string, image: ArchiveImage): Promise<void> {
  const archive = await ArchiveFile.create(destination, image);
  try {
    const copied = new Set<string>();
    for (const layer of image.layers) {
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
