/**
 * End to end: mirrors and the ecosystem's configuration files (issue #9), through the real CLI
 * run with exactly the documented permissions. One set of real services serves every step:
 * CNCF Distribution registries (anonymous HTTP, TLS + htpasswd, TLS + token auth), Distribution
 * in proxy mode as a pull-through cache, and recording proxies that prove which host received
 * what. Configuration lives in temporary directories named by CONTAINERS_REGISTRIES_CONF,
 * XDG_CONFIG_HOME, REGISTRY_AUTH_FILE and --hosts-dir; nothing under /etc is written.
 *
 * Every pull is proven by its archive: each blob hashes to its name, the config and layer are
 * the expected ones, and RepoTags hold the name the user asked for.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { join } from "node:path";
import { imgpull } from "../helpers/cli.ts";
import { readTar, verifyArchive } from "../helpers/hostile_image.ts";
import { type MarkerImage, markerImage, pushMarkerImage } from "../helpers/mirrors/image.ts";
import { type Recorder, startRecorder } from "../helpers/mirrors/recorder.ts";
import { type Dockerd, startDockerd } from "../helpers/dockerd.ts";
import { podmanLoad } from "../helpers/podman.ts";
import { freePort } from "../helpers/ports.ts";
import type { CommandResult } from "../helpers/process.ts";
import { startProxyRegistry } from "../helpers/proxy_registry.ts";
import { type RunningRegistry, startRegistry } from "../helpers/registry.ts";
import { generateTestPki, type TestPki } from "../helpers/tls.ts";
import { startTokenServer, type TokenServer } from "../helpers/token_server.ts";

const MIRROR_USER = "mirror-user";
const MIRROR_PASSWORD = "mirror-pass:word";
/** A user the mirror also knows: the upstream's credentials would open the mirror. */
const UPSTREAM_USER = "upstream-user";
const UPSTREAM_PASSWORD = "upstream-pass";
const CACHE_USER = "cache";
const CACHE_PASSWORD = "cache-secret";

/** The services shared by every step. */
interface Services {
  root: string;
  pki: TestPki;
  /** Holds `library/myimage:1` (image `hub`): a Docker Hub mirror. */
  hub: RunningRegistry;
  /** Holds `team/app:1` and `team/only-upstream:1` (image `app`), behind `upstream`. */
  upstreamRegistry: RunningRegistry;
  upstream: Recorder;
  /** Holds `team/app:1` (image `app`, the same bytes), behind `mirror`. */
  mirrorRegistry: RunningRegistry;
  mirror: Recorder;
  /** An empty registry: a mirror that answers 404. */
  empty: RunningRegistry;
  /** TLS + htpasswd, holds `team/app:1` (image `app`). */
  basic: RunningRegistry;
  /** TLS + token auth, holds `team/private:7` (image `private`). */
  token: RunningRegistry;
  /** Distribution in proxy mode in front of `token`, with the cache's credentials. */
  cache: { host: string; url: string; log(): string };
  /** The token service of `token`. */
  tokenServer: TokenServer;
  /** A private dockerd, to load the Docker Hub name the way `docker load` users do. */
  dockerd: Dockerd;
  /** `127.0.0.1:PORT` where nothing listens. */
  dead: string;
  images: { hub: MarkerImage; app: MarkerImage; private: MarkerImage };
  close(): Promise<void>;
}

