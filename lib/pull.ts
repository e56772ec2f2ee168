/**
 * The pull pipeline: references → registries → platforms → verified blobs → one output. A
 * pull resolves every reference into images (manifests, configs and layer descriptors, all
 * verified), a writer per format (lib/writers/) turns them into a list of entries, the layout
 * engine ({@link ./writers/assembly.ts}) places them, and the blobs are downloaded straight
 * into their places or copied from the cache. Everything here reports progress as events and
 * failures as {@link ImgpullError}s; nothing prints or exits.
 *
 * @module
 */
import type { EnvReader } from "./auth/credentials.ts";
import { decompressLayer, type DecompressOptions, sniffCompression } from "./compression.ts";
import { connectFirstWorking, type ConnectOptions } from "./connect.ts";
import { digestOf, parseDigest } from "./digest.ts";
import {
  ImgpullError,
  InvalidContentError,
  LocalIoError,
  NotFoundError,
  UsageError,
} from "./errors.ts";
import type { PullEventSink } from "./events.ts";
import {
  type BlobSink,
  DEFAULT_CONNECTIONS,
  downloadBlob,
  type DownloadedBlob,
  downloadForeignLayer,
  type DownloadOptions,
  type FetchPolicy,
  fetchPolicy,
} from "./fetch.ts";
import { type Descriptor, type ImageManifest, schema1Config } from "./manifest.ts";
import { isForeignLayer, layerCompression, MediaType } from "./media_types.ts";
import {
  defaultOutputName,
  fullImageName,
  loadableRegistry,
  repoTagFor,
  repoTagFromName,
  tagFor,
} from "./naming.ts";
import { formatPlatform, hostPlatform, parsePlatform } from "./platform.ts";
import { joinPath, splitPath } from "./paths.ts";
import { parseReference, type Reference } from "./reference.ts";
import type { RegistryClient } from "./registry.ts";
import {
  type EarlyImage,
  type FetchedDocument,
  fetchTopManifest,
  type ImageTree,
  listPlatforms,
  MAX_CONFIG_BYTES,
  type PlatformEntry,
  type PlatformRequest,
  type ResolvedImage,
  resolveImage,
  resolveImageEarly,
  resolveTree,
  subsetIndex,
} from "./resolve.ts";
import { Semaphore } from "./semaphore.ts";
import { BlobStore, CacheEntryCorruptError, localIoError } from "./store.ts";
import {
  type Assembly,
  type AssemblyEntry,
  copyVerified,
  DirectoryAssembly,
  removeAbandonedArchives,
  StreamAssembly,
  TarAssembly,
  temporaryPath,
} from "./writers/assembly.ts";
import {
  type ArchiveImage,
  type ArchiveLayer,
  dockerArchiveEntries,
} from "./writers/docker_archive.ts";
import { ociLayoutEntries, type OciLayoutImage } from "./writers/oci_layout.ts";
import { type RootfsLayer, writeRootfs } from "./writers/rootfs.ts";

export {
  defaultOutputName,
  fullImageName,
  loadableRegistry,
  repoTagFor,
  repoTagFromName,
} from "./naming.ts";

/** The output formats, with podman's `save --format` names. */
export const OUTPUT_FORMATS = ["docker-archive", "oci-archive", "oci-dir", "rootfs"] as const;
/** An output format: see {@link OUTPUT_FORMATS}. */
export type OutputFormat = typeof OUTPUT_FORMATS[number];

/** What to pull and where. */
export interface PullOptions extends ConnectOptions {
  /** The image to pull (or give {@link references}). */
  reference?: string;
  /** Several images into one output (each resolved for the requested platforms). */
  references?: string[];
  /**
   * `os/arch[/variant]`, or several separated by commas (OCI formats), enforced; default
   * `DOCKER_DEFAULT_PLATFORM` from `env` (enforced), else the host's, as Docker picks it (a
   * preference: see {@link PlatformRequest}).
   */
  platform?: string;
  /** Every platform, the index and every manifest byte for byte (OCI formats). */
  allPlatforms?: boolean;
  /** Default `docker-archive`. */
  format?: OutputFormat;
  /**
   * File (tar formats) or directory (`oci-dir`); default {@link defaultOutputName} (required
   * with several images). `-` writes a tar format to {@link stdout}.
   */
  output?: string;
  /** Where `-o -` writes (the CLI passes its standard output). */
  stdout?: WritableStream<Uint8Array>;
  /** `--tag NAME[:TAG]`: the name one image loads as; default the reference's. */
  tag?: string;
  /** Layers downloaded at once (default 3). */
  maxConcurrentDownloads?: number;
  /** HTTP requests streaming blob data at once, across all layers (default 16). */
  connections?: number;
  /** Largest Range segment of a blob, in bytes (default 8 MiB). */
  maxSegmentBytes?: number;
  /** `--max-layer-size`: largest layer, compressed or not (see FetchPolicy.maxLayerBytes). */
  maxLayerBytes?: number;
  /** `--limit-rate`: bytes per second for the whole pull, across all connections. */
  limitRate?: number;
  /**
   * The shared blob cache (see {@link defaultCacheDir}); without one, blobs
   * go to a scratch directory beside the output that is removed afterwards.
   */
  cacheDir?: string;
}

/** One image of a pull's output. */
export interface PulledImage {
  reference: string;
  /** Names it loads as (docker-archive) or is recorded under (OCI). */
  repoTags: string[];
  /** `sha256:<hex>` of the config (one platform), or of the index kept or made. */
  imageId: string;
  platforms: string[];
  layers: number;
  /** Bytes of layer data. */
  bytes: number;
}

/** What a pull produced. */
export interface PullResult {
  /** The path written, or `-` for standard output. */
  output: string;
  format: OutputFormat;
  images: PulledImage[];
  /** The first image's: `sha256:<hex>` of the config, the ID docker shows. */
  imageId: string;
  repoTags: string[];
  platform: string;
  layers: number;
  /** Bytes of layer data in the output (each blob counted once). */
  bytes: number;
}

/** Where the platform to pull came from. */
export type PlatformSource = "flag" | "DOCKER_DEFAULT_PLATFORM" | "host";

/**
 * The platform to pull: the flag, else `DOCKER_DEFAULT_PLATFORM`, else `linux/<host arch>`.
 * The first two are the user's request and are enforced; the host default is a preference.
 */
