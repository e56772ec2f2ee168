/**
 * Downloading blobs, verified while they stream. A large blob is split into
 * `Range` segments fetched over several connections (each written at its
 * own offset through its own file handle); a small one, or one from a
 * server that ignores `Range`, streams over one connection. Either way the
 * digest is computed over the whole blob in order: bytes that arrive at the
 * hash cursor are hashed in memory, the rest are read back from the file
 * once the bytes before them are in. Nothing enters the store unverified,
 * and a dropped segment resumes from the bytes it already wrote.
 *
 * @module
 */
import { Checkpointer, InOrderHasher } from "./blob_progress.ts";
import { parseDigest } from "./digest.ts";
import { formatBytes } from "./compression.ts";
import { ImgpullError, IntegrityError, InvalidContentError, NotFoundError } from "./errors.ts";
import type { PullEventSink } from "./events.ts";
import type { Descriptor } from "./manifest.ts";
import { isLoopbackRegistry } from "./reference.ts";
import { StallTimer, withRetries } from "./retry.ts";
import { NEAR_LATENCY_MS, planSegments, type Segment, SegmentScheduler } from "./segments.ts";
import { Semaphore } from "./semaphore.ts";
import { type BlobStore, localIoError, type PartialState } from "./store.ts";
import {
  blobRequestHeaders,
  errorForResponse,
  type TlsOptions,
  toNetworkError,
  Transport,
} from "./transport.ts";

/** Size of the buffer a body is read into (a body read returns up to 64 KiB here). */
const READ_BUFFER_BYTES = 128 * 1024;
/** Size of the buffer reads are gathered in before one file write. */
const WRITE_BUFFER_BYTES = 1024 * 1024;
/**
 * Longest time received bytes wait in memory for more: on a slow connection a crash then loses
 * little (what is on disk is resumed), and progress stays current. Fast transfers fill the
 * buffer long before.
 */
const MAX_GATHER_MS = 100;
/** Emit a progress event at most this often per blob. */
const PROGRESS_INTERVAL_MS = 200;
/** Segments are never smaller than this: below it, a request's round trip costs more than it gains. */
const MIN_SEGMENT_BYTES = 512 * 1024;
/** Neither half of a segment split at the tail is smaller than this. */
const MIN_SPLIT_BYTES = 256 * 1024;
/** How often an idle connection looks for a tail to split. */
const SPLIT_POLL_MS = 50;
/** How often resume information of a partial blob is saved. */
const CHECKPOINT_MS = 1000;

/**
 * Least progress (bytes) a failed transfer must have made for its retry not
 * to count against `--retries`: a server dripping a few bytes per connection
 * cannot keep a download alive forever.
 */
const MIN_RETRY_PROGRESS_BYTES = 64 * 1024;

/**
 * Largest blob of unknown size (schema1 layers have none) downloaded when
 * {@link FetchPolicy.maxLayerBytes} is not set: beyond it the registry is
 * sending an endless body.
 */
export const DEFAULT_MAX_UNKNOWN_SIZE_BYTES: number = 10 * 1024 * 1024 * 1024;

/** Connections streaming blob data at once, unless told otherwise (see docs/benchmarks.md). */
export const DEFAULT_CONNECTIONS = 16;

/** How blobs are fetched; shared by all downloads of one pull. */
export interface FetchPolicy {
  /** Bounds the HTTP requests streaming at once, across all blobs (the connection budget). */
  connections: Semaphore;
  /** Number of permits in {@link connections}. */
  connectionCount: number;
  /** Blobs being fetched in segments right now (they share the budget fairly). */
  segmentedBlobs: number;
  /** Free write buffers ({@link WRITE_BUFFER_BYTES}), reused by the transfers of this pull. */
  buffers: ArrayBuffer[];
  /** Free read buffers ({@link READ_BUFFER_BYTES}), reused likewise. */
  readBuffers: ArrayBuffer[];
  /** Largest Range segment (blobs under 1 MiB always stream over one connection). */
  maxSegmentBytes: number;
  /** Retries per segment after a transient failure. */
  retries: number;
  /** A transfer that receives nothing for this long is aborted (and retried). */
  stallTimeoutMs: number;
  /**
   * The user's largest acceptable layer (`--max-layer-size`), in bytes: a
   * descriptor announcing more is refused before any request, and a blob of
   * unknown size (schema1) is cut off past it. Unset: descriptors are
   * trusted (sizes are verified anyway) and unknown sizes stop at
   * {@link DEFAULT_MAX_UNKNOWN_SIZE_BYTES}.
   */
  maxLayerBytes?: number;
  /** `--limit-rate`: blob bytes per second for the whole pull, across every connection. */
  limitRateBytes?: number;
  /** Paces every transfer to {@link limitRateBytes} (one bucket for the whole pull). */
  rateLimiter?: RateLimiter;
}

/** Burst a rate limit allows after an idle moment: short, so the average holds over seconds. */
const RATE_BURST_MS = 50;

