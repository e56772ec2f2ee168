/**
 * The pull pipeline: reference → registry → platform → verified blobs →
 * docker-archive. Everything here reports progress as events and failures
 * as {@link ImgpullError}s; nothing prints or exits.
 *
 * @module
 */
import type { EnvReader } from "./auth/credentials.ts";
import { connect, type ConnectOptions } from "./connect.ts";
import { decompressLayer, type DecompressOptions, sniffCompression } from "./compression.ts";
import { digestOf, parseDigest } from "./digest.ts";
import { InvalidContentError, LocalIoError, NotFoundError, UsageError } from "./errors.ts";
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
import type { Descriptor } from "./manifest.ts";
import { schema1Config } from "./manifest.ts";
import { isForeignLayer, layerCompression, MediaType } from "./media_types.ts";
import { formatPlatform, hostPlatform, parsePlatform } from "./platform.ts";
import { familiarName, isLoopbackRegistry, parseReference, type Reference } from "./reference.ts";
import type { RegistryClient } from "./registry.ts";
import {
  listPlatforms,
  type PlatformEntry,
  type PlatformRequest,
  type ResolvedImage,
  resolveImage,
} from "./resolve.ts";
import { Semaphore } from "./semaphore.ts";
import { BlobStore, CacheEntryCorruptError, localIoError } from "./store.ts";
import { ArchiveFile, type ArchiveLayer, writeDockerArchive } from "./writers/docker_archive.ts";

/** What to pull and where. */
export interface PullOptions extends ConnectOptions {
  reference: string;
  /**
   * `os/arch[/variant]` (enforced); default `DOCKER_DEFAULT_PLATFORM` from `env` (enforced),
   * else the host's, as Docker picks it (a preference: see {@link PlatformRequest}).
   */
  platform?: string;
  /** Archive path; default {@link defaultOutputName}. */
  output?: string;
  /** `--tag NAME[:TAG]`: the name the archive loads as; default the reference's. */
  tag?: string;
  /** Layers downloaded at once (default 3). */
  maxConcurrentDownloads?: number;
  /** HTTP requests streaming blob data at once, across all layers (default 16). */
  connections?: number;
  /** Largest Range segment of a blob, in bytes (default 8 MiB). */
  maxSegmentBytes?: number;
  /** `--max-layer-size`: largest layer, compressed or not (see FetchPolicy.maxLayerBytes). */
  maxLayerBytes?: number;
  /**
   * The shared blob cache (see {@link defaultCacheDir}); without one, blobs
   * go to a scratch directory beside the output that is removed afterwards.
   */
  cacheDir?: string;
}

/** What a pull produced. */
export interface PullResult {
  output: string;
  /** `sha256:<hex>` of the config: the ID docker shows. */
  imageId: string;
  repoTags: string[];
  platform: string;
  layers: number;
  /** Bytes of layer data in the archive. */
  bytes: number;
}

/**
 * The archive name the old `docker_pull.py` used (`library_nginx.tar` for
 * `nginx`): the repository path with `/` → `_`, plus `_<tag>` for a tag
 * other than `latest`, or `_sha256-<12 hex>` for a pull by digest only.
 * It never contains `:` (which breaks `podman load`).
 */
export function defaultOutputName(ref: Reference): string {
  let name = ref.repository.replaceAll("/", "_");
  if (ref.tag && ref.tag !== "latest") name += `_${ref.tag}`;
  else if (!ref.tag && ref.digest) name += `_${ref.digest.replace(":", "-").slice(0, 19)}`;
  return `${name.replaceAll(":", "_")}.tar`;
}

/**
 * The `RepoTags` entry: the familiar name with the tag (`nginx:latest`,
 * `quay.io/org/app:v1`). A pull by digest alone has no tag, so the tag is
 * `sha256-<full hex>` (as cosign names digests): valid, and the digest can
 * be read back from it. An IPv6 registry gets a name loaders accept (see
 * {@link loadableRegistry}).
 */
