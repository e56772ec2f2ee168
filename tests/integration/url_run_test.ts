/**
 * `deno run` from a URL works: the CLI and every module it imports are
 * served over HTTP (as from a code host) and run with the documented
 * permissions, nothing more.
 */
import assert from "node:assert/strict";
import { PERMISSIONS } from "../helpers/cli.ts";
import { run } from "../helpers/process.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

Deno.test("cli: runs from a URL with the documented permissions", async () => {
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
    const path = new URL(req.url).pathname;
    if (!/^\/(main\.ts|(lib|cli)\/[a-z_/]+\.ts)$/.test(path)) {
      return new Response("no", { status: 404 });
    }
    try {
      return new Response(await Deno.readFile(`${ROOT}${path.slice(1)}`), {
        headers: { "content-type": "application/typescript" },
      });
    } catch {
      return new Response("no", { status: 404 });
    }
  });
  const denoDir = await Deno.makeTempDir();
  try {
    const url = `http://127.0.0.1:${server.addr.port}/main.ts`;
    const result = await run(Deno.execPath(), ["run", "--quiet", ...PERMISSIONS, url, "--help"], {
      env: { DENO_DIR: denoDir, NO_COLOR: "1" },
    });
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stdout, /Usage: imgpull \[options\]/);
  } finally {
    await server.shutdown();
    await Deno.remove(denoDir, { recursive: true });
  }
});
