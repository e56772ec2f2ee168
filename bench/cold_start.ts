/**
 * Cold start from a URL over the emulated WAN: `deno run <URL>` with an empty `DENO_DIR`, for the
 * `main.ts` module graph (Deno fetches it level by level) and for the bundle `deno task bundle`
 * makes (one file). Both are served over HTTP on 127.0.0.1 behind the WAN emulator
 * (bench/wan_proxy.ts); `--version`, then a small pull (`fixtures/app:v1` from a Distribution
 * behind the same kind of link).
 *
 *     deno task bench:cold-start [--runs 5] [--delay-ms 25] [--conn-mbit 32] [--total-mbit 400]
 *
 * Prints a Markdown table (median, min, max of the wall time per case) and the goal check:
 * the bundle's `--version` in at most 0.3× the graph's, and under 0.5 s.
 * @module
 */
import { parseArgs } from "node:util";
import { extname, join, normalize } from "node:path";
import { fmtS, machineInfo, median, timed, type TimedResult } from "./common.ts";
import { mbit, startWanProxy, type WanProxy } from "./wan_proxy.ts";
import { DEFAULT_WAN } from "./env.ts";
import { bundle } from "../scripts/bundle.ts";
import { ROOT } from "../scripts/build_stamp.ts";
import { PERMISSIONS } from "../scripts/permissions.ts";
import { startRegistry } from "../tests/helpers/registry.ts";
import { pushFixtures } from "../tests/helpers/fixtures.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    runs: { type: "string", default: "5" },
    "delay-ms": { type: "string", default: String(DEFAULT_WAN.delayMs) },
    "conn-mbit": { type: "string", default: String(DEFAULT_WAN.connMbit) },
    "total-mbit": { type: "string", default: String(DEFAULT_WAN.totalMbit) },
  },
});
const runs = Number(values.runs);
const wan = {
  delayMs: Number(values["delay-ms"]),
  perConnectionBps: mbit(Number(values["conn-mbit"])),
  aggregateBps: mbit(Number(values["total-mbit"])),
};

/** Serves the checkout's sources (`/main.ts`, `/cli/…`, `/lib/…`) and `/dist/imgpull.js`. */
function serveSources(
  bundles: Record<string, string>,
): { server: Deno.HttpServer<Deno.NetAddr>; requests: () => number } {
  let requests = 0;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
    requests++;
    const path = normalize(decodeURIComponent(new URL(req.url).pathname));
    let file: string | undefined;
    if (path in bundles) file = bundles[path];
    else if (/^\/(main\.ts|(cli|lib)\/[\w/]+\.ts)$/.test(path)) file = join(ROOT, path.slice(1));
    if (!file) return new Response("not found", { status: 404 });
    try {
      const type = extname(file) === ".js" ? "application/javascript" : "application/typescript";
      const body = await Deno.readFile(file);
      // As code hosts do (raw.githubusercontent.com, jsDelivr): gzip when the client accepts it.
      if (!/\bgzip\b/.test(req.headers.get("accept-encoding") ?? "")) {
        return new Response(body, { headers: { "content-type": type } });
      }
      const gzipped = new Response(
        new Blob([body]).stream().pipeThrough(new CompressionStream("gzip")),
      );
      return new Response(await gzipped.arrayBuffer(), {
        headers: { "content-type": type, "content-encoding": "gzip" },
      });
    } catch {
      return new Response("not found", { status: 404 });
    }
  });
  return { server, requests: () => requests };
}

interface Case {
  name: string;
  url: string;
  args: (cwd: string) => string[];
  /** The module graph imports npm packages (the bundle has them inlined). */
  npm?: boolean;
}

/** This machine's Deno cache, where the npm packages of the graph are (the npm registry is not
 * reachable from here, so a cold DENO_DIR gets them copied in: see {@link seedNpm}). */
const LOCAL_DENO_DIR = Deno.env.get("DENO_DIR") ??
  join(Deno.env.get("HOME") ?? "/root", ".cache/deno");
const NPM_PACKAGES = ["smol-toml"];

/**
 * Copies the graph's npm packages into an empty DENO_DIR. A real cold start also fetches them
 * from registry.npmjs.org (the package document, then the tarball: two or more round trips to a
 * second host), which the numbers here therefore leave out.
 */
async function seedNpm(denoDir: string): Promise<void> {
  for (const name of NPM_PACKAGES) {
    const from = join(LOCAL_DENO_DIR, "npm", "registry.npmjs.org", name);
    const to = join(denoDir, "npm", "registry.npmjs.org");
    await Deno.mkdir(to, { recursive: true });
    const cp = await new Deno.Command("cp", { args: ["-r", from, to] }).output();
    if (!cp.success) throw new Error(`cannot copy npm package ${name} from ${from}`);
  }
}

