/**
 * Challenge-driven registry authentication. A session answers the
 * registry's `WWW-Authenticate` challenge (Bearer token or Basic), then
 * hands the same `Authorization` value to every request, including
 * concurrent downloads, until it expires; a later 401 fetches a new token
 * once. Nothing here knows a realm in advance.
 *
 * Credentials go only where the registry sends them: a challenge is answered
 * only when it comes from the registry's own origin (not from a CDN a blob
 * was redirected to), and never over plain HTTP to a token realm when the
 * registry itself speaks HTTPS (a downgrade), unless `--plain-http`.
 *
 * @module
 */
import { AuthError, InvalidContentError } from "../errors.ts";
import { encodeBase64Text } from "../encoding.ts";
import { errorForResponse, readCapped, type Transport } from "../transport.ts";
import { type Challenge, parseWwwAuthenticate } from "./challenge.ts";
import type { Credential } from "./credentials.ts";
import { registerSecret } from "../redact.ts";
import { isLoopbackRegistry } from "../reference.ts";
import { StallTimer } from "../retry.ts";

const MAX_TOKEN_BODY = 1024 * 1024;
/** Default token lifetime when the server names none (distribution spec). */
const DEFAULT_TOKEN_SECONDS = 60;
/** Renew a little before expiry so that a request does not race the deadline. */
const EXPIRY_MARGIN_MS = 5_000;

/** What a session needs to know. */
export interface AuthSessionOptions {
  transport: Transport;
  /** Repository path, for the `repository:NAME:pull` scope. */
  repository: string;
  /** Registry host, for messages. */
  registry: string;
  /** Resolves the credential to use, if any (called at most once). */
  credential: () => Promise<Credential | undefined>;
  /** Debug log sink; never receives secrets. */
  log?: (message: string) => void;
  /** Aborts token requests (SIGINT). */
  signal?: AbortSignal;
  /** A token request that receives nothing for this long fails (default 30 s). */
  stallTimeoutMs?: number;
  /** The user allowed plain HTTP (`--plain-http`): credentials may go to an http:// realm. */
  plainHttp?: boolean;
  /** Called as soon as a token request has been sent (before its answer). */
  onTokenRequest?: () => void;
}

/** Holds the current `Authorization` value for one registry repository. */
export class AuthSession {
  readonly #options: AuthSessionOptions;
  #authorization?: string;
  #expiresAt = Infinity;
  #challenge?: Challenge;
  #renewal?: Promise<void>;
  #credential?: Promise<Credential | undefined>;
  /** Scheme the registry was reached with ("https:" until a challenge says otherwise). */
  #registryProtocol = "https:";

  constructor(options: AuthSessionOptions) {
    this.#options = options;
  }

