/**
 * imgpull command line: parse arguments, render progress, map errors to
 * exit codes. The only module that prints or exits.
 *
 * @module
 */
import { parseArgs } from "node:util";
import {
  ExitCode,
  ImgpullError,
  InterruptedError,
  PlatformMismatchError,
  PlatformNotFoundError,
  UsageError,
} from "./lib/errors.ts";
import { cacheInfo, defaultCacheDir, importTar, pruneCache } from "./lib/cache.ts";
import { parseByteSize } from "./lib/compression.ts";
import type { PullEvent } from "./lib/events.ts";
import { registerSecret } from "./lib/redact.ts";
import { describePlatform, formatPlatform } from "./lib/platform.ts";
import {
  listImagePlatforms,
  OUTPUT_FORMATS,
  type OutputFormat,
  pull,
  repoTagFromName,
  requestedPlatforms,
} from "./lib/pull.ts";
import { parseReference } from "./lib/reference.ts";
import { VERSION, versionText } from "./lib/version.ts";
import { oneLine, writeErr, writeOut } from "./cli/output.ts";
import { humanBytes, ProgressRenderer } from "./cli/progress.ts";

const HELP = `imgpull ${VERSION}: pull container images into docker or OCI archives without Docker

Usage: imgpull [options] [registry/][repository/]image[:tag|@digest]…

Options:
  --platform OS/ARCH[/VARIANT]     platform to pull, enforced (default: DOCKER_DEFAULT_PLATFORM,
                                   else linux/<host arch>, preferred: a single-platform
                                   image for another platform is pulled with a warning)
  --max-concurrent-downloads N     layers downloaded at once (default 3; 1 = sequential)
  -o, --output PATH                archive or directory to write (default: <repository>.tar
                                   with "/" as "_", e.g. library_nginx.tar; no .tar for
                                   oci-dir); "-" writes a tar format to standard output
  --format FORMAT                  docker-archive (default), oci-archive, oci-dir or rootfs
                                   (the flattened filesystem, as docker export gives it)
  --all-platforms                  every platform, the index and every manifest byte for
                                   byte (OCI formats); --platform A,B picks several
  --images-from FILE               more references, one per line (# comments; - = stdin)
  --tag NAME[:TAG]                 the name the archive loads as (default: the reference's)
  --list-platforms                 list the platforms of the image and exit
  --username USER                  registry user name
  --password PASS                  registry password (prefer --password-stdin)
  --password-stdin                 read the password from standard input
  --ca-cert FILE                   trust this CA certificate (PEM); may be repeated
  --plain-http                     allow plain HTTP to a registry that is not on loopback
  --registry-mirror URL            mirror for Docker Hub images, as dockerd's option (repeat
                                   for several; http:// and a path prefix allowed); replaces
                                   daemon.json registry-mirrors
  --hosts-dir DIR                  containerd hosts directory (default /etc/containerd/certs.d)
  --retries N                      retries per request or blob segment after a transient
                                   failure (default 3)
  --stall-timeout SECONDS          abort and retry a transfer that receives nothing for
                                   this long (default 30)
  --connections N                  HTTP connections streaming blob data at once, across
                                   all layers (default 16)
  --segment-size MIB               largest Range segment of a blob (default 8)
  --max-layer-size SIZE            refuse a layer larger than SIZE, compressed or not (e.g.
                                   2G; default: 100x its compressed size, at least 1 GiB)
  --limit-rate RATE                at most RATE bytes per second for the whole pull (e.g.
                                   500K, 10M), across all connections, as curl and aria2
  --cache-dir DIR                  blob cache (default: $XDG_CACHE_HOME/imgpull or
                                   ~/.cache/imgpull)
  --no-cache                       keep no blobs between runs
  --import-tar FILE                fill the cache from a docker-archive (docker save or
                                   imgpull); then pull IMAGE if one is given
  --cache-info                     print the cache's location, size and entries
  --cache-prune                    empty the cache (with --older-than: only unused blobs)
  --older-than DURATION            with --cache-prune: e.g. 7d, 12h, 30m
  -q, --quiet                      no progress, only errors and the archive path
  --verbose                        debug messages and stack traces
  -h, --help                       show this help
  -V, --version                    show the version

Exit codes: 0 ok, 1 platform not available, 2 usage, 3 authentication, 4 not found,
5 integrity, 6 network/registry, 7 local file error, 8 invalid registry content,
130 interrupted, 70 internal error.`;

/** Unexpected failures (bugs) get their own code, apart from the catalogue. */
const INTERNAL_ERROR = 70;

