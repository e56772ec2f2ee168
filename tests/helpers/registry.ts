/**
 * Real registries for integration tests: CNCF Distribution 2.8 (`docker-registry serve`) in
 * plain-HTTP, Basic-over-TLS and token-over-TLS modes, plus a CDN stand-in for the `redirect`
 * storage middleware.
 *
 * Several registries may share one storage directory: no blob-descriptor cache is configured,
 * so each process reads the filesystem on every request and sees what another one pushed.
 * @module
 */
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { freePort } from "./ports.ts";
import { BackgroundProcess, runOk, sleep, tail } from "./process.ts";
import type { TestPki } from "./tls.ts";

/** How a registry authenticates clients. */
export type RegistryMode = "http" | "basic" | "token";

/** Options for {@link startRegistry}. */
export interface RegistryOptions {
  /** `http`: anonymous plain HTTP; `basic`: TLS + htpasswd; `token`: TLS + Docker token auth. */
  mode: RegistryMode;
  /** Filesystem storage root (Distribution writes `docker/registry/v2/...` under it). */
  storageDir: string;
  /** Server certificate for the TLS modes (the leaf, signed by the test CA). */
  pki?: TestPki;
  /** Basic-mode users (name → password); bcrypt htpasswd entries are generated. */
  users?: Record<string, string>;
  /** Token mode: must match the token server's realm URL, service and issuer. */
  token?: { realm: string; service: string; issuer: string };
  /** Base URL (scheme://host:port) that blob GETs are redirected to (307), e.g. a BlobCdn. */
  redirectBlobsTo?: string;
  /** TLS modes: require a client certificate signed by the test CA (mutual TLS). */
  requireClientCert?: boolean;
}

/** A running Distribution registry. */
export interface RunningRegistry {
  mode: RegistryMode;
  /** `127.0.0.1:PORT` */
  host: string;
  /** `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT` */
  url: string;
  storageDir: string;
  /** The generated configuration file. */
  configPath: string;
  /** The registry's recent log output (access log included). */
  log(): string;
  /** Stops the registry and removes its config directory (not the storage). */
  close(): Promise<void>;
}

/** Realm of the Basic challenge in `basic` mode. */
export const BASIC_REALM = "imgpull-test";

/** Builds an htpasswd file body (bcrypt) with `htpasswd -Bbn` from apache2-utils. */
export async function makeHtpasswd(users: Record<string, string>): Promise<string> {
  let out = "";
  for (const [user, password] of Object.entries(users)) {
    const { stdout } = await runOk("htpasswd", ["-Bbn", user, password]);
    out += `${stdout.trim()}\n`;
  }
  return out;
}

function registryConfig(
  opts: RegistryOptions,
  port: number,
  htpasswdPath: string | undefined,
): Record<string, unknown> {
  const http: Record<string, unknown> = {
    addr: `127.0.0.1:${port}`,
    secret: randomBytes(16).toString("hex"),
    headers: { "X-Content-Type-Options": ["nosniff"] },
  };
  if (opts.mode !== "http") {
    http.tls = {
      certificate: opts.pki!.serverCertPath,
      key: opts.pki!.serverKeyPath,
      ...(opts.requireClientCert ? { clientcas: [opts.pki!.caCertPath] } : {}),
    };
  }
  const config: Record<string, unknown> = {
    version: "0.1",
    log: { level: "info", formatter: "text" },
    storage: {
      filesystem: { rootdirectory: opts.storageDir },
      delete: { enabled: true },
      // The purge timer would fire long after the test; keep the process quiet and passive.
      maintenance: { uploadpurging: { enabled: false } },
    },
    http,
    // Since 2.7, a manifest with layer `urls` (foreign layers) is refused ("invalid URL on
    // layer") unless an allow list matches them.
    validation: { manifests: { urls: { allow: ["^https?://"] } } },
  };
  if (opts.mode === "basic") {
    config.auth = { htpasswd: { realm: BASIC_REALM, path: htpasswdPath } };
  } else if (opts.mode === "token") {
    config.auth = {
      token: {
        realm: opts.token!.realm,
        service: opts.token!.service,
        issuer: opts.token!.issuer,
        // The token server's x5c holds the signing cert, which the test CA signed.
        rootcertbundle: opts.pki!.caCertPath,
      },
    };
  }
  if (opts.redirectBlobsTo) {
    config.middleware = {
      storage: [{ name: "redirect", options: { baseurl: opts.redirectBlobsTo } }],
    };
  }
  return config;
}

/**
 * Starts `docker-registry serve` on a free 127.0.0.1 port and waits until `GET /v2/` answers.
 * Throws with the registry's output when it does not come up: tests must fail loudly.
 */
