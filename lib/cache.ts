/**
 * The shared blob cache around {@link BlobStore}: where it lives by default,
 * how big it is, pruning it, and filling it from an existing docker-archive
 * (`--import-tar`), whose layers are then found by their diff_id.
 *
 * @module
 */
import type { EnvReader } from "./auth/credentials.ts";
import { decompressLayer, sniffCompression } from "./compression.ts";
import { DigestHasher } from "./digest.ts";
import { ImgpullError, InterruptedError, InvalidContentError, UsageError } from "./errors.ts";
import type { PullEventSink } from "./events.ts";
import { BlobStore, localIoError, secureCacheDir } from "./store.ts";
import { listTar, readTarEntry, type TarEntry } from "./tar_reader.ts";

/**
 * The platform's cache location: `$XDG_CACHE_HOME/imgpull` or
 * `~/.cache/imgpull` on Linux, `~/Library/Caches/imgpull` on macOS,
 * `%LOCALAPPDATA%\imgpull\cache` on Windows. Undefined when no home is known.
 */
export function defaultCacheDir(
  env: EnvReader,
  os: typeof Deno.build.os = Deno.build.os,
): string | undefined {
  if (os === "windows") {
    const local = env.get("LOCALAPPDATA");
    return local ? `${local}\\imgpull\\cache` : undefined;
  }
  const home = env.get("HOME");
  if (os === "darwin") return home ? `${home}/Library/Caches/imgpull` : undefined;
  const xdg = env.get("XDG_CACHE_HOME");
  if (xdg && xdg.startsWith("/")) return `${xdg}/imgpull`;
  return home ? `${home}/.cache/imgpull` : undefined;
}

/** Totals of a cache directory. */
export interface CacheInfo {
  root: string;
  blobs: number;
  blobBytes: number;
  partials: number;
  partialBytes: number;
}

/**
 * Regular files under `dir`, never following a symlink: `readDir` reports
 * links as links, the starting directory is checked with `lstat`, and each
 * file's details come from `lstat` too.
 */
async function* walkFiles(dir: string): AsyncGenerator<{ path: string; info: Deno.FileInfo }> {
  let entries: Deno.DirEntry[];
  try {
    if (!(await Deno.lstat(dir)).isDirectory) return;
    entries = await Array.fromAsync(Deno.readDir(dir));
  } catch {
    return;
  }
  for (const entry of entries) {
    const path = `${dir}/${entry.name}`;
    if (entry.isDirectory) yield* walkFiles(path);
    else if (entry.isFile) {
      try {
        const info = await Deno.lstat(path);
        if (info.isFile) yield { path, info };
      } catch { /* removed meanwhile */ }
    }
  }
}

/** Counts blobs and partial downloads in the cache at `root`. */
export async function cacheInfo(root: string): Promise<CacheInfo> {
  await secureCacheDir(root, { create: false });
  const info: CacheInfo = { root, blobs: 0, blobBytes: 0, partials: 0, partialBytes: 0 };
  for await (const { info: file } of walkFiles(`${root}/blobs`)) {
    info.blobs++;
    info.blobBytes += file.size;
  }
  for await (const { path, info: file } of walkFiles(`${root}/partial`)) {
    if (path.endsWith(".json")) continue;
    info.partials++;
    info.partialBytes += file.size;
  }
  return info;
}

/**
 * Removes blobs (and partial downloads) not used for `olderThanMs`, or
 * everything when it is undefined. Blobs being downloaded by a running pull
 * (their lock is held) are left alone. A cache another user could tamper
 * with is refused, and symlinks are never followed.
 */
export async function pruneCache(
  root: string,
  olderThanMs?: number,
): Promise<{ removed: number; bytes: number }> {
  await secureCacheDir(root, { create: false });
  const cutoff = olderThanMs === undefined ? Infinity : Date.now() - olderThanMs;
  let removed = 0, bytes = 0;
  // Manifests (by digest), tags and what registries' /v2/ said are small and remembered the same
  // way: their use time is refreshed on every read.
  for (const area of ["blobs", "partial", "diffids", "manifests", "tags", "registries"]) {
    for await (const { path, info } of walkFiles(`${root}/${area}`)) {
      const used = info.mtime?.getTime() ?? 0;
      if (olderThanMs !== undefined && used > cutoff) continue;
      if (area === "partial" && await isLocked(root, path)) continue;
      try {
        await Deno.remove(path);
        removed++;
        if (area === "blobs" || area === "partial" || area === "manifests") bytes += info.size;
      } catch { /* removed meanwhile */ }
    }
  }
  if (olderThanMs === undefined) {
    for await (const { path } of walkFiles(`${root}/tmp`)) await Deno.remove(path).catch(() => {});
  }
  return { removed, bytes };
}