  /** The `Authorization` value to send now, renewing an expired token first. */
  async authorization(): Promise<string | undefined> {
    if (this.#challenge && Date.now() > this.#expiresAt - EXPIRY_MARGIN_MS) {
      await this.renew(this.#authorization);
    }
    return this.#authorization;
  }

  /**
   * Reacts to a 401: parses its challenges and obtains a new `Authorization`.
   * `usedAuthorization` is what the failed request carried; if another
   * request renewed it meanwhile, the new value is simply reused.
   * `registryBase` (`scheme://host[:port]`) is the registry's origin: a 401
   * from anywhere else (a CDN reached through a redirect) is refused, since
   * answering it would hand the user's credentials to whoever the registry
   * redirected us to.
   */
  async challenged(
    response: Response,
    usedAuthorization: string | undefined,
    registryBase: string,
  ): Promise<void> {
    const registry = new URL(registryBase);
    const from = parseUrl(response.url);
    if (!from || from.origin !== registry.origin) {
      await response.body?.cancel();
      throw new AuthError(
        `${from?.host ?? "an unknown host"} asks for authentication, but it is not the ` +
          `registry ${this.#options.registry}: not sending credentials there`,
        {
          hint: "the registry redirected the request to another host; " +
            "credentials are sent only to the registry and its token service",
        },
      );
    }
    this.#registryProtocol = registry.protocol;
    const header = response.headers.get("www-authenticate") ?? "";
    const challenges = parseWwwAuthenticate(header);
    const chosen = challenges.find((c) => c.scheme === "bearer") ??
      challenges.find((c) => c.scheme === "basic");
    if (!chosen) {
      throw new AuthError(
        `registry ${this.#options.registry} asks for authentication with an unsupported ` +
          `challenge ${JSON.stringify(header.slice(0, 80))}`,
      );
    }
    this.#challenge = chosen;
    await this.renew(usedAuthorization);
  }

  /** The challenge this session answers (to remember it for the next run), if any. */
  get challenge(): Challenge | undefined {
    return this.#challenge;
  }

  /**
   * Answers a challenge remembered from an earlier run of the registry at `registryBase`
   * (`scheme://host[:port]`, the registry's own origin) without asking `/v2/` again: the token
   * is requested straight away, under the same rules as a fresh challenge (no credentials over
   * plain HTTP to a realm of an HTTPS registry). The caller remembers challenges only from the
   * registry's origin and uses them only for it. On failure the session is as new.
   */
  async answerRemembered(challenge: Challenge, registryBase: string): Promise<void> {
    this.#registryProtocol = new URL(registryBase).protocol;
    this.#challenge = challenge;
    try {
      await this.renew(this.#authorization);
    } catch (e) {
      this.#challenge = undefined;
      this.#authorization = undefined;
      this.#expiresAt = Infinity;
      throw e;
    }
  }

  /** True once a challenge has been answered. */
  get authenticated(): boolean {
    return this.#authorization !== undefined;
  }

  /** Renews unless someone else already replaced `stale`; concurrent callers share one renewal. */
  renew(stale: string | undefined): Promise<void> {
    if (this.#authorization !== stale) return Promise.resolve();
    this.#renewal ??= this.#obtain().finally(() => this.#renewal = undefined);
    return this.#renewal;
  }

  #getCredential(): Promise<Credential | undefined> {
    this.#credential ??= this.#options.credential().then((credential) => {
      registerSecret(credential?.password);
      registerSecret(credential?.identityToken);
      if (credential?.username && credential.password !== undefined) {
        registerSecret(basicAuthorization(credential.username, credential.password).slice(6));
      }
      return credential;
    });
    return this.#credential;
  }

