/**
 * Progress on stderr, rendered from pull events: bars on a TTY (redrawn in place), occasional
 * plain lines elsewhere. lib/ reports events; only this module decides how they look.
 *
 * @module
 */
import type { PullEvent } from "../lib/events.ts";
import { shortDigest } from "../lib/pull.ts";
import { writeErr, writeErrControl } from "./output.ts";

/** The 12 hex digits users know a layer by (as docker prints them). */
function layerLabel(digest: string): string {
  return shortDigest(digest).slice(7, 19);
}

export function humanBytes(n: number): string {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = n, unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit++;
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

function humanSeconds(s: number): string {
  if (!Number.isFinite(s)) return "--";
  if (s < 60) return `${Math.ceil(s)}s`;
  return `${Math.floor(s / 60)}m${String(Math.ceil(s % 60)).padStart(2, "0")}s`;
}

interface BlobState {
  label: string;
  size: number;
  received: number;
  started: number;
  done: boolean;
}

/** Renders pull events on stderr: bars on a TTY, occasional lines elsewhere. */
export class ProgressRenderer {
  readonly #blobs = new Map<string, BlobState>();
  readonly #tty: boolean;
  readonly #quiet: boolean;
  readonly #verbose: boolean;
  #drawnLines = 0;
  #lastPlain = Date.now();
  #lastDraw = 0;

  constructor(options: { quiet: boolean; verbose: boolean }) {
    this.#quiet = options.quiet;
    this.#verbose = options.verbose;
    this.#tty = Deno.stderr.isTerminal();
  }

  /** A line in the old script's style, kept above the bars. */
  line(text: string): void {
    if (this.#quiet) return;
    this.#clear();
    writeErr(`${text}\n`);
    this.#draw(true);
  }

  handle = (event: PullEvent): void => {
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
        this.#blobs.set(event.digest, {
          label: layerLabel(event.digest),
          size: event.size,
          received: 0,
          started: Date.now(),
          done: false,
        });
        this.#draw(false);
        break;
      case "blob-progress": {
        const blob = this.#blobs.get(event.digest);
        if (blob) blob.received = event.received;
        this.#draw(false);
        break;
      }
      case "blob-done": {
        const blob = this.#blobs.get(event.digest);
        if (blob) {
          blob.done = true;
          blob.received = event.size >= 0 ? event.size : blob.received;
        }
        const label = layerLabel(event.digest);
        const size = event.size >= 0 ? event.size : blob?.received ?? 0;
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

  #status(blob: BlobState): { pct: number; text: string } {
    const elapsed = (Date.now() - blob.started) / 1000;
    const speed = elapsed > 0 ? blob.received / elapsed : 0;
    const known = blob.size > 0;
    const eta = known && speed > 0 ? (blob.size - blob.received) / speed : Infinity;
    const pct = known ? Math.min(100, (blob.received / blob.size) * 100) : 0;
    const amount = known
      ? `${humanBytes(blob.received)}/${humanBytes(blob.size)}`
      : humanBytes(blob.received);
    return { pct, text: `${amount} ${humanBytes(speed)}/s ETA ${humanSeconds(eta)}` };
  }

  #draw(force: boolean): void {
    if (this.#quiet) return;
    const now = Date.now();
    const active = [...this.#blobs.values()].filter((b) => !b.done);
    if (!this.#tty) {
      // Plain output: one summary line every few seconds at most.
      if (force || now - this.#lastPlain < 5_000 || active.length === 0) return;
      this.#lastPlain = now;
      for (const blob of active) {
        const s = this.#status(blob);
        writeErr(`[+] ${blob.label}: ${s.pct.toFixed(0)}% ${s.text}\n`);
      }
      return;
    }
    if (!force && now - this.#lastDraw < 100) return;
    this.#lastDraw = now;
    this.#clear();
    const width = 30;
    for (const blob of active) {
      const s = this.#status(blob);
      const filled = Math.round((s.pct / 100) * width);
      writeErr(`${blob.label} [${"=".repeat(filled)}${" ".repeat(width - filled)}] ${s.text}\n`);
    }
    this.#drawnLines = active.length;
  }

  #clear(): void {
    if (!this.#tty || this.#drawnLines === 0) return;
    writeErrControl(`\x1b[${this.#drawnLines}A\x1b[J`);
    this.#drawnLines = 0;
  }

  finish(): void {
    this.#clear();
  }
}
