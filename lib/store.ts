/**
 * A content-addressed directory of verified blobs, used both as the shared
 * blob cache and as a pull's private scratch space:
 *
 * ```
 * blobs/<alg>/<hex>          verified blobs; entered only by atomic rename after verification
 * partial/<alg>/<hex>        a transfer in progress, resumable across runs
 * partial/<alg>/<hex>.json   which byte ranges of it are written
 * locks/<alg>/<hex>.lock     flock held by the process downloading <hex>
 * diffids/<alg>/<hex>        text: digest of a stored blob whose uncompressed content has this diff_id
 * manifests/, registries/, tags/   manifests by digest and what registries said (./manifest_cache.ts)
 * tmp/                       scratch files of running pulls
 * ```
 *
 * Several processes may share one store: a blob is downloaded by whoever
 * holds its lock (an advisory `flock`, released by the kernel if the holder
 * dies), others wait and reuse it. File names come only from validated
 * digests, so registry data can never name a path.
 *
 * The cache belongs to one user: its root and areas must be real directories
 * (not symlinks) owned by that user and writable by nobody else, or it is
 * refused (see {@link secureCacheDir}); a new cache is created `0700` and its
 * blobs `0600`. Files are created with `createNew` and entries that are not
 * regular files are removed, never followed, so a planted symlink cannot
 * redirect a write.
 *
 * @module
 */
import { parseDigest } from "./digest.ts";
import { ImgpullError, IntegrityError, InterruptedError, LocalIoError } from "./errors.ts";

/** How often a process waiting for another one's download looks again. */
const LOCK_POLL_MS = 150;

/** Resume information of a partial blob. */
export interface PartialState {
  size: number;
  /** Byte ranges `[start, end)` and how much of each is written. */
  segments: { start: number; end: number; written: number }[];
}

/** An exclusive claim on downloading one digest; release it when done. */
export interface BlobLock {
  release(): void;
}

/**
 * A stored blob did not match its name (bytes changed on disk, or the file
 * is not the size planned for it). It has been evicted from the store, so
 * downloading the blob again repairs the cache.
 */
export class CacheEntryCorruptError extends IntegrityError {
  constructor(
    /** The digest the entry was stored under. */
    readonly digest: string,
    message: string,
    details: { cause?: unknown } = {},
  ) {
    super(message, { ...details, hint: "the cached copy was removed; run the pull again" });
  }
}

/** Areas of a store (directories under its root). */
const AREAS = ["blobs", "partial", "locks", "diffids", "manifests", "registries", "tags"] as const;
const ALGORITHMS = ["sha256", "sha512"] as const;

/** Where blobs live: the shared cache, or a pull's scratch directory. */
export class BlobStore {
  readonly #holder?: Deno.FsFile;

  private constructor(
    readonly root: string,
    /** True for the shared cache: partial downloads are kept for the next run. */
    readonly persistent: boolean,
    /** A scratch store's lock file, held open (and flocked) while the pull runs. */
    holder?: Deno.FsFile,
  ) {
    this.#holder = holder;
  }

  /**
   * Opens (creating if needed) the persistent cache at `root`, after checking
   * that no other user can change it ({@link secureCacheDir}).
   */
  static async open(root: string): Promise<BlobStore> {
    await secureCacheDir(root, { create: true });
    return new BlobStore(root, true);
  }

  /**
   * Creates a fresh scratch store in a new hidden directory under `parent`.
   * It holds a lock while the process lives; scratch stores of processes
   * that died (their lock is free) are removed first.
   */
  static async createIn(parent: string): Promise<BlobStore> {
    await removeAbandonedScratch(parent);
    try {
      const root = await Deno.makeTempDir({ dir: parent, prefix: ".imgpull-" });
      const holder = await Deno.open(`${root}/${SCRATCH_LOCK}`, { write: true, createNew: true });
      await holder.lock(true);
      await makeLayout(root);
      return new BlobStore(root, false, holder);
    } catch (e) {
      throw localIoError(e, `cannot create a working directory in ${parent}`);
    }
  }

