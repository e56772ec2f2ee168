/**
 * Resume across runs, the way users hit it: a pull of a large segmented blob from a slow
 * registry is killed half-way (SIGKILL, or SIGINT), and the next run fetches about what was
 * missing, not the whole blob; the archive verifies, and the killed run's hidden temporary
 * archive is gone.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { PERMISSIONS } from "../helpers/cli.ts";
import { type FaultHandler, startFaultRegistry } from "../helpers/fault_registry.ts";
import { buildImage, expectedArchive, MiB, verifyArchive } from "../helpers/hostile_image.ts";

const MAIN = new URL("../../main.ts", import.meta.url).pathname;
const DENO_DIR = Deno.env.get("DENO_DIR") ?? `${Deno.env.get("HOME")}/.cache/deno`;
const BLOB = 64 * MiB;
const CHUNK = 64 * 1024;

/**
 * The same linux/amd64 pull of REF into OUT/img.tar, run as often as asked: a process of its own
 * (so it can be killed), HOME at `home`, ARGS added.
 */
function pullCommand(ref: string, home: string, out: string, args: string[]): () => Deno.Command {
  return () =>
    new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--quiet",
        "--no-config",
        ...PERMISSIONS,
        MAIN,
        ref,
        "--platform",
        "linux/amd64",
        ...args,
        "-o",
        join(out, "img.tar"),
      ],
      cwd: out,
      env: { NO_COLOR: "1", DENO_DIR, HOME: home },
      clearEnv: true,
      stdout: "piped",
      stderr: "piped",
    });
}

/** Serves the big blob's requested range in 64 KiB chunks, `delayMs` apart, counting them. */
function throttled(
  bytes: Uint8Array,
  start: number,
  end: number,
  delayMs: number,
  served: { bytes: number },
): Response {
  let at = start;
  const body = new ReadableStream<Uint8Array>({
    async pull(controller) {
      if (at >= end) {
        controller.close();
        return;
      }
      if (delayMs > 0) await new Promise((resolve) => setTimeout(resolve, delayMs));
      const next = Math.min(end, at + CHUNK);
      controller.enqueue(bytes.slice(at, next));
      served.bytes += next - at;
      at = next;
    },
  });
  const headers: Record<string, string> = { "content-length": String(end - start) };
  if (start > 0 || end < bytes.byteLength) {
    headers["content-range"] = `bytes ${start}-${end - 1}/${bytes.byteLength}`;
  }
  return new Response(body, { status: headers["content-range"] ? 206 : 200, headers });
}

async function resumeAfter(signal: "SIGKILL" | "SIGINT"): Promise<void> {
  const image = buildImage({ layers: [BLOB, 20_000], seed: 11 });
  const big = image.layers[0];
  const served = { bytes: 0 };
  let delayMs = 100;
  const fault: FaultHandler = (req, ctx) => {
    if (!new URL(req.url).pathname.endsWith(big.digest) || !ctx.bytes) return undefined;
    const start = ctx.range?.start ?? 0;
    const end = Math.min(ctx.bytes.byteLength, (ctx.range?.end ?? Infinity) + 1);
    return throttled(ctx.bytes, start, end, delayMs, served);
  };
  const registry = startFaultRegistry({
    blobs: image.blobs,
    manifests: image.manifests,
    fault,
    quiet: true,
  });
  const dir = await Deno.makeTempDir();
  const out = join(dir, "out");
  await Deno.mkdir(out);
  const command = pullCommand(`${registry.host}/${image.repository}:${image.tag}`, dir, out, [
    "--cache-dir",
    join(dir, "cache"),
    "--segment-size",
    "1",
  ]);
  try {
    const first = command().spawn();
    const firstOutput = first.output();
    const deadline = Date.now() + 30_000;
    while (served.bytes < BLOB * 0.55 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    assert.ok(served.bytes >= BLOB * 0.55, `only ${served.bytes} bytes served in 30 s`);
    first.kill(signal);
    const killed = await firstOutput;
    if (signal === "SIGINT") {
      assert.equal(killed.code, 130, new TextDecoder().decode(killed.stderr));
    }
    const leftovers = (await Array.fromAsync(Deno.readDir(out))).map((e) => e.name);
    if (signal === "SIGKILL") {
      // What the crash left: the hidden temporary archive (the next run removes it).
      assert.ok(
        leftovers.some((n) => /^\.img\.tar\.[0-9a-f]{8}\.partial$/.test(n)),
        `${leftovers}`,
      );
    }

    const before = served.bytes;
    served.bytes = 0;
    delayMs = 0;
    const second = await command().output();
    assert.equal(second.code, 0, new TextDecoder().decode(second.stderr));
    assert.ok(
      served.bytes < BLOB * 0.7,
      `the second run fetched ${served.bytes} bytes of ${BLOB} (the first had ${before})`,
    );
    assert.deepEqual(await verifyArchive(join(out, "img.tar"), expectedArchive(image)), []);
    assert.deepEqual((await Array.fromAsync(Deno.readDir(out))).map((e) => e.name), ["img.tar"]);
  } finally {
    await registry.close();
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("resume: a pull killed (SIGKILL) half-way continues where it stopped", async () => {
  await resumeAfter("SIGKILL");
});

Deno.test("resume: a pull interrupted (SIGINT) half-way continues where it stopped", async () => {
  await resumeAfter("SIGINT");
});

Deno.test("crash: the next pull to a destination removes a killed pull's temporary files", async () => {
  // --no-cache: the killed run leaves its scratch store beside the output too.
  const image = buildImage({ layers: [8 * MiB], seed: 12 });
  let stall = true;
  const held: (() => void)[] = [];
  const registry = startFaultRegistry({
    blobs: image.blobs,
    manifests: image.manifests,
    quiet: true,
    fault: (req, ctx) => {
      if (!stall || !new URL(req.url).pathname.endsWith(image.layers[0].digest)) return undefined;
      if (!ctx.bytes) return undefined;
      // Never answers while the first run lives.
      return new Promise((resolve) =>
        held.push(() => resolve(new Response(null, { status: 503 })))
      );
    },
  });
  const dir = await Deno.makeTempDir();
  const command = pullCommand(`${registry.host}/${image.repository}:${image.tag}`, dir, dir, [
    "--no-cache",
  ]);
  try {
    const first = command().spawn();
    const firstOutput = first.output();
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline) {
      const names = (await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name);
      if (names.some((n) => n.endsWith(".partial"))) break;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    first.kill("SIGKILL");
    await firstOutput;
    const left = (await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name);
    assert.ok(left.some((n) => n.endsWith(".partial")), `nothing left to clean: ${left}`);
    assert.ok(left.some((n) => n.startsWith(".imgpull-")), `no scratch store left: ${left}`);
    stall = false;
    for (const release of held) release();
    const second = await command().output();
    assert.equal(second.code, 0, new TextDecoder().decode(second.stderr));
    assert.deepEqual((await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name), ["img.tar"]);
  } finally {
    await registry.close();
    await Deno.remove(dir, { recursive: true });
  }
});
