/**
 * Runs one imgpull pull (the CLI, as users run it) under a fault scenario and judges the
 * outcome the same way for the tests and for `scripts/reliability.ts`:
 *
 * - "verified": exit 0, and the archive parses and every blob in it hashes to its name;
 * - "clean error": the expected exit code with exactly one `[-]` error line (plus an optional
 *   `[-] Hint:` line), no stack trace;
 * - "bad": anything else — wrong exit code, stack trace, a file left in (or changed in) the
 *   output directory, a corrupt archive or cache entry, a leaked secret, a hang, or a
 *   scenario-specific check that failed (e.g. a request that was retried but must not be).
 *
 * The scenarios themselves are in {@link ./hostile_scenarios.ts}.
 * @module
 */
import { join, relative } from "node:path";
import { PERMISSIONS } from "./cli.ts";
import {
  type ExpectedArchive,
  snapshot,
  snapshotDiff,
  verifyArchive,
  verifyCache,
} from "./hostile_image.ts";
import { runOk } from "./process.ts";
import { generateTestPki, type TestPki } from "./tls.ts";

const MAIN = new URL("../../main.ts", import.meta.url).pathname;
/** Deno's own cache, kept when HOME points elsewhere (as in tests/helpers/cli.ts). */
const DENO_DIR = Deno.env.get("DENO_DIR") ?? `${Deno.env.get("HOME")}/.cache/deno`;

/** Directories of one run. Only `out`, `home` and `cache` may appear under `work`. */
export interface RunDirs {
  work: string;
  /** The output directory (and the CLI's working directory). */
  out: string;
  /** `HOME` of the CLI. */
  home: string;
  /** The `--cache-dir` when the scenario uses a cache (it may not exist yet). */
  cache: string;
  /** Default archive path, `out/out.tar`. */
  output: string;
  /** Whether a file already exists at the destination (it must survive a failed pull). */
  preexisting: boolean;
}

/** What a finished (or interrupted) CLI run produced. */
export interface PullOutcome {
  code: number;
  stdout: string;
  stderr: string;
  elapsedMs: number;
  /** With an interrupt: ms from the signal to the exit. */
  signalToExitMs?: number;
}

/** A scenario, set up and ready to pull. */
export interface Prepared {
  /** Image reference to pull. */
  ref: string;
  /** Extra CLI arguments (retries, stall timeout, credentials, CA, ...). */
  args?: string[];
  stdin?: string;
  /** Archive path when not `dirs.output`. */
  output?: string;
  /** What the archive must hold after a successful pull. */
  expected?: ExpectedArchive;
  /** Send a signal once `after` resolves. */
  interrupt?: { signal: "SIGINT" | "SIGTERM"; after: Promise<unknown> };
  /** Strings that must never appear in stdout or stderr. */
  secrets?: string[];
  /**
   * `prepare` took care of the destination (wrote the existing file itself before a read-only
   * remount, or made it a directory): the runner writes no file there.
   */
  ownsDestination?: boolean;
  /** Scenario-specific checks; returns problems. */
  check?: (outcome: PullOutcome) => string[] | Promise<string[]>;
  close?: () => Promise<void>;
}

/** One fault case. */
export interface Scenario {
  id: string;
  /** Fault class (a row of the reliability report, a test of the suite). */
  cls: string;
  title: string;
  /** Expected exit code (0: completes and verifies). */
  code: number;
  /** What the `[-]` line (or the hint) must say. */
  message?: RegExp;
  /** Use `--cache-dir` (checked afterwards) instead of `--no-cache`. */
  cache?: boolean;
  /** Run with `--verbose` (stack traces are then allowed). */
  verbose?: boolean;
  /**
   * Whether the tests put a file at the destination first (the script alternates, except where
   * this is `false`: an output that is a directory).
   */
  preexisting?: boolean;
  /** Needs root (tmpfs mounts). */
  root?: boolean;
  prepare(dirs: RunDirs, services: Services): Promise<Prepared>;
}

