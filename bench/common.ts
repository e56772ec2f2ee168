/**
 * Shared pieces of the benchmark scripts: timed child processes with peak RSS, the imgpull
 * command line (as tests/helpers/cli.ts runs it: `deno run` with the documented permissions),
 * statistics and formatting.
 * @module
 */
import { join } from "node:path";
import { PERMISSIONS } from "../tests/helpers/cli.ts";

/** The CLI entry point benchmarked by default: this checkout's main.ts. */
export const DEFAULT_MAIN = new URL("../main.ts", import.meta.url).pathname;

/** A finished, timed command. */
export interface TimedResult {
  code: number;
  /** Wall time from spawn to exit. */
  seconds: number;
  /** Peak resident set size of the command (GNU time `%M`), KiB; undefined if unknown. */
  peakRssKiB?: number;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

/** Options for {@link timed}. */
export interface TimedOptions {
  env?: Record<string, string>;
  /** Bytes for standard input (closed otherwise). */
  stdin?: Uint8Array;
  cwd?: string;
  /** Kill the command after this many ms (0: never). */
  timeoutMs?: number;
}

let gnuTime: boolean | undefined;

/** True when /usr/bin/time is GNU time (for `-f %M`). */
async function haveGnuTime(): Promise<boolean> {
  if (gnuTime === undefined) {
    try {
      const out = await new Deno.Command("/usr/bin/time", {
        args: ["-f", "%M", "-o", "/dev/null", "true"],
        stdout: "null",
        stderr: "null",
      }).output();
      gnuTime = out.success;
    } catch {
      gnuTime = false;
    }
  }
  return gnuTime;
}

const decoder = new TextDecoder();

async function drain(stream: ReadableStream<Uint8Array>, limit = 256 * 1024): Promise<string> {
  let text = "";
  for await (const chunk of stream) {
    text += decoder.decode(chunk, { stream: true });
    if (text.length > 2 * limit) text = text.slice(text.length - limit);
  }
  return text;
}

function childrenOf(pid: number): number[] {
  try {
    return Deno.readTextFileSync(`/proc/${pid}/task/${pid}/children`).trim().split(/\s+/)
      .filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

/**
 * Runs a command under `/usr/bin/time -f %M` (when GNU time is there) and measures its wall
 * time in this process, from spawn to exit. The environment is exactly `env` (plus nothing
 * inherited), so host settings such as proxies cannot leak in.
 */
export async function timed(
  cmd: string,
  args: string[],
  opts: TimedOptions = {},
): Promise<TimedResult> {
  const rssFile = await Deno.makeTempFile({ prefix: "imgpull-bench-rss-" });
  const wrapped = await haveGnuTime();
  const command = new Deno.Command(wrapped ? "/usr/bin/time" : cmd, {
    args: wrapped ? ["-f", "%M", "-o", rssFile, cmd, ...args] : args,
    env: opts.env,
    clearEnv: opts.env !== undefined,
    cwd: opts.cwd,
    stdin: opts.stdin ? "piped" : "null",
    stdout: "piped",
    stderr: "piped",
  });
  const started = performance.now();
  const child = command.spawn();
  let timedOut = false;
  let timer: ReturnType<typeof setTimeout> | undefined;
  if (opts.timeoutMs) {
    timer = setTimeout(() => {
      timedOut = true;
      // Kill the measured command (time's child) and time itself.
      for (const pid of [...childrenOf(child.pid), child.pid]) {
        try {
          Deno.kill(pid, "SIGKILL");
        } catch {
          // Gone.
        }
      }
    }, opts.timeoutMs);
  }
  const outputs = Promise.all([drain(child.stdout), drain(child.stderr)]);
  if (opts.stdin) {
    const writer = child.stdin.getWriter();
    await writer.write(opts.stdin).catch(() => {});
    await writer.close().catch(() => {});
  }
  const status = await child.status;
  const seconds = (performance.now() - started) / 1000;
  clearTimeout(timer);
  const [stdout, stderr] = await outputs;
  let peakRssKiB: number | undefined;
  try {
    const text = (await Deno.readTextFile(rssFile)).trim().split("\n").pop() ?? "";
    if (/^\d+$/.test(text)) peakRssKiB = Number(text);
  } catch {
    // No reading.
  }
  await Deno.remove(rssFile).catch(() => {});
  return { code: status.code, seconds, peakRssKiB, stdout, stderr, timedOut };
}

/** Everything needed to run the imgpull CLI against a registry. */
export interface ImgpullTarget {
  /** Full reference including the registry, e.g. `127.0.0.1:5000/bench/nginx-like:v1`. */
  reference: string;
  platform?: string;
  caCert?: string;
  username?: string;
  password?: string;
  plainHttp?: boolean;
  /** Extra arguments, passed last. */
  extraArgs?: string[];
}

/** Options of one imgpull run. */
export interface ImgpullRun {
  main: string;
  concurrency: number;
  output: string;
  /** An empty directory used as HOME (and DOCKER_CONFIG below it): nothing cached, no config. */
  home: string;
  /** Persistent DENO_DIR, so Deno's own module cache is warm like an installed tool's. */
  denoDir: string;
  /** Pass `--no-cache` (when the CLI has it). */
  noCache: boolean;
  timeoutMs?: number;
  /** DOCKER_CONFIG for credentials; default: an empty directory below `home`. */
  dockerConfig?: string;
}

/** The environment imgpull runs with: only what the documented permissions let it read. */
export function imgpullEnv(
  home: string,
  denoDir: string,
  dockerConfig = join(home, ".docker"),
): Record<string, string> {
  return {
    HOME: home,
    DOCKER_CONFIG: dockerConfig,
    DENO_DIR: denoDir,
    NO_COLOR: "1",
    PATH: Deno.env.get("PATH") ?? "/usr/local/bin:/usr/bin:/bin",
  };
}

/** `deno run --quiet --no-config <documented permissions> main.ts`, as tests/helpers/cli.ts. */
export function imgpullCommand(main: string): [string, string[]] {
  return [Deno.execPath(), ["run", "--quiet", "--no-config", ...PERMISSIONS, main]];
}

/** Runs one cold imgpull pull and times it. */
export function runImgpull(target: ImgpullTarget, run: ImgpullRun): Promise<TimedResult> {
  const [cmd, base] = imgpullCommand(run.main);
  const args = [
    ...base,
    target.reference,
    "--max-concurrent-downloads",
    String(run.concurrency),
    "-o",
    run.output,
    "-q",
  ];
  if (target.platform) args.push("--platform", target.platform);
  if (target.caCert) args.push("--ca-cert", target.caCert);
  if (target.plainHttp) args.push("--plain-http");
  if (target.username !== undefined) args.push("--username", target.username);
  if (target.password !== undefined) args.push("--password-stdin");
  if (run.noCache) args.push("--no-cache");
  args.push(...(target.extraArgs ?? []));
  return timed(cmd, args, {
    env: imgpullEnv(run.home, run.denoDir, run.dockerConfig),
    stdin: target.password !== undefined
      ? new TextEncoder().encode(`${target.password}\n`)
      : undefined,
    timeoutMs: run.timeoutMs,
  });
}

/**
 * Runs `imgpull --help` once: warms Deno's module cache (so the first measured run does not pay
 * for transpiling) and tells whether the CLI has `--no-cache`.
 */
export async function probeImgpull(
  main: string,
  denoDir: string,
): Promise<{ noCache: boolean; startupSeconds: number }> {
  const home = await Deno.makeTempDir({ prefix: "imgpull-bench-home-" });
  try {
    const [cmd, base] = imgpullCommand(main);
    const help = () => timed(cmd, [...base, "--help"], { env: imgpullEnv(home, denoDir) });
    const r = await help();
    if (r.code !== 0) throw new Error(`imgpull --help exited ${r.code}: ${r.stderr}`);
    // Warm now: the best of three is the floor every run pays (process start, module load).
    const again = [await help(), await help()].map((x) => x.seconds);
    return {
      noCache: /(^|\s)--no-cache\b/m.test(r.stdout + r.stderr),
      startupSeconds: Math.min(r.seconds, ...again),
    };
  } finally {
    await Deno.remove(home, { recursive: true });
  }
}

/** Median of a non-empty list. */
export function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/** Seconds with two decimals. */
export function fmtS(s: number | undefined): string {
  return s === undefined || !Number.isFinite(s) ? "—" : s.toFixed(2);
}

/** A ratio as `3.21×`. */
export function fmtX(x: number | undefined): string {
  return x === undefined || !Number.isFinite(x) ? "—" : `${x.toFixed(2)}×`;
}

/** Parses `1,3,5,8`. */
export function parseList(text: string, what: string): number[] {
  const values = text.split(",").map((s) => Number(s.trim()));
  if (values.length === 0 || values.some((n) => !Number.isInteger(n) || n < 1)) {
    throw new Error(`${what} must be a comma-separated list of positive integers: ${text}`);
  }
  return values;
}

/** Removes a directory tree and flushes dirty pages, so the next run starts from the same state. */
export async function cleanDir(dir: string): Promise<void> {
  await Deno.remove(dir, { recursive: true }).catch(() => {});
  await new Deno.Command("sync", { stdout: "null", stderr: "null" }).output().catch(() => {});
}

/** Machine and tool facts for the report header. */
export async function machineInfo(): Promise<string> {
  const cpu = (await Deno.readTextFile("/proc/cpuinfo").catch(() => ""))
    .match(/model name\s*:\s*(.*)/)?.[1] ?? "unknown CPU";
  const cores = navigator.hardwareConcurrency;
  const memGiB = Deno.systemMemoryInfo().total / 2 ** 30;
  const version = async (cmd: string, args: string[]) => {
    try {
      const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "null" }).output();
      return new TextDecoder().decode(out.stdout).split("\n")[0].trim();
    } catch {
      return `${cmd}: not found`;
    }
  };
  const lines = [
    `${cores} cores (${cpu}), ${memGiB.toFixed(0)} GiB RAM, Linux ${Deno.osRelease()}`,
    `deno ${Deno.version.deno}; ${await version("skopeo", ["--version"])}; ${await version(
      "/usr/bin/docker",
      ["version", "--format", "docker {{.Client.Version}}"],
    )}; ${await version("curl", ["--version"])}`.replace(/ \(x86_64[^;]*/, ""),
  ];
  return lines.join("\n");
}

/** A frozen copy of the CLI under test. */
export interface Snapshot {
  /** main.ts of the copy (or the original with `copy: false`). */
  main: string;
  /** `git describe`-like text: commit, and whether main.ts, cli/ or lib/ had uncommitted changes. */
  version: string;
  close(): Promise<void>;
}

/**
 * Copies `main` and the `lib/` and `cli/` beside it into a temp dir, so edits made to the
 * checkout while a long benchmark runs cannot mix versions in one report (main.ts, cli/ and lib/
 * import nothing else).
 * With `copy: false` the original is used in place.
 */
export async function snapshotImgpull(main: string, copy = true): Promise<Snapshot> {
  const root = main.slice(0, main.lastIndexOf("/")) || ".";
  const git = async (args: string[]) => {
    try {
      const out = await new Deno.Command("git", {
        args: ["-C", root, ...args],
        stdout: "piped",
        stderr: "null",
      })
        .output();
      return out.success ? new TextDecoder().decode(out.stdout).trim() : undefined;
    } catch {
      return undefined;
    }
  };
  const commit = await git(["rev-parse", "--short", "HEAD"]);
  const dirty = await git(["status", "--porcelain", "--", "main.ts", "lib", "cli"]);
  const version = commit
    ? `${commit}${dirty ? " + uncommitted changes in main.ts/cli/lib" : ""}`
    : "not a git checkout";
  if (!copy) return { main, version, close: () => Promise.resolve() };
  const dir = await Deno.makeTempDir({ prefix: "imgpull-bench-snapshot-" });
  const name = main.slice(main.lastIndexOf("/") + 1);
  await Deno.copyFile(main, join(dir, name));
  for (const sub of ["lib", "cli"]) {
    if (!(await Deno.stat(join(root, sub)).then(() => true, () => false))) continue;
    const cp = await new Deno.Command("cp", { args: ["-r", join(root, sub), join(dir, sub)] })
      .output();
    if (!cp.success) {
      throw new Error(`copying ${root}/${sub} failed: ${new TextDecoder().decode(cp.stderr)}`);
    }
  }
  return {
    main: join(dir, name),
    version,
    close: () => Deno.remove(dir, { recursive: true }),
  };
}
