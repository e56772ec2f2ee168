/**
 * Reliability scenarios, redirects and authentication: redirect loops and downgrades, no
 * credentials carried to another host, malformed challenges, broken token endpoints, and the same
 * faults behind the loopback plain-HTTP fallback.
 * @module
 */
import { type FaultRegistry, serveBytes, startFaultRegistry } from "../fault_registry.ts";
import { buildImage, MiB, type TestImage } from "../hostile_image.ts";
import type { Scenario } from "../hostile_runner.ts";
import { endlessBody, exactly, expect, fault, manifestPath, pathOf, targetPath } from "./kit.ts";

/** Report rows / tests of this module. */
export const CLASSES: { id: string; title: string }[] = [
  { id: "redirects", title: "redirect loops and HTTPS to HTTP downgrades" },
  { id: "redirect-credentials", title: "redirect to another host carries no Authorization" },
  { id: "www-authenticate", title: "malformed WWW-Authenticate" },
  { id: "token-endpoint", title: "token endpoint answers garbage, huge bodies or errors" },
  { id: "plain-http-fallback", title: "errors behind the loopback plain-HTTP fallback" },
];

// ---------------------------------------------------------------------------------------------
// Redirects.

const redirects: Scenario[] = [
  fault({
    id: "redirect-loop-blob",
    cls: "redirects",
    title: "a layer redirects to itself forever: exit 6, bounded",
    code: 6,
    message: /redirect/,
  }, () => ({
    handler: (image) => (req) =>
      pathOf(req) === targetPath(image, "layer")
        ? new Response(null, { status: 302, headers: { location: pathOf(req) } })
        : undefined,
    check: (run) => {
      const n = run.count("layer");
      return expect(n >= 2 && n <= 12, `${n} layer requests`);
    },
  })),
  fault({
    id: "redirect-pingpong-manifest",
    cls: "redirects",
    title: "the manifest redirects between two URLs forever: exit 6, bounded",
    code: 6,
    message: /redirect/,
  }, () => ({
    handler: (image) => (req) => {
      const path = pathOf(req);
      if (path === manifestPath(image)) {
        return new Response(null, { status: 307, headers: { location: "/elsewhere/a" } });
      }
      if (path === "/elsewhere/a") {
        return new Response(null, { status: 308, headers: { location: manifestPath(image) } });
      }
      return undefined;
    },
    check: (run) => {
      const n = run.registry.requests.filter((r) =>
        r.path.includes("/manifests/") || r.path.startsWith("/elsewhere")
      ).length;
      return expect(n >= 2 && n <= 12, `${n} redirect requests`);
    },
  })),
  fault({
    id: "redirect-without-location",
    cls: "redirects",
    title: "a 302 without Location on a layer: exit 6",
    code: 6,
    message: /redirect|Location/,
  }, () => ({
    handler: (image) => (req) =>
      pathOf(req) === targetPath(image, "layer") ? new Response(null, { status: 302 }) : undefined,
  })),
  ...(["layer", "manifest"] as const).map((target) =>
    fault({
      id: `https-to-http-${target}`,
      cls: "redirects",
      title: `an HTTPS registry redirects the ${target} to plain HTTP: refused, exit 6`,
      code: 6,
      message: /plain HTTP|HTTPS/,
    }, () => {
      const image = buildImage();
      const server = startFaultRegistry({
        blobs: image.blobs,
        manifests: image.manifests,
        quiet: true,
      });
      return {
        image,
        tls: true,
        handler: () => (req) =>
          pathOf(req) === targetPath(image, target)
            ? new Response(null, {
              status: 307,
              headers: { location: `${server.url}${pathOf(req)}` },
            })
            : undefined,
        check: (run) => [
          ...expect(server.requests.length === 0, `the HTTP server got ${server.requests.length}`),
          ...exactly(run, target, 1, "a refused redirect is final"),
        ],
        extraClose: () => server.close(),
      };
    })
  ),
];

// ---------------------------------------------------------------------------------------------
// Credentials and redirects to another host.

