/**
 * Where a blob's `Range` segments come from: the first split of a blob among connections, and,
 * at the tail, splitting the segment that will finish last so that an idle connection takes its
 * second half. Pure: no network, no files; times are passed in, so every decision can be tested
 * on its own (tests/unit/segments_test.ts).
 *
 * ```ts
 * import { SegmentScheduler } from "./segments.ts";
 * const scheduler = new SegmentScheduler(
 *   [{ start: 0, end: 4 << 20, written: 0 }],
 *   { minSplitBytes: 512 << 10 },
 * );
 * const first = scheduler.take(0)!;         // the whole blob
 * scheduler.began(first, 0);
 * scheduler.progressed(first, 1 << 20, 100); // 1 MiB in 100 ms after the first byte at 0
 * const tail = scheduler.take(100);          // an idle connection asks: the second half
 * // first.end is now tail.start; the first connection stops there.
 * ```
 *
 * @module
 */

/** A contiguous byte range `[start, end)` of a blob and how much of it is on disk. */
export interface Segment {
  start: number;
  /** Exclusive. May move down while the segment is fetched, when its tail is split off. */
  end: number;
  written: number;
}

/**
 * A source that answers within this many ms is near (loopback, the same LAN): there one
 * connection per blob is fastest, since a single TCP stream is not what limits the transfer
 * but the CPU (TLS, hashing, writing), which more streams only share out at a cost. Measured on
 * 2 cores against a TLS registry on loopback: nginx-like 0.53 s with one connection per blob,
 * 0.69–0.78 s in 16 segments; 512 MiB 1.8–2.3 s vs 2.4–2.6 s.
 */
export const NEAR_LATENCY_MS = 10;

/** Limits of the first split (see {@link planSegments}). */
export interface SegmentLimits {
  /** Connections the blob may use. */
  connections: number;
  /** Largest segment. */
  maxSegmentBytes: number;
  /** Smallest segment: below it, a request's round trip costs more than it gains. */
  minSegmentBytes: number;
}

/**
 * Splits `size` bytes into segments for `connections` connections: one per connection, each
 * between the limits (many segments of the largest size for a big blob, so that connections
 * freed by other blobs find work). A blob under two minimal segments is one segment.
 */
export function planSegments(size: number, limits: SegmentLimits): Segment[] {
  if (limits.connections <= 1 || size < 2 * limits.minSegmentBytes) {
    return [{ start: 0, end: size, written: 0 }];
  }
  const segmentBytes = Math.min(
    limits.maxSegmentBytes,
    Math.max(limits.minSegmentBytes, Math.ceil(size / limits.connections)),
  );
  const segments: Segment[] = [];
  for (let start = 0; start < size; start += segmentBytes) {
    segments.push({ start, end: Math.min(size, start + segmentBytes), written: 0 });
  }
  return segments;
}

/**
 * A near source's single connection slower than this (bytes per second) is spread over more
 * connections all the same: what limits it is then not the CPU but the connection (a
 * pull-through cache fetching from far away, a throttled server).
 */
export const NEAR_SLOW_BYTES_PER_SECOND = 32 * 1024 * 1024;

/** How long a near blob's single connection is watched before it is left alone. */
const SPREAD_DECISION_MS = 500;

/** A near blob's request with no byte for this long is spread (a far storage behind it). */
const SILENT_FIRST_BYTE_MS = 250;

/** Rates are trusted after this much time past the first byte. */
const MIN_RATE_WINDOW_MS = 100;

/** What to do with a blob fetched over one connection, as far as is known by now. */
export type SpreadDecision = "spread" | "stay" | "wait";

/** Options of {@link SegmentScheduler}. */
export interface SchedulerOptions {
  /** Neither half of a split is smaller than this. */
  minSplitBytes: number;
  /** Split points are multiples of this (default 64 KiB). */
  alignBytes?: number;
  /** What a new request costs before its first byte when none was observed yet (default 100 ms). */
  defaultSetupMs?: number;
}

/** What the scheduler knows of a segment being fetched. */
interface Active {
  /** When the request went out. */
  requestedAt: number;
  /** When its first byte arrived (rates count from there). */
  firstByteAt?: number;
  /** Bytes of the segment received when the first byte arrived (a resumed segment has some). */
  receivedAtFirstByte: number;
  /** Bytes received so far, on disk or about to be (never split below this). */
  received: number;
  lastAt: number;
}

/**
 * Hands out a blob's segments in order to the connections that ask, and keeps the tail short:
 * when nothing is left to hand out, the active segment expected to finish last is cut in two
 * and its second half handed out, as long as that half takes longer to fetch than a new
 * request takes to start (both measured on this blob). The cut segment's `end` moves down; its
 * connection stops there. Segments stay sorted by `start` and cover the blob.
 */
export class SegmentScheduler {
  /** Every segment of the blob, in order. */
  readonly segments: Segment[];
  readonly #queue: Segment[];
  readonly #active = new Map<Segment, Active>();
  readonly #minSplit: number;
  readonly #align: number;
  readonly #defaultSetupMs: number;
  /** Time from request to first byte, as seen on this blob (the cost of a split). */
  #setupMs?: number;

  constructor(segments: Segment[], options: SchedulerOptions) {
    this.segments = segments;
    this.#queue = segments.filter((s) => s.start + s.written < s.end);
    this.#minSplit = options.minSplitBytes;
    this.#align = options.alignBytes ?? 64 * 1024;
    this.#defaultSetupMs = options.defaultSetupMs ?? 100;
  }

