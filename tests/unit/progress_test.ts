/**
 * The progress renderer against a small terminal emulator: what a user would see on the
 * screen (and in the scrollback) after the renderer has written to a terminal of a given size.
 *
 * @module
 */
import assert from "node:assert/strict";
import { humanSeconds, type ProgressIo, ProgressRenderer } from "../../cli/progress.ts";
import type { PullEvent } from "../../lib/events.ts";

/**
 * Just enough of a VT100 for the renderer: printable text with auto-wrap (and the pending
 * wrap at the last column), "\n" as CR LF (the tty's onlcr), "\r", CSI n A (not above the top
 * of the screen), CSI n B, CSI 2 K, CSI J (from the top left: the screen goes to the
 * scrollback, as tmux does), scrolling into an unlimited scrollback, and resizing with
 * re-wrapping of wrapped lines (as tmux, VTE and Windows Terminal do).
 */
class Terminal {
  /** Every row, scrollback first; `wrapped[i]` says row i continues on row i + 1. */
  rows: string[] = [""];
  wrapped: boolean[] = [false];
  row = 0;
  col = 0;
  /** Escape sequences the emulator does not know (the renderer must not send any). */
  unknown: string[] = [];

  constructor(public columns: number, public height: number) {}

  get top(): number {
    return Math.max(0, this.rows.length - this.height);
  }

  write(data: string): void {
    for (let i = 0; i < data.length; i++) {
      const c = data[i];
      if (c === "\x1b") {
        // deno-lint-ignore no-control-regex
        const m = /^\x1b\[(\d*)([A-Za-z])/.exec(data.slice(i));
        if (m === null) {
          this.unknown.push(data.slice(i, i + 8));
          continue;
        }
        i += m[0].length - 1;
        const n = m[1] === "" ? 1 : Number(m[1]);
        if (m[2] === "A") this.row = Math.max(this.top, this.row - n);
        else if (m[2] === "B") this.row = Math.min(this.rows.length - 1, this.row + n);
        else if (m[2] === "K" && m[1] === "2") this.#eraseRow();
        else if (m[2] === "J" && m[1] === "") this.#eraseBelow();
        else this.unknown.push(m[0]);
      } else if (c === "\n") {
        this.col = 0;
        this.#down(false);
      } else if (c === "\r") {
        this.col = 0;
      } else {
        if (this.col >= this.columns) {
          this.col = 0;
          this.#down(true);
        }
        const line = this.rows[this.row].padEnd(this.col);
        this.rows[this.row] = line.slice(0, this.col) + c + line.slice(this.col + 1);
        this.col++;
      }
    }
  }

  #down(wrap: boolean): void {
    this.wrapped[this.row] = wrap;
    this.row++;
    if (this.row === this.rows.length) {
      this.rows.push("");
      this.wrapped.push(false);
    }
  }

  #eraseRow(): void {
    this.rows[this.row] = "";
    this.wrapped[this.row] = false;
  }

  #eraseBelow(): void {
    if (this.col === 0 && this.row === this.top) {
      // A whole-screen clear: tmux (scroll-on-clear) keeps the screen in the scrollback.
      const height = this.height;
      for (let i = 0; i < height; i++) {
        this.rows.push("");
        this.wrapped.push(false);
      }
      this.row = this.top;
      return;
    }
    this.rows[this.row] = this.rows[this.row].slice(0, this.col);
    this.wrapped[this.row] = false;
    this.rows.length = this.row + 1;
    this.wrapped.length = this.row + 1;
  }

  /** Re-wraps logical lines at the new width; the cursor keeps its place in its line. */
  resize(columns: number, height = this.height): void {
    const lines: string[] = [];
    let cursorLine = 0, cursorOffset = 0, current = "";
    for (let i = 0; i < this.rows.length; i++) {
      if (i === this.row) {
        cursorLine = lines.length;
        cursorOffset = current.length + this.col;
      }
      current += this.rows[i].padEnd(this.wrapped[i] ? this.columns : 0);
      if (!this.wrapped[i]) {
        lines.push(current);
        current = "";
      }
    }
    if (current !== "") lines.push(current);
    this.columns = columns;
    this.height = height;
    this.rows = [];
    this.wrapped = [];
    lines.forEach((line, index) => {
      const parts: string[] = [];
      for (let at = 0; at < line.length; at += columns) parts.push(line.slice(at, at + columns));
      if (parts.length === 0) parts.push("");
      if (index === cursorLine) {
        const part = Math.min(parts.length - 1, Math.floor(cursorOffset / columns));
        this.row = this.rows.length + part;
        this.col = cursorOffset - part * columns;
      }
      parts.forEach((part, i) => {
        this.rows.push(part);
        this.wrapped.push(i < parts.length - 1);
      });
    });
  }

  /** Logical lines (wrapped rows joined), trailing empty ones dropped. */
  lines(): string[] {
    const out: string[] = [];
    let current = "";
    this.rows.forEach((row, i) => {
      current += row;
      if (!this.wrapped[i]) {
        out.push(current.trimEnd());
        current = "";
      }
    });
    while (out.length > 0 && out[out.length - 1] === "") out.pop();
    return out;
  }
}