export function requestedPlatform(
  flag: string | undefined,
  env?: EnvReader,
): PlatformRequest & { source: PlatformSource } {
  if (flag !== undefined) return { platform: parsePlatform(flag), enforced: true, source: "flag" };
  const fromEnv = env?.get("DOCKER_DEFAULT_PLATFORM");
  const platform = hostPlatform({ DOCKER_DEFAULT_PLATFORM: fromEnv, arch: Deno.build.arch });
  return fromEnv?.trim()
    ? { platform, enforced: true, source: "DOCKER_DEFAULT_PLATFORM" }
    : { platform, enforced: false, source: "host" };
}

/** `--platform a,b`: each platform of a comma-separated list (one entry without commas). */
export function requestedPlatforms(
  flag: string | undefined,
  env?: EnvReader,
): (PlatformRequest & { source: PlatformSource })[] {
  if (flag === undefined || !flag.includes(",")) return [requestedPlatform(flag, env)];
  const parts = flag.split(",").map((p) => p.trim()).filter((p) => p !== "");
  if (parts.length === 0) throw new UsageError(`--platform ${JSON.stringify(flag)} names nothing`);
  return parts.map((p) => requestedPlatform(p, env));
}

/** Lists the platforms of an image without pulling it. */
export async function listImagePlatforms(
  reference: string,
  options: ConnectOptions = {},
): Promise<PlatformEntry[]> {
  const ref = parseReference(reference);
  const found = await connectFirstWorking(ref, options, (c, r) => listPlatforms(c, r));
  found.client.close();
  return found.result;
}

/**
 * Checks the destination before any download: a file for tar formats (not a directory), a
 * directory that does not exist or is empty for `oci-dir`, in a writable directory. Returns
 * the directory the output goes in.
 */
async function checkDestination(output: string, format: OutputFormat): Promise<string> {
  let info: Deno.FileInfo | undefined;
  try {
    info = await Deno.stat(output);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw localIoError(e, `cannot use ${output}`);
  }
  if (format === "oci-dir") {
    if (info && !info.isDirectory) {
      throw new LocalIoError(`output path ${output} exists and is not a directory`, {
        hint: "oci-dir writes a directory: give a new path with -o",
      });
    }
    if (info && (await Array.fromAsync(Deno.readDir(output))).length > 0) {
      throw new LocalIoError(`output directory ${output} is not empty`, {
        hint: "give a new or empty directory with -o",
      });
    }
  } else if (info?.isDirectory) {
    throw new LocalIoError(`output path ${output} is a directory`, {
      hint: "give a file name with -o, e.g. -o image.tar",
    });
  }
  const { dir } = splitPath(output);
  // Fail before downloading anything when the output could not be written.
  const probe = joinPath(dir, `.imgpull-probe-${crypto.randomUUID().slice(0, 8)}`);
  try {
    await Deno.writeFile(probe, new Uint8Array(0), { createNew: true });
    await Deno.remove(probe);
  } catch (e) {
    throw localIoError(e, `cannot write to ${dir}`);
  }
  return dir;
}

/** What the downloads of one pull share. */
interface PullRun {
  store: BlobStore;
  /** Blobs in progress at once (`--max-concurrent-downloads`). */
  layers: Semaphore;
  policy: FetchPolicy;
  onEvent: PullEventSink;
  signal: AbortSignal;
  /** Aborted by the first failing task. */
  failure: AbortController;
}

/** An image reference being pulled, with the endpoint (registry or mirror) that serves it. */
interface Source {
  reference: string;
  /** As the user wrote it: names the output. */
  ref: Reference;
  /** As the serving endpoint knows it (a mirror's repository path): what is fetched. */
  endpointRef: Reference;
  client: RegistryClient;
  /** The top manifest, fetched (and verified) when the endpoint was chosen. */
  top: FetchedDocument;
  repoTags: string[];
}

/** A blob of the output, and how to get it. */
interface BlobJob {
  digest: string;
  size: number;
  /** Already on disk (the cache, a conversion): copied in, hashed on the way. */
  path?: string;
  /** To download (or to download again when the stored copy is damaged). */
  descriptor?: Descriptor;
  client?: RegistryClient;
  /** Position for progress labels. */
  index: number;
}

/** Checks that the options make one coherent request (usage errors, exit 2). */
function validate(options: PullOptions, refs: Reference[], format: OutputFormat): void {
  if (!OUTPUT_FORMATS.includes(format)) {
    throw new UsageError(`unknown --format ${JSON.stringify(format)}`, {
      hint: `one of ${OUTPUT_FORMATS.join(", ")}`,
    });
  }
  if (refs.length === 0) throw new UsageError("missing image reference");
  const several = options.allPlatforms || (options.platform?.includes(",") ?? false);
  if (several && (format === "docker-archive" || format === "rootfs")) {
    throw new UsageError(`${format} holds one platform of an image`, {
      hint: "use --format oci-archive (or oci-dir) to keep several platforms",
    });
  }
  if (options.allPlatforms && options.platform !== undefined) {
    throw new UsageError("--all-platforms and --platform cannot be used together");
  }
  if (format === "rootfs" && refs.length > 1) {
    throw new UsageError("--format rootfs flattens one image; give one reference");
  }
  if (options.tag !== undefined && refs.length > 1) {
    throw new UsageError("--tag names one image; give one reference");
  }
  if (refs.length > 1 && options.output === undefined) {
    throw new UsageError("several images go into one output: give it a name with -o", {
      hint: "e.g. -o images.tar",
    });
  }
  if (options.output === "-" && format === "oci-dir") {
    throw new UsageError("oci-dir is a directory and cannot go to standard output", {
      hint: "use --format oci-archive with -o -",
    });
  }
  if (options.output === "-" && !options.stdout) {
    throw new UsageError("-o - needs a stream to write to");
  }
}

