/**
 * Security scenarios (auth and transport security): credentials go only to the registry and its
 * token service, never in clear as a downgrade from HTTPS, and TLS material the TLS stack
 * refuses is a clean network error naming the file, not a crash.
 * @module
 */
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { type FaultRegistry, startFaultRegistry } from "../fault_registry.ts";
import { buildImage, expectedArchive } from "../hostile_image.ts";
import type { Scenario, Services } from "../hostile_runner.ts";
import { runOk } from "../process.ts";
import type { TestPki } from "../tls.ts";
import { expect, fault, type Handler, pathOf } from "./kit.ts";

/** Report rows / tests of this module. */
export const CLASSES: { id: string; title: string }[] = [
  {
    id: "cross-origin-challenge",
    title: "a challenge from a host the registry redirected to is not answered",
  },
  { id: "plain-http-realm", title: "credentials never go to an http:// realm behind HTTPS" },
  { id: "tls-setup", title: "TLS files the TLS stack refuses are a clean exit 6 naming them" },
];

const USER = "auth-user";

/** Fresh credentials and what a leak of them would look like. */
function credentials() {
  const password = `Pw-${crypto.randomUUID()}`;
  const basic = `Basic ${btoa(`${USER}:${password}`)}`;
  return {
    password,
    basic,
    args: ["--username", USER, "--password-stdin"],
    secrets: [password, btoa(`${USER}:${password}`)],
  };
}

/** A 401 with `header` as its challenge. */
function challenge(header: string): Response {
  return Response.json({ errors: [{ code: "UNAUTHORIZED", message: "log in" }] }, {
    status: 401,
    headers: { "www-authenticate": header },
  });
}

/** A registry that lets `Bearer TOKEN` through and sends everyone else to REALM's /token. */
function bearerFrom(realm: FaultRegistry, token: string): Handler {
  return (req) =>
    req.headers.get("authorization") === `Bearer ${token}`
      ? undefined
      : challenge(`Bearer realm="${realm.url}/token",service="registry"`);
}

/**
 * 11.3: the registry (Basic, or Bearer with its own token endpoint) redirects blobs to a "CDN"
 * on another loopback origin (`localhost` instead of `127.0.0.1`), which answers 401 with a
 * Bearer challenge whose realm is its own token endpoint. Answering it sent the user's Basic
 * credentials to the CDN's realm and the CDN's token back to the registry.
 */
function crossOriginChallenge(mode: "basic" | "bearer"): Scenario {
  return fault({
    id: `cross-origin-challenge-${mode}`,
    cls: "cross-origin-challenge",
    title: `${mode} registry: a 401 from the blob CDN is refused, naming the CDN`,
    code: 3,
    message: /localhost:\d+.*not the registry/,
  }, () => {
    const creds = credentials();
    const registryToken = `registry-tok-${crypto.randomUUID()}`;
    const cdnToken = `cdn-tok-${crypto.randomUUID()}`;
    let cdnPort = 0;
    const cdn = startFaultRegistry({
      quiet: true,
      fault: (req) =>
        pathOf(req) === "/token" ? Response.json({ token: cdnToken, expires_in: 300 }) : challenge(
          `Bearer realm="http://localhost:${cdnPort}/token",service="cdn"`,
        ),
    });
    cdnPort = cdn.port;
    const expectedAuth = mode === "basic" ? creds.basic : `Bearer ${registryToken}`;
    return {
      handler: () => (req) => {
        const path = pathOf(req);
        const auth = req.headers.get("authorization");
        if (path === "/token") {
          return auth === creds.basic
            ? Response.json({ token: registryToken, expires_in: 300 })
            : challenge('Basic realm="token"');
        }
        if (auth !== expectedAuth) {
          const origin = new URL(req.url).origin;
          return challenge(
            mode === "basic"
              ? 'Basic realm="registry"'
              : `Bearer realm="${origin}/token",service="registry"`,
          );
        }
        const blob = path.match(/\/blobs\/(.+)$/);
        if (blob) {
          return new Response(null, {
            status: 307,
            headers: { location: `http://localhost:${cdnPort}/cdn/${blob[1]}` },
          });
        }
        return undefined;
      },
      args: creds.args,
      stdin: creds.password,
      expected: null,
      secrets: [...creds.secrets, registryToken, cdnToken],
      check: (run) => {
        const tokenRequests = cdn.requests.filter((r) => r.path === "/token");
        const carried = cdn.requests.filter((r) => r.authorization !== null);
        const cdnTokenBack = run.registry.requests.filter((r) =>
          r.authorization === `Bearer ${cdnToken}`
        );
        return [
          ...expect(cdn.requests.length > 0, "the blob redirect was never followed"),
          ...expect(
            tokenRequests.length === 0,
            `the CDN's realm got ${tokenRequests.length} token requests ` +
              `(${tokenRequests.filter((r) => r.authorization).length} with credentials)`,
          ),
          ...expect(carried.length === 0, `${carried.length} CDN requests carried Authorization`),
          ...expect(
            cdnTokenBack.length === 0,
            `the CDN's token went back to the registry ${cdnTokenBack.length} times`,
          ),
        ];
      },
      extraClose: () => cdn.close(),
    };
  });
}

