/**
 * A minimal distribution-spec push client for seeding test registries: monolithic blob uploads
 * and manifest PUTs. Written for fixtures, not for production (no chunking, no retries).
 * @module
 */
import { createHash } from "node:crypto";

/** Optional transport settings for {@link pushBlob} and {@link pushManifest}. */
export interface PushOptions {
  /** For TLS registries with a test CA. */
  client?: Deno.HttpClient;
  /** Extra headers on every request, e.g. `Authorization`. */
  headers?: Record<string, string>;
}

/** `sha256:<hex>` of some bytes. */
export function sha256Digest(bytes: Uint8Array): string {
  return `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
}

function v2Url(registryUrl: string, path: string): URL {
  return new URL(`/v2/${path}`, registryUrl);
}

/** Reads a response body to text so the connection and the body resource are released. */
async function drain(res: Response): Promise<string> {
  return await res.text();
}

async function failure(what: string, res: Response): Promise<Error> {
  const body = await drain(res);
  return new Error(`${what}: HTTP ${res.status} ${res.statusText} ${body.slice(0, 2000)}`);
}

/**
 * Uploads a blob to `repo` unless the registry already has it there: `HEAD`, then
 * `POST /v2/<repo>/blobs/uploads/` and a single `PUT <location>?digest=`. Returns the digest.
 */
export async function pushBlob(
  registryUrl: string,
  repo: string,
  bytes: Uint8Array,
  opts: PushOptions = {},
): Promise<string> {
  const digest = sha256Digest(bytes);
  const base = { client: opts.client, headers: opts.headers ?? {} };

  const head = await fetch(v2Url(registryUrl, `${repo}/blobs/${digest}`), {
    ...base,
    method: "HEAD",
  });
  await drain(head);
  if (head.status === 200) return digest;

  const start = await fetch(v2Url(registryUrl, `${repo}/blobs/uploads/`), {
    ...base,
    method: "POST",
    headers: { ...base.headers, "Content-Length": "0" },
  });
  if (start.status !== 202) throw await failure(`start upload to ${repo}`, start);
  await drain(start);
  const location = start.headers.get("Location");
  if (!location) throw new Error(`start upload to ${repo}: 202 without Location`);

  // Location may be relative and usually carries upload state in its query: keep it, add digest.
  const putUrl = new URL(location, registryUrl);
  putUrl.searchParams.set("digest", digest);
  const put = await fetch(putUrl, {
    ...base,
    method: "PUT",
    headers: {
      ...base.headers,
      "Content-Type": "application/octet-stream",
      "Content-Length": String(bytes.byteLength),
    },
    body: bytes as Uint8Array<ArrayBuffer>,
  });
  if (put.status !== 201) throw await failure(`upload ${digest} to ${repo}`, put);
  await drain(put);
  return digest;
}

/**
 * PUTs a manifest (or index) under `reference` (a tag or its digest) with the given media type
 * as Content-Type. Returns the digest of `bytes`, after checking the registry computed the same.
 */
export async function pushManifest(
  registryUrl: string,
  repo: string,
  reference: string,
  bytes: Uint8Array,
  mediaType: string,
  opts: PushOptions = {},
): Promise<string> {
  const digest = sha256Digest(bytes);
  const res = await fetch(v2Url(registryUrl, `${repo}/manifests/${reference}`), {
    client: opts.client,
    method: "PUT",
    headers: { ...opts.headers, "Content-Type": mediaType },
    body: bytes as Uint8Array<ArrayBuffer>,
  });
  if (res.status !== 201) throw await failure(`put manifest ${repo}:${reference}`, res);
  await drain(res);
  const echoed = res.headers.get("Docker-Content-Digest");
  if (echoed && echoed !== digest) {
    throw new Error(
      `put manifest ${repo}:${reference}: registry says ${echoed}, we have ${digest}`,
    );
  }
  return digest;
}
