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
 * The temporary file is `.<name>.<8 hex>.partial` and its process holds an
 * exclusive `flock` on it until it is renamed or removed; the kernel drops
 * the lock when the process dies, so the next pull to the same destination
 * recognises and removes what a killed one left behind.
 *
 * Bytes copied in from the blob store are hashed on the way: a stored blob
 * whose content no longer matches its digest never reaches the archive
 * ({@link CacheEntryCorruptError}).
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
import { DigestHasher, parseDigest } from "../digest.ts";
import { ImgpullError, IntegrityError, InterruptedError } from "../errors.ts";
import type { Descriptor } from "../manifest.ts";
import { CacheEntryCorruptError, evictFile, localIoError } from "../store.ts";
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

/** Escapes `text` for use inside a regular expression. */
function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** The directory and file name of `destination`. */
function splitDestination(destination: string): { dir: string; base: string } {
  const slash = destination.lastIndexOf("/");
  return {
    dir: slash >= 0 ? destination.slice(0, slash) || "/" : ".",
    base: destination.slice(slash + 1),
  };
}

/**
 * Removes temporary archives for `destination` left by pulls that died
 * (killed, crashed): those whose lock nobody holds. Returns how many.
 */
export async function removeAbandonedArchives(destination: string): Promise<number> {
  const { dir, base } = splitDestination(destination);
  const pattern = new RegExp(`^\\.${escapeRegExp(base)}\\.[0-9a-f]{8}\\.partial$`);
  let names: string[];
  try {
    names = await Array.fromAsync(Deno.readDir(dir), (e) => e.isFile ? e.name : "");
  } catch {
    return 0;
  }
  let removed = 0;
  for (const name of names.filter((n) => pattern.test(n))) {
    const path = `${dir}/${name}`;
    try {
      using file = await Deno.open(path, { read: true });
      // Only a regular file (not a symlink swapped in) whose writer is gone.
      if (!(await file.stat()).isFile || !(await file.tryLock(true))) continue;
      await Deno.remove(path);
      removed++;
    } catch { /* in use, or removed meanwhile */ }
  }
  return removed;
}

/** A docker-archive being assembled in a temporary file beside its destination. */
export class ArchiveFile {
  readonly #layers: Map<string, { offset: number; size: number }>;
  /** The temporary file, open and flocked while this process works on it. */
  readonly #holder: Deno.FsFile;

  private constructor(
    readonly destination: string,
    /** The temporary file; downloads write layer bytes straight into it. */
    readonly path: string,
    layers: Map<string, { offset: number; size: number }>,
    holder: Deno.FsFile,
  ) {
    this.#layers = layers;
    this.#holder = holder;
  }

  /**
   * Creates the temporary archive with every header and small member in
   * place, after removing temporary archives of the same destination that a
   * killed pull left behind.
   */
  static async create(destination: string, image: ArchiveImage): Promise<ArchiveFile> {
    const { dir, base } = splitDestination(destination);
    await removeAbandonedArchives(destination);
    const path = `${dir}/.${base}.${crypto.randomUUID().slice(0, 8)}.partial`;
    const plan = planArchive(image);
    const layers = new Map<string, { offset: number; size: number }>();
    let file: Deno.FsFile | undefined;
    try {
      file = await Deno.open(path, { write: true, createNew: true });
      // Held until commit or discard; the kernel releases it if we die.
      await file.lock(true);
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
      closeQuietly(file);
      if (file) await Deno.remove(path).catch(() => {});
      throw localIoError(e, `cannot write to ${dir}`);
    }
    return new ArchiveFile(destination, path, layers, file);
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

  /**
   * Copies a stored blob into the place of layer `digest`, hashing every
   * byte on the way. Nothing is ever written past the member's planned size.
   *
   * - The file's content does not hash to `digest`: the file is removed
   *   (evicted from the store, unless another process replaced it meanwhile)
   *   and a {@link CacheEntryCorruptError} is thrown, so that the caller can
   *   download the blob again into the same place. A file that vanished
   *   (pruned meanwhile) throws the same error.
   * - The content is right but not the planned size: {@link IntegrityError}.
   *
   * After a good copy the file's modification time is refreshed: it records
   * the blob's last use for `--cache-prune --older-than`.
   */
  async copyIn(
    digest: string,
    sourcePath: string,
    options: { signal?: AbortSignal } = {},
  ): Promise<void> {
    const { offset, size } = this.#layer(digest);
    const hasher = new DigestHasher(parseDigest(digest).algorithm);
    let identity: { dev: number; ino: number | null } | undefined;
    let actual = "";
    try {
      using source = await Deno.open(sourcePath, { read: true });
      const info = await source.stat();
      identity = { dev: info.dev, ino: info.ino };
      using out = await Deno.open(this.path, { write: true });
      await out.seek(offset, Deno.SeekMode.Start);
      const buffer = new Uint8Array(1024 * 1024);
      for (;;) {
        if (options.signal?.aborted) {
          const reason = options.signal.reason;
          throw reason instanceof ImgpullError ? reason : new InterruptedError();
        }
        const n = await source.read(buffer);
        if (n === null) break;
        const chunk = buffer.subarray(0, n);
        // Only what fits in the member is written; the rest is hashed, to tell corrupt from wrong.
        const fits = Math.max(0, Math.min(n, size - hasher.length));
        let written = 0;
        while (written < fits) written += await out.write(chunk.subarray(written, fits));
        hasher.update(chunk);
      }
      actual = hasher.digest();
      if (hasher.length === size && actual === digest) {
        const now = new Date();
        await source.utime(now, now).catch(() => {});
        return;
      }
    } catch (e) {
      if (e instanceof Deno.errors.NotFound && identity === undefined) {
        throw new CacheEntryCorruptError(digest, `stored blob ${digest} disappeared`, { cause: e });
      }
      throw localIoError(e, `cannot write ${this.destination}`);
    }
    const copied = hasher.length;
    if (actual === digest) {
      throw new IntegrityError(
        `blob ${digest} is ${copied} bytes, but the archive has room for ${size}`,
      );
    }
    await evictFile(sourcePath, identity);
    throw new CacheEntryCorruptError(
      digest,
      `stored blob ${digest} is damaged (its content has digest ${actual}); removed it`,
    );
  }

  /** Flushes the archive and renames it onto the destination. */
  async commit(): Promise<void> {
    try {
      await this.#holder.sync();
      await Deno.rename(this.path, this.destination);
    } catch (e) {
      await this.discard();
      throw localIoError(e, `cannot write ${this.destination}`);
    }
    closeQuietly(this.#holder);
  }

  /** Removes the temporary file (after a failure). */
  async discard(): Promise<void> {
    await Deno.remove(this.path).catch(() => {});
    closeQuietly(this.#holder);
  }
}

function closeQuietly(file: Deno.FsFile | undefined): void {
  try {
    file?.close();
  } catch { /* already closed */ }
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
