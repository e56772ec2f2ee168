/**
 * The layout engine every output format shares. A format describes its output as a list of
 * entries (directories, small documents held in memory, and blobs named by digest whose bytes
 * come later); an {@link Assembly} places them:
 *
 * - {@link TarAssembly}: one tar, laid out at once in a hidden temporary file beside the
 *   destination. Every size is known, so each blob's bytes go straight to their final offset,
 *   written there by the download itself or copied from the blob store.
 * - {@link DirectoryAssembly}: a directory tree (the OCI image layout), built in a hidden
 *   temporary directory beside the destination; downloads write into the blob files directly.
 * - {@link StreamAssembly}: one tar written front to back to a stream (`-o -`); blobs are
 *   fetched into the store first, then copied in order.
 *
 * Whatever the assembly, bytes copied in from the store are hashed on the way (a stored blob
 * whose content no longer matches its digest never reaches an output:
 * {@link CacheEntryCorruptError}), nothing is written past an entry's planned size, and the
 * destination appears only when complete: a failed pull leaves it as it was. Temporary files
 * and directories are flocked while in use, so the next pull to the same destination can remove
 * what a killed one left behind.
 *
 * @example
 * ```ts
 * const entries: AssemblyEntry[] = [
 *   { name: "blobs/", type: "directory", size: 0 },
 *   { name: "blobs/sha256/abc…", type: "file", size: 2, digest: "sha256:abc…" },
 *   { name: "index.json", type: "file", size: 2, bytes: new TextEncoder().encode("{}") },
 * ];
 * const out = await TarAssembly.create("image.tar", entries);
 * try {
 *   await out.copyIn("sha256:abc…", "/cache/blobs/sha256/abc…");
 *   await out.commit();
 * } catch (e) {
 *   await out.discard();
 *   throw e;
 * }
 * ```
 * @module
 */
import { basename, dirname, join } from "node:path";
import { DigestHasher, parseDigest } from "../digest.ts";
import { ImgpullError, IntegrityError, InterruptedError } from "../errors.ts";
import type { BlobSink } from "../fetch.ts";
import { CacheEntryCorruptError, evictFile, localIoError } from "../store.ts";
import { tarEntrySize, tarHeader } from "../tar.ts";

/** One entry of an output, before it is placed. */
export interface AssemblyEntry {
  /** Relative path; directories end in `/`. */
  name: string;
  type: "file" | "directory";
  size: number;
  /** Content known now (documents, configs). */
  bytes?: Uint8Array;
  /** A blob whose bytes come later (downloaded or copied from the store). */
  digest?: string;
}

/** An entry with its place in a tar. */
export interface PlacedEntry extends AssemblyEntry {
  /** Offset of the 512-byte header; data follows it. */
  offset: number;
}

/** Where an output's entries go, and how it becomes the destination. */
export interface Assembly {
  readonly destination: string;
  /** Where a download may write blob `digest` directly; undefined: into the store first. */
  sinkFor(digest: string): BlobSink | undefined;
  /** Copies a stored blob into its place, hashing it (see {@link copyVerified}). */
  copyIn(digest: string, sourcePath: string, options?: { signal?: AbortSignal }): Promise<void>;
  /** Makes the output the destination. */
  commit(): Promise<void>;
  /** Removes everything written (after a failure). */
  discard(): Promise<void>;
}

/** Lays out `entries` as a tar: offsets, and the total size with the two closing blocks. */
export function planTar(
  entries: readonly AssemblyEntry[],
): { entries: PlacedEntry[]; size: number } {
  const placed: PlacedEntry[] = [];
  let offset = 0;
  for (const entry of entries) {
    placed.push({ ...entry, offset });
    offset += tarEntrySize(entry.size);
  }
  return { entries: placed, size: offset + 1024 };
}

/** The blob entries of a plan, by digest (each blob is placed once). */
function blobsOf<T extends AssemblyEntry>(entries: readonly T[]): Map<string, T> {
  const blobs = new Map<string, T>();
  for (const entry of entries) {
    if (!entry.digest) continue;
    if (blobs.has(entry.digest)) throw new Error(`blob ${entry.digest} placed twice`);
    blobs.set(entry.digest, entry);
  }
  return blobs;
}

