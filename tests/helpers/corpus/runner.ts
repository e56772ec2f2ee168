/**
 * Runs corpus rows: build and push the shape, take skopeo's reference root filesystem, then pull
 * cold (fresh cache) and warm (same cache, second pull) with the imgpull CLI and prove each
 * archive with every loader. Outcomes are collected, never thrown, so each row reports every
 * loader's verdict.
 * @module
 */
import { join } from "node:path";
import { imgpull, PERMISSIONS } from "../cli.ts";
import { run } from "../process.ts";
import {
  type Check,
  type LoaderName,
  LOADERS,
  proveCtr,
  proveDocker,
  provePodman,
  readArchive,
  skopeoReference,
} from "./loaders.ts";
import type { Prepared, Row, RowContext } from "./rows.ts";
import type { CorpusProxies, CorpusServices } from "./services.ts";
import type { FsListing } from "./tar.ts";

/**
 * `CORPUS_MAIN`: another main.ts to run (e.g. a `git archive` of a commit, while the working
 * tree is being edited); otherwise the checkout's own CLI through tests/helpers/cli.ts.
 */
const OTHER_MAIN = Deno.env.get("CORPUS_MAIN");
const DENO_DIR = Deno.env.get("DENO_DIR") ?? `${Deno.env.get("HOME")}/.cache/deno`;

function pullCli(args: string[], opts: { cwd: string; env: Record<string, string> }) {
  if (!OTHER_MAIN) return imgpull(args, opts);
  return run(Deno.execPath(), [
    "run",
    "--quiet",
    "--no-config",
    ...PERMISSIONS,
    OTHER_MAIN,
    ...args,
  ], {
    cwd: opts.cwd,
    env: { NO_COLOR: "1", DENO_DIR, ...opts.env },
  });
}

/** One pull (cold or warm) and what the loaders made of its archive. */
export interface PhaseResult {
  pull: Check;
  /** Loaders that were due for this row; absent ones are not part of the row's expectation. */
  loaders: Partial<Record<LoaderName, Check>>;
  seconds: number;
  /** What imgpull printed on stderr, and the archive's RepoTags (for the verbose report). */
  stderr: string;
  repoTags?: string[];
}

/** Everything a row produced. */
export interface RowResult {
  row: Row;
  /** Building, pushing, and skopeo's reference copy. */
  setup: Check;
  cold?: PhaseResult;
  warm?: PhaseResult;
  seconds: number;
}

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

async function listDir(dir: string): Promise<string[]> {
  const names: string[] = [];
  for await (const e of Deno.readDir(dir)) names.push(e.name);
  return names.sort();
}

function firstLines(text: string, n = 6): string {
  return text.trim().split("\n").slice(-n).join(" | ");
}

/** Checks the CLI's outcome against the row; returns the archive path when one is due. */
async function checkPull(
  row: Row,
  expectedTag: string | undefined,
  cwd: string,
  result: { code: number; stdout: string; stderr: string },
): Promise<{ check: Check; archive?: string }> {
  const e = row.expect;
  const problems: string[] = [];
  if (result.code !== e.exit) problems.push(`exit ${result.code}, expected ${e.exit}`);
  for (const re of e.stderr ?? []) {
    if (!re.test(result.stderr)) problems.push(`stderr does not match ${re}`);
  }
  if (/\n\s+at /.test(result.stderr)) problems.push("stack trace without --verbose");
  if (e.exit !== 0) {
    if (result.stdout !== "") problems.push(`stdout not empty: ${result.stdout.trim()}`);
    const left = await listDir(cwd);
    if (left.length > 0) problems.push(`left behind: ${left.join(", ")}`);
    return problems.length === 0 ? { check: { ok: true } } : {
      check: {
        ok: false,
        error: `${problems.join("; ")} — stderr: ${firstLines(result.stderr)}`,
      },
    };
  }
  if (problems.length > 0) {
    return {
      check: { ok: false, error: `${problems.join("; ")} — stderr: ${firstLines(result.stderr)}` },
    };
  }
  const printed = result.stdout.trim().split("\n").pop() ?? "";
  const archive = printed.startsWith("/") ? printed : join(cwd, printed);
  try {
    const info = await readArchive(archive);
    if (info.repoTags.length === 0) problems.push("archive has no RepoTags");
    if (expectedTag && info.repoTags[0] !== expectedTag) {
      problems.push(`RepoTags ${JSON.stringify(info.repoTags)}, expected ${expectedTag}`);
    }
    if (e.platform && info.platform !== e.platform) {
      problems.push(`archive config is ${info.platform}, expected ${e.platform}`);
    }
  } catch (err) {
    problems.push(`archive ${printed} unreadable: ${message(err)}`);
  }
  return problems.length === 0
    ? { check: { ok: true }, archive }
    : { check: { ok: false, error: problems.join("; ") }, archive };
}