/** A renderer on a fake terminal with a fake clock. */
function setup(columns: number, height = 20, options: { tty?: boolean; quiet?: boolean } = {}) {
  const term = new Terminal(columns, height);
  let clock = 1_000;
  let resizeListener: (() => void) | undefined;
  let subscriptions = 0;
  const writes: string[] = [];
  const io: ProgressIo = {
    tty: options.tty ?? true,
    size: () => ({ columns: term.columns, rows: term.height }),
    now: () => clock,
    write: (text) => {
      writes.push(text);
      term.write(text);
    },
    writeControl: (sequence) => {
      writes.push(sequence);
      term.write(sequence);
    },
    onResize: (listener) => {
      subscriptions++;
      resizeListener = listener;
      return () => {
        subscriptions--;
        resizeListener = undefined;
      };
    },
  };
  const renderer = new ProgressRenderer({ quiet: options.quiet ?? false, verbose: true, ...io });
  return {
    term,
    renderer,
    writes,
    advance(ms: number) {
      clock += ms;
    },
    resize(newColumns: number, newHeight?: number) {
      term.resize(newColumns, newHeight);
      resizeListener?.();
    },
    subscriptions: () => subscriptions,
    hasListener: () => resizeListener !== undefined,
  };
}

const digest = (n: number) => `sha256:${String(n).repeat(64).slice(0, 64)}`;
const MB = 1_000_000;

/** Events of a pull of `layers` blobs of `size` bytes at `rate` bytes/ms, every `tick` ms. */
function* pullEvents(
  layers: number,
  size: number,
  rate: number,
  tick: number,
): Generator<PullEvent | { advance: number }> {
  yield { type: "platform", requested: "linux/amd64", chosen: "linux/amd64", exact: true };
  for (let i = 0; i < layers; i++) {
    yield { type: "blob-start", digest: digest(i + 1), size, index: i };
  }
  const received = new Array(layers).fill(0);
  while (received.some((r) => r < size)) {
    yield { advance: tick };
    for (let i = 0; i < layers; i++) {
      if (received[i] >= size) continue;
      // Layers run at different speeds, so they finish one by one.
      received[i] = Math.min(size, received[i] + rate * tick / (i + 1));
      yield { type: "blob-progress", digest: digest(i + 1), received: received[i], size };
      if (received[i] >= size) {
        yield { type: "blob-done", digest: digest(i + 1), size, reused: false };
      }
    }
  }
}

function play(s: ReturnType<typeof setup>, events: Iterable<PullEvent | { advance: number }>) {
  for (const e of events) {
    if ("advance" in e) s.advance(e.advance);
    else s.renderer.handle(e);
  }
}

/** Bar lines (or their fragments) look like this; `[+]` lines never do. */
const BAR_FRAGMENT = /\[[= ]*\]|MB\/s|ETA|\d\/\d/;

/** Asserts the screen shows exactly `expected` and nothing of a bar. */
function assertClean(term: Terminal, expected: string[]) {
  const lines = term.lines();
  assert.deepEqual(term.unknown, [], "only cursor moves and erasing are sent");
  for (const line of lines) assert.ok(!BAR_FRAGMENT.test(line), `stale bar: ${line}`);
  assert.deepEqual(lines, expected);
}