  /** Segments not handed out yet. */
  get queued(): number {
    return this.#queue.length;
  }

  /** Segments being fetched. */
  get active(): number {
    return this.#active.size;
  }

  /**
   * The next segment to fetch, or the second half of a split tail; undefined when there is
   * nothing to hand out now (while {@link active} is not 0, asking again later may find a
   * segment worth splitting, once its rate is known).
   */
  take(now: number): Segment | undefined {
    return this.#queue.shift() ?? this.#split(now);
  }

  /** A connection starts fetching `segment` (again, after a retry). */
  began(segment: Segment, now: number): void {
    this.#active.set(segment, {
      requestedAt: now,
      receivedAtFirstByte: segment.written,
      received: segment.written,
      lastAt: now,
    });
  }

  /** `received` bytes of `segment` (from its start) have arrived by `now`. */
  progressed(segment: Segment, received: number, now: number): void {
    const active = this.#active.get(segment);
    if (!active) return;
    if (active.firstByteAt === undefined) {
      active.firstByteAt = now;
      active.receivedAtFirstByte = received;
      const setup = now - active.requestedAt;
      // The fastest start seen: a fresh connection's handshake is not what a split pays when
      // a connection is already open and idle.
      this.#setupMs = this.#setupMs === undefined ? setup : Math.min(this.#setupMs, setup);
    }
    active.received = received;
    active.lastAt = now;
  }

  /** A connection stopped fetching `segment` (done, failed, or handed back). */
  ended(segment: Segment): void {
    this.#active.delete(segment);
  }

  /**
   * Whether a blob started over one connection (its source looked near) should be spread over
   * more: yes when no byte came for a while after the request (the blob comes from somewhere
   * far, say a storage redirect) or when it arrives slower than
   * {@link NEAR_SLOW_BYTES_PER_SECOND}; no once it has run fast for a while; "wait" until then.
   */
  spreadDecision(segment: Segment, now: number): SpreadDecision {
    const active = this.#active.get(segment);
    if (!active) return segment.start + segment.written >= segment.end ? "stay" : "wait";
    // The time to the first byte includes opening the connection (a TLS handshake can take
    // tens of milliseconds of CPU even on loopback), so only a long silence counts as far.
    if (active.firstByteAt === undefined) {
      return now - active.requestedAt >= SILENT_FIRST_BYTE_MS ? "spread" : "wait";
    }
    const elapsed = now - active.firstByteAt;
    if (elapsed < MIN_RATE_WINDOW_MS) return "wait";
    const rate = ((active.received - active.receivedAtFirstByte) * 1000) / elapsed;
    if (rate < NEAR_SLOW_BYTES_PER_SECOND) return "spread";
    return elapsed >= SPREAD_DECISION_MS ? "stay" : "wait";
  }

  /**
   * Cuts what is left of active `segment` into `pieces` equal parts (fewer when they would be
   * under the minimum): the segment keeps the first, the others are queued. Returns how many
   * were queued.
   */
  spread(segment: Segment, pieces: number): number {
    const active = this.#active.get(segment);
    const from = segment.start + Math.max(active?.received ?? 0, segment.written);
    const left = segment.end - from;
    const count = Math.min(pieces, Math.floor(left / this.#minSplit));
    if (count < 2) return 0;
    const size = Math.ceil(left / count / this.#align) * this.#align;
    const tails: Segment[] = [];
    for (let start = from + size; start < segment.end; start += size) {
      tails.push({ start, end: Math.min(segment.end, start + size), written: 0 });
    }
    if (tails.length === 0) return 0;
    segment.end = tails[0].start;
    this.segments.splice(this.segments.indexOf(segment) + 1, 0, ...tails);
    this.#queue.push(...tails);
    return tails.length;
  }

  /** Cuts the active segment that will finish last; returns its second half, or undefined. */
  #split(now: number): Segment | undefined {
    const setupMs = this.#setupMs ?? this.#defaultSetupMs;
    let victim: { segment: Segment; from: number; remainingMs: number } | undefined;
    for (const [segment, active] of this.#active) {
      if (active.firstByteAt === undefined) continue;
      const elapsed = active.lastAt - active.firstByteAt;
      const bytes = active.received - active.receivedAtFirstByte;
      if (elapsed <= 0 || bytes <= 0) continue;
      const from = segment.start + Math.max(active.received, segment.written);
      const remaining = segment.end - from;
      // Expected time left, counted from now (the last progress may be a while ago).
      const remainingMs = (remaining * elapsed) / bytes - (now - active.lastAt);
      if (!victim || remainingMs > victim.remainingMs) victim = { segment, from, remainingMs };
    }
    if (!victim) return undefined;
    const { segment, from, remainingMs } = victim;
    // The second half takes half the time left, plus the new request's start: worth it only
    // if that ends clearly before the whole would have.
    if (remainingMs / 2 + setupMs >= remainingMs * 0.8) return undefined;
    const at = Math.floor((from + (segment.end - from) / 2) / this.#align) * this.#align;
    if (at - from < this.#minSplit || segment.end - at < this.#minSplit) return undefined;
    const tail: Segment = { start: at, end: segment.end, written: 0 };
    segment.end = at;
    this.segments.splice(this.segments.indexOf(segment) + 1, 0, tail);
    return tail;
  }
}
