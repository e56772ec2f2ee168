/**
 * A Docker token-auth server (distribution `docs/spec/auth/token.md`, `oauth.md`) for tests:
 * HTTPS on 127.0.0.1, RS256 JWTs with an `x5c` chain that Distribution 2.8 verifies against the
 * test CA, and a log of every request for assertions.
 * @module
 */
import { createSign, randomUUID } from "node:crypto";
import { Buffer } from "node:buffer";
import { pemToDerBase64, type TestPki } from "./tls.ts";

/** One access entry of a token (`access` claim). */
export interface TokenAccess {
  type: string;
  name: string;
  actions: string[];
}

/** A request the token server saw. */
export interface TokenRequest {
  method: string;
  path: string;
  /** Query parameters (every value, in order). */
  query: Record<string, string[]>;
  /** POST form fields (every value, in order); undefined for GET. */
  form?: Record<string, string[]>;
  /** Every `scope` asked for, from the query or the form. */
  scopes: string[];
  service: string | null;
  /** `grant_type` of a POST. */
  grantType?: string;
  hadAuthorization: boolean;
  /** User name from Basic credentials, if any were sent. */
  username?: string;
  /** HTTP status of the answer. */
  status: number;
}

/** Options for {@link startTokenServer}. */
export interface TokenServerOptions {
  pki: TestPki;
  /** Expected `service` and the token's `aud`. */
  service: string;
  /** The token's `iss`; the registry must be configured with the same. */
  issuer: string;
  /** When set, GET requires valid Basic credentials of one of these users (name → password). */
  users?: Record<string, string>;
  /** Token lifetime in seconds (`expires_in`), default 300. */
  expiresIn?: number;
  /** The only refresh token accepted by `POST grant_type=refresh_token`. */
  refreshToken?: string;
  /** Subject of tokens issued for the refresh token, default `refresh-user`. */
  refreshTokenUser?: string;
  /** Which token fields a GET answer carries, default both `token` and `access_token`. */
  tokenFields?: "both" | "token" | "access_token";
  /** Answer 404 to every POST, like registries without OAuth2 support. */
  disablePost?: boolean;
  /**
   * Decides which actions to grant for a requested scope; default: everything requested.
   * Return an empty array to grant nothing for it.
   */
  authorize?: (access: TokenAccess, username: string | undefined) => string[];
}

/** A running token server. */
export interface TokenServer {
  /** The realm URL, `https://127.0.0.1:PORT/token`. */
  url: string;
  requests: TokenRequest[];
  /** Issues a token directly (same claims as over HTTP), for tests that need one by hand. */
  issue(access: TokenAccess[], subject?: string): string;
  close(): Promise<void>;
}

function base64url(data: string | Uint8Array): string {
  return Buffer.from(data).toString("base64url");
}

/** Parses `type:name:actions`; the name may itself contain colons (a registry host:port). */
export function parseScope(scope: string): TokenAccess | undefined {
  const first = scope.indexOf(":");
  const last = scope.lastIndexOf(":");
  if (first <= 0 || last === first) return undefined;
  const actions = scope.slice(last + 1).split(",").filter(Boolean);
  return { type: scope.slice(0, first), name: scope.slice(first + 1, last), actions };
}

function parseBasic(header: string | null): { user: string; password: string } | undefined {
  if (!header) return undefined;
  const m = header.match(/^Basic\s+(\S+)$/i);
  if (!m) return undefined;
  const decoded = Buffer.from(m[1], "base64").toString("utf8");
  const colon = decoded.indexOf(":");
  if (colon < 0) return undefined;
  return { user: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
}

function multiMap(params: URLSearchParams): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  for (const [k, v] of params) (out[k] ??= []).push(v);
  return out;
}

function jsonResponse(status: number, body: unknown, headers: Record<string, string> = {}) {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "Content-Type": "application/json", ...headers },
  });
}

/**
 * Starts the token server. GET `/token?service=&scope=` (scope may repeat) answers
 * `{token, access_token, expires_in, issued_at}`; POST `/token` with `grant_type=password` or
 * `grant_type=refresh_token` answers the OAuth2 form `{access_token, scope, expires_in,
 * issued_at[, refresh_token]}`.
 */
