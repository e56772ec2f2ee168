/**
 * Under load: eight imgpull processes pull three images that share layers into one
 * `--cache-dir` at the same time. Each archive must be byte-identical to a sequential
 * `--no-cache` pull of the same image and verify on its own, and the cache must hold no corrupt
 * entry, no leftover partial and nothing in `tmp/`.
 * @module
 */
import { join } from "node:path";
import { serveBytes, startFaultRegistry } from "./fault_registry.ts";
import {
  buildImage,
  expectedArchive,
  KiB,
  listFiles,
  MiB,
  pseudoRandom,
  type TestImage,
  verifyArchive,
  verifyCache,
} from "./hostile_image.ts";
import { errorLines, type RunResult, type Scenario, spawnImgpull } from "./hostile_runner.ts";

/** The pseudo-scenario the load results are reported under. */
export const LOAD_SCENARIO: Scenario = {
  id: "load",
  cls: "load",
  title: "8 concurrent pulls of 3 images sharing layers into one --cache-dir",
  code: 0,
  cache: true,
  prepare: () => Promise.reject(new Error("run with runLoad()")),
};

/** Runs the load case; one result per concurrent pull. */
export async function runLoad(pulls = 8): Promise<RunResult[]> {
  const shared = pseudoRandom(2 * MiB + 512 * KiB, 77); // several Range segments
  const middle = pseudoRandom(600 * KiB, 78);
  const images: TestImage[] = [
    buildImage({ repository: "load/a", layers: [shared, middle, 100 * KiB], seed: 11 }),
    buildImage({ repository: "load/b", layers: [shared, middle, 90 * KiB], seed: 12 }),
    buildImage({ repository: "load/c", layers: [shared, 80 * KiB], seed: 13 }),
  ];
  const blobs = new Map<string, Uint8Array>();
  const manifests = new Map<string, { bytes: Uint8Array; mediaType: string }>();
  for (const image of images) {
    for (const [k, v] of image.blobs) blobs.set(k, v);
    for (const [k, v] of image.manifests) manifests.set(k, v);
  }
  const timers = new Set<ReturnType<typeof setTimeout>>();
  // A little latency on every blob so that the processes really overlap.
  const registry = startFaultRegistry({
    blobs,
    manifests,
    quiet: true,
    fault: (_req, ctx) =>
      ctx.bytes && new URL(_req.url).pathname.includes("/blobs/")
        ? new Promise<Response>((resolve) => {
          const bytes = ctx.bytes!;
          const timer = setTimeout(() => {
            timers.delete(timer);
            resolve(serveBytes(bytes, ctx.range));
          }, 20);
          timers.add(timer);
        })
        : undefined,
  });
  const work = await Deno.makeTempDir({ prefix: "imgpull-load-" });
  const dirs = { ref: join(work, "ref"), out: join(work, "out"), home: join(work, "home") };
  const cache = join(work, "cache");
  for (const d of Object.values(dirs)) await Deno.mkdir(d);
  const env = { HOME: dirs.home };
  const results: RunResult[] = [];
  try {
    const ref = (image: TestImage) => `${registry.host}/${image.repository}:${image.tag}`;
    const reference: Uint8Array[] = [];
    for (const [i, image] of images.entries()) {
      const path = join(dirs.ref, `${i}.tar`);
      const r = await spawnImgpull(
        [ref(image), "--platform", "linux/amd64", "-o", path, "--no-cache", "-q"],
        { cwd: dirs.ref, env },
      );
      if (r.code !== 0) throw new Error(`sequential reference pull failed: ${r.stderr}`);
      reference.push(await Deno.readFile(path));
    }
    const runs = await Promise.all(Array.from({ length: pulls }, (_, i) => {
      const image = images[i % images.length];
      return spawnImgpull([
        ref(image),
        "--platform",
        "linux/amd64",
        "-o",
        join(dirs.out, `p${i}.tar`),
        "--cache-dir",
        cache,
        "--segment-size",
        "1",
        "-q",
      ], { cwd: dirs.out, env });
    }));
    for (const [i, run] of runs.entries()) {
      const problems: string[] = [];
      const image = images[i % images.length];
      const path = join(dirs.out, `p${i}.tar`);
      let corruptArchive = false;
      if (run.timedOut) problems.push("hung");
      if (run.code !== 0) problems.push(`exit code ${run.code}, expected 0`);
      if (errorLines(run.stderr).length > 0 || /^\s+at\s/m.test(run.stderr)) {
        problems.push(`errors printed: ${run.stderr.trim().slice(0, 300)}`);
      }
      if (run.code === 0) {
        const bad = await verifyArchive(path, expectedArchive(image));
        const bytes = await Deno.readFile(path).catch(() => new Uint8Array(0));
        const same = bytes.byteLength === reference[i % images.length].byteLength &&
          bytes.every((b, j) => b === reference[i % images.length][j]);
        if (!same) bad.push("archive differs from the sequential pull's");
        if (bad.length > 0) corruptArchive = true;
        problems.push(...bad);
      }
      results.push({
        scenario: { ...LOAD_SCENARIO, id: `load-pull-${i}` },
        verdict: "verified",
        code: run.code,
        elapsedMs: run.elapsedMs,
        problems,
        corruptArchive,
        leakedSecret: false,
        stderr: run.stderr,
      });
    }
    const cacheProblems = await verifyCache(cache);
    const partials = (await listFiles(join(cache, "partial")).catch(() => [])).filter((f) =>
      !f.endsWith(".lock")
    );
    if (partials.length > 0) cacheProblems.push(`partials left after success: ${partials}`);
    const outFiles = await listFiles(dirs.out);
    const wanted = Array.from({ length: pulls }, (_, i) => `p${i}.tar`).sort();
    if (JSON.stringify(outFiles) !== JSON.stringify(wanted)) {
      cacheProblems.push(`output directory holds ${JSON.stringify(outFiles)}`);
    }
    if (cacheProblems.length > 0) {
      const last = results[results.length - 1];
      last.problems.push(...cacheProblems.map((p) => `shared cache: ${p}`));
      if (cacheProblems.some((p) => p.includes("corrupt"))) last.corruptArchive = true;
    }
    for (const r of results) {
      r.verdict = r.problems.length > 0 ? "bad" : "verified";
    }
  } finally {
    for (const timer of timers) clearTimeout(timer);
    await registry.close();
    await Deno.remove(work, { recursive: true });
  }
  return results;
}
