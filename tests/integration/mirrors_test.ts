/**
 * Mirrors with real registries (CNCF Distribution), through the library entry point the pull
 * uses (`connectFirstWorking`): Docker Hub names served by a --registry-mirror, fallback past dead
 * and empty mirrors, registries.conf rewrites, and a pull-through cache (Distribution in proxy
 * mode, with credentials) in front of a token-auth registry.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { connectFirstWorking } from "../../lib/connect.ts";
import { UsageError } from "../../lib/errors.ts";
import type { PullEvent } from "../../lib/events.ts";
import { parseReference, type Reference } from "../../lib/reference.ts";
import type { RegistryClient } from "../../lib/registry.ts";
import { USER_AGENT } from "../../lib/transport.ts";
import { freePort } from "../helpers/ports.ts";
import { startProxyRegistry } from "../helpers/proxy_registry.ts";
import { pushBlob, pushManifest } from "../helpers/push.ts";
import { startRegistry } from "../helpers/registry.ts";
import { generateTestPki } from "../helpers/tls.ts";
import { startTokenServer } from "../helpers/token_server.ts";

const MANIFEST = "application/vnd.oci.image.manifest.v1+json";
const encoder = new TextEncoder();

/** Pushes a one-layer image whose layer says `marker`; returns its manifest digest. */
async function pushImage(url: string, repo: string, tag: string, marker: string) {
  const layer = encoder.encode(`layer ${marker}`);
  const config = encoder.encode(
    JSON.stringify({
      architecture: "amd64",
      os: "linux",
      rootfs: { type: "layers", diff_ids: [] },
    }),
  );
  const configDigest = await pushBlob(url, repo, config);
  const layerDigest = await pushBlob(url, repo, layer);
  const manifest = encoder.encode(JSON.stringify({
    schemaVersion: 2,
    mediaType: MANIFEST,
    config: {
      mediaType: "application/vnd.oci.image.config.v1+json",
      digest: configDigest,
      size: config.length,
    },
    layers: [{
      mediaType: "application/vnd.oci.image.layer.v1.tar",
      digest: layerDigest,
      size: layer.length,
    }],
  }));
  return { digest: await pushManifest(url, repo, tag, manifest, MANIFEST), layerDigest };
}

/** The attempt the pull makes, reduced: the top manifest, then one blob from the same client. */
async function fetchImage(client: RegistryClient, ref: Reference) {
  const manifest = await client.getManifest(ref.digest ?? ref.tag ?? "latest");
  const parsed = JSON.parse(new TextDecoder().decode(manifest.bytes));
  const blob = await client.openBlob(parsed.layers[0].digest);
  return { digest: manifest.digestHeader, layer: await blob.text() };
}

interface Scene {
  root: string;
  env: { get(name: string): string | undefined };
  events: PullEvent[];
  options: () => Parameters<typeof connectFirstWorking>[1];
}

async function scene(registriesConf?: string): Promise<Scene> {
  const root = await Deno.makeTempDir({ prefix: "imgpull-mirrors-" });
  await Deno.mkdir(`${root}/home`);
  const vars: Record<string, string> = { HOME: `${root}/home` };
  if (registriesConf !== undefined) {
    await Deno.writeTextFile(`${root}/registries.conf`, registriesConf);
    vars.CONTAINERS_REGISTRIES_CONF = `${root}/registries.conf`;
  }
  const events: PullEvent[] = [];
  return {
    root,
    env: { get: (name) => vars[name] },
    events,
    options: () => ({
      env: { get: (name: string) => vars[name] },
      onEvent: (e: PullEvent) => events.push(e),
      systemConfigRoot: `${root}/sys`,
      hostsDir: `${root}/hosts`,
      retries: 0,
    }),
  };
}

const notices = (events: PullEvent[]) =>
  events.filter((e) => e.type === "notice").map((e) => (e as { message: string }).message);