async function startServices(): Promise<Services> {
  const root = await Deno.makeTempDir({ prefix: "imgpull-mirrors-cli-" });
  const closers: (() => Promise<void>)[] = [];
  const close = async () => {
    for (const c of closers.reverse()) await c().catch((e) => console.error("cleanup:", e));
    await Deno.remove(root, { recursive: true }).catch(() => {});
  };
  try {
    const started = <T extends { close(): Promise<void> }>(service: T): T => {
      closers.push(() => service.close());
      return service;
    };
    const images = {
      hub: markerImage("served by the hub mirror"),
      app: markerImage("team app"),
      private: markerImage("private behind token auth"),
    };
    // dockerd takes seconds to start: overlap it with the registries.
    const dockerdPromise = startDockerd();
    dockerdPromise.then((d) => closers.push(() => d.close()), () => {});
    const pki = await generateTestPki(join(root, "pki"));
    const tokenServer = started(
      await startTokenServer({
        pki,
        service: "svc",
        issuer: "iss",
        users: { [CACHE_USER]: CACHE_PASSWORD },
      }),
    );
    const [hub, upstreamRegistry, mirrorRegistry, empty, basicSeed, tokenSeed] = await Promise
      .all(
        ["hub", "upstream", "mirror", "empty", "basic", "token"].map(async (name) =>
          started(await startRegistry({ mode: "http", storageDir: join(root, name) }))
        ),
      );
    await Promise.all([
      pushMarkerImage(hub.url, "library/myimage", "1", images.hub),
      pushMarkerImage(upstreamRegistry.url, "team/app", "1", images.app),
      pushMarkerImage(upstreamRegistry.url, "team/only-upstream", "1", images.app),
      pushMarkerImage(mirrorRegistry.url, "team/app", "1", images.app),
      pushMarkerImage(basicSeed.url, "team/app", "1", images.app),
      pushMarkerImage(tokenSeed.url, "team/private", "7", images.private),
    ]);
    const [basic, token] = await Promise.all([
      startRegistry({
        mode: "basic",
        storageDir: basicSeed.storageDir,
        pki,
        users: { [MIRROR_USER]: MIRROR_PASSWORD, [UPSTREAM_USER]: UPSTREAM_PASSWORD },
      }).then(started),
      startRegistry({
        mode: "token",
        storageDir: tokenSeed.storageDir,
        pki,
        token: { realm: tokenServer.url, service: "svc", issuer: "iss" },
      }).then(started),
    ]);
    const cache = started(
      await startProxyRegistry({
        remoteUrl: token.url,
        username: CACHE_USER,
        password: CACHE_PASSWORD,
        caCertPath: pki.caCertPath,
        storageDir: join(root, "cache"),
      }),
    );
    const upstream = started(await startRecorder(upstreamRegistry.url));
    const mirror = started(await startRecorder(mirrorRegistry.url));
    const dead = `127.0.0.1:${await freePort()}`;
    const dockerd = await dockerdPromise;
    return {
      root,
      pki,
      hub,
      upstreamRegistry,
      upstream,
      mirrorRegistry,
      mirror,
      empty,
      basic,
      token,
      cache,
      tokenServer,
      dockerd,
      dead,
      images,
      close,
    };
  } catch (e) {
    await close();
    throw e;
  }
}

/** One CLI run's private configuration: every file the CLI may read points into `dir`. */
interface Scene {
  dir: string;
  env: Record<string, string>;
  out: string;
}

let sceneCount = 0;

/**
 * A fresh configuration directory: an empty HOME and docker config, XDG_CONFIG_HOME and
 * XDG_RUNTIME_DIR inside it, REGISTRY_AUTH_FILE naming a file that does not exist (unless
 * written), and CONTAINERS_REGISTRIES_CONF naming `registriesConf` (default: an empty file).
 */
async function scene(s: Services, registriesConf = ""): Promise<Scene> {
  const dir = join(s.root, `scene-${++sceneCount}`);
  for (const sub of ["home", "docker", "xdg", "run", "hosts"]) {
    await Deno.mkdir(join(dir, sub), { recursive: true });
  }
  await Deno.writeTextFile(join(dir, "registries.conf"), registriesConf);
  return {
    dir,
    out: join(dir, "out.tar"),
    env: {
      HOME: join(dir, "home"),
      DOCKER_CONFIG: join(dir, "docker"),
      XDG_CONFIG_HOME: join(dir, "xdg"),
      XDG_RUNTIME_DIR: join(dir, "run"),
      XDG_CACHE_HOME: join(dir, "cache"),
      REGISTRY_AUTH_FILE: join(dir, "auth.json"),
      CONTAINERS_REGISTRIES_CONF: join(dir, "registries.conf"),
    },
  };
}

/**
 * A registries.conf of one `[[registry]]`: PREFIX pulled from LOCATION after MIRRORS, in order;
 * `settings` are more `key = value` lines of the entry.
 */
function registryConf(
  prefix: string,
  location: string,
  mirrors: string[],
  settings: string[] = [],
): string {
  return [
    "[[registry]]",
    `prefix = "${prefix}"`,
    `location = "${location}"`,
    ...settings,
    ...mirrors.flatMap((m) => ["[[registry.mirror]]", `location = "${m}"`]),
    "",
  ].join("\n");
}