export async function startRegistry(opts: RegistryOptions): Promise<RunningRegistry> {
  if (opts.mode !== "http" && !opts.pki) throw new Error(`${opts.mode} mode needs opts.pki`);
  if (opts.mode === "token" && !opts.token) throw new Error("token mode needs opts.token");
  if (opts.mode === "basic" && !opts.users) throw new Error("basic mode needs opts.users");
  await Deno.mkdir(opts.storageDir, { recursive: true });

  const dir = await Deno.makeTempDir({ prefix: "imgpull-registry-" });
  try {
    let htpasswdPath: string | undefined;
    if (opts.mode === "basic") {
      htpasswdPath = join(dir, "htpasswd");
      await Deno.writeTextFile(htpasswdPath, await makeHtpasswd(opts.users!));
    }
    // freePort() can race with other processes: retry when the port was taken meanwhile.
    for (let attempt = 1;; attempt++) {
      const port = await freePort();
      const configPath = join(dir, "config.yml");
      // JSON is a subset of YAML, and avoids quoting surprises.
      await Deno.writeTextFile(
        configPath,
        JSON.stringify(registryConfig(opts, port, htpasswdPath), null, 2),
      );
      const proc = new BackgroundProcess("docker-registry", ["serve", configPath]);
      const scheme = opts.mode === "http" ? "http" : "https";
      const url = `${scheme}://127.0.0.1:${port}`;
      const error = await waitForRegistry(proc, port, url, opts.pki, opts.requireClientCert);
      if (!error) {
        return {
          mode: opts.mode,
          host: `127.0.0.1:${port}`,
          url,
          storageDir: opts.storageDir,
          configPath,
          log: () => proc.log,
          close: async () => {
            await proc.stop();
            await Deno.remove(dir, { recursive: true });
          },
        };
      }
      await proc.stop();
      if (attempt < 3 && proc.log.includes("address already in use")) continue;
      throw new Error(
        `docker-registry (${opts.mode}) did not start: ${error}\n--- registry output ---\n${
          tail(proc.log)
        }`,
      );
    }
  } catch (e) {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    throw e;
  }
}

/**
 * Waits until the registry logged that it listens on `port` and `GET /v2/` gets any HTTP
 * answer; returns an error text on exit or timeout. The log check matters when the port was
 * taken meanwhile: another server could answer on it while our process is dying.
 */
async function waitForRegistry(
  proc: BackgroundProcess,
  port: number,
  url: string,
  pki: TestPki | undefined,
  clientCert = false,
  timeoutMs = 15_000,
): Promise<string | undefined> {
  const client = pki
    ? Deno.createHttpClient({
      caCerts: [pki.caCertPem],
      ...(clientCert
        ? {
          cert: await Deno.readTextFile(pki.clientCertPath),
          key: await Deno.readTextFile(pki.clientKeyPath),
        }
        : {}),
    })
    : undefined;
  const deadline = Date.now() + timeoutMs;
  let lastError = "";
  try {
    while (Date.now() < deadline) {
      if (proc.exitStatus) return `exited with code ${proc.exitStatus.code}`;
      if (!proc.log.includes(`listening on 127.0.0.1:${port}`)) {
        await sleep(50);
        continue;
      }
      try {
        const res = await fetch(`${url}/v2/`, { client, signal: AbortSignal.timeout(2_000) });
        await res.body?.cancel();
        return undefined;
      } catch (e) {
        lastError = String((e as Error).cause ?? e);
      }
      await sleep(50);
    }
    return `no answer from ${url}/v2/ within ${timeoutMs} ms (${lastError})`;
  } finally {
    client?.close();
  }
}

/** A request seen by the {@link BlobCdn}. */
export interface CdnRequest {
  method: string;
  path: string;
  hadAuthorization: boolean;
  /** The `Range` header, if any. */
  range: string | null;
  status: number;
}

/** The stand-in CDN started by {@link startBlobCdn}. */
export interface BlobCdn {
  /** `http(s)://127.0.0.1:PORT`: pass it as `redirectBlobsTo`. */
  url: string;
  requests: CdnRequest[];
  close(): Promise<void>;
}

/** Options for {@link startBlobCdn}. */
export interface BlobCdnOptions {
  /** Answer `Range` requests with 200 and the whole body, like some CDNs do. */
  ignoreRange?: boolean;
  /** Serve HTTPS with the test PKI's leaf (a TLS registry may not redirect to plain HTTP). */
  pki?: TestPki;
}

/**
 * Where the redirect middleware of Distribution 2.8 points: its base URL's scheme and host plus
 * the storage-driver path of the blob (the base URL's own path is dropped).
 */