export function startTokenServer(opts: TokenServerOptions): Promise<TokenServer> {
  const expiresIn = opts.expiresIn ?? 300;
  // Distribution 2.8 verifies x5c[0] against its rootcertbundle, with the rest as
  // intermediates; the CA is in the bundle, so the signing cert alone suffices.
  const x5c = [pemToDerBase64(opts.pki.tokenCertPem)];
  const requests: TokenRequest[] = [];

  const issue = (access: TokenAccess[], subject = ""): string => {
    const now = Math.floor(Date.now() / 1000);
    const header = { typ: "JWT", alg: "RS256", x5c };
    const claims = {
      iss: opts.issuer,
      sub: subject,
      aud: opts.service,
      exp: now + expiresIn,
      nbf: now - 1,
      iat: now,
      jti: randomUUID(),
      access,
    };
    const input = `${base64url(JSON.stringify(header))}.${base64url(JSON.stringify(claims))}`;
    const signature = createSign("RSA-SHA256").update(input).sign(opts.pki.tokenKeyPem);
    return `${input}.${base64url(signature)}`;
  };

  const grant = (scopes: string[], username: string | undefined): TokenAccess[] => {
    const out: TokenAccess[] = [];
    for (const scope of scopes) {
      const access = parseScope(scope);
      if (!access) continue;
      const actions = opts.authorize ? opts.authorize(access, username) : access.actions;
      if (actions.length > 0) out.push({ ...access, actions });
    }
    return out;
  };

  const checkUser = (user: string, password: string): boolean =>
    opts.users === undefined || (Object.hasOwn(opts.users, user) && opts.users[user] === password);

  const unauthorized = () =>
    jsonResponse(401, { errors: [{ code: "UNAUTHORIZED", message: "authentication required" }] }, {
      "WWW-Authenticate": 'Basic realm="imgpull-token-server"',
    });

  const handle = async (req: Request, record: TokenRequest): Promise<Response> => {
    if (record.path !== "/token") return new Response("not found\n", { status: 404 });
    const basic = parseBasic(req.headers.get("Authorization"));
    record.username = basic?.user;

    if (req.method === "GET") {
      if (opts.users !== undefined && !(basic && checkUser(basic.user, basic.password))) {
        return unauthorized();
      }
      const token = issue(grant(record.scopes, basic?.user), basic?.user ?? "");
      const fields = opts.tokenFields ?? "both";
      return jsonResponse(200, {
        ...(fields !== "access_token" ? { token } : {}),
        ...(fields !== "token" ? { access_token: token } : {}),
        expires_in: expiresIn,
        issued_at: new Date().toISOString(),
      });
    }

    if (req.method === "POST") {
      if (opts.disablePost) return new Response("404 page not found\n", { status: 404 });
      const form = new URLSearchParams(await req.text());
      record.form = multiMap(form);
      record.grantType = form.get("grant_type") ?? undefined;
      record.scopes = [...record.scopes, ...form.getAll("scope").flatMap((s) => s.split(" "))]
        .filter(Boolean);
      record.service = form.get("service") ?? record.service;
      let subject: string;
      if (record.grantType === "refresh_token") {
        const presented = form.get("refresh_token");
        if (!opts.refreshToken || presented !== opts.refreshToken) {
          return jsonResponse(401, { error: "invalid_grant" });
        }
        subject = opts.refreshTokenUser ?? "refresh-user";
      } else if (record.grantType === "password") {
        const user = form.get("username") ?? "";
        if (!checkUser(user, form.get("password") ?? "")) {
          return jsonResponse(401, { error: "invalid_grant" });
        }
        record.username = user;
        subject = user;
      } else {
        return jsonResponse(400, { error: "unsupported_grant_type" });
      }
      const token = issue(grant(record.scopes, subject), subject);
      const offline = form.get("access_type") === "offline" && opts.refreshToken;
      return jsonResponse(200, {
        access_token: token,
        scope: record.scopes.join(" "),
        expires_in: expiresIn,
        issued_at: new Date().toISOString(),
        ...(offline ? { refresh_token: opts.refreshToken } : {}),
      });
    }
    return new Response("method not allowed\n", { status: 405 });
  };

  const server = Deno.serve({
    hostname: "127.0.0.1",
    port: 0,
    cert: opts.pki.serverCertPem,
    key: opts.pki.serverKeyPem,
    onListen: () => {},
  }, async (req) => {
    const url = new URL(req.url);
    const record: TokenRequest = {
      method: req.method,
      path: url.pathname,
      query: multiMap(url.searchParams),
      scopes: url.searchParams.getAll("scope"),
      service: url.searchParams.get("service"),
      hadAuthorization: req.headers.has("Authorization"),
      status: 0,
    };
    requests.push(record);
    const res = await handle(req, record);
    record.status = res.status;
    return res;
  });

  return Promise.resolve({
    url: `https://127.0.0.1:${server.addr.port}/token`,
    requests,
    issue,
    close: async () => {
      await server.shutdown();
      await server.finished;
    },
  });
}
