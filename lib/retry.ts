/**
 * Retrying transient failures: exponential backoff with jitter, honouring a
 * (capped) `Retry-After`, for errors whose kind says a retry may help
 * ({@link ImgpullError.retryable}) and never for anything else. And a stall
 * timer, since fetch has no read timeout of its own.
 *
 * @module
 */
import { ImgpullError, NetworkError } from "./errors.ts";

/** Longest wait a server's `Retry-After` can impose on us. */
const MAX_RETRY_AFTER_MS = 60_000;

/** Exponential backoff with full jitter, honouring a (capped) Retry-After. */
export function backoffMs(attempt: number, retryAfterMs?: number): number {
  if (retryAfterMs !== undefined) return Math.min(retryAfterMs, MAX_RETRY_AFTER_MS);
  const ceiling = Math.min(500 * 2 ** attempt, 10_000);
  return Math.round(ceiling / 2 + Math.random() * ceiling / 2);
}

/** Waits `ms`, or rejects with the signal's reason once it aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
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

/** Options of {@link withRetries}. */
export interface RetryOptions {
  /** Retries in a row without progress (0: no retry at all). */
  retries: number;
  signal?: AbortSignal;
  /** Told about each retry (for --verbose); `attempt` is the number of the retry. */
  onRetry?: (error: ImgpullError, attempt: number, delayMs: number) => void;
  /**
   * How far the operation has got (e.g. bytes written). A failed attempt
   * that advanced it by at least {@link minProgress} resets the count of
   * retries, as curl's resumed retries and aria2 do: a link that drops every
   * few MiB still completes a large blob, while one that fails at the same
   * byte every time still gives up after `retries`.
   */
  progress?: () => number;
  /** Least advance that counts as progress (default 1). */
  minProgress?: number;
}

/**
 * Runs `operation`, retrying it while it fails with a retryable error: at
 * most `retries` times in a row without progress (see
 * {@link RetryOptions.progress}). Time without progress is therefore bounded
 * by `retries + 1` attempts (each bounded by its own stall timer) plus their
 * backoff delays.
 */
export async function withRetries<T>(
  operation: (attempt: number) => Promise<T>,
  options: RetryOptions,
): Promise<T> {
  let failures = 0;
  for (let attempt = 0;; attempt++) {
    const before = options.progress?.();
    try {
      return await operation(attempt);
    } catch (e) {
      if (!(e instanceof ImgpullError) || !e.retryable) throw e;
      const advanced = before === undefined ? 0 : options.progress!() - before;
      // A retry that progressed makes its failure a fresh start: its retry is not counted. The
      // first attempt's bytes do not count, so a server that always stalls at the same place
      // gets exactly `retries` retries.
      const progressed = attempt > 0 && advanced > 0 && advanced >= (options.minProgress ?? 1);
      if (progressed) failures = 0;
      if (options.retries === 0 || (!progressed && failures >= options.retries)) throw e;
      options.signal?.throwIfAborted();
      const delay = backoffMs(failures, e instanceof NetworkError ? e.retryAfterMs : undefined);
      if (!progressed) failures++;
      options.onRetry?.(e, attempt + 1, delay);
      await sleep(delay, options.signal);
    }
  }
}

/**
 * Aborts its signal when `kick()` has not been called for `ms`: a transfer
 * that stops sending bytes ends with a retryable {@link NetworkError}
 * instead of hanging forever.
 */
export class StallTimer {
  readonly #controller = new AbortController();
  readonly #ms: number;
  readonly #what: string;
  #timer?: ReturnType<typeof setTimeout>;

  constructor(ms: number, what: string) {
    this.#ms = ms;
    this.#what = what;
    this.kick();
  }

  /** Aborted when the transfer stalls. */
  get signal(): AbortSignal {
    return this.#controller.signal;
  }

  /** Data arrived: start the period again. */
  kick(): void {
    clearTimeout(this.#timer);
    if (this.#controller.signal.aborted) return;
    this.#timer = setTimeout(() => {
      this.#controller.abort(
        new NetworkError(`${this.#what}: no data for ${Math.round(this.#ms / 1000)} s`),
      );
    }, this.#ms);
  }

  /** Stops watching for a while (the reader itself is waiting); {@link kick} resumes. */
  pause(): void {
    clearTimeout(this.#timer);
  }

  /** Stops watching (always call it, or the timer keeps the process alive). */
  clear(): void {
    clearTimeout(this.#timer);
  }
}
