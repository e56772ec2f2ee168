/**
 * A client for one repository of one registry (distribution spec): it
 * chooses the scheme, owns authentication and asks for manifests and blobs.
 * Verification of what comes back is the caller's ({@link ./fetch.ts}).
 *
 * @module
 */
import { AuthSession } from "./auth/session.ts";
import type { Challenge } from "./auth/challenge.ts";
import type { Credential } from "./auth/credentials.ts";
import { isDigest } from "./digest.ts";
import { NetworkError } from "./errors.ts";
import { type EndpointMemory, ManifestCache } from "./manifest_cache.ts";
import { MANIFEST_ACCEPT } from "./media_types.ts";
import { MAX_MANIFEST_BYTES } from "./manifest.ts";
import { isLoopbackRegistry, registryApiHost } from "./reference.ts";
import { StallTimer, withRetries } from "./retry.ts";
import { NEAR_LATENCY_MS } from "./segments.ts";
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
  /**
   * The private cache directory (`--cache-dir`): manifests are kept there by digest and what
   * the registry's `/v2/` said is remembered, so that a warm pull asks only for a token and the
   * tag (see ./manifest_cache.ts). Without it every manifest comes from the registry.
   */
  cacheDir?: string;
  /**
   * How many connections to have open to the registry ahead of the downloads, the ping's
   * included, while the token and the manifests are fetched (the download connection budget);
   * 0 (default): no warm-up.
   */
  warmConnections?: number;
}

/**
 * A ping quicker than this comes from a near registry, where TCP and TLS handshakes cost little:
 * no warm-up there.
 */
