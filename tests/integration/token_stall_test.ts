/**
 * A token server that accepts the request and never answers must not hang
 * the pull: the stall timeout ends it with a network error (exit 6).
 */
import assert from "node:assert/strict";
import { imgpull } from "../helpers/cli.ts";
import { startFaultRegistry } from "../helpers/fault_registry.ts";

Deno.test("token endpoint that never answers: exit 6 after the stall timeout", async () => {
  const pending: (() => void)[] = [];
  const tokenServer = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    () => new Promise<Response>((resolve) => pending.push(() => resolve(new Response("late")))),
  );
  const realm = `http://127.0.0.1:${tokenServer.addr.port}/token`;
  const registry = startFaultRegistry({
    fault: () =>
      new Response("{}", {
        status: 401,
        headers: { "www-authenticate": `Bearer realm="${realm}",service="test"` },
      }),
  });
  const dir = await Deno.makeTempDir();
  try {
    const started = Date.now();
    const result = await imgpull(
      [`${registry.host}/test/img`, "--stall-timeout", "1", "--retries", "0", "--no-cache"],
      { cwd: dir, env: { HOME: dir } },
    );
    assert.equal(result.code, 6, result.stderr);
    assert.match(result.stderr, /\[-\] (ping|token request): no data for 1 s/);
    assert.ok(Date.now() - started < 10_000, "ended by the stall timeout, not a hang");
    assert.deepEqual(
      [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => n !== ".cache"),
      [],
    );
  } finally {
    for (const release of pending) release();
    await registry.close();
    await tokenServer.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});