const BLOB_PATH = /^\/docker\/registry\/v2\/blobs\/sha256\/([0-9a-f]{2})\/([0-9a-f]{64})\/data$/;

/**
 * Serves blob files of a Distribution filesystem storage over plain HTTP, the way an S3
 * presigned URL would: GET/HEAD only, single `Range` support (206 + Content-Range), and 400 for
 * any request carrying `Authorization` (S3 refuses a second auth mechanism).
 */
export function startBlobCdn(storageDir: string, opts: BlobCdnOptions = {}): Promise<BlobCdn> {
  const requests: CdnRequest[] = [];
  const tls = opts.pki ? { cert: opts.pki.serverCertPem, key: opts.pki.serverKeyPem } : {};
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {}, ...tls },
    async (req) => {
      const path = new URL(req.url).pathname;
      const record: CdnRequest = {
        method: req.method,
        path,
        hadAuthorization: req.headers.has("Authorization"),
        range: req.headers.get("Range"),
        status: 0,
      };
      requests.push(record);
      const res = await cdnResponse(req, path, storageDir, opts);
      record.status = res.status;
      return res;
    },
  );
  const { port } = server.addr;
  return Promise.resolve({
    url: `${opts.pki ? "https" : "http"}://127.0.0.1:${port}`,
    requests,
    close: async () => {
      await server.shutdown();
      await server.finished;
    },
  });
}

async function cdnResponse(
  req: Request,
  path: string,
  storageDir: string,
  opts: BlobCdnOptions,
): Promise<Response> {
  if (req.headers.has("Authorization")) {
    return new Response(
      "<Error><Code>InvalidArgument</Code><Message>Only one auth mechanism allowed</Message></Error>",
      { status: 400, headers: { "Content-Type": "application/xml" } },
    );
  }
  if (req.method !== "GET" && req.method !== "HEAD") {
    return new Response("method not allowed\n", { status: 405 });
  }
  const match = path.match(BLOB_PATH);
  if (!match || match[1] !== match[2].slice(0, 2)) {
    return new Response("not found\n", { status: 404 });
  }

  const file = join(storageDir, path);
  let size: number;
  try {
    size = (await Deno.stat(file)).size;
  } catch {
    return new Response("not found\n", { status: 404 });
  }
  const headers = new Headers({
    "Content-Type": "application/octet-stream",
    "Accept-Ranges": "bytes",
    "ETag": `"${match[2]}"`,
  });

  let start = 0;
  let end = size - 1;
  let status = 200;
  const range = opts.ignoreRange ? null : req.headers.get("Range");
  if (range) {
    const parsed = parseRange(range, size);
    if (!parsed) {
      headers.set("Content-Range", `bytes */${size}`);
      return new Response(null, { status: 416, headers });
    }
    [start, end] = parsed;
    status = 206;
    headers.set("Content-Range", `bytes ${start}-${end}/${size}`);
  }
  const length = end - start + 1;
  headers.set("Content-Length", String(length));
  if (req.method === "HEAD" || length === 0) return new Response(null, { status, headers });
  return new Response(await fileSlice(file, start, length), { status, headers });
}

/** Parses one `bytes=` range against `size`; null when malformed or unsatisfiable. */
export function parseRange(header: string, size: number): [number, number] | null {
  const m = header.trim().match(/^bytes=(\d*)-(\d*)$/);
  if (!m || (m[1] === "" && m[2] === "")) return null;
  let start: number;
  let end: number;
  if (m[1] === "") {
    // Suffix range: the last N bytes.
    const n = Number(m[2]);
    if (n === 0) return null;
    start = Math.max(0, size - n);
    end = size - 1;
  } else {
    start = Number(m[1]);
    end = m[2] === "" ? size - 1 : Math.min(Number(m[2]), size - 1);
  }
  if (start >= size || start > end) return null;
  return [start, end];
}

/** A stream of `length` bytes of `path` from `start`; the file closes on end or cancel. */
async function fileSlice(
  path: string,
  start: number,
  length: number,
): Promise<ReadableStream<Uint8Array>> {
  const file = await Deno.open(path, { read: true });
  await file.seek(start, Deno.SeekMode.Start);
  let remaining = length;
  return new ReadableStream<Uint8Array>({
    type: "bytes",
    async pull(controller) {
      const buf = new Uint8Array(Math.min(remaining, 256 * 1024));
      const n = await file.read(buf);
      if (n === null || n === 0) {
        file.close();
        controller.error(new Error(`${path} ended early`));
        return;
      }
      remaining -= n;
      controller.enqueue(buf.subarray(0, n));
      if (remaining === 0) {
        file.close();
        controller.close();
      }
    },
    cancel() {
      file.close();
    },
  });
}