async function runPhase(
  services: CorpusServices,
  row: Row,
  prepared: Prepared,
  phase: "cold" | "warm",
  rowDir: string,
  reference: FsListing | undefined,
  marker: string,
): Promise<PhaseResult> {
  const started = performance.now();
  const cwd = join(rowDir, phase);
  await Deno.mkdir(cwd);
  const probed = prepared.probe?.(phase);
  const result = await pullCli([
    prepared.ref,
    "--cache-dir",
    join(rowDir, "cache"),
    ...(row.args ?? []),
    ...(prepared.args ?? []),
  ], {
    cwd,
    env: { HOME: services.home, ...row.env, ...prepared.env },
  });
  const probeProblems = await probed?.(result).catch((e) => [`probe: ${message(e)}`]) ?? [];
  const { check, archive } = await checkPull(row, prepared.repoTag, cwd, result);
  const loaders: Partial<Record<LoaderName, Check>> = {};
  const due = row.expect.exit === 0 ? row.expect.loaders ?? [...LOADERS] : [];
  if (!check.ok || !archive || !reference) {
    const why = !check.ok ? "pull failed" : "no reference";
    for (const l of due) loaders[l] = { ok: false, error: `not run: ${why}` };
  } else {
    const info = await readArchive(archive);
    const expectation = {
      tag: info.repoTags[0],
      platform: row.expect.platform ?? info.platform,
      runnable: row.expect.runnable ?? false,
      marker,
      diffIds: info.diffIds,
      reference,
    };
    const guard = (p: Promise<Check>) => p.catch((e): Check => ({ ok: false, error: message(e) }));
    const ns = `corpus-${row.id}-${phase}`;
    const jobs: Record<LoaderName, () => Promise<Check>> = {
      docker: () => proveDocker(services.dockerd, archive, expectation, cwd),
      podman: () => provePodman(archive, expectation),
      ctr: () => proveCtr(services.containerd, ns, archive, expectation, cwd),
    };
    const checks = await Promise.all(due.map((l) => guard(jobs[l]())));
    due.forEach((l, i) => (loaders[l] = checks[i]));
  }
  const repoTags = archive
    ? await readArchive(archive).then((i) => i.repoTags, () => undefined)
    : undefined;
  // The loaders judge the archive either way; what the probe saw fails the pull.
  const problems = [...(check.ok ? [] : [check.error]), ...probeProblems];
  return {
    pull: problems.length === 0 ? check : { ok: false, error: problems.join("; ") },
    loaders,
    seconds: (performance.now() - started) / 1000,
    stderr: result.stderr,
    repoTags,
  };
}

/**
 * Builds, pushes, takes the reference, then pulls cold and warm. Never throws. `proxies` must be
 * given for rows that need them (their group starts them); when it rejects, those rows fail at
 * setup with its error.
 */