/**
 * 11.7: an HTTPS registry names a plain-HTTP token realm on another origin. Asking it for a
 * token with the user's Basic credentials puts the password on the wire in clear; it is refused
 * (loopback stands in for a remote host: the rule is "no downgrade from the registry's HTTPS").
 */
const plainHttpRealm: Scenario = fault({
  id: "plain-http-realm-behind-https",
  cls: "plain-http-realm",
  title: "an HTTPS registry's http:// token realm gets no credentials (exit 3, names the realm)",
  code: 3,
  message: /plain HTTP.*127\.0\.0\.1:\d+/,
}, () => {
  const creds = credentials();
  const token = `tok-${crypto.randomUUID()}`;
  const realm = startFaultRegistry({
    quiet: true,
    fault: () => Response.json({ token, expires_in: 300 }),
  });
  return {
    tls: true,
    handler: () => bearerFrom(realm, token),
    args: creds.args,
    stdin: creds.password,
    expected: null,
    secrets: [...creds.secrets, token],
    check: () =>
      expect(
        realm.requests.length === 0,
        `the http:// realm got ${realm.requests.length} requests ` +
          `(${realm.requests.filter((r) => r.authorization).length} with credentials)`,
      ),
    extraClose: () => realm.close(),
  };
});

/**
 * The rule's other side: a plain-HTTP loopback registry (the loopback fallback) may send
 * credentials to its plain-HTTP loopback token service, as local test setups do.
 */
const loopbackPlainRealm: Scenario = fault({
  id: "plain-http-realm-loopback",
  cls: "plain-http-realm",
  title: "a plain-HTTP loopback registry still uses its plain-HTTP loopback token service",
  code: 0,
}, () => {
  const creds = credentials();
  const token = `tok-${crypto.randomUUID()}`;
  const realm = startFaultRegistry({
    quiet: true,
    fault: (req) =>
      req.headers.get("authorization") === creds.basic
        ? Response.json({ token, expires_in: 300 })
        : challenge('Basic realm="token"'),
  });
  return {
    handler: () => bearerFrom(realm, token),
    args: creds.args,
    stdin: creds.password,
    secrets: [...creds.secrets, token],
    check: () =>
      expect(
        realm.requests.some((r) => r.authorization === creds.basic),
        "the loopback realm never got the credentials",
      ),
    extraClose: () => realm.close(),
  };
});

/**
 * An X.509 v1 certificate (no extensions: `openssl x509 -req` without `-extfile`) for a new key,
 * signed by the test CA. rustls refuses v1 certificates (`UnsupportedCertVersion`).
 */
export async function makeV1ClientCert(
  pki: TestPki,
  dir: string,
): Promise<{ certPath: string; keyPath: string }> {
  await Deno.mkdir(dir, { recursive: true });
  const keyPath = join(dir, "v1.key");
  const csrPath = join(dir, "v1.csr");
  const certPath = join(dir, "v1.cert");
  await runOk("openssl", [
    "req",
    "-new",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-subj",
    "/CN=imgpull v1 client",
    "-keyout",
    keyPath,
    "-out",
    csrPath,
  ]);
  await runOk("openssl", [
    "x509",
    "-req",
    "-days",
    "30",
    "-in",
    csrPath,
    "-CA",
    pki.caCertPath,
    "-CAkey",
    pki.caKeyPath,
    "-set_serial",
    `0x${randomBytes(12).toString("hex")}`,
    "-out",
    certPath,
  ]);
  return { certPath, keyPath };
}

/** A file with PEM armour around bytes that are not a certificate. */
const MALFORMED_PEM = "-----BEGIN CERTIFICATE-----\nMIIBbm90IGEgY2VydGlmaWNhdGU=\n" +
  "-----END CERTIFICATE-----\n";

