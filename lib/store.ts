/**
 * A content-addressed directory of verified blobs: `blobs/<alg>/<hex>`,
 * plus `tmp/` for transfers in progress. A blob enters `blobs/` only by an
 * atomic rename after its digest and size were checked, so anything found
 * there is verified. File names come only from validated digests.
 *
 * @module
 */
import { parseDigest } from "./digest.ts";
import { ImgpullError, LocalIoError } from "./errors.ts";

/** Where blobs of one pull are kept while the archive is assembled. */
export class BlobStore {
  private constructor(readonly root: string) {}

  /** Creates a fresh store in a new hidden directory under `parent`. */
  static async createIn(parent: string): Promise<BlobStore> {
    try {
      const root = await Deno.makeTempDir({ dir: parent, prefix: ".imgpull-" });
      await Deno.mkdir(`${root}/tmp`);
      return new BlobStore(root);
    } catch (e) {
      throw localIoError(e, `cannot create a working directory in ${parent}`);
    }
  }

  /** Path of a verified blob. */
  blobPath(digest: string): string {
    const d = parseDigest(digest);
    return `${this.root}/blobs/${d.algorithm}/${d.hex}`;
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

  /** A fresh path for a transfer in progress. */
  tempPath(label: string): string {
    return `${this.root}/tmp/${label.replace(/[^a-z0-9]/gi, "_")}-${crypto.randomUUID()}`;
  }

  /** Moves a verified temporary file to its place under `blobs/`. */
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

  /** Deletes the store and everything in it. */
  async remove(): Promise<void> {
    await Deno.remove(this.root, { recursive: true }).catch(() => {});
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