/**
 * `imgpull ARGS -o OUT --no-cache` in the scene (no cache: every blob comes from the network);
 * OUT is `sc.out`, which a previous pull in the scene is moved away from first.
 */
async function pullIn(sc: Scene, args: string[]): Promise<CommandResult> {
  await Deno.rename(sc.out, `${sc.out}.${Date.now()}`).catch(() => {});
  return await imgpull([...args, "-o", sc.out, "--no-cache", "--retries", "0"], {
    cwd: sc.dir,
    env: sc.env,
  });
}

function describe(r: CommandResult): string {
  return `exit ${r.code}\n--- stdout ---\n${r.stdout}\n--- stderr ---\n${r.stderr}`;
}

/** The archive verifies (every blob hashes to its name, the expected config and layer). */
async function assertArchive(path: string, image: MarkerImage, repoTags: string[]) {
  const problems = await verifyArchive(path, image.expected);
  assert.deepEqual(problems, [], problems.join("\n"));
  const files = readTar(await Deno.readFile(path));
  const manifest = JSON.parse(new TextDecoder().decode(files.get("manifest.json")!));
  assert.deepEqual(manifest[0].RepoTags, repoTags);
}

const lines = (text: string, pattern: RegExp) => text.split("\n").filter((l) => pattern.test(l));

/** The endpoints named by the `[debug] manifest REF served by URL` lines of a --verbose run. */
const manifestServedBy = (stderr: string) => [
  ...new Set(lines(stderr, /manifest \S+ served by /).map((l) => l.replace(/^.*served by /, ""))),
];

/** Requests in a Distribution access log (combined format): method, path, user agent. */
function accessLog(log: string): { method: string; path: string; userAgent: string }[] {
  const line = /^\S+ - \S+ \[[^\]]+\] "(\S+) (\S+) [^"]*" \d+ \d+ "[^"]*" "([^"]*)"$/gm;
  return [...log.matchAll(line)].map((m) => ({ method: m[1], path: m[2], userAgent: m[3] }));
}

/** `[+] mirror … failed: …; trying …` notices. */
const mirrorNotices = (stderr: string) => lines(stderr, /^\[\+\] mirror .* failed/);

