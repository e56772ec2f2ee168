/**
 * Connections opened ahead of the downloads: the registry client's warm-up sends anonymous
 * `GET /v2/` requests to its own endpoint only, while the token is fetched; the connections they
 * leave in the pool carry the requests that follow; its failures change nothing, and nothing of
 * it outlives the client. Small TLS servers on loopback stand in for the registry and the token
 * service (plain HTTP on loopback never gets a warm-up).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { RegistryClient } from "../../lib/registry.ts";
import { Transport } from "../../lib/transport.ts";
import { generateTestPki, type TestPki } from "../helpers/tls.ts";

/** One request a test server saw. */
interface Hit {
  path: string;
  /** The client's port: one per connection. */
  port: number;
  authorization: string | null;
}

type Handler = (req: Request, hits: Hit[]) => Response | Promise<Response>;

function serve(handler: Handler, pki?: TestPki) {
  const hits: Hit[] = [];
  const server = Deno.serve({
    hostname: "127.0.0.1",
    port: 0,
    onListen: () => {},
    ...(pki ? { cert: pki.serverCertPem, key: pki.serverKeyPem } : {}),
  }, (req, info) => {
    hits.push({
      path: new URL(req.url).pathname,
      port: (info.remoteAddr as Deno.NetAddr).port,
      authorization: req.headers.get("authorization"),
    });
    return handler(req, hits);
  });
  const scheme = pki ? "https" : "http";
  return {
    server,
    hits,
    host: `127.0.0.1:${server.addr.port}`,
    url: `${scheme}://127.0.0.1:${server.addr.port}`,
  };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function withPki(fn: (pki: TestPki) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "imgpull-warmup-" });
  try {
    await fn(await generateTestPki(join(dir, "pki")));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** A token service answering after `delayMs` (long enough for the warm-up to finish first). */
function tokenService(pki: TestPki, delayMs: number) {
  return serve(async () => {
    await sleep(delayMs);
    return Response.json({ token: "warmup-test-token", expires_in: 300 });
  }, pki);
}

/**
 * A registry whose `/v2/` answers after `pingDelayMs` (a far registry, as the client measures
 * it) with a Bearer challenge; blobs need the token.
 */
function registry(realm: string, pingDelayMs: number, pki?: TestPki, warmUp?: Handler) {
  let pings = 0;
  return serve(async (req, hits) => {
    const path = new URL(req.url).pathname;
    if (path === "/v2/") {
      if (pings++ > 0 && warmUp) return warmUp(req, hits);
      await sleep(pingDelayMs);
      return new Response('{"errors":[{"code":"UNAUTHORIZED"}]}', {
        status: 401,
        headers: { "www-authenticate": `Bearer realm="${realm}",service="warmup-test"` },
      });
    }
    if (req.headers.get("authorization") !== "Bearer warmup-test-token") {
      return new Response("no", { status: 401 });
    }
    return new Response("blob");
  }, pki);
}

Deno.test("warm-up: the transport opens connections without credentials and the pool keeps them", async () => {
  await withPki(async (pki) => {
    let arrived = 0;
    const target = serve(() => new Response("elsewhere"), pki);
    const server = serve(async (req) => {
      const path = new URL(req.url).pathname;
      if (path === "/v2/") {
        // Held until all four are in, so that each needs its own connection.
        arrived++;
        for (let i = 0; i < 200 && arrived < 4; i++) await sleep(5);
        return new Response("{}", { status: 401 });
      }
      if (path === "/moved/") return Response.redirect(`${target.url}/v2/`, 307);
      return new Response("data");
    }, pki);
    const transport = new Transport({ caCerts: [pki.caCertPem] });
    try {
      assert.equal(await transport.warm(new URL(`${server.url}/v2/`), 4), 4);
      const warmPorts = new Set(server.hits.map((h) => h.port));
      assert.equal(warmPorts.size, 4);
      assert.ok(server.hits.every((h) => h.path === "/v2/" && h.authorization === null));

      const bodies = await Promise.all([1, 2, 3, 4].map(async (i) => {
        const response = await transport.fetch(`${server.url}/data/${i}`, {
          headers: { authorization: "Bearer t" },
        });
        return await response.text();
      }));
      assert.deepEqual(bodies, ["data", "data", "data", "data"]);
      const later = server.hits.slice(4).map((h) => h.port);
      assert.equal(later.length, 4);
      assert.ok(
        later.every((port) => warmPorts.has(port)),
        "requests ride on the warm connections",
      );

      // A warm-up never follows a redirect, and never fails.
      assert.equal(await transport.warm(new URL(`${server.url}/moved/`), 2), 2);
      assert.deepEqual(target.hits, []);
      const closed = serve(() => new Response("x"));
      await closed.server.shutdown();
      assert.equal(await transport.warm(new URL(`${closed.url}/v2/`), 3), 0);
    } finally {
      transport.close();
      await server.server.shutdown();
      await target.server.shutdown();
    }
  });
});

Deno.test("warm-up: a far registry's download connections open during the token request and carry the requests after it", async () => {
  await withPki(async (pki) => {
    const token = tokenService(pki, 300);
    const reg = registry(`${token.url}/token`, 60, pki);
    const logs: string[] = [];
    const client = new RegistryClient({
      registry: reg.host,
      repository: "team/app",
      tls: { caCerts: [pki.caCertPem] },
      credential: () =>
        Promise.resolve({ username: "u", password: "warmup-secret", source: "flags" }),
      warmConnections: 4,
      log: (m) => logs.push(m),
    });
    try {
      await client.ping();
      const pings = reg.hits.filter((h) => h.path === "/v2/");
      // The ping, then the warm-up: anonymous, to this registry only.
      assert.equal(pings.length, 5);
      assert.ok(pings.every((h) => h.authorization === null));
      assert.equal(token.hits.length, 1);
      assert.match(token.hits[0].authorization ?? "", /^Basic /);
      assert.ok(logs.some((m) => /opened 4 of 4 connections/.test(m)), logs.join("\n"));
      const warmPorts = new Set(pings.map((h) => h.port));

      const bodies = await Promise.all(["a", "b", "c", "d"].map(async (name) => {
        const response = await client.openBlob(`sha256:${name.repeat(64)}`);
        return await response.text();
      }));
      assert.deepEqual(bodies, ["blob", "blob", "blob", "blob"]);
      const blobs = reg.hits.filter((h) => h.path.includes("/blobs/"));
      assert.ok(blobs.every((h) => h.authorization === "Bearer warmup-test-token"));
      assert.ok(
        blobs.every((h) => warmPorts.has(h.port)),
        `blob requests on new connections: ${blobs.map((h) => h.port)} vs ${[...warmPorts]}`,
      );
    } finally {
      await client.dispose();
      await reg.server.shutdown();
      await token.server.shutdown();
    }
  });
});

Deno.test("warm-up: none without a budget of two or more, and none to a plain-HTTP loopback registry", async () => {
  await withPki(async (pki) => {
    const token = tokenService(pki, 50);
    for (
      const [name, tls, warmConnections] of [
        ["no budget", true, 0],
        ["a budget of one (the ping's connection)", true, 1],
        ["plain HTTP on loopback", false, 4],
      ] as const
    ) {
      const reg = registry(`${token.url}/token`, 60, tls ? pki : undefined);
      const client = new RegistryClient({
        registry: reg.host,
        repository: "team/app",
        tls: { caCerts: [pki.caCertPem] },
        plainHttp: !tls,
        warmConnections,
      });
      try {
        await client.ping();
        await (await client.openBlob(`sha256:${"e".repeat(64)}`)).text();
        await sleep(100);
        assert.equal(reg.hits.filter((h) => h.path === "/v2/").length, 1, name);
      } finally {
        await client.dispose();
        await reg.server.shutdown();
      }
    }
    await token.server.shutdown();
  });
});

Deno.test("warm-up: failing or hanging warm-up requests change nothing, and dispose ends them", async () => {
  await withPki(async (pki) => {
    const token = tokenService(pki, 50);
    for (const mode of ["error", "hang"] as const) {
      const release = Promise.withResolvers<void>();
      const reg = registry(`${token.url}/token`, 60, pki, async () => {
        if (mode === "error") return new Response("broken", { status: 500 });
        await release.promise;
        return new Response("late", { status: 401 });
      });
      const client = new RegistryClient({
        registry: reg.host,
        repository: "team/app",
        tls: { caCerts: [pki.caCertPem] },
        warmConnections: 3,
      });
      try {
        await client.ping();
        const response = await client.openBlob(`sha256:${"f".repeat(64)}`);
        assert.equal(await response.text(), "blob", mode);
        const warmUps = () => reg.hits.filter((h) => h.path === "/v2/").length - 1;
        for (let i = 0; i < 100 && warmUps() < 3; i++) await sleep(10);
        assert.equal(warmUps(), 3, mode);
        const started = performance.now();
        await client.dispose();
        assert.ok(performance.now() - started < 2_000, `${mode}: dispose waited`);
      } finally {
        release.resolve();
        await client.dispose();
        await reg.server.shutdown();
      }
    }
    await token.server.shutdown();
  });
});
