/**
 * A client for one repository of one registry (distribution spec): it
 * chooses the scheme, owns authentication and asks for manifests and blobs.
 * Verification of what comes back is the caller's ({@link ./fetch.ts}).
 *
 * @module
 */
import { AuthSession } from "./auth/session.ts";
import type { Credential } from "./auth/credentials.ts";
import { NetworkError } from "./errors.ts";
import { MANIFEST_ACCEPT } from "./media_types.ts";
import { MAX_MANIFEST_BYTES } from "./manifest.ts";
import { isLoopbackRegistry, registryApiHost } from "./reference.ts";
import { StallTimer, withRetries } from "./retry.ts";
import {
  blobRequestHeaders,
  errorForResponse,
  readCapped,
  type TlsOptions,
  Transport,
} from "./transport.ts";

/** A failure to exchange HTTP at all (no response): connection refused, TLS mismatch, ... */
function isTransportFailure(e: unknown): boolean {
  return e instanceof NetworkError && e.status === undefined;
}

/** How to reach a registry. */
export interface RegistryClientOptions {
  /** As in a reference: "docker.io" or "host[:port]". */
  registry: string;
  repository: string;
  tls?: TlsOptions;
  /** Use plain HTTP for a registry that is not on loopback. */
  plainHttp?: boolean;
  /**
   * An insecure registry (registries.conf `insecure`, daemon.json `insecure-registries`): HTTPS
   * first, plain HTTP when HTTPS cannot connect, as for loopback registries; credentials may
   * then travel over HTTP.
   */
  insecure?: boolean;
  /** The API root path (default "/v2"); a mirror may live under a path prefix ("/cache/v2"). */
  apiRoot?: string;
  /** Resolves the credential to use, if any (called lazily, at most once). */
  credential?: () => Promise<Credential | undefined>;
  /** Debug log sink; never receives secrets. */
  log?: (message: string) => void;
  /** Overrides the manifest `Accept` list (tests use it to ask for schema1). */
  manifestAccept?: readonly string[];
  signal?: AbortSignal;
  /** Retries of a manifest or ping request after a transient failure (default 3). */
  retries?: number;
  /** A request that receives nothing for this long is aborted and retried (default 30 s). */
  stallTimeoutMs?: number;
}

/** A manifest as the registry sent it. */
export interface FetchedManifest {
  bytes: Uint8Array<ArrayBuffer>;
  contentType: string | null;
  /** The registry's `Docker-Content-Digest`, unverified. */
  digestHeader: string | null;
}

/** Talks to `/v2/<repository>/…` of one registry. */
export class RegistryClient {
  readonly options: RegistryClientOptions;
  readonly #transport: Transport;
  readonly #session: AuthSession;
  #base?: string;
  #answeredHttp = false;

