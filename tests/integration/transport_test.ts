/**
 * The transport's safety rules against small local servers: credentials
 * never follow a redirect to another origin, redirect loops end, bodies are
 * capped.
 */
import assert from "node:assert/strict";
import { InvalidContentError, NetworkError } from "../../lib/errors.ts";
import { readCapped, Transport } from "../../lib/transport.ts";

interface Seen {
  path: string;
  authorization: string | null;
}

function serve(handler: (req: Request, seen: Seen[]) => Response | Promise<Response>) {
  const seen: Seen[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (req) => {
    seen.push({ path: new URL(req.url).pathname, authorization: req.headers.get("authorization") });
    return handler(req, seen);
  });
  return { server, seen, url: `http://127.0.0.1:${server.addr.port}` };
}

Deno.test("transport: Authorization stays on the origin and is dropped on a cross-origin redirect", async () => {
  const cdn = serve((req) =>
    req.headers.has("authorization")
      ? new Response("two auth mechanisms", { status: 400 })
      : new Response("blob bytes")
  );
  const registry = serve((req) => {
    const path = new URL(req.url).pathname;
    if (path === "/first") return Response.redirect(`${registryUrl}/second`, 307);
    return Response.redirect(`${cdn.url}/data`, 307);
  });
  const registryUrl = registry.url;
  const transport = new Transport();
  try {
    const response = await transport.fetch(`${registry.url}/first`, {
      headers: { authorization: "Bearer secret-token" },
    });
    assert.equal(response.status, 200);
    assert.equal(await response.text(), "blob bytes");
    assert.deepEqual(registry.seen.map((s) => s.authorization), [
      "Bearer secret-token",
      "Bearer secret-token",
    ]);
    assert.deepEqual(cdn.seen, [{ path: "/data", authorization: null }]);
  } finally {
    transport.close();
    await registry.server.shutdown();
    await cdn.server.shutdown();
  }
});

Deno.test("transport: redirect loops end with a clean error", async () => {
  const loop = serve((req) => Response.redirect(req.url, 302));
  const transport = new Transport();
  try {
    await assert.rejects(transport.fetch(`${loop.url}/x`), (e) => {
      assert.ok(e instanceof NetworkError);
      assert.match(e.message, /too many redirects/);
      assert.equal(e.retryable, false);
      return true;
    });
    assert.equal(loop.seen.length, 11);
  } finally {
    transport.close();
    await loop.server.shutdown();
  }
});

Deno.test("transport: bodies beyond the cap are refused", async () => {
  const big = serve(() => new Response(new Uint8Array(100_000)));
  const transport = new Transport();
  try {
    const response = await transport.fetch(big.url);
    await assert.rejects(readCapped(response, 1000, "manifest"), InvalidContentError);
  } finally {
    transport.close();
    await big.server.shutdown();
  }
});

Deno.test("transport: a refused connection is a retryable NetworkError", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  const transport = new Transport();
  try {
    await assert.rejects(transport.fetch(`http://127.0.0.1:${port}/v2/`), (e) => {
      assert.ok(e instanceof NetworkError);
      assert.equal(e.retryable, true);
      assert.match(e.message, /cannot reach http:\/\/127\.0\.0\.1/);
      return true;
    });
  } finally {
    transport.close();
  }
});
