/**
 * Side-by-side benchmark: imgpull against skopeo, docker pull + save and curl, pulling generated
 * images from a local TLS + token registry, over loopback or an emulated WAN link.
 *
 *     deno run -A bench/run.ts [--link wan|loopback] [--runs 5] [--images nginx-like,big,many]
 *       [--settings 1,3,5,8] [--tools imgpull,skopeo,docker,curl,curl-range] [--out FILE]
 *       [--tools imgpull-oci,imgpull-rootfs,skopeo-oci,podman]   (the output-format rows)
 *       [--tools imgpull-multi]   (every image of the run in one archive: peak RSS)
 *       [--delay-ms 25] [--conn-mbit 32] [--total-mbit 400] [--timeout-s 900]
 *       [--cache-dir DIR] [--main PATH/TO/main.ts] [--chart FILE.svg]
 *
 * Every run is cold: outputs are deleted (and `sync`ed) between runs, imgpull gets a fresh
 * empty HOME (plus `--no-cache` when its `--help` lists it), docker removes the image. Runs are
 * interleaved (run 1 of every tool, then run 2, …) so drift spreads evenly. The markdown report
 * goes to stdout (and is appended to `--out`); progress goes to stderr. `--chart` also draws each
 * image's side by side as an SVG bar chart (bench/chart.ts).
 * @module
 */
import { join } from "node:path";
import { parseArgs } from "node:util";
import {
  cleanDir,
  DEFAULT_MAIN,
  fmtS,
  fmtX,
  machineInfo,
  median,
  parseList,
  probeImgpull,
  runImgpull,
  snapshotImgpull,
  timed,
  type TimedResult,
} from "./common.ts";
import { type BenchDockerd, startBenchDockerd } from "./dockerd.ts";
import { type BenchEnv, DEFAULT_WAN, startBenchEnv, warmPageCache } from "./env.ts";
import { type BenchImage, IMAGE_NAMES, type ImageName, pullBytes } from "./images.ts";
import { type ChartRow, renderBarChart } from "./chart.ts";
import { podmanStore } from "../tests/helpers/podman.ts";

/** Every tool the harness knows; the default set is the docker-archive side by side. */
const ALL_TOOLS = [
  "imgpull",
  "skopeo",
  "docker",
  "curl",
  "curl-range",
  "imgpull-oci",
  "imgpull-rootfs",
  "imgpull-multi",
  "skopeo-oci",
  "podman",
];

const USAGE = `usage: deno run -A bench/run.ts [options]

  --link wan|loopback     emulated WAN (default) or plain loopback
  --runs N                runs per tool and image (default 5)
  --images LIST           of ${IMAGE_NAMES.join(",")} (default: all)
  --settings LIST         imgpull --max-concurrent-downloads values (default 1,3,5,8)
  --tools LIST            of ${ALL_TOOLS.join(",")}
                          (default: imgpull,skopeo,docker,curl,curl-range; the others are the
                          output-format rows: imgpull --format oci-archive / rootfs at c=3,
                          skopeo copy → oci-archive, podman pull + save --format oci-archive;
                          imgpull-multi: every image of the run into one archive)
  --out FILE              also append the report to FILE
  --chart FILE.svg        also draw the side by side as an SVG bar chart (the pullers and the
                          link limit; with several images, FILE-IMAGE.svg each)
  --delay-ms MS           WAN one-way delay (default ${DEFAULT_WAN.delayMs})
  --conn-mbit MBIT        WAN cap per connection (default ${DEFAULT_WAN.connMbit})
  --total-mbit MBIT       WAN cap for all connections (default ${DEFAULT_WAN.totalMbit})
  --timeout-s S           kill a run after S seconds (default 900)
  --cache-dir DIR         generated images and registry storage (default $TMPDIR/imgpull-bench)
  --main PATH             imgpull main.ts to benchmark (default: this checkout's)
  --no-snapshot           run main.ts in place (default: a copy of main.ts + lib/ taken at
                          start, so edits made meanwhile cannot mix versions)`;

/**
 * RTTs charged on top of the transfer time in the link limit (issue 12: token, index, manifest,
 * config, first blob byte; see docs/benchmarks.md).
 */
const LIMIT_RTTS = 5;
/** Range size for the `curl-range` ceiling: small enough that 16 connections stay busy. */
const RANGE_BYTES = 2 * 1024 * 1024;
/** Parallel transfers for `curl-range`. */
const RANGE_PARALLEL = 16;

const log = (line: string) => console.error(line);

interface Sample {
  seconds: number;
  peakRssKiB?: number;
  /** Connections opened to the registry (and the token server) during the run (WAN only). */
  conns?: number;
  tokenConns?: number;
  /** E.g. docker's pull and save times. */
  parts?: Record<string, number>;
}

interface Tool {
  id: string;
  label: string;
  /** Runs before each run, outside the measurement and the connection counts. */
  prepare?(image: BenchImage): Promise<void>;
  /** Runs once; `runDir` is empty and removed afterwards. */
  run(image: BenchImage, runDir: string, first: boolean): Promise<Sample>;
  /** Undoes whatever a run left outside runDir (docker's image store). */
  after?(image: BenchImage): Promise<void>;
  /** Imgpull's `--max-concurrent-downloads`, for imgpull tools. */
  concurrency?: number;
  rssNote?: string;
}

