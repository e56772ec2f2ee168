/**
 * `deno task compile`: standalone imgpull binaries, compiled from the stamped bundle
 * (scripts/bundle.ts) with the documented permissions baked in (scripts/permissions.ts), named
 * `imgpull-<version>-<target>[.exe]`, plus `SHA256SUMS` for them and the bundle.
 *
 *     deno run -A scripts/compile.ts [--target TRIPLE]... [--out-dir DIR] [--bundle FILE]
 *
 * `deno compile` downloads Deno's base runtime (denort) for each target from dl.deno.land. With
 * `DENORT_BIN` set, that file is used instead, and only the host target is built unless
 * `--target` says otherwise (a runtime is for one target). When neither works, this fails with
 * one line saying so.
 * @module
 */
import { parseArgs } from "node:util";
import { basename, join } from "node:path";
import { createHash } from "node:crypto";
import { ROOT } from "./build_stamp.ts";
import { bundle } from "./bundle.ts";
import { PERMISSIONS } from "./permissions.ts";
import { VERSION } from "../lib/version.ts";

/** Every target imgpull is released for (all that `deno compile --target` accepts in 2.9). */
export const TARGETS: readonly string[] = [
  "x86_64-unknown-linux-gnu",
  "aarch64-unknown-linux-gnu",
  "x86_64-apple-darwin",
  "aarch64-apple-darwin",
  "x86_64-pc-windows-msvc",
  "aarch64-pc-windows-msvc",
];

/** A failure this script explains in one line (no stack trace). */
export class CompileError extends Error {}

/** `imgpull-0.1.0-x86_64-pc-windows-msvc.exe` */
export function binaryName(target: string, version: string = VERSION): string {
  return `imgpull-${version}-${target}${target.includes("windows") ? ".exe" : ""}`;
}

/** Options for {@link compile}. */
export interface CompileOptions {
  targets?: readonly string[];
  outDir?: string;
  /** Environment for `deno compile` (default: this process's); `DENORT_BIN` is read from it. */
  env?: Record<string, string>;
  /** A bundle built already (by scripts/bundle.ts); otherwise one is built into `outDir`. */
  bundlePath?: string;
}

/** What {@link compile} built: absolute paths of the binaries, the bundle and SHA256SUMS. */
export interface CompileResult {
  binaries: string[];
  bundle: string;
  sums: string;
}

async function sha256File(path: string): Promise<string> {
  const hash = createHash("sha256");
  using file = await Deno.open(path);
  for await (const chunk of file.readable) hash.update(chunk);
  return hash.digest("hex");
}

/** `<hex>  <name>` lines, as `sha256sum` writes and `sha256sum -c` reads them. */
export async function writeSums(paths: string[], sumsPath: string): Promise<void> {
  const lines: string[] = [];
  for (const path of paths) lines.push(`${await sha256File(path)}  ${basename(path)}`);
  await Deno.writeTextFile(sumsPath, lines.join("\n") + "\n");
}

/** The last line of Deno's error chain (`Connection refused (os error 111)`, …). */
function rootCause(stderr: string): string {
  const chain = stderr.split(/\n\s*Stack backtrace:/)[0];
  const causes = chain.split("\n").map((l) => l.trim())
    .filter((l) => /^\d+: /.test(l)).map((l) => l.replace(/^\d+: /, ""));
  return causes.at(-1) ?? chain.trim().split("\n").at(-1) ?? "unknown error";
}

async function compileOne(
  bundlePath: string,
  target: string,
  output: string,
  env: Record<string, string>,
): Promise<void> {
  const result = await new Deno.Command(Deno.execPath(), {
    args: [
      "compile",
      "--quiet",
      "--no-config",
      "--no-remote",
      "--no-npm",
      "--no-prompt",
      ...PERMISSIONS,
      "--target",
      target,
      "--output",
      output,
      bundlePath,
    ],
    env: { ...env, NO_COLOR: "1" },
    clearEnv: true,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (result.success) return;
  const stderr = new TextDecoder().decode(result.stderr);
  if (/Setting up base binary|Could not find denort/.test(stderr)) {
    const how = env.DENORT_BIN
      ? `DENORT_BIN=${env.DENORT_BIN} could not be used`
      : "DENORT_BIN is not set and the download from https://dl.deno.land failed";
    throw new CompileError(
      `cannot get Deno's base runtime (denort) for ${target}: ${how} (${rootCause(stderr)}); ` +
        `set DENORT_BIN to a denort ${Deno.version.deno} binary for ${target}`,
    );
  }
  throw new CompileError(`deno compile --target ${target} failed: ${rootCause(stderr)}`);
}

/** Builds the bundle (unless given), one binary per target, then SHA256SUMS over all of them. */
export async function compile(options: CompileOptions = {}): Promise<CompileResult> {
  const env = options.env ?? Deno.env.toObject();
  const outDir = options.outDir ?? join(ROOT, "dist");
  const targets = options.targets ?? (env.DENORT_BIN ? [Deno.build.target] : TARGETS);
  for (const target of targets) {
    if (!TARGETS.includes(target)) {
      throw new CompileError(`unknown target ${target}; one of: ${TARGETS.join(", ")}`);
    }
  }
  if (env.DENORT_BIN) {
    const info = await Deno.stat(env.DENORT_BIN).catch(() => undefined);
    if (!info?.isFile) throw new CompileError(`DENORT_BIN=${env.DENORT_BIN} is not a file`);
  }
  await Deno.mkdir(outDir, { recursive: true });
  const bundlePath = options.bundlePath ?? (await bundle(join(outDir, "imgpull.js"))).path;
  const binaries: string[] = [];
  for (const target of targets) {
    const output = join(outDir, binaryName(target));
    await compileOne(bundlePath, target, output, env);
    binaries.push(output);
  }
  const sums = join(outDir, "SHA256SUMS");
  await writeSums([...binaries, bundlePath], sums);
  return { binaries, bundle: bundlePath, sums };
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      target: { type: "string", multiple: true },
      "out-dir": { type: "string" },
      bundle: { type: "string" },
    },
  });
  try {
    const result = await compile({
      targets: values.target,
      outDir: values["out-dir"],
      bundlePath: values.bundle,
    });
    for (const path of [...result.binaries, result.bundle, result.sums]) console.log(path);
  } catch (e) {
    console.error(`[-] compile: ${e instanceof Error ? e.message : e}`);
    Deno.exit(1);
  }
}
