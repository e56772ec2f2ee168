/**
 * A small registry written in the tests that misbehaves on purpose: it
 * serves manifests and blobs from memory and lets each test decide, per
 * request, how to answer (ignore Range, send a wrong Content-Range, cut the
 * connection, corrupt bytes, stall, fail with a status). Real registries are
 * used everywhere else; this one exists for the faults they will not make.
 * @module
 */

/** What a fault handler may do with a request. */
export interface FaultContext {
  /** 1-based count of requests for this path so far (including this one). */
  attempt: number;
  /** The blob or manifest bytes that a well-behaved registry would serve. */
  bytes?: Uint8Array;
  /** Parsed `Range` header, if any. */
  range?: { start: number; end?: number };
}

/**
 * Returns a response to override the normal one, or undefined to behave. A promise delays the
 * answer (slow servers; a server that never answers until the test releases it).
 */
export type FaultHandler = (
  req: Request,
  ctx: FaultContext,
) => Response | Promise<Response> | undefined;

/** A request the fault registry saw. */
export interface FaultRequest {
  method: string;
  path: string;
  range: string | null;
  authorization: string | null;
  /** Every request header, as received. */
  headers: Headers;
  /** `performance.now()` when the request arrived. */
  time: number;
}

/** A running fault registry. */
export interface FaultRegistry {
  host: string;
  /** `http://127.0.0.1:PORT`, or `https://…` with {@link FaultRegistryOptions.tls}. */
  url: string;
  port: number;
  requests: FaultRequest[];
  close(): Promise<void>;
}

/** Options of {@link startFaultRegistry}. */
export interface FaultRegistryOptions {
  /** Blobs by digest. */
  blobs?: Map<string, Uint8Array>;
  /** Manifests by `repo:reference` (tag or digest). */
  manifests?: Map<string, { bytes: Uint8Array; mediaType: string }>;
  fault?: FaultHandler;
  /** Serve HTTPS with this certificate and key (PEM), e.g. the test PKI's server leaf. */
  tls?: { cert: string; key: string };
  /**
   * Do not log errors of response bodies (a {@link cutAfter} body errors on purpose, which
   * Deno.serve otherwise prints with a stack trace).
   */
  quiet?: boolean;
  /**
   * Every answer but `/v2/`'s is held this long (ms): a far registry, whose blobs imgpull
   * fetches in Range segments from the start (a near one gets one connection per blob).
   */
  latencyMs?: number;
}

function parseRange(header: string | null): FaultContext["range"] {
  const m = header?.match(/^bytes=(\d+)-(\d*)$/);
  if (!m) return undefined;
  return { start: Number(m[1]), end: m[2] === "" ? undefined : Number(m[2]) };
}

/** Serves `bytes`, honouring a single Range like a well-behaved registry. */
export function serveBytes(bytes: Uint8Array, range?: FaultContext["range"]): Response {
  if (!range) {
    return new Response(bytes.slice(), {
      headers: { "content-length": String(bytes.byteLength) },
    });
  }
  const end = Math.min(range.end ?? bytes.byteLength - 1, bytes.byteLength - 1);
  const body = bytes.slice(range.start, end + 1);
  return new Response(body, {
    status: 206,
    headers: {
      "content-length": String(body.byteLength),
      "content-range": `bytes ${range.start}-${end}/${bytes.byteLength}`,
    },
  });
}

/** A body that sends `prefix`, then calls `after` for every further read. */
function prefixThen(
  prefix: Uint8Array,
  after: (controller: ReadableStreamDefaultController<Uint8Array>) => Promise<void> | void,
): ReadableStream<Uint8Array> {
  let sent = false;
  return new ReadableStream<Uint8Array>({
    pull(controller) {
      if (sent) return after(controller);
      sent = true;
      controller.enqueue(prefix.slice());
    },
  });
}

/** A body that sends `prefix` and then breaks the connection. */
export function cutAfter(prefix: Uint8Array, status = 200, headers: HeadersInit = {}): Response {
  const body = prefixThen(prefix, (controller) => {
    controller.error(new Error("connection cut by the fault registry"));
  });
  return new Response(body, { status, headers });
}

/** A body that sends `prefix` and then never another byte (until the client gives up). */
export function stallAfter(prefix: Uint8Array, headers: HeadersInit = {}): Response {
  return new Response(prefixThen(prefix, () => new Promise(() => {})), { headers });
}

/** Starts the fault registry on 127.0.0.1 with an OS-chosen port. */
export function startFaultRegistry(options: FaultRegistryOptions): FaultRegistry {
  const requests: FaultRequest[] = [];
  const attempts = new Map<string, number>();
  const server = Deno.serve({
    hostname: "127.0.0.1",
    port: 0,
    onListen: () => {},
    ...(options.tls ?? {}),
    ...(options.quiet ? { onError: () => new Response(null, { status: 500 }) } : {}),
  }, async (req) => {
    const path = new URL(req.url).pathname;
    if (options.latencyMs && path !== "/v2/") {
      await new Promise((resolve) => setTimeout(resolve, options.latencyMs));
    }
    requests.push({
      method: req.method,
      path,
      range: req.headers.get("range"),
      authorization: req.headers.get("authorization"),
      headers: new Headers(req.headers),
      time: performance.now(),
    });
    const attempt = (attempts.get(path) ?? 0) + 1;
    attempts.set(path, attempt);
    const range = parseRange(req.headers.get("range"));
    const blob = path.match(/^\/v2\/(.+)\/blobs\/(.+)$/);
    const manifest = path.match(/^\/v2\/(.+)\/manifests\/(.+)$/);
    const bytes = blob
      ? options.blobs?.get(decodeURIComponent(blob[2]))
      : manifest
      ? options.manifests?.get(`${manifest[1]}:${decodeURIComponent(manifest[2])}`)?.bytes
      : undefined;
    const overridden = options.fault?.(req, { attempt, bytes, range });
    if (overridden) return overridden;
    if (path === "/v2/") return new Response("{}");
    if (blob && bytes) return serveBytes(bytes, range);
    if (manifest && bytes) {
      const m = options.manifests!.get(`${manifest[1]}:${decodeURIComponent(manifest[2])}`)!;
      return new Response(bytes.slice(), { headers: { "content-type": m.mediaType } });
    }
    return Response.json({ errors: [{ code: "NOT_FOUND", message: "not here" }] }, {
      status: 404,
    });
  });
  const port = server.addr.port;
  return {
    host: `127.0.0.1:${port}`,
    url: `${options.tls ? "https" : "http"}://127.0.0.1:${port}`,
    port,
    requests,
    close: async () => {
      await server.shutdown();
    },
  };
}
