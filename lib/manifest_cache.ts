/**
 * What a warm pull remembers between runs, in the private cache directory, so that it needs only
 * the round trips that can change its answer (the token and the tag):
 *
 * ```
 * manifests/sha256/<hex>     a manifest or index as a registry sent it: its content type, a
 *                            newline, then the bytes whose sha256 is <hex> (hashed again on read)
 * registries/sha256/<hex>    JSON: what the `/v2/` ping of one registry endpoint said (the scheme
 *                            it answered on, its auth challenge's scheme, realm and service)
 * tags/sha256/<hex>          text: the digest a tag of a repository last resolved to (a hint)
 * ```
 *
 * Entries are named by the sha256 of what they describe, never by registry text. Manifests are
 * immutable and content-addressed, so a cached one is as good as a fetched one once its hash
 * checks out; a damaged entry is removed and treated as missing. The registry and tag entries
 * are hints: a wrong one costs a round trip (a 401 brings the real challenge, a moved tag is
 * fetched again), never correctness. Every file is written to a fresh temporary file
 * (`createNew`, `0600`) and renamed into place; reads refuse anything but a regular file.
 * Failures to write are ignored: the memory is an optimisation.
 *
 * @module
 */
import { digestOf, isDigest } from "./digest.ts";
import { MAX_MANIFEST_BYTES } from "./manifest.ts";
import { secureCacheDir } from "./store.ts";

/** What a registry endpoint's `/v2/` answered. */
export interface EndpointMemory {
  /** `scheme://host[:port]` the registry answered on. */
  base: string;
  /** The challenge it sent, or undefined when `/v2/` needed no authentication. */
  challenge?: { scheme: "bearer" | "basic"; realm?: string; service?: string };
}

/** A manifest read back from the cache, its digest checked. */
export interface CachedManifest {
  bytes: Uint8Array<ArrayBuffer>;
  contentType: string | null;
  digest: string;
}

/** Largest remembered endpoint record: a realm and a service fit easily. */
const MAX_MEMORY_BYTES = 8 * 1024;
/** Content types are short ASCII tokens; anything else is not stored. */
const CONTENT_TYPE = /^[\x21-\x7e][\x20-\x7e]{0,199}$/;

/** Checked roots, so that a process checks each cache directory once. */
const checked = new Map<string, Promise<void>>();

/** The manifest and endpoint memory of one cache directory. */
export class ManifestCache {
  private constructor(readonly root: string) {}

  /** Opens the cache at `root` (checked as {@link secureCacheDir} does, created if missing). */
  static async open(root: string): Promise<ManifestCache> {
    let check = checked.get(root);
    if (!check) {
      check = secureCacheDir(root, { create: true });
      checked.set(root, check);
      check.catch(() => checked.delete(root));
    }
    await check;
    return new ManifestCache(root);
  }