export async function runRow(
  services: CorpusServices,
  row: Row,
  busybox: Uint8Array,
  proxies?: Promise<CorpusProxies>,
): Promise<RowResult> {
  const started = performance.now();
  const rowDir = join(services.root, "rows", row.id);
  const r = services.registry;
  const ctx: RowContext = {
    registryUrl: r.url,
    busybox,
    host: r.host,
    host6: services.registry6.host,
    localhost: `localhost:${r.port}`,
    repo: `corpus/${row.id}`,
    marker: `imgpull-corpus ${row.id}`,
  };
  let prepared;
  let reference: FsListing | undefined;
  try {
    if (row.needs === "proxies") {
      if (!proxies) throw new Error("the row needs the proxies, and its group did not start them");
      ctx.proxies = await proxies;
    }
    await Deno.mkdir(rowDir, { recursive: true });
    prepared = await row.build(ctx);
    if (row.expect.exit === 0) {
      reference = await skopeoReference(prepared.skopeo ?? prepared.ref, rowDir);
    }
  } catch (e) {
    return {
      row,
      setup: { ok: false, error: `setup: ${message(e)}` },
      seconds: (performance.now() - started) / 1000,
    };
  }
  const cold = await runPhase(services, row, prepared, "cold", rowDir, reference, ctx.marker);
  const warm = await runPhase(services, row, prepared, "warm", rowDir, reference, ctx.marker);
  return { row, setup: { ok: true }, cold, warm, seconds: (performance.now() - started) / 1000 };
}

/** Runs `tasks` with at most `limit` at once; the promises resolve in task order. */
export function pool<T>(limit: number, tasks: (() => Promise<T>)[]): Promise<T>[] {
  let next = 0;
  const results: Promise<T>[] = [];
  const resolvers: ((v: Promise<T>) => void)[] = [];
  for (let i = 0; i < tasks.length; i++) {
    results.push(new Promise<T>((resolve) => resolvers.push(resolve)));
  }
  const worker = async () => {
    while (next < tasks.length) {
      const i = next++;
      const p = tasks[i]();
      resolvers[i](p);
      await p.catch(() => {});
    }
  };
  for (let i = 0; i < Math.min(limit, tasks.length); i++) worker();
  return results;
}

/** Why a phase failed, or undefined when it passed. */
export function phaseFailure(phase: PhaseResult | undefined, setup: Check): string | undefined {
  if (!setup.ok) return setup.error;
  if (!phase) return "did not run";
  const problems: string[] = [];
  if (!phase.pull.ok) problems.push(`pull: ${phase.pull.error}`);
  for (const [name, c] of Object.entries(phase.loaders)) {
    if (!c.ok && !(phase.pull.ok === false && c.error.startsWith("not run"))) {
      problems.push(`${name}: ${c.error}`);
    }
  }
  return problems.length > 0 ? problems.join("\n") : undefined;
}

function cell(c: Check | undefined): string {
  if (!c) return "–";
  return c.ok ? "pass" : c.error.startsWith("not run") ? "n/r" : "FAIL";
}

/** A Markdown table of results: pull and each loader, cold and warm. */
export function summaryTable(results: RowResult[]): string {
  const head = [
    "row",
    "group",
    ...["cold", "warm"].flatMap((p) => [`${p} pull`, ...LOADERS.map((l) => `${p} ${l}`)]),
    "s",
  ];
  const lines = [`| ${head.join(" | ")} |`, `|${head.map(() => "---").join("|")}|`];
  for (const r of results) {
    const cells = [r.row.id, r.row.group];
    for (const phase of [r.cold, r.warm]) {
      cells.push(r.setup.ok ? cell(phase?.pull) : "SETUP");
      for (const l of LOADERS) cells.push(cell(phase?.loaders[l]));
    }
    cells.push(r.seconds.toFixed(1));
    lines.push(`| ${cells.join(" | ")} |`);
  }
  return lines.join("\n");
}

/** Per row and phase: imgpull's stderr and the archive's RepoTags. */
export function details(results: RowResult[]): string {
  const out: string[] = [];
  for (const r of results) {
    for (const [name, phase] of [["cold", r.cold], ["warm", r.warm]] as const) {
      if (!phase) continue;
      out.push(`--- ${r.row.id} (${name}) RepoTags ${JSON.stringify(phase.repoTags ?? null)}`);
      out.push(phase.stderr.trim().split("\n").map((l) => `    ${l}`).join("\n"));
    }
  }
  return out.join("\n");
}