Deno.test("mirrors and registry configuration through the CLI", async (t) => {
  const s = await startServices();
  try {
    await t.step("1. Docker Hub name served by --registry-mirror, loads as myimage:1", async () => {
      const sc = await scene(s);
      const r = await pullIn(sc, ["myimage:1", "--registry-mirror", s.hub.url]);
      assert.equal(r.code, 0, describe(r));
      assert.deepEqual(mirrorNotices(r.stderr), [], describe(r));
      await assertArchive(sc.out, s.images.hub, ["myimage:1"]);
      assert.ok(
        s.hub.log().includes("/v2/library/myimage/manifests/1"),
        "the mirror was asked for library/myimage",
      );
      const loaded = await podmanLoad(sc.out);
      assert.equal(loaded.code, 0, loaded.stderr);
      // podman 4 names a short RepoTag `localhost/NAME` (libimage), as for `docker save` output.
      assert.equal(loaded.images.length, 1, loaded.images.join(", "));
      assert.ok(
        ["docker.io/library/myimage:1", "localhost/myimage:1"].includes(loaded.images[0]),
        `podman loaded ${loaded.images[0]}`,
      );
      assert.equal(`sha256:${loaded.ids[0]}`, s.images.hub.expected.configDigest);
      const docker = await s.dockerd.docker(["load", "-i", sc.out]);
      assert.equal(docker.code, 0, docker.stderr);
      assert.match(docker.stdout, /^Loaded image: myimage:1$/m);
      const id = await s.dockerd.docker(["image", "inspect", "--format", "{{.Id}}", "myimage:1"]);
      assert.equal(id.stdout.trim(), s.images.hub.expected.configDigest);
    });

    await t.step("2. a dead first mirror, then the working one (one notice)", async () => {
      const sc = await scene(s);
      const r = await pullIn(sc, [
        "myimage:1",
        "--registry-mirror",
        `http://${s.dead}`,
        "--registry-mirror",
        s.hub.url,
        "--verbose",
      ]);
      assert.equal(r.code, 0, describe(r));
      const notices = mirrorNotices(r.stderr);
      assert.equal(notices.length, 1, describe(r));
      assert.match(notices[0], new RegExp(`^\\[\\+\\] mirror http://${s.dead}/library/myimage`));
      assert.deepEqual(manifestServedBy(r.stderr), [`${s.hub.url}/library/myimage`]);
      await assertArchive(sc.out, s.images.hub, ["myimage:1"]);
    });

    await t.step("3. registries.conf: dead and 404 mirrors, then the upstream", async () => {
      const sc = await scene(
        s,
        registryConf("corp.example/team", `${s.upstream.host}/team`, [
          `${s.dead}/team`,
          `${s.empty.host}/team`,
        ]),
      );
      const r = await pullIn(sc, ["corp.example/team/app:1", "--verbose"]);
      assert.equal(r.code, 0, describe(r));
      const notices = mirrorNotices(r.stderr);
      assert.equal(notices.length, 2, describe(r));
      assert.ok(notices[0].includes(s.dead), notices[0]);
      assert.ok(notices[1].includes(`${s.empty.host}/team/app`), notices[1]);
      assert.ok(s.empty.log().includes("/v2/team/app/manifests/1"), "the 404 mirror was asked");
      assert.deepEqual(manifestServedBy(r.stderr), [`${s.upstream.url}/team/app`]);
      await assertArchive(sc.out, s.images.app, ["corp.example/team/app:1"]);

      // By digest: the mirror answering 404 for the digest is skipped the same way, and an OCI
      // layout names the image as the user did, never by an endpoint.
      const digest = s.images.app.digest;
      const oci = join(sc.dir, "app.oci.tar");
      const r2 = await imgpull(
        [
          `corp.example/team/app@${digest}`,
          "--format",
          "oci-archive",
          "-o",
          oci,
          "--no-cache",
          "--retries",
          "0",
        ],
        { env: sc.env },
      );
      assert.equal(r2.code, 0, describe(r2));
      const notices2 = mirrorNotices(r2.stderr);
      assert.equal(notices2.length, 2, describe(r2));
      assert.ok(s.empty.log().includes(`/v2/team/app/manifests/${digest}`));
      const files = readTar(await Deno.readFile(oci));
      const index = JSON.parse(new TextDecoder().decode(files.get("index.json")!));
      const annotations = index.manifests[0].annotations;
      assert.equal(index.manifests[0].digest, digest);
      assert.equal(
        annotations["io.containerd.image.name"],
        `corp.example/team/app:${digest.replace(":", "-")}`,
        JSON.stringify(annotations),
      );
    });

    await t.step("4. a pull-through cache in front of a token-auth registry", async () => {
      const sc = await scene(
        s,
        registryConf("private.example/team", `${s.token.host}/team`, [`${s.cache.host}/team`]),
      );
      const before = s.token.log().length;
      const tokensBefore = s.tokenServer.requests.length;
      const r = await pullIn(sc, [
        "private.example/team/private:7",
        "--ca-cert",
        s.pki.caCertPath,
        "--verbose",
      ]);
      assert.equal(r.code, 0, describe(r));
      assert.deepEqual(mirrorNotices(r.stderr), [], describe(r));
      assert.deepEqual(manifestServedBy(r.stderr), [`${s.cache.url}/team/private`]);
      await assertArchive(sc.out, s.images.private, ["private.example/team/private:7"]);
      const upstreamLog = s.token.log().slice(before);
      const requests = accessLog(upstreamLog);
      assert.ok(upstreamLog.includes("/v2/team/private/manifests/7"), "the cache went upstream");
      assert.ok(requests.length > 0, "the upstream's access log names its clients");
      const fromImgpull = requests.filter((q) => q.userAgent.includes("imgpull/"));
      assert.deepEqual(fromImgpull, [], "imgpull itself never reached the upstream");
      assert.ok(s.cache.log().includes("imgpull/"), "imgpull reached the cache");
      const tokenRequests = s.tokenServer.requests.slice(tokensBefore);
      assert.ok(tokenRequests.length > 0);
      assert.deepEqual(
        tokenRequests.filter((q) => q.username !== CACHE_USER || q.status !== 200),
        [],
        "only the cache, with its credentials, asked for tokens",
      );
    });

    await t.step("5. blocked = true: exit 2 before any request", async () => {
      const sc = await scene(
        s,
        registryConf(`${s.upstream.host}/team`, `${s.upstream.host}/team`, [], ["blocked = true"]),
      );
      const before = s.upstream.requests.length;
      const r = await pullIn(sc, [`${s.upstream.host}/team/app:1`]);
      assert.equal(r.code, 2, describe(r));
      assert.match(r.stderr, /blocked/);
      assert.equal(s.upstream.requests.length, before, "no request reached the registry");
      await assert.rejects(() => Deno.stat(sc.out));
    });

    await t.step(
      "6. malformed registries.conf, daemon.json, hosts.toml: exit 2 FILE:LINE",
      async (t) => {
        const cases: {
          name: string;
          file: (sc: Scene) => string;
          text: string;
          /** Lines accepted in `FILE:LINE` (the first is the most precise). */
          line: number[];
          ref: string;
          args?: (sc: Scene) => string[];
        }[] = [
          {
            name: "registries.conf syntax",
            file: (sc) => sc.env.CONTAINERS_REGISTRIES_CONF,
            text: `[[registry]]\nprefix = "corp.example"\nlocation = "${s.upstream.host}\n`,
            line: [3],
            ref: "corp.example/team/app:1",
          },
          {
            name: "registries.conf wrong type",
            file: (sc) => sc.env.CONTAINERS_REGISTRIES_CONF,
            text:
              `\n[[registry]]\nprefix = "corp.example"\nlocation = "${s.upstream.host}"\nblocked = "yes"\n`,
            line: [5, 2],
            ref: "corp.example/team/app:1",
          },
          {
            name: "daemon.json (rootless path)",
            file: (sc) => join(sc.env.XDG_CONFIG_HOME, "docker", "daemon.json"),
            text: `{\n  "registry-mirrors": [\n    "${s.hub.url}",,\n  ]\n}\n`,
            line: [3],
            ref: "myimage:1",
          },
          {
            name: "hosts.toml",
            file: (sc) => join(sc.dir, "hosts", "corp.example", "hosts.toml"),
            text:
              `server = "http://${s.upstream.host}"\n\n[host."http://${s.mirror.host}"]\n  capabilities = ["pull" "resolve"]\n`,
            line: [4],
            ref: "corp.example/team/app:1",
            args: (sc) => ["--hosts-dir", join(sc.dir, "hosts")],
          },
        ];
        for (const c of cases) {
          await t.step(c.name, async () => {
            const sc = await scene(s);
            const file = c.file(sc);
            await Deno.mkdir(join(file, ".."), { recursive: true });
            await Deno.writeTextFile(file, c.text);
            const before = s.upstream.requests.length + s.mirror.requests.length;
            const r = await pullIn(sc, [c.ref, ...(c.args?.(sc) ?? [])]);
            assert.equal(r.code, 2, describe(r));
            assert.ok(c.line.some((n) => r.stderr.includes(`${file}:${n}:`)), describe(r));
            assert.equal(lines(r.stderr, /at .*\.ts:\d+/).length, 0, "no stack trace");
            assert.equal(s.upstream.requests.length + s.mirror.requests.length, before);
            await assert.rejects(() => Deno.stat(sc.out));
          });
        }
      },
    );

    await t.step("7. XDG_CONFIG_HOME/docker/daemon.json registry-mirrors", async () => {
      const sc = await scene(s);
      await Deno.mkdir(join(sc.env.XDG_CONFIG_HOME, "docker"));
      await Deno.writeTextFile(
        join(sc.env.XDG_CONFIG_HOME, "docker", "daemon.json"),
        JSON.stringify({ "registry-mirrors": [s.hub.url] }),
      );
      const r = await pullIn(sc, ["myimage:1", "--verbose"]);
      assert.equal(r.code, 0, describe(r));
      assert.deepEqual(manifestServedBy(r.stderr), [`${s.hub.url}/library/myimage`]);
      await assertArchive(sc.out, s.images.hub, ["myimage:1"]);

      const listed = await imgpull(["myimage:1", "--list-platforms"], { env: sc.env });
      assert.equal(listed.code, 0, describe(listed));
      assert.equal(listed.stdout, `Platform: linux/amd64, digest: ${s.images.hub.digest}\n`);

      // --registry-mirror replaces daemon.json's list (dockerd's rule): its dead mirror is not
      // tried.
      await Deno.writeTextFile(
        join(sc.env.XDG_CONFIG_HOME, "docker", "daemon.json"),
        JSON.stringify({ "registry-mirrors": [`http://${s.dead}`] }),
      );
      const flagged = await pullIn(sc, ["myimage:1", "--registry-mirror", s.hub.url, "--verbose"]);
      assert.equal(flagged.code, 0, describe(flagged));
      assert.deepEqual(mirrorNotices(flagged.stderr), [], describe(flagged));
      assert.ok(!flagged.stderr.includes(s.dead), describe(flagged));
      await assertArchive(sc.out, s.images.hub, ["myimage:1"]);
    });

    await t.step("8. containerd hosts.toml in --hosts-dir", async (t) => {
      await t.step("server", async () => {
        const sc = await scene(s);
        await Deno.mkdir(join(sc.dir, "hosts", "corp.example"));
        await Deno.writeTextFile(
          join(sc.dir, "hosts", "corp.example", "hosts.toml"),
          `server = "http://${s.upstream.host}"\n`,
        );
        const before = s.upstream.requests.length;
        const r = await pullIn(sc, [
          "corp.example/team/app:1",
          "--hosts-dir",
          join(sc.dir, "hosts"),
          "--verbose",
        ]);
        assert.equal(r.code, 0, describe(r));
        assert.deepEqual(manifestServedBy(r.stderr), [`${s.upstream.url}/team/app`]);
        assert.ok(s.upstream.requests.length > before);
        await assertArchive(sc.out, s.images.app, ["corp.example/team/app:1"]);
      });
      await t.step("[host] mirror with pull and resolve", async () => {
        const sc = await scene(s);
        await Deno.mkdir(join(sc.dir, "hosts", "corp.example"));
        await Deno.writeTextFile(
          join(sc.dir, "hosts", "corp.example", "hosts.toml"),
          `server = "http://${s.upstream.host}"\n\n[host."http://${s.mirror.host}"]\n` +
            `  capabilities = ["pull", "resolve"]\n`,
        );
        const upstreamBefore = s.upstream.requests.length;
        const mirrorBefore = s.mirror.requests.length;
        const r = await pullIn(sc, [
          "corp.example/team/app:1",
          "--hosts-dir",
          join(sc.dir, "hosts"),
          "--verbose",
        ]);
        assert.equal(r.code, 0, describe(r));
        assert.deepEqual(manifestServedBy(r.stderr), [`${s.mirror.url}/team/app`]);
        assert.equal(s.upstream.requests.length, upstreamBefore, "the server was not needed");
        const mirrored = s.mirror.requests.slice(mirrorBefore).map((q) => `${q.method} ${q.path}`);
        // The tag is resolved once: a second GET could see the tag moved.
        assert.equal(
          mirrored.filter((q) => q === "GET /v2/team/app/manifests/1").length,
          1,
          mirrored.join("\n"),
        );
        assert.ok(
          mirrored.includes(`GET /v2/team/app/blobs/${s.images.app.expected.layerDigests[0]}`),
          mirrored.join("\n"),
        );
        await assertArchive(sc.out, s.images.app, ["corp.example/team/app:1"]);
      });
    });

    await t.step("9. auth.json credentials go to the mirror only", async () => {
      const sc = await scene(
        s,
        registryConf("auth.example/team", `${s.upstream.host}/team`, [`${s.basic.host}/team`]),
      );
      const basicAuth = Buffer.from(`${MIRROR_USER}:${MIRROR_PASSWORD}`).toString("base64");
      await Deno.writeTextFile(
        sc.env.REGISTRY_AUTH_FILE,
        JSON.stringify({ auths: { [s.basic.host]: { auth: basicAuth } } }),
      );
      const before = s.upstream.requests.length;
      const basicBefore = s.basic.log().length;
      const r = await pullIn(sc, [
        "auth.example/team/app:1",
        "--ca-cert",
        s.pki.caCertPath,
        "--verbose",
      ]);
      assert.equal(r.code, 0, describe(r));
      assert.deepEqual(manifestServedBy(r.stderr), [`https://${s.basic.host}/team/app`]);
      assert.equal(s.upstream.requests.length, before, "the upstream was not asked");
      const basicLog = s.basic.log().slice(basicBefore);
      // Distribution 2.8 logs no user name for htpasswd: "authorized request" for the manifest
      // (after the anonymous ping's 401) shows the mirror's credentials were accepted.
      assert.match(basicLog, /msg="authorized request".*uri=\/v2\/team\/app\/manifests\/1/);
      assert.ok(!r.stderr.includes(MIRROR_PASSWORD) && !r.stderr.includes(basicAuth));
      await assertArchive(sc.out, s.images.app, ["auth.example/team/app:1"]);

      // The mirror has no such repository (404 with credentials): the upstream serves it, and
      // receives no credential at all.
      const r2 = await pullIn(sc, [
        "auth.example/team/only-upstream:1",
        "--ca-cert",
        s.pki.caCertPath,
        "--verbose",
      ]);
      assert.equal(r2.code, 0, describe(r2));
      assert.equal(mirrorNotices(r2.stderr).length, 1, describe(r2));
      assert.deepEqual(manifestServedBy(r2.stderr), [`${s.upstream.url}/team/only-upstream`]);
      const seen = s.upstream.requests.slice(before);
      assert.ok(seen.length > 0);
      assert.deepEqual(
        seen.filter((q) => q.authorization !== null).map((q) => `${q.method} ${q.path}`),
        [],
      );
      await assertArchive(sc.out, s.images.app, ["auth.example/team/only-upstream:1"]);

      // The other way round: credentials stored for the upstream (by its location and by the
      // name the user typed) are never offered to the mirror, even though the mirror would
      // accept them; without its own, the mirror refuses (401) and the upstream serves.
      const upstreamAuth = Buffer.from(`${UPSTREAM_USER}:${UPSTREAM_PASSWORD}`).toString("base64");
      await Deno.writeTextFile(
        sc.env.REGISTRY_AUTH_FILE,
        JSON.stringify({
          auths: {
            [s.upstream.host]: { auth: upstreamAuth },
            "auth.example": { auth: upstreamAuth },
          },
        }),
      );
      const r3 = await pullIn(sc, [
        "auth.example/team/app:1",
        "--ca-cert",
        s.pki.caCertPath,
        "--verbose",
      ]);
      assert.equal(r3.code, 0, describe(r3));
      const notices3 = mirrorNotices(r3.stderr);
      assert.equal(notices3.length, 1, describe(r3));
      assert.ok(notices3[0].includes(s.basic.host), notices3[0]);
      assert.deepEqual(manifestServedBy(r3.stderr), [`${s.upstream.url}/team/app`]);
      await assertArchive(sc.out, s.images.app, ["auth.example/team/app:1"]);
    });

    await t.step(
      "10. mirror-by-digest-only: tags from the upstream, digests from the mirror",
      async () => {
        const sc = await scene(
          s,
          registryConf(
            "digest.example/team",
            `${s.upstream.host}/team`,
            [`${s.mirror.host}/team`],
            ["mirror-by-digest-only = true"],
          ),
        );
        let upstreamBefore = s.upstream.requests.length;
        let mirrorBefore = s.mirror.requests.length;
        const byTag = await pullIn(sc, ["digest.example/team/app:1", "--verbose"]);
        assert.equal(byTag.code, 0, describe(byTag));
        assert.deepEqual(manifestServedBy(byTag.stderr), [`${s.upstream.url}/team/app`]);
        assert.equal(s.mirror.requests.length, mirrorBefore, "the mirror was skipped for a tag");
        assert.ok(s.upstream.requests.length > upstreamBefore);
        await assertArchive(sc.out, s.images.app, ["digest.example/team/app:1"]);

        upstreamBefore = s.upstream.requests.length;
        mirrorBefore = s.mirror.requests.length;
        const digest = s.images.app.digest;
        const byDigest = await pullIn(sc, [`digest.example/team/app@${digest}`, "--verbose"]);
        assert.equal(byDigest.code, 0, describe(byDigest));
        assert.deepEqual(manifestServedBy(byDigest.stderr), [`${s.mirror.url}/team/app`]);
        assert.equal(s.upstream.requests.length, upstreamBefore, "the upstream was not needed");
        assert.ok(
          s.mirror.requests.slice(mirrorBefore).some((q) =>
            q.path === `/v2/team/app/manifests/${digest}`
          ),
        );
        await assertArchive(sc.out, s.images.app, [
          `digest.example/team/app:sha256-${digest.slice("sha256:".length)}`,
        ]);
      },
    );
  } finally {
    await s.close();
  }
});
