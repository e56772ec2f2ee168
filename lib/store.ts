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
 * tmp/                       scratch files of running pulls
 * ```
 *
 * Several processes may share one store: a blob is downloaded by whoever
 * holds its lock (an advisory `flock`, released by the kernel if the holder
 * dies), others wait and reuse it. File names come only from validated
 * digests, so registry data can never name a path.
 *
 * @module
 */
import { parseDigest } from "./digest.ts";
import { ImgpullError, InterruptedError, LocalIoError } from "./errors.ts";

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

/** Where blobs live: the shared cache, or a pull's scratch directory. */
export class BlobStore {
  private constructor(
    readonly root: string,
    /** True for the shared cache: partial downloads are kept for the next run. */
    readonly persistent: boolean,
  ) {}

  /** Opens (creating if needed) the persistent cache at `root`. */
  static async open(root: string): Promise<BlobStore> {
    try {
      await makeLayout(root);
    } catch (e) {
      throw localIoError(e, `cannot use the cache directory ${root}`);
    }
    return new BlobStore(root, true);
  }

  /** Creates a fresh scratch store in a new hidden directory under `parent`. */
  static async createIn(parent: string): Promise<BlobStore> {
    try {
      const root = await Deno.makeTempDir({ dir: parent, prefix: ".imgpull-" });
      await makeLayout(root);
      return new BlobStore(root, false);
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

  /** A fresh path for a scratch file. */
  tempPath(label: string): string {
    return `${this.root}/tmp/${label.replace(/[^a-z0-9]/gi, "_")}-${crypto.randomUUID()}`;
  }

  /** Moves a verified file to its place under `blobs/`. */
  async commit(tempPath: string, digest: string): Promise<string> {
    const path = this.blobPath(digest);
    try {
      await Deno.mkdir(path.slice(0, path.lastIndexOf("/")), { recursive: true });
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
      await Deno.mkdir(path.slice(0, path.lastIndexOf("/")), { recursive: true });
      file = await Deno.open(path, { create: true, write: true });
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

  /** Saved resume state of a partial blob, if it is usable for `size`. */
  async readPartial(digest: string, size: number): Promise<PartialState | undefined> {
    try {
      const state = JSON.parse(
        await Deno.readTextFile(this.#path("partial", digest, ".json")),
      ) as PartialState;
      const file = await Deno.stat(this.partialPath(digest));
      const valid = state.size === size && Array.isArray(state.segments) &&
        state.segments.every((s) =>
          Number.isSafeInteger(s.start) && Number.isSafeInteger(s.end) &&
          Number.isSafeInteger(s.written) && s.written >= 0 && s.start + s.written <= s.end &&
          s.end <= size && s.start + s.written <= file.size
        );
      return valid ? state : undefined;
    } catch {
      return undefined;
    }
  }

  /** Records how much of a partial blob is written. */
  async writePartial(digest: string, state: PartialState): Promise<void> {
    const path = this.#path("partial", digest, ".json");
    const temp = `${path}.${crypto.randomUUID().slice(0, 8)}`;
    try {
      await Deno.mkdir(path.slice(0, path.lastIndexOf("/")), { recursive: true });
      await Deno.writeTextFile(temp, JSON.stringify(state));
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
      await Deno.mkdir(path.slice(0, path.lastIndexOf("/")), { recursive: true });
      await Deno.writeTextFile(temp, blobDigest);
      await Deno.rename(temp, path);
    } catch (e) {
      await Deno.remove(temp).catch(() => {});
      throw localIoError(e, `cannot record diff_id ${diffId}`);
    }
  }

  /** A stored blob whose uncompressed content has `diffId`, if any. */
  async blobForDiffId(diffId: string): Promise<{ digest: string; size: number } | undefined> {
    // An uncompressed layer is stored under its own digest, which is its diff_id.
    const plain = await this.size(diffId);
    if (plain !== undefined) return { digest: diffId, size: plain };
    let digest: string;
    try {
      digest = parseDigest((await Deno.readTextFile(this.#path("diffids", diffId))).trim()).value;
    } catch {
      return undefined;
    }
    const size = await this.size(digest);
    return size === undefined ? undefined : { digest, size };
  }

  /** Deletes the store and everything in it (scratch stores only). */
  async remove(): Promise<void> {
    await Deno.remove(this.root, { recursive: true }).catch(() => {});
  }
}

/** Creates the store's directories (one per area and algorithm). */
async function makeLayout(root: string): Promise<void> {
  await Deno.mkdir(`${root}/tmp`, { recursive: true });
  for (const area of ["blobs", "partial", "locks", "diffids"]) {
    for (const algorithm of ["sha256", "sha512"]) {
      await Deno.mkdir(`${root}/${area}/${algorithm}`, { recursive: true });
    }
  }
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