/**
 * A token bucket (kept as a virtual clock) shared by every transfer of a process: each chunk
 * read books `bytes ÷ rate` of link time, and the reader waits until the booking falls due.
 * While it waits it does not read, so TCP flow control slows the sender. What is idle is not
 * saved up beyond a short burst, so the average rate of a pull stays at the limit.
 */
export class RateLimiter {
  readonly bytesPerSecond: number;
  /** Virtual time (ms, `performance.now()` scale) at which the bytes booked so far are due. */
  #due = 0;

  constructor(bytesPerSecond: number) {
    if (!(bytesPerSecond > 0) || !Number.isFinite(bytesPerSecond)) {
      throw new RangeError(`rate limit must be a positive number of bytes per second`);
    }
    this.bytesPerSecond = bytesPerSecond;
  }

  /**
   * Bytes to allow per read: at most 50 ms of the link, and no more than a body read returns
   * when data is waiting (64 KiB), so that what is booked before a read is what arrives.
   */
  get chunkBytes(): number {
    return Math.max(4096, Math.min(64 * 1024, Math.floor(this.bytesPerSecond / 20)));
  }

  /** Gives back link time booked for bytes that did not come (a short read, an error). */
  refund(bytes: number): void {
    if (bytes > 0) this.#due -= (bytes * 1000) / this.bytesPerSecond;
  }

  /** Books `bytes` about to be read and waits until the average rate allows them. */
  async take(bytes: number, signal?: AbortSignal): Promise<void> {
    const now = performance.now();
    this.#due = Math.max(this.#due, now - RATE_BURST_MS) + (bytes * 1000) / this.bytesPerSecond;
    const wait = this.#due - now;
    if (wait <= 0) return;
    signal?.throwIfAborted();
    await new Promise<void>((resolve, reject) => {
      const onAbort = () => {
        clearTimeout(timer);
        reject(signal!.reason);
      };
      const timer = setTimeout(() => {
        signal?.removeEventListener("abort", onAbort);
        resolve();
      }, wait);
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }
}

/** A policy with the documented defaults. */
export function fetchPolicy(
  options: {
    connections?: number;
    maxSegmentBytes?: number;
    retries?: number;
    stallTimeoutMs?: number;
    maxLayerBytes?: number;
    /** `--limit-rate` in bytes per second (see {@link RateLimiter}). */
    limitRateBytes?: number;
  } = {},
): FetchPolicy {
  const connectionCount = options.connections ?? DEFAULT_CONNECTIONS;
  const rate = options.limitRateBytes;
  return {
    connections: new Semaphore(connectionCount),
    connectionCount,
    segmentedBlobs: 0,
    buffers: [],
    readBuffers: [],
    maxSegmentBytes: options.maxSegmentBytes ?? 8 * 1024 * 1024,
    retries: options.retries ?? 3,
    stallTimeoutMs: options.stallTimeoutMs ?? 30_000,
    maxLayerBytes: options.maxLayerBytes,
    limitRateBytes: rate,
    rateLimiter: rate !== undefined ? new RateLimiter(rate) : undefined,
  };
}

/** Options of {@link downloadBlob}. */
export interface DownloadOptions {
  policy: FetchPolicy;
  /** Also write the blob here: its place in the archive being assembled. */
  output?: BlobSink;
  signal?: AbortSignal;
  onEvent?: PullEventSink;
  index?: number;
}

/** Thrown inside a transfer when a server answers a Range request with the whole blob. */
class RangeIgnored extends Error {}

/** Where blob bytes come from: a registry ({@link RegistryClient}) or a plain URL. */
export interface BlobSource {
  /**
   * The source's shortest request time so far (ms), when known: a near source (see
   * {@link NEAR_LATENCY_MS}) gets one connection per blob.
   */
  readonly latencyMs?: number;
  /** Opens the blob (or a byte range of it); the caller consumes or cancels the body. */
  openBlob(
    digest: string,
    init?: { signal?: AbortSignal; range?: { start: number; end?: number } },
  ): Promise<Response>;
}

/** Whether a foreign layer URL may be fetched, and why not. */
export type ForeignUrlVerdict = { allowed: true; url: URL } | { allowed: false; reason: string };

/**
 * The policy for a foreign layer's `urls`, which come from the registry and
 * make us issue GETs to addresses of its choosing: HTTPS only, never with
 * user info (`user:pass@`) in the URL; plain HTTP only to loopback when the
 * registry itself is plain HTTP on loopback (a local test setup); and no
 * loopback address at all unless the registry is on loopback too (a remote
 * registry must not make us probe services on this machine).
 * `registryUrl` is the registry's base URL (e.g. `https://quay.io`).
 */
export function foreignUrlAllowed(url: string, registryUrl: string): ForeignUrlVerdict {
  let parsed: URL;
  let registry: URL;
  try {
    parsed = new URL(url);
    registry = new URL(registryUrl);
  } catch {
    return { allowed: false, reason: "not a valid URL" };
  }
  if (parsed.username || parsed.password) {
    return { allowed: false, reason: "the URL carries credentials" };
  }
  const loopback = isLoopbackRegistry(parsed.host);
  const registryLoopback = isLoopbackRegistry(registry.host);
  if (parsed.protocol === "http:") {
    if (!(loopback && registryLoopback && registry.protocol === "http:")) {
      return { allowed: false, reason: "plain HTTP is not allowed for foreign layers" };
    }
  } else if (parsed.protocol !== "https:") {
    return { allowed: false, reason: `${parsed.protocol} URLs are not allowed` };
  }
  if (loopback && !registryLoopback) {
    return { allowed: false, reason: "a remote registry may not point at this machine" };
  }
  return { allowed: true, url: parsed };
}

/** Options of {@link UrlBlobSource}. */
export interface UrlBlobSourceOptions {
  tls?: TlsOptions;
  /** The registry's base URL: applies {@link foreignUrlAllowed} (strongly advised). */
  registryUrl?: string;
}

/**
 * A foreign layer's own URL (a descriptor's `urls`), fetched without any
 * credentials (its own transport, no auth session, no cookies). Only HTTPS,
 * unless the URL is on loopback; with `registryUrl`, the full
 * {@link foreignUrlAllowed} policy.
 */
export class UrlBlobSource implements BlobSource {
  readonly #transport: Transport;
  readonly #registryUrl?: string;

  constructor(readonly url: string, options: UrlBlobSourceOptions = {}) {
    const parsed = new URL(url);
    const loopback = isLoopbackRegistry(parsed.host);
    if (parsed.protocol !== "https:" && !(parsed.protocol === "http:" && loopback)) {
      throw new NotFoundError(`refusing to fetch a foreign layer over ${parsed.protocol} (${url})`);
    }
    if (options.registryUrl !== undefined) {
      const verdict = foreignUrlAllowed(url, options.registryUrl);
      if (!verdict.allowed) {
        throw new InvalidContentError(`refusing foreign layer URL ${url}: ${verdict.reason}`);
      }
    }
    if (parsed.username || parsed.password) {
      throw new InvalidContentError(`refusing foreign layer URL with credentials in it`);
    }
    this.#transport = new Transport(options.tls ?? {});
    this.#registryUrl = options.registryUrl;
  }

  async openBlob(
    digest: string,
    init: { signal?: AbortSignal; range?: { start: number; end?: number } } = {},
  ): Promise<Response> {
    const headers = blobRequestHeaders(init.range);
    // Every hop of a redirect is held to the same policy as the URL itself.
    const registryUrl = this.#registryUrl;
    const checkRedirect = registryUrl === undefined ? undefined : (next: URL) => {
      const verdict = foreignUrlAllowed(next.href, registryUrl);
      return verdict.allowed ? undefined : verdict.reason;
    };
    const response = await this.#transport.fetch(this.url, {
      headers,
      signal: init.signal,
      checkRedirect,
    });
    if (!response.ok) {
      throw await errorForResponse(response, `foreign layer ${digest} at ${this.url}`);
    }
    return response;
  }

