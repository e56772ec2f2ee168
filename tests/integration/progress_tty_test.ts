/**
 * Progress bars in a real pseudo-terminal: the CLI runs inside tmux (50 columns; and a window
 * resized while bars are drawn), pulling from a real Distribution registry through a throttling
 * loopback proxy so that bars stay on screen for a few seconds. tmux's own screen, scrollback
 * included, must hold only the `[+]` lines and the archive path: no bar, and no piece of one.
 *
 * Needs tmux (Debian package `tmux`); the test fails, not skips, without it.
 *
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { startRegistry } from "../helpers/registry.ts";
import { pushBlob, pushManifest } from "../helpers/push.ts";
import { buildImage, MiB } from "../helpers/hostile_image.ts";
import { PERMISSIONS } from "../helpers/cli.ts";
import { run, sleep } from "../helpers/process.ts";

const MAIN = new URL("../../main.ts", import.meta.url).pathname;
const DENO_DIR = Deno.env.get("DENO_DIR") ?? `${Deno.env.get("HOME")}/.cache/deno`;

/**
 * A TCP proxy to `target` whose replies, across all connections, flow at about
 * `bytesPerSecond` (requests pass unthrottled).
 */
function startThrottlingProxy(target: { hostname: string; port: number }, bytesPerSecond: number) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns = new Set<Deno.Conn>();
  const tasks = new Set<Promise<void>>();
  let budgetAt = performance.now();
  // The time when the bytes sent so far (by everyone) are due; writers wait for it.
  const pace = async (n: number) => {
    budgetAt = Math.max(budgetAt, performance.now()) + (n / bytesPerSecond) * 1000;
    const wait = budgetAt - performance.now();
    if (wait > 1) await sleep(wait);
  };
  const pipe = async (from: Deno.Conn, to: Deno.Conn, throttled: boolean) => {
    const buf = new Uint8Array(16 * 1024);
    try {
      while (true) {
        const n = await from.read(buf);
        if (n === null) break;
        if (throttled) await pace(n);
        let off = 0;
        while (off < n) off += await to.write(buf.subarray(off, n));
      }
    } catch {
      // The other side went away.
    } finally {
      try {
        to.closeWrite();
      } catch {
        // Already closed.
      }
    }
  };
  const track = (p: Promise<void>) => {
    tasks.add(p);
    p.finally(() => tasks.delete(p));
  };
  const accepting = (async () => {
    for await (const client of listener) {
      track((async () => {
        let upstream: Deno.Conn;
        try {
          upstream = await Deno.connect(target);
        } catch {
          client.close();
          return;
        }
        conns.add(client).add(upstream);
        await Promise.all([pipe(client, upstream, false), pipe(upstream, client, true)]);
        for (const c of [client, upstream]) {
          conns.delete(c);
          try {
            c.close();
          } catch {
            // Already closed.
          }
        }
      })());
    }
  })();
  const port = (listener.addr as Deno.NetAddr).port;
  return {
    host: `127.0.0.1:${port}`,
    async close() {
      listener.close();
      for (const c of conns) {
        try {
          c.close();
        } catch {
          // Already closed.
        }
      }
      await accepting.catch(() => {});
      await Promise.all([...tasks]);
    },
  };
}

/** A tmux server of our own (its own socket), so nothing else of the user's is touched. */
class Tmux {
  readonly socket = `imgpull-test-${crypto.randomUUID().slice(0, 8)}`;

  async cmd(...args: string[]): Promise<string> {
    const r = await run("tmux", ["-L", this.socket, "-f", "/dev/null", ...args]);
    if (r.code !== 0) throw new Error(`tmux ${args.join(" ")}: ${r.stderr.trim()}`);
    return r.stdout;
  }

  /** Everything the pane shows and has scrolled off, wrapped lines joined. */
  capture(): Promise<string> {
    return this.cmd("capture-pane", "-p", "-J", "-S", "-", "-E", "-", "-t", "pull");
  }

  async close(): Promise<void> {
    await run("tmux", ["-L", this.socket, "kill-server"]);
  }
}

