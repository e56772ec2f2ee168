/**
 * The HTTP layer: one `Deno.HttpClient` per registry with the CAs the user
 * trusts, redirects followed by hand so that credentials never travel to
 * another origin and HTTPS is never downgraded, transport failures turned
 * into {@link NetworkError}s (naming the proxy when one is in the way), and
 * capped body reads.
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
import { userAgent } from "./version.ts";
import { registerSecret } from "./redact.ts";
import { encodeBase64Text } from "./encoding.ts";

/** Sent with every request. */
export const USER_AGENT = userAgent();

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
  /** The files the PEM texts came from, named when the TLS stack refuses them. */
  files?: string[];
}

/**
 * Creates the HTTP client for `tls`. A certificate or key the TLS stack refuses (malformed PEM,
 * an X.509 v1 certificate, a key that does not match) is a {@link NetworkError} naming the
 * files, not a crash.
 */
export function createTlsClient(tls: TlsOptions = {}): Deno.HttpClient {
  try {
    return Deno.createHttpClient({
      // HTTP/2 would multiplex every download over one TCP connection, which a
      // per-connection rate cap (common at CDNs) then throttles as a whole.
      http2: false,
      caCerts: tls.caCerts,
      ...(tls.cert && tls.key ? { cert: tls.cert, key: tls.key } : {}),
    });
  } catch (e) {
    const files = tls.files?.length ? tls.files.join(" and ") : "the given certificates";
    throw new NetworkError(`cannot use ${files} for TLS: ${describeCause(e)}`, {
      cause: e,
      retryable: false,
      hint: tls.cert
        ? "a client certificate must be an X.509 v3 PEM certificate matching its PEM key"
        : "a CA file must hold PEM certificates",
    });
  }
}

/** Reads an environment variable; `undefined` when it is unset or not readable. */
export type EnvLookup = (name: string) => string | undefined;

/**
 * Reads a variable only when `--allow-env` already grants it: never prompts, never throws, so a
 * missing permission reads as "unset".
 */
export function readEnvIfAllowed(name: string): string | undefined {
  try {
    const { state } = Deno.permissions.querySync({ name: "env", variable: name });
    return state === "granted" ? Deno.env.get(name) : undefined;
  } catch {
    return undefined;
  }
}

/** The variables {@link proxyFor} reads (they need `--allow-env` to be named in messages). */
export const PROXY_ENV_NAMES = [
  "ALL_PROXY",
  "all_proxy",
  "HTTPS_PROXY",
  "https_proxy",
  "HTTP_PROXY",
  "http_proxy",
  "NO_PROXY",
  "no_proxy",
] as const;

/** The proxy Deno sends a request through. */
export interface ProxyInUse {
  /** `scheme://host:port`, without credentials: safe to print. */
  display: string;
  /** Host and port of the proxy. */
  hostname: string;
  port: number;
  protocol: "http:" | "https:" | "socks5:" | "socks5h:";
  /** `Proxy-Authorization` value from the URL's credentials, if any. */
  authorization?: string;
}

/** Deno takes the upper-case variable when it parses, else the lower-case one. */
function fromPair(env: EnvLookup, upper: string, lower: string): ProxyInUse | undefined {
  const value = env(upper);
  const parsed = value ? parseProxy(value) : undefined;
  if (parsed) return parsed;
  const low = env(lower);
  return low ? parseProxy(low) : undefined;
}