async function runCold(c: Case, root: string, i: number): Promise<TimedResult> {
  const dir = join(root, `${c.name.replace(/\W+/g, "-")}-${i}`);
  const denoDir = join(dir, "deno-dir");
  await Deno.mkdir(denoDir, { recursive: true });
  if (c.npm) await seedNpm(denoDir);
  const result = await timed(
    Deno.execPath(),
    ["run", "--quiet", "--no-config", ...PERMISSIONS, c.url, ...c.args(dir)],
    {
      cwd: dir,
      env: {
        DENO_DIR: denoDir,
        HOME: dir,
        NO_COLOR: "1",
        DENO_NO_UPDATE_CHECK: "1",
        PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin",
      },
      timeoutMs: 120_000,
    },
  );
  if (result.code !== 0) {
    throw new Error(`${c.name} (run ${i}) exited ${result.code}:\n${result.stderr.slice(-2000)}`);
  }
  await Deno.remove(dir, { recursive: true });
  return result;
}

const root = await Deno.makeTempDir({ prefix: "imgpull-cold-start-" });
const closers: (() => Promise<unknown>)[] = [];
try {
  const built = await bundle(join(root, "dist", "imgpull.js"));
  const minified = await bundle(join(root, "dist", "imgpull.min.js"), { minify: true });
  const sources = serveSources({
    "/dist/imgpull.js": built.path,
    "/dist/imgpull.min.js": minified.path,
  });
  closers.push(() => sources.server.shutdown());
  const codeProxy: WanProxy = await startWanProxy({
    target: `127.0.0.1:${sources.server.addr.port}`,
    ...wan,
  });
  closers.push(() => codeProxy.close());

  const registry = await startRegistry({ mode: "http", storageDir: join(root, "storage") });
  closers.push(() => registry.close());
  await pushFixtures(registry.url, join(root, "fixtures"));
  const registryProxy = await startWanProxy({ target: registry.host, ...wan });
  closers.push(() => registryProxy.close());
  const image = `${registryProxy.host}/fixtures/app:v1`;

  const base = `http://${codeProxy.host}`;
  const version = () => ["--version"];
  const pullArgs = (cwd: string) => [image, "--platform", "linux/amd64", "-o", join(cwd, "a.tar")];
  const cases: Case[] = [
    { name: "main.ts graph: --version", url: `${base}/main.ts`, args: version, npm: true },
    { name: "bundle: --version", url: `${base}/dist/imgpull.js`, args: version },
    { name: "minified bundle: --version", url: `${base}/dist/imgpull.min.js`, args: version },
    // The floor: the same bundle from the local disk, still with an empty DENO_DIR.
    { name: "bundle from local disk: --version", url: built.path, args: version },
    { name: "main.ts graph: pull", url: `${base}/main.ts`, args: pullArgs, npm: true },
    { name: "bundle: pull", url: `${base}/dist/imgpull.js`, args: pullArgs },
  ];
  const times = new Map<string, number[]>(cases.map((c) => [c.name, []]));
  const requests = new Map<string, number>();
  // Interleaved, so that machine noise spreads over every case alike.
  for (let i = 0; i < runs; i++) {
    for (const c of cases) {
      const before = sources.requests();
      const result = await runCold(c, root, i);
      times.get(c.name)!.push(result.seconds);
      requests.set(c.name, sources.requests() - before);
    }
  }

  const rtt = 2 * wan.delayMs;
  console.log(`# Cold start from a URL (empty DENO_DIR), ${rtt} ms RTT`);
  console.log("");
  console.log(
    `Deno ${Deno.version.deno}; bundle ${built.bytes} bytes, minified ${minified.bytes} ` +
      `(commit ${built.commit}); sources served gzipped when asked, as code hosts do.`,
  );
  console.log(
    `link: ${wan.delayMs} ms each way, ${values["conn-mbit"]} Mbit/s per connection, ` +
      `${values["total-mbit"]} Mbit/s in all; ${runs} runs per case, interleaved.`,
  );
  console.log(
    `main.ts graph cases: npm packages (${NPM_PACKAGES.join(", ")}) copied into the empty ` +
      `DENO_DIR (registry.npmjs.org is not reachable here; a real cold start fetches them too).`,
  );
  console.log(await machineInfo());
  console.log("");
  console.log("| case | HTTP requests for code | median | min | max |");
  console.log("| --- | ---: | ---: | ---: | ---: |");
  for (const c of cases) {
    const t = times.get(c.name)!;
    console.log(
      `| ${c.name} | ${requests.get(c.name)} | ${fmtS(median(t))} | ${fmtS(Math.min(...t))} | ` +
        `${fmtS(Math.max(...t))} |`,
    );
  }
  const graph = median(times.get("main.ts graph: --version")!);
  const bundled = median(times.get("bundle: --version")!);
  const ratio = bundled / graph;
  console.log("");
  console.log(
    `--version: bundle/graph = ${ratio.toFixed(2)}× (goal ≤ 0.3×: ${
      ratio <= 0.3 ? "met" : "MISSED"
    }); ` +
      `bundle ${fmtS(bundled)} (goal < 0.5 s: ${bundled < 0.5 ? "met" : "MISSED"})`,
  );
} finally {
  for (const close of closers.reverse()) await close().catch((e) => console.error(e));
  await Deno.remove(root, { recursive: true }).catch(() => {});
}