/** A server on `localhost` (another host than 127.0.0.1) that serves blobs under /cdn/. */
function startCdn(image: TestImage): FaultRegistry {
  return startFaultRegistry({
    quiet: true,
    fault: (req) => {
      const digest = pathOf(req).replace(/^\/cdn\//, "");
      const bytes = image.blobs.get(digest);
      return bytes ? serveBytes(bytes) : new Response("no", { status: 404 });
    },
  });
}

function redirectWithAuth(mode: "basic" | "bearer"): Scenario {
  const user = "cdn-user";
  const password = `Pw-${crypto.randomUUID()}`;
  const token = `tok-${crypto.randomUUID()}`;
  const basic = `Basic ${btoa(`${user}:${password}`)}`;
  const expectedAuth = mode === "basic" ? basic : `Bearer ${token}`;
  return fault({
    id: `redirect-other-host-${mode}`,
    cls: "redirect-credentials",
    title: `${mode} auth: blobs redirected to another host are fetched without Authorization`,
    code: 0,
    verbose: true,
  }, () => {
    const image = buildImage();
    const cdn = startCdn(image);
    return {
      image,
      handler: () => (req) => {
        const path = pathOf(req);
        const origin = new URL(req.url).origin;
        const auth = req.headers.get("authorization");
        if (path === "/token") {
          return auth === basic ? Response.json({ token, expires_in: 300 }) : Response.json(
            { errors: [{ code: "UNAUTHORIZED", message: "bad credentials" }] },
            { status: 401 },
          );
        }
        if (auth !== expectedAuth) {
          return new Response("{}", {
            status: 401,
            headers: {
              "www-authenticate": mode === "basic"
                ? 'Basic realm="fault"'
                : `Bearer realm="${origin}/token",service="fault"`,
            },
          });
        }
        const blob = path.match(/\/blobs\/(.+)$/);
        if (blob) {
          return new Response(null, {
            status: 307,
            headers: {
              location: `http://localhost:${cdn.port}/cdn/${blob[1]}`,
              "set-cookie": "session=registry-cookie",
            },
          });
        }
        return undefined;
      },
      args: ["--username", user, "--password-stdin"],
      stdin: password,
      secrets: [password, btoa(`${user}:${password}`), token],
      check: (run) => {
        const carried = cdn.requests.filter((r) =>
          r.authorization !== null || r.headers.has("cookie")
        );
        return [
          ...expect(cdn.requests.length >= 3, `the other host got ${cdn.requests.length} requests`),
          ...expect(
            carried.length === 0,
            `${carried.length} requests to the other host carried Authorization or Cookie`,
          ),
          ...expect(
            run.blobRequests().every((r) => r.authorization === expectedAuth),
            "the registry's own blob requests lacked Authorization",
          ),
        ];
      },
      extraClose: () => cdn.close(),
    };
  });
}

// ---------------------------------------------------------------------------------------------
// Authentication challenges and token endpoints (over HTTPS, so no plain-HTTP fallback).

function challengeScenario(
  id: string,
  title: string,
  header: string | null,
  options: { tls?: boolean; cls?: string } = {},
): Scenario {
  return fault({
    id,
    cls: options.cls ?? "www-authenticate",
    title,
    code: 3,
    message: /authenticat|challenge|realm/,
  }, () => ({
    tls: options.tls ?? true,
    handler: () => (req) =>
      pathOf(req).startsWith("/v2/")
        ? new Response("{}", {
          status: 401,
          headers: header === null ? {} : { "www-authenticate": header },
        })
        : undefined,
  }));
}

const wwwAuthenticate: Scenario[] = [
  challengeScenario("challenge-bearer-bare", "WWW-Authenticate: Bearer (no realm)", "Bearer"),
  challengeScenario(
    "challenge-ftp-realm",
    'Bearer realm="ftp://127.0.0.1/token"',
    'Bearer realm="ftp://127.0.0.1/token",service="x"',
  ),
  challengeScenario(
    "challenge-realm-not-url",
    'Bearer realm="not a url"',
    'Bearer realm="not a url",service="x"',
  ),
  challengeScenario("challenge-missing", "401 without WWW-Authenticate", null),
  challengeScenario(
    "challenge-negotiate",
    "only Negotiate is offered",
    "Negotiate YIIGhgYJKoZIhvcSAQICAQBuggZ1",
  ),
  challengeScenario("challenge-junk", "WWW-Authenticate of commas and quotes", ',,,=,"";;;\\"=='),
  challengeScenario(
    "challenge-oversized",
    "WWW-Authenticate of 20 KiB without a realm",
    `Bearer ${"x=y,".repeat(5000)}`,
  ),
];

function tokenEndpoint(
  id: string,
  title: string,
  code: number,
  respond: (counter: { bytes: number }) => Response,
  options: { message?: RegExp; args?: string[]; tls?: boolean; cls?: string } = {},
): Scenario {
  return fault({
    id,
    cls: options.cls ?? "token-endpoint",
    title,
    code,
    message: options.message,
  }, () => {
    const counter = { bytes: 0 };
    return {
      tls: options.tls ?? true,
      handler: () => (req) => {
        const path = pathOf(req);
        if (path === "/token") return respond(counter);
        if (!path.startsWith("/v2/")) return undefined;
        const origin = new URL(req.url).origin;
        return new Response("{}", {
          status: 401,
          headers: { "www-authenticate": `Bearer realm="${origin}/token",service="fault"` },
        });
      },
      args: options.args,
      check: (run) => [
        ...expect(
          counter.bytes < 32 * MiB,
          `read ${(counter.bytes / MiB).toFixed(0)} MiB of token`,
        ),
        ...expect(
          run.registry.requests.filter((r) => r.path === "/token").length <= 2,
          "token endpoint asked too often",
        ),
      ],
    };
  });
}

const tokenEndpoints: Scenario[] = [
  tokenEndpoint(
    "token-garbage",
    "token endpoint answers 200 with HTML",
    8,
    () => new Response("<html><body>Welcome to nginx!</body></html>"),
    { message: /token/ },
  ),
  tokenEndpoint(
    "token-missing",
    "token endpoint answers JSON without a token",
    8,
    () => Response.json({ expires_in: 300 }),
    { message: /token/ },
  ),
  tokenEndpoint(
    "token-with-spaces",
    "token endpoint answers a token with spaces and quotes",
    8,
    () => Response.json({ token: 'a b"c' }),
    { message: /token/ },
  ),
  tokenEndpoint(
    "token-huge-chunked",
    "token endpoint sends an endless body",
    8,
    (counter) =>
      new Response(endlessBody(new TextEncoder().encode('{"token":"'), counter, 1024 * MiB, 0x61)),
    { message: /token/ },
  ),
  tokenEndpoint(
    "token-huge-declared",
    "token endpoint announces a 50 MiB body",
    8,
    (counter) =>
      new Response(
        endlessBody(new TextEncoder().encode('{"token":"'), counter, 50 * MiB, 0x61),
        { headers: { "content-length": String(50 * MiB) } },
      ),
    { message: /token/ },
  ),
  tokenEndpoint(
    "token-500",
    "token endpoint fails with 500",
    6,
    () =>
      Response.json({ errors: [{ code: "UNKNOWN", message: "backend down" }] }, { status: 500 }),
    { message: /500/, args: ["--retries", "1"] },
  ),
  tokenEndpoint(
    "token-401",
    "token endpoint refuses anonymous access",
    3,
    () =>
      Response.json({ errors: [{ code: "UNAUTHORIZED", message: "no anonymous pulls" }] }, {
        status: 401,
      }),
    { message: /authentication|refused/ },
  ),
];

/** The same faults over plain HTTP to 127.0.0.1, where imgpull first tries HTTPS. */
const plainHttpFallback: Scenario[] = [
  challengeScenario(
    "plain-http-challenge-bare",
    "plain HTTP: WWW-Authenticate: Bearer (no realm) is an auth error, not a TLS error",
    "Bearer",
    { tls: false, cls: "plain-http-fallback" },
  ),
  tokenEndpoint(
    "plain-http-token-garbage",
    "plain HTTP: token endpoint answers HTML",
    8,
    () => new Response("<html>garbage</html>"),
    { tls: false, cls: "plain-http-fallback", message: /token/ },
  ),
  fault({
    id: "plain-http-basic-no-credentials",
    cls: "plain-http-fallback",
    title: "plain HTTP: Basic challenge and no credentials is an auth error",
    code: 3,
    message: /authenticat/,
  }, () => ({
    handler: () => (req) =>
      pathOf(req).startsWith("/v2/")
        ? new Response("{}", {
          status: 401,
          headers: { "www-authenticate": 'Basic realm="fault"' },
        })
        : undefined,
  })),
  fault({
    id: "plain-http-ping-503",
    cls: "plain-http-fallback",
    title: "plain HTTP: /v2/ answers 503 every time: exit 6 naming the 503, retried",
    code: 6,
    message: /503/,
  }, () => ({
    handler: () => (req) =>
      pathOf(req) === "/v2/" ? new Response("down", { status: 503 }) : undefined,
    args: ["--retries", "1"],
    check: (run) => {
      const n = run.count("/v2/");
      return expect(n === 2, `${n} /v2/ requests over HTTP, expected 2 (one retry)`);
    },
  })),
];

/** Every scenario of this family, in class order. */
export const SCENARIOS: Scenario[] = [
  ...redirects,
  redirectWithAuth("basic"),
  redirectWithAuth("bearer"),
  ...wwwAuthenticate,
  ...tokenEndpoints,
  ...plainHttpFallback,
];