  async #obtain(): Promise<void> {
    const challenge = this.#challenge;
    if (!challenge) return;
    const credential = await this.#getCredential();
    if (challenge.scheme === "basic") {
      if (!credential?.username || credential.password === undefined) {
        throw new AuthError(`registry ${this.#options.registry} requires authentication`, {
          hint: "pass --username with --password-stdin, or run docker login",
        });
      }
      this.#authorization = basicAuthorization(credential.username, credential.password);
      this.#expiresAt = Infinity;
      this.#options.log?.(`using Basic credentials from ${credential.source}`);
      return;
    }
    const { token, lifetimeMs } = await this.#fetchToken(challenge, credential);
    this.#authorization = `Bearer ${token}`;
    this.#expiresAt = Date.now() + lifetimeMs;
  }

  /** Asks the realm for a token; a token server that stops answering is a (retryable) error. */
  async #fetchToken(
    challenge: Challenge,
    credential: Credential | undefined,
  ): Promise<{ token: string; lifetimeMs: number }> {
    const stall = new StallTimer(this.#options.stallTimeoutMs ?? 30_000, "token request");
    const outer = this.#options.signal;
    try {
      return await this.#requestToken(
        challenge,
        credential,
        outer ? AbortSignal.any([outer, stall.signal]) : stall.signal,
      );
    } catch (e) {
      throw stall.signal.aborted ? stall.signal.reason : e;
    } finally {
      stall.clear();
    }
  }

  /**
   * Whether credentials may travel in clear to `realm`: with `--plain-http`, or when the registry
   * itself is plain HTTP and both are on loopback (nothing leaves the machine). Never as a
   * downgrade from an HTTPS registry.
   */
  #plainAllowed(realm: URL): boolean {
    if (this.#options.plainHttp) return true;
    return this.#registryProtocol === "http:" && isLoopbackRegistry(realm.host);
  }

  async #requestToken(
    challenge: Challenge,
    credential: Credential | undefined,
    signal: AbortSignal,
  ): Promise<{ token: string; lifetimeMs: number }> {
    const realm = challenge.params.realm;
    let realmUrl: URL;
    try {
      realmUrl = new URL(realm ?? "");
    } catch {
      throw new AuthError(
        `registry ${this.#options.registry} sent a Bearer challenge without a valid realm`,
      );
    }
    if (realmUrl.protocol !== "https:" && realmUrl.protocol !== "http:") {
      throw new AuthError(`token realm ${realmUrl.origin} is not an HTTP(S) URL`);
    }
    if (
      realmUrl.protocol === "http:" && sendsCredentials(credential) && !this.#plainAllowed(realmUrl)
    ) {
      throw new AuthError(
        `refusing to send credentials for ${this.#options.registry} over plain HTTP to ` +
          `token service ${realmUrl.host}`,
        {
          hint: this.#registryProtocol === "https:"
            ? "the registry uses HTTPS but its token service is http://; " +
              "pass --plain-http only if you trust the network"
            : "pass --plain-http only if you trust the network",
        },
      );
    }
    const service = challenge.params.service;
    const scopes = new Set([`repository:${this.#options.repository}:pull`]);
    const transport = this.#options.transport;
    let response: Response;
    if (credential?.identityToken) {
      const form = new URLSearchParams({
        grant_type: "refresh_token",
        refresh_token: credential.identityToken,
        client_id: "imgpull",
      });
      if (service) form.set("service", service);
      form.set("scope", [...scopes].join(" "));
      this.#options.log?.(`requesting a token from ${realmUrl.origin} with a refresh token`);
      const sent = transport.fetch(realmUrl, {
        signal,
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded" },
        body: form,
      });
      this.#options.onTokenRequest?.();
      response = await sent;
    } else {
      const url = new URL(realmUrl);
      if (service) url.searchParams.set("service", service);
      for (const scope of scopes) url.searchParams.append("scope", scope);
      const headers = new Headers();
      if (credential?.username && credential.password !== undefined) {
        headers.set("authorization", basicAuthorization(credential.username, credential.password));
      }
      this.#options.log?.(
        `requesting a token from ${realmUrl.origin} ` +
          (headers.has("authorization") ? `as ${credential?.username}` : "anonymously"),
      );
      const sent = transport.fetch(url, { headers, signal });
      this.#options.onTokenRequest?.();
      response = await sent;
    }
    if (response.status === 401 || response.status === 403) {
      const cause = await errorForResponse(response, `token from ${realmUrl.origin}`);
      throw new AuthError(
        `authentication to ${this.#options.registry} failed: ` +
          (credential ? "credentials were rejected" : "anonymous access refused"),
        { cause, hint: "check --username/--password or your docker login" },
      );
    }
    if (!response.ok) throw await errorForResponse(response, `token from ${realmUrl.origin}`);
    const body = await readCapped(response, MAX_TOKEN_BODY, "token response");
    let parsed: Record<string, unknown>;
    try {
      parsed = JSON.parse(new TextDecoder().decode(body));
    } catch (e) {
      throw new InvalidContentError(`token server ${realmUrl.origin} sent invalid JSON`, {
        cause: e,
      });
    }
    const token = typeof parsed?.token === "string" && parsed.token
      ? parsed.token
      : typeof parsed?.access_token === "string" && parsed.access_token
      ? parsed.access_token
      : undefined;
    registerSecret(token);
    if (!token || /[\s,"]/.test(token)) {
      throw new InvalidContentError(`token server ${realmUrl.origin} sent no usable token`);
    }
    const seconds = typeof parsed.expires_in === "number" && parsed.expires_in > 0
      ? parsed.expires_in
      : DEFAULT_TOKEN_SECONDS;
    return { token, lifetimeMs: seconds * 1000 };
  }
}

/** Whether a token request with `credential` would carry a secret. */
function sendsCredentials(credential: Credential | undefined): boolean {
  return Boolean(
    credential?.identityToken || (credential?.username && credential.password !== undefined),
  );
}

function parseUrl(url: string): URL | undefined {
  try {
    return new URL(url);
  } catch {
    return undefined;
  }
}

/** `Basic base64(user:password)`. */
export function basicAuthorization(username: string, password: string): string {
  return `Basic ${encodeBase64Text(`${username}:${password}`)}`;
}