/** True when a running pull holds the lock of the partial blob at `partialPath`. */
async function isLocked(root: string, partialPath: string): Promise<boolean> {
  const relative = partialPath.slice(`${root}/partial/`.length).replace(/\.json$/, "");
  const lockPath = `${root}/locks/${relative}.lock`;
  try {
    if (!(await Deno.lstat(lockPath)).isFile) return false;
    using file = await Deno.open(lockPath, { read: true });
    const free = await file.tryLock(true);
    return !free;
  } catch {
    return false;
  }
}

/** Options of {@link importTar}. */
export interface ImportOptions {
  /** Stops the import (between members and during copies) with its reason. */
  signal?: AbortSignal;
}

/** Throws the abort reason when it is an {@link ImgpullError}, else an {@link InterruptedError}. */
function checkAborted(signal: AbortSignal | undefined): void {
  if (!signal?.aborted) return;
  throw signal.reason instanceof ImgpullError ? signal.reason : new InterruptedError();
}

/**
 * Fills the cache from a docker-archive (from `docker save` or imgpull):
 * every layer is stored by its own digest and recorded under its diff_id,
 * so a later pull of an image whose config lists that diff_id writes it
 * without downloading. The config is stored too. Returns the layers imported.
 * A malformed tar is an {@link InvalidContentError}; an abort via
 * `options.signal` rejects with the signal's reason.
 */
export async function importTar(
  root: string,
  tarPath: string,
  onEvent: PullEventSink = () => {},
  options: ImportOptions = {},
): Promise<{ layers: number; bytes: number }> {
  const { signal } = options;
  checkAborted(signal);
  const store = await BlobStore.open(root);
  let file: Deno.FsFile;
  try {
    file = await Deno.open(tarPath, { read: true });
  } catch (e) {
    throw localIoError(e, `cannot read ${tarPath}`);
  }
  try {
    const entries = new Map((await listTar(file, { signal })).map((e) => [e.name, e]));
    const manifestEntry = entries.get("manifest.json");
    if (!manifestEntry) {
      throw new UsageError(`${tarPath} is not a docker-archive (no manifest.json)`);
    }
    let manifest: { Layers?: unknown; Config?: unknown }[];
    try {
      manifest = JSON.parse(new TextDecoder().decode(await readTarEntry(file, manifestEntry)));
    } catch (e) {
      throw new InvalidContentError(`${tarPath}: manifest.json is not valid JSON`, { cause: e });
    }
    let layers = 0, bytes = 0;
    const seen = new Set<string>();
    for (const image of Array.isArray(manifest) ? manifest : []) {
      const names = [
        ...(typeof image.Config === "string" ? [image.Config] : []),
        ...(Array.isArray(image.Layers) ? image.Layers : []),
      ];
      for (const name of names) {
        checkAborted(signal);
        const entry = typeof name === "string" ? entries.get(name) : undefined;
        if (!entry || seen.has(entry.name)) continue;
        seen.add(entry.name);
        const isConfig = name === image.Config;
        const digest = await copyIntoStore(store, file, entry, signal);
        if (isConfig) continue;
        const path = store.blobPath(digest);
        const { diffId } = await decompressLayer(path, await sniffCompression(path));
        checkAborted(signal);
        await store.recordDiffId(diffId, digest);
        layers++;
        bytes += entry.size;
        onEvent({
          type: "debug",
          message: `imported ${entry.name} as ${digest} (diff_id ${diffId})`,
        });
      }
    }
    return { layers, bytes };
  } finally {
    file.close();
  }
}

/** Copies one tar member into the store under its content digest. */
async function copyIntoStore(
  store: BlobStore,
  file: Deno.FsFile,
  entry: TarEntry,
  signal?: AbortSignal,
): Promise<string> {
  const temp = store.tempPath("import");
  const hasher = new DigestHasher("sha256");
  try {
    using out = await Deno.open(temp, { write: true, createNew: true, mode: 0o600 });
    await file.seek(entry.offset, Deno.SeekMode.Start);
    const buffer = new Uint8Array(1024 * 1024);
    let left = entry.size;
    while (left > 0) {
      checkAborted(signal);
      const n = await file.read(buffer.subarray(0, Math.min(buffer.byteLength, left)));
      if (n === null) throw new InvalidContentError(`truncated tar member ${entry.name}`);
      const chunk = buffer.subarray(0, n);
      hasher.update(chunk);
      let written = 0;
      while (written < n) written += await out.write(chunk.subarray(written));
      left -= n;
    }
  } catch (e) {
    await Deno.remove(temp).catch(() => {});
    throw localIoError(e, `cannot import ${entry.name}`);
  }
  const digest = hasher.digest();
  if (await store.use(digest) === entry.size) await Deno.remove(temp);
  else await store.commit(temp, digest);
  return digest;
}