class RunError extends Error {}

function check(r: TimedResult, what: string): void {
  if (r.timedOut) throw new RunError(`${what}: timed out after ${r.seconds.toFixed(0)} s`);
  if (r.code !== 0) {
    const text = (r.stderr || r.stdout).trim().split("\n").slice(-6).join("\n");
    throw new RunError(`${what}: exit ${r.code}\n${text}`);
  }
}

/** What a tool writes. */
type ArchiveKind = "docker-archive" | "oci-archive" | "rootfs";

/** Checks an archive really is one: a docker-archive has manifest.json, an OCI one index.json. */
async function verifyArchive(
  path: string,
  what: string,
  kind: ArchiveKind = "docker-archive",
): Promise<void> {
  const r = await timed("tar", ["-tf", path]);
  const names = r.stdout.split("\n").map((n) => n.replace(/^\.\//, ""));
  const marker = kind === "docker-archive"
    ? "manifest.json"
    : kind === "oci-archive"
    ? "index.json"
    : undefined;
  // A root filesystem has at least one file (the 512 MiB image has exactly one).
  const files = names.filter((n) => n !== "" && !n.endsWith("/"));
  if (r.code !== 0 || (marker ? !names.includes(marker) : files.length === 0)) {
    throw new RunError(`${what}: ${path} is not a ${kind} (tar -tf: ${r.stderr.trim()})`);
  }
}

/** CPU seconds this process (the harness: proxies, token server) has used so far. */
function selfCpuSeconds(): number {
  try {
    const fields = Deno.readTextFileSync("/proc/self/stat").split(") ")[1].split(" ");
    // utime and stime are fields 14 and 15 of stat (11 and 12 after "pid (comm) ").
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return NaN;
  }
}

async function readHwm(pid: number): Promise<number> {
  const status = await Deno.readTextFile(`/proc/${pid}/status`).catch(() => "");
  return Number(status.match(/VmHWM:\s+(\d+)/)?.[1] ?? 0);
}

async function resetHwm(pid: number): Promise<void> {
  // "5" resets the peak RSS (Linux ≥ 4.0; needs the right to write the file: root here).
  await Deno.writeTextFile(`/proc/${pid}/clear_refs`, "5").catch(() => {});
}

interface Options {
  link: "wan" | "loopback";
  runs: number;
  images: ImageName[];
  settings: number[];
  tools: string[];
  out?: string;
  chart?: string;
  delayMs: number;
  connMbit: number;
  totalMbit: number;
  timeoutMs: number;
  cacheDir: string;
  main: string;
  snapshot: boolean;
}

function parseOptions(args: string[]): Options {
  const { values } = parseArgs({
    args,
    options: {
      link: { type: "string", default: "wan" },
      runs: { type: "string", default: "5" },
      images: { type: "string", default: IMAGE_NAMES.join(",") },
      settings: { type: "string", default: "1,3,5,8" },
      tools: { type: "string", default: "imgpull,skopeo,docker,curl,curl-range" },
      out: { type: "string" },
      chart: { type: "string" },
      "delay-ms": { type: "string", default: String(DEFAULT_WAN.delayMs) },
      "conn-mbit": { type: "string", default: String(DEFAULT_WAN.connMbit) },
      "total-mbit": { type: "string", default: String(DEFAULT_WAN.totalMbit) },
      "timeout-s": { type: "string", default: "900" },
      "cache-dir": { type: "string" },
      main: { type: "string", default: DEFAULT_MAIN },
      "no-snapshot": { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(USAGE);
    Deno.exit(0);
  }
  if (values.link !== "wan" && values.link !== "loopback") throw new Error("--link: wan|loopback");
  const images = values.images.split(",").map((s) => s.trim());
  for (const i of images) {
    if (!(IMAGE_NAMES as readonly string[]).includes(i)) throw new Error(`unknown image ${i}`);
  }
  const tools = values.tools.split(",").map((s) => s.trim());
  for (const t of tools) {
    if (!ALL_TOOLS.includes(t)) {
      throw new Error(`unknown tool ${t}`);
    }
  }
  const num = (s: string, what: string) => {
    const n = Number(s);
    if (!Number.isFinite(n) || n < 0) throw new Error(`${what} must be a number ≥ 0: ${s}`);
    return n;
  };
  return {
    link: values.link,
    runs: parseList(values.runs, "--runs")[0],
    images: images as ImageName[],
    settings: parseList(values.settings, "--settings"),
    tools,
    out: values.out,
    chart: values.chart,
    delayMs: num(values["delay-ms"], "--delay-ms"),
    connMbit: num(values["conn-mbit"], "--conn-mbit"),
    totalMbit: num(values["total-mbit"], "--total-mbit"),
    timeoutMs: num(values["timeout-s"], "--timeout-s") * 1000,
    cacheDir: values["cache-dir"] ??
      join(Deno.env.get("TMPDIR") ?? "/tmp", "imgpull-bench"),
    main: values.main,
    snapshot: !values["no-snapshot"],
  };
}

// ---------------------------------------------------------------------------------------------
// Tools

/** imgpull's docker-archive rows, one per `--max-concurrent-downloads` setting (the sweep). */
function imgpullTools(
  o: Options,
  env: BenchEnv,
  main: string,
  noCache: boolean,
  denoDir: string,
): Tool[] {
  return o.settings.map((c) =>
    imgpullVariantTool(o, env, main, noCache, denoDir, {
      id: `imgpull-${c}`,
      label: `imgpull c=${c}${c === 3 ? " (default)" : ""}`,
      concurrency: c,
      args: () => [],
      kind: "docker-archive",
    })
  );
}

/** A row of imgpull: a concurrency setting, or extra arguments (another format, more images). */
interface ImgpullVariant {
  id: string;
  label: string;
  /** `--max-concurrent-downloads` of a sweep row; the other rows run at the default (3). */
  concurrency?: number;
  /** Arguments added for `image`'s row. */
  args(image: BenchImage): string[];
  /** What the output is (checked once per image). */
  kind: ArchiveKind;
  /** Runs before each run, outside the measurement. */
  prepare?(image: BenchImage): Promise<void>;
}

function imgpullVariantTool(
  o: Options,
  env: BenchEnv,
  main: string,
  noCache: boolean,
  denoDir: string,
  variant: ImgpullVariant,
): Tool {
  return {
    id: variant.id,
    label: variant.label,
    concurrency: variant.concurrency,
    prepare: variant.prepare,
    async run(image, runDir, first) {
      const home = join(runDir, "home");
      await Deno.mkdir(home);
      const output = join(runDir, "out.tar");
      const r = await runImgpull({
        reference: `${env.host}/${image.reference}`,
        platform: image.platform,
        caCert: env.caCertPath,
        username: env.user,
        password: env.password,
        extraArgs: variant.args(image),
      }, {
        main,
        concurrency: variant.concurrency ?? 3,
        output,
        home,
        denoDir,
        noCache,
        timeoutMs: o.timeoutMs,
      });
      check(r, variant.label);
      if (first) await verifyArchive(output, variant.label, variant.kind);
      return { seconds: r.seconds, peakRssKiB: r.peakRssKiB };
    },
  };
}

/** imgpull writing another format (`--format oci-archive|rootfs`). */
function imgpullFormatTool(
  o: Options,
  env: BenchEnv,
  main: string,
  noCache: boolean,
  denoDir: string,
  format: "oci-archive" | "rootfs",
): Tool {
  return imgpullVariantTool(o, env, main, noCache, denoDir, {
    id: format === "rootfs" ? "imgpull-rootfs" : "imgpull-oci",
    label: `imgpull c=3 --format ${format}`,
    args: () => ["--format", format],
    kind: format,
  });
}

/**
 * imgpull writing every image of the run into one docker-archive (the image of the row first,
 * then the others): peak RSS with several images in one output.
 */
function imgpullSeveralTool(
  o: Options,
  env: BenchEnv,
  main: string,
  noCache: boolean,
  denoDir: string,
): Tool {
  return imgpullVariantTool(o, env, main, noCache, denoDir, {
    id: "imgpull-multi",
    label: `imgpull c=3, the ${env.images.length} images of the run in one archive`,
    args: (image) => env.images.filter((i) => i !== image).map((i) => `${env.host}/${i.reference}`),
    kind: "docker-archive",
    // The registry reads every image's blobs: all from memory, as the one-image rows do (a
    // cold 537 MB blob takes 15 s to read from this disk).
    prepare: async () => {
      for (const image of env.images) await warmPageCache(image, o.cacheDir);
    },
  });
}

/**
 * podman pull into a fresh private store (vfs: no overlay mount needed), then
 * `podman save --format oci-archive`; the store is removed with the run directory.
 */
function podmanTool(o: Options, env: BenchEnv): Tool {
  return {
    id: "podman",
    label: "podman pull + save → oci-archive (vfs)",
    async run(image, runDir, first) {
      const store = join(runDir, "podman");
      await Deno.mkdir(store, { recursive: true });
      // podman refuses a runroot path longer than 50 characters.
      const runroot = await Deno.makeTempDir({ dir: "/tmp", prefix: "pm-" });
      const pm = await podmanStore(store, runroot);
      const podman = (args: string[]) =>
        timed("podman", [...pm.args, ...args], {
          env: { PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin", HOME: store, ...pm.env },
          timeoutMs: o.timeoutMs,
        });
      const ref = `${env.host}/${image.reference}`;
      try {
        const pull = await podman([
          "pull",
          "-q",
          "--platform",
          image.platform,
          "--cert-dir",
          env.certDir,
          "--creds",
          `${env.user}:${env.password}`,
          ref,
        ]);
        check(pull, "podman pull");
        const output = join(runDir, "out.tar");
        const save = await podman(["save", "-q", "--format", "oci-archive", "-o", output, ref]);
        check(save, "podman save");
        if (first) await verifyArchive(output, "podman save", "oci-archive");
        return {
          seconds: pull.seconds + save.seconds,
          peakRssKiB: Math.max(pull.peakRssKiB ?? 0, save.peakRssKiB ?? 0) || undefined,
          parts: { pull: pull.seconds, save: save.seconds },
        };
      } finally {
        await cleanDir(runroot);
      }
    },
  };
}

function skopeoTool(o: Options, env: BenchEnv, format: ArchiveKind = "docker-archive"): Tool {
  const [os, arch] = ["linux", "amd64"];
  return {
    id: format === "oci-archive" ? "skopeo-oci" : "skopeo",
    label: `skopeo copy → ${format}`,
    async run(image, runDir, first) {
      const output = join(runDir, "out.tar");
      await Deno.mkdir(join(runDir, "home"));
      await Deno.mkdir(join(runDir, "tmp"));
      const r = await timed("skopeo", [
        "--override-os",
        os,
        "--override-arch",
        arch,
        "copy",
        "-q",
        "--src-cert-dir",
        env.certDir,
        "--src-creds",
        `${env.user}:${env.password}`,
        `docker://${env.host}/${image.reference}`,
        format === "oci-archive"
          ? `oci-archive:${output}:${image.reference}`
          : `docker-archive:${output}:${image.reference}`,
      ], {
        env: {
          PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin",
          HOME: join(runDir, "home"),
          TMPDIR: join(runDir, "tmp"),
        },
        timeoutMs: o.timeoutMs,
      });
      check(r, "skopeo");
      if (first) await verifyArchive(output, "skopeo", format);
      return { seconds: r.seconds, peakRssKiB: r.peakRssKiB };
    },
  };
}

async function dockerTool(o: Options, env: BenchEnv, dockerd: BenchDockerd): Promise<Tool> {
  const ok = await dockerd.docker(["login", "-u", env.user, "--password-stdin", env.host], {
    stdin: new TextEncoder().encode(env.password),
  });
  if (ok.code !== 0) throw new Error(`docker login ${env.host} failed: ${ok.stderr.trim()}`);
  const run = async (args: string[]) => {
    const started = performance.now();
    const r = await dockerd.docker(args);
    return { ...r, seconds: (performance.now() - started) / 1000 };
  };
  return {
    id: "docker",
    label: `docker pull + save (${dockerd.storageDriver})`,
    rssNote: "dockerd + containerd",
    async run(image, runDir, first) {
      const ref = `${env.host}/${image.reference}`;
      const pids = await dockerd.pids();
      for (const pid of pids) await resetHwm(pid);
      const timeout = setTimeout(
        () => log(`[bench] docker still running after the timeout`),
        o.timeoutMs,
      );
      try {
        const pull = await run(["pull", "-q", ref]);
        if (pull.code !== 0) throw new RunError(`docker pull: ${pull.stderr.trim()}`);
        const output = join(runDir, "out.tar");
        const save = await run(["save", "-o", output, ref]);
        if (save.code !== 0) throw new RunError(`docker save: ${save.stderr.trim()}`);
        if (first) await verifyArchive(output, "docker save");
        let rss = 0;
        for (const pid of pids) rss += await readHwm(pid);
        return {
          seconds: pull.seconds + save.seconds,
          peakRssKiB: rss || undefined,
          parts: { pull: pull.seconds, save: save.seconds },
        };
      } finally {
        clearTimeout(timeout);
      }
    },
    async after(image) {
      await dockerd.docker(["rmi", "-f", `${env.host}/${image.reference}`]);
    },
  };
}

/** curl config-file text for GETs of `urls` (with optional byte ranges) to /dev/null. */
function curlConfig(env: BenchEnv, token: string, transfers: { url: string; range?: string }[]) {
  return transfers.map((t) =>
    [
      `url = "${t.url}"`,
      `output = "/dev/null"`,
      `cacert = "${env.caCertPath}"`,
      `header = "Authorization: Bearer ${token}"`,
      "http1.1",
      "fail",
      "silent",
      "show-error",
      `write-out = "%{http_code} %{size_download}\\n"`,
      ...(t.range ? [`range = "${t.range}"`] : []),
    ].join("\n")
  ).join("\nnext\n") + "\n";
}

function curlTool(o: Options, env: BenchEnv, ranges: boolean): Tool {
  let token = "";
  return {
    id: ranges ? "curl-range" : "curl",
    label: ranges
      ? `curl, ${RANGE_BYTES / 2 ** 20} MiB ranges, ${RANGE_PARALLEL} at once`
      : "curl, every blob at once",
    async prepare(image) {
      // The token is fetched outside the measurement: this is the transfer ceiling.
      token = await env.token(image.repo);
    },
    async run(image, runDir) {
      const blobs = [image.pull.config, ...image.pull.layers];
      const transfers: { url: string; range?: string }[] = [];
      for (const b of blobs) {
        const url = `https://${env.host}/v2/${image.repo}/blobs/${b.digest}`;
        if (!ranges || b.size <= RANGE_BYTES) {
          transfers.push({ url });
          continue;
        }
        for (let start = 0; start < b.size; start += RANGE_BYTES) {
          transfers.push({ url, range: `${start}-${Math.min(start + RANGE_BYTES, b.size) - 1}` });
        }
      }
      const config = join(runDir, "curl.conf");
      await Deno.writeTextFile(config, curlConfig(env, token, transfers));
      const parallel = ranges ? RANGE_PARALLEL : Math.min(300, transfers.length);
      const r = await timed("curl", [
        "--parallel",
        "--parallel-immediate",
        "--parallel-max",
        String(parallel),
        "--config",
        config,
      ], { env: { PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin" }, timeoutMs: o.timeoutMs });
      check(r, "curl");
      // Every transfer must have answered 200 (206 for a range) and the bytes must add up.
      const lines = r.stdout.trim().split("\n").map((l) => l.split(" ").map(Number));
      const got = lines.reduce((sum, [, n]) => sum + n, 0);
      const want = blobs.reduce((sum, b) => sum + b.size, 0);
      const codes = new Set(lines.map(([code]) => code));
      const expected = ranges && transfers.some((t) => t.range) ? [200, 206] : [200];
      if (got !== want || [...codes].some((c) => !expected.includes(c))) {
        throw new RunError(`curl: got ${got} of ${want} bytes, HTTP ${[...codes].join(",")}`);
      }
      return { seconds: r.seconds, peakRssKiB: r.peakRssKiB };
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Report

interface Row {
  tool: Tool;
  samples: Sample[];
  errors: string[];
}

const rate = (mbit: number) => (mbit > 0 ? `${mbit} Mbit/s` : "no cap");
const mb = (bytes: number) => `${(bytes / 1e6).toFixed(1)} MB`;

function linkLimit(
  image: BenchImage,
  env: BenchEnv,
): { seconds: number; text: string } | undefined {
  if (!env.wan || !(env.wan.totalMbit > 0)) return undefined;
  const bytes = pullBytes(image);
  const transfer = bytes / (env.wan.totalMbit * 125_000);
  const rtts = (LIMIT_RTTS * 2 * env.wan.delayMs) / 1000;
  return {
    seconds: transfer + rtts,
    text: `link limit: ${mb(bytes)} ÷ ${env.wan.totalMbit} Mbit/s + ${LIMIT_RTTS} RTT`,
  };
}

function rowStats(row: Row) {
  const times = row.samples.map((s) => s.seconds);
  if (times.length === 0) return undefined;
  const rss = row.samples.map((s) => s.peakRssKiB).filter((x): x is number => x !== undefined);
  const conns = row.samples.map((s) => s.conns).filter((x): x is number => x !== undefined);
  const tokenConns = row.samples.map((s) => s.tokenConns).filter((x): x is number =>
    x !== undefined
  );
  return {
    median: median(times),
    min: Math.min(...times),
    max: Math.max(...times),
    peakRssMB: rss.length ? (Math.max(...rss) * 1024) / 1e6 : undefined,
    conns: conns.length ? median(conns) : undefined,
    tokenConns: tokenConns.length ? median(tokenConns) : undefined,
    parts: row.samples[0].parts
      ? Object.fromEntries(
        Object.keys(row.samples[0].parts).map((k) => [
          k,
          median(row.samples.map((s) => s.parts![k])),
        ]),
      )
      : undefined,
  };
}

function imgpullBaseline(rows: Row[]): { row: Row; median: number } | undefined {
  const candidates = rows.filter((r) => r.tool.concurrency !== undefined && r.samples.length);
  // Without a docker-archive row, the first imgpull format row is the reference.
  const pick = candidates.find((r) => r.tool.concurrency === 3) ?? candidates[0] ??
    rows.find((r) => r.tool.id.startsWith("imgpull-") && r.samples.length);
  if (!pick) return undefined;
  return { row: pick, median: rowStats(pick)!.median };
}

function imageTitle(image: BenchImage): string {
  const kind = image.name === "nginx-like" ? "linux/amd64 of an OCI index" : "Docker schema2";
  const n = image.pull.layers.length;
  return `${image.name} — \`${image.reference}\` (${kind}), ${n} layer${n === 1 ? "" : "s"}, ${
    mb(pullBytes(image))
  } compressed, ${mb(image.uncompressedBytes)} uncompressed`;
}

function table(image: BenchImage, rows: Row[], env: BenchEnv): string {
  const base = imgpullBaseline(rows);
  const baseLabel = base ? base.row.tool.label.replace(" (default)", "") : "imgpull";
  const out = [
    `### ${imageTitle(image)}`,
    "",
    `| tool | median s | min s | max s | ÷ ${baseLabel} | peak RSS MB | connections |`,
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
  ];
  for (const row of rows) {
    const s = rowStats(row);
    if (!s) {
      out.push(`| ${row.tool.label} | failed: ${row.errors[0]?.split("\n")[0] ?? "?"} | | | | | |`);
      continue;
    }
    const parts = s.parts
      ? ` (${Object.entries(s.parts).map(([k, v]) => `${k} ${fmtS(v)}`).join(" + ")})`
      : "";
    const conns = s.conns === undefined
      ? "—"
      : `${s.conns}${s.tokenConns ? ` + ${s.tokenConns} token` : ""}`;
    const rss = s.peakRssMB === undefined
      ? "—"
      : `${s.peakRssMB.toFixed(0)}${row.tool.rssNote ? ` (${row.tool.rssNote})` : ""}`;
    const failed = row.errors.length ? ` (${row.errors.length} failed)` : "";
    out.push(
      `| ${row.tool.label}${failed} | ${fmtS(s.median)}${parts} | ${fmtS(s.min)} | ${
        fmtS(s.max)
      } | ${base ? fmtX(s.median / base.median) : "—"} | ${rss} | ${conns} |`,
    );
  }
  const limit = linkLimit(image, env);
  if (limit) {
    out.push(
      `| ${limit.text} | ${fmtS(limit.seconds)} | | | ${
        base ? fmtX(limit.seconds / base.median) : "—"
      } | | |`,
    );
  }
  return out.join("\n");
}

/** The issue's goals that this image and link can check, one line each. */
function goals(image: BenchImage, rows: Row[], env: BenchEnv): string[] {
  const base = imgpullBaseline(rows);
  if (!base) return [];
  const med = (id: string) => {
    const row = rows.find((r) => r.tool.id === id);
    return row ? rowStats(row)?.median : undefined;
  };
  const lines: string[] = [];
  const mark = (ok: boolean) => (ok ? "met" : "**not met**");
  const who = base.row.tool.label.replace(" (default)", "");
  const faster = (peer: string, label: string, goal: number) => {
    const m = med(peer);
    if (m === undefined) return;
    const x = m / base.median;
    lines.push(`- ${who} vs ${label}: ${fmtX(x)} faster (goal ≥ ${goal}×): ${mark(x >= goal)}`);
  };
  // Issue 12's goals.
  if (env.link === "wan" && (image.name === "nginx-like" || image.name === "big")) {
    faster("skopeo", "skopeo", image.name === "nginx-like" ? 10 : 5);
    if (image.name === "nginx-like") faster("docker", "docker pull + save", 5);
    const limit = linkLimit(image, env);
    if (limit) {
      const x = base.median / limit.seconds;
      const goal = image.name === "nginx-like" ? 1.2 : 1.05;
      lines.push(`- ${who} vs link limit: ${fmtX(x)} of it (goal ≤ ${goal}×): ${mark(x <= goal)}`);
    }
  }
  if (env.link === "loopback") {
    const sk = med("skopeo");
    const goal = image.name === "nginx-like" ? 0.3 : image.name === "big" ? 0.5 : undefined;
    if (sk !== undefined) {
      const x = base.median / sk;
      lines.push(
        `- ${who} ÷ skopeo wall time: ${fmtX(x)}` +
          (goal === undefined ? "" : ` (goal ≤ ${goal}×): ${mark(x <= goal)}`),
      );
    }
    const curl = med("curl");
    if (curl !== undefined) {
      lines.push(`- ${who} ÷ curl, every blob at once: ${fmtX(base.median / curl)}`);
    }
  }
  // The output-format rows (issue 8): the tar formats keep the docker-archive's speed.
  const docker = med("imgpull-3");
  for (
    const [id, peer, label] of [
      ["imgpull-oci", "skopeo-oci", "oci-archive"],
      ["imgpull-rootfs", undefined, "rootfs"],
    ] as const
  ) {
    const m = med(id);
    if (m === undefined) continue;
    if (docker !== undefined) {
      const x = m / docker;
      lines.push(
        `- imgpull --format ${label} ÷ docker-archive (c=3): ${fmtX(x)}` +
          (label === "oci-archive" ? ` (goal ≤ 1.1×): ${mark(x <= 1.1)}` : ""),
      );
    }
    const p = peer ? med(peer) : undefined;
    if (p !== undefined) {
      lines.push(`- skopeo → ${label} ÷ imgpull --format ${label}: ${fmtX(p / m)}`);
    }
    const pod = label === "oci-archive" ? med("podman") : undefined;
    if (pod !== undefined) {
      lines.push(`- podman pull + save ÷ imgpull --format ${label}: ${fmtX(pod / m)}`);
    }
  }
  const one = med("imgpull-1");
  const five = med("imgpull-5");
  // Only meaningful with several layers: --max-concurrent-downloads counts layers.
  if (
    env.link === "wan" && image.pull.layers.length > 1 && one !== undefined && five !== undefined
  ) {
    const x = one / five;
    lines.push(`- c=5 vs c=1 (sequential): ${fmtX(x)} faster (goal > 2.3×): ${mark(x > 2.3)}`);
  }
  if (image.name === "big") {
    const peaks = rows.filter((r) => r.tool.concurrency !== undefined).map((r) => ({
      c: r.tool.concurrency!,
      mb: rowStats(r)?.peakRssMB,
    })).filter((p) => p.mb !== undefined);
    if (peaks.length) {
      const worst = Math.max(...peaks.map((p) => p.mb!));
      lines.push(
        `- imgpull peak RSS, 512 MiB image: ${
          peaks.map((p) => `c=${p.c} ${p.mb!.toFixed(0)} MB`).join(", ")
        } (goal ≤ 150 MB at any setting): ${mark(worst <= 150)}`,
      );
    }
  }
  return lines;
}

/** Where `--chart` draws `image`: FILE itself, or FILE-IMAGE.svg when the run has several. */
export function chartPath(file: string, image: string, several: boolean): string {
  if (!several) return file;
  const dot = file.toLowerCase().endsWith(".svg") ? file.length - 4 : file.length;
  return `${file.slice(0, dot)}-${image}${file.slice(dot) || ".svg"}`;
}

/**
 * The side by side of one image as an SVG: every puller that finished (the curl rows are
 * transfer ceilings, not pullers, and stay in the table only), imgpull's default row as the
 * baseline of the ratios, the link limit as a line.
 */
function chartSvg(image: BenchImage, rows: Row[], env: BenchEnv, date: string): string {
  const base = imgpullBaseline(rows);
  const drawn = rows.filter((r) => !r.tool.id.startsWith("curl") && rowStats(r));
  const bars: ChartRow[] = drawn.map((r) => {
    const s = rowStats(r)!;
    return { label: r.tool.label, seconds: s.median, min: s.min, max: s.max };
  });
  const limit = linkLimit(image, env);
  const where = env.wan ? "the emulated WAN" : "loopback";
  return renderBarChart(bars, {
    title: `${image.name}: a cold pull on ${where}`,
    subtitle: `${date} · ${mb(pullBytes(image))} compressed · bar: median; ratio to ${
      base ? base.row.tool.label.replace(" (default)", "") : "the first row"
    }${limit ? ` · dashed: link limit (${LIMIT_RTTS} RTT)` : ""}`,
    baseline: Math.max(0, base ? drawn.indexOf(base.row) : 0),
    limit: limit ? { label: "link limit", seconds: limit.seconds } : undefined,
  });
}

// ---------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  let o: Options;
  try {
    o = parseOptions(Deno.args);
  } catch (e) {
    console.error(`${(e as Error).message}\n\n${USAGE}`);
    Deno.exit(2);
  }
  await Deno.mkdir(o.cacheDir, { recursive: true });
  const denoDir = join(o.cacheDir, "deno-dir");
  const cleanups: (() => Promise<void>)[] = [];
  let cleaning: Promise<void> | undefined;
  const cleanup = () =>
    cleaning ??= (async () => {
      for (const c of cleanups.reverse()) await c().catch((e) => log(`cleanup: ${e}`));
    })();
  const onSignal = () => {
    log("[bench] interrupted: cleaning up");
    cleanup().finally(() => Deno.exit(130));
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);

  try {
    // dockerd takes a few seconds: start it while the images are prepared.
    const dockerdPromise = o.tools.includes("docker")
      ? startBenchDockerd(log).then((d) => {
        cleanups.push(() => d.close());
        return d;
      }, (e) => {
        log(
          `[bench] docker skipped: dockerd did not start: ${(e as Error).message.split("\n")[0]}`,
        );
        return undefined;
      })
      : Promise.resolve(undefined);

    const env = await startBenchEnv({
      link: o.link,
      wan: { delayMs: o.delayMs, connMbit: o.connMbit, totalMbit: o.totalMbit },
      images: o.images,
      cacheDir: o.cacheDir,
      log: (l) => log(`[bench] ${l}`),
    });
    cleanups.push(() => env.close());

    const tools: Tool[] = [];
    const notes: string[] = [];
    let noCache = false;
    let startup: number | undefined;
    const snapshot = await snapshotImgpull(o.main, o.snapshot);
    cleanups.push(() => snapshot.close());
    if (o.tools.includes("imgpull")) {
      ({ noCache, startupSeconds: startup } = await probeImgpull(snapshot.main, denoDir));
      tools.push(...imgpullTools(o, env, snapshot.main, noCache, denoDir));
    }
    for (const format of ["oci-archive", "rootfs"] as const) {
      const id = format === "rootfs" ? "imgpull-rootfs" : "imgpull-oci";
      if (!o.tools.includes(id)) continue;
      if (!o.tools.includes("imgpull")) {
        ({ noCache, startupSeconds: startup } = await probeImgpull(snapshot.main, denoDir));
      }
      tools.push(imgpullFormatTool(o, env, snapshot.main, noCache, denoDir, format));
    }
    if (o.tools.includes("imgpull-multi")) {
      if (startup === undefined) {
        ({ noCache, startupSeconds: startup } = await probeImgpull(snapshot.main, denoDir));
      }
      tools.push(imgpullSeveralTool(o, env, snapshot.main, noCache, denoDir));
    }
    if (o.tools.includes("skopeo")) tools.push(skopeoTool(o, env));
    if (o.tools.includes("skopeo-oci")) tools.push(skopeoTool(o, env, "oci-archive"));
    if (o.tools.includes("podman")) tools.push(podmanTool(o, env));
    const dockerd = await dockerdPromise;
    if (o.tools.includes("docker")) {
      if (dockerd) {
        // Docker reads a registry's CA from /etc/docker/certs.d/<host:port>/ca.crt only.
        const certsRoot = "/etc/docker/certs.d";
        const hadRoot = await Deno.stat(certsRoot).then(() => true, () => false);
        const certsD = join(certsRoot, env.host);
        await Deno.mkdir(certsD, { recursive: true });
        cleanups.push(async () => {
          await Deno.remove(certsD, { recursive: true });
          // Only when we created it, and only if nothing else is in it (no recursive removal).
          if (!hadRoot) await Deno.remove(certsRoot).catch(() => {});
        });
        await Deno.copyFile(env.caCertPath, join(certsD, "ca.crt"));
        try {
          tools.push(await dockerTool(o, env, dockerd));
        } catch (e) {
          notes.push(`docker skipped: ${(e as Error).message}`);
        }
      } else {
        notes.push("docker skipped: the private dockerd did not start (see stderr)");
      }
    }
    if (o.tools.includes("curl")) tools.push(curlTool(o, env, false));
    if (o.tools.includes("curl-range")) tools.push(curlTool(o, env, true));

    const date = new Date().toISOString().replace(/\.\d+Z$/, "Z");
    const linkText = env.wan
      ? `emulated WAN: ${env.wan.delayMs} ms one-way delay (${2 * env.wan.delayMs} ms RTT), ${
        rate(env.wan.connMbit)
      } per TCP connection, ${rate(env.wan.totalMbit)} total`
      : "loopback (no emulation)";
    const header = [
      `## ${o.link} — ${date}, ${o.runs} run${o.runs === 1 ? "" : "s"} per tool`,
      "",
      ...(await machineInfo()).split("\n").map((l) => `${l}  `),
      `Link: ${linkText}; registry: Distribution (docker-registry), TLS + token auth.  `,
      `imgpull: \`${o.main === DEFAULT_MAIN ? "main.ts" : o.main}\` at ${snapshot.version}, via ` +
      `\`deno run\` with the documented permissions, ${
        noCache ? "`--no-cache`, " : ""
      }fresh HOME per run${
        startup === undefined
          ? ""
          : `; \`imgpull --help\` takes ${fmtS(startup)} s (start-up floor)`
      }.  `,
      `Command: \`deno run -A bench/run.ts ${Deno.args.join(" ")}\``,
      ...notes.map((n) => `\nNote: ${n}`),
    ].join("\n");
    const sections: string[] = [header];
    console.log(`${header}\n`);

    for (const image of env.images) {
      await warmPageCache(image, o.cacheDir);
      const rows: Row[] = tools.map((tool) => ({ tool, samples: [], errors: [] }));
      for (let run = 0; run < o.runs; run++) {
        // Rotate the order so no tool always runs first (or right after the slowest one).
        const order = rows.map((_, i) => rows[(i + run) % rows.length]);
        for (const row of order) {
          const runDir = await Deno.makeTempDir({ prefix: "imgpull-bench-run-" });
          try {
            await row.tool.prepare?.(image);
            env.registryProxy?.resetStats();
            env.tokenProxy?.resetStats();
            const cpu0 = selfCpuSeconds();
            const sample = await row.tool.run(image, runDir, run === 0 || row.samples.length === 0);
            if (env.registryProxy) sample.conns = env.registryProxy.stats.connections;
            if (env.tokenProxy) sample.tokenConns = env.tokenProxy.stats.connections;
            row.samples.push(sample);
            log(
              `[bench] ${image.name} ${run + 1}/${o.runs} ${row.tool.label}: ${
                sample.seconds.toFixed(2)
              } s${
                sample.peakRssKiB ? `, ${((sample.peakRssKiB * 1024) / 1e6).toFixed(0)} MB` : ""
              }${sample.conns !== undefined ? `, ${sample.conns} connections` : ""}, harness CPU ${
                (selfCpuSeconds() - cpu0).toFixed(1)
              } s`,
            );
          } catch (e) {
            const message = e instanceof RunError ? e.message : String((e as Error).stack ?? e);
            row.errors.push(message);
            log(`[bench] ${image.name} ${run + 1}/${o.runs} ${row.tool.label}: FAILED ${message}`);
          } finally {
            await row.tool.after?.(image).catch(() => {});
            await cleanDir(runDir);
          }
        }
      }
      const section = [table(image, rows, env), "", ...goals(image, rows, env)].join("\n");
      sections.push(section);
      console.log(`${section}\n`);
      if (o.chart) {
        const file = chartPath(o.chart, image.name, env.images.length > 1);
        await Deno.writeTextFile(file, chartSvg(image, rows, env, date));
        log(`[bench] chart: ${file}`);
      }
    }
    if (o.out) {
      await Deno.writeTextFile(o.out, `${sections.join("\n\n")}\n\n`, { append: true });
      log(`[bench] appended to ${o.out}`);
    }
  } finally {
    await cleanup();
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
  }
}

if (import.meta.main) await main();