export function repoTagFor(ref: Reference): string {
  const tag = ref.tag ?? `${ref.digest!.replace(":", "-")}`;
  const registry = loadableRegistry(ref.registry);
  const name = registry === ref.registry ? familiarName(ref) : `${registry}/${ref.repository}`;
  return `${name}:${tag}`;
}

/**
 * docker 20.10, podman 4.3 and containerd 1.6 refuse a bracketed IPv6 host in an image name
 * (`invalid reference format`). `[::1]:PORT` is tagged as `localhost:PORT` (the same
 * registry); any other IPv6 address as `ipv6-<address with "-" for ":">[:PORT]`, a host name
 * that cannot collide with a real one. Other registries are kept as they are.
 *
 * @example
 * ```ts
 * loadableRegistry("[::1]:5000"); // "localhost:5000"
 * loadableRegistry("[fd00::7]:5000"); // "ipv6-fd00--7:5000"
 * ```
 */
export function loadableRegistry(registry: string): string {
  if (!registry.startsWith("[")) return registry;
  const close = registry.indexOf("]");
  const address = registry.slice(1, close);
  const port = registry.slice(close + 1);
  if (isLoopbackRegistry(registry)) return `localhost${port}`;
  return `ipv6-${address.replaceAll(":", "-").replaceAll(".", "-")}${port}`;
}

/**
 * `--tag NAME[:TAG]`: the RepoTags entry the user chose (the tag defaults to `latest`).
 * A digest has no place in a tag.
 */
