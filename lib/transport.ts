/**
 * The HTTP layer: one `Deno.HttpClient` per registry with the CAs the user
 * trusts, redirects followed by hand so that credentials never travel to
 * another origin and HTTPS is never downgraded, transport failures turned
 * into {@link NetworkError}s, and capped body reads.
 *
 * @module
 */
import {
  AuthError,
  ImgpullError,
  InvalidContentError,
  NetworkError,
  NotFoundError,
} from "./errors.ts";
import { VERSION } from "./version.ts";

/** Sent with every request. */
export const USER_AGENT = `imgpull/${VERSION}`;

const MAX_REDIRECTS = 10;
/** Registry error bodies are small; never read more than this of one. */
const MAX_ERROR_BODY = 64 * 1024;

/** TLS settings for a registry. */
export interface TlsOptions {
  /** Extra trusted CA certificates (PEM). */
  caCerts?: string[];
  /** Client certificate and key (PEM) for mutual TLS. */
  cert?: string;
  key?: string;
}

/** A request as {@link Transport.fetch} takes it. */
export interface TransportRequest {
  method?: "GET" | "HEAD" | "POST";
  headers?: HeadersInit;
  body?: string | URLSearchParams;
  signal?: AbortSignal;
}

/** Wraps `fetch` with the safety rules every request must follow. */
export class Transport {
  readonly #client: Deno.HttpClient;

  constructor(tls: TlsOptions = {}) {
    this.#client = Deno.createHttpClient({
      // HTTP/2 would multiplex every download over one TCP connection, which a
      // per-connection rate cap (common at CDNs) then throttles as a whole.
      http2: false,
      caCerts: tls.caCerts,
      ...(tls.cert && tls.key ? { cert: tls.cert, key: tls.key } : {}),
    });
  }

  /**
   * Sends a request, following up to 10 redirects by hand: `Authorization`
   * is removed as soon as the origin changes, and an HTTPS URL may not
   * redirect to plain HTTP. The final response is returned whatever its
   * status; its body is the caller's to consume or cancel.
   */
  async fetch(url: string | URL, request: TransportRequest = {}): Promise<Response> {
    let current = new URL(url);
    const headers = new Headers(request.headers);
    if (!headers.has("user-agent")) headers.set("user-agent", USER_AGENT);
    let method = request.method ?? "GET";
    let body = request.body;
    for (let hop = 0;; hop++) {
      const response = await this.#send(current, { method, headers, body, signal: request.signal });
      if (![301, 302, 303, 307, 308].includes(response.status)) return response;
      const location = response.headers.get("location");
      await response.body?.cancel();
      if (!location) {
        throw new NetworkError(`redirect from ${current.origin} without a Location`, {
          retryable: false,
          status: response.status,
        });
      }
      if (hop >= MAX_REDIRECTS) {
        throw new NetworkError(`too many redirects (last: ${current.origin}${current.pathname})`, {
          retryable: false,
        });
      }
      const next = new URL(location, current);
      if (next.protocol !== "https:" && next.protocol !== "http:") {
        throw new NetworkError(`refusing redirect to ${next.protocol} URL`, { retryable: false });
      }
      if (current.protocol === "https:" && next.protocol === "http:") {
        throw new NetworkError(
          `refusing redirect from HTTPS to plain HTTP (${next.origin})`,
          { retryable: false },
        );
      }
      if (next.origin !== current.origin) {
        // CDNs and S3 reject a second auth mechanism, and the token is not theirs.
        headers.delete("authorization");
        headers.delete("cookie");
      }
      if (response.status === 303 || (response.status !== 307 && response.status !== 308)) {
        if (method === "POST") {
          method = "GET";
          body = undefined;
        }
      }
      current = next;
    }
  }

  async #send(url: URL, init: RequestInit): Promise<Response> {
    try {
      return await fetch(url, { ...init, client: this.#client, redirect: "manual" });
    } catch (e) {
      throw toNetworkError(e, url);
    }
  }

  /** Releases the connection pool. */
  close(): void {
    this.#client.close();
  }
}

/** Turns a thrown transport failure into a {@link NetworkError} (aborts pass through). */
export function toNetworkError(e: unknown, url: URL | string): unknown {
  if (e instanceof ImgpullError) return e;
  if (e instanceof DOMException && (e.name === "AbortError" || e.name === "TimeoutError")) {
    return e;
  }
  const origin = typeof url === "string" ? url : url.origin;
  const detail = describeCause(e);
  const tls = /certificate|UnknownIssuer|CaUsedAsEndEntity|tls|handshake|InvalidContentType/i
    .test(detail);
  return new NetworkError(`cannot reach ${origin}: ${detail}`, {
    cause: e,
    // A certificate the client does not trust will not become trusted by retrying.
    retryable: !tls,
    hint: tls ? "if the registry uses a private CA, pass it with --ca-cert FILE" : undefined,
  });
}

