/**
 * The blob cache on the emulated WAN: a cold pull into an empty `--cache-dir`, then warm re-pulls
 * of the same image into the same cache, each to a new output file. Reports wall times, the warm
 * ÷ cold ratio (issue 12's goal: ≤ 10 %), the bytes that crossed the link per pull (goal:
 * manifests only) and the requests the registry and the token server answered (goal: at most 2
 * round trips after the process starts: the token and the tag).
 *
 * ```sh
 * deno run -A bench/warm.ts [IMAGE] [--runs 3] [--main PATH/TO/main.ts] [--timeline]
 * ```
 *
 * `--timeline` adds one more cold and warm pull with `--verbose` and prints their debug lines
 * with the milliseconds since the process was spawned: where a pull's time goes.
 * @module
 */
import { join } from "node:path";
import { parseArgs } from "node:util";
import {
  DEFAULT_MAIN,
  imgpullCommand,
  imgpullEnv,
  median,
  probeImgpull,
  runImgpull,
  snapshotImgpull,
} from "./common.ts";
import { DEFAULT_WAN, startBenchEnv } from "./env.ts";
import type { ImageName } from "./images.ts";

const { values, positionals } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: {
    runs: { type: "string", default: "3" },
    "cache-dir": { type: "string" },
    main: { type: "string", default: DEFAULT_MAIN },
    timeline: { type: "boolean" },
  },
});
const name = (positionals[0] ?? "nginx-like") as ImageName;
const runs = Number(values.runs);
const benchDir = values["cache-dir"] ?? join(Deno.env.get("TMPDIR") ?? "/tmp", "imgpull-bench");
const log = (line: string) => console.error(`[bench] ${line}`);