  constructor(options: RegistryClientOptions) {
    this.options = options;
    this.#transport = new Transport(options.tls);
    this.#session = new AuthSession({
      transport: this.#transport,
      repository: options.repository,
      registry: options.registry,
      credential: options.credential ?? (() => Promise.resolve(undefined)),
      log: options.log,
      signal: options.signal,
      stallTimeoutMs: options.stallTimeoutMs,
      plainHttp: options.plainHttp || options.insecure,
    });
  }

  /** The API root path, without a trailing slash ("/v2" unless configured). */
  get apiRoot(): string {
    return (this.options.apiRoot ?? "/v2").replace(/\/+$/, "");
  }

  /** `scheme://host` chosen by {@link ping}. */
  get baseUrl(): string {
    if (!this.#base) throw new Error("RegistryClient.ping() must be called first");
    return this.#base;
  }

  /**
   * `GET /v2/`: picks the scheme and answers the auth challenge once, so that
   * all later (concurrent) requests start with a valid token. HTTPS always,
   * except for loopback registries, which fall back to HTTP as Docker does,
   * and registries named with --plain-http.
   */
  async ping(): Promise<void> {
    const host = registryApiHost(this.options.registry);
    if (this.options.plainHttp) {
      await this.retrying("ping", (signal) => this.#pingBase(`http://${host}`, signal));
      return;
    }
    try {
      await this.retrying("ping", (signal) => this.#pingBase(`https://${host}`, signal));
    } catch (httpsError) {
      const insecure = this.options.insecure || isLoopbackRegistry(this.options.registry);
      if (!isTransportFailure(httpsError) || !insecure) throw httpsError;
      const why = this.options.insecure ? "insecure registry" : "loopback registry";
      this.options.log?.(`HTTPS to ${host} failed, trying plain HTTP (${why})`);
      try {
        await this.retrying("ping", (signal) => this.#pingBase(`http://${host}`, signal));
      } catch (httpError) {
        // The registry did answer over HTTP, so what went wrong after that (auth,
        // 5xx, a broken token server...) is the real error. If it never spoke
        // plain HTTP, the HTTPS failure says more.
        throw this.#answeredHttp ? httpError : httpsError;
      }
    }
  }

  /**
   * Runs a small request (ping, manifest, config) with retries after
   * transient failures and a stall timeout covering the whole exchange.
   */
  retrying<T>(what: string, operation: (signal: AbortSignal) => Promise<T>): Promise<T> {
    return withRetries(async () => {
      const stall = new StallTimer(this.options.stallTimeoutMs ?? 30_000, what);
      const outer = this.options.signal;
      try {
        return await operation(outer ? AbortSignal.any([outer, stall.signal]) : stall.signal);
      } catch (e) {
        throw stall.signal.aborted ? stall.signal.reason : e;
      } finally {
        stall.clear();
      }
    }, {
      retries: this.options.retries ?? 3,
      signal: this.options.signal,
      onRetry: (e, n, delay) =>
        this.options.log?.(`retry ${n} of ${what} in ${delay} ms: ${e.message}`),
    });
  }

  async #pingBase(base: string, signal?: AbortSignal): Promise<void> {
    const response = await this.#transport.fetch(`${base}${this.apiRoot}/`, {
      signal: signal ?? this.options.signal,
    });
    // A registry that answers plain HTTP (other than "this is an HTTPS port") speaks it.
    if (response.status !== 400) this.#answeredHttp ||= base.startsWith("http:");
    if (response.status === 401) {
      this.#base = base;
      await this.#session.challenged(response, undefined, base);
      await response.body?.cancel();
      return;
    }
    if (!response.ok) {
      this.#base = undefined;
      throw await errorForResponse(response, `registry API at ${base}${this.apiRoot}/`);
    }
    await response.body?.cancel();
    this.#base = base;
  }

  /**
   * Sends an authorised GET: on 401 the session answers the new challenge
   * and the request is sent once more. Returns the response whatever its
   * status.
   */
  async #get(path: string, headers: HeadersInit, signal?: AbortSignal): Promise<Response> {
    const url = `${this.baseUrl}${this.apiRoot}/${this.options.repository}/${path}`;
    for (let attempt = 0;; attempt++) {
      const authorization = await this.#session.authorization();
      const requestHeaders = new Headers(headers);
      if (authorization) requestHeaders.set("authorization", authorization);
      const response = await this.#transport.fetch(url, {
        headers: requestHeaders,
        signal: signal ?? this.options.signal,
      });
      if (response.status !== 401 || attempt > 0) return response;
      await this.#session.challenged(response, authorization, this.baseUrl);
      await response.body?.cancel();
    }
  }

  /** Fetches a manifest by tag or digest, capped at 4 MiB. */
  getManifest(reference: string): Promise<FetchedManifest> {
    const accept = (this.options.manifestAccept ?? MANIFEST_ACCEPT).join(", ");
    const what = `manifest ${this.options.registry}/${this.options.repository}:${reference}`;
    return this.retrying(what, async (signal) => {
      const response = await this.#get(`manifests/${reference}`, {
        accept,
        "accept-encoding": "identity",
      }, signal);
      if (!response.ok) throw await errorForResponse(response, what);
      this.options.log?.(`manifest ${reference} served by ${this.endpointName}`);
      return {
        bytes: await readCapped(response, MAX_MANIFEST_BYTES, what),
        contentType: response.headers.get("content-type"),
        digestHeader: response.headers.get("docker-content-digest"),
      };
    });
  }

  /**
   * Opens a blob (config or layer) for streaming. `Accept-Encoding: identity`
   * keeps fetch from decoding the body, so the digest is checked against the
   * bytes the registry stores. The caller must consume or cancel the body.
   */
  async openBlob(
    digest: string,
    init: { signal?: AbortSignal; range?: { start: number; end?: number } } = {},
  ): Promise<Response> {
    const headers = blobRequestHeaders(init.range);
    const response = await this.#get(`blobs/${digest}`, headers, init.signal);
    if (!response.ok) {
      throw await errorForResponse(
        response,
        `blob ${digest} in ${this.options.registry}/${this.options.repository}`,
      );
    }
    // Once per blob, not per segment or retry.
    if (!init.range || init.range.start === 0) {
      this.options.log?.(`blob ${digest} served by ${this.endpointName}`);
    }
    return response;
  }

  /** Where requests go, for messages: `scheme://host[/prefix]/repository`. */
  get endpointName(): string {
    const prefix = this.apiRoot === "/v2" ? "" : this.apiRoot.replace(/\/v2$/, "");
    const base = this.#base ?? registryApiHost(this.options.registry);
    return `${base}${prefix}/${this.options.repository}`;
  }

  /** Closes the connection pool. */
  close(): void {
    this.#transport.close();
  }
}