  close(): void {
    this.#transport.close();
  }
}

/** A URL as shown in messages: registry text, so kept short. */
function shownUrl(url: string): string {
  return url.length > 200 ? `${url.slice(0, 200)}…` : url;
}

/**
 * Fetches a foreign layer the registry does not serve from the URLs its
 * descriptor lists, the first that works, under {@link foreignUrlAllowed}.
 * Emits a notice for each URL refused (and why) and for the URL fetched. An
 * integrity failure is final; when no URL is acceptable, an
 * {@link InvalidContentError} lists why; otherwise the last error is thrown.
 */
export async function downloadForeignLayer(
  descriptor: Descriptor,
  store: BlobStore,
  options: DownloadOptions,
  context: { registryUrl: string; registryError: ImgpullError; tls?: TlsOptions },
): Promise<DownloadedBlob> {
  const onEvent = options.onEvent ?? (() => {});
  const layer = descriptor.digest;
  const refused: string[] = [];
  let lastError: unknown;
  for (const url of descriptor.urls ?? []) {
    const verdict = foreignUrlAllowed(url, context.registryUrl);
    if (!verdict.allowed) {
      refused.push(`${shownUrl(url)} (${verdict.reason})`);
      onEvent({
        type: "notice",
        message: `Layer ${layer} is not in the registry; not fetching ${shownUrl(url)}: ` +
          verdict.reason,
      });
      continue;
    }
    const source = new UrlBlobSource(url, { tls: context.tls, registryUrl: context.registryUrl });
    try {
      onEvent({
        type: "notice",
        message: `Layer ${layer} is not in the registry; fetching ${shownUrl(url)}`,
      });
      return await downloadBlob(source, descriptor, store, options);
    } catch (e) {
      if (e instanceof IntegrityError || options.signal?.aborted) throw e;
      onEvent({ type: "debug", message: `${shownUrl(url)}: ${(e as Error).message}` });
      lastError = e;
    } finally {
      source.close();
    }
  }
  if (lastError !== undefined) throw lastError;
  if (refused.length > 0) {
    throw new InvalidContentError(
      `layer ${layer} is not in the registry and its foreign URLs are refused: ` +
        refused.slice(0, 3).join(", ") + (refused.length > 3 ? ", …" : ""),
      { hint: "foreign layers are fetched over HTTPS only", cause: context.registryError },
    );
  }
  throw context.registryError;
}