Deno.test("mirrors with real registries", async (t) => {
  const work = await Deno.makeTempDir({ prefix: "imgpull-mirrors-work-" });
  const closers: (() => Promise<void>)[] = [];
  try {
    const mirror = await startRegistry({ mode: "http", storageDir: join(work, "mirror") });
    closers.push(mirror.close);
    const upstream = await startRegistry({ mode: "http", storageDir: join(work, "upstream") });
    closers.push(upstream.close);
    const empty = await startRegistry({ mode: "http", storageDir: join(work, "empty") });
    closers.push(empty.close);
    const hub = await pushImage(mirror.url, "library/myimage", "1", "from the mirror");
    const up = await pushImage(upstream.url, "team/app", "1", "from upstream");
    const dead = `127.0.0.1:${await freePort()}`;

    await t.step(
      "Docker Hub name served by --registry-mirror (dead first mirror skipped)",
      async () => {
        const s = await scene();
        try {
          const ref = parseReference("myimage:1");
          const found = await connectFirstWorking(ref, {
            ...s.options(),
            registryMirrors: [`http://${dead}`, `http://${mirror.host}`],
          }, fetchImage);
          found.client.close();
          assert.equal(found.result.digest, hub.digest);
          assert.equal(found.result.layer, "layer from the mirror");
          assert.equal(found.ref.repository, "library/myimage");
          assert.equal(found.ref.registry, mirror.host);
          assert.equal(ref.registry, "docker.io", "the caller's reference is unchanged");
          const n = notices(s.events);
          assert.equal(n.length, 1, n.join("\n"));
          assert.match(n[0], new RegExp(`mirror http://${dead}/library/myimage .*failed`));
          const debug = s.events.filter((e) => e.type === "debug").map((e) =>
            (e as { message: string }).message
          );
          assert.ok(
            debug.some((m) =>
              m.startsWith(`manifest 1 served by http://${mirror.host}/library/myimage`)
            ),
            debug.join("\n"),
          );
          assert.ok(
            debug.some((m) =>
              m.startsWith(`blob ${hub.layerDigest} served by http://${mirror.host}`)
            ),
          );
        } finally {
          await Deno.remove(s.root, { recursive: true });
        }
      },
    );

    await t.step(
      "registries.conf: dead and empty (404) mirrors, then the rewritten upstream",
      async () => {
        const s = await scene(`
[[registry]]
prefix = "corp.test/team"
location = "${upstream.host}/team"
[[registry.mirror]]
location = "${dead}"
[[registry.mirror]]
location = "${empty.host}/cache"
`);
        try {
          for (const reference of ["corp.test/team/app:1", `corp.test/team/app@${up.digest}`]) {
            s.events.length = 0;
            const found = await connectFirstWorking(
              parseReference(reference),
              s.options(),
              fetchImage,
            );
            found.client.close();
            assert.equal(found.result.layer, "layer from upstream");
            assert.equal(found.endpoint.mirror, false);
            assert.equal(
              `${found.ref.registry}/${found.ref.repository}`,
              `${upstream.host}/team/app`,
            );
            const n = notices(s.events);
            assert.equal(n.length, 2, n.join("\n"));
            assert.match(n[1], /cache\/app .*failed: .*(not found|unknown)/i);
          }
          assert.ok(empty.log().includes("/v2/cache/app/manifests/"), "the empty mirror was asked");
        } finally {
          await Deno.remove(s.root, { recursive: true });
        }
      },
    );

    await t.step(
      "registries.conf: mirror-by-digest-only, insecure mirror, blocked, wildcard, drop-in",
      async () => {
        const s = await scene(`
[[registry]]
prefix = "corp.test/team"
location = "${dead}/team"
mirror-by-digest-only = true
[[registry.mirror]]
location = "${upstream.host}/team"
insecure = true

[[registry]]
prefix = "*.blocked.test"
blocked = true
`);
        try {
          await Deno.mkdir(`${s.root}/sys/etc/containers/registries.conf.d`, { recursive: true });
          await Deno.writeTextFile(
            `${s.root}/sys/etc/containers/registries.conf.d/50-wild.conf`,
            `[[registry]]\nprefix = "*.wild.test"\nlocation = "${mirror.host}/library"\n`,
          );
          // By digest the mirror serves it; by tag only the (dead) upstream is tried.
          const found = await connectFirstWorking(
            parseReference(`corp.test/team/app@${up.digest}`),
            s.options(),
            fetchImage,
          );
          found.client.close();
          assert.equal(found.endpoint.mirror, true);
          assert.equal(found.endpoint.insecure, true);
          await assert.rejects(
            () =>
              connectFirstWorking(parseReference("corp.test/team/app:1"), s.options(), fetchImage),
            (e: Error) => e.message.includes(dead),
          );
          let asked = false;
          await assert.rejects(
            () =>
              connectFirstWorking(parseReference("a.blocked.test/x:1"), s.options(), () => {
                asked = true;
                return Promise.resolve();
              }),
            (e: Error) =>
              e instanceof UsageError && e.exitCode === 2 && /blocked in/.test(e.message),
          );
          assert.equal(asked, false);
          const wild = await connectFirstWorking(
            parseReference("x.wild.test/myimage:1"),
            s.options(),
            fetchImage,
          );
          wild.client.close();
          assert.equal(wild.result.digest, hub.digest);
        } finally {
          await Deno.remove(s.root, { recursive: true });
        }
      },
    );

    await t.step(
      "pull-through cache with credentials in front of a token-auth registry",
      async () => {
        const pki = await generateTestPki(join(work, "pki"));
        const users = { cache: "cache-secret" };
        const tokenServer = await startTokenServer({ pki, service: "svc", issuer: "iss", users });
        closers.push(tokenServer.close);
        const storage = join(work, "private");
        const seed = await startRegistry({ mode: "http", storageDir: storage });
        closers.push(seed.close);
        const priv = await pushImage(seed.url, "team/private", "7", "private");
        const token = await startRegistry({
          mode: "token",
          storageDir: storage,
          pki,
          token: { realm: tokenServer.url, service: "svc", issuer: "iss" },
        });
        closers.push(token.close);
        const cache = await startProxyRegistry({
          remoteUrl: token.url,
          username: "cache",
          password: "cache-secret",
          caCertPath: pki.caCertPath,
          storageDir: join(work, "cache"),
        });
        closers.push(cache.close);
        const s = await scene(`
[[registry]]
prefix = "private.test"
location = "${token.host}"
[[registry.mirror]]
location = "${cache.host}"
`);
        try {
          const found = await connectFirstWorking(
            parseReference("private.test/team/private:7"),
            { ...s.options(), caCertFiles: [pki.caCertPath] },
            fetchImage,
          );
          found.client.close();
          assert.equal(found.result.digest, priv.digest);
          assert.equal(found.result.layer, "layer private");
          assert.equal(found.endpoint.mirror, true);
          assert.deepEqual(notices(s.events), []);
          assert.ok(cache.log().includes("/v2/team/private/manifests/7"), "the cache served it");
          // The upstream saw the cache's requests (with its credentials), never imgpull's.
          assert.ok(
            token.log().includes("/v2/team/private/manifests/7"),
            "the cache fetched upstream",
          );
          assert.ok(
            token.log().includes("http.request.useragent="),
            "the access log names clients",
          );
          assert.ok(!token.log().includes(USER_AGENT), "imgpull itself never reached the upstream");
          assert.ok(cache.log().includes(USER_AGENT), "imgpull reached the cache");
          assert.ok(tokenServer.requests.every((r) => !JSON.stringify(r).includes(USER_AGENT)));
        } finally {
          await Deno.remove(s.root, { recursive: true });
        }
      },
    );
  } finally {
    for (const close of closers.reverse()) await close().catch(() => {});
    await Deno.remove(work, { recursive: true });
  }
});
