/**
 * Trust the way Docker and Podman users set it up: a per-registry
 * `certs.d/<host:port>/` directory with the CA (`*.crt`) and, for mutual
 * TLS, a client certificate (`*.cert` + `*.key`), against real Distribution. And files the TLS
 * stack refuses (X.509 v1 client certificates, malformed PEM) end in a NetworkError naming them.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { NetworkError } from "../../lib/errors.ts";
import { pull } from "../../lib/pull.ts";
import { registryTls } from "../../lib/tls.ts";
import { makeV1ClientCert } from "../helpers/scenarios/security_auth.ts";
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

Deno.test("tls: files the TLS stack refuses are NetworkErrors naming them (not crashes)", async (t) => {
  const root = await Deno.makeTempDir({ prefix: "imgpull-tls-setup-" });
  try {
    const pki = await generateTestPki(join(root, "pki"));
    const host = "registry.test:5000";
    const certsD = async (name: string, files: Record<string, string>) => {
      const dir = join(root, name, host);
      await Deno.mkdir(dir, { recursive: true });
      for (const [file, content] of Object.entries(files)) {
        await Deno.writeTextFile(join(dir, file), content);
      }
      return join(root, name);
    };
    const refused = (files: RegExp) => (e: unknown) => {
      assert.ok(e instanceof NetworkError, String(e));
      assert.equal(e.exitCode, 6);
      assert.equal(e.retryable, false);
      assert.match(e.message, files);
      return true;
    };

    await t.step("an X.509 v1 client certificate", async () => {
      const v1 = await makeV1ClientCert(pki, join(root, "v1"));
      const dir = await certsD("v1", {
        "client.cert": await Deno.readTextFile(v1.certPath),
        "client.key": await Deno.readTextFile(v1.keyPath),
      });
      await assert.rejects(registryTls(host, [], [dir]), refused(/client\.cert and .*client\.key/));
    });

    await t.step("a malformed --ca-cert", async () => {
      const bad = join(root, "bad.pem");
      await Deno.writeTextFile(
        bad,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
      );
      await assert.rejects(registryTls(host, [pki.caCertPath, bad], []), refused(/bad\.pem/));
    });

    await t.step("good files still load", async () => {
      const dir = await certsD("good", {
        "ca.crt": pki.caCertPem,
        "client.cert": await Deno.readTextFile(pki.clientCertPath),
        "client.key": await Deno.readTextFile(pki.clientKeyPath),
      });
      const tls = await registryTls(host, [pki.caCertPath], [dir]);
      assert.equal(tls.caCerts?.length, 2);
      assert.ok(tls.cert && tls.key);
    });
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