/** A file, and the offset in it, where a blob's bytes are written. */
export interface BlobSink {
  path: string;
  offset: number;
}

/** Where a downloaded blob ended up. */
export interface DownloadedBlob {
  /** The verified blob in the store; undefined when it was written only to `output`. */
  path?: string;
  /** True when the bytes were also written to `options.output`. */
  inOutput: boolean;
}

/**
 * Downloads `descriptor` (unless it is in `store` already) and verifies it.
 * With `options.output`, the bytes are also written there (the archive being
 * assembled); in a scratch store that is the only copy. A size of -1 means
 * unknown (schema1): then it streams over one connection and only the
 * digest is checked. In the persistent cache the download holds the blob's
 * lock (other processes wait for it) and an interrupted transfer leaves a
 * partial file that the next run resumes.
 */
export async function downloadBlob(
  client: BlobSource,
  descriptor: Descriptor,
  store: BlobStore,
  options: DownloadOptions,
): Promise<DownloadedBlob> {
  const { digest, size } = descriptor;
  const onEvent = options.onEvent ?? (() => {});
  const limit = options.policy.maxLayerBytes;
  if (limit !== undefined && size > limit) {
    throw new InvalidContentError(
      `blob ${digest} is ${formatBytes(size)}, more than the limit of ${formatBytes(limit)}`,
      { hint: "raise the limit with --max-layer-size if the image is genuine" },
    );
  }
  // The output is a planned archive member: its size must be known.
  if (options.output && size < 0) throw new Error(`blob ${digest} of unknown size has no place`);
  const reuse = async (): Promise<DownloadedBlob | undefined> => {
    const existing = await store.size(digest);
    if (existing === undefined || (existing !== size && size >= 0)) return undefined;
    onEvent({ type: "blob-done", digest, size: existing, reused: true });
    const path = store.blobPath(digest);
    // The modification time records the last use, for pruning by age.
    if (store.persistent) await store.touch(digest);
    return { path, inOutput: false };
  };
  const cached = await reuse();
  if (cached) return cached;
  // Only the shared cache needs a lock: a scratch store belongs to one pull.
  const lock = store.persistent ? await store.lock(digest, options.signal) : undefined;
  try {
    if (store.persistent) {
      const ready = await reuse();
      if (ready) return ready;
    }
    onEvent({
      type: "blob-start",
      digest,
      size,
      index: options.index ?? 0,
    });
    const resumable = store.persistent && size >= 0;
    let resume = resumable ? await store.readPartial(digest, size) : undefined;
    for (;;) {
      // The store's copy: the cache's partial file, or a scratch file when the
      // blob is not written straight into the archive.
      const primary = resumable
        ? store.partialPath(digest)
        : options.output
        ? undefined
        : store.tempPath(parseDigest(digest).hex.slice(0, 16));
      // Bytes of an earlier run are not in this archive: such a blob is copied in later.
      const mirrored = options.output !== undefined && resume === undefined;
      const sinks: BlobSink[] = [];
      if (primary) sinks.push({ path: primary, offset: 0 });
      if (mirrored) sinks.push(options.output!);
      if (primary && !resume) {
        // The cache's partial is created without following a link someone may have planted.
        if (resumable) await store.createPartial(digest);
        else await createEmpty(primary);
      }
      if (resume) {
        onEvent({
          type: "debug",
          message: `resuming ${digest} from a previous run (${
            resume.segments.reduce((n, s) => n + s.written, 0)
          } bytes on disk)`,
        });
      }
      const transfer = new BlobTransfer(client, descriptor, sinks, options, {
        resume: resume?.segments,
        checkpoint: resumable ? (state) => store.writePartial(digest, state) : undefined,
      });
      try {
        await transfer.run();
      } catch (e) {
        const resumed = resume !== undefined;
        if (resumable && !(e instanceof IntegrityError)) {
          await transfer.checkpointNow();
        } else if (resumable) {
          await store.removePartial(digest);
        } else if (primary) {
          await Deno.remove(primary).catch(() => {});
        }
        // Bytes left by an earlier run did not verify: start over once, from nothing.
        if (resumed && e instanceof IntegrityError) {
          onEvent({ type: "debug", message: `discarding a corrupt partial of ${digest}` });
          resume = undefined;
          continue;
        }
        throw e;
      }
      onEvent({ type: "blob-done", digest, size, reused: false });
      if (!primary) return { inOutput: true };
      const committed = await store.commit(primary, digest);
      if (resumable) await store.removePartial(digest);
      return { path: committed, inOutput: mirrored };
    }
  } finally {
    lock?.release();
  }
}

async function createEmpty(path: string): Promise<void> {
  try {
    await Deno.writeFile(path, new Uint8Array(0));
  } catch (e) {
    throw localIoError(e, `cannot create ${path}`);
  }
}

/** Splits `size` bytes into segments for the policy's connections (see {@link planSegments}). */
function initialSegments(size: number, policy: FetchPolicy, near: boolean): Segment[] {
  return planSegments(size, {
    connections: near ? 1 : policy.connectionCount,
    maxSegmentBytes: policy.maxSegmentBytes,
    minSegmentBytes: MIN_SEGMENT_BYTES,
  });
}