const OPTIONS = {
  platform: { type: "string" },
  "max-concurrent-downloads": { type: "string" },
  output: { type: "string", short: "o" },
  format: { type: "string" },
  "all-platforms": { type: "boolean" },
  "images-from": { type: "string" },
  "registry-mirror": { type: "string", multiple: true },
  "hosts-dir": { type: "string" },
  tag: { type: "string" },
  "list-platforms": { type: "boolean" },
  username: { type: "string", short: "u" },
  password: { type: "string", short: "p" },
  "password-stdin": { type: "boolean" },
  "ca-cert": { type: "string", multiple: true },
  "plain-http": { type: "boolean" },
  retries: { type: "string" },
  connections: { type: "string" },
  "stall-timeout": { type: "string" },
  "segment-size": { type: "string" },
  "max-layer-size": { type: "string" },
  "limit-rate": { type: "string" },
  "cache-dir": { type: "string" },
  "no-cache": { type: "boolean" },
  "import-tar": { type: "string" },
  "cache-info": { type: "boolean" },
  "cache-prune": { type: "boolean" },
  "older-than": { type: "string" },
  quiet: { type: "boolean", short: "q" },
  verbose: { type: "boolean", short: "v" },
  help: { type: "boolean", short: "h" },
  version: { type: "boolean", short: "V" },
} as const;

/** Reads variables without failing when --allow-env does not cover them. */
const env = {
  get(name: string): string | undefined {
    try {
      return Deno.env.get(name);
    } catch {
      return undefined;
    }
  },
};

function parseCount(value: string | undefined, flag: string, min: number): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!/^\d+$/.test(value) || n < min) {
    throw new UsageError(`${flag} must be an integer of at least ${min}, got "${value}"`);
  }
  return n;
}

/** `7d`, `12h`, `30m`, `45s` → milliseconds. */
function parseDuration(text: string): number {
  const match = /^(\d+)([smhd])$/.exec(text);
  if (!match) throw new UsageError(`invalid duration "${text}": use e.g. 7d, 12h, 30m`);
  const unit = { s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 }[match[2] as "s"];
  return Number(match[1]) * unit;
}

