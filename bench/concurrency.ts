/**
 * The old script's `performance_test.py` table for imgpull: pull one image at several
 * `--max-concurrent-downloads` settings and show the time and the improvement over sequential.
 *
 *     deno run -A bench/concurrency.ts IMAGE [--settings 1,3,5,8] [--runs 3]
 *       [--platform OS/ARCH] [--username U --password-stdin] [--ca-cert FILE] [--plain-http]
 *       [--out FILE] [--main PATH] [-- EXTRA IMGPULL ARGS]
 *     deno run -A bench/concurrency.ts --local [nginx-like|big|many] [--settings …] [--runs …]
 *
 * IMAGE is any reference imgpull accepts (it just runs the CLI, so any registry works);
 * credentials come from the flags or from your Docker config (`$DOCKER_CONFIG` or
 * `~/.docker`). `--local` starts the benchmark's own TLS + token registry behind the emulated
 * WAN link (bench/env.ts, defaults of bench/run.ts) with a generated image. Every run is cold:
 * fresh HOME, `--no-cache` when imgpull has it, output deleted.
 * @module
 */
import { join } from "node:path";
import { parseArgs } from "node:util";
import {
  cleanDir,
  DEFAULT_MAIN,
  fmtS,
  fmtX,
  median,
  parseList,
  probeImgpull,
  runImgpull,
  snapshotImgpull,
} from "./common.ts";
import { DEFAULT_WAN, startBenchEnv } from "./env.ts";
import { IMAGE_NAMES, type ImageName, pullBytes } from "./images.ts";

const USAGE = `usage: deno run -A bench/concurrency.ts IMAGE [options] [-- imgpull args]
       deno run -A bench/concurrency.ts --local [${IMAGE_NAMES.join("|")}] [options]

  --settings LIST      --max-concurrent-downloads values (default 1,3,5,8)
  --runs N             runs per setting (default 3)
  --platform P         passed to imgpull
  --username U         passed to imgpull
  --password-stdin     read the password once, give it to every run
  --ca-cert FILE       passed to imgpull (repeatable)
  --plain-http         passed to imgpull
  --local              pull from a local registry behind the emulated WAN link
  --delay-ms, --conn-mbit, --total-mbit   the link of --local (defaults ${DEFAULT_WAN.delayMs}, ${DEFAULT_WAN.connMbit}, ${DEFAULT_WAN.totalMbit})
  --timeout-s S        kill a run after S seconds (default 900)
  --out FILE           also append the table to FILE
  --main PATH          imgpull main.ts (default: this checkout's)
  --no-snapshot        run main.ts in place instead of a copy of main.ts + lib/ taken at start
  --cache-dir DIR      generated images, registry storage, Deno cache (default $TMPDIR/imgpull-bench)`;

const log = (line: string) => console.error(line);