/** Pulls images into one output: a docker-archive, an OCI archive or layout, or a root filesystem. */
export async function pull(options: PullOptions): Promise<PullResult> {
  const format = options.format ?? "docker-archive";
  // The same reference twice is one image.
  const references = [
    ...new Set(options.references ?? (options.reference ? [options.reference] : [])),
  ];
  const refs = references.map((r) => parseReference(r));
  validate(options, refs, format);
  const platforms = options.allPlatforms ? [] : requestedPlatforms(options.platform, options.env);
  const concurrency = options.maxConcurrentDownloads ?? 3;
  if (!Number.isInteger(concurrency) || concurrency < 1) {
    throw new UsageError(`--max-concurrent-downloads must be a positive integer`);
  }
  const toStdout = options.output === "-";
  const output = options.output ??
    defaultOutputName(refs[0], format === "oci-dir" ? "" : ".tar");
  const onEvent = options.onEvent ?? (() => {});
  const repoTagsOf = (
    ref: Reference,
  ) => [options.tag ? repoTagFromName(options.tag) : repoTagFor(ref)];

  // One signal for everything: the caller's, or ours when a sibling download fails.
  const failure = new AbortController();
  const signal = options.signal
    ? AbortSignal.any([options.signal, failure.signal])
    : failure.signal;
  const connections = options.connections ?? (concurrency === 1 ? 1 : DEFAULT_CONNECTIONS);
  // Mirrors first, then the registry: the first endpoint that has the image serves it all. The
  // download connections are opened while the token and manifests are fetched.
  const connectTo = (ref: Reference) =>
    connectFirstWorking(
      ref,
      { ...options, signal, warmConnections: connections },
      (client, endpointRef) => fetchTopManifest(client, endpointRef),
    );
  // The first registry's round trips overlap the checks of the output and the opening of the
  // store; a failure of those still comes first.
  const firstConnect = connectTo(refs[0]);
  firstConnect.catch(() => {});
  let scratchParent: string | undefined;
  let store: BlobStore;
  try {
    const outputDir = toStdout ? "." : await checkDestination(output, format);
    for (const ref of refs) {
      if (!options.tag && loadableRegistry(ref.registry) !== ref.registry) {
        onEvent({
          type: "notice",
          message: `docker, podman and containerd cannot load a name with an IPv6 address; ` +
            `the image is tagged ${repoTagFor(ref)} (choose another name with --tag)`,
        });
      }
    }
    // The shared cache, or a scratch directory beside the output (removed afterwards); with
    // `-o -` there is no output directory, so the scratch goes into a temporary one.
    scratchParent = !options.cacheDir && toStdout
      ? await Deno.makeTempDir({ prefix: "imgpull-" })
      : undefined;
    store = options.cacheDir
      ? await BlobStore.open(options.cacheDir)
      : await BlobStore.createIn(scratchParent ?? outputDir);
  } catch (e) {
    failure.abort(e);
    await firstConnect.then((found) => found.client.dispose(), () => {});
    if (scratchParent) await Deno.remove(scratchParent, { recursive: true }).catch(() => {});
    throw e;
  }
  const sources: Source[] = [];
  try {
    const run: PullRun = {
      store,
      layers: new Semaphore(concurrency),
      policy: fetchPolicy({
        // "1" keeps the old script's meaning, sequential: one connection, one layer.
        connections,
        maxSegmentBytes: options.maxSegmentBytes,
        retries: options.retries,
        stallTimeoutMs: options.stallTimeoutMs,
        maxLayerBytes: options.maxLayerBytes,
        limitRateBytes: options.limitRate,
      }),
      onEvent,
      signal,
      failure,
    };
    for (let i = 0; i < refs.length; i++) {
      const found = await (i === 0 ? firstConnect : connectTo(refs[i]));
      sources.push({
        reference: references[i],
        ref: refs[i],
        endpointRef: found.ref,
        client: found.client,
        top: found.result,
        repoTags: repoTagsOf(refs[i]),
      });
    }
    const destination = toStdout ? "-" : output;
    const open = (entries: AssemblyEntry[]): Promise<Assembly> =>
      toStdout
        ? Promise.resolve(new StreamAssembly(entries, options.stdout!, signal))
        : format === "oci-dir"
        ? DirectoryAssembly.create(output, entries)
        : TarAssembly.create(output, entries);
    let images: PulledImage[];
    if (format === "docker-archive") {
      images = await pullDockerArchive(run, sources, platforms[0], open);
    } else if (format === "rootfs") {
      images = await pullRootfs(run, sources[0], platforms[0], options, output);
    } else {
      images = await pullOciLayout(run, sources, platforms, open);
    }
    const first = images[0];
    return {
      output: destination,
      format,
      images,
      imageId: first.imageId,
      repoTags: first.repoTags,
      platform: first.platforms.join(", "),
      layers: first.layers,
      bytes: images.reduce((sum, image) => sum + image.bytes, 0),
    };
  } finally {
    await Promise.all(sources.map((source) => source.client.dispose()));
    if (!store.persistent) await store.remove();
    if (scratchParent) await Deno.remove(scratchParent, { recursive: true }).catch(() => {});
  }
}

/** Resolves a source for one platform, at the endpoint that serves it, from its top manifest. */
function resolveAt(
  run: PullRun,
  source: Source,
  platform: PlatformRequest,
): Promise<ResolvedImage> {
  return resolveImage(
    source.client,
    source.endpointRef,
    platform,
    run.onEvent,
    run.store,
    source.top,
  );
}

/** How blob `index` of this pull downloads; `output` is its place in the output, if known. */
function downloadOptions(run: PullRun, index: number, output?: BlobSink): DownloadOptions {
  return { policy: run.policy, signal: run.signal, onEvent: run.onEvent, index, output };
}

/**
 * Runs one task per item under the semaphore. The first failure aborts the
 * rest, and all tasks are settled before returning, so no transfer outlives
 * the pull (its temporary files are about to be removed).
 */
async function runAll<T, R>(
  run: PullRun,
  items: readonly T[],
  task: (item: T, index: number) => Promise<R>,
): Promise<R[]> {
  const failure = run.failure;
  const results = await Promise.allSettled(items.map((item, index) =>
    run.layers.run(async () => {
      failure.signal.throwIfAborted();
      try {
        return await task(item, index);
      } catch (e) {
        failure.abort(e);
        throw e;
      }
    })
  ));
  const firstError = failure.signal.aborted ? failure.signal.reason : undefined;
  const rejected = results.find((r) => r.status === "rejected");
  if (rejected) throw firstError ?? (rejected as PromiseRejectedResult).reason;
  return results.map((r) => (r as PromiseFulfilledResult<R>).value);
}

/**
 * Each blob once. One digest names one content, so it has one size: two images (or an image and
 * a conversion) giving a digest two sizes are refused, since the output was laid out with one
 * of them.
 */