const WARM_MIN_PING_MS = 20;

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
  #cache?: Promise<ManifestCache | undefined>;
  /** The scheme came from the cache's memory, not from a ping of this run. */
  #baseRemembered = false;
  /** A remembered challenge not answered yet (see {@link #answerRemembered}). */
  #remembered?: EndpointMemory["challenge"];
  #answering?: Promise<void>;
  /** The warm-up to start when the ping's token request goes out ({@link #warmUp}). */
  #warmPending?: () => void;
  /** See {@link latencyMs}. */
  #latencyMs?: number;
  /** Connections being opened ahead of the downloads ({@link #warmUp}); never rejects. */
  #warming?: Promise<void>;
  readonly #warmAbort = new AbortController();
  #closed = false;

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
      onTokenRequest: () => this.#onTokenRequest(),
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
    if (await this.#pingFromMemory()) return;
    await this.#pingRegistry();
    await this.#rememberEndpoint();
  }

  async #pingRegistry(): Promise<void> {
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

  /** The manifest cache, opened once; undefined without a cache directory or when unusable. */
  #manifestCache(): Promise<ManifestCache | undefined> {
    const root = this.options.cacheDir;
    if (!root) return Promise.resolve(undefined);
    this.#cache ??= ManifestCache.open(root).catch((e) => {
      this.options.log?.(`manifest cache not used: ${(e as Error).message}`);
      return undefined;
    });
    return this.#cache;
  }

  /** Names this endpoint in the cache's memory: its API host and root. */
  get #endpointKey(): string {
    return `endpoint ${registryApiHost(this.options.registry)}${this.apiRoot}`;
  }

  /**
   * Whether a remembered base may be used now: it must be this registry's own host, HTTPS, or
   * plain HTTP where {@link ping} itself would use it (`--plain-http`, insecure, loopback).
   */
  #rememberedBaseAllowed(base: string): boolean {
    const host = registryApiHost(this.options.registry);
    if (this.options.plainHttp) return base === `http://${host}`;
    if (base === `https://${host}`) return true;
    return base === `http://${host}` &&
      (Boolean(this.options.insecure) || isLoopbackRegistry(this.options.registry));
  }

  /**
   * The ping of a warm run: what `/v2/` said last time (scheme, challenge) is taken as its
   * answer, saving the `/v2/` round trip. The remembered challenge is answered when the first
   * request needs it ({@link #answerRemembered}), so a pull whose manifests are all cached asks
   * for nothing at all. False when there is no usable memory.
   */
  async #pingFromMemory(): Promise<boolean> {
    const cache = await this.#manifestCache();
    const memory = await cache?.getEndpoint(this.#endpointKey);
    if (!cache || !memory || !this.#rememberedBaseAllowed(memory.base)) return false;
    this.#base = memory.base;
    this.#baseRemembered = true;
    this.#remembered = memory.challenge;
    this.options.log?.(
      `${memory.base}: using what /v2/ answered last time (` +
        (memory.challenge ? `${memory.challenge.scheme} challenge` : "no authentication") + ")",
    );
    return true;
  }

  /**
   * Answers the remembered challenge once, for the first request that needs it: the token is
   * asked for while an anonymous `/v2/` opens the connection to the registry (its TCP and TLS
   * handshakes would otherwise follow the token; concurrent, so no round trip is added). When
   * the token cannot be had that way, the memory is forgotten and the registry pinged.
   */
  #answerRemembered(): Promise<void> {
    const challenge = this.#remembered;
    if (!challenge) return this.#answering ?? Promise.resolve();
    this.#remembered = undefined;
    const base = this.baseUrl;
    this.#answering = (async () => {
      const warming = this.#openConnection(base);
      try {
        await this.#session.answerRemembered(challengeOf(challenge), base);
        this.options.log?.(`answered the remembered challenge of ${base}`);
      } catch (e) {
        if (this.options.signal?.aborted) throw e;
        this.options.log?.(
          `the remembered challenge of ${base} failed (${(e as Error).message}); ` +
            `asking the registry again`,
        );
        this.#baseRemembered = false;
        await (await this.#manifestCache())?.forgetEndpoint(this.#endpointKey);
        await this.#pingRegistry();
        await this.#rememberEndpoint();
      } finally {
        await warming;
      }
    })();
    return this.#answering;
  }

  /** Sends `GET /v2/` without credentials, only to have a connection open; never fails. */
  async #openConnection(base: string): Promise<void> {
    try {
      const response = await this.#transport.fetch(`${base}${this.apiRoot}/`, {
        signal: this.options.signal,
      });
      await response.body?.cancel();
    } catch { /* the real requests report what is wrong */ }
  }

  /** Remembers the scheme and the challenge of this registry (from its own origin only). */
  async #rememberEndpoint(): Promise<void> {
    const cache = await this.#manifestCache();
    if (!cache || !this.#base) return;
    const challenge = this.#session.challenge;
    const memory: EndpointMemory = { base: this.#base };
    if (challenge) {
      if (challenge.scheme !== "bearer" && challenge.scheme !== "basic") return;
      memory.challenge = { scheme: challenge.scheme };
      if (challenge.params.realm !== undefined) memory.challenge.realm = challenge.params.realm;
      if (challenge.params.service !== undefined) {
        memory.challenge.service = challenge.params.service;
      }
    }
    await cache.putEndpoint(this.#endpointKey, memory);
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
    const started = performance.now();
    const response = await this.#transport.fetch(`${base}${this.apiRoot}/`, {
      signal: signal ?? this.options.signal,
    });
    const pingMs = performance.now() - started;
    // A registry that answers plain HTTP (other than "this is an HTTPS port") speaks it.
    if (response.status !== 400) this.#answeredHttp ||= base.startsWith("http:");
    if (response.status === 401) {
      this.#base = base;
      // Its connection goes back to the pool now, for the requests after the token.
      await response.body?.cancel();
      // The download connections are opened once the token request is on its way (not before:
      // it is on the critical path), or straight after a challenge that needed none (Basic).
      this.#warmPending = () => this.#warmUp(base, pingMs);
      try {
        await this.#session.challenged(response, undefined, base);
        this.#onTokenRequest();
      } finally {
        this.#warmPending = undefined;
      }
      return;
    }
    if (!response.ok) {
      this.#base = undefined;
      throw await errorForResponse(response, `registry API at ${base}${this.apiRoot}/`);
    }
    await response.body?.cancel();
    this.#base = base;
    this.#warmUp(base, pingMs);
  }

  /**
   * Sends an authorised GET: on 401 the session answers the new challenge
   * and the request is sent once more. Returns the response whatever its
   * status.
   */
  async #get(
    path: string,
    headers: HeadersInit,
    signal?: AbortSignal,
    method: "GET" | "HEAD" = "GET",
  ): Promise<Response> {
    await this.#answerRemembered();
    const url = `${this.baseUrl}${this.apiRoot}/${this.options.repository}/${path}`;
    for (let attempt = 0;; attempt++) {
      const authorization = await this.#session.authorization();
      const requestHeaders = new Headers(headers);
      if (authorization) requestHeaders.set("authorization", authorization);
      const sent = performance.now();
      const response = await this.#transport.fetch(url, {
        method,
        headers: requestHeaders,
        signal: signal ?? this.options.signal,
      });
      this.#measured(performance.now() - sent);
      // The registry answered on the remembered scheme: it is right.
      if (response.status !== 400) this.#baseRemembered = false;
      if (response.status !== 401 || attempt > 0) return response;
      await this.#session.challenged(response, authorization, this.baseUrl);
      await response.body?.cancel();
      // The remembered challenge (if any) is out of date: keep the one that worked.
      await this.#rememberEndpoint();
    }
  }

  /**
   * The shortest time a request of this repository (manifest, tag, blob) took to its response
   * headers, in ms: about one round trip plus the registry's own time, once a request has gone
   * over an open connection. Undefined before the first request.
   */
  get latencyMs(): number | undefined {
    return this.#latencyMs;
  }

  /**
   * Records a request's time. The first one past the ping tells a near registry
   * ({@link NEAR_LATENCY_MS}): its downloads use one connection per blob (lib/fetch.ts), so a
   * warm-up still opening connections is stopped.
   */
  #measured(ms: number): void {
    const first = this.#latencyMs === undefined;
    if (first || ms < this.#latencyMs!) this.#latencyMs = ms;
    if (first && ms < NEAR_LATENCY_MS) this.#warmAbort.abort();
  }

  get #manifestAccept(): string {
    return (this.options.manifestAccept ?? MANIFEST_ACCEPT).join(", ");
  }

  /** Names a tag of this repository in the cache's memory (per Accept list: it can change the answer). */
  #tagKey(tag: string): string {
    return `${this.#endpointKey} ${this.options.repository}:${tag} ${this.#manifestAccept}`;
  }

  /**
   * Fetches a manifest by tag or digest, capped at 4 MiB. With a cache directory, a manifest
   * asked for by digest comes from the cache when it is there (hashed again); a tag whose last
   * digest is cached is resolved with a `HEAD` (its `Docker-Content-Digest`), and the manifest
   * then comes from the cache if that digest is there. What is fetched is cached under the
   * sha256 of its bytes.
   */
  async getManifest(reference: string): Promise<FetchedManifest> {
    const cache = await this.#manifestCache();
    try {
      return await this.#manifestVia(cache, reference);
    } catch (e) {
      // A remembered scheme the registry no longer speaks: forget it, ping, and ask again.
      const wrongScheme = isTransportFailure(e) ||
        (e instanceof NetworkError && e.status === 400);
      if (!this.#baseRemembered || !wrongScheme || this.options.signal?.aborted) throw e;
      this.options.log?.(`${this.#base} failed (${(e as Error).message}); pinging the registry`);
      this.#baseRemembered = false;
      await cache?.forgetEndpoint(this.#endpointKey);
      await this.#pingRegistry();
      await this.#rememberEndpoint();
      return await this.#manifestVia(cache, reference);
    }
  }

  async #manifestVia(
    cache: ManifestCache | undefined,
    reference: string,
  ): Promise<FetchedManifest> {
    if (cache) {
      const cached = isDigest(reference)
        ? await cache.getManifest(reference)
        : await this.#resolveTagFromCache(cache, reference);
      if (cached) {
        this.options.log?.(`manifest ${cached.digest} from the cache`);
        return {
          bytes: cached.bytes,
          contentType: cached.contentType,
          digestHeader: cached.digest,
        };
      }
    }
    const fetched = await this.#fetchManifest(reference);
    if (cache) {
      const digest = await cache.putManifest(fetched.bytes, fetched.contentType);
      // Schema1 digests cover a payload, not the body: no hint would ever match.
      if (!isDigest(reference) && (fetched.digestHeader ?? digest) === digest) {
        await cache.putTag(this.#tagKey(reference), digest);
      }
    }
    return fetched;
  }

  #fetchManifest(reference: string): Promise<FetchedManifest> {
    const what = `manifest ${this.options.registry}/${this.options.repository}:${reference}`;
    return this.retrying(what, async (signal) => {
      const response = await this.#get(`manifests/${reference}`, {
        accept: this.#manifestAccept,
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
   * A tag resolved with one `HEAD` to a cached manifest, when the tag was seen before and its
   * manifest is still cached (otherwise a GET fetches it at once, with no extra round trip).
   * Undefined when the registry's answer does not lead to a cached manifest.
   */
  async #resolveTagFromCache(cache: ManifestCache, tag: string) {
    const key = this.#tagKey(tag);
    const hint = await cache.getTag(key);
    if (!hint || !(await cache.getManifest(hint))) return undefined;
    const what = `manifest ${this.options.registry}/${this.options.repository}:${tag}`;
    const digest = await this.retrying(what, async (signal) => {
      const response = await this.#get(
        `manifests/${tag}`,
        {
          accept: this.#manifestAccept,
          "accept-encoding": "identity",
        },
        signal,
        "HEAD",
      );
      await response.body?.cancel();
      // Anything unusual is left to the GET, which reports it properly.
      return response.ok ? response.headers.get("docker-content-digest")?.trim() : undefined;
    });
    if (!digest || !isDigest(digest)) return undefined;
    const cached = await cache.getManifest(digest);
    if (cached && digest !== hint) await cache.putTag(key, digest);
    this.options.log?.(`tag ${tag} is ${digest} at ${this.endpointName}`);
    return cached;
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

  /** Starts the warm-up the ping left pending, once. */
  #onTokenRequest(): void {
    const warm = this.#warmPending;
    this.#warmPending = undefined;
    warm?.();
  }

  /**
   * Opens the connections the downloads will use while the token and the manifests are fetched,
   * so that their TCP and TLS handshakes are off the critical path. Once per client; only where
   * it pays (the ping took {@link WARM_MIN_PING_MS} or more: a near registry's handshakes cost
   * next to nothing) and never to plain HTTP on loopback. The requests are anonymous
   * `GET /v2/` to this endpoint, whose failures are nobody's concern.
   */
  #warmUp(base: string, pingMs: number): void {
    const count = this.options.warmConnections ?? 0;
    // One connection is the ping's own, idle now: a budget of one needs no warm-up.
    if (this.#warming || count < 2 || pingMs < WARM_MIN_PING_MS) return;
    if (base.startsWith("http:") && isLoopbackRegistry(this.options.registry)) return;
    const outer = this.options.signal;
    const signal = outer
      ? AbortSignal.any([outer, this.#warmAbort.signal])
      : this.#warmAbort.signal;
    const started = performance.now();
    this.#warming = this.#transport.warm(new URL(`${base}${this.apiRoot}/`), count, signal)
      .then((opened) =>
        this.options.log?.(
          `opened ${opened} of ${count} connections to ${base} in ` +
            `${Math.round(performance.now() - started)} ms ` +
            `(the ping took ${Math.round(pingMs)} ms)`,
        )
      );
  }

  /**
   * Closes the connection pool, first stopping the warm-up (if any) and waiting until its
   * requests have settled, so that nothing of this client outlives it.
   */
  async dispose(): Promise<void> {
    this.#warmAbort.abort();
    await this.#warming;
    this.close();
  }

  /** Closes the connection pool (a warm-up still running is stopped); once. */
  close(): void {
    this.#warmAbort.abort();
    if (this.#closed) return;
    this.#closed = true;
    this.#transport.close();
  }
}

/** A remembered challenge in the form the session answers (parameters without a prototype). */
function challengeOf(memory: NonNullable<EndpointMemory["challenge"]>): Challenge {
  const params: Record<string, string> = Object.create(null);
  if (memory.realm !== undefined) params.realm = memory.realm;
  if (memory.service !== undefined) params.service = memory.service;
  return { scheme: memory.scheme, params };
}