async function main(): Promise<void> {
  let parsed;
  try {
    parsed = parseArgs({
      args: Deno.args,
      allowPositionals: true,
      options: {
        settings: { type: "string", default: "1,3,5,8" },
        runs: { type: "string", default: "3" },
        platform: { type: "string" },
        username: { type: "string" },
        "password-stdin": { type: "boolean" },
        "ca-cert": { type: "string", multiple: true },
        "plain-http": { type: "boolean" },
        local: { type: "boolean" },
        "delay-ms": { type: "string", default: String(DEFAULT_WAN.delayMs) },
        "conn-mbit": { type: "string", default: String(DEFAULT_WAN.connMbit) },
        "total-mbit": { type: "string", default: String(DEFAULT_WAN.totalMbit) },
        "timeout-s": { type: "string", default: "900" },
        out: { type: "string" },
        main: { type: "string", default: DEFAULT_MAIN },
        "no-snapshot": { type: "boolean" },
        "cache-dir": { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (e) {
    console.error(`${(e as Error).message}\n\n${USAGE}`);
    Deno.exit(2);
  }
  const { values } = parsed;
  // Everything after "--" goes to imgpull untouched.
  const dashdash = Deno.args.indexOf("--");
  const extraArgs = dashdash >= 0 ? Deno.args.slice(dashdash + 1) : [];
  const positionals = dashdash >= 0
    ? parsed.positionals.slice(0, parsed.positionals.length - extraArgs.length)
    : parsed.positionals;
  if (values.help) {
    console.log(USAGE);
    return;
  }
  let settings: number[];
  let runs: number;
  try {
    settings = parseList(values.settings, "--settings");
    runs = parseList(values.runs, "--runs")[0];
  } catch (e) {
    console.error((e as Error).message);
    Deno.exit(2);
  }
  if (positionals.length > 1 || (!values.local && positionals.length !== 1)) {
    console.error(USAGE);
    Deno.exit(2);
  }
  const cacheDir = values["cache-dir"] ?? join(Deno.env.get("TMPDIR") ?? "/tmp", "imgpull-bench");
  await Deno.mkdir(cacheDir, { recursive: true });
  const denoDir = join(cacheDir, "deno-dir");

  let password: string | undefined;
  if (values["password-stdin"]) {
    password = (await new Response(Deno.stdin.readable).text()).replace(/\r?\n$/, "");
  }

  const closers: (() => Promise<void>)[] = [];
  try {
    let reference: string;
    let platform = values.platform;
    let caCerts = values["ca-cert"] ?? [];
    let username = values.username;
    let where: string;
    // Remote registries: the user's Docker config provides credentials, as for a real pull.
    let dockerConfig = Deno.env.get("DOCKER_CONFIG") ??
      join(Deno.env.get("HOME") ?? "/root", ".docker");
    if (values.local) {
      const name = (positionals[0] ?? "nginx-like") as ImageName;
      if (!IMAGE_NAMES.includes(name)) {
        console.error(`--local takes one of ${IMAGE_NAMES.join(", ")}, not ${name}`);
        Deno.exit(2);
      }
      const wan = {
        delayMs: Number(values["delay-ms"]),
        connMbit: Number(values["conn-mbit"]),
        totalMbit: Number(values["total-mbit"]),
      };
      const env = await startBenchEnv({
        link: "wan",
        wan,
        images: [name],
        cacheDir,
        log: (l) => log(`[bench] ${l}`),
      });
      closers.push(() => env.close());
      const image = env.images[0];
      reference = `${env.host}/${image.reference}`;
      platform ??= image.platform;
      caCerts = [env.caCertPath, ...caCerts];
      username = env.user;
      password = env.password;
      dockerConfig = "";
      where =
        `local registry behind the emulated WAN (${wan.delayMs} ms one-way, ${wan.connMbit} ` +
        `Mbit/s per connection, ${wan.totalMbit} Mbit/s total); ${image.pull.layers.length} ` +
        `layers, ${(pullBytes(image) / 1e6).toFixed(1)} MB`;
    } else {
      reference = positionals[0];
      where = "as named";
    }

    const snapshot = await snapshotImgpull(values.main, !values["no-snapshot"]);
    closers.push(() => snapshot.close());
    const { noCache } = await probeImgpull(snapshot.main, denoDir);
    const times = new Map<number, number[]>(settings.map((c) => [c, []]));
    const failures = new Map<number, string>();
    for (let run = 0; run < runs; run++) {
      for (const c of settings) {
        const dir = await Deno.makeTempDir({ prefix: "imgpull-bench-conc-" });
        try {
          const home = join(dir, "home");
          await Deno.mkdir(home);
          const r = await runImgpull({
            reference,
            platform,
            // imgpull takes one --ca-cert per file.
            caCert: undefined,
            username,
            password,
            plainHttp: values["plain-http"],
            extraArgs: [...caCerts.flatMap((f) => ["--ca-cert", f]), ...extraArgs],
          }, {
            main: snapshot.main,
            concurrency: c,
            output: join(dir, "out.tar"),
            home,
            denoDir,
            noCache,
            timeoutMs: Number(values["timeout-s"]) * 1000,
            dockerConfig: dockerConfig || undefined,
          });
          if (r.code !== 0 || r.timedOut) {
            const why = r.timedOut
              ? "timed out"
              : `exit ${r.code}: ${r.stderr.trim().split("\n").pop()}`;
            failures.set(c, why);
            log(`[bench] run ${run + 1}/${runs} c=${c}: FAILED ${why}`);
          } else {
            times.get(c)!.push(r.seconds);
            log(`[bench] run ${run + 1}/${runs} c=${c}: ${r.seconds.toFixed(2)} s`);
          }
        } finally {
          await cleanDir(dir);
        }
      }
    }

    const sequential = times.get(1)?.length ? median(times.get(1)!) : undefined;
    const first = settings.find((c) => times.get(c)!.length);
    const baseline = sequential ?? (first ? median(times.get(first)!) : undefined);
    const baseLabel = sequential !== undefined ? "1 (sequential)" : `${first}`;
    const lines = [
      `### Concurrency: \`${reference}\` — ${new Date().toISOString().replace(/\.\d+Z$/, "Z")}`,
      "",
      `imgpull at ${snapshot.version}. Registry: ${where}. ${runs} run${
        runs === 1 ? "" : "s"
      } per setting, cold ` +
      `(${noCache ? "`--no-cache`, " : ""}fresh HOME); median, min and max wall time.`,
      "",
      `| --max-concurrent-downloads | median s | min s | max s | improvement vs ${baseLabel} |`,
      "| ---: | ---: | ---: | ---: | ---: |",
    ];
    for (const c of settings) {
      const t = times.get(c)!;
      if (!t.length) {
        lines.push(`| ${c} | failed: ${failures.get(c) ?? "?"} | | | |`);
        continue;
      }
      const m = median(t);
      lines.push(
        `| ${c} | ${fmtS(m)} | ${fmtS(Math.min(...t))} | ${fmtS(Math.max(...t))} | ${
          baseline ? fmtX(baseline / m) : "—"
        } |`,
      );
    }
    const text = lines.join("\n");
    console.log(text);
    if (values.out) await Deno.writeTextFile(values.out, `${text}\n\n`, { append: true });
  } finally {
    for (const c of closers.reverse()) await c().catch((e) => log(`cleanup: ${e}`));
  }
}

if (import.meta.main) await main();