function distinctJobs(jobs: readonly BlobJob[]): BlobJob[] {
  const byDigest = new Map<string, BlobJob>();
  for (const job of jobs) {
    const known = byDigest.get(job.digest);
    if (known && known.size !== job.size) {
      throw new InvalidContentError(
        `${job.digest} is listed with two sizes (${known.size} and ${job.size})`,
      );
    }
    if (!known) byDigest.set(job.digest, job);
  }
  return [...byDigest.values()];
}

/**
 * Stored blob `digest`, hashed again first: a damaged entry (bit rot, another user of a shared
 * cache) is evicted, with a warning, so that the caller downloads it again. Used where the blob
 * is read for its content (decompressed) rather than copied through a hashing copy.
 */
async function verifiedStored(
  run: PullRun,
  digest: string,
  size: number,
): Promise<string | undefined> {
  const stored = await run.store.use(digest);
  // Schema1 blobs have no size (-1): any stored size will do, the hash decides.
  if (stored === undefined || (size >= 0 && stored !== size)) return undefined;
  const path = run.store.blobPath(digest);
  // The verified copy of the outputs, into nothing: it hashes, and evicts a damaged entry.
  const discard = { write: () => Promise.resolve() };
  try {
    await copyVerified(digest, path, discard, stored, "the cache", run.signal);
    return path;
  } catch (e) {
    run.signal.throwIfAborted();
    // Damaged (evicted): say so. Unreadable: as if absent. Either way it is downloaded again.
    if (e instanceof CacheEntryCorruptError) warnDamaged(run, digest);
    return undefined;
  }
}

/** Says that a cached blob was damaged, removed, and is being downloaded again. */
function warnDamaged(run: PullRun, digest: string): void {
  run.onEvent({
    type: "warning",
    message: `cached blob ${shortDigest(digest)} is damaged (its content does not match its ` +
      `digest); removed from the cache and downloading it again`,
  });
}

/**
 * Fills every blob of an output, each once: stored ones are copied in (hashed on the way; a
 * damaged cache entry is evicted and downloaded again into its place), the others downloaded
 * straight into their place when the output has one, else into the store and copied. Then
 * the output becomes the destination; on any failure it is discarded.
 */