  #path(area: string, hex: string): string {
    return `${this.root}/${area}/sha256/${hex}`;
  }

  /**
   * The manifest stored as `digest`, if any and intact. The bytes are hashed again: an entry
   * whose content no longer matches its name is removed and reported as missing.
   */
  async getManifest(digest: string): Promise<CachedManifest | undefined> {
    if (!isDigest(digest) || !digest.startsWith("sha256:")) return undefined;
    const path = this.#path("manifests", digest.slice(7));
    const raw = await readRegular(path, MAX_MANIFEST_BYTES + 256);
    if (!raw) return undefined;
    const newline = raw.indexOf(0x0a);
    if (newline >= 0) {
      const type = new TextDecoder().decode(raw.subarray(0, newline));
      const bytes = raw.slice(newline + 1);
      if ((type === "" || CONTENT_TYPE.test(type)) && digestOf(bytes) === digest) {
        await touch(path);
        return { bytes, contentType: type === "" ? null : type, digest };
      }
    }
    await Deno.remove(path).catch(() => {});
    return undefined;
  }

  /** Stores manifest bytes under their own sha256 (which is returned). */
  async putManifest(bytes: Uint8Array, contentType: string | null): Promise<string> {
    const digest = digestOf(bytes);
    if (bytes.byteLength > MAX_MANIFEST_BYTES) return digest;
    const type = contentType && CONTENT_TYPE.test(contentType) ? contentType : "";
    const path = this.#path("manifests", digest.slice(7));
    if (await isRegularFile(path)) return digest;
    const header = new TextEncoder().encode(`${type}\n`);
    const data = new Uint8Array(header.byteLength + bytes.byteLength);
    data.set(header);
    data.set(bytes, header.byteLength);
    await this.#write(path, data);
    return digest;
  }

  /** What the `/v2/` ping of endpoint `key` said last time, if anything usable. */
  async getEndpoint(key: string): Promise<EndpointMemory | undefined> {
    const raw = await readRegular(this.#path("registries", keyHex(key)), MAX_MEMORY_BYTES);
    if (!raw) return undefined;
    try {
      return validMemory(JSON.parse(new TextDecoder().decode(raw)));
    } catch {
      return undefined;
    }
  }

  /** Remembers what endpoint `key` answered to its ping. */
  async putEndpoint(key: string, memory: EndpointMemory): Promise<void> {
    if (!validMemory(memory)) return;
    const text = JSON.stringify(memory);
    if (text.length > MAX_MEMORY_BYTES) return;
    await this.#write(this.#path("registries", keyHex(key)), new TextEncoder().encode(text));
  }

  /** Forgets endpoint `key` (its memory led to an error). */
  async forgetEndpoint(key: string): Promise<void> {
    await Deno.remove(this.#path("registries", keyHex(key))).catch(() => {});
  }

  /** The digest tag `key` resolved to last time (a hint, to be confirmed with the registry). */
  async getTag(key: string): Promise<string | undefined> {
    const raw = await readRegular(this.#path("tags", keyHex(key)), 200);
    const text = raw ? new TextDecoder().decode(raw).trim() : "";
    return isDigest(text) ? text : undefined;
  }

  /** Remembers that tag `key` resolved to `digest`. */
  async putTag(key: string, digest: string): Promise<void> {
    if (!isDigest(digest) || await this.getTag(key) === digest) return;
    await this.#write(this.#path("tags", keyHex(key)), new TextEncoder().encode(digest));
  }

  /** Writes `data` to a new temporary file and renames it to `path` (never through a link). */
  async #write(path: string, data: Uint8Array): Promise<void> {
    const temp = `${this.root}/tmp/memory-${crypto.randomUUID()}`;
    try {
      await Deno.mkdir(path.slice(0, path.lastIndexOf("/")), { recursive: true, mode: 0o700 });
      await Deno.writeFile(temp, data, { createNew: true, mode: 0o600 });
      await Deno.rename(temp, path);
    } catch {
      await Deno.remove(temp).catch(() => {});
    }
  }
}

/** The sha256 hex naming a memory entry. */
function keyHex(key: string): string {
  return digestOf(new TextEncoder().encode(key)).slice(7);
}

function validMemory(value: unknown): EndpointMemory | undefined {
  if (typeof value !== "object" || value === null) return undefined;
  const { base, challenge } = value as Record<string, unknown>;
  if (typeof base !== "string" || !/^https?:\/\/[^/?#\s]+$/.test(base)) return undefined;
  if (challenge === undefined) return { base };
  if (typeof challenge !== "object" || challenge === null) return undefined;
  const { scheme, realm, service } = challenge as Record<string, unknown>;
  if (scheme !== "bearer" && scheme !== "basic") return undefined;
  if (realm !== undefined && typeof realm !== "string") return undefined;
  if (service !== undefined && typeof service !== "string") return undefined;
  if (scheme === "bearer" && realm === undefined) return undefined;
  return {
    base,
    challenge: {
      scheme,
      ...(realm !== undefined ? { realm } : {}),
      ...(service !== undefined ? { service } : {}),
    },
  };
}

async function isRegularFile(path: string): Promise<boolean> {
  try {
    return (await Deno.lstat(path)).isFile;
  } catch {
    return false;
  }
}

/** A regular file's bytes (at most `limit`), or undefined; a link or larger file is refused. */
async function readRegular(
  path: string,
  limit: number,
): Promise<Uint8Array<ArrayBuffer> | undefined> {
  try {
    const info = await Deno.lstat(path);
    if (!info.isFile || info.size > limit) return undefined;
    const bytes = await Deno.readFile(path);
    return bytes.byteLength > limit ? undefined : bytes;
  } catch {
    return undefined;
  }
}

/** Refreshes a use time (what `--cache-prune --older-than` measures). */
async function touch(path: string): Promise<void> {
  const now = new Date();
  await Deno.utime(path, now, now).catch(() => {});
}