/** The innermost message of an error chain (fetch hides details in `cause`). */
export function describeCause(e: unknown): string {
  let current: unknown = e;
  let message = "unknown error";
  for (let depth = 0; depth < 5 && current; depth++) {
    if (current instanceof Error) {
      if (current.message) message = current.message;
      current = current.cause;
    } else {
      message = String(current);
      break;
    }
  }
  return message.split("\n")[0];
}

/**
 * Reads a body, failing once it passes `max` bytes: registries are not
 * trusted to send sane sizes.
 */
export async function readCapped(
  response: Response,
  max: number,
  what: string,
  tooLarge: () => ImgpullError = () =>
    new InvalidContentError(`${what} is larger than the ${max} bytes allowed`),
): Promise<Uint8Array<ArrayBuffer>> {
  const declared = Number(response.headers.get("content-length") ?? NaN);
  if (declared > max) {
    await response.body?.cancel();
    throw tooLarge();
  }
  if (!response.body) return new Uint8Array(0);
  const chunks: Uint8Array[] = [];
  let total = 0;
  const reader = response.body.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      total += value.byteLength;
      if (total > max) {
        await reader.cancel();
        throw tooLarge();
      }
      chunks.push(value);
    }
  } catch (e) {
    throw toNetworkError(e, response.url);
  } finally {
    reader.releaseLock();
  }
  const out = new Uint8Array(total);
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return out;
}

/** Headers of a blob GET: the stored bytes (no transparent decoding), optionally a range. */
export function blobRequestHeaders(
  range?: { start: number; end?: number },
): Record<string, string> {
  // Without identity, fetch may decode a compressed body and the digest would be checked
  // against other bytes than the registry stores.
  const headers: Record<string, string> = { "accept-encoding": "identity" };
  if (range) headers.range = `bytes=${range.start}-${range.end ?? ""}`;
  return headers;
}

/** A registry error body's first error, if it has one. */
interface RegistryErrorBody {
  code?: string;
  message?: string;
}

async function readRegistryError(response: Response): Promise<RegistryErrorBody> {
  let bytes: Uint8Array;
  try {
    bytes = await readCapped(response, MAX_ERROR_BODY, "error body");
  } catch {
    return {};
  }
  try {
    const parsed = JSON.parse(new TextDecoder().decode(bytes));
    const first = parsed?.errors?.[0];
    if (first && typeof first === "object") {
      return {
        code: typeof first.code === "string" ? first.code : undefined,
        message: typeof first.message === "string" ? first.message.slice(0, 300) : undefined,
      };
    }
  } catch {
    // Not JSON: the status alone must do.
  }
  return {};
}

/** Parses `Retry-After` (seconds or an HTTP date) into milliseconds. */
export function parseRetryAfter(value: string | null, now = Date.now()): number | undefined {
  if (!value) return undefined;
  const seconds = Number(value);
  if (Number.isFinite(seconds) && seconds >= 0) return seconds * 1000;
  const date = Date.parse(value);
  return Number.isNaN(date) ? undefined : Math.max(0, date - now);
}

/**
 * Turns an unsuccessful registry response into the matching error, reading
 * (a capped part of) its body. `what` names the thing requested, e.g.
 * `manifest localhost:5000/app:v1`.
 */
export async function errorForResponse(response: Response, what: string): Promise<ImgpullError> {
  const status = response.status;
  const body = await readRegistryError(response);
  const said = body.message ? `: ${body.message}` : body.code ? `: ${body.code}` : "";
  if (status === 401) {
    return new AuthError(`unauthorized to access ${what}${said}`, {
      hint: "log in with --username/--password-stdin or docker login; " +
        "the repository may also not exist",
    });
  }
  if (status === 403) {
    return new AuthError(`access to ${what} denied${said}`, {
      hint: "check that your account may pull this repository",
    });
  }
  if (status === 404) return new NotFoundError(`${what} not found${said}`);
  if (status === 429 || body.code === "TOOMANYREQUESTS") {
    return new NetworkError(`registry rate limit reached while fetching ${what}${said}`, {
      status,
      retryAfterMs: parseRetryAfter(response.headers.get("retry-after")),
      hint: "Docker Hub limits anonymous pulls per IP: log in (--username or docker login) " +
        "or use a registry mirror",
    });
  }
  const retryable = status === 408 || status >= 500;
  return new NetworkError(`registry answered HTTP ${status} for ${what}${said}`, {
    status,
    retryable,
    retryAfterMs: parseRetryAfter(response.headers.get("retry-after")),
  });
}