/** Parses a proxy variable as Deno does: no scheme means http; `user` alone is not valid. */
function parseProxy(value: string): ProxyInUse | undefined {
  let url: URL;
  try {
    url = new URL(/^[a-z][a-z0-9+.-]*:\/\//i.test(value) ? value : `http://${value}`);
  } catch {
    return undefined;
  }
  const protocol = url.protocol;
  if (!["http:", "https:", "socks5:", "socks5h:"].includes(protocol)) return undefined;
  if (url.hostname === "") return undefined;
  // Deno ignores a proxy whose user info has no ":" (it cannot parse it).
  const at = value.lastIndexOf("@");
  if (at >= 0 && !value.slice(0, at).replace(/^[a-z][a-z0-9+.-]*:\/\//i, "").includes(":")) {
    return undefined;
  }
  const defaultPort = protocol === "https:" ? 443 : protocol === "http:" ? 80 : 1080;
  const port = url.port ? Number(url.port) : defaultPort;
  let authorization: string | undefined;
  if (url.username || url.password) {
    const user = decodeURIComponent(url.username);
    const password = decodeURIComponent(url.password);
    registerSecret(password);
    registerSecret(url.password);
    authorization = `Basic ${encodeBase64Text(`${user}:${password}`)}`;
    registerSecret(authorization.slice(6));
  }
  return {
    display: `${protocol}//${url.host}`,
    hostname: url.hostname,
    port,
    protocol: protocol as ProxyInUse["protocol"],
    authorization,
  };
}

function ipv4ToNumber(ip: string): number | undefined {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(ip);
  if (!m) return undefined;
  const octets = m.slice(1).map(Number);
  if (octets.some((o) => o > 255)) return undefined;
  return ((octets[0] << 24) >>> 0) + (octets[1] << 16) + (octets[2] << 8) + octets[3];
}

/** Whether `NO_PROXY` (Deno's rules: IPs, IPv4 CIDRs, `*`, domains and their subdomains) lists `host`. */
function bypassed(noProxy: string, hostname: string): boolean {
  const host = hostname.replace(/^\[|\]$/g, "").toLowerCase();
  const hostIp = ipv4ToNumber(host);
  for (const raw of noProxy.split(",")) {
    const entry = raw.trim().toLowerCase().replace(/^\[|\]$/g, "");
    if (entry === "") continue;
    if (entry === "*") return true;
    const cidr = /^([\d.]+)\/(\d{1,2})$/.exec(entry);
    if (cidr && hostIp !== undefined) {
      const net = ipv4ToNumber(cidr[1]);
      const bits = Number(cidr[2]);
      if (net !== undefined && bits <= 32) {
        const mask = bits === 0 ? 0 : (~0 << (32 - bits)) >>> 0;
        if (((hostIp & mask) >>> 0) === ((net & mask) >>> 0)) return true;
      }
      continue;
    }
    const domain = entry.startsWith(".") ? entry.slice(1) : entry;
    if (host === domain || host.endsWith(`.${domain}`)) return true;
  }
  return false;
}

/**
 * The proxy Deno uses for `url`, by the environment as Deno reads it: `ALL_PROXY`, then
 * `HTTPS_PROXY` (https URLs) or `HTTP_PROXY` (http URLs), upper case before lower case, unless
 * `NO_PROXY` lists the host. Loopback hosts are not exempt (Deno proxies them too). Variables
 * the process may not read count as unset.
 */
export function proxyFor(url: URL, env: EnvLookup = readEnvIfAllowed): ProxyInUse | undefined {
  const noProxy = env("NO_PROXY") ?? env("no_proxy");
  if (noProxy && bypassed(noProxy, url.hostname)) return undefined;
  const all = fromPair(env, "ALL_PROXY", "all_proxy");
  if (all) return all;
  if (url.protocol === "https:") return fromPair(env, "HTTPS_PROXY", "https_proxy");
  // Deno ignores HTTP_PROXY in a CGI context, where it could come from a request header.
  if (url.protocol === "http:" && env("REQUEST_METHOD") === undefined) {
    return fromPair(env, "HTTP_PROXY", "http_proxy");
  }
  return undefined;
}

/** A request as {@link Transport.fetch} takes it. */
export interface TransportRequest {
  method?: "GET" | "HEAD" | "POST";
  headers?: HeadersInit;
  body?: string | URLSearchParams;
  signal?: AbortSignal;
  /** Checks each redirect target on top of the rules every request follows: a refusal reason. */
  checkRedirect?: (next: URL) => string | undefined;
}

/** Wraps `fetch` with the safety rules every request must follow. */
export class Transport {
  readonly #client: Deno.HttpClient;
  readonly #env: EnvLookup;

  /** `env` says which proxy Deno uses (for messages); default: the process environment. */
  constructor(tls: TlsOptions = {}, options: { env?: EnvLookup } = {}) {
    this.#client = createTlsClient(tls);
    this.#env = options.env ?? readEnvIfAllowed;
  }

  /** The proxy requests to `url` go through, if any. */
  proxyFor(url: URL): ProxyInUse | undefined {
    return proxyFor(url, this.#env);
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
      if (response.status === 407) {
        await response.body?.cancel();
        throw proxyAuthError(this.proxyFor(current), current);
      }
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
      const refused = request.checkRedirect?.(next);
      if (refused !== undefined) {
        throw new InvalidContentError(`refusing redirect to ${next.origin}: ${refused}`);
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
      const response = await fetch(url, { ...init, client: this.#client, redirect: "manual" });
      // A plain-HTTP request goes to the proxy itself, whose own errors look like the registry's.
      const proxy = url.protocol === "http:" ? this.proxyFor(url) : undefined;
      if (proxy) forwardedBy.set(response, proxy);
      return response;
    } catch (e) {
      const proxy = this.proxyFor(url);
      if (proxy && TUNNEL_FAILURE.test(describeCause(e))) {
        throw await tunnelError(e, proxy, url, init.signal ?? undefined);
      }
      throw toNetworkError(e, url, proxy);
    }
  }

  /**
   * Opens connections to `url`'s origin for requests to come: `count` GETs of `url` at once,
   * with no credentials and no cookie, redirects not followed, each body discarded; the pool
   * keeps the connections they leave idle. Resolves to how many were answered; never rejects
   * (a failure here is reported by the real request that meets it).
   */
  async warm(url: URL, count: number, signal?: AbortSignal): Promise<number> {
    const one = async () => {
      const response = await fetch(url, {
        client: this.#client,
        redirect: "manual",
        headers: { "user-agent": USER_AGENT },
        signal,
      });
      // A short body is already read with the headers: the connection goes back to the pool.
      await response.body?.cancel();
    };
    const results = await Promise.allSettled(Array.from({ length: count }, one));
    return results.filter((r) => r.status === "fulfilled").length;
  }

  /** Releases the connection pool. */
  close(): void {
    this.#client.close();
  }
}

/** Responses to plain-HTTP requests sent through a (forwarding) proxy, for error messages. */
const forwardedBy = new WeakMap<Response, ProxyInUse>();

/** How Deno words a CONNECT the proxy did not grant. */
const TUNNEL_FAILURE =
  /unsuccessful tunnel|while tunneling|proxy authentication required|headers too long for tunnel/i;

const PROXY_HINT = "check HTTPS_PROXY/HTTP_PROXY/ALL_PROXY, or list the registry in NO_PROXY";

/** A 407: the proxy wants credentials we did not give (or refused the ones we gave). */
function proxyAuthError(proxy: ProxyInUse | undefined, url: URL): AuthError {
  const who = proxy ? `proxy ${proxy.display}` : "a proxy";
  return new AuthError(
    `${who} ${
      proxy?.authorization ? "refused the credentials in its URL" : "requires authentication"
    } ` +
      `(HTTP 407) for ${url.origin}`,
    { hint: "give the proxy's credentials in its URL: HTTPS_PROXY=http://USER:PASSWORD@host:port" },
  );
}

/** Longest wait for the status line of a CONNECT probe. */
const TUNNEL_PROBE_MS = 5_000;

/**
 * Deno reports every refused CONNECT as "unsuccessful tunnel"; to say why, one CONNECT of our
 * own asks the proxy for its status line (HTTP proxies only).
 */
async function probeTunnel(
  proxy: ProxyInUse,
  target: URL,
  signal?: AbortSignal,
): Promise<number | undefined> {
  if (proxy.protocol !== "http:") return undefined;
  const port = target.port || (target.protocol === "https:" ? "443" : "80");
  let conn: Deno.TcpConn | undefined;
  const timer = new AbortController();
  const timeout = setTimeout(() => timer.abort(), TUNNEL_PROBE_MS);
  const stop = () => conn?.close();
  const abort = signal ? AbortSignal.any([signal, timer.signal]) : timer.signal;
  abort.addEventListener("abort", stop, { once: true });
  try {
    conn = await Deno.connect({ hostname: proxy.hostname, port: proxy.port });
    const auth = proxy.authorization ? `Proxy-Authorization: ${proxy.authorization}\r\n` : "";
    const host = `${target.hostname}:${port}`;
    await conn.write(
      new TextEncoder().encode(`CONNECT ${host} HTTP/1.1\r\nHost: ${host}\r\n${auth}\r\n`),
    );
    const buffer = new Uint8Array(256);
    let text = "";
    while (!text.includes("\r\n")) {
      const n = await conn.read(buffer);
      if (n === null) break;
      text += new TextDecoder().decode(buffer.subarray(0, n));
    }
    const m = /^HTTP\/1\.[01] (\d{3})/.exec(text);
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  } finally {
    clearTimeout(timeout);
    abort.removeEventListener("abort", stop);
    try {
      conn?.close();
    } catch {
      // Closed by an abort.
    }
  }
}

/** A CONNECT that the proxy refused, with the proxy's status when it tells it. */
async function tunnelError(
  e: unknown,
  proxy: ProxyInUse,
  url: URL,
  signal?: AbortSignal,
): Promise<unknown> {
  if (signal?.aborted) return signal.reason;
  const detail = describeCause(e);
  const status = /authentication required/i.test(detail)
    ? 407
    : await probeTunnel(proxy, url, signal);
  // Any answer to CONNECT is the proxy's own; tinyproxy answers wrong credentials with 401.
  if (status === 407 || status === 401) return proxyAuthError(proxy, url);
  const said = status === undefined ? detail : `HTTP ${status}`;
  return new NetworkError(
    `proxy ${proxy.display} did not open a tunnel to ${url.host}: ${said}`,
    {
      cause: e,
      // A proxy that cannot reach the registry now may later (502, 503, 504); 403 stays.
      retryable: status === undefined || status >= 500,
      hint: PROXY_HINT,
    },
  );
}

/**
 * Turns a thrown transport failure into a {@link NetworkError} (aborts pass through). With a
 * `proxy` in the way, a failure to connect is the proxy's, and the message says so.
 */
export function toNetworkError(e: unknown, url: URL | string, proxy?: ProxyInUse): unknown {
  if (e instanceof ImgpullError) return e;
  if (e instanceof DOMException && (e.name === "AbortError" || e.name === "TimeoutError")) {
    return e;
  }
  const origin = typeof url === "string" ? url : url.origin;
  const detail = describeCause(e);
  if (proxy && /tcp connect|dns error|connection refused|unreachable/i.test(detail)) {
    const why = detail.replace(/^error sending request for url \([^)]*\): /, "");
    return new NetworkError(`cannot reach proxy ${proxy.display} (for ${origin}): ${why}`, {
      cause: e,
      hint: PROXY_HINT,
    });
  }
  const tls = /certificate|UnknownIssuer|CaUsedAsEndEntity|tls|handshake|InvalidContentType/i
    .test(detail);
  const via = proxy ? ` through proxy ${proxy.display}` : "";
  return new NetworkError(`cannot reach ${origin}${via}: ${detail}`, {
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
  const proxy = forwardedBy.get(response);
  const via = proxy ? ` (through proxy ${proxy.display})` : "";
  const said = (body.message ? `: ${body.message}` : body.code ? `: ${body.code}` : "") + via;
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
  // Through a forwarding proxy the answer may be the proxy's own (it could not connect).
  const answered = proxy ? `HTTP ${status}` : `registry answered HTTP ${status}`;
  return new NetworkError(`${answered} for ${what}${said}`, {
    status,
    retryable,
    retryAfterMs: parseRetryAfter(response.headers.get("retry-after")),
  });
}