  #path(kind: string, digest: string, suffix = ""): string {
    const d = parseDigest(digest);
    return `${this.root}/${kind}/${d.algorithm}/${d.hex}${suffix}`;
  }

  /** Path of a verified blob. */
  blobPath(digest: string): string {
    return this.#path("blobs", digest);
  }

  /** Size of a verified blob, or undefined when it is not here. */
  async size(digest: string): Promise<number | undefined> {
    try {
      return (await Deno.stat(this.blobPath(digest))).size;
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return undefined;
      throw localIoError(e, `cannot read the blob store`);
    }
  }

  /**
   * Records a use of a stored blob (its modification time is what
   * `--cache-prune --older-than` measures). Returns false when it is not here.
   */
  async touch(digest: string): Promise<boolean> {
    const now = new Date();
    try {
      await Deno.utime(this.blobPath(digest), now, now);
      return true;
    } catch {
      return false;
    }
  }

  /**
   * Size of a verified blob that is about to be used, refreshing its use
   * time so that a concurrent prune keeps it; undefined when it is not here.
   */
  async use(digest: string): Promise<number | undefined> {
    const size = await this.size(digest);
    if (size !== undefined) await this.touch(digest);
    return size;
  }

  /**
   * Removes the blob stored as `digest` because its content is wrong, but
   * only if the file there is still `expected` (a good copy renamed in by
   * another process meanwhile stays).
   */
  async evict(digest: string, expected?: { dev: number; ino: number | null }): Promise<void> {
    await evictFile(this.blobPath(digest), expected);
  }

  /** A fresh path for a scratch file. */
  tempPath(label: string): string {
    return `${this.root}/tmp/${label.replace(/[^a-z0-9]/gi, "_")}-${crypto.randomUUID()}`;
  }

  /** Moves a verified file to its place under `blobs/` (readable by its owner only). */
  async commit(tempPath: string, digest: string): Promise<string> {
    const path = this.blobPath(digest);
    try {
      await Deno.mkdir(path.slice(0, path.lastIndexOf("/")), { recursive: true, mode: 0o700 });
      if (Deno.build.os !== "windows") await Deno.chmod(tempPath, 0o600);
      await Deno.rename(tempPath, path);
    } catch (e) {
      throw localIoError(e, `cannot store blob ${digest}`);
    }
    return path;
  }

  /**
   * Claims the download of `digest`. Returns undefined once the blob is in
   * the store (someone else downloaded it while we waited).
   */
  async lock(digest: string, signal?: AbortSignal): Promise<BlobLock | undefined> {
    const path = this.#path("locks", digest, ".lock");
    let file: Deno.FsFile;
    try {
      await Deno.mkdir(path.slice(0, path.lastIndexOf("/")), { recursive: true, mode: 0o700 });
      file = await openRegularFile(path);
    } catch (e) {
      throw localIoError(e, `cannot lock ${digest} in ${this.root}`);
    }
    try {
      for (;;) {
        if (await file.tryLock(true)) {
          return {
            release: () => {
              try {
                file.close(); // closing releases the flock
              } catch { /* already closed */ }
            },
          };
        }
        if (await this.size(digest) !== undefined) {
          file.close();
          return undefined;
        }
        if (signal?.aborted) throw signal.reason ?? new InterruptedError();
        await new Promise((resolve) => setTimeout(resolve, LOCK_POLL_MS));
      }
    } catch (e) {
      try {
        file.close();
      } catch { /* already closed */ }
      throw e;
    }
  }

  /** Path of the partial file of `digest` (hold its lock to use it). */
  partialPath(digest: string): string {
    return this.#path("partial", digest);
  }

  /**
   * Saved resume state of a partial blob, if it is usable for `size` (hold
   * its lock). A partial or state file that is not a regular file (a planted
   * symlink, say) is removed, so that the download then starts on a fresh
   * file instead of writing through it.
   */
  async readPartial(digest: string, size: number): Promise<PartialState | undefined> {
    const dataPath = this.partialPath(digest);
    const statePath = this.#path("partial", digest, ".json");
    const [data, stateFile] = await Promise.all([lstatOrNull(dataPath), lstatOrNull(statePath)]);
    if ((data && !data.isFile) || (stateFile && !stateFile.isFile)) {
      await this.removePartial(digest);
      return undefined;
    }
    if (!data || !stateFile) return undefined;
    try {
      const state = JSON.parse(await Deno.readTextFile(statePath)) as unknown;
      return validPartialState(state, size, data.size) ? state : undefined;
    } catch {
      return undefined;
    }
  }

  /**
   * Creates an empty partial file for `digest`, replacing whatever is at its
   * path (without following a symlink there); returns its path.
   */
  async createPartial(digest: string): Promise<string> {
    const path = this.partialPath(digest);
    await Deno.remove(this.#path("partial", digest, ".json")).catch(() => {});
    await Deno.remove(path).catch(() => {});
    try {
      await Deno.mkdir(path.slice(0, path.lastIndexOf("/")), { recursive: true, mode: 0o700 });
      (await Deno.open(path, { write: true, createNew: true, mode: 0o600 })).close();
    } catch (e) {
      throw localIoError(e, `cannot create ${path}`);
    }
    return path;
  }

  /** Records how much of a partial blob is written. */
  async writePartial(digest: string, state: PartialState): Promise<void> {
    const path = this.#path("partial", digest, ".json");
    const temp = `${path}.${crypto.randomUUID().slice(0, 8)}`;
    try {
      await Deno.mkdir(path.slice(0, path.lastIndexOf("/")), { recursive: true, mode: 0o700 });
      await Deno.writeTextFile(temp, JSON.stringify(state), { createNew: true, mode: 0o600 });
      await Deno.rename(temp, path);
    } catch {
      // Resume information is an optimisation; losing it only costs a re-download.
      await Deno.remove(temp).catch(() => {});
    }
  }

  /** Forgets a partial blob. */
  async removePartial(digest: string): Promise<void> {
    await Deno.remove(this.#path("partial", digest, ".json")).catch(() => {});
    await Deno.remove(this.partialPath(digest)).catch(() => {});
  }

  /** Records that blob `blobDigest` decompresses to a layer with `diffId`. */
  async recordDiffId(diffId: string, blobDigest: string): Promise<void> {
    parseDigest(blobDigest);
    const path = this.#path("diffids", diffId);
    const temp = `${path}.${crypto.randomUUID().slice(0, 8)}`;
    try {
      await Deno.mkdir(path.slice(0, path.lastIndexOf("/")), { recursive: true, mode: 0o700 });
      await Deno.writeTextFile(temp, blobDigest, { createNew: true, mode: 0o600 });
      await Deno.rename(temp, path);
    } catch (e) {
      await Deno.remove(temp).catch(() => {});
      throw localIoError(e, `cannot record diff_id ${diffId}`);
    }
  }

  /**
   * A stored blob whose uncompressed content has `diffId`, if any. Finding
   * it counts as a use (see {@link use}).
   */
  async blobForDiffId(diffId: string): Promise<{ digest: string; size: number } | undefined> {
    // An uncompressed layer is stored under its own digest, which is its diff_id.
    const plain = await this.use(diffId);
    if (plain !== undefined) return { digest: diffId, size: plain };
    let digest: string;
    try {
      digest = parseDigest((await Deno.readTextFile(this.#path("diffids", diffId))).trim()).value;
    } catch {
      return undefined;
    }
    const size = await this.use(digest);
    return size === undefined ? undefined : { digest, size };
  }

  /** Deletes the store and everything in it (scratch stores only). */
  async remove(): Promise<void> {
    try {
      this.#holder?.close();
    } catch { /* already closed */ }
    await Deno.remove(this.root, { recursive: true }).catch(() => {});
  }
}

/** The lock file of a scratch store, held while its pull runs. */
const SCRATCH_LOCK = ".lock";

/** Removes scratch stores under `parent` whose pull died (their lock file is free). */
async function removeAbandonedScratch(parent: string): Promise<void> {
  let names: string[];
  try {
    names = await Array.fromAsync(
      Deno.readDir(parent),
      (e) => e.isDirectory && /^\.imgpull-[A-Za-z0-9_]+$/.test(e.name) ? e.name : "",
    );
  } catch {
    return;
  }
  for (const name of names.filter((n) => n !== "")) {
    const dir = `${parent}/${name}`;
    // A store without a lock file may be one being created right now: leave it.
    const info = await lstatOrNull(`${dir}/${SCRATCH_LOCK}`);
    if (!info?.isFile) continue;
    try {
      using file = await Deno.open(`${dir}/${SCRATCH_LOCK}`, { read: true });
      if (!(await file.tryLock(true))) continue;
      await Deno.remove(dir, { recursive: true });
    } catch { /* in use, or removed meanwhile */ }
  }
}

/** Creates the store's directories (one per area and algorithm). */
async function makeLayout(root: string): Promise<void> {
  await Deno.mkdir(`${root}/tmp`, { recursive: true, mode: 0o700 });
  for (const area of AREAS) {
    for (const algorithm of ALGORITHMS) {
      await Deno.mkdir(`${root}/${area}/${algorithm}`, { recursive: true, mode: 0o700 });
    }
  }
}

/** Every directory of a cache layout, root first. */
function layoutDirs(root: string): string[] {
  return [
    root,
    `${root}/tmp`,
    ...AREAS.flatMap((a) => [`${root}/${a}`, ...ALGORITHMS.map((alg) => `${root}/${a}/${alg}`)]),
  ];
}

/**
 * Makes sure that only the current user can change the cache at `root`:
 * the root and every area must be a real directory (not a symlink), owned by
 * the user and not writable by group or others; otherwise another local user
 * could plant symlinks that redirect our writes or deletions. A root that
 * others may read is made private (`0700`): cached layers may be private.
 * Missing directories are created `0700` when `create` is set. Throws a
 * {@link LocalIoError} with a hint on how to fix the directory.
 */
export async function secureCacheDir(root: string, options: { create: boolean }): Promise<void> {
  let uid: number | null | undefined;
  for (const dir of layoutDirs(root)) {
    let info = await lstatOrNull(dir).catch((e) => {
      throw localIoError(e, `cannot use the cache directory ${root}`);
    });
    if (!info) {
      if (!options.create) continue;
      try {
        await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
        info = await Deno.lstat(dir);
      } catch (e) {
        throw localIoError(e, `cannot use the cache directory ${root}`);
      }
    }
    const what = dir === root ? `the cache directory ${root}` : `${dir} in the cache`;
    if (info.isSymlink) {
      throw new LocalIoError(`${what} is a symbolic link; refusing to use it`, {
        hint: dir === root
          ? `give the directory it points to instead: --cache-dir "$(readlink -f ${root})"`
          : `remove it (rm ${dir}), or empty the cache with rm -r ${root}`,
      });
    }
    if (!info.isDirectory) {
      throw new LocalIoError(`${what} is not a directory`, {
        hint: `remove it, or choose another --cache-dir`,
      });
    }
    if (info.uid === null || info.mode === null) continue; // Windows
    uid ??= await currentUid(root);
    if (uid !== null && info.uid !== uid) {
      throw new LocalIoError(`${what} belongs to another user (uid ${info.uid})`, {
        hint: `use a cache directory of your own with --cache-dir, or chown it to yourself`,
      });
    }
    if ((info.mode & 0o022) !== 0) {
      throw new LocalIoError(`${what} is writable by other users; refusing to use it`, {
        hint: `chmod 700 ${dir}`,
      });
    }
    if (dir === root && (info.mode & 0o077) !== 0) {
      await Deno.chmod(root, 0o700).catch(() => {});
    }
  }
}

/**
 * The user id of this process, without asking for `--allow-sys`: Deno's own
 * when that is granted, else the owner of `/proc/self` (Linux), else the
 * owner of a file created in `dir`. Null when none works.
 */
async function currentUid(dir: string): Promise<number | null> {
  try {
    if (Deno.permissions.querySync({ name: "sys", kind: "uid" }).state === "granted") {
      return Deno.uid();
    }
  } catch { /* fall through */ }
  try {
    return (await Deno.stat("/proc/self")).uid;
  } catch { /* not Linux */ }
  const probe = `${dir}/.uid-probe-${crypto.randomUUID().slice(0, 8)}`;
  try {
    (await Deno.open(probe, { write: true, createNew: true })).close();
    return (await Deno.lstat(probe)).uid;
  } catch {
    return null;
  } finally {
    await Deno.remove(probe).catch(() => {});
  }
}

/** `lstat`, or null when nothing is there. */
async function lstatOrNull(path: string): Promise<Deno.FileInfo | null> {
  try {
    return await Deno.lstat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
}

/**
 * Opens a regular file for writing, creating it if needed, without following
 * a symlink planted at `path`: an entry that is not a regular file is
 * removed and a new file created with `createNew` (which fails on any
 * existing entry, symlinks included).
 */
async function openRegularFile(path: string): Promise<Deno.FsFile> {
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await Deno.open(path, { write: true, createNew: true, mode: 0o600 });
    } catch (e) {
      if (!(e instanceof Deno.errors.AlreadyExists)) throw e;
    }
    const info = await lstatOrNull(path);
    if (!info) continue;
    if (!info.isFile) {
      await Deno.remove(path).catch(() => {});
      continue;
    }
    const file = await Deno.open(path, { write: true });
    const opened = await file.stat();
    // The entry we checked is the file we opened (not swapped for a symlink in between).
    if (opened.dev === info.dev && opened.ino === info.ino) return file;
    file.close();
  }
  throw new LocalIoError(`${path} keeps changing; another process is tampering with the cache`);
}

/** Removes `path` if it is still the file `expected` (by device and inode). */
export async function evictFile(
  path: string,
  expected?: { dev: number; ino: number | null },
): Promise<void> {
  const info = await lstatOrNull(path).catch(() => null);
  if (!info) return;
  if (expected && (info.dev !== expected.dev || info.ino !== expected.ino)) return;
  await Deno.remove(path).catch(() => {});
}

/**
 * Whether saved resume state fits a blob of `size` whose partial file is
 * `fileSize` bytes: segments cover `[0, size)` in order, and each one's
 * written bytes lie within the file. Segments not started yet may begin
 * beyond the end of the file (it is written sparsely, in any order).
 */
export function validPartialState(
  state: unknown,
  size: number,
  fileSize: number,
): state is PartialState {
  if (typeof state !== "object" || state === null) return false;
  const { size: stateSize, segments } = state as Partial<PartialState>;
  if (stateSize !== size || !Array.isArray(segments) || segments.length === 0) return false;
  let next = 0;
  for (const s of segments as unknown[]) {
    if (typeof s !== "object" || s === null) return false;
    const { start, end, written } = s as Record<string, unknown>;
    if (
      !Number.isSafeInteger(start) || !Number.isSafeInteger(end) || !Number.isSafeInteger(written)
    ) return false;
    const [a, b, w] = [start as number, end as number, written as number];
    if (a !== next || b < a || w < 0 || a + w > b) return false;
    if (w > 0 && a + w > fileSize) return false;
    next = b;
  }
  return next === size;
}

/** Wraps a file-system failure in a {@link LocalIoError} with a readable reason. */
export function localIoError(e: unknown, message: string): ImgpullError {
  if (e instanceof ImgpullError) return e;
  let reason = e instanceof Error ? e.message : String(e);
  if (e instanceof Deno.errors.PermissionDenied) reason = "permission denied";
  else if (e instanceof Deno.errors.NotFound) reason = "no such file or directory";
  else if (e instanceof Error && /ENOSPC|No space left/i.test(e.message)) {
    reason = "no space left on device";
  }
  return new LocalIoError(`${message}: ${reason}`, { cause: e });
}