/** Parses `Content-Range: bytes a-b/total`. */
function contentRange(response: Response): { start: number; end: number; total?: number } | null {
  const match = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(
    (response.headers.get("content-range") ?? "").trim(),
  );
  if (!match) return null;
  return {
    start: Number(match[1]),
    end: Number(match[2]) + 1,
    total: match[3] === "*" ? undefined : Number(match[3]),
  };
}

/**
 * One blob's bytes flowing from the registry into its files: the requests, the reads and the
 * writes. Which byte ranges to ask for, and when to split one, is the scheduler's
 * (lib/segments.ts); the hash in order and the resume information are the small pieces of
 * lib/blob_progress.ts.
 */
class BlobTransfer {
  readonly #client: BlobSource;
  readonly #descriptor: Descriptor;
  /** Files (and offsets in them) that receive the blob; the first is read back for hashing. */
  readonly #sinks: BlobSink[];
  readonly #options: DownloadOptions;
  readonly #onEvent: PullEventSink;
  /** The digest over the whole blob in order, whatever order the segments arrive in. */
  readonly #hasher: InOrderHasher;
  #segments: Segment[] = [];
  /** Furthest position each segment (by its start) ever reached, across restarts. */
  readonly #reached = new Map<number, number>();
  readonly #resume?: Segment[];
  /** Saves resume information of the cache's partial (absent for a scratch download). */
  readonly #checkpoints?: Checkpointer;
  #lastProgress = 0;

  constructor(
    client: BlobSource,
    descriptor: Descriptor,
    sinks: BlobSink[],
    options: DownloadOptions,
    persistence: {
      resume?: Segment[];
      checkpoint?: (state: PartialState) => Promise<void>;
    } = {},
  ) {
    this.#client = client;
    this.#descriptor = descriptor;
    this.#sinks = sinks;
    this.#options = options;
    this.#onEvent = options.onEvent ?? (() => {});
    const segments = () => this.#segments;
    this.#hasher = new InOrderHasher(parseDigest(descriptor.digest).algorithm, sinks[0], segments);
    this.#resume = persistence.resume?.map((s) => ({ ...s }));
    const save = persistence.checkpoint;
    if (save) this.#checkpoints = new Checkpointer(descriptor.size, segments, save, CHECKPOINT_MS);
  }

  /** Saves how much is written now (after a failure, so the next run can resume). */
  async checkpointNow(): Promise<void> {
    await this.#checkpoints?.now();
  }

