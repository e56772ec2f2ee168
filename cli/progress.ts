/**
 * Progress on stderr, rendered from pull events: bars on a TTY (redrawn in place), occasional
 * plain lines elsewhere. lib/ reports events; only this module decides how they look.
 *
 * On a TTY every bar line is fitted to the terminal width (the layer name gives way first,
 * then the bar, then the text), so no bar ever wraps; the block of bars is erased by moving up
 * the rows it took, recounted at the current width, and redrawn when the terminal is resized.
 *
 * @module
 */
import type { PullEvent } from "../lib/events.ts";
import { shortDigest } from "../lib/pull.ts";
import { readEnvIfAllowed } from "../lib/transport.ts";
import { writeErr, writeErrControl } from "./output.ts";

/** The 12 hex digits users know a layer by (as docker prints them). */
function layerLabel(digest: string): string {
  return shortDigest(digest).slice(7, 19);
}

/**
 * Bytes in decimal units, as docker prints them.
 *
 * @example
 * ```ts
 * humanBytes(54_100_000); // "54.1 MB"
 * ```
 */
export function humanBytes(n: number): string {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = Number.isFinite(n) && n > 0 ? n : 0, unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit++;
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

/**
 * A duration for people: `0.4s`, `12s`, `3m05s`, `2h04m`.
 *
 * @example
 * ```ts
 * humanSeconds(185); // "3m05s"
 * ```
 */
export function humanSeconds(s: number): string {
  if (!Number.isFinite(s) || s < 0) return "--";
  if (s < 10) return `${(Math.ceil(s * 10) / 10).toFixed(1)}s`;
  if (s < 60) return `${Math.ceil(s)}s`;
  const whole = Math.ceil(s);
  if (whole < 3600) return `${Math.floor(whole / 60)}m${String(whole % 60).padStart(2, "0")}s`;
  const minutes = Math.ceil(whole / 60);
  return `${Math.floor(minutes / 60)}h${String(minutes % 60).padStart(2, "0")}m`;
}

/** Size assumed when the terminal will not say. */
const FALLBACK_COLUMNS = 80;
const FALLBACK_ROWS = 24;
/** A TTY redraw at most this often (ms), unless something was printed. */
const REDRAW_INTERVAL = 100;
/** Plain (non-TTY) progress lines at most this often (ms). */
const PLAIN_INTERVAL = 5_000;
/** Time constant of the smoothed transfer rate (ms). */
const RATE_TAU = 2_000;
/** The rate is sampled at most this often (ms); shorter windows are noise. */
const RATE_SAMPLE = 200;
/** No ETA before a blob has run this long (ms)… */
const ETA_AFTER_MS = 1_000;
/** …unless this share of it has arrived over at least {@link ETA_MIN_MS}. */
const ETA_AFTER_FRACTION = 0.2;
const ETA_MIN_MS = 300;
/** Longest bar interior; the shortest one worth drawing. */
const BAR_MAX = 30;
const BAR_MIN = 5;
/** Layer names are cut to no fewer than this many characters before the bar shrinks. */
const LABEL_MIN = 7;
/** …and to no fewer than this before the text is cut. */
const LABEL_LAST = 4;

/** Everything the renderer touches outside itself; tests pass fakes. */
export interface ProgressIo {
  /** Whether stderr is a terminal (bars) or not (occasional plain lines). */
  tty: boolean;
  /** Terminal size, or undefined when unknown. */
  size(): { columns: number; rows: number } | undefined;
  /** Milliseconds on a monotonic clock. */
  now(): number;
  /** Text to stderr (made printable by cli/output.ts). */
  write(text: string): void;
  /** Our own terminal control sequences, written as they are. */
  writeControl(sequence: string): void;
  /** Calls `listener` when the terminal is resized; returns the function that stops it. */
  onResize(listener: () => void): () => void;
}

/** Options of {@link ProgressRenderer}. */
export interface ProgressOptions extends Partial<ProgressIo> {
  /** Nothing but errors (which are not printed here). */
  quiet: boolean;
  /** Show `debug` events. */
  verbose: boolean;
}

/** The size of the terminal stderr is on (Deno asks stdin, stdout, stderr in turn). */
function terminalSize(): { columns: number; rows: number } | undefined {
  try {
    return Deno.consoleSize();
  } catch {
    return undefined;
  }
}

/** SIGWINCH where there is one (not on Windows, where Deno has no such signal). */
function listenForResize(listener: () => void): () => void {
  if (Deno.build.os === "windows") return () => {};
  try {
    Deno.addSignalListener("SIGWINCH", listener);
  } catch {
    return () => {};
  }
  return () => {
    try {
      Deno.removeSignalListener("SIGWINCH", listener);
    } catch {
      // Already gone.
    }
  };
}

const REAL_IO: ProgressIo = {
  tty: false,
  size: terminalSize,
  now: () => performance.now(),
  write: writeErr,
  writeControl: writeErrControl,
  onResize: listenForResize,
};

/** Display columns of our own bar text (ASCII, one column per code point). */
function columnsOf(text: string): number {
  let n = 0;
  for (const _ of text) n++;
  return n;
}

/** The first `max` columns of `text`. */
function cut(text: string, max: number): string {
  if (max <= 0) return "";
  if (text.length <= max) return text;
  return [...text].slice(0, max).join("");
}

/** `12.3/54.1 MB`, or `512.0 KB/54.1 MB` when the units differ. */
function fraction(received: number, size: number): string {
  const [have, haveUnit] = humanBytes(received).split(" ");
  const total = humanBytes(size);
  return total.endsWith(` ${haveUnit}`) ? `${have}/${total}` : `${have} ${haveUnit}/${total}`;
}

interface BlobState {
  label: string;
  size: number;
  received: number;
  started: number;
  done: boolean;
  /** Smoothed bytes per millisecond, once sampled. */
  rate?: number;
  sampleAt: number;
  sampleBytes: number;
}

/**
 * Whether stderr is a terminal that takes cursor movement: not with `TERM=dumb` (Emacs shells,
 * some CI logs); progress is then occasional plain lines. imgpull prints no colour at all, so
 * `NO_COLOR` needs nothing more.
 */
export function drawsInPlace(env: (name: string) => string | undefined): boolean {
  return Deno.stderr.isTerminal() && env("TERM") !== "dumb";
}

/**
 * Renders pull events on stderr: bars on a TTY, occasional lines elsewhere, nothing with
 * `quiet`. The terminal, clock and writers can be replaced for tests ({@link ProgressIo}).
 *
 * @example
 * ```ts
 * const renderer = new ProgressRenderer({ quiet: false, verbose: false });
 * await pull({ reference: "nginx", onEvent: renderer.handle });
 * renderer.finish();
 * renderer.line(renderer.summary()); // "[+] Done in 3.2s, 54.1 MB at 16.9 MB/s"
 * ```
 */
export class ProgressRenderer {
  readonly #blobs = new Map<string, BlobState>();
  readonly #io: ProgressIo;
  readonly #quiet: boolean;
  readonly #verbose: boolean;
  readonly #created: number;
  /** Column counts of the bar lines on screen (lines printed with line() are not counted). */
  #drawn: number[] = [];
  #lastPlain: number;
  #lastDraw = -Infinity;
  #stopResize?: () => void;
  #finishedAt?: number;
  /** Bytes downloaded and reused, for the summary. */
  #downloaded = 0;
  #reused = 0;
  #firstStart?: number;
  #lastDone?: number;

  constructor(options: ProgressOptions) {
    this.#quiet = options.quiet;
    this.#verbose = options.verbose;
    this.#io = {
      tty: options.tty ?? drawsInPlace(readEnvIfAllowed),
      size: options.size ?? REAL_IO.size,
      now: options.now ?? REAL_IO.now,
      write: options.write ?? REAL_IO.write,
      writeControl: options.writeControl ?? REAL_IO.writeControl,
      onResize: options.onResize ?? REAL_IO.onResize,
    };
    this.#created = this.#io.now();
    this.#lastPlain = this.#created;
  }

  /** A line in the old script's style, kept above the bars. Long lines may wrap. */
  line(text: string): void {
    if (this.#quiet) return;
    this.#clear();
    this.#io.write(`${text}\n`);
    this.#draw(true);
  }

  /** The pull's event sink. */
  handle = (event: PullEvent): void => {
    const now = this.#io.now();
    switch (event.type) {
      case "platform":
        if (event.exact) this.line(`[+] Found manifest for platform: ${event.chosen}`);
        else {
          this.line(
            `[+] No exact match for ${event.requested}; using compatible platform: ${event.chosen}`,
          );
        }
        break;
      case "blob-start":
        this.#firstStart ??= now;
        this.#blobs.set(event.digest, {
          label: layerLabel(event.digest),
          size: event.size,
          received: 0,
          started: now,
          done: false,
          sampleAt: now,
          sampleBytes: 0,
        });
        this.#draw(false);
        break;
      case "blob-progress": {
        const blob = this.#blobs.get(event.digest);
        if (blob) this.#progress(blob, event.received, now);
        this.#draw(false);
        break;
      }
      case "blob-done": {
        const blob = this.#blobs.get(event.digest);
        const size = event.size >= 0 ? event.size : blob?.received ?? 0;
        if (blob) {
          blob.done = true;
          blob.received = size;
        }
        if (event.reused) this.#reused += size;
        else {
          this.#downloaded += size;
          this.#lastDone = now;
        }
        const label = layerLabel(event.digest);
        this.line(
          `[+] ${label}: ${event.reused ? "already present" : "downloaded"} (${humanBytes(size)})`,
        );
        break;
      }
      case "notice":
        this.line(`[+] ${event.message}`);
        break;
      case "debug":
        if (this.#verbose) this.line(`[debug] ${event.message}`);
        break;
    }
  };

  /**
   * One line on the whole pull, for the end: time since the renderer was made (until
   * {@link finish}), bytes downloaded and their average speed over the time any blob was
   * downloading, and what came from the cache:
   * `[+] Done in 3.2s, 54.1 MB at 16.9 MB/s (1.2 MB already present)`.
   */
  summary(): string {
    const end = this.#finishedAt ?? this.#io.now();
    let text = `[+] Done in ${humanSeconds((end - this.#created) / 1000)}`;
    if (this.#downloaded > 0) {
      const span = ((this.#lastDone ?? end) - (this.#firstStart ?? this.#created)) / 1000;
      text += `, ${humanBytes(this.#downloaded)}`;
      if (span > 0) text += ` at ${humanBytes(this.#downloaded / span)}/s`;
    } else {
      text += ", nothing downloaded";
    }
    if (this.#reused > 0) text += ` (${humanBytes(this.#reused)} already present)`;
    return text;
  }

  /**
   * Erases the bars for good and stops listening for resizes; lines may still be printed
   * after, and {@link summary} counts the time until the first call.
   */
  finish(): void {
    this.#clear();
    this.#stopResize?.();
    this.#stopResize = undefined;
    this.#finishedAt ??= this.#io.now();
  }

  /** Updates a blob's byte count and its smoothed rate. */
  #progress(blob: BlobState, received: number, now: number): void {
    if (received < blob.sampleBytes) {
      // A retry started the blob (or a segment) over: measure afresh.
      blob.sampleAt = now;
      blob.sampleBytes = received;
      blob.rate = undefined;
    }
    blob.received = received;
    const dt = now - blob.sampleAt;
    if (dt < RATE_SAMPLE) return;
    const instant = (received - blob.sampleBytes) / dt;
    const weight = 1 - Math.exp(-dt / RATE_TAU);
    blob.rate = blob.rate === undefined ? instant : blob.rate + weight * (instant - blob.rate);
    blob.sampleAt = now;
    blob.sampleBytes = received;
  }

  /** The parts of a blob's status, most important first. */
  #status(
    blob: BlobState,
    now: number,
  ): { pct: number; amount: string; speed?: string; eta?: string } {
    const known = blob.size > 0;
    const pct = known ? Math.min(100, (blob.received / blob.size) * 100) : 0;
    const amount = known ? fraction(blob.received, blob.size) : humanBytes(blob.received);
    const rate = blob.rate;
    if (rate === undefined) return { pct, amount };
    const speed = `${humanBytes(rate * 1000)}/s`;
    const running = now - blob.started;
    const settled = running >= ETA_AFTER_MS ||
      (running >= ETA_MIN_MS && known && blob.received >= blob.size * ETA_AFTER_FRACTION);
    if (!known || !settled || rate <= 0) return { pct, amount, speed };
    const eta = `ETA ${humanSeconds((blob.size - blob.received) / rate / 1000)}`;
    return { pct, amount, speed, eta };
  }

  /**
   * One bar line of at most `max` columns. What gives way, in order: the layer name (down to
   * {@link LABEL_MIN}), the bar (down to {@link BAR_MIN}, then gone), the ETA, the speed, and
   * finally the text is cut.
   */
  #barLine(blob: BlobState, max: number, now: number): string {
    const s = this.#status(blob, now);
    const texts = [
      [s.amount, s.speed, s.eta],
      [s.amount, s.speed],
      [s.amount],
    ].map((parts) => parts.filter((p) => p !== undefined).join(" "));
    const full = texts[0];
    const bar = (inner: number) => {
      const filled = Math.round((s.pct / 100) * inner);
      return `[${"=".repeat(filled)}${" ".repeat(inner - filled)}]`;
    };
    // Room for the name and the bar once the whole text is there.
    const room = max - columnsOf(full) - 1;
    const label = blob.label;
    const fullBar = BAR_MAX + 2; // "[" + bar + "]"
    if (room >= columnsOf(label) + 1 + fullBar) return `${label} ${bar(BAR_MAX)} ${full}`;
    const labelCols = Math.max(LABEL_MIN, Math.min(columnsOf(label), room - 1 - fullBar));
    const shortLabel = cut(label, labelCols);
    const inner = room - labelCols - 1 - 2;
    if (inner >= BAR_MIN) return `${shortLabel} ${bar(Math.min(inner, BAR_MAX))} ${full}`;
    for (const text of texts) {
      if (labelCols + 1 + columnsOf(text) <= max) return `${shortLabel} ${text}`;
    }
    // Last resort: a shorter name still, then the amount is cut.
    const amount = texts[texts.length - 1];
    const labelRoom = Math.min(labelCols, max - 1 - columnsOf(amount));
    if (labelRoom >= LABEL_LAST) return `${cut(label, labelRoom)} ${amount}`;
    return cut(`${cut(label, LABEL_LAST)} ${amount}`, max);
  }

  /**
   * The terminal's columns and rows, and what bars may use: one column less than the terminal
   * has (a line that fills the last column leaves some terminals in a pending wrap), and fewer
   * rows than it has (the cursor cannot move above the top of the screen to erase them).
   */
  #geometry(): { columns: number; max: number; maxBars: number } {
    const size = this.#io.size();
    const valid = (n: number | undefined) => n !== undefined && Number.isFinite(n) && n >= 1;
    const columns = valid(size?.columns) ? Math.floor(size!.columns) : FALLBACK_COLUMNS;
    const rows = valid(size?.rows) ? Math.floor(size!.rows) : FALLBACK_ROWS;
    return { columns, max: Math.max(1, columns - 1), maxBars: Math.max(1, rows - 2) };
  }

  #draw(force: boolean): void {
    // After finish() only lines are printed: a failed pull leaves unfinished blobs behind.
    if (this.#quiet || this.#finishedAt !== undefined) return;
    const now = this.#io.now();
    const active = [...this.#blobs.values()].filter((b) => !b.done);
    if (!this.#io.tty) {
      // Plain output: one line per active blob every few seconds at most.
      if (force || now - this.#lastPlain < PLAIN_INTERVAL || active.length === 0) return;
      this.#lastPlain = now;
      for (const blob of active) {
        const s = this.#status(blob, now);
        const text = [s.amount, s.speed, s.eta].filter((p) => p !== undefined).join(" ");
        this.#io.write(`[+] ${blob.label}: ${s.pct.toFixed(0)}% ${text}\n`);
      }
      return;
    }
    if (!force && now - this.#lastDraw < REDRAW_INTERVAL) return;
    this.#lastDraw = now;
    this.#clear();
    if (active.length === 0) {
      // Nothing to redraw on a resize until the next blob starts.
      this.#stopResize?.();
      this.#stopResize = undefined;
      return;
    }
    this.#stopResize ??= this.#io.onResize(() => this.#resized());
    const { max, maxBars } = this.#geometry();
    const shown = active.length > maxBars ? active.slice(0, maxBars - 1) : active;
    const lines = shown.map((blob) => this.#barLine(blob, max, now));
    if (shown.length < active.length) {
      lines.push(cut(`... and ${active.length - shown.length} more`, max));
    }
    this.#io.write(lines.map((l) => `${l}\n`).join(""));
    this.#drawn = lines.map(columnsOf);
  }

  /** The terminal changed size: erase the bars (at the new width) and draw them again. */
  #resized(): void {
    this.#draw(true);
  }

  /**
   * Erases the bars: up by the rows they take now (a line wider than the terminal takes
   * several; after a narrowing resize the terminal may have re-wrapped them), blanking each row
   * on the way back down, and up again. Rows of line() output above are left alone.
   *
   * Not "erase to the end of the screen" (CSI J): when the bars are at the top of the screen,
   * that is a whole-screen clear, which tmux (scroll-on-clear) and others copy into the
   * scrollback, leaving a trail of old bars there.
   */
  #clear(): void {
    if (!this.#io.tty || this.#drawn.length === 0) return;
    const { columns } = this.#geometry();
    const rows = this.#drawn.reduce((sum, cols) => sum + Math.max(1, Math.ceil(cols / columns)), 0);
    let sequence = `\r\x1b[${rows}A\x1b[2K`;
    for (let row = 1; row < rows; row++) sequence += "\x1b[B\x1b[2K";
    if (rows > 1) sequence += `\x1b[${rows - 1}A`;
    this.#io.writeControl(sequence);
    this.#drawn = [];
  }
}
