/**
 * Downloading blobs: each body is streamed to a temporary file while its
 * SHA-256 and size are checked, then moved into the {@link BlobStore}. No
 * blob is held in memory and no unverified byte reaches the store. A
 * dropped transfer resumes with `Range` from the bytes already hashed.
 *
 * @module
 */
import { DigestHasher, parseDigest } from "./digest.ts";
import { ImgpullError, IntegrityError, NetworkError } from "./errors.ts";
import type { PullEventSink } from "./events.ts";
import type { Descriptor } from "./manifest.ts";
import type { RegistryClient } from "./registry.ts";
import { type BlobStore, localIoError } from "./store.ts";
import { toNetworkError } from "./transport.ts";

/** Size of the buffer the body is read into (a BYOB reader fills up to half of it). */
const READ_BUFFER_BYTES = 1024 * 1024;
/** Emit a progress event at most this often per blob. */
const PROGRESS_INTERVAL_MS = 200;

/** Options of {@link downloadBlob}. */
export interface DownloadOptions {
  signal?: AbortSignal;
  onEvent?: PullEventSink;
  /** Retries after a transient failure (connection drop, 5xx, 429). */
  retries?: number;
  role?: "config" | "layer";
  index?: number;
}

/**
 * Downloads `descriptor` into `store` (unless it is already there) and
 * returns the path of the verified blob. A size of -1 means unknown
 * (schema1): then only the digest is checked.
 */
export async function downloadBlob(
  client: RegistryClient,
  descriptor: Descriptor,
  store: BlobStore,
  options: DownloadOptions = {},
): Promise<string> {
  const { digest, size } = descriptor;
  const onEvent = options.onEvent ?? (() => {});
  const role = options.role ?? "layer";
  const existing = await store.size(digest);
  if (existing !== undefined && (existing === size || size < 0)) {
    onEvent({ type: "blob-done", digest, size, reused: true });
    return store.blobPath(digest);
  }
  onEvent({ type: "blob-start", digest, size, role, index: options.index ?? 0 });
  const tempPath = store.tempPath(parseDigest(digest).hex.slice(0, 16));
  let file: Deno.FsFile;
  try {
    file = await Deno.open(tempPath, { write: true, createNew: true });
  } catch (e) {
    throw localIoError(e, `cannot create a temporary file for ${digest}`);
  }
  const transfer = new VerifiedTransfer(descriptor, file, onEvent);
  try {
    const retries = options.retries ?? 3;
    for (let attempt = 0;; attempt++) {
      try {
        await transfer.run(client, options.signal);
        break;
      } catch (e) {
        if (!(e instanceof NetworkError) || !e.retryable || attempt >= retries) throw e;
        options.signal?.throwIfAborted();
        const delay = backoffMs(attempt, e.retryAfterMs);
        onEvent({
          type: "debug",
          message: `retrying ${digest} from byte ${transfer.received} in ${delay} ms: ${e.message}`,
        });
        await sleep(delay, options.signal);
      }
    }
  } catch (e) {
    file.close();
    await Deno.remove(tempPath).catch(() => {});
    throw e;
  }
  file.close();
  const path = await store.commit(tempPath, digest);
  onEvent({ type: "blob-done", digest, size, reused: false });
  return path;
}