const env = await startBenchEnv({
  link: "wan",
  wan: DEFAULT_WAN,
  images: [name],
  cacheDir: benchDir,
  log,
});
const snapshot = await snapshotImgpull(values.main);
const work = await Deno.makeTempDir({ prefix: "imgpull-bench-warm-" });
try {
  const denoDir = join(benchDir, "deno-dir");
  await probeImgpull(snapshot.main, denoDir);
  const image = env.images[0];
  const cold: number[] = [], warm: number[] = [];
  const coldBytes: number[] = [], warmBytes: number[] = [];
  const coldRequests: number[] = [], warmRequests: number[] = [];
  const coldTokens: number[] = [], warmTokens: number[] = [];
  // The registry's log is a bounded tail: a marker request before each pull shows where its
  // requests start.
  const http = Deno.createHttpClient({ caCerts: [env.caCertPem] });
  const mark = async () => {
    const id = crypto.randomUUID();
    const response = await fetch(`https://${env.host}/v2/bench-marker-${id}/tags/list`, {
      client: http,
    });
    await response.body?.cancel();
    return id;
  };
  const requestsSince = (id: string) => {
    const log = env.registryLog();
    const lines = log.slice(log.lastIndexOf(`bench-marker-${id}`)).split("\n");
    return lines.filter((l) =>
      /"(GET|HEAD) \/v2\/[^"]* HTTP/.test(l) && !l.includes("bench-marker-")
    ).length;
  };
  for (let run = 0; run < runs; run++) {
    const cache = join(work, `cache-${run}`);
    for (let pass = 0; pass < 2; pass++) {
      const home = join(work, `home-${run}-${pass}`);
      await Deno.mkdir(home);
      const marker = await mark();
      await new Promise((r) => setTimeout(r, 300));
      env.registryProxy?.resetStats();
      env.tokenProxy?.resetStats();
      const result = await runImgpull({
        reference: `${env.host}/${image.reference}`,
        platform: image.platform,
        caCert: env.caCertPath,
        username: env.user,
        password: env.password,
        extraArgs: ["--cache-dir", cache],
      }, {
        main: snapshot.main,
        concurrency: 3,
        output: join(work, `out-${run}-${pass}.tar`),
        home,
        denoDir,
        noCache: false,
      });
      if (result.code !== 0) throw new Error(`imgpull failed: ${result.stderr}`);
      const bytes = env.registryProxy?.stats.bytesDown ?? 0;
      // The access log line follows the response: let it land.
      await new Promise((r) => setTimeout(r, 300));
      const made = requestsSince(marker);
      const tokenConnections = env.tokenProxy?.stats.connections ?? 0;
      (pass === 0 ? cold : warm).push(result.seconds);
      (pass === 0 ? coldBytes : warmBytes).push(bytes);
      (pass === 0 ? coldRequests : warmRequests).push(made);
      (pass === 0 ? coldTokens : warmTokens).push(tokenConnections);
      log(
        `${name} run ${run + 1} ${pass === 0 ? "cold" : "warm"}: ${result.seconds.toFixed(2)} s, ` +
          `${(bytes / 1e6).toFixed(3)} MB from the registry, ${made} registry requests, ` +
          `${tokenConnections} token connections`,
      );
      await Deno.remove(join(work, `out-${run}-${pass}.tar`));
    }
  }
  const ratio = median(warm) / median(cold);
  let timeline = "";
  if (values.timeline) {
    /** One pull with `--verbose`, its stderr lines stamped with ms since spawn. */
    const stamped = async (label: string, cache: string) => {
      const home = join(work, `home-timeline-${label}`);
      await Deno.mkdir(home);
      const [cmd, base] = imgpullCommand(snapshot.main);
      const child = new Deno.Command(cmd, {
        args: [
          ...base,
          `${env.host}/${image.reference}`,
          "-o",
          join(work, `out-timeline-${label}.tar`),
          "--verbose",
          "--platform",
          image.platform,
          "--ca-cert",
          env.caCertPath,
          "--username",
          env.user,
          "--password-stdin",
          "--cache-dir",
          cache,
        ],
        env: imgpullEnv(home, denoDir),
        stdin: "piped",
        stdout: "null",
        stderr: "piped",
      }).spawn();
      const started = performance.now();
      const writer = child.stdin.getWriter();
      await writer.write(new TextEncoder().encode(`${env.password}\n`));
      await writer.close();
      const lines: string[] = [];
      let rest = "";
      for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
        const at = performance.now() - started;
        const parts = (rest + chunk).split("\n");
        rest = parts.pop()!;
        for (const line of parts) {
          // Progress redraws and per-segment retries are noise here.
          if (line.trim() && !/\[debug\] retry /.test(line)) {
            lines.push(`${at.toFixed(0).padStart(5)} ms  ${line}`);
          }
        }
      }
      await child.status;
      lines.push(`${(performance.now() - started).toFixed(0).padStart(5)} ms  (exit)`);
      return `\nOne ${label} pull with \`--verbose\`, each line stamped when it reached the ` +
        `harness:\n\n\`\`\`\n${lines.join("\n")}\n\`\`\`\n`;
    };
    timeline = await stamped("cold", join(work, "cache-timeline")) +
      await stamped("warm", join(work, "cache-timeline"));
  }
  console.log(
    `### Warm re-pull: \`${image.reference}\` on the emulated WAN — ${new Date().toISOString()}

imgpull at ${snapshot.version}; ${runs} runs; each: a cold pull into an empty \`--cache-dir\`, then a warm one.

| pull | median s | bytes from the registry (median) | registry requests | token connections |
| --- | ---: | ---: | ---: | ---: |
| cold | ${median(cold).toFixed(2)} | ${(median(coldBytes) / 1e6).toFixed(3)} MB | ${
      median(coldRequests)
    } | ${median(coldTokens)} |
| warm | ${median(warm).toFixed(2)} | ${(median(warmBytes) / 1e6).toFixed(3)} MB | ${
      median(warmRequests)
    } | ${median(warmTokens)} |

- warm ÷ cold: ${(ratio * 100).toFixed(0)} % (goal ≤ 10 %): ${ratio <= 0.10 ? "met" : "**not met**"}
- warm requests after start: ${median(warmRequests)} to the registry, ${
      median(warmTokens)
    } token connection(s); imgpull sends the anonymous \`/v2/\` alongside the token request (it
  only opens the connection), so the round trips are the token and the tag (goal ≤ 2): ${
      median(warmRequests) <= 2 && median(warmTokens) <= 1 ? "met" : "**not met**"
    }
${timeline}`,
  );
  http.close();
} finally {
  await Deno.remove(work, { recursive: true });
  await snapshot.close();
  await env.close();
}