async function writeAt(file: Deno.FsFile, offset: number, bytes: Uint8Array): Promise<void> {
  await file.seek(offset, Deno.SeekMode.Start);
  let written = 0;
  while (written < bytes.byteLength) written += await file.write(bytes.subarray(written));
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/**
 * `.NAME.<8 hex>.partial` beside `destination`: where its output is built (and what
 * {@link removeAbandonedArchives} looks for).
 */
export function temporaryPath(destination: string): string {
  return join(
    dirname(destination),
    `.${basename(destination)}.${crypto.randomUUID().slice(0, 8)}.partial`,
  );
}

/**
 * Removes temporary outputs for `destination` left by pulls that died (killed, crashed): those
 * whose lock nobody holds. Returns how many.
 */
export async function removeAbandonedArchives(destination: string): Promise<number> {
  const dir = dirname(destination);
  const pattern = new RegExp(`^\\.${escapeRegExp(basename(destination))}\\.[0-9a-f]{8}\\.partial$`);
  let names: string[];
  try {
    names = await Array.fromAsync(Deno.readDir(dir), (e) => e.name);
  } catch {
    return 0;
  }
  let removed = 0;
  for (const name of names.filter((n) => pattern.test(n))) {
    const path = join(dir, name);
    try {
      const info = await Deno.lstat(path);
      if (info.isSymlink) continue;
      // A file is its own lock; a directory holds one in `.lock`.
      const lockPath = info.isDirectory ? join(path, ".lock") : path;
      using lock = await Deno.open(lockPath, { read: true });
      if (!(await lock.stat()).isFile || !(await lock.tryLock(true))) continue;
      await Deno.remove(path, { recursive: info.isDirectory });
      removed++;
    } catch { /* in use, or removed meanwhile */ }
  }
  return removed;
}

/** How often a tar being assembled is flushed to disk in the background. */
const BACKGROUND_SYNC_MS = 250;

/** A copy from the cache lets other work run after this many bytes. */
const YIELD_BYTES = 8 * 1024 * 1024;

/**
 * Copies the stored blob at `sourcePath` into `out` at `offset`, hashing every byte; writes at
 * most `size` bytes.
 *
 * - The content does not hash to `digest`: the stored file is removed (unless another process
 *   replaced it meanwhile) and {@link CacheEntryCorruptError} is thrown, so that the caller can
 *   download the blob again into the same place. A file that vanished throws the same error.
 * - The content is right but not `size` bytes: {@link IntegrityError}.
 *
 * After a good copy the stored file's modification time is refreshed: it records the blob's
 * last use for `--cache-prune --older-than`.
 */
export async function copyVerified(
  digest: string,
  sourcePath: string,
  out: { write(bytes: Uint8Array): Promise<void> },
  size: number,
  what: string,
  signal?: AbortSignal,
): Promise<void> {
  const hasher = new DigestHasher(parseDigest(digest).algorithm);
  let identity: { dev: number; ino: number | null } | undefined;
  let actual = "";
  try {
    using source = await Deno.open(sourcePath, { read: true });
    const info = await source.stat();
    identity = { dev: info.dev, ino: info.ino };
    const buffer = new Uint8Array(1024 * 1024);
    // Reads are synchronous (as the writes of a file output are): from the page cache a
    // megabyte takes far less than an asynchronous read's thread hand-off (537 MB copied
    // from the cache: 2.85 s before). Other work (downloads, signals) runs between chunks.
    let sinceYield = 0;
    for (;;) {
      if (signal?.aborted) {
        throw signal.reason instanceof ImgpullError ? signal.reason : new InterruptedError();
      }
      if (sinceYield >= YIELD_BYTES) {
        sinceYield = 0;
        await new Promise((resolve) => setTimeout(resolve, 0));
      }
      const n = source.readSync(buffer);
      if (n === null) break;
      sinceYield += n;
      const chunk = buffer.subarray(0, n);
      // Only what fits is written; the rest is hashed, to tell corrupt from wrong.
      const fits = Math.max(0, Math.min(n, size - hasher.length));
      if (fits > 0) await out.write(chunk.subarray(0, fits));
      hasher.update(chunk);
    }
    actual = hasher.digest();
    if (hasher.length === size && actual === digest) {
      const now = new Date();
      await source.utime(now, now).catch(() => {});
      return;
    }
  } catch (e) {
    if (e instanceof ImgpullError) throw e;
    if (e instanceof Deno.errors.NotFound && identity === undefined) {
      throw new CacheEntryCorruptError(digest, `stored blob ${digest} disappeared`, { cause: e });
    }
    throw localIoError(e, `cannot write ${what}`);
  }
  if (actual === digest) {
    throw new IntegrityError(
      `blob ${digest} is ${hasher.length} bytes, but the output has room for ${size}`,
    );
  }
  await evictFile(sourcePath, identity);
  throw new CacheEntryCorruptError(
    digest,
    `stored blob ${digest} is damaged (its content has digest ${actual}); removed it`,
  );
}

/**
 * A writer at a position of an open file. Synchronous underneath: the page cache takes a
 * megabyte faster than an asynchronous write hands it to a thread.
 */
function fileWriter(file: Deno.FsFile): { write(bytes: Uint8Array): Promise<void> } {
  return {
    write(bytes) {
      let written = 0;
      while (written < bytes.byteLength) written += file.writeSync(bytes.subarray(written));
      return Promise.resolve();
    },
  };
}

/** The entry of blob `digest`; asking for a blob the output does not hold is a bug. */
function blobEntry<T extends AssemblyEntry>(blobs: Map<string, T>, digest: string): T {
  const blob = blobs.get(digest);
  if (!blob) throw new Error(`blob ${digest} is not part of this output`);
  return blob;
}

/** Copies stored blob `entry.digest` into `path` at `offset` (see {@link copyVerified}). */
async function copyIntoFile(
  path: string,
  offset: number,
  entry: AssemblyEntry,
  sourcePath: string,
  destination: string,
  options: { signal?: AbortSignal },
): Promise<void> {
  let out: Deno.FsFile | undefined;
  try {
    out = await Deno.open(path, { write: true });
    if (offset > 0) await out.seek(offset, Deno.SeekMode.Start);
  } catch (e) {
    closeQuietly(out);
    throw localIoError(e, `cannot write ${destination}`);
  }
  try {
    await copyVerified(
      entry.digest!,
      sourcePath,
      fileWriter(out),
      entry.size,
      destination,
      options.signal,
    );
  } finally {
    closeQuietly(out);
  }
}

function closeQuietly(file: Deno.FsFile | undefined): void {
  try {
    file?.close();
  } catch { /* already closed */ }
}

/** A tar being assembled in a temporary file beside its destination. */
export class TarAssembly implements Assembly {
  readonly #blobs: Map<string, PlacedEntry>;
  /** The temporary file, open and flocked while this process works on it. */
  readonly #holder: Deno.FsFile;

  /** Flushes what is written so far now and then, so that the final flush is short. */
  readonly #syncer: ReturnType<typeof setInterval>;
  #syncing?: Promise<void>;

  private constructor(
    readonly destination: string,
    /** The temporary file; downloads write blob bytes straight into it. */
    readonly path: string,
    blobs: Map<string, PlacedEntry>,
    holder: Deno.FsFile,
  ) {
    this.#blobs = blobs;
    this.#holder = holder;
    // The archive is flushed to disk before it is renamed into place (so that a crash of the
    // machine cannot leave a renamed but empty archive); flushing as it grows overlaps that
    // with the downloads (a 54 MB archive's final flush took 0.18 s on its own).
    this.#syncer = setInterval(() => {
      this.#syncing ??= this.#holder.syncData().catch(() => {}).finally(() =>
        this.#syncing = undefined
      );
    }, BACKGROUND_SYNC_MS);
  }

  /** Stops the background flushes and waits for the one in flight. */
  async #stopSyncing(): Promise<void> {
    clearInterval(this.#syncer);
    await this.#syncing;
  }

  /**
   * Creates the temporary tar with every header and in-memory entry in place (blobs are
   * sparse until they arrive), after removing temporary outputs of the same destination that
   * a killed pull left behind.
   */
  static async create(
    destination: string,
    entries: readonly AssemblyEntry[],
  ): Promise<TarAssembly> {
    await removeAbandonedArchives(destination);
    const path = temporaryPath(destination);
    const plan = planTar(entries);
    const blobs = blobsOf(plan.entries);
    let file: Deno.FsFile | undefined;
    try {
      file = await Deno.open(path, { write: true, createNew: true });
      // Held until commit or discard; the kernel releases it if we die.
      await file.lock(true);
      await file.truncate(plan.size);
      for (const entry of plan.entries) {
        await writeAt(file, entry.offset, tarHeader(entry.name, entry.size, entry.type));
        if (entry.bytes) await writeAt(file, entry.offset + 512, entry.bytes);
      }
    } catch (e) {
      closeQuietly(file);
      if (file) await Deno.remove(path).catch(() => {});
      throw localIoError(e, `cannot write to ${dirname(destination)}`);
    }
    return new TarAssembly(destination, path, blobs, file);
  }

  #blob(digest: string): PlacedEntry {
    return blobEntry(this.#blobs, digest);
  }

  /** Where the bytes of blob `digest` go in the temporary file. */
  blobOffset(digest: string): number {
    return this.#blob(digest).offset + 512;
  }

  sinkFor(digest: string): BlobSink {
    return { path: this.path, offset: this.blobOffset(digest) };
  }

  copyIn(digest: string, sourcePath: string, options: { signal?: AbortSignal } = {}) {
    const blob = this.#blob(digest);
    return copyIntoFile(this.path, blob.offset + 512, blob, sourcePath, this.destination, options);
  }

  async commit(): Promise<void> {
    try {
      await this.#stopSyncing();
      await this.#holder.sync();
      await Deno.rename(this.path, this.destination);
    } catch (e) {
      await this.discard();
      throw localIoError(e, `cannot write ${this.destination}`);
    }
    closeQuietly(this.#holder);
  }

  async discard(): Promise<void> {
    await this.#stopSyncing();
    await Deno.remove(this.path).catch(() => {});
    closeQuietly(this.#holder);
  }
}

/**
 * A directory tree (an OCI layout) assembled in a temporary directory beside its destination,
 * renamed onto it when complete. The destination must not exist yet, or be an empty directory
 * (a directory with content is never replaced).
 */
export class DirectoryAssembly implements Assembly {
  readonly #blobs: Map<string, AssemblyEntry>;
  readonly #lock: Deno.FsFile;

  private constructor(
    readonly destination: string,
    readonly path: string,
    blobs: Map<string, AssemblyEntry>,
    lock: Deno.FsFile,
  ) {
    this.#blobs = blobs;
    this.#lock = lock;
  }

  /** Creates the temporary directory with every directory and in-memory entry in place. */
  static async create(
    destination: string,
    entries: readonly AssemblyEntry[],
  ): Promise<DirectoryAssembly> {
    await removeAbandonedArchives(destination);
    const path = temporaryPath(destination);
    let lock: Deno.FsFile | undefined;
    try {
      await Deno.mkdir(path, { mode: 0o755 });
      lock = await Deno.open(join(path, ".lock"), { write: true, createNew: true });
      await lock.lock(true);
      for (const entry of entries) {
        const target = join(path, entry.name);
        if (entry.type === "directory") {
          await Deno.mkdir(target, { recursive: true });
        } else if (entry.bytes) {
          await Deno.writeFile(target, entry.bytes, { createNew: true });
        } else {
          // Blobs start empty at their full size; downloads write at their offsets.
          using file = await Deno.open(target, { write: true, createNew: true });
          await file.truncate(entry.size);
        }
      }
    } catch (e) {
      closeQuietly(lock);
      await Deno.remove(path, { recursive: true }).catch(() => {});
      throw localIoError(e, `cannot write to ${dirname(destination)}`);
    }
    return new DirectoryAssembly(destination, path, blobsOf(entries), lock);
  }

  #blob(digest: string): AssemblyEntry {
    return blobEntry(this.#blobs, digest);
  }

  sinkFor(digest: string): BlobSink {
    return { path: join(this.path, this.#blob(digest).name), offset: 0 };
  }

  copyIn(digest: string, sourcePath: string, options: { signal?: AbortSignal } = {}) {
    const blob = this.#blob(digest);
    const path = join(this.path, blob.name);
    return copyIntoFile(path, 0, blob, sourcePath, this.destination, options);
  }

  async commit(): Promise<void> {
    try {
      await Deno.remove(join(this.path, ".lock"));
      // An empty directory at the destination (made by the user) may be replaced (a directory
      // with content makes remove fail); a file there is never removed (rename then fails).
      const existing = await Deno.lstat(this.destination).catch(() => undefined);
      if (existing?.isDirectory) await Deno.remove(this.destination);
      await Deno.rename(this.path, this.destination);
    } catch (e) {
      await this.discard();
      throw localIoError(e, `cannot write ${this.destination}`);
    }
    closeQuietly(this.#lock);
  }

  async discard(): Promise<void> {
    await Deno.remove(this.path, { recursive: true }).catch(() => {});
    closeQuietly(this.#lock);
  }
}

/**
 * A tar written front to back to a stream (`-o -`). Downloads go to the store; at commit every
 * entry is written in order, blobs copied (and hashed) from where {@link copyIn} was told they
 * are. On failure nothing has been written yet, except when the failure happens during commit
 * (the stream is then aborted: a reader sees a truncated tar, never a complete wrong one).
 */
export class StreamAssembly implements Assembly {
  readonly destination = "standard output";
  readonly #sources = new Map<string, string>();
  readonly #entries: readonly AssemblyEntry[];
  readonly #output: WritableStream<Uint8Array>;
  readonly #signal?: AbortSignal;

  constructor(
    entries: readonly AssemblyEntry[],
    output: WritableStream<Uint8Array>,
    signal?: AbortSignal,
  ) {
    blobsOf(entries);
    this.#entries = entries;
    this.#output = output;
    this.#signal = signal;
  }

  sinkFor(): undefined {
    return undefined;
  }

  copyIn(digest: string, sourcePath: string): Promise<void> {
    this.#sources.set(digest, sourcePath);
    return Promise.resolve();
  }

  async commit(): Promise<void> {
    const writer = this.#output.getWriter();
    // Coalesces small writes: a stream write per tar header would be slow.
    let pending: Uint8Array[] = [];
    let pendingBytes = 0;
    const flush = async () => {
      if (pendingBytes === 0) return;
      const joined = new Uint8Array(pendingBytes);
      let at = 0;
      for (const part of pending) {
        joined.set(part, at);
        at += part.byteLength;
      }
      pending = [];
      pendingBytes = 0;
      await writer.write(joined);
    };
    const out = {
      async write(bytes: Uint8Array) {
        pending.push(bytes.slice());
        pendingBytes += bytes.byteLength;
        if (pendingBytes >= 1024 * 1024) await flush();
      },
    };
    try {
      for (const entry of this.#entries) {
        await out.write(tarHeader(entry.name, entry.size, entry.type));
        if (entry.bytes) await out.write(entry.bytes);
        if (entry.digest) {
          const source = this.#sources.get(entry.digest);
          if (!source) throw new Error(`blob ${entry.digest} was never stored`);
          await copyVerified(
            entry.digest,
            source,
            out,
            entry.size,
            this.destination,
            this.#signal,
          );
        }
        const padding = tarEntrySize(entry.size) - 512 - entry.size;
        if (padding > 0) await out.write(new Uint8Array(padding));
      }
      await out.write(new Uint8Array(1024));
      await flush();
      await writer.close();
    } catch (e) {
      await writer.abort(e).catch(() => {});
      if (e instanceof ImgpullError) throw e;
      throw localIoError(e, "cannot write to standard output");
    } finally {
      writer.releaseLock();
    }
  }

  async discard(): Promise<void> {
    await this.#output.abort().catch(() => {});
  }
}