async function fillAndCommit(
  run: PullRun,
  open: () => Promise<Assembly>,
  jobs: readonly BlobJob[],
  reported: ReadonlySet<string> = new Set(),
  /**
   * Runs alongside the downloads and must succeed before the output is committed (the config of
   * an early start, see {@link pullDockerArchiveEarly}). Its failure stops the downloads and is
   * the error thrown, whatever they failed with meanwhile.
   */
  gate?: (assembly: Assembly) => Promise<void>,
): Promise<void> {
  // One size per digest is settled before anything is written.
  // Downloads first, the largest first: with a few layer slots, a big layer that starts last
  // ends last, long after the small ones (its place in the output does not change).
  const distinct = distinctJobs(jobs).sort((a, b) =>
    Number(a.path !== undefined) - Number(b.path !== undefined) || b.size - a.size
  );
  const assembly = await open();
  const copyOptions = { signal: run.signal };
  const download = async (job: BlobJob): Promise<void> => {
    const descriptor = job.descriptor!;
    const options = downloadOptions(run, job.index, assembly.sinkFor(job.digest));
    let result: DownloadedBlob;
    try {
      result = await downloadBlob(job.client!, descriptor, run.store, options);
    } catch (e) {
      // Registries may refuse to serve foreign layers: their own URLs are the other source.
      if (!(e instanceof NotFoundError) || !descriptor.urls?.length) throw e;
      result = await downloadForeignLayer(descriptor, run.store, options, {
        registryUrl: job.client!.baseUrl,
        registryError: e,
      });
    }
    if (!result.inOutput) await assembly.copyIn(job.digest, result.path!, copyOptions);
  };
  const fill = () =>
    runAll(run, distinct, async (job) => {
      if (!job.path) return await download(job);
      if (!reported.has(job.digest)) {
        run.onEvent({ type: "blob-done", digest: job.digest, size: job.size, reused: true });
      }
      try {
        await assembly.copyIn(job.digest, job.path, copyOptions);
      } catch (e) {
        // A damaged cache entry (evicted by copyIn) is fetched again into its place; a blob
        // archived in another form (found by diff_id, converted from zstd) cannot be.
        if (!(e instanceof CacheEntryCorruptError) || job.descriptor?.digest !== job.digest) {
          throw e;
        }
        warnDamaged(run, job.digest);
        await download(job);
      }
    });
  try {
    if (gate) {
      const checked = gate(assembly);
      checked.catch((e) => run.failure.abort(e));
      const [filled, check] = await Promise.allSettled([fill(), checked]);
      if (check.status === "rejected") throw check.reason;
      if (filled.status === "rejected") throw filled.reason;
    } else {
      await fill();
    }
    await assembly.commit();
  } catch (e) {
    await assembly.discard();
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------
// docker-archive

/** docker-archive: one platform of each image; zstd layers stored uncompressed. */
async function pullDockerArchive(
  run: PullRun,
  sources: readonly Source[],
  platform: PlatformRequest,
  open: (entries: AssemblyEntry[]) => Promise<Assembly>,
): Promise<PulledImage[]> {
  const archiveImages: ArchiveImage[] = [];
  const jobs: BlobJob[] = [];
  const reported = new Set<string>();
  const results: PulledImage[] = [];
  for (const source of sources) {
    let resolved: ResolvedImage;
    if (sources.length === 1) {
      const early = await resolveImageEarly(
        source.client,
        source.endpointRef,
        platform,
        run.onEvent,
        run.store,
        source.top,
      );
      if (early.kind === "early") {
        const pulled = await pullDockerArchiveEarly(run, source, early, open);
        if (pulled) return [pulled];
        resolved = await early.complete;
      } else {
        resolved = early;
      }
    } else {
      resolved = await resolveAt(run, source, platform);
    }
    const prepared = resolved.kind === "image"
      ? await prepareDockerImage(run, source, resolved, reported)
      : await prepareSchema1Image(run, source, resolved);
    archiveImages.push(prepared.image);
    jobs.push(...prepared.jobs);
    results.push({
      reference: source.reference,
      repoTags: source.repoTags,
      imageId: prepared.image.configDigest,
      platforms: [resolved.platform],
      layers: prepared.image.layers.length,
      bytes: prepared.image.layers.reduce((sum, l) => sum + l.size, 0),
    });
  }
  await fillAndCommit(run, () => open(dockerArchiveEntries(archiveImages)), jobs, reported);
  return results;
}

/**
 * Whether the manifest alone decides an output's blobs, so that the layers may be requested
 * while the config is fetched: image media types, a config of a sane size that is no layer.
 * Anything unusual is left to the usual path, which reports it after the config as before.
 */
function earlyStartFits(manifest: ImageManifest): boolean {
  const config = manifest.config;
  const configType = config.mediaType;
  return manifest.layers.every((layer) =>
    layerCompression(layer.mediaType) !== undefined && layer.digest !== config.digest
  ) &&
    (!configType || configType === MediaType.ociConfig ||
      configType === MediaType.dockerConfig) &&
    Number.isSafeInteger(config.size) && config.size >= 0 && config.size <= MAX_CONFIG_BYTES;
}

/**
 * Puts an early start's config, verified, into its place in the output: from the verified bytes
 * in memory (not the store, whose copy could change meanwhile), through a temporary file of
 * the store that is added to `temporaries`, for the caller to remove once the output is
 * committed or discarded (a stream output reads it only when committed).
 */
async function fillConfig(
  run: PullRun,
  assembly: Assembly,
  resolved: Extract<ResolvedImage, { kind: "image" }>,
  signal: AbortSignal,
  temporaries: string[],
): Promise<void> {
  const temp = run.store.tempPath("config");
  temporaries.push(temp);
  await Deno.writeFile(temp, resolved.configBytes).catch((e) => {
    throw localIoError(e, `cannot write ${temp}`);
  });
  await assembly.copyIn(resolved.manifest.config.digest, temp, { signal });
}

/** Removes temporary files, quietly. */
async function removeAll(paths: readonly string[]): Promise<void> {
  await Promise.all(paths.map((path) => Deno.remove(path).catch(() => {})));
}

/** One job per layer of an archive image: copied in when it has a path, else downloaded. */
function layerJobs(layers: ArchiveLayer[], manifest: ImageManifest, source: Source): BlobJob[] {
  return layers.map((l, index): BlobJob => ({
    digest: l.digest,
    size: l.size,
    path: l.path,
    descriptor: manifest.layers[index],
    client: source.client,
    index,
  }));
}

/** The config of an early start shows what the manifest could not: the usual path takes over. */
class EarlyStartAbandoned extends Error {}

/**
 * A docker-archive of one image chosen from an index, its layers requested while its config is
 * still being fetched (a round trip sooner). Taken only when the manifest alone decides every
 * blob of the archive (no zstd or foreign layers, image media types); the config entry is
 * filled from the store once the config is verified, and the config's checks (digest, diff_ids
 * against the layers) pass before the archive is committed. A layer the cache holds under its
 * diff_id (known from the config only) abandons the early start: nothing is committed and the
 * usual path runs. Undefined when the early start does not apply or was abandoned.
 */
async function pullDockerArchiveEarly(
  run: PullRun,
  source: Source,
  early: EarlyImage,
  open: (entries: AssemblyEntry[]) => Promise<Assembly>,
): Promise<PulledImage | undefined> {
  const { manifest } = early;
  const config = manifest.config;
  // zstd layers are converted and foreign ones described from the config: the usual path.
  const plain = manifest.layers.every((layer) =>
    layerCompression(layer.mediaType) !== "zstd" && !isForeignLayer(layer.mediaType) &&
    !layer.urls?.length
  );
  if (!plain || !earlyStartFits(manifest)) return undefined;
  const { store } = run;
  const layers: ArchiveLayer[] = await Promise.all(
    manifest.layers.map(async (layer) =>
      await store.use(layer.digest) === layer.size
        ? { digest: layer.digest, size: layer.size, path: store.blobPath(layer.digest) }
        : { digest: layer.digest, size: layer.size }
    ),
  );
  // The archive is laid out from the manifest: the config's entry is a blob filled later.
  const placeholder = new Uint8Array(config.size);
  const image: ArchiveImage = {
    repoTags: source.repoTags,
    configDigest: config.digest,
    configBytes: placeholder,
    layers,
  };
  const entries = dockerArchiveEntries(image).map((entry): AssemblyEntry =>
    entry.bytes === placeholder
      ? { name: entry.name, type: entry.type, size: entry.size, digest: config.digest }
      : entry
  );
  const jobs = layerJobs(layers, manifest, source);
  // Its own failure switch: abandoning stops these downloads, not the pull.
  const failure = new AbortController();
  const attempt: PullRun = {
    ...run,
    signal: AbortSignal.any([run.signal, failure.signal]),
    failure,
  };
  run.onEvent({
    type: "debug",
    message: `layers requested while config ${config.digest} is being fetched`,
  });
  const temporaries: string[] = [];
  try {
    await fillAndCommit(attempt, () => open(entries), jobs, new Set(), async (assembly) => {
      const resolved = await early.complete;
      for (const [index, layer] of layers.entries()) {
        if (layer.path) continue;
        // The same blob (an uncompressed layer, maybe just downloaded) is no other form.
        const same = await store.blobForDiffId(resolved.config.diffIds[index]);
        if (same && same.digest !== layer.digest) {
          throw new EarlyStartAbandoned(
            `the cache holds layer ${shortDigest(layer.digest)} by its diff_id`,
          );
        }
      }
      await fillConfig(run, assembly, resolved, attempt.signal, temporaries);
    });
  } catch (e) {
    if (!(e instanceof EarlyStartAbandoned)) throw e;
    run.onEvent({
      type: "debug",
      message: `early start abandoned: ${e.message}; starting again from the config`,
    });
    return undefined;
  } finally {
    await removeAll(temporaries);
  }
  return {
    reference: source.reference,
    repoTags: source.repoTags,
    imageId: config.digest,
    platforms: [(await early.complete).platform],
    layers: layers.length,
    bytes: layers.reduce((sum, l) => sum + l.size, 0),
  };
}

/**
 * What each layer of an OCI/Docker image becomes in a docker-archive, and where its bytes come
 * from: the cache, a layer with the same diff_id, or a download straight into the archive.
 * zstd layers are converted first (Docker 20.10 cannot load them), since their archived size is
 * only known afterwards.
 */
async function prepareDockerImage(
  run: PullRun,
  source: Source,
  resolved: Extract<ResolvedImage, { kind: "image" }>,
  reported: Set<string>,
): Promise<{ image: ArchiveImage; jobs: BlobJob[] }> {
  const { manifest, config, configBytes } = resolved;
  const { onEvent, store } = run;
  checkImageMediaTypes(resolved);
  const layers = await Promise.all(manifest.layers.map(async (layer, index) => {
    const diffId = config.diffIds[index];
    const archived: ArchiveLayer = { digest: layer.digest, size: layer.size };
    if (isForeignLayer(layer.mediaType) || (layer.urls?.length ?? 0) > 0) {
      onEvent({
        type: "notice",
        message: `Layer ${shortDigest(layer.digest)} is a foreign layer` +
          (layer.urls?.length ? ` (urls: ${layer.urls.join(", ")})` : "") +
          `; fetching it from the registry`,
      });
      archived.foreignSource = { diffId, descriptor: foreignDescriptor(layer) };
    }
    // zstd layers are archived uncompressed, whatever the cache holds (see convertZstdLayer).
    const zstd = layerCompression(layer.mediaType) === "zstd";
    if (!zstd && await store.use(layer.digest) === layer.size) {
      return { ...archived, path: store.blobPath(layer.digest) };
    }
    // A layer with the same content, e.g. from --import-tar or an earlier zstd conversion,
    // needs no download.
    const same = await store.blobForDiffId(diffId);
    if (same && !(zstd && same.digest === layer.digest)) {
      if (!zstd) {
        onEvent({
          type: "notice",
          message: `Layer ${shortDigest(layer.digest)} found in the cache by its diff_id`,
        });
      }
      return {
        ...archived,
        digest: same.digest,
        size: same.size,
        path: store.blobPath(same.digest),
      };
    }
    return archived;
  }));
  const zstd = manifest.layers
    .map((layer, index) => ({ layer, index }))
    .filter(({ layer, index }) =>
      layerCompression(layer.mediaType) === "zstd" && layers[index].path === undefined
    );
  await runAll(run, zstd, async ({ layer, index }) => {
    const stored = await verifiedStored(run, layer.digest, layer.size);
    const cached = stored !== undefined;
    const path = stored ??
      (await downloadBlob(source.client, layer, store, downloadOptions(run, index))).path;
    layers[index] = await convertZstdLayer(
      layers[index],
      path!,
      config.diffIds[index],
      store,
      onEvent,
      {
        maxBytes: run.policy.maxLayerBytes,
        label: layer.digest,
        signal: run.signal,
      },
    );
    // Converted in this run: its blob-done was reported by the download.
    if (!cached) reported.add(layers[index].digest);
  });
  const jobs = layerJobs(layers, manifest, source);
  return {
    image: { repoTags: source.repoTags, configDigest: manifest.config.digest, configBytes, layers },
    jobs,
  };
}

/** Refuses config and layer media types that are not an image's (before any layer download). */
function checkImageMediaTypes(resolved: Extract<ResolvedImage, { kind: "image" }>): void {
  const configType = resolved.manifest.config.mediaType;
  if (configType && configType !== MediaType.ociConfig && configType !== MediaType.dockerConfig) {
    throw new InvalidContentError(
      `not a container image: config media type ${JSON.stringify(configType.slice(0, 100))}`,
    );
  }
  for (const layer of resolved.manifest.layers) {
    if (layerCompression(layer.mediaType) === undefined) {
      throw new InvalidContentError(
        `unsupported layer media type ${JSON.stringify(layer.mediaType.slice(0, 100))}`,
      );
    }
  }
}

/** The descriptor `docker save` records in LayerSources. */
function foreignDescriptor(layer: Descriptor): Descriptor {
  const d: Descriptor = { mediaType: layer.mediaType, size: layer.size, digest: layer.digest };
  if (layer.urls) d.urls = layer.urls;
  return d;
}

/**
 * Docker 20.10 cannot load zstd layers: store the layer uncompressed, check
 * its diff_id on the way, and archive that instead.
 */
async function convertZstdLayer(
  layer: ArchiveLayer,
  zstdPath: string,
  diffId: string,
  store: BlobStore,
  onEvent: PullEventSink,
  limits: DecompressOptions,
): Promise<ArchiveLayer> {
  let path = store.blobPath(diffId);
  let size = await store.size(diffId);
  if (size === undefined) {
    const tempPath = store.tempPath("zstd");
    const result = await decompressLayer(zstdPath, "zstd", tempPath, limits);
    if (result.diffId !== diffId) {
      await Deno.remove(tempPath).catch(() => {});
      throw new InvalidContentError(
        `layer ${layer.digest} decompresses to ${result.diffId}, but the config says ${diffId}`,
      );
    }
    path = await store.commit(tempPath, diffId);
    size = result.size;
  }
  onEvent({
    type: "notice",
    message: `Layer ${shortDigest(layer.digest)} is zstd-compressed; ` +
      `stored uncompressed so that older docker load can read it`,
  });
  return { ...layer, digest: diffId, path, size };
}

/** A schema1 image's layers, in the store (their sizes are unknown until downloaded). */
interface Schema1Layers {
  layers: { digest: string; path: string; size: number; diffId: string }[];
  configBytes: Uint8Array;
  configDigest: string;
}

/** Schema1: layers into the store first, diff_ids computed, a config synthesised. */
async function fetchSchema1Layers(
  run: PullRun,
  source: Source,
  resolved: Extract<ResolvedImage, { kind: "schema1" }>,
): Promise<Schema1Layers> {
  const { onEvent, store } = run;
  onEvent({
    type: "notice",
    message: "Registry sent a schema1 manifest; building an image config from its history",
  });
  // Throwaway (empty) layers contribute nothing: no download, no diff_id.
  const real = resolved.manifest.layers.filter((l) => !l.throwaway);
  const layers = await runAll(run, real, async (layer, index) => {
    // Schema1 has no sizes; the digest check still covers every byte.
    const descriptor: Descriptor = { mediaType: "", digest: layer.blobSum, size: -1 };
    const path = await verifiedStored(run, layer.blobSum, -1) ??
      (await downloadBlob(source.client, descriptor, store, downloadOptions(run, index))).path;
    if (!path) throw new Error("schema1 layer was not stored");
    const { diffId } = await decompressLayer(path, await sniffCompression(path), undefined, {
      maxBytes: run.policy.maxLayerBytes,
      label: layer.blobSum,
      signal: run.signal,
    });
    const size = (await Deno.stat(path)).size;
    return { digest: layer.blobSum, path, size, diffId };
  });
  const configBytes = schema1Config(resolved.manifest, layers.map((l) => l.diffId));
  return { layers, configBytes, configDigest: digestOf(configBytes) };
}

async function prepareSchema1Image(
  run: PullRun,
  source: Source,
  resolved: Extract<ResolvedImage, { kind: "schema1" }>,
): Promise<{ image: ArchiveImage; jobs: BlobJob[] }> {
  const s1 = await fetchSchema1Layers(run, source, resolved);
  const layers: ArchiveLayer[] = s1.layers.map((l) => ({
    digest: l.digest,
    path: l.path,
    size: l.size,
  }));
  return {
    image: {
      repoTags: source.repoTags,
      configDigest: s1.configDigest,
      configBytes: s1.configBytes,
      layers,
    },
    jobs: s1.layers.map((l, index) => ({ digest: l.digest, size: l.size, path: l.path, index })),
  };
}

// ---------------------------------------------------------------------------------------------
// OCI layout (oci-archive, oci-dir)

/**
 * OCI layouts keep blobs as the registry sent them: one platform (its manifest), a subset (a
 * new index over the chosen manifests, unchanged), or `--all-platforms` (the index and every
 * manifest under it, byte for byte, attestations included).
 */
async function pullOciLayout(
  run: PullRun,
  sources: readonly Source[],
  platforms: readonly PlatformRequest[],
  open: (entries: AssemblyEntry[]) => Promise<Assembly>,
): Promise<PulledImage[]> {
  const layoutImages: OciLayoutImage[] = [];
  const documents = new Map<string, Uint8Array>();
  const blobs = new Map<string, Descriptor>();
  const jobs: BlobJob[] = [];
  const results: PulledImage[] = [];
  /** An early start's config (see {@link pullDockerArchiveEarly}). */
  let gate: ((assembly: Assembly) => Promise<void>) | undefined;
  const temporaries: string[] = [];
  const addBlob = (source: Source, d: Descriptor) => {
    const known = blobs.get(d.digest);
    if (known && known.size !== d.size) {
      throw new InvalidContentError(
        `${d.digest} is listed with two sizes (${known.size} and ${d.size})`,
      );
    }
    if (known || documents.has(d.digest)) return;
    blobs.set(d.digest, d);
    jobs.push({
      digest: d.digest,
      size: d.size,
      descriptor: d,
      client: source.client,
      index: jobs.length,
    });
  };
  for (const source of sources) {
    const tag = tagFor(source.ref);
    const names = { fullName: fullImageName(source.ref, tag), tag };
    if (platforms.length === 0) {
      const tree: ImageTree = await resolveTree(source.client, source.endpointRef, source.top);
      for (const [digest, bytes] of tree.documents) documents.set(digest, bytes);
      for (const d of tree.blobs.values()) addBlob(source, d);
      layoutImages.push({ descriptor: tree.top, ...names });
      run.onEvent({
        type: "notice",
        message: `${source.reference}: keeping the index and all ${tree.documents.size} ` +
          `manifests and indexes byte for byte`,
      });
      results.push({
        reference: source.reference,
        repoTags: source.repoTags,
        imageId: tree.top.digest,
        platforms: ["all"],
        layers: tree.blobs.size,
        bytes: [...tree.blobs.values()].reduce((sum, d) => sum + d.size, 0),
      });
      continue;
    }
    const resolved: ResolvedImage[] = [];
    if (sources.length === 1 && platforms.length === 1) {
      const early = await resolveImageEarly(
        source.client,
        source.endpointRef,
        platforms[0],
        run.onEvent,
        run.store,
        source.top,
      );
      if (early.kind === "early" && earlyStartFits(early.manifest)) {
        // The config is a blob of the layout, put in place once verified (see fillConfig).
        const { manifest } = early;
        documents.set(early.manifestDigest, early.manifestBytes);
        blobs.set(manifest.config.digest, manifest.config);
        for (const layer of manifest.layers) addBlob(source, layer);
        layoutImages.push({ descriptor: early.descriptor, ...names });
        results.push({
          reference: source.reference,
          repoTags: source.repoTags,
          imageId: manifest.config.digest,
          platforms: [early.platform],
          layers: manifest.layers.length,
          bytes: manifest.layers.reduce((sum, l) => sum + l.size, 0),
        });
        gate = async (assembly) =>
          fillConfig(run, assembly, await early.complete, run.signal, temporaries);
        run.onEvent({
          type: "debug",
          message: `layers requested while config ${manifest.config.digest} is being fetched`,
        });
        continue;
      }
      resolved.push(early.kind === "early" ? await early.complete : early);
    } else {
      for (const platform of platforms) {
        const image = await resolveAt(run, source, platform);
        if (resolved.some((r) => r.manifestDigest === image.manifestDigest)) continue;
        resolved.push(image);
      }
    }
    for (const image of resolved) {
      if (image.kind === "schema1") {
        const converted = await schema1AsOci(run, source, image);
        documents.set(converted.manifest.digest, converted.manifestBytes);
        documents.set(converted.configDigest, converted.configBytes);
        for (const l of converted.layers) {
          blobs.set(l.digest, { mediaType: l.mediaType, digest: l.digest, size: l.size });
          jobs.push({ digest: l.digest, size: l.size, path: l.path, index: jobs.length });
        }
        image.descriptor = { ...converted.manifest, platform: image.descriptor.platform };
        continue;
      }
      checkImageMediaTypes(image);
      documents.set(image.manifestDigest, image.manifestBytes);
      documents.set(image.manifest.config.digest, image.configBytes);
      for (const layer of image.manifest.layers) addBlob(source, layer);
    }
    let top = resolved[0].descriptor;
    if (platforms.length > 1) {
      const index = subsetIndex(resolved, source.top.manifest.mediaType);
      documents.set(index.descriptor.digest, index.bytes);
      top = index.descriptor;
    }
    layoutImages.push({ descriptor: top, ...names });
    const layers = resolved.flatMap((r) => r.kind === "image" ? r.manifest.layers : []);
    results.push({
      reference: source.reference,
      repoTags: source.repoTags,
      imageId: resolved.length === 1 && resolved[0].kind === "image"
        ? resolved[0].manifest.config.digest
        : top.digest,
      platforms: resolved.map((r) => r.platform),
      layers: layers.length,
      bytes: layers.reduce((sum, l) => sum + l.size, 0),
    });
  }
  // A blob that is also a document (one image's layer another's config) is written once, from
  // the document's verified bytes.
  const blobJobs = jobs.filter((job) => !documents.has(job.digest));
  // Stored blobs are copied in (hashed); the rest downloaded into place.
  for (const job of blobJobs) {
    if (job.path || !job.descriptor) continue;
    if (await run.store.use(job.digest) === job.size) job.path = run.store.blobPath(job.digest);
  }
  try {
    await fillAndCommit(
      run,
      () => open(ociLayoutEntries(layoutImages, { documents, blobs })),
      blobJobs,
      undefined,
      gate,
    );
  } finally {
    await removeAll(temporaries);
  }
  return results;
}

/**
 * A schema1 image in an OCI layout: its layers downloaded (their sizes and compression are only
 * known then), an OCI config synthesised from its history, and an OCI manifest over them.
 */
async function schema1AsOci(
  run: PullRun,
  source: Source,
  resolved: Extract<ResolvedImage, { kind: "schema1" }>,
): Promise<{
  manifest: Descriptor;
  manifestBytes: Uint8Array;
  configDigest: string;
  configBytes: Uint8Array;
  layers: { digest: string; size: number; path: string; mediaType: string }[];
}> {
  const s1 = await fetchSchema1Layers(run, source, resolved);
  const layers = await Promise.all(s1.layers.map(async (l) => {
    const compression = await sniffCompression(l.path);
    const mediaType = compression === "gzip"
      ? MediaType.ociLayerGzip
      : compression === "zstd"
      ? MediaType.ociLayerZstd
      : MediaType.ociLayer;
    return { digest: l.digest, size: l.size, path: l.path, mediaType };
  }));
  const manifestBytes = new TextEncoder().encode(JSON.stringify({
    schemaVersion: 2,
    mediaType: MediaType.ociManifest,
    config: {
      mediaType: MediaType.ociConfig,
      digest: s1.configDigest,
      size: s1.configBytes.byteLength,
    },
    layers: layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.size })),
  }));
  return {
    manifest: {
      mediaType: MediaType.ociManifest,
      digest: digestOf(manifestBytes),
      size: manifestBytes.byteLength,
    },
    manifestBytes,
    configDigest: s1.configDigest,
    configBytes: s1.configBytes,
    layers,
  };
}

