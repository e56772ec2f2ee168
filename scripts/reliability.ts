/**
 * The reliability report: runs every fault class of the hostile suite N times, classifies each
 * pull as "completed and verified", "clean error (exit N)" or "BAD", and writes
 * docs/reliability.md.
 *
 *   deno run -A scripts/reliability.ts [--pulls N] [--load-runs N] [--class ID]... [--no-write]
 *
 * `--pulls` (default 5) is the number of runs of every scenario; the under-load case (8
 * concurrent processes) runs `--load-runs` times (default 2). Even runs pull with no file at the
 * destination, odd runs with an existing one (it must survive a failure). `--class` limits the
 * run to some classes (and then nothing is written unless `--write` is given). Scenarios that
 * need root (tmpfs mounts) are skipped, and reported as skipped, when not run as root.
 */
import { parseArgs } from "node:util";
import { type RunResult, runScenario, Services } from "../tests/helpers/hostile_runner.ts";
import {
  CLASSES,
  concurrencyOf,
  runLoad,
  scenariosOf,
} from "../tests/helpers/hostile_scenarios.ts";
import { pool } from "../tests/helpers/hostile_runner.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    pulls: { type: "string", default: "5" },
    "load-runs": { type: "string", default: "2" },
    class: { type: "string", multiple: true },
    write: { type: "boolean" },
    "no-write": { type: "boolean" },
    quiet: { type: "boolean", short: "q" },
  },
  strict: true,
});
const pulls = Number(values.pulls);
const loadRuns = Number(values["load-runs"]);
if (!Number.isInteger(pulls) || pulls < 1 || !Number.isInteger(loadRuns) || loadRuns < 0) {
  console.error("--pulls must be >= 1 and --load-runs >= 0");
  Deno.exit(2);
}
const only = values.class;
const write = values["no-write"] ? false : only ? values.write ?? false : true;
const isRoot = Deno.uid() === 0;

interface Row {
  cls: string;
  title: string;
  runs: number;
  verified: number;
  clean: Map<number, number>;
  bad: RunResult[];
  skipped: number;
  seconds: number;
}

const started = new Date();
const t0 = performance.now();
const rows: Row[] = [];
const services = new Services();
try {
  for (const { id, title } of CLASSES) {
    if (only && !only.includes(id)) continue;
    const row: Row = {
      cls: id,
      title,
      runs: 0,
      verified: 0,
      clean: new Map(),
      bad: [],
      skipped: 0,
      seconds: 0,
    };
    const c0 = performance.now();
    let results: RunResult[] = [];
    if (id === "load") {
      for (let i = 0; i < loadRuns; i++) results.push(...await runLoad(8));
    } else {
      const scenarios = scenariosOf(id).filter((s) => isRoot || !s.root);
      row.skipped = (scenariosOf(id).length - scenarios.length) * pulls;
      const jobs = scenarios.flatMap((s) =>
        Array.from(
          { length: pulls },
          (_, i) => () => runScenario(s, services, { preexisting: i % 2 === 1 }),
        )
      );
      results = await pool(jobs, concurrencyOf(id));
    }
    row.seconds = (performance.now() - c0) / 1000;
    for (const r of results) {
      row.runs++;
      if (r.verdict === "verified") row.verified++;
      else if (r.verdict === "clean error") row.clean.set(r.code, (row.clean.get(r.code) ?? 0) + 1);
      else row.bad.push(r);
    }
    rows.push(row);
    if (!values.quiet) {
      console.error(
        `[${row.bad.length ? "BAD" : " ok"}] ${id}: ${row.runs} pulls, ${row.verified} verified, ` +
          `${[...row.clean].map(([c, n]) => `${n}× exit ${c}`).join(", ") || "no errors"}` +
          `${row.bad.length ? `, ${row.bad.length} BAD` : ""} (${row.seconds.toFixed(1)} s)`,
      );
      for (const bad of dedupe(row.bad)) console.error(`      ✗ ${bad}`);
    }
  }
} finally {
  await services.close();
}
const totalSeconds = (performance.now() - t0) / 1000;