/** Verdict of one run. */
export type Verdict = "verified" | "clean error" | "bad";

/** What {@link runScenario} found. */
export interface RunResult {
  scenario: Scenario;
  verdict: Verdict;
  code: number;
  elapsedMs: number;
  problems: string[];
  /** Counts of problem kinds, for the report totals. */
  corruptArchive: boolean;
  leakedSecret: boolean;
  stderr: string;
}

/** Test services that several scenarios share, started on first use. */
export class Services {
  #root?: Promise<string>;
  #pki?: Promise<TestPki>;
  readonly #closers: (() => Promise<void>)[] = [];
  readonly #shared = new Map<string, Promise<unknown>>();

  /** A directory for the services' files, removed by {@link close}. */
  root(): Promise<string> {
    this.#root ??= Deno.makeTempDir({ prefix: "imgpull-hostile-services-" });
    return this.#root;
  }

  /** The test PKI (CA and a server leaf for 127.0.0.1). */
  pki(): Promise<TestPki> {
    this.#pki ??= this.root().then((root) => generateTestPki(join(root, "pki")));
    return this.#pki;
  }

  /** Starts `start` once under `key` and closes what it returns in {@link close}. */
  shared<T extends { close(): Promise<void> }>(key: string, start: () => Promise<T>): Promise<T> {
    let entry = this.#shared.get(key) as Promise<T> | undefined;
    if (!entry) {
      entry = start().then((value) => {
        this.#closers.push(() => value.close());
        return value;
      });
      this.#shared.set(key, entry);
    }
    return entry;
  }

  async close(): Promise<void> {
    for (const close of this.#closers.reverse()) await close();
    for (const entry of this.#shared.values()) await entry.catch(() => {});
    if (this.#root) await Deno.remove(await this.#root, { recursive: true });
  }
}

/** `[-]` lines other than hints. */
export function errorLines(stderr: string): string[] {
  return stderr.split("\n").filter((l) => l.startsWith("[-] ") && !l.startsWith("[-] Hint:"));
}

const STACK_TRACE = /^\s+at\s|error: Uncaught|^Caused by:|Unexpected error/m;
/** JWTs, and Authorization values (a scheme, then a credential with a digit in it). */
const GENERIC_SECRETS = [
  /eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}/,
  /\b(?:Bearer|Basic)\s+(?=[A-Za-z._~+/=-]*\d)[A-Za-z0-9._~+/-]{12,}=*/,
];

/** Runs the CLI with the documented permissions; optionally interrupts it. */
export async function spawnImgpull(
  args: string[],
  options: {
    cwd: string;
    env: Record<string, string>;
    stdin?: string;
    interrupt?: Prepared["interrupt"];
    timeoutMs?: number;
    /** Deno permissions instead of the documented ones. */
    permissions?: readonly string[];
  },
): Promise<PullOutcome & { timedOut: boolean; interruptMissed: boolean }> {
  const started = performance.now();
  const permissions = options.permissions ?? PERMISSIONS;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--quiet", "--no-config", ...permissions, MAIN, ...args],
    cwd: options.cwd,
    env: { NO_COLOR: "1", DENO_DIR, ...options.env },
    clearEnv: true,
    stdin: options.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (options.stdin !== undefined) {
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(options.stdin));
    await writer.close();
  }
  const output = child.output();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      child.kill("SIGKILL");
    } catch { /* exited */ }
  }, options.timeoutMs ?? 60_000);
  let signalledAt: number | undefined;
  let interruptMissed = false;
  try {
    if (options.interrupt) {
      let reached = false;
      let wait: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        options.interrupt.after.then(() => reached = true),
        output,
        new Promise((resolve) => wait = setTimeout(resolve, 20_000)),
      ]);
      clearTimeout(wait);
      if (reached) {
        signalledAt = performance.now();
        try {
          child.kill(options.interrupt.signal);
        } catch { /* exited */ }
      } else interruptMissed = true;
    }
    const result = await output;
    const ended = performance.now();
    const decoder = new TextDecoder();
    return {
      code: result.code,
      stdout: decoder.decode(result.stdout),
      stderr: decoder.decode(result.stderr),
      elapsedMs: ended - started,
      signalToExitMs: signalledAt === undefined ? undefined : ended - signalledAt,
      timedOut,
      interruptMissed,
    };
  } finally {
    clearTimeout(timer);
  }
}