// ---------------------------------------------------------------------------------------------
// rootfs

/**
 * A root filesystem: every layer verified in the store first, then flattened in order
 * (lib/writers/rootfs.ts) into a tar written to a hidden file beside the destination (renamed
 * when complete) or to standard output.
 */
async function pullRootfs(
  run: PullRun,
  source: Source,
  platform: PlatformRequest,
  options: PullOptions,
  output: string,
): Promise<PulledImage[]> {
  const resolved = await resolveAt(run, source, platform);
  let layers: RootfsLayer[];
  let imageId: string;
  if (resolved.kind === "schema1") {
    const s1 = await fetchSchema1Layers(run, source, resolved);
    layers = await Promise.all(s1.layers.map(async (l) => ({
      path: l.path,
      compression: await sniffCompression(l.path),
      diffId: l.diffId,
      label: l.digest,
    })));
    imageId = s1.configDigest;
  } else {
    checkImageMediaTypes(resolved);
    const { manifest, config } = resolved;
    const paths = await runAll(run, manifest.layers, async (layer, index) => {
      const stored = await verifiedStored(run, layer.digest, layer.size);
      if (stored) {
        run.onEvent({ type: "blob-done", digest: layer.digest, size: layer.size, reused: true });
        return stored;
      }
      const result = await downloadBlob(
        source.client,
        layer,
        run.store,
        downloadOptions(run, index),
      );
      return result.path!;
    });
    layers = manifest.layers.map((layer, index) => ({
      path: paths[index],
      compression: layerCompression(layer.mediaType)!,
      diffId: config.diffIds[index],
      label: layer.digest,
    }));
    imageId = manifest.config.digest;
  }
  const rootfsOptions = { signal: run.signal, maxLayerBytes: run.policy.maxLayerBytes };
  let summary;
  if (options.output === "-") {
    summary = await writeRootfs(layers, options.stdout!, rootfsOptions);
  } else {
    summary = await writeRootfsFile(output, layers, rootfsOptions);
  }
  run.onEvent({
    type: "notice",
    message: `Flattened ${layers.length} layers into ${summary.entries} entries`,
  });
  return [{
    reference: source.reference,
    repoTags: source.repoTags,
    imageId,
    platforms: [resolved.platform],
    layers: layers.length,
    bytes: summary.tarBytes,
  }];
}