export function repoTagFromName(name: string): string {
  let ref: Reference;
  try {
    ref = parseReference(name);
  } catch (e) {
    throw new UsageError(`invalid --tag ${JSON.stringify(name)}`, { cause: e });
  }
  if (ref.digest) throw new UsageError(`--tag takes NAME[:TAG], not a digest (${name})`);
  return repoTagFor({ ...ref, tag: ref.tag ?? "latest" });
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

/** Lists the platforms of an image without pulling it. */
export async function listImagePlatforms(
  reference: string,
  options: ConnectOptions = {},
): Promise<PlatformEntry[]> {
  const ref = parseReference(reference);
  const client = await connect(ref, options);
  try {
    return await listPlatforms(client, ref);
  } finally {
    client.close();
  }
}

/** Checks the destination before any download: not a directory, in a writable directory. */
async function checkDestination(output: string): Promise<string> {
  try {
    const info = await Deno.stat(output);
    if (info.isDirectory) {
      throw new LocalIoError(`output path ${output} is a directory`, {
        hint: "give a file name with -o, e.g. -o image.tar",
      });
    }
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw localIoError(e, `cannot use ${output}`);
  }
  const slash = output.lastIndexOf("/");
  const dir = slash > 0 ? output.slice(0, slash) : slash === 0 ? "/" : ".";
  // Fail before downloading anything when the archive could not be written.
  const probe = `${dir}/.imgpull-probe-${crypto.randomUUID().slice(0, 8)}`;
  try {
    await Deno.writeFile(probe, new Uint8Array(0), { createNew: true });
    await Deno.remove(probe);
  } catch (e) {
    throw localIoError(e, `cannot write to ${dir}`);
  }
  return dir;
}

/** Pulls one image for one platform into a docker-archive. */
export async function pull(options: PullOptions): Promise<PullResult> {
  const ref = parseReference(options.reference);
  const platform = requestedPlatform(options.platform, options.env);
  const repoTags = [options.tag ? repoTagFromName(options.tag) : repoTagFor(ref)];
  const concurrency = options.maxConcurrentDownloads ?? 3;
  if (!Number.isInteger(concurrency) || concurrency < 1) {
    throw new UsageError(`--max-concurrent-downloads must be a positive integer`);
  }
  const output = options.output ?? defaultOutputName(ref);
  const outputDir = await checkDestination(output);
  const onEvent = options.onEvent ?? (() => {});
  if (!options.tag && loadableRegistry(ref.registry) !== ref.registry) {
    onEvent({
      type: "notice",
      message: `docker, podman and containerd cannot load a name with an IPv6 address; ` +
        `the image is tagged ${repoTags[0]} (choose another name with --tag)`,
    });
  }

  // One signal for everything: the caller's, or ours when a sibling download fails.
  const failure = new AbortController();
  const signal = options.signal
    ? AbortSignal.any([options.signal, failure.signal])
    : failure.signal;
  // The shared cache, or a scratch directory beside the output (removed afterwards).
  const store = options.cacheDir
    ? await BlobStore.open(options.cacheDir)
    : await BlobStore.createIn(outputDir);
  let client: RegistryClient | undefined;
  try {
    client = await connect(ref, { ...options, signal });
    const connections = options.connections ?? (concurrency === 1 ? 1 : DEFAULT_CONNECTIONS);
    const resolved = await resolveImage(client, ref, platform, onEvent, store);
    const run: LayerRun = {
      client,
      store,
      layers: new Semaphore(concurrency),
      policy: fetchPolicy({
        // "1" keeps the old script's meaning, sequential: one connection, one layer.
        connections,
        maxSegmentBytes: options.maxSegmentBytes,
        retries: options.retries,
        stallTimeoutMs: options.stallTimeoutMs,
        maxLayerBytes: options.maxLayerBytes,
      }),
      onEvent,
      signal,
      failure,
    };
    const image = resolved.kind === "image"
      ? await pullImageLayers(run, resolved, output, repoTags)
      : await pullSchema1Layers(run, resolved, output, repoTags);
    return {
      output,
      imageId: image.configDigest,
      repoTags,
      platform: resolved.platform,
      layers: image.layers.length,
      bytes: image.layers.reduce((sum, l) => sum + l.size, 0),
    };
  } finally {
    client?.close();
    if (!store.persistent) await store.remove();
  }
}

/** What the layer downloads of one pull share. */
interface LayerRun {
  client: RegistryClient;
  store: BlobStore;
  /** Layers in progress at once (`--max-concurrent-downloads`). */
  layers: Semaphore;
  policy: FetchPolicy;
  onEvent: PullEventSink;
  signal: AbortSignal;
  /** Aborted by the first failing layer. */
  failure: AbortController;
}

/** How layer `index` of this pull downloads; `output` is its place in the archive, if known. */
function downloadOptions(run: LayerRun, index: number, output?: BlobSink): DownloadOptions {
  return { policy: run.policy, signal: run.signal, onEvent: run.onEvent, index, output };
}

interface FetchedImage {
  configDigest: string;
  configBytes: Uint8Array;
  layers: ArchiveLayer[];
}

/**
 * Runs one task per item under the semaphore. The first failure aborts the
 * rest, and all tasks are settled before returning, so no transfer outlives
 * the pull (its temporary files are about to be removed).
 */
async function runAll<T, R>(
  run: LayerRun,
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
 * Pulls the layers of an OCI/Docker image straight into the archive: every
 * member's size is known up front, so the archive is laid out first and
 * each download writes its bytes at their final offset (and into the cache,
 * when there is one). Layers already stored are copied in; zstd layers are
 * converted first, since their archived size is only known afterwards.
 */
async function pullImageLayers(
  run: LayerRun,
  resolved: Extract<ResolvedImage, { kind: "image" }>,
  output: string,
  repoTags: string[],
): Promise<FetchedImage> {
  const { manifest, config, configBytes } = resolved;
  const { onEvent, store } = run;
  const configType = manifest.config.mediaType;
  if (configType && configType !== MediaType.ociConfig && configType !== MediaType.dockerConfig) {
    throw new InvalidContentError(
      `not a container image: config media type ${JSON.stringify(configType.slice(0, 100))}`,
    );
  }
  for (const layer of manifest.layers) {
    if (layerCompression(layer.mediaType) === undefined) {
      throw new InvalidContentError(
        `unsupported layer media type ${JSON.stringify(layer.mediaType.slice(0, 100))}`,
      );
    }
  }
  // What each layer becomes in the archive, and where its bytes come from.
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
  // Converted in this run: their blob-done was reported by the download.
  const converted = new Set<string>();
  await runAll(run, zstd, async ({ layer, index }) => {
    const cached = await store.use(layer.digest) === layer.size;
    const path = cached
      ? store.blobPath(layer.digest)
      : (await downloadBlob(run.client, layer, store, downloadOptions(run, index))).path;
    layers[index] = await convertZstdLayer(
      layers[index],
      path!,
      config.diffIds[index],
      store,
      onEvent,
      { maxBytes: run.policy.maxLayerBytes, label: layer.digest, signal: run.signal },
    );
    if (!cached) converted.add(layers[index].digest);
  });

  const archive = await ArchiveFile.create(output, {
    repoTags,
    configDigest: manifest.config.digest,
    configBytes,
    layers,
  });
  try {
    // Each distinct layer once: an image may list the same blob twice.
    const distinct = [...new Map(layers.map((l, index) => [l.digest, { l, index }])).values()];
    await runAll(run, distinct, async ({ l, index }) => {
      if (l.path) {
        if (!converted.has(l.digest)) {
          onEvent({ type: "blob-done", digest: l.digest, size: l.size, reused: true });
        }
        try {
          await archive.copyIn(l.digest, l.path, { signal: run.signal });
          return;
        } catch (e) {
          // A damaged cache entry (evicted by copyIn) is fetched again into its place; a
          // layer archived in another form (found by diff_id, converted from zstd) cannot be.
          const descriptor = manifest.layers[index];
          if (!(e instanceof CacheEntryCorruptError) || l.digest !== descriptor.digest) throw e;
          onEvent({
            type: "warning",
            message: `cached layer ${shortDigest(l.digest)} is damaged (its content does not ` +
              `match its digest); removed from the cache and downloading it again`,
          });
          const options = downloadOptions(run, index, {
            path: archive.path,
            offset: archive.blobOffset(l.digest),
          });
          const result = await downloadBlob(run.client, descriptor, store, options);
          if (!result.inOutput) {
            await archive.copyIn(l.digest, result.path!, { signal: run.signal });
          }
          return;
        }
      }
      const descriptor = manifest.layers[index];
      const options = downloadOptions(run, index, {
        path: archive.path,
        offset: archive.blobOffset(l.digest),
      });
      let result: DownloadedBlob;
      try {
        result = await downloadBlob(run.client, descriptor, store, options);
      } catch (e) {
        // Registries may refuse to serve foreign layers: their own URLs are the other source.
        if (!(e instanceof NotFoundError) || !descriptor.urls?.length) throw e;
        result = await downloadForeignLayer(descriptor, store, options, {
          registryUrl: run.client.baseUrl,
          registryError: e,
        });
      }
      if (!result.inOutput) await archive.copyIn(l.digest, result.path!, { signal: run.signal });
    });
    await archive.commit();
  } catch (e) {
    await archive.discard();
    throw e;
  }
  return { configDigest: manifest.config.digest, configBytes, layers };
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

/** Schema1: layers into the store first (their sizes are unknown), then the archive. */
async function pullSchema1Layers(
  run: LayerRun,
  resolved: Extract<ResolvedImage, { kind: "schema1" }>,
  output: string,
  repoTags: string[],
): Promise<FetchedImage> {
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
    const { path } = await downloadBlob(run.client, descriptor, store, downloadOptions(run, index));
    if (!path) throw new Error("schema1 layer was not stored");
    const { diffId } = await decompressLayer(path, await sniffCompression(path), undefined, {
      maxBytes: run.policy.maxLayerBytes,
      label: layer.blobSum,
      signal: run.signal,
    });
    const size = (await Deno.stat(path)).size;
    return { layer: { digest: layer.blobSum, path, size } as ArchiveLayer, diffId };
  });
  const configBytes = schema1Config(resolved.manifest, layers.map((l) => l.diffId));
  const image = {
    configDigest: digestOf(configBytes),
    configBytes,
    layers: layers.map((l) => l.layer),
  };
  await writeDockerArchive(output, { repoTags, ...image });
  return image;
}

/** `sha256:0123456789ab` for messages. */
export function shortDigest(digest: string): string {
  const d = parseDigest(digest);
  return `${d.algorithm}:${d.hex.slice(0, 12)}`;
}

export { formatPlatform };