const SENTINEL = "an archive that was here before the pull\n";

/** Sets up `scenario`, runs one pull and judges it. */
export async function runScenario(
  scenario: Scenario,
  services: Services,
  options: { preexisting?: boolean } = {},
): Promise<RunResult> {
  const work = await Deno.makeTempDir({ prefix: `imgpull-${scenario.id}-` });
  const dirs: RunDirs = {
    work,
    out: join(work, "out"),
    home: join(work, "home"),
    cache: join(work, "cache"),
    output: join(work, "out", "out.tar"),
    // A scenario that says `false` has no file destination to protect (a directory output).
    preexisting: scenario.preexisting === false
      ? false
      : options.preexisting ?? scenario.preexisting ?? false,
  };
  await Deno.mkdir(dirs.out);
  await Deno.mkdir(dirs.home);
  const problems: string[] = [];
  let prepared: Prepared | undefined;
  let outcome: PullOutcome | undefined;
  let corruptArchive = false;
  let leakedSecret = false;
  try {
    prepared = await scenario.prepare(dirs, services);
    const output = prepared.output ?? dirs.output;
    // Standard output (`-o -`) has no file to protect.
    if (dirs.preexisting && !prepared.ownsDestination && output !== "-") {
      await Deno.writeTextFile(output, SENTINEL);
    }
    const before = await snapshot(dirs.out);
    const args = [
      prepared.ref,
      "--platform",
      "linux/amd64",
      "-o",
      output,
      ...(scenario.cache ? ["--cache-dir", dirs.cache] : ["--no-cache"]),
      ...(scenario.verbose ? ["--verbose"] : []),
      ...(prepared.args ?? []),
    ];
    const run = await spawnImgpull(args, {
      cwd: dirs.out,
      env: { HOME: dirs.home },
      stdin: prepared.stdin,
      interrupt: prepared.interrupt,
    });
    outcome = run;
    const { code, stdout, stderr } = run;
    if (run.timedOut) problems.push("hung: killed after 60 s");
    if (run.interruptMissed) problems.push("the download to interrupt never started");
    if (code !== scenario.code) problems.push(`exit code ${code}, expected ${scenario.code}`);
    if (!scenario.verbose && STACK_TRACE.test(stderr)) {
      problems.push(`stack trace or unexpected error on stderr`);
    }
    const errors = errorLines(stderr);
    if (code === 0) {
      if (errors.length > 0) problems.push(`a successful pull printed ${JSON.stringify(errors)}`);
    } else {
      if (errors.length !== 1) {
        problems.push(`${errors.length} [-] error lines instead of one: ${JSON.stringify(errors)}`);
      }
      const long = stderr.split("\n").find((l) => l.startsWith("[-] ") && l.length > 1000);
      if (long) problems.push(`a [-] line of ${long.length} characters`);
      const said = stderr.split("\n").filter((l) => l.startsWith("[-] ")).join("\n");
      if (scenario.message && !scenario.message.test(said)) {
        problems.push(`error ${JSON.stringify(said)} does not match ${scenario.message}`);
      }
    }
    if (prepared.interrupt && (run.signalToExitMs ?? Infinity) > 2000) {
      problems.push(
        `exited ${Math.round(run.signalToExitMs ?? run.elapsedMs)} ms after the signal (max 2000)`,
      );
    }
    // The output directory: nothing new after a failure, only the archive after a success.
    const after = await snapshot(dirs.out);
    const archive = relative(dirs.out, output);
    if (code === 0) {
      if (!after.has(archive)) problems.push(`exit 0 but no archive at ${archive}`);
      else {
        const bad = await verifyArchive(output, prepared.expected);
        if (bad.length > 0) corruptArchive = true;
        problems.push(...bad);
      }
      before.delete(archive);
      after.delete(archive);
    }
    const diff = snapshotDiff(before, after);
    if (diff.length > 0) problems.push(`output directory: ${diff.join("; ")}`);
    if (scenario.cache) {
      const bad = await verifyCache(dirs.cache).catch((e) => [`cache: ${e}`]);
      if (bad.some((p) => p.includes("corrupt"))) corruptArchive = true;
      problems.push(...bad);
    }
    for (const name of await Array.fromAsync(Deno.readDir(work), (e) => e.name)) {
      if (!["out", "home", "cache"].includes(name)) {
        problems.push(`created ${name} beside the output`);
      }
    }
    const printed = `${stdout}\n${stderr}`;
    for (const [i, secret] of (prepared.secrets ?? []).entries()) {
      if (secret && printed.includes(secret)) {
        leakedSecret = true;
        problems.push(`secret #${i + 1} (${secret.slice(0, 3)}…) appears in the output`);
      }
    }
    for (const pattern of GENERIC_SECRETS) {
      const m = printed.match(pattern);
      if (m) {
        leakedSecret = true;
        problems.push(
          `an Authorization value or token appears in the output: ${m[0].slice(0, 12)}…`,
        );
      }
    }
    if (prepared.check) problems.push(...await prepared.check(run));
  } catch (e) {
    problems.push(`scenario failed to run: ${String(e).split("\n")[0]}`);
  } finally {
    await prepared?.close?.().catch((e) => problems.push(`cleanup failed: ${e}`));
    await Deno.remove(work, { recursive: true }).catch((e) =>
      problems.push(`cannot remove ${work}: ${e}`)
    );
  }
  const code = outcome?.code ?? -1;
  return {
    scenario,
    verdict: problems.length > 0 ? "bad" : code === 0 ? "verified" : "clean error",
    code,
    elapsedMs: outcome?.elapsedMs ?? 0,
    problems,
    corruptArchive,
    leakedSecret,
    stderr: outcome?.stderr ?? "",
  };
}