/** Single-quotes a word for the shell tmux runs the command with. */
const sh = (word: string) => `'${word.replaceAll("'", `'\\''`)}'`;

/** Waits until the pane's text satisfies `done`, or fails with what it shows. */
async function waitFor(tmux: Tmux, what: string, done: (text: string) => boolean, ms = 60_000) {
  const deadline = performance.now() + ms;
  let text = "";
  while (performance.now() < deadline) {
    text = await tmux.capture();
    if (done(text)) return text;
    await sleep(50);
  }
  throw new Error(`tmux pane never showed ${what}; it shows:\n${text}`);
}

/** Bars (or pieces of them) look like this; none of the lines that stay does. */
const BAR_PIECE = /\[[= ]{2,}\]?|MB\/s|ETA|\d\/\d/;

/**
 * Pulls the test image in a tmux pane of `columns` columns; `whileBars` runs once bars are on
 * screen. Returns the pane's lines (history included) after the pull and its exit code.
 */
async function pullInTmux(
  columns: number,
  whileBars: (tmux: Tmux) => Promise<void> = () => Promise.resolve(),
  term = "tmux-256color",
) {
  const work = await Deno.makeTempDir({ prefix: "imgpull-tty-" });
  const cleanups: (() => Promise<void>)[] = [() => Deno.remove(work, { recursive: true })];
  try {
    // Fail loudly without tmux: `tmux -V` must run.
    const version = await run("tmux", ["-V"]).catch((e) => {
      throw new Error(`tmux is needed for this test (apt-get install tmux): ${e}`);
    });
    assert.equal(version.code, 0, "tmux -V failed");

    const registry = await startRegistry({ mode: "http", storageDir: join(work, "storage") });
    cleanups.unshift(registry.close);
    const image = buildImage({
      repository: "tty/app",
      tag: "v1",
      layers: [9 * MiB, 7 * MiB, 5 * MiB],
    });
    for (const [, bytes] of image.blobs) await pushBlob(registry.url, image.repository, bytes);
    await pushManifest(
      registry.url,
      image.repository,
      image.tag,
      image.manifest.bytes,
      image.manifest.mediaType,
    );
    const [hostname, port] = registry.host.split(":");
    // 21 MiB at 5 MB/s: about four seconds of bars.
    const proxy = startThrottlingProxy({ hostname, port: Number(port) }, 5_000_000);
    cleanups.unshift(proxy.close);

    const output = join(work, "app.tar");
    const command = [
      "env",
      `HOME=${work}`,
      `DENO_DIR=${DENO_DIR}`,
      "NO_COLOR=1",
      `TERM=${term}`,
      Deno.execPath(),
      "run",
      "--quiet",
      "--no-config",
      ...PERMISSIONS,
      MAIN,
      "--no-cache",
      "-o",
      output,
      `${proxy.host}/tty/app:v1`,
    ].map(sh).join(" ");
    const tmux = new Tmux();
    cleanups.unshift(() => tmux.close());
    await tmux.cmd(
      "new-session",
      "-d",
      "-s",
      "pull",
      "-x",
      String(columns),
      "-y",
      "20",
      `${command}; echo "__EXIT $?"; sleep 600`,
    );
    // tmux keeps no scrollback by default beyond 2000 lines: plenty here.
    await waitFor(
      tmux,
      "a progress bar",
      (text) => /MB\/s/.test(text) || /__EXIT/.test(text) || term === "dumb",
    );
    await whileBars(tmux);
    const text = await waitFor(tmux, "the end of the pull", (t) => /__EXIT \d+/.test(t));
    const code = Number(/__EXIT (\d+)/.exec(text)![1]);
    const toLines = (t: string) => t.split("\n").map((l) => l.trimEnd()).filter((l) => l !== "");
    const visible = toLines(await tmux.cmd("capture-pane", "-p", "-J", "-t", "pull"));
    return { lines: toLines(text), visible, code, output, image };
  } finally {
    for (const cleanup of cleanups) await cleanup().catch(() => {});
  }
}

/** A line that is not a `[+]` line, the archive path or our exit marker, or looks like a bar. */
function isStale(line: string, output: string): boolean {
  // The final summary names a speed too; it is a line of its own, not a bar.
  if (line.startsWith("[+] Done in ")) return false;
  return BAR_PIECE.test(line) ||
    !(line.startsWith("[+] ") || line === output || line === "__EXIT 0");
}

/** Every line left is a `[+]` line, the archive path or our exit marker; none is a bar. */
function assertNoBarFragments(lines: string[], output: string) {
  const stale = lines.filter((l) => isStale(l, output));
  assert.deepEqual(stale, [], `stale lines on screen:\n${lines.join("\n")}`);
  assert.ok(lines.some((l) => l.startsWith("[+] Wrote ")), lines.join("\n"));
  assert.equal(lines.filter((l) => / downloaded \(/.test(l)).length, 3, lines.join("\n"));
}

Deno.test("progress in tmux at 50 columns: no stale bar fragments", async () => {
  const { lines, code, output } = await pullInTmux(50);
  assert.equal(code, 0, lines.join("\n"));
  assertNoBarFragments(lines, output);
});

Deno.test("progress in tmux: the window is resized while bars are drawn (SIGWINCH)", async () => {
  let sawBars = "";
  const widths = [50, 36, 64];
  const { lines, visible, code, output } = await pullInTmux(80, async (tmux) => {
    for (const width of widths) {
      await tmux.cmd("resize-window", "-t", "pull", "-x", String(width), "-y", "20");
      await sleep(400);
      sawBars += await tmux.cmd("capture-pane", "-p", "-t", "pull");
    }
  });
  assert.equal(code, 0, lines.join("\n"));
  assert.match(sawBars, /MB\/s/, "the resizes happened while bars were drawn");
  // The screen is clean, and the bars were redrawn at each new width.
  assertNoBarFragments(visible, output);
  // The scrollback may keep a piece of a bar per resize: when a narrower window re-wraps the
  // bars, tmux keeps the cursor's row and pushes the rows that no longer fit into the
  // scrollback, out of reach of any redraw. Without the SIGWINCH redraw and the row count at
  // the new width, every later frame would stay behind instead (dozens of lines).
  const stale = lines.filter((l) => isStale(l, output));
  assert.ok(stale.length <= widths.length, `stale lines:\n${lines.join("\n")}`);
});

Deno.test("progress on a dumb terminal (TERM=dumb): plain lines, no escape sequences", async () => {
  const { lines, code, output } = await pullInTmux(50, undefined, "dumb");
  assert.equal(code, 0, lines.join("\n"));
  assert.ok(lines.every((l) => !l.includes("\x1b")), lines.join("\n"));
  assert.ok(!lines.some((l) => /\[[= ]{3,}\]/.test(l)), `a bar was drawn:\n${lines.join("\n")}`);
  assert.ok(lines.includes(output), lines.join("\n"));
});