/** The `[+]` lines a pull of {@link pullEvents} prints, in the order they finish. */
function doneLines(order: number[], size: string): string[] {
  return [
    "[+] Found manifest for platform: linux/amd64",
    ...order.map((n) => `[+] ${String(n).repeat(12)}: downloaded (${size})`),
  ];
}

Deno.test("progress: at 50 columns no line is wider than the terminal, nothing is left", () => {
  const s = setup(50);
  play(s, pullEvents(3, 54.1 * MB, 20_000, 150));
  // Every row written fits: no bar ever wrapped.
  // deno-lint-ignore no-control-regex
  const written = s.writes.join("").replace(/\r|\x1b\[\d*[ABJK]/g, "");
  for (const line of written.split("\n")) {
    assert.ok(line.length <= 50, `${line.length} columns: ${line}`);
    if (BAR_FRAGMENT.test(line)) assert.ok(line.length <= 49, "bars leave the last column");
  }
  assert.ok(s.term.rows.every((row, i) => !s.term.wrapped[i] || !BAR_FRAGMENT.test(row)));
  s.renderer.finish();
  assertClean(s.term, doneLines([1, 2, 3], "54.1 MB"));
  assert.equal(s.subscriptions(), 0, "the resize listener is removed");
});

Deno.test("progress: bars shrink in order (name, bar, text) and never exceed the width", () => {
  for (const columns of [200, 80, 60, 50, 40, 30, 20, 12, 5, 1]) {
    const s = setup(columns);
    s.renderer.handle({ type: "blob-start", digest: digest(7), size: 54.1 * MB, index: 0 });
    s.advance(1500);
    s.renderer.handle({ type: "blob-progress", digest: digest(7), received: 12 * MB, size: 0 });
    s.advance(1500);
    s.renderer.handle({ type: "blob-progress", digest: digest(7), received: 24 * MB, size: 0 });
    const bar = s.term.lines()[0];
    assert.ok(bar.length <= Math.max(1, columns - 1), `${columns}: ${bar}`);
    if (columns >= 80) assert.match(bar, /^7{12} \[=+ +\] 24\.0\/54\.1 MB 8\.0 MB\/s ETA \d/);
    if (columns === 60) assert.match(bar, /^7{7,12} \[=+ *\] 24\.0\/54\.1 MB 8\.0 MB\/s ETA/);
    if (columns === 50) assert.match(bar, /^7{7} \[=+ *\] 24\.0\/54\.1 MB 8\.0 MB\/s ETA/);
    if (columns === 40) assert.equal(bar, "7777777 24.0/54.1 MB 8.0 MB/s ETA 3.8s");
    if (columns === 30) assert.equal(bar, "7777777 24.0/54.1 MB 8.0 MB/s");
    if (columns === 20) assert.equal(bar, "777777 24.0/54.1 MB");
    if (columns === 12) assert.equal(bar, "7777 24.0/5");
    s.renderer.finish();
    assert.deepEqual(s.term.lines(), [], `${columns}: cleared`);
  }
});

Deno.test("progress: clearing counts rows, and lines printed above are never erased", () => {
  const s = setup(30);
  const long = "[+] a line much wider than thirty columns, which wraps over three rows";
  s.renderer.handle({ type: "blob-start", digest: digest(1), size: 10 * MB, index: 0 });
  s.renderer.handle({ type: "blob-start", digest: digest(2), size: 10 * MB, index: 1 });
  s.renderer.line(long);
  for (let i = 1; i <= 20; i++) {
    s.advance(150);
    s.renderer.handle({
      type: "blob-progress",
      digest: digest(1),
      received: i * 0.1 * MB,
      size: 0,
    });
    s.renderer.handle({
      type: "blob-progress",
      digest: digest(2),
      received: i * 0.2 * MB,
      size: 0,
    });
    if (i % 5 === 0) s.renderer.line(`${long} ${i}`);
  }
  s.renderer.finish();
  assertClean(s.term, [long, `${long} 5`, `${long} 10`, `${long} 15`, `${long} 20`]);
});

Deno.test("progress: bars at the top of the screen leave nothing in the scrollback", () => {
  const s = setup(50, 10);
  // Nothing printed above the bars: every erase starts at the top left of the screen.
  play(
    s,
    [...pullEvents(2, 20 * MB, 20_000, 150)].filter((e) => !("type" in e) || e.type !== "platform"),
  );
  s.renderer.finish();
  assertClean(s.term, doneLines([1, 2], "20.0 MB").slice(1));
});

Deno.test("progress: a resize redraws the bars at the new width without fragments", () => {
  const s = setup(100);
  play(s, [
    { type: "blob-start", digest: digest(1), size: 80 * MB, index: 0 },
    { type: "blob-start", digest: digest(2), size: 80 * MB, index: 1 },
    { advance: 1500 },
    { type: "blob-progress", digest: digest(1), received: 20 * MB, size: 0 },
    { type: "blob-progress", digest: digest(2), received: 10 * MB, size: 0 },
  ]);
  assert.equal(s.term.lines().length, 2);
  assert.ok(s.hasListener(), "listening for resizes while bars are shown");
  for (const columns of [50, 30, 72, 20]) {
    s.resize(columns);
    const lines = s.term.lines();
    assert.equal(lines.length, 2, `${columns}: ${JSON.stringify(lines)}`);
    for (const line of lines) assert.ok(line.length < columns, `${columns}: ${line}`);
  }
  s.renderer.line("[+] after the resizes");
  s.renderer.finish();
  assertClean(s.term, ["[+] after the resizes"]);
  assert.equal(s.subscriptions(), 0);
});

Deno.test("progress: no ETA on the first tick, a steady one after a second", () => {
  const s = setup(120);
  // A slow start (connection, token) and then a fast transfer: the old renderer showed
  // "ETA 38m55s" here.
  s.renderer.handle({ type: "blob-start", digest: digest(1), size: 100 * MB, index: 0 });
  s.advance(120);
  s.renderer.handle({ type: "blob-progress", digest: digest(1), received: 30_000, size: 0 });
  assert.ok(!s.term.lines().join("\n").includes("ETA"), s.term.lines().join("\n"));
  s.advance(250);
  s.renderer.handle({ type: "blob-progress", digest: digest(1), received: 4 * MB, size: 0 });
  assert.ok(!s.term.lines().join("\n").includes("ETA"), s.term.lines().join("\n"));
  // 10 MB/s from here on.
  let received = 4 * MB;
  for (let i = 0; i < 30; i++) {
    s.advance(200);
    received += 2 * MB;
    s.renderer.handle({ type: "blob-progress", digest: digest(1), received, size: 0 });
  }
  const bar = s.term.lines()[0];
  const eta = /ETA (\d+(?:\.\d)?)s/.exec(bar);
  assert.ok(eta, bar);
  const expected = (100 * MB - received) / (10 * MB);
  assert.ok(Math.abs(Number(eta[1]) - expected) <= 1, `${bar}: expected about ${expected}s`);
  assert.match(bar, /(9\.\d|10\.\d) MB\/s/);
  s.renderer.finish();
});

Deno.test("progress: a small blob that is mostly there shows an ETA before a second", () => {
  const s = setup(120);
  s.renderer.handle({ type: "blob-start", digest: digest(1), size: 10 * MB, index: 0 });
  for (let i = 1; i <= 3; i++) {
    s.advance(200);
    s.renderer.handle({ type: "blob-progress", digest: digest(1), received: i * MB, size: 0 });
  }
  assert.match(s.term.lines()[0], /ETA/);
  s.renderer.finish();
});

Deno.test("progress: summary gives the time, bytes and average speed", () => {
  const s = setup(80);
  s.advance(200); // resolving manifests
  s.renderer.handle({ type: "blob-start", digest: digest(1), size: 40 * MB, index: 0 });
  s.renderer.handle({ type: "blob-done", digest: digest(9), size: 2.5 * MB, reused: true });
  s.advance(1000);
  s.renderer.handle({ type: "blob-start", digest: digest(2), size: 14.1 * MB, index: 1 });
  s.advance(2000);
  s.renderer.handle({ type: "blob-done", digest: digest(2), size: 14.1 * MB, reused: false });
  s.renderer.handle({ type: "blob-done", digest: digest(1), size: 40 * MB, reused: false });
  s.advance(100); // writing the archive
  s.renderer.finish();
  s.advance(5000); // later calls do not count time after finish()
  assert.equal(
    s.renderer.summary(),
    "[+] Done in 3.3s, 54.1 MB at 18.0 MB/s (2.5 MB already present)",
  );
  const cached = setup(80);
  cached.renderer.handle({ type: "blob-done", digest: digest(9), size: 2.5 * MB, reused: true });
  cached.advance(400);
  assert.equal(
    cached.renderer.summary(),
    "[+] Done in 0.4s, nothing downloaded (2.5 MB already present)",
  );
  assert.equal(humanSeconds(0.04), "0.1s");
  assert.equal(humanSeconds(65), "1m05s");
  assert.equal(humanSeconds(7300), "2h02m");
  assert.equal(humanSeconds(Infinity), "--");
});

Deno.test("progress: after finish() no bar comes back, even for unfinished blobs", () => {
  const s = setup(80);
  s.renderer.handle({ type: "blob-start", digest: digest(1), size: 10 * MB, index: 0 });
  s.renderer.line("[+] one");
  assert.ok(s.hasListener());
  s.renderer.finish();
  assert.ok(!s.hasListener());
  s.renderer.line("[-] the pull failed");
  s.advance(500);
  s.renderer.handle({ type: "blob-progress", digest: digest(1), received: MB, size: 0 });
  s.renderer.finish();
  assertClean(s.term, ["[+] one", "[-] the pull failed"]);
  assert.equal(s.subscriptions(), 0);
});

Deno.test("progress: more bars than the screen has rows are summed up", () => {
  const s = setup(60, 6);
  for (let i = 1; i <= 9; i++) {
    s.renderer.handle({ type: "blob-start", digest: digest(i), size: MB, index: i });
  }
  s.renderer.line("[+] redraw");
  const lines = s.term.lines();
  assert.equal(lines.length, 1 + 4, lines.join("\n"));
  assert.equal(lines[4], "... and 6 more");
  s.renderer.finish();
  assertClean(s.term, ["[+] redraw"]);
});

Deno.test("progress: not a terminal: plain lines, no control sequences; quiet: nothing", () => {
  const s = setup(50, 20, { tty: false });
  play(s, pullEvents(2, 30 * MB, 5_000, 500));
  s.renderer.finish();
  const all = s.writes.join("");
  assert.ok(!all.includes("\x1b") && !all.includes("\r"), "no control sequences");
  assert.match(all, /\[\+\] 1{12}: \d+% [\d.]+\/30\.0 MB [\d.]+ MB\/s/);
  assert.equal(s.subscriptions(), 0, "no resize listener without a terminal");

  const quiet = setup(50, 20, { quiet: true });
  play(quiet, pullEvents(2, 30 * MB, 5_000, 500));
  quiet.renderer.line("[+] hidden");
  quiet.renderer.finish();
  assert.deepEqual(quiet.writes, []);
});

Deno.test("progress: the terminal emulator of these tests wraps and re-wraps like a terminal", () => {
  const t = new Terminal(10, 5);
  t.write("0123456789abc\nxy");
  assert.deepEqual(t.rows, ["0123456789", "abc", "xy"]);
  t.write("\x1b[1A\r\x1b[J");
  assert.deepEqual(t.lines(), ["0123456789"], "erased from the cursor down");
  t.write("\x1b[1A\x1b[J");
  assert.deepEqual(t.lines(), ["0123456789"], "a whole-screen clear goes to the scrollback");
  t.rows = [""];
  t.wrapped = [false];
  t.row = 0;
  t.write("0123456789\n0123456789\n");
  assert.equal(t.rows.length, 3, "a full row then a newline takes one row");
  t.resize(4);
  assert.deepEqual(t.lines(), ["0123456789", "0123456789"]);
  assert.equal(t.rows.length, 7);
  assert.deepEqual([t.row, t.col], [6, 0]);
});