/**
 * 11.12: a `--ca-cert` file with PEM armour around garbage; the TLS stack refuses it when the
 * HTTP client is created, which ended in exit 70 (an uncaught `Deno.createHttpClient` error).
 */
const malformedCaCert: Scenario = fault({
  id: "tls-malformed-ca-cert",
  cls: "tls-setup",
  title: "a malformed --ca-cert PEM: exit 6 naming the file, nothing contacted",
  code: 6,
  message: /broken-ca\.pem/,
}, (dirs) => {
  const file = join(dirs.home, "broken-ca.pem");
  Deno.writeTextFileSync(file, MALFORMED_PEM);
  return {
    tls: true,
    args: ["--ca-cert", file],
    expected: null,
    check: (run) => expect(run.registry.requests.length === 0, "the registry was contacted anyway"),
  };
});

/** Where the CLI looks for per-registry certificates (lib/tls.ts CERTS_D_ROOTS). */
const DOCKER_CERTS_D = "/etc/docker/certs.d";

/**
 * 11.12 through `certs.d`: a TLS fault registry, and `/etc/docker/certs.d/127.0.0.1:PORT/`
 * (unique to this run's port, removed at cleanup) holding the CA and what `files` adds.
 */
function certsDScenario(
  base: Omit<Scenario, "prepare">,
  files: (pki: TestPki, work: string) => Promise<Record<string, string>>,
): Scenario {
  return {
    ...base,
    root: true,
    async prepare(_dirs, services: Services) {
      const pki = await services.pki();
      const image = buildImage();
      const registry = startFaultRegistry({
        blobs: image.blobs,
        manifests: image.manifests,
        tls: { cert: pki.serverCertPem, key: pki.serverKeyPem },
        quiet: true,
      });
      const dir = join(DOCKER_CERTS_D, registry.host);
      const close = async () => {
        await Deno.remove(dir, { recursive: true }).catch(() => {});
        await registry.close();
      };
      try {
        await Deno.mkdir(dir, { recursive: true });
        await Deno.copyFile(pki.caCertPath, join(dir, "ca.crt"));
        const work = join(await services.root(), `certs-${crypto.randomUUID().slice(0, 8)}`);
        for (const [name, content] of Object.entries(await files(pki, work))) {
          await Deno.writeTextFile(join(dir, name), content);
        }
      } catch (e) {
        await close();
        throw e;
      }
      return {
        ref: `${registry.host}/${image.repository}:${image.tag}`,
        expected: base.code === 0 ? expectedArchive(image) : undefined,
        check: () =>
          base.code === 0 ? [] : expect(
            registry.requests.length === 0,
            "the registry was contacted anyway",
          ),
        close,
      };
    },
  };
}

const certsD: Scenario[] = [
  certsDScenario({
    id: "tls-v1-client-cert",
    cls: "tls-setup",
    title: "an X.509 v1 client.cert in certs.d: exit 6 naming it",
    code: 6,
    message: /client\.cert/,
  }, async (pki, work) => {
    const v1 = await makeV1ClientCert(pki, work);
    return {
      "client.cert": await Deno.readTextFile(v1.certPath),
      "client.key": await Deno.readTextFile(v1.keyPath),
    };
  }),
  certsDScenario({
    id: "tls-mismatched-client-key",
    cls: "tls-setup",
    title: "a client.key that does not match client.cert: exit 6 naming them",
    code: 6,
    message: /client\.(cert|key)/,
  }, async (pki) => ({
    "client.cert": await Deno.readTextFile(pki.clientCertPath),
    "client.key": pki.serverKeyPem,
  })),
  certsDScenario({
    id: "tls-malformed-certs-d-ca",
    cls: "tls-setup",
    title: "a malformed extra.crt in certs.d: exit 6 naming it",
    code: 6,
    message: /extra\.crt/,
  }, () => Promise.resolve({ "extra.crt": MALFORMED_PEM })),
  certsDScenario({
    id: "tls-certs-d-good",
    cls: "tls-setup",
    title: "a good certs.d (CA and v3 client certificate) still pulls",
    code: 0,
  }, async (pki) => ({
    "client.cert": await Deno.readTextFile(pki.clientCertPath),
    "client.key": await Deno.readTextFile(pki.clientKeyPath),
  })),
];

/** The scenarios, in class order. */
export const SCENARIOS: Scenario[] = [
  crossOriginChallenge("basic"),
  crossOriginChallenge("bearer"),
  plainHttpRealm,
  loopbackPlainRealm,
  malformedCaCert,
  ...certsD,
];
