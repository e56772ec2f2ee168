/**
 * Trust the way Docker and Podman users set it up: a per-registry
 * `certs.d/<host:port>/` directory with the CA (`*.crt`) and, for mutual
 * TLS, a client certificate (`*.cert` + `*.key`), against real Distribution.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { NetworkError } from "../../lib/errors.ts";
import { pull } from "../../lib/pull.ts";
import { pushFixtures } from "../helpers/fixtures.ts";
import { startRegistry } from "../helpers/registry.ts";
import { generateTestPki } from "../helpers/tls.ts";

const USERS = { carol: "tls-test-password" };

Deno.test("tls: certs.d CA and client certificates (mutual TLS)", async (t) => {
  const root = await Deno.makeTempDir({ prefix: "imgpull-tls-" });
  const pki = await generateTestPki(join(root, "pki"));
  const storageDir = join(root, "storage");
  const http = await startRegistry({ mode: "http", storageDir });
  const closers = [() => http.close()];
  try {
    await pushFixtures(http.url, join(root, "fixtures"));
    const basic = await startRegistry({ mode: "basic", storageDir, pki, users: USERS });
    closers.push(() => basic.close());
    const mutual = await startRegistry({
      mode: "basic",
      storageDir,
      pki,
      users: USERS,
      requireClientCert: true,
    });
    closers.push(() => mutual.close());

    const certsDir = async (name: string, host: string, client: boolean) => {
      const dir = join(root, name, host);
      await Deno.mkdir(dir, { recursive: true });
      await Deno.copyFile(pki.caCertPath, join(dir, "ca.crt"));
      if (client) {
        await Deno.copyFile(pki.clientCertPath, join(dir, "client.cert"));
        await Deno.copyFile(pki.clientKeyPath, join(dir, "client.key"));
      }
      return join(root, name);
    };
    const pullFrom = (host: string, certsDirs: string[], output: string) =>
      pull({
        reference: `${host}/fixtures/app:v1`,
        platform: "linux/amd64",
        username: "carol",
        password: USERS.carol,
        certsDirs,
        output: join(root, output),
      });

    await t.step("the CA in certs.d/<host:port>/ca.crt is trusted", async () => {
      const dirs = [await certsDir("certs-ca", basic.host, false)];
      const result = await pullFrom(basic.host, dirs, "a.tar");
      assert.equal(result.layers, 3);
      await assert.rejects(pullFrom(basic.host, [], "b.tar"), (e) => {
        assert.ok(e instanceof NetworkError);
        assert.match(e.hint ?? "", /--ca-cert/);
        return true;
      });
    });

    await t.step("a client certificate in certs.d opens a registry that requires one", async () => {
      const withClient = [await certsDir("certs-client", mutual.host, true)];
      const result = await pullFrom(mutual.host, withClient, "c.tar");
      assert.equal(result.layers, 3);
      const caOnly = [await certsDir("certs-noclient", mutual.host, false)];
      await assert.rejects(pullFrom(mutual.host, caOnly, "d.tar"), NetworkError);
    });
  } finally {
    for (const close of closers.reverse()) await close();
    await Deno.remove(root, { recursive: true });
  }
});
