/**
 * Challenge-driven registry authentication. A session answers the
 * registry's `WWW-Authenticate` challenge (Bearer token or Basic), then
 * hands the same `Authorization` value to every request, including
 * concurrent downloads, until it expires; a later 401 fetches a new token
 * once. Nothing here knows a realm in advance.
 *
 * @module
 */
import { AuthError, InvalidContentError } from "../errors.ts";
import { encodeBase64Text } from "../encoding.ts";
import { errorForResponse, readCapped, type Transport } from "../transport.ts";
import { type Challenge, parseWwwAuthenticate } from "./challenge.ts";
import type { Credential } from "./credentials.ts";
import { registerSecret } from "../redact.ts";
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
}

/** Holds the current `Authorization` value for one registry repository. */
export class AuthSession {
  readonly #options: AuthSessionOptions;
  #authorization?: string;
  #expiresAt = Infinity;
  #challenge?: Challenge;
  #renewal?: Promise<void>;
  #credential?: Promise<Credential | undefined>;

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
   */
  async challenged(response: Response, usedAuthorization: string | undefined): Promise<void> {
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
      response = await transport.fetch(realmUrl, {
        signal,
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded" },
        body: form,
      });
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
      response = await transport.fetch(url, { headers, signal });
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

/** `Basic base64(user:password)`. */
export function basicAuthorization(username: string, password: string): string {
  return `Basic ${encodeBase64Text(`${username}:${password}`)}`;
}