/** Writes a root filesystem tar beside `destination`, renamed onto it when complete. */
async function writeRootfsFile(
  destination: string,
  layers: RootfsLayer[],
  options: { signal: AbortSignal; maxLayerBytes?: number },
): Promise<Awaited<ReturnType<typeof writeRootfs>>> {
  await removeAbandonedArchives(destination);
  const { dir } = splitPath(destination);
  const temp = temporaryPath(destination);
  let file: Deno.FsFile;
  let holder: Deno.FsFile;
  try {
    file = await Deno.open(temp, { write: true, createNew: true });
    // A second handle holds the lock: the first is closed by writeRootfs.
    holder = await Deno.open(temp, { read: true });
    await holder.lock(true);
  } catch (e) {
    throw localIoError(e, `cannot write to ${dir}`);
  }
  try {
    // The file itself, not its stream: a stream may keep the blocks it is given, a file does
    // not, so one output block serves the whole tar (peak RSS 158 MB -> 100 MB, nginx-like).
    const summary = await writeRootfs(layers, file, options);
    await Deno.rename(temp, destination);
    return summary;
  } catch (e) {
    await Deno.remove(temp).catch(() => {});
    if (e instanceof ImgpullError) throw e;
    throw localIoError(e, `cannot write ${destination}`);
  } finally {
    try {
      holder.close();
    } catch { /* closed */ }
  }
}

/** `sha256:0123456789ab` for messages. */
export function shortDigest(digest: string): string {
  const d = parseDigest(digest);
  return `${d.algorithm}:${d.hex.slice(0, 12)}`;
}

export { formatPlatform };