/** One line per distinct (scenario, problem) among bad runs, with a count. */
function dedupe(bad: RunResult[]): string[] {
  const counts = new Map<string, number>();
  for (const r of bad) {
    const key = `${r.scenario.id}: ${normalize(r.problems.join(" | ")).slice(0, 400)}`;
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  return [...counts].map(([k, n]) => (n > 1 ? `${k} (${n}×)` : k));
}

const all = rows.flatMap((r) => r.bad);
const totalRuns = rows.reduce((n, r) => n + r.runs, 0);
const totalVerified = rows.reduce((n, r) => n + r.verified, 0);
const totalClean = rows.reduce((n, r) => n + [...r.clean.values()].reduce((a, b) => a + b, 0), 0);
const corrupt = all.filter((r) => r.corruptArchive).length;
const leaked = all.filter((r) => r.leakedSecret).length;
const skipped = rows.reduce((n, r) => n + r.skipped, 0);

const command = ["deno run -A scripts/reliability.ts", ...Deno.args].join(" ");

function outcomeCell(row: Row): string {
  const parts: string[] = [];
  if (row.verified) parts.push(`${row.verified} completed and verified`);
  for (const [code, n] of [...row.clean].sort((a, b) => a[0] - b[0])) {
    parts.push(`${n} clean error (exit ${code})`);
  }
  if (row.bad.length) parts.push(`**${row.bad.length} BAD**`);
  if (row.skipped) parts.push(`${row.skipped} skipped (needs root)`);
  return parts.join(", ");
}

const lines: string[] = [];
lines.push("# Reliability report");
lines.push("");
lines.push(
  "Generated by `scripts/reliability.ts`, which runs every fault class of the hostile suite " +
    "(`tests/helpers/scenarios/*.ts`, indexed by `tests/helpers/hostile_scenarios.ts`: the same " +
    "scenarios as `tests/integration/hostile_test.ts`, `stop_test.ts`, `secrets_test.ts`, " +
    "`security_test.ts` and `load_test.ts`) against the CLI as users run it, with the " +
    "documented permissions. The security classes are the attacks of the security review " +
    "(docs/security.md maps each to its scenario).",
);
lines.push("");
lines.push(`- Date: ${started.toISOString()}`);
lines.push(
  `- Command: \`${command}\` (${pulls} pulls per scenario, ${loadRuns} runs of the load case)`,
);
lines.push(
  `- Deno ${Deno.version.deno} on ${Deno.build.os}/${Deno.build.arch}, ` +
    `${navigator.hardwareConcurrency} CPUs; ${totalSeconds.toFixed(0)} s`,
);
lines.push(
  `- imgpull commit: \`${await gitHead()}\`` +
    ((await gitDirty()) ? " (with uncommitted changes in lib/)" : ""),
);
lines.push("");
lines.push("## Totals");
lines.push("");
lines.push(
  `- ${totalRuns} pulls: ${totalVerified} completed and verified, ${totalClean} clean errors, ` +
    `**${all.length} BAD**${skipped ? `, ${skipped} skipped (not root)` : ""}`,
);
lines.push(`- **${corrupt} corrupt archives or cache entries, ${leaked} leaked secrets**`);
const ids = (rs: RunResult[]) => [...new Set(rs.map((r) => `\`${r.scenario.id}\``))].join(", ");
if (corrupt) lines.push(`  - corrupt: ${ids(all.filter((r) => r.corruptArchive))}`);
if (leaked) {
  lines.push(
    `  - secrets printed in: ${ids(all.filter((r) => r.leakedSecret))} ` +
      "(see _BAD outcomes_)",
  );
}
lines.push("");
lines.push(
  "A pull is _completed and verified_ when it exits 0 and its archive parses, names its config " +
    "and layers, every blob in it hashes to its name and they are the image's; under load, " +
    "each archive is also byte-identical to a sequential pull's. A _clean error_ is the exit " +
    "code the scenario expects, with exactly one `[-]` line (plus an optional `[-] Hint:`) " +
    "that says what the scenario expects, no stack trace, and the output directory exactly as " +
    "before (an existing archive unchanged). Anything else is _BAD_: wrong exit code, stack " +
    "trace, a file left behind or changed, a corrupt archive or cache entry (every file under " +
    "the cache's `blobs/` is hashed), a secret in stdout/stderr, a hang, or a failed " +
    "scenario-specific check (request counts, `Range` headers, bytes read from an endless " +
    "body, files created outside the output and cache directories).",
);
lines.push("");
lines.push("## Fault classes");
lines.push("");
lines.push("| fault class | pulls | outcomes |");
lines.push("| --- | ---: | --- |");
for (const row of rows) {
  lines.push(`| ${escapeMd(row.title)} (\`${row.cls}\`) | ${row.runs} | ${outcomeCell(row)} |`);
}
lines.push("");
if (all.length > 0) {
  lines.push("## BAD outcomes");
  lines.push("");
  lines.push("Observed behaviour that differs from the expected one (scenario: problems).");
  lines.push("");
  for (const row of rows) {
    for (const line of dedupe(row.bad)) {
      lines.push(`- \`${row.cls}\` ${line.replaceAll("\n", " ")}`);
    }
  }
  lines.push("");
}
lines.push("## Scenarios");
lines.push("");
for (const { id, title } of CLASSES) {
  if (only && !only.includes(id)) continue;
  lines.push(`- **${title}** (\`${id}\`)`);
  if (id === "load") {
    lines.push(
      "  - 8 processes, 3 images sharing a 2.5 MiB multi-segment layer and a 600 KiB layer, " +
        "one `--cache-dir`, `--segment-size 1`; compared with sequential `--no-cache` pulls",
    );
    continue;
  }
  for (const s of scenariosOf(id)) {
    lines.push(`  - \`${s.id}\` (exit ${s.code}): ${s.title}`);
  }
}
lines.push("");

const report = lines.join("\n");
if (write) {
  const path = new URL("../docs/reliability.md", import.meta.url);
  await Deno.mkdir(new URL("../docs/", import.meta.url), { recursive: true });
  await Deno.writeTextFile(path, report);
  // The repository's `deno fmt --check` covers Markdown too.
  await new Deno.Command(Deno.execPath(), {
    args: ["fmt", "--quiet", path.pathname],
    cwd: new URL("..", import.meta.url).pathname,
  }).output();
  console.error(`wrote ${path.pathname}`);
} else if (!values.quiet) {
  console.log(report);
}
console.error(
  `${totalRuns} pulls: ${totalVerified} verified, ${totalClean} clean errors, ${all.length} BAD; ` +
    `${corrupt} corrupt, ${leaked} leaked secrets (${totalSeconds.toFixed(0)} s)`,
);
Deno.exit(all.length > 0 ? 1 : 0);

/** Ports, temporary paths and random names differ between runs of the same problem. */
function normalize(text: string): string {
  return text
    .replace(/127\.0\.0\.1:\d+/g, "127.0.0.1:PORT")
    .replace(/\/tmp\/imgpull-[\w.-]+/g, "/tmp/…")
    .replace(/Wr0ng-[0-9a-f-]+|Sekr1t-[0-9a-f-]+/g, "<password>")
    .replace(/\bBasic [A-Za-z0-9+/=]{12,}/g, "Basic <credentials>")
    .replace(/\d+(\.\d+)? MiB/g, "N MiB")
    .replace(/\d+ ms\b/g, "N ms");
}

function escapeMd(text: string): string {
  return text.replaceAll("|", "\\|").replaceAll("\n", " ");
}

async function git(args: string[]): Promise<string> {
  try {
    const out = await new Deno.Command("git", {
      args,
      cwd: new URL("..", import.meta.url).pathname,
      stdout: "piped",
      stderr: "null",
    }).output();
    return new TextDecoder().decode(out.stdout).trim();
  } catch {
    return "";
  }
}

async function gitHead(): Promise<string> {
  return (await git(["rev-parse", "--short", "HEAD"])) || "unknown";
}

async function gitDirty(): Promise<boolean> {
  return (await git(["status", "--porcelain", "--", "lib", "main.ts"])) !== "";
}