/** Exponential backoff with full jitter, honouring a (capped) Retry-After. */
export function backoffMs(attempt: number, retryAfterMs?: number): number {
  if (retryAfterMs !== undefined) return Math.min(retryAfterMs, 60_000);
  const ceiling = Math.min(500 * 2 ** attempt, 10_000);
  return Math.round(ceiling / 2 + Math.random() * ceiling / 2);
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** One blob's bytes flowing from the registry through the hasher into a file. */
class VerifiedTransfer {
  readonly #descriptor: Descriptor;
  readonly #file: Deno.FsFile;
  readonly #onEvent: PullEventSink;
  #hasher: DigestHasher;
  #buffer: ArrayBuffer = new ArrayBuffer(READ_BUFFER_BYTES);
  #lastProgress = 0;

  constructor(descriptor: Descriptor, file: Deno.FsFile, onEvent: PullEventSink) {
    this.#descriptor = descriptor;
    this.#file = file;
    this.#onEvent = onEvent;
    this.#hasher = new DigestHasher(parseDigest(descriptor.digest).algorithm);
  }

  /** Bytes written and hashed so far. */
  get received(): number {
    return this.#hasher.length;
  }

  /** Fetches the rest of the blob (all of it on the first call) and verifies it. */
  async run(client: RegistryClient, signal?: AbortSignal): Promise<void> {
    const { digest, size } = this.#descriptor;
    const start = this.received;
    const response = await client.openBlob(digest, {
      signal,
      range: start > 0 ? { start } : undefined,
    });
    if (start > 0 && !this.#acceptsResume(response, start)) {
      // The server sent the whole blob again: start over from byte 0.
      await this.#restart();
    }
    const remaining = size - this.received;
    const declared = response.headers.get("content-length");
    if (size >= 0 && declared !== null && Number(declared) !== remaining) {
      await response.body?.cancel();
      throw new IntegrityError(
        `blob ${digest}: registry announced ${declared} bytes, expected ${remaining}`,
      );
    }
    await this.#consume(response);
    if (size >= 0 && this.received !== size) {
      throw new IntegrityError(
        `blob ${digest}: received ${this.received} bytes, expected ${size}`,
      );
    }
    const actual = this.#hasher.digest();
    if (actual !== digest) {
      throw new IntegrityError(`blob ${digest}: content has digest ${actual}`, {
        hint: "the registry or a proxy altered the data; nothing was written",
      });
    }
  }

  #acceptsResume(response: Response, start: number): boolean {
    if (response.status !== 206) return false;
    const range = response.headers.get("content-range") ?? "";
    const match = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(range.trim());
    if (!match) return false;
    const size = this.#descriptor.size;
    return Number(match[1]) === start && (size < 0 || Number(match[2]) === size - 1);
  }

  async #restart(): Promise<void> {
    this.#hasher = new DigestHasher(parseDigest(this.#descriptor.digest).algorithm);
    await this.#file.truncate(0);
    await this.#file.seek(0, Deno.SeekMode.Start);
  }

  async #consume(response: Response): Promise<void> {
    const { digest, size } = this.#descriptor;
    if (!response.body) return;
    const reader = response.body.getReader({ mode: "byob" });
    try {
      for (;;) {
        let chunk: ReadableStreamReadResult<Uint8Array<ArrayBuffer>>;
        try {
          chunk = await reader.read(new Uint8Array(this.#buffer));
        } catch (e) {
          throw toNetworkError(e, response.url);
        }
        if (chunk.done) break;
        const bytes = chunk.value;
        if (size >= 0 && this.received + bytes.byteLength > size) {
          throw new IntegrityError(`blob ${digest}: registry sent more than ${size} bytes`);
        }
        this.#hasher.update(bytes);
        await this.#writeAll(bytes);
        this.#buffer = bytes.buffer;
        const now = Date.now();
        if (now - this.#lastProgress >= PROGRESS_INTERVAL_MS) {
          this.#lastProgress = now;
          this.#onEvent({ type: "blob-progress", digest, received: this.received, size });
        }
      }
    } catch (e) {
      await reader.cancel().catch(() => {});
      throw e;
    } finally {
      reader.releaseLock();
    }
    this.#onEvent({ type: "blob-progress", digest, received: this.received, size });
  }

  async #writeAll(bytes: Uint8Array): Promise<void> {
    try {
      let offset = 0;
      while (offset < bytes.byteLength) {
        offset += await this.#file.write(bytes.subarray(offset));
      }
    } catch (e) {
      if (e instanceof ImgpullError) throw e;
      throw localIoError(e, `cannot write blob ${this.#descriptor.digest}`);
    }
  }
}