/** `--images-from FILE` (`-`: standard input): one reference per line, `#` comments. */
async function readImageList(path: string): Promise<string[]> {
  let text: string;
  try {
    text = path === "-"
      ? await new Response(Deno.stdin.readable).text()
      : await Deno.readTextFile(path);
  } catch (e) {
    throw new UsageError(`cannot read --images-from ${path}: ${(e as Error).message}`);
  }
  const references = text.split(/\r?\n/).map((line) => line.replace(/#.*$/, "").trim())
    .filter((line) => line !== "");
  if (references.length === 0) throw new UsageError(`--images-from ${path} lists no image`);
  return references;
}

async function readPasswordFromStdin(): Promise<string> {
  const text = await new Response(Deno.stdin.readable).text();
  return text.replace(/\r?\n$/, "");
}

/** An event whose text may quote the registry, each text on one line. */
function singleLine(event: PullEvent): PullEvent {
  switch (event.type) {
    case "notice":
    case "warning":
    case "debug":
      return { ...event, message: oneLine(event.message) };
    case "platform":
      return { ...event, requested: oneLine(event.requested), chosen: oneLine(event.chosen) };
    default:
      return event;
  }
}

function reportError(e: unknown, verbose: boolean, interrupted: boolean): number {
  if (interrupted) {
    writeErr(`[-] Interrupted; no archive was written\n`);
    return ExitCode.interrupted;
  }
  if (e instanceof PlatformNotFoundError) {
    writeErr(`[-] ${oneLine(e.message)}\n[+] Available platforms:\n`);
    for (const p of e.available) writeErr(`  - ${oneLine(p)}\n`);
  } else if (e instanceof ImgpullError) {
    // Messages may quote the registry: one line each, whatever it sent.
    writeErr(`[-] ${oneLine(e.message)}\n`);
    if (e.hint) writeErr(`[-] Hint: ${oneLine(e.hint)}\n`);
  } else {
    const message = e instanceof Error ? e.message : String(e);
    writeErr(`[-] Unexpected error: ${message.split("\n")[0]}\n`);
  }
  if (verbose && e instanceof Error) {
    writeErr(`${e.stack ?? e}\n`);
    if (e.cause instanceof Error) writeErr(`Caused by: ${e.cause.stack ?? e.cause}\n`);
  }
  if (e instanceof ImgpullError) return e.exitCode;
  return INTERNAL_ERROR;
}

/** Runs the CLI with `args`; returns the exit code. */
export async function main(args: string[]): Promise<number> {
  let verbose = args.includes("--verbose") || args.includes("-v");
  const abort = new AbortController();
  let interrupted = false;
  const onSignal = (signal: "SIGINT" | "SIGTERM") => () => {
    interrupted = true;
    abort.abort(new InterruptedError(signal));
  };
  const signals: [Deno.Signal, () => void][] = [
    ["SIGINT", onSignal("SIGINT")],
    ["SIGTERM", onSignal("SIGTERM")],
  ];
  if (Deno.build.os !== "windows") {
    for (const [name, handler] of signals) Deno.addSignalListener(name, handler);
  }
  try {
    let parsed;
    try {
      parsed = parseArgs({ args, options: OPTIONS, allowPositionals: true, strict: true });
    } catch (e) {
      throw new UsageError((e as Error).message.split("\n")[0], { hint: "see imgpull --help" });
    }
    const { values, positionals } = parsed;
    verbose = values.verbose ?? false;
    if (values.help) {
      writeOut(HELP);
      return ExitCode.ok;
    }
    if (values.version) {
      writeOut(versionText());
      return ExitCode.ok;
    }
    const quiet = values.quiet ?? false;
    const renderer = new ProgressRenderer({ quiet, verbose });
    // Warnings are not progress: -q keeps them.
    const onEvent = (raw: PullEvent): void => {
      const event = singleLine(raw);
      if (event.type !== "warning") return renderer.handle(event);
      const text = `[!] Warning: ${event.message}`;
      if (quiet) writeErr(`${text}\n`);
      else renderer.line(text);
    };
    if (values["no-cache"] && values["cache-dir"]) {
      throw new UsageError("--no-cache and --cache-dir cannot be used together");
    }
    const cacheDir = values["no-cache"] ? undefined : values["cache-dir"] ?? defaultCacheDir(env);
    const needsCache = values["cache-info"] || values["cache-prune"] || values["import-tar"];
    if (needsCache && !cacheDir) {
      throw new UsageError("no cache directory: give --cache-dir (or set HOME)");
    }
    if (values["older-than"] !== undefined && !values["cache-prune"]) {
      throw new UsageError("--older-than goes with --cache-prune");
    }
    if (values["cache-info"]) {
      const info = await cacheInfo(cacheDir!);
      writeOut(`Cache: ${info.root}`);
      writeOut(`Blobs: ${info.blobs} (${humanBytes(info.blobBytes)})`);
      writeOut(`Partial downloads: ${info.partials} (${humanBytes(info.partialBytes)})`);
      return ExitCode.ok;
    }
    if (values["cache-prune"]) {
      const age = values["older-than"] === undefined
        ? undefined
        : parseDuration(values["older-than"]);
      const { removed, bytes } = await pruneCache(cacheDir!, age);
      renderer.line(`[+] Removed ${removed} cache entries (${humanBytes(bytes)}) from ${cacheDir}`);
      return ExitCode.ok;
    }
    if (values["import-tar"]) {
      const { layers, bytes } = await importTar(cacheDir!, values["import-tar"], renderer.handle, {
        signal: abort.signal,
      });
      renderer.line(
        `[+] Imported ${layers} layers (${humanBytes(bytes)}) from ${values["import-tar"]} ` +
          `into ${cacheDir}`,
      );
      if (positionals.length === 0) return ExitCode.ok;
    }
    if (values["images-from"] === "-" && values["password-stdin"]) {
      throw new UsageError("--images-from - and --password-stdin both read standard input");
    }
    const references = [
      ...positionals,
      ...(values["images-from"] === undefined ? [] : await readImageList(values["images-from"])),
    ];
    if (references.length === 0) {
      throw new UsageError("missing image reference", {
        hint: "imgpull [options] IMAGE…, e.g. imgpull nginx --platform linux/arm64",
      });
    }
    const reference = references[0];
    if (values.password !== undefined && values["password-stdin"]) {
      throw new UsageError("--password and --password-stdin cannot be used together");
    }
    if ((values.password !== undefined || values["password-stdin"]) && !values.username) {
      throw new UsageError("--password needs --username");
    }
    if (values.password !== undefined) {
      // A security warning, not progress: -q does not hide it (nothing is drawn yet).
      writeErr(
        "[!] Warning: --password on the command line is visible to other users; " +
          "use --password-stdin\n",
      );
    }
    const password = values["password-stdin"] ? await readPasswordFromStdin() : values.password;
    registerSecret(password);
    const stallSeconds = parseCount(values["stall-timeout"], "--stall-timeout", 1);
    const connectOptions = {
      retries: parseCount(values.retries, "--retries", 0),
      stallTimeoutMs: stallSeconds === undefined ? undefined : stallSeconds * 1000,
      username: values.username,
      password,
      caCertFiles: values["ca-cert"] ?? [],
      plainHttp: values["plain-http"] ?? false,
      registryMirrors: values["registry-mirror"],
      hostsDir: values["hosts-dir"],
      env,
      onEvent,
      signal: abort.signal,
    };
    if (values["list-platforms"]) {
      if (references.length !== 1) throw new UsageError("--list-platforms takes one image");
      const entries = await listImagePlatforms(reference, connectOptions);
      for (const entry of entries) {
        writeOut(`Platform: ${entry.platform}, digest: ${entry.digest}`);
      }
      return ExitCode.ok;
    }
    const concurrency = parseCount(
      values["max-concurrent-downloads"],
      "--max-concurrent-downloads",
      1,
    );
    const connections = parseCount(values.connections, "--connections", 1);
    const segmentMiB = parseCount(values["segment-size"], "--segment-size", 1);
    const maxLayerText = values["max-layer-size"];
    const maxLayerBytes = maxLayerText === undefined ? undefined : parseByteSize(maxLayerText);
    if (maxLayerText !== undefined && maxLayerBytes === undefined) {
      throw new UsageError(`--max-layer-size: not a size: ${maxLayerText}`);
    }
    const limitText = values["limit-rate"];
    const limitRate = limitText === undefined ? undefined : parseByteSize(limitText);
    if (limitText !== undefined && !(limitRate! > 0)) {
      throw new UsageError(`--limit-rate: not a rate: ${limitText}`, {
        hint: "bytes per second, e.g. 500K or 10M",
      });
    }
    // Everything the user typed is checked before anything is printed or fetched.
    for (const r of references) parseReference(r);
    if (values.tag !== undefined) repoTagFromName(values.tag);
    const format = (values.format ?? "docker-archive") as OutputFormat;
    if (!OUTPUT_FORMATS.includes(format)) {
      throw new UsageError(`unknown --format ${JSON.stringify(values.format)}`, {
        hint: `one of ${OUTPUT_FORMATS.join(", ")}`,
      });
    }
    const allPlatforms = values["all-platforms"] ?? false;
    const requests = allPlatforms ? [] : requestedPlatforms(values.platform, env);
    const platformText = allPlatforms
      ? "all platforms"
      : requests.length > 1
      ? `platforms ${requests.map((r) => formatPlatform(r.platform)).join(", ")}`
      : `platform ${describePlatform(requests[0].platform, values.platform)}` +
        (requests[0].source === "flag"
          ? ""
          : ` (${requests[0].source === "host" ? "host default" : `from ${requests[0].source}`})`);
    for (const r of references) renderer.line(`[+] Pulling ${r} for ${platformText}`);
    const toStdout = values.output === "-";
    try {
      const result = await pull({
        ...connectOptions,
        references,
        platform: values.platform,
        allPlatforms,
        format,
        output: values.output,
        stdout: toStdout ? Deno.stdout.writable : undefined,
        tag: values.tag,
        maxConcurrentDownloads: concurrency,
        connections,
        maxSegmentBytes: segmentMiB === undefined ? undefined : segmentMiB * 1024 * 1024,
        maxLayerBytes,
        limitRate,
        cacheDir,
      });
      renderer.finish();
      const where = toStdout ? "standard output" : result.output;
      for (const image of result.images) {
        const layers = `${image.layers} ${format === "rootfs" ? "layers flattened" : "layer"}` +
          `${image.layers === 1 || format === "rootfs" ? "" : "s"}`;
        renderer.line(
          `[+] Wrote ${image.repoTags.join(", ")} (${image.platforms.join(", ")}, ${layers}, ` +
            `${humanBytes(image.bytes)}) as ${format} to ${where}`,
        );
        renderer.line(
          `[+] ${
            allPlatforms || image.platforms.length > 1 ? "Index" : "Image ID"
          }: ${image.imageId}`,
        );
      }
      renderer.line(renderer.summary());
      if (!toStdout) writeOut(result.output);
      return ExitCode.ok;
    } finally {
      renderer.finish();
    }
  } catch (e) {
    if (e instanceof PlatformMismatchError) {
      writeErr(`[-] ${oneLine(e.message)}\n`);
      return e.exitCode;
    }
    return reportError(e, verbose, interrupted);
  } finally {
    if (Deno.build.os !== "windows") {
      for (const [name, handler] of signals) Deno.removeSignalListener(name, handler);
    }
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
