/**
 * A counting semaphore bounding how many tasks run at once.
 *
 * @example
 * ```ts
 * const downloads = new Semaphore(3);
 * await Promise.all(urls.map((u) => downloads.run(() => fetch(u))));
 * ```
 * @module
 */
export class Semaphore {
  #available: number;
  readonly #waiting: (() => void)[] = [];

  constructor(permits: number) {
    if (!Number.isInteger(permits) || permits < 1) {
      throw new RangeError(`permits must be a positive integer, got ${permits}`);
    }
    this.#available = permits;
  }

  /** Runs `task` once a permit is free, releasing it however the task ends. */
  async run<T>(task: () => Promise<T>): Promise<T> {
    if (this.#available > 0) this.#available--;
    else await new Promise<void>((resolve) => this.#waiting.push(resolve));
    try {
      return await task();
    } finally {
      const next = this.#waiting.shift();
      if (next) next();
      else this.#available++;
    }
  }
}