  get #received(): number {
    return this.#segments.reduce((sum, s) => sum + s.written, 0);
  }

  /** Whether the source is near ({@link NEAR_LATENCY_MS}): one connection per blob. */
  get #near(): boolean {
    const latency = this.#client.latencyMs;
    return latency !== undefined && latency < NEAR_LATENCY_MS;
  }

  async run(): Promise<void> {
    const { size, digest } = this.#descriptor;
    this.#segments = this.#resume ??
      (size >= 0
        ? initialSegments(size, this.#options.policy, this.#near)
        : [{ start: 0, end: Infinity, written: 0 }]);
    // Bytes a previous run left on disk are hashed first, from the file.
    this.#hasher.schedule();
    // A big blob from a near source starts over one connection, watched (see #runSegments).
    const watched = this.#resume === undefined && size >= 2 * MIN_SEGMENT_BYTES &&
      this.#options.policy.connectionCount > 1 && this.#segments.length === 1;
    if (this.#segments.length > 1 || watched) {
      try {
        await this.#runSegments(watched);
      } catch (e) {
        if (!(e instanceof RangeIgnored)) throw e;
        this.#onEvent({
          type: "debug",
          message: `${digest}: the server ignores Range; downloading over one connection`,
        });
        await this.#reset();
        this.#segments = [{ start: 0, end: size, written: 0 }];
        await this.#runWhole();
      }
    } else {
      await this.#runWhole();
    }
    await this.#checkpoints?.settled();
    await this.#hasher.settle();
    const received = this.#received;
    if (size >= 0 && (received !== size || this.#hasher.cursor !== size)) {
      throw new IntegrityError(`blob ${digest}: received ${received} bytes, expected ${size}`);
    }
    const actual = this.#hasher.digest();
    if (actual !== digest) {
      throw new IntegrityError(`blob ${digest}: content has digest ${actual}`, {
        hint: "the registry or a proxy altered the data; nothing was written",
      });
    }
    this.#onEvent({ type: "blob-progress", digest, received, size });
  }

  async #reset(): Promise<void> {
    await this.#hasher.reset();
    // No truncation: the restarted transfer overwrites every position again.
  }

  /** The whole blob over one connection (small blobs, unknown sizes, servers without Range). */
  async #runWhole(): Promise<void> {
    await this.#withRetries(this.#segments[0], (s) => this.#fetchSegment(s, false));
  }

  /**
   * All segments, in order, by a pool of workers each fetching one segment
   * at a time. Blobs share the connection budget fairly: a blob gets
   * `connections ÷ blobs being segmented` workers, so one that starts later
   * is not starved (the first blob's extra workers retire after their current
   * segment) and one that is left alone grows into the freed connections.
   * The first failure (after its retries) stops the others.
   */
  async #runSegments(watched = false): Promise<void> {
    const policy = this.#options.policy;
    const stop = new AbortController();
    const signal = this.#options.signal
      ? AbortSignal.any([this.#options.signal, stop.signal])
      : stop.signal;
    // Hands out the segments, and at the tail splits the one that would finish last.
    const scheduler = new SegmentScheduler(this.#segments, { minSplitBytes: MIN_SPLIT_BYTES });
    const fairShare = () =>
      Math.max(1, Math.ceil(policy.connectionCount / Math.max(1, policy.segmentedBlobs)));
    const workers: Promise<void>[] = [];
    // Counted at each decision (not in a `finally`), so that two workers
    // deciding in the same tick cannot both retire and strand the queue.
    let running = 0;
    // Waiters (idle workers, the watcher) look again when a segment ends, or after a while.
    let ended = Promise.withResolvers<void>();
    const segmentEnded = () => {
      ended.resolve();
      ended = Promise.withResolvers<void>();
    };
    const pause = () =>
      new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          signal.removeEventListener("abort", done);
          resolve();
        };
        const timer = setTimeout(done, SPLIT_POLL_MS);
        signal.addEventListener("abort", done, { once: true });
        ended.promise.then(done);
      });
    const worker = async () => {
      for (;;) {
        let segment = signal.aborted ? undefined : scheduler.take(performance.now());
        // Nothing queued: an idle connection waits for a tail worth splitting, until the
        // last active segment ends.
        while (!segment && scheduler.active > 0 && !signal.aborted) {
          await pause();
          segment = signal.aborted ? undefined : scheduler.take(performance.now());
        }
        if (!segment) {
          running--;
          return;
        }
        try {
          await this.#withRetries(
            segment,
            (s) => this.#fetchSegment(s, true, signal, scheduler),
            signal,
          );
        } catch (e) {
          running--;
          stop.abort(e);
          throw e;
        }
        segmentEnded();
        if (running > fairShare()) {
          running--;
          return;
        }
        grow();
      }
    };
    const grow = () => {
      while (running < fairShare() && scheduler.queued > running && !signal.aborted) {
        running++;
        workers.push(worker());
      }
    };
    // A blob started over one connection (a near source) is spread over the blob's share of
    // connections as soon as its first request shows a far or slow one.
    const watch = async () => {
      const [only] = this.#segments;
      for (;;) {
        await pause();
        if (signal.aborted || only.start + only.written >= only.end) return;
        const decision = scheduler.spreadDecision(only, performance.now());
        if (decision === "stay") return;
        if (decision === "spread") {
          const queued = scheduler.spread(only, fairShare());
          this.#onEvent({
            type: "debug",
            message: `${this.#descriptor.digest}: one connection is not enough here; ` +
              `${queued + 1} segments`,
          });
          grow();
          return;
        }
      }
    };
    policy.segmentedBlobs++;
    let watching: Promise<void> | undefined;
    try {
      // Until every segment is fetched (or one failed); workers may retire or spawn others.
      while (scheduler.queued > 0 && !signal.aborted) {
        running++;
        workers.push(worker());
        grow();
        if (watched) watching ??= watch();
        for (let settled = 0; settled < workers.length;) {
          const batch = workers.slice(settled);
          await Promise.allSettled(batch);
          settled += batch.length;
        }
      }
    } finally {
      policy.segmentedBlobs--;
    }
    await watching;
    // A failed segment, or the caller's abort: never fall through to the size check.
    signal.throwIfAborted();
  }

  #withRetries(
    segment: Segment,
    attempt: (s: Segment) => Promise<void>,
    signal = this.#options.signal,
  ): Promise<void> {
    return withRetries(() => attempt(segment), {
      retries: this.#options.policy.retries,
      signal,
      // A retry that got further than any attempt before starts a fresh count; bytes fetched
      // again after a restart (a server ignoring Range) are not progress.
      progress: () => {
        const best = Math.max(
          this.#reached.get(segment.start) ?? segment.start,
          segment.start + segment.written,
        );
        this.#reached.set(segment.start, best);
        return best;
      },
      minProgress: MIN_RETRY_PROGRESS_BYTES,
      onRetry: (e, n, delay) =>
        this.#onEvent({
          type: "debug",
          message: `retry ${n} of ${this.#descriptor.digest} from byte ` +
            `${segment.start + segment.written} in ${delay} ms: ${e.message}`,
        }),
    });
  }

  /**
   * Fetches what is missing of one segment under a connection permit. With
   * `ranged` false the segment is the whole blob and a plain GET is used
   * unless it is being resumed. A transfer that receives nothing for the
   * stall timeout is aborted with a retryable error. The `scheduler` (segmented
   * blobs) hears of the segment's progress, and may cut its end short.
   */
  #fetchSegment(
    segment: Segment,
    ranged: boolean,
    signal?: AbortSignal,
    scheduler?: SegmentScheduler,
  ): Promise<void> {
    if (segment.start + segment.written === segment.end) return Promise.resolve();
    // Small blobs skip the budget: they are over in a round trip, and must not
    // queue behind the segments of large ones.
    const small = !ranged && segment.end - segment.start < MIN_SEGMENT_BYTES;
    const withPermit = small
      ? (task: () => Promise<void>) => task()
      : (task: () => Promise<void>) => this.#options.policy.connections.run(task);
    return withPermit(async () => {
      for (;;) {
        const stall = new StallTimer(
          this.#options.policy.stallTimeoutMs,
          `blob ${this.#descriptor.digest}`,
        );
        try {
          const outer = signal ?? this.#options.signal;
          const restarted = await this.#transferSegment(
            segment,
            ranged,
            stall,
            outer ? AbortSignal.any([outer, stall.signal]) : stall.signal,
            scheduler,
          );
          if (!restarted) return;
        } finally {
          stall.clear();
          scheduler?.ended(segment);
        }
      }
    });
  }

  /** One request for a segment; true when the blob had to restart from byte 0. */
  async #transferSegment(
    segment: Segment,
    ranged: boolean,
    stall: StallTimer,
    signal: AbortSignal,
    scheduler?: SegmentScheduler,
  ): Promise<boolean> {
    const digest = this.#descriptor.digest;
    const from = segment.start + segment.written;
    // What is asked for: the segment's end may move down meanwhile (its tail split off).
    const requestedEnd = segment.end;
    const useRange = ranged || segment.written > 0;
    scheduler?.began(segment, performance.now());
    const response = await this.#client.openBlob(digest, {
      signal,
      range: useRange
        ? { start: from, end: Number.isFinite(requestedEnd) ? requestedEnd - 1 : undefined }
        : undefined,
    });
    // The whole blob asked for as a range (a blob started over one connection) may come as a
    // plain 200: the same bytes.
    const whole = response.status === 200 && from === 0 && requestedEnd === this.#descriptor.size;
    if (useRange && !whole) {
      const range = response.status === 206 ? contentRange(response) : null;
      const total = this.#descriptor.size;
      const matches = range !== null && range.start === from &&
        (!Number.isFinite(requestedEnd) || range.end === requestedEnd) &&
        (range.total === undefined || total < 0 || range.total === total);
      if (!matches) {
        await response.body?.cancel();
        if (ranged) throw new RangeIgnored();
        // A resumed whole-blob transfer that got the whole blob again: start over.
        await this.#reset();
        segment.written = 0;
        return true;
      }
    }
    const expected = requestedEnd - from;
    const declared = response.headers.get("content-length");
    if (Number.isFinite(expected) && declared !== null && Number(declared) !== expected) {
      await response.body?.cancel();
      throw new IntegrityError(
        `blob ${digest}: registry announced ${declared} bytes, expected ${expected}`,
      );
    }
    await this.#consume(response, segment, stall, requestedEnd, scheduler);
    // The body ended cleanly (a dropped connection errors the stream instead):
    // the server sent a complete message of the wrong size.
    if (Number.isFinite(segment.end) && segment.start + segment.written !== segment.end) {
      throw new IntegrityError(
        `blob ${digest}: registry sent ${segment.start + segment.written - from} bytes ` +
          `where ${segment.end - from} were expected`,
      );
    }
    return false;
  }

  /**
   * Streams a response body into the sinks at the segment's place. Bytes past `requestedEnd`
   * are the registry's fault; bytes past the segment's current end (its tail was split off for
   * another connection) are not written, and the body is left there.
   */
  async #consume(
    response: Response,
    segment: Segment,
    stall: StallTimer,
    requestedEnd: number,
    scheduler?: SegmentScheduler,
  ): Promise<void> {
    const { digest, size } = this.#descriptor;
    if (!response.body) return;
    const bound = size >= 0
      ? size
      : this.#options.policy.maxLayerBytes ?? DEFAULT_MAX_UNKNOWN_SIZE_BYTES;
    // One handle per writer: concurrent segments must not share a file position.
    const files = await Promise.all(this.#sinks.map(async (sink) => {
      const file = await Deno.open(sink.path, { write: true });
      await file.seek(sink.offset + segment.start + segment.written, Deno.SeekMode.Start);
      return file;
    }));
    using _closer = { [Symbol.dispose]: () => files.forEach((f) => f.close()) };
    const reader = response.body.getReader({ mode: "byob" });
    // Buffers are reused across segments: fewer allocations, a lower peak RSS.
    const pool = this.#options.policy.buffers;
    const reads = this.#options.policy.readBuffers;
    // A body read returns 16–64 KiB, and one asynchronous file write per read costs more than
    // the write itself (512 MiB: 1.3 s in 64 KiB writes, 0.4 s in 1 MiB writes). So reads are
    // gathered in a write buffer that goes to disk when it cannot take another read. The reads
    // go into a buffer of their own: a BYOB read takes its buffer over, and a failed read
    // keeps it, while what was gathered before the failure is still written (resumed from).
    const gathered = new Uint8Array(pool.pop() ?? new ArrayBuffer(WRITE_BUFFER_BYTES));
    let readBuffer: ArrayBuffer | undefined = reads.pop() ?? new ArrayBuffer(READ_BUFFER_BYTES);
    const limiter = this.#options.policy.rateLimiter;
    let filled = 0;
    let cut = false;
    let flushedAt = performance.now();
    const flush = () => {
      flushedAt = performance.now();
      if (filled === 0) return;
      const bytes = gathered.subarray(0, filled);
      // Counted as written only once on disk (a failed write leaves nothing to flush again).
      filled = 0;
      const position = segment.start + segment.written;
      for (const file of files) this.#write(file, bytes);
      segment.written += bytes.byteLength;
      this.#hasher.offer(position, bytes);
      this.#progress();
      this.#checkpoints?.maybe();
    };
    try {
      for (;;) {
        let chunk: ReadableStreamReadResult<Uint8Array<ArrayBuffer>>;
        // Under a rate limit a read is allowed first (so what was received never runs ahead of
        // the limit, and progress shows the limited pace) and small (so waits stay short).
        const remaining = segment.end - (segment.start + segment.written + filled);
        const booked = limiter && remaining > 0 ? Math.min(limiter.chunkBytes, remaining) : 0;
        if (booked > 0) {
          flush();
          stall.pause(); // waiting for the limit is not a stall
          await limiter!.take(booked, this.#options.signal);
          stall.kick();
        }
        const view: Uint8Array<ArrayBuffer> = new Uint8Array(
          readBuffer!,
          0,
          limiter ? Math.min(readBuffer!.byteLength, Math.max(booked, 1)) : readBuffer!.byteLength,
        );
        // A BYOB read takes the buffer over; it is ours again only with the result.
        readBuffer = undefined;
        try {
          chunk = await reader.read(view);
        } catch (e) {
          limiter?.refund(booked);
          // A stall aborts the body with the stall's own (retryable) error.
          throw stall.signal.aborted ? stall.signal.reason : toNetworkError(e, response.url);
        }
        limiter?.refund(booked - (chunk.done ? 0 : chunk.value.byteLength));
        if (chunk.done) {
          if (chunk.value) readBuffer = chunk.value.buffer;
          break;
        }
        readBuffer = chunk.value.buffer;
        stall.kick();
        const bytes = chunk.value;
        const position = segment.start + segment.written + filled;
        // Never a byte past the planned member: the sinks are archive members and cache files.
        if (position + bytes.byteLength > requestedEnd || position + bytes.byteLength > bound) {
          if (size < 0) {
            throw new InvalidContentError(
              `blob ${digest} (size not announced) is larger than ${formatBytes(bound)}; ` +
                `refusing it`,
              { hint: "raise the limit with --max-layer-size if the image is genuine" },
            );
          }
          throw new IntegrityError(`blob ${digest}: registry sent more than ${size} bytes`);
        }
        // The segment's tail went to another connection: keep what is ours and stop.
        const ours = Math.max(0, Math.min(bytes.byteLength, segment.end - position));
        gathered.set(ours < bytes.byteLength ? bytes.subarray(0, ours) : bytes, filled);
        filled += ours;
        scheduler?.progressed(segment, segment.written + filled, performance.now());
        if (ours < bytes.byteLength) {
          cut = true;
          break;
        }
        const full = gathered.byteLength - filled < READ_BUFFER_BYTES;
        if (full || performance.now() - flushedAt >= MAX_GATHER_MS) flush();
      }
      flush();
      // The rest of the body is another connection's now; this connection closes.
      if (cut) await reader.cancel().catch(() => {});
    } catch (e) {
      await reader.cancel().catch(() => {});
      // What arrived before a dropped connection or a stall is good data: once on disk, the
      // retry resumes after it. Bytes refused above are never flushed (`filled` excludes them).
      if (!(e instanceof IntegrityError || e instanceof InvalidContentError)) {
        try {
          flush();
        } catch { /* the original failure is the one reported */ }
      }
      throw e;
    } finally {
      reader.releaseLock();
      pool.push(gathered.buffer);
      if (readBuffer?.byteLength === READ_BUFFER_BYTES) reads.push(readBuffer);
    }
    this.#hasher.schedule();
  }

  /**
   * Writes synchronously: the bytes go to the page cache, which takes a megabyte in well under
   * a millisecond, while an asynchronous write pays a thread hand-off that costs more than the
   * copy (512 MiB in 1 MiB writes: 0.12 s synchronous, 0.39–1.5 s asynchronous, the more the
   * busier the two cores).
   */
  #write(file: Deno.FsFile, bytes: Uint8Array): void {
    try {
      let offset = 0;
      while (offset < bytes.byteLength) offset += file.writeSync(bytes.subarray(offset));
    } catch (e) {
      if (e instanceof ImgpullError) throw e;
      throw localIoError(e, `cannot write blob ${this.#descriptor.digest}`);
    }
  }

  #progress(): void {
    const now = Date.now();
    if (now - this.#lastProgress < PROGRESS_INTERVAL_MS) return;
    this.#lastProgress = now;
    const { digest, size } = this.#descriptor;
    this.#onEvent({ type: "blob-progress", digest, received: this.#received, size });
  }
}
