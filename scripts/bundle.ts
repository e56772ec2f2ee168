/**
 * `deno task bundle`: builds `dist/imgpull.js`, one self-contained ES module made by
 * `deno bundle` from `main.ts`, with the source commit stamped in (scripts/build_stamp.ts).
 *
 *     deno run -A scripts/bundle.ts [--out PATH]
 * @module
 */
import { parseArgs } from "node:util";
import { dirname, join } from "node:path";
import { ROOT, sourceCommit, writeStampedEntry } from "./build_stamp.ts";

/** Where `deno task bundle` writes the bundle. */
export const DEFAULT_BUNDLE = join(ROOT, "dist", "imgpull.js");

/** What {@link bundle} built. */
export interface BundleResult {
  path: string;
  commit: string;
  bytes: number;
}

/** Options for {@link bundle}. */
export interface BundleOptions {
  /** Minify (names kept: error classes are named after themselves). Default false. */
  minify?: boolean;
}

/** Bundles `main.ts` with its build stamp into `out` (written whole, or not at all). */
export async function bundle(
  out: string = DEFAULT_BUNDLE,
  options: BundleOptions = {},
): Promise<BundleResult> {
  const commit = await sourceCommit();
  const entry = await writeStampedEntry(commit);
  await Deno.mkdir(dirname(out), { recursive: true });
  const partial = `${out}.partial-${crypto.randomUUID()}`;
  try {
    const result = await new Deno.Command(Deno.execPath(), {
      args: [
        "bundle",
        "--quiet",
        "--config",
        join(ROOT, "deno.json"),
        "--platform",
        "deno",
        ...(options.minify ? ["--minify", "--keep-names"] : []),
        "--output",
        partial,
        entry,
      ],
      cwd: ROOT,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!result.success) {
      const stderr = new TextDecoder().decode(result.stderr).trim();
      throw new Error(`deno bundle failed (exit ${result.code}):\n${stderr}`);
    }
    const text = await Deno.readTextFile(partial);
    if (!text.includes(`commit:${options.minify ? "" : " "}${JSON.stringify(commit)}`)) {
      throw new Error("deno bundle's output lacks the build stamp");
    }
    await Deno.rename(partial, out);
    return { path: out, commit, bytes: new TextEncoder().encode(text).length };
  } finally {
    await Deno.remove(partial).catch(() => {});
  }
}

if (import.meta.main) {
  const { values } = parseArgs({ args: Deno.args, options: { out: { type: "string" } } });
  try {
    const result = await bundle(values.out ?? DEFAULT_BUNDLE);
    console.log(`${result.path} (${result.bytes} bytes, commit ${result.commit})`);
  } catch (e) {
    console.error(`[-] bundle: ${e instanceof Error ? e.message : e}`);
    Deno.exit(1);
  }
}
