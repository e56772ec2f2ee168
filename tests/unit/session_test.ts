/**
 * Where an AuthSession sends credentials: only in answer to the registry's own challenges, and
 * never in clear to a token realm when that would be a downgrade from the registry's HTTPS.
 * The transport is a fake that records requests (nothing is sent anywhere).
 */
import assert from "node:assert/strict";
import { AuthSession } from "../../lib/auth/session.ts";
import type { Credential } from "../../lib/auth/credentials.ts";
import { AuthError } from "../../lib/errors.ts";
import type { Transport, TransportRequest } from "../../lib/transport.ts";

/** A response as fetch returns it, with its URL. */
function responseAt(url: string, status: number, headers: HeadersInit = {}, body?: string) {
  const response = new Response(body ?? null, { status, headers });
  Object.defineProperty(response, "url", { value: url });
  return response;
}

function setup(
  credential: Credential | undefined,
  options: { plainHttp?: boolean; onTokenRequest?: () => void } = {},
) {
  const sent: { url: string; request: TransportRequest }[] = [];
  let credentialAsked = 0;
  const transport = {
    fetch: (url: string | URL, request: TransportRequest = {}) => {
      sent.push({ url: String(url), request });
      return Promise.resolve(
        responseAt(String(url), 200, {}, JSON.stringify({ token: "tok-1234", expires_in: 300 })),
      );
    },
  } as unknown as Transport;
  const session = new AuthSession({
    transport,
    repository: "team/app",
    registry: "registry.example:5000",
    credential: () => {
      credentialAsked++;
      return Promise.resolve(credential);
    },
    plainHttp: options.plainHttp,
    onTokenRequest: options.onTokenRequest,
  });
  return { session, sent, credentialAsked: () => credentialAsked };
}

const BASIC: Credential = { username: "u", password: "pw-unit-secret", source: "flags" };
const REFRESH: Credential = { identityToken: "refresh-unit-secret", source: "config" };

const bearer = (realm: string) => ({ "www-authenticate": `Bearer realm="${realm}",service="r"` });

Deno.test("session: a 401 from another origin than the registry is refused, naming that host", async () => {
  const { session, sent, credentialAsked } = setup(BASIC);
  const cdn = responseAt(
    "http://localhost:9000/cdn/blob",
    401,
    bearer("http://localhost:9000/token"),
  );
  await assert.rejects(session.challenged(cdn, undefined, "http://127.0.0.1:5000"), (e) => {
    assert.ok(e instanceof AuthError);
    assert.match(e.message, /localhost:9000 .*not the registry/);
    return true;
  });
  assert.equal(sent.length, 0);
  assert.equal(credentialAsked(), 0);
  assert.equal(session.authenticated, false);
});

Deno.test("session: the registry's own challenge is answered (realm on another HTTPS host)", async () => {
  const { session, sent } = setup(BASIC);
  const own = responseAt(
    "https://registry.example:5000/v2/",
    401,
    bearer("https://auth.example/token"),
  );
  await session.challenged(own, undefined, "https://registry.example:5000");
  assert.equal(sent.length, 1);
  assert.match(sent[0].url, /^https:\/\/auth\.example\/token\?/);
  assert.equal(await session.authorization(), "Bearer tok-1234");
});

Deno.test("session: no credentials to an http:// realm behind an HTTPS registry", async (t) => {
  for (const [name, credential] of [["password", BASIC], ["refresh token", REFRESH]] as const) {
    await t.step(name, async () => {
      const { session, sent } = setup(credential);
      const own = responseAt(
        "https://registry.example:5000/v2/",
        401,
        bearer("http://127.0.0.1:8080/token"),
      );
      await assert.rejects(
        session.challenged(own, undefined, "https://registry.example:5000"),
        (e) => {
          assert.ok(e instanceof AuthError);
          assert.match(e.message, /plain HTTP .*127\.0\.0\.1:8080/);
          assert.match(e.hint ?? "", /--plain-http/);
          return true;
        },
      );
      assert.equal(sent.length, 0);
    });
  }
});

Deno.test("session: an anonymous token from an http:// realm is still fetched", async () => {
  const { session, sent } = setup(undefined);
  const own = responseAt("https://registry.example/v2/", 401, bearer("http://auth.example/t"));
  await session.challenged(own, undefined, "https://registry.example");
  assert.equal(sent.length, 1);
  assert.equal(new Headers(sent[0].request.headers).get("authorization"), null);
});

Deno.test("session: --plain-http allows credentials to an http:// realm", async () => {
  const { session, sent } = setup(BASIC, { plainHttp: true });
  const own = responseAt("http://registry.example/v2/", 401, bearer("http://auth.example/t"));
  await session.challenged(own, undefined, "http://registry.example");
  assert.equal(sent.length, 1);
  assert.match(new Headers(sent[0].request.headers).get("authorization") ?? "", /^Basic /);
});

Deno.test("session: a plain-HTTP loopback registry may use a loopback http:// realm only", async () => {
  const allowed = setup(BASIC);
  await allowed.session.challenged(
    responseAt("http://127.0.0.1:5000/v2/", 401, bearer("http://localhost:8080/token")),
    undefined,
    "http://127.0.0.1:5000",
  );
  assert.equal(allowed.sent.length, 1);

  const remote = setup(BASIC);
  await assert.rejects(
    remote.session.challenged(
      responseAt("http://127.0.0.1:5000/v2/", 401, bearer("http://auth.example/token")),
      undefined,
      "http://127.0.0.1:5000",
    ),
    AuthError,
  );
  assert.equal(remote.sent.length, 0);
});

Deno.test("session: onTokenRequest is told once a token request is on its way, not for Basic", async () => {
  for (const credential of [BASIC, REFRESH, undefined]) {
    const told: number[] = [];
    const { session, sent } = setup(credential, { onTokenRequest: () => told.push(sent.length) });
    const own = responseAt("https://registry.example/v2/", 401, bearer("https://auth.example/t"));
    await session.challenged(own, undefined, "https://registry.example");
    // Called after the request was handed to the transport, before its answer was read.
    assert.deepEqual(told, [1], credential?.source ?? "anonymous");
  }
  const told: number[] = [];
  const basic = setup(BASIC, { onTokenRequest: () => told.push(1) });
  await basic.session.challenged(
    responseAt("https://registry.example/v2/", 401, { "www-authenticate": 'Basic realm="r"' }),
    undefined,
    "https://registry.example",
  );
  assert.equal(await basic.session.authorization(), "Basic dTpwdy11bml0LXNlY3JldA==");
  assert.deepEqual(told, []);
});