/** Runs `jobs` with at most `concurrency` at once, keeping their order in the result. */
export async function pool<T>(jobs: (() => Promise<T>)[], concurrency: number): Promise<T[]> {
  const results: T[] = new Array(jobs.length);
  let next = 0;
  const worker = async () => {
    while (next < jobs.length) {
      const i = next++;
      results[i] = await jobs[i]();
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, jobs.length) }, worker));
  return results;
}

/** One entry per bad run, with what it printed, for assertion messages. */
export function describeBad(results: RunResult[]): string {
  return results.filter((r) => r.verdict === "bad").map((r) => {
    const lines = r.stderr.trim().split("\n");
    const said = lines.filter((l) => l.startsWith("[-] "));
    const shown = (said.length > 0 ? said : lines.slice(-4)).map((l) => l.slice(0, 300));
    return `✗ ${r.scenario.id} (${r.scenario.title}): ${r.problems.join(" | ")}\n` +
      `    stderr: ${shown.join("\n            ")}`;
  }).join("\n");
}

/** Mounts a tmpfs (root only). */
export async function mountTmpfs(dir: string, options: string): Promise<void> {
  await runOk("mount", ["-t", "tmpfs", "-o", options, "tmpfs", dir]);
}

/** Unmounts, lazily if something still holds the mount. */
export async function unmount(dir: string): Promise<void> {
  try {
    await runOk("umount", [dir]);
  } catch {
    await runOk("umount", ["-l", dir]);
  }
}
