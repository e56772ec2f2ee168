/**
 * The blob cache on the emulated WAN: a cold pull into an empty `--cache-dir`, then warm re-pulls
 * of the same image into the same cache, each to a new output file. Reports wall times, the warm
 * ÷ cold ratio (goal: ≤ 15 %) and the bytes that crossed the link per pull (goal: manifests only).
 *
 * ```sh
 * deno run -A bench/warm.ts [IMAGE] [--runs 3]
 * ```
 * @module
 */
import { join } from "node:path";
import { parseArgs } from "node:util";
import { median, probeImgpull, runImgpull, snapshotImgpull } from "./common.ts";
import { DEFAULT_WAN, startBenchEnv } from "./env.ts";
import type { ImageName } from "./images.ts";

const { values, positionals } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: { runs: { type: "string", default: "3" }, "cache-dir": { type: "string" } },
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
const snapshot = await snapshotImgpull(new URL("../main.ts", import.meta.url).pathname);
const work = await Deno.makeTempDir({ prefix: "imgpull-bench-warm-" });
try {
  const denoDir = join(benchDir, "deno-dir");
  await probeImgpull(snapshot.main, denoDir);
  const image = env.images[0];
  const cold: number[] = [], warm: number[] = [];
  const coldBytes: number[] = [], warmBytes: number[] = [];
  for (let run = 0; run < runs; run++) {
    const cache = join(work, `cache-${run}`);
    for (let pass = 0; pass < 2; pass++) {
      const home = join(work, `home-${run}-${pass}`);
      await Deno.mkdir(home);
      env.registryProxy?.resetStats();
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
      (pass === 0 ? cold : warm).push(result.seconds);
      (pass === 0 ? coldBytes : warmBytes).push(bytes);
      log(
        `${name} run ${run + 1} ${pass === 0 ? "cold" : "warm"}: ${result.seconds.toFixed(2)} s, ` +
          `${(bytes / 1e6).toFixed(3)} MB from the registry`,
      );
      await Deno.remove(join(work, `out-${run}-${pass}.tar`));
    }
  }
  const ratio = median(warm) / median(cold);
  console.log(
    `### Warm re-pull: \`${image.reference}\` on the emulated WAN — ${new Date().toISOString()}

imgpull at ${snapshot.version}; ${runs} runs; each: a cold pull into an empty \`--cache-dir\`, then a warm one.

| pull | median s | bytes from the registry (median) |
| --- | ---: | ---: |
| cold | ${median(cold).toFixed(2)} | ${(median(coldBytes) / 1e6).toFixed(3)} MB |
| warm | ${median(warm).toFixed(2)} | ${(median(warmBytes) / 1e6).toFixed(3)} MB |

- warm ÷ cold: ${(ratio * 100).toFixed(0)} % (goal ≤ 15 %): ${ratio <= 0.15 ? "met" : "**not met**"}
`,
  );
} finally {
  await Deno.remove(work, { recursive: true });
  await snapshot.close();
  await env.close();
}
