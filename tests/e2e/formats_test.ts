/**
 * End to end (issue #8): every output format, written by the imgpull CLI (documented permissions)
 * from a real Distribution, proven by the tools users feed it to.
 *
 * - `oci-dir` / `oci-archive`: the layout itself (blobs byte for byte, annotations), `skopeo
 *   inspect`, `skopeo copy` back into the registry (same manifest digest; with `--all-platforms`
 *   the same index digest), `umoci ls` / `umoci stat`, `podman load`, `ctr images import`.
 * - A subset of platforms: a new index listing exactly those manifests, unchanged.
 * - Several images in one docker-archive (arguments, `--images-from FILE`, `--images-from -`):
 *   shared layers stored once, `docker load` + `docker run` of both, `podman load`; one missing
 *   image fails the run and writes nothing; several platforms are refused for docker-archive.
 * - `rootfs`: equal to `docker export` of a container of the image; `-o -` into `tar -t`; tricky
 *   layers extract inside the target (GNU tar, `umoci raw unpack`); attack layers exit 8.
 *
 * Every pull runs cold (fresh --cache-dir) and warm (same cache) where that is cheap. One
 * registry, one dockerd and one containerd serve every step.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { type CorpusContainerd, startContainerd } from "../helpers/corpus/services.ts";
import { type Dockerd, startDockerd } from "../helpers/dockerd.ts";
import { type Fixtures, pushFixtures } from "../helpers/fixtures.ts";
import { imgpullPipe, imgpullRaw, type RawResult } from "../helpers/formats/cli.ts";
import {
  ctrImport,
  layoutOfRootfs,
  registryManifest,
  said,
  skopeoCopyToRegistry,
  skopeoInspect,
  umociLs,
  umociRawUnpack,
  umociStat,
} from "../helpers/formats/consumers.ts";
import { describeTree, diffTrees, extractTar } from "../helpers/formats/fs.ts";
import {
  type PushedLayers,
  pushFeatureImage,
  pushLayerImage,
  trickyLayers,
} from "../helpers/formats/images.ts";
import {
  type Descriptor,
  dockerArchiveProblems,
  INDEX_TYPES,
  type Layout,
  layoutProblems,
  listTree,
  parseJson,
  readDockerArchive,
  readLayoutDir,
  readLayoutTar,
  sha256,
  treeHashes,
} from "../helpers/formats/layout.ts";
import { attackLayers } from "../helpers/layers.ts";
import { podmanLoad } from "../helpers/podman.ts";
import { run, sleep } from "../helpers/process.ts";
import { type RunningRegistry, startRegistry } from "../helpers/registry.ts";

const REF_NAME = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME = "io.containerd.image.name";
const PHASES = ["cold", "warm"] as const;
const STACK_TRACE = /^\s+at\s|error: Uncaught/m;

interface Environment {
  root: string;
  home: string;
  registry: RunningRegistry;
  /** `127.0.0.1:PORT` */
  H: string;
  fixtures: Fixtures;
  features: PushedLayers;
  dockerd: Dockerd;
  containerd: CorpusContainerd;
  close(): Promise<void>;
}

async function startEnvironment(): Promise<Environment> {
  const root = await Deno.makeTempDir({ prefix: "imgpull-formats-" });
  const closers: (() => Promise<void>)[] = [];
  const close = async () => {
    for (const c of closers.reverse()) await c().catch((e) => console.error("cleanup:", e));
    await Deno.remove(root, { recursive: true }).catch(() => {});
  };
  try {
    // dockerd takes seconds: overlap it with the registry, the pushes and containerd.
    const dockerdPromise = startDockerd();
    dockerdPromise.then((d) => closers.push(() => d.close()), () => {});
    const registry = await startRegistry({ mode: "http", storageDir: join(root, "storage") });
    closers.push(() => registry.close());
    const fixtures = await pushFixtures(registry.url, join(root, "fixtures"));
    const features = await pushFeatureImage(registry.url, "rootfs/features");
    const containerd = await startContainerd(join(root, "ctd"));
    closers.push(() => containerd.stop());
    const dockerd = await dockerdPromise;
    const home = join(root, "home");
    await Deno.mkdir(home);
    return {
      root,
      home,
      registry,
      H: registry.host,
      fixtures,
      features,
      dockerd,
      containerd,
      close,
    };
  } catch (e) {
    await close();
    throw e;
  }
}

async function workDir(env: Environment, ...names: string[]): Promise<string> {
  const dir = join(env.root, "work", ...names);
  await Deno.mkdir(dir, { recursive: true });
  return dir;
}

function cli(
  env: Environment,
  args: string[],
  cwd: string,
  stdin?: string,
): Promise<RawResult> {
  return imgpullRaw(args, { cwd, env: { HOME: env.home }, stdin });
}

/** Runs imgpull expecting exit 0; returns the absolute path it printed last on stdout. */
async function pullOk(
  env: Environment,
  args: string[],
  cwd: string,
  stdin?: string,
): Promise<{ path: string; stderr: string }> {
  const r = await cli(env, args, cwd, stdin);
  assert.equal(r.code, 0, `imgpull ${args.join(" ")} exited ${r.code}:\n${r.stderr}`);
  const printed = new TextDecoder().decode(r.stdout).trim().split("\n").pop() ?? "";
  return { path: printed.startsWith("/") ? printed : join(cwd, printed), stderr: r.stderr };
}

/** Runs imgpull expecting `code` and `message`, no stack trace, nothing written in `cwd`. */
async function pullFails(
  env: Environment,
  args: string[],
  cwd: string,
  code: number,
  message: RegExp,
  stdin?: string,
): Promise<string> {
  const before = await listTree(cwd);
  const r = await cli(env, args, cwd, stdin);
  assert.equal(
    r.code,
    code,
    `imgpull ${args.join(" ")}: exit ${r.code}, expected ${code}:\n${r.stderr}`,
  );
  assert.match(r.stderr, message);
  assert.equal(r.stdout.byteLength, 0, "nothing on stdout");
  assert.doesNotMatch(r.stderr, STACK_TRACE, "no stack trace without --verbose");
  assert.deepEqual(await listTree(cwd), before, "a failed run writes nothing");
  return r.stderr;
}

async function docker(env: Environment, ...args: string[]): Promise<string> {
  const r = await env.dockerd.docker(args);
  assert.equal(r.code, 0, `docker ${args.join(" ")} failed: ${r.stderr}`);
  return r.stdout.trim();
}

function assertLayoutClean(layout: Layout): ReturnType<typeof layoutProblems>["reachable"] {
  const { problems, reachable } = layoutProblems(layout);
  assert.deepEqual(problems, [], `layout problems:\n${problems.join("\n")}`);
  return reachable;
}

/** The one index.json entry, annotated with the tag and the full name. */
function assertSingleEntry(layout: Layout, digest: string, fullName: string): Descriptor {
  assert.equal(layout.index.manifests.length, 1, JSON.stringify(layout.index));
  const entry = layout.index.manifests[0];
  assert.equal(entry.digest, digest, "index.json points at the pulled digest");
  assert.equal(entry.annotations?.[REF_NAME], fullName.slice(fullName.lastIndexOf(":") + 1));
  assert.equal(entry.annotations?.[CONTAINERD_NAME], fullName);
  return entry;
}

function assertBytesAsSent(env: Environment, layout: Layout, digests: Iterable<string>): void {
  for (const digest of digests) {
    const sent = env.fixtures.blobs.get(digest);
    assert.ok(sent, `${digest} is not a fixture blob`);
    const stored = layout.blobs.get(digest);
    assert.ok(stored, `${digest} missing from blobs/`);
    assert.equal(sha256(stored), sha256(sent), `${digest} changed`);
    assert.equal(stored.byteLength, sent.byteLength, `${digest} changed size`);
  }
}

async function assertSkopeoCopyDigest(
  env: Environment,
  source: string,
  repo: string,
  digest: string,
  all = false,
): Promise<void> {
  const copied = await skopeoCopyToRegistry(source, `${env.H}/${repo}:1`, { all });
  assert.equal(copied.code, 0, `skopeo copy ${source}: ${said(copied)}`);
  const served = await registryManifest(env.registry.url, repo, "1");
  assert.equal(served.digest, digest, `skopeo copy of ${source} changed the digest`);
}

async function assertPodmanLoads(path: string, configDigest: string): Promise<string[]> {
  const loaded = await podmanLoad(path);
  assert.equal(loaded.code, 0, `podman load ${path}: ${loaded.stderr}`);
  assert.ok(
    loaded.ids.includes(configDigest.slice(7)),
    `podman loaded ${loaded.ids.join(", ")} (${loaded.images.join(", ")}), not ${configDigest}`,
  );
  return loaded.images;
}

/** Registry access-log lines of layer blob GETs so far (HEADs and manifests not counted). */
function layerGets(env: Environment, digest?: string): number {
  const layers = new Set(
    Object.values(env.fixtures.images).flatMap((i) =>
      i.manifests.flatMap((m) => m.layers.map((l) => l.digest))
    ),
  );
  const gets = env.registry.log().match(/"GET \/v2\/[^ "]+\/blobs\/sha256:[0-9a-f]{64}/g) ?? [];
  return gets.map((g) => g.slice(g.lastIndexOf("/") + 1))
    .filter((d) => digest ? d === digest : layers.has(d)).length;
}

/** GETs of the busybox layer every fixture shares. */
function busyboxGets(env: Environment): number {
  return layerGets(env, env.fixtures.busyboxLayer.digest);
}

function entriesOf(bytes: Uint8Array): Descriptor[] {
  return parseJson<{ manifests: Descriptor[] }>(bytes).manifests;
}

Deno.test("e2e formats: oci-dir, oci-archive, several images and platforms, rootfs", async (t) => {
  const env = await startEnvironment();
  try {
    const { H, fixtures: fx } = env;
    const nginx = fx.images.nginx;
    const app = fx.images.app;
    const multi = fx.images.multi;
    const nginxAmd64 = nginx.manifests.find((m) => m.platformString === "linux/amd64")!;
    const appManifest = app.manifests[0];

    await t.step("oci-dir (OCI image): layout, skopeo, umoci, podman; cold and warm", async () => {
      const cache = join(await workDir(env, "oci-dir"), "cache");
      const hashes: Record<string, string>[] = [];
      for (const phase of PHASES) {
        const cwd = await workDir(env, "oci-dir", phase);
        const { path } = await pullOk(env, [
          `${H}/library/nginx:latest`,
          "--platform",
          "linux/amd64",
          "--format",
          "oci-dir",
          "--cache-dir",
          cache,
        ], cwd);
        assert.equal(path, join(cwd, "library_nginx"), "default name: no extension for oci-dir");
        const strays = (await listTree(cwd)).filter((p) => !p.startsWith("library_nginx"));
        assert.deepEqual(strays, [], "only the layout is written");
        assert.ok((await Deno.stat(path)).isDirectory, `${path} is not a directory`);
        const layout = await readLayoutDir(path);
        const reachable = assertLayoutClean(layout);
        const entry = assertSingleEntry(layout, nginxAmd64.digest, `${H}/library/nginx:latest`);
        assert.equal(entry.mediaType, nginxAmd64.mediaType);
        assert.equal(entry.size, nginxAmd64.size);
        const expected = [
          nginxAmd64.digest,
          nginxAmd64.config.digest,
          ...nginxAmd64.layers.map((l) => l.digest),
        ];
        assert.deepEqual([...reachable.digests].sort(), [...expected].sort());
        assertBytesAsSent(env, layout, expected);

        const inspected = await skopeoInspect(`oci:${path}`);
        assert.equal(inspected.code, 0, `skopeo inspect: ${said(inspected)}`);
        const info = JSON.parse(inspected.stdout);
        assert.equal(info.Digest, nginxAmd64.digest);
        assert.equal(info.Architecture, "amd64");

        const ls = await umociLs(path);
        assert.equal(ls.code, 0, `umoci ls: ${said(ls)}`);
        assert.deepEqual(ls.tags, ["latest"]);
        const stat = await umociStat(path, "latest");
        assert.equal(stat.code, 0, `umoci stat: ${said(stat)}`);
        assert.ok(Array.isArray(stat.json?.history), `umoci stat: ${stat.stdout.slice(0, 300)}`);

        await assertPodmanLoads(path, nginxAmd64.config.digest);
        await assertSkopeoCopyDigest(
          env,
          `oci:${path}`,
          `copy/oci-dir-${phase}`,
          nginxAmd64.digest,
        );
        hashes.push(await treeHashes(path));
      }
      assert.deepEqual(hashes[1], hashes[0], "the warm layout equals the cold one");
    });

    await t.step(
      "oci-archive (Docker schema2 image): tar, skopeo, podman, ctr; cold and warm",
      async () => {
        const cache = join(await workDir(env, "oci-archive"), "cache");
        for (const phase of PHASES) {
          const cwd = await workDir(env, "oci-archive", phase);
          // Cold: the default name (`.tar`); warm: an explicit -o.
          const args = [`${H}/fixtures/app:v1`, "--format", "oci-archive", "--cache-dir", cache];
          const { path } = await pullOk(
            env,
            phase === "cold" ? args : [...args, "-o", "app.tar"],
            cwd,
          );
          assert.equal(path, join(cwd, phase === "cold" ? "fixtures_app_v1.tar" : "app.tar"));
          assert.deepEqual(await listTree(cwd), [
            phase === "cold" ? "fixtures_app_v1.tar" : "app.tar",
          ]);
          const layout = await readLayoutTar(path);
          const badNames = layout.members!.filter((m) => m.startsWith("./") || m.startsWith("/"));
          assert.deepEqual(badNames, [], "member names are simple and relative");
          assert.equal(
            new Set(layout.members!.map((m) => m.replace(/\/$/, ""))).size,
            layout.members!.length,
          );
          const reachable = assertLayoutClean(layout);
          const entry = assertSingleEntry(layout, appManifest.digest, `${H}/fixtures/app:v1`);
          assert.equal(entry.mediaType, appManifest.mediaType, "media types are kept");
          assertBytesAsSent(env, layout, reachable.digests);

          const inspected = await skopeoInspect(`oci-archive:${path}`);
          assert.equal(inspected.code, 0, `skopeo inspect: ${said(inspected)}`);
          assert.equal(JSON.parse(inspected.stdout).Digest, appManifest.digest);
          await assertSkopeoCopyDigest(
            env,
            `oci-archive:${path}`,
            `copy/oci-archive-${phase}`,
            appManifest.digest,
          );
          await assertPodmanLoads(path, appManifest.config.digest);

          const ctr = await ctrImport(env.containerd, `oci-archive-${phase}`, path);
          assert.equal(ctr.import.code, 0, `ctr images import: ${said(ctr.import)}`);
          const image = ctr.images.find((i) => i.name === `${H}/fixtures/app:v1`);
          assert.ok(image, `ctr lists ${ctr.images.map((i) => i.name).join(", ")}`);
          assert.equal(image.digest, appManifest.digest);

          // -o -: the same layout on stdout, nothing written.
          const out = await workDir(env, "oci-archive", `${phase}-stdout`);
          const streamed = await cli(env, [...args, "-o", "-"], out);
          assert.equal(streamed.code, 0, streamed.stderr);
          const fromStdout = await readLayoutTar(streamed.stdout);
          assertLayoutClean(fromStdout);
          assert.deepEqual(fromStdout.index, layout.index);
          assert.deepEqual([...fromStdout.blobs.keys()].sort(), [...layout.blobs.keys()].sort());
          assert.deepEqual(await listTree(out), [], "nothing written beside stdout");
        }
      },
    );

    await t.step(
      "--all-platforms oci-archive: index and every manifest byte for byte; copy --all keeps the index digest",
      async () => {
        const cache = join(await workDir(env, "all"), "cache");
        for (const phase of PHASES) {
          const cwd = await workDir(env, "all", phase);
          const { path } = await pullOk(env, [
            `${H}/fixtures/multi:latest`,
            "--all-platforms",
            "--format",
            "oci-archive",
            "-o",
            "multi.tar",
            "--cache-dir",
            cache,
          ], cwd);
          const layout = await readLayoutTar(path);
          const reachable = assertLayoutClean(layout);
          const entry = assertSingleEntry(layout, multi.digest, `${H}/fixtures/multi:latest`);
          assert.equal(entry.mediaType, multi.mediaType);
          const children = [...multi.manifests.map((m) => m.digest), multi.attestation!.digest];
          assertBytesAsSent(env, layout, [multi.digest, ...children]);
          assertBytesAsSent(env, layout, reachable.digests);
          assert.equal(
            reachable.manifests.size,
            children.length,
            "every platform and the attestation",
          );

          const raw = await skopeoInspect(`oci-archive:${path}`, true);
          assert.equal(raw.code, 0, `skopeo inspect --raw: ${said(raw)}`);
          assert.equal(sha256(new TextEncoder().encode(raw.stdout)), multi.digest);
          await assertSkopeoCopyDigest(
            env,
            `oci-archive:${path}`,
            `copy/all-${phase}`,
            multi.digest,
            true,
          );

          const ctr = await ctrImport(env.containerd, `all-${phase}`, path, { allPlatforms: true });
          assert.equal(
            ctr.import.code,
            0,
            `ctr images import --all-platforms: ${said(ctr.import)}`,
          );
          const image = ctr.images.find((i) => i.name === `${H}/fixtures/multi:latest`);
          assert.ok(image, `ctr lists ${ctr.images.map((i) => i.name).join(", ")}`);
          assert.equal(image.digest, multi.digest);
          for (const m of multi.manifests) {
            assert.ok(
              image.platforms.includes(m.platformString),
              `ctr: no ${m.platformString} in ${image.platforms}`,
            );
          }
          if (phase === "cold") {
            const amd64 = multi.manifests.find((m) => m.platformString === "linux/amd64")!;
            await assertPodmanLoads(path, amd64.config.digest);
          }
        }
      },
    );

    await t.step(
      "--platform linux/amd64,linux/arm64 (oci-dir): a new index of exactly those manifests",
      async () => {
        const cache = join(await workDir(env, "subset"), "cache");
        const original = entriesOf(fx.blobs.get(multi.digest)!);
        const wanted = original.filter((d) =>
          d.platform?.os === "linux" &&
          (d.platform.architecture === "amd64" || d.platform.architecture === "arm64")
        );
        assert.equal(wanted.length, 2);
        const indexes: string[] = [];
        for (const phase of PHASES) {
          const cwd = await workDir(env, "subset", phase);
          const { path } = await pullOk(env, [
            `${H}/fixtures/multi:latest`,
            "--platform",
            "linux/amd64,linux/arm64",
            "--format",
            "oci-dir",
            "-o",
            "subset",
            "--cache-dir",
            cache,
          ], cwd);
          assert.equal(path, join(cwd, "subset"));
          const layout = await readLayoutDir(path);
          const reachable = assertLayoutClean(layout);
          assert.equal(layout.index.manifests.length, 1, JSON.stringify(layout.index));
          const entry = layout.index.manifests[0];
          assert.ok(
            INDEX_TYPES.includes(entry.mediaType),
            `index.json entry is ${entry.mediaType}`,
          );
          assert.notEqual(entry.digest, multi.digest, "a subset cannot keep the original index");
          assert.equal(entry.annotations?.[CONTAINERD_NAME], `${H}/fixtures/multi:latest`);
          assert.equal(entry.annotations?.[REF_NAME], "latest");
          const listed = entriesOf(layout.blobs.get(entry.digest)!);
          assert.deepEqual(
            listed.map((d) => d.digest).sort(),
            wanted.map((d) => d.digest).sort(),
            "the new index lists exactly the two manifests",
          );
          for (const d of listed) {
            const o = wanted.find((w) => w.digest === d.digest)!;
            assert.deepEqual(
              { mediaType: d.mediaType, size: d.size, platform: d.platform },
              { mediaType: o.mediaType, size: o.size, platform: o.platform },
            );
          }
          assert.deepEqual(
            [...reachable.manifests.keys()].sort(),
            wanted.map((d) => d.digest).sort(),
          );
          assertBytesAsSent(env, layout, [...reachable.digests].filter((d) => d !== entry.digest));
          indexes.push(entry.digest);

          const ls = await umociLs(path);
          assert.equal(ls.code, 0, `umoci ls: ${said(ls)}`);
          assert.deepEqual(ls.tags, ["latest"]);
          await assertSkopeoCopyDigest(
            env,
            `oci:${path}`,
            `copy/subset-${phase}`,
            entry.digest,
            true,
          );
        }
        assert.equal(indexes[1], indexes[0], "the new index is the same on a warm run");
      },
    );

    const bundleRefs = [`${H}/fixtures/app:v1`, `${H}/library/nginx:latest`];
    const assertBundle = async (path: string) => {
      const archive = await readDockerArchive(path);
      const problems = dockerArchiveProblems(archive);
      assert.deepEqual(problems, [], problems.join("\n"));
      assert.deepEqual(archive.manifest.map((m) => m.RepoTags), bundleRefs.map((r) => [r]));
      assert.deepEqual(
        archive.manifest.map((m) => m.Config).sort(),
        [appManifest.config.digest, nginxAmd64.config.digest].map((d) =>
          `blobs/sha256/${d.slice(7)}`
        ).sort(),
      );
      const busybox = [...archive.files.values()].filter((b) =>
        sha256(b) === fx.busyboxLayer.digest
      );
      assert.equal(busybox.length, 1, "the shared busybox layer is stored once");
      assert.equal(archive.manifest[0].Layers[0], archive.manifest[1].Layers[0]);
      assert.ok(archive.repositories?.[`${H}/fixtures/app`]?.v1, "repositories lists fixtures/app");
      assert.ok(archive.repositories?.[`${H}/library/nginx`]?.latest, "repositories lists nginx");
      if (archive.files.has("oci-layout")) {
        // The optional Docker 25 hybrid: its OCI view must be just as complete.
        const layout = await readLayoutTar(path);
        assertLayoutClean(layout);
        assert.deepEqual(
          layout.index.manifests.map((e) => e.annotations?.[CONTAINERD_NAME]),
          bundleRefs,
        );
      }
      return archive;
    };
    const assertDockerRunsBoth = async (path: string) => {
      await env.dockerd.docker(["rmi", "-f", ...bundleRefs]);
      const loaded = await docker(env, "load", "-i", path);
      for (const ref of bundleRefs) assert.match(loaded, new RegExp(`Loaded image: ${ref}`));
      const out1 = await docker(env, "run", "--rm", "--network", "none", bundleRefs[0]);
      assert.equal(out1, appManifest.marker);
      const out2 = await docker(env, "run", "--rm", "--network", "none", bundleRefs[1]);
      assert.equal(out2, nginxAmd64.marker);
    };
    const bundleCache = join(await workDir(env, "bundle"), "cache");

    await t.step(
      "docker-archive of two images: shared layer once, docker load + run both, podman; cold and warm",
      async () => {
        for (const phase of PHASES) {
          const cwd = await workDir(env, "bundle", phase);
          const gets = layerGets(env);
          const busybox = busyboxGets(env);
          const { path } = await pullOk(env, [
            ...bundleRefs,
            "--platform",
            "linux/amd64",
            "-o",
            "bundle.tar",
            "--cache-dir",
            bundleCache,
          ], cwd);
          assert.equal(path, join(cwd, "bundle.tar"));
          assert.deepEqual(await listTree(cwd), ["bundle.tar"]);
          await sleep(300); // the registry's access log reaches us through a pipe
          const fetched = layerGets(env) - gets;
          const layers = new Set(
            [...appManifest.layers, ...nginxAmd64.layers].map((l) => l.digest),
          );
          // Cold: each distinct layer once (the shared busybox and release layers too); warm: none.
          assert.equal(fetched, phase === "cold" ? layers.size : 0, "layer downloads");
          assert.equal(
            busyboxGets(env) - busybox,
            phase === "cold" ? 1 : 0,
            "the shared busybox layer is downloaded once",
          );
          await assertBundle(path);
          await assertDockerRunsBoth(path);
          if (phase === "cold") {
            const images = await assertPodmanLoads(path, appManifest.config.digest);
            for (const ref of bundleRefs) assert.ok(images.includes(ref), `podman: ${images}`);
          }
        }
      },
    );

    await t.step(
      "oci-archive and oci-dir of two images: one entry each, shared blobs once",
      async () => {
        const cwd = await workDir(env, "oci-bundle");
        const common = [...bundleRefs, "--platform", "linux/amd64", "--cache-dir", bundleCache];
        const { path: tar } = await pullOk(
          env,
          [...common, "--format", "oci-archive", "-o", "b.tar"],
          cwd,
        );
        const { path: dir } = await pullOk(env, [...common, "--format", "oci-dir", "-o", "b"], cwd);
        for (const layout of [await readLayoutTar(tar), await readLayoutDir(dir)]) {
          assertLayoutClean(layout);
          const entries = layout.index.manifests;
          assert.deepEqual(entries.map((e) => e.digest), [appManifest.digest, nginxAmd64.digest]);
          assert.deepEqual(entries.map((e) => e.annotations?.[CONTAINERD_NAME]), bundleRefs);
          assert.deepEqual(entries.map((e) => e.annotations?.[REF_NAME]), ["v1", "latest"]);
        }
        // By ref name: skopeo 1.9 only matches entries of OCI media types (app:v1 is Docker's).
        const inspected = await skopeoInspect(`oci-archive:${tar}:latest`);
        assert.equal(inspected.code, 0, `skopeo inspect: ${said(inspected)}`);
        assert.equal(JSON.parse(inspected.stdout).Digest, nginxAmd64.digest);
        const ls = await umociLs(dir);
        assert.equal(ls.code, 0, `umoci ls: ${said(ls)}`);
        assert.deepEqual(ls.tags.sort(), ["latest", "v1"]);
        const ctr = await ctrImport(env.containerd, "oci-bundle", tar);
        assert.equal(ctr.import.code, 0, `ctr images import: ${said(ctr.import)}`);
        assert.deepEqual(ctr.images.map((i) => i.name).sort(), [...bundleRefs].sort());
      },
    );

    await t.step("docker-archive of two images to stdout (-o -) | docker load", async () => {
      const cwd = await workDir(env, "bundle", "stdout");
      await env.dockerd.docker(["rmi", "-f", ...bundleRefs]);
      const piped = await imgpullPipe(
        [...bundleRefs, "--platform", "linux/amd64", "-o", "-", "--cache-dir", bundleCache],
        { cwd, env: { HOME: env.home } },
        "/usr/bin/docker",
        ["load"],
        { DOCKER_HOST: env.dockerd.host, DOCKER_CONFIG: join(cwd, "docker-config") },
      );
      assert.equal(piped.imgpull.code, 0, piped.imgpull.stderr);
      assert.equal(piped.consumer.code, 0, `docker load: ${piped.consumer.stderr}`);
      for (const ref of bundleRefs) {
        assert.match(piped.consumer.stdout, new RegExp(`Loaded image: ${ref}`));
      }
      assert.deepEqual(await listTree(cwd), [], "nothing written beside stdout");
    });

    await t.step("--images-from FILE and --images-from - (comments, blank lines)", async () => {
      const list = `# the application's images\n\n${bundleRefs[0]}\n# the web server\n\n${
        bundleRefs[1]
      }\n`;
      const cwd = await workDir(env, "images-from");
      // The file as a Windows editor saves it: CRLF line ends.
      await Deno.writeTextFile(join(cwd, "images.txt"), list.replaceAll("\n", "\r\n"));
      const common = ["--platform", "linux/amd64", "--cache-dir", bundleCache];
      const fromFile = await pullOk(env, [
        "--images-from",
        "images.txt",
        "-o",
        "file.tar",
        ...common,
      ], cwd);
      await assertBundle(fromFile.path);
      const fromStdin = await pullOk(
        env,
        ["--images-from", "-", "-o", "stdin.tar", ...common],
        cwd,
        list,
      );
      await assertBundle(fromStdin.path);
      assert.deepEqual(await listTree(cwd), ["file.tar", "images.txt", "stdin.tar"]);
      await assertDockerRunsBoth(fromStdin.path);
    });

    await t.step(
      "one missing image (exit 4) or platform (exit 1) fails the run and writes nothing",
      async () => {
        const cwd = await workDir(env, "missing");
        const missing = `${H}/fixtures/missing:v1`;
        await pullFails(
          env,
          [bundleRefs[0], missing, "-o", "bundle.tar", "--cache-dir", bundleCache],
          cwd,
          4,
          /not found|missing/i,
        );
        await pullFails(
          env,
          [
            bundleRefs[0],
            missing,
            "--format",
            "oci-dir",
            "-o",
            "layout",
            "--cache-dir",
            bundleCache,
          ],
          cwd,
          4,
          /not found|missing/i,
        );
        await pullFails(
          env,
          ["--images-from", "-", "--format", "oci-archive", "-o", "b.tar", "--no-cache"],
          cwd,
          4,
          /not found|missing/i,
          `${bundleRefs[0]}\n${missing}\n`,
        );
        // -o - : nothing reaches stdout either (pullFails checks stdout is empty).
        await pullFails(
          env,
          [missing, bundleRefs[1], "-o", "-", "--no-cache"],
          cwd,
          4,
          /not found|missing/i,
        );
        // A platform of the list that the index lacks: exit 1, no layout.
        await pullFails(
          env,
          [
            `${H}/fixtures/multi:latest`,
            "--platform",
            "linux/amd64,linux/mips64",
            "--format",
            "oci-dir",
          ],
          cwd,
          1,
          /mips64/,
        );
      },
    );

    await t.step(
      "usage: several platforms with docker-archive, several images without -o (exit 2)",
      async () => {
        const cwd = await workDir(env, "usage");
        const multiRef = `${H}/fixtures/multi:latest`;
        await pullFails(
          env,
          [multiRef, "--platform", "linux/amd64,linux/arm64", "-o", "x.tar"],
          cwd,
          2,
          /oci-archive/,
        );
        await pullFails(env, [multiRef, "--all-platforms", "-o", "x.tar"], cwd, 2, /oci-archive/);
        await pullFails(
          env,
          [multiRef, "--all-platforms", "--format", "docker-archive", "-o", "x.tar"],
          cwd,
          2,
          /oci-archive/,
        );
        await pullFails(env, bundleRefs, cwd, 2, /-o|--output/);
        await pullFails(env, [bundleRefs[0], "--format", "tarball"], cwd, 2, /format/);
        // A directory layout cannot go to stdout.
        await pullFails(
          env,
          [bundleRefs[0], "--format", "oci-dir", "-o", "-"],
          cwd,
          2,
          /oci-dir|-o|stdout/,
        );
      },
    );

    await t.step(
      "rootfs equals docker export of a container of the image; cold and warm",
      async () => {
        const work = await workDir(env, "rootfs");
        // Docker's view: the image loaded from a docker-archive, a container created, exported.
        const { path: archive } = await pullOk(env, [
          env.features.reference,
          "-o",
          "image.tar",
          "--no-cache",
        ], work);
        await docker(env, "load", "-i", archive);
        const container = await docker(env, "create", "--network", "none", env.features.reference);
        const exported = join(work, "export.tar");
        await docker(env, "export", "-o", exported, container);
        await docker(env, "rm", container);
        await extractTar(exported, join(work, "x-docker"));
        const expected = await describeTree(join(work, "x-docker"));
        assert.ok(
          expected.has("data/link-to-lower") && expected.has("devices/null"),
          "export incomplete",
        );

        const cache = join(work, "cache");
        const tars: string[] = [];
        for (const phase of PHASES) {
          const cwd = await workDir(env, "rootfs", phase);
          const { path } = await pullOk(env, [
            env.features.reference,
            "--format",
            "rootfs",
            "-o",
            "rootfs.tar",
            "--cache-dir",
            cache,
          ], cwd);
          assert.deepEqual(await listTree(cwd), ["rootfs.tar"]);
          const listing = await run("tar", ["-tf", path]);
          assert.equal(listing.code, 0, said(listing));
          const whiteouts = listing.stdout.split("\n").filter((l) => /(^|\/)\.wh\./.test(l));
          assert.deepEqual(whiteouts, [], "whiteouts are never emitted");
          await extractTar(path, join(cwd, "x"));
          const actual = await describeTree(join(cwd, "x"));
          const differences = diffTrees(expected, actual);
          assert.deepEqual(differences, [], `\n${differences.join("\n")}`);
          assert.ok(actual.size > 40, `only ${actual.size} paths compared`);
          tars.push(sha256(await Deno.readFile(path)));
        }
        assert.equal(tars[1], tars[0], "the warm rootfs tar is byte for byte the cold one");

        // -o - piped into tar -t: the same entries as the file, and nothing written.
        const cwd = await workDir(env, "rootfs", "stdout");
        const piped = await imgpullPipe(
          [env.features.reference, "--format", "rootfs", "-o", "-", "--cache-dir", cache],
          { cwd, env: { HOME: env.home } },
          "tar",
          ["-t"],
        );
        assert.equal(piped.imgpull.code, 0, piped.imgpull.stderr);
        assert.equal(piped.consumer.code, 0, `tar -t: ${piped.consumer.stderr}`);
        const fromFile = await run("tar", ["-tf", join(work, "cold", "rootfs.tar")]);
        assert.equal(
          piped.consumer.stdout,
          fromFile.stdout,
          "tar -t of stdout equals tar -t of the file",
        );
        assert.deepEqual(await listTree(cwd), [], "nothing written beside stdout");
        const raw = await cli(env, [
          env.features.reference,
          "--format",
          "rootfs",
          "-o",
          "-",
          "--cache-dir",
          cache,
        ], cwd);
        assert.equal(raw.code, 0, raw.stderr);
        assert.equal(sha256(raw.stdout), tars[0], "-o - writes the same bytes as -o FILE");
      },
    );

    await t.step(
      "rootfs of tricky layers stays inside the target (GNU tar, umoci raw unpack)",
      async () => {
        const work = await workDir(env, "tricky");
        const outside = join(work, "outside");
        await Deno.mkdir(outside);
        const tricky = await pushLayerImage(
          env.registry.url,
          "rootfs/tricky",
          "v1",
          trickyLayers(outside),
        );
        const { path } = await pullOk(env, [
          tricky.reference,
          "--format",
          "rootfs",
          "--no-cache",
        ], work);
        assert.equal(path, join(work, "rootfs_tricky_v1.tar"), "default name: .tar for rootfs");

        const target = join(work, "gnu");
        await extractTar(path, target);
        assert.deepEqual(await listTree(outside), [], "GNU tar wrote outside the target");
        const facts = await describeTree(target);
        assert.equal(facts.get("victim")?.type, "file", "the file replaced the symlink");
        assert.equal(facts.get("out")?.target, outside, "symlinks are kept as they are");
        assert.equal(facts.get("hl")?.links, "abs/file hl");
        assert.equal(facts.get("dir/inner")?.type, "file");

        const layout = join(work, "layout");
        await layoutOfRootfs(await Deno.readFile(path), layout);
        const unpacked = join(work, "umoci");
        const r = await umociRawUnpack(layout, "rootfs", unpacked);
        assert.equal(r.code, 0, `umoci raw unpack: ${said(r)}`);
        assert.deepEqual(await listTree(outside), [], "umoci wrote outside the target");
        assert.equal((await Deno.lstat(join(unpacked, "victim"))).isFile, true);
      },
    );

    await t.step(
      "rootfs of attack layers: exit 8, nothing written (file and stdout, cold and warm)",
      async () => {
        const chosen = attackLayers().filter((a) =>
          [
            "dotdot",
            "symlink-then-through (later layer)",
            "hardlink ../../etc/passwd",
            "hardlink through a symlink",
          ]
            .includes(a.id)
        );
        assert.equal(chosen.length, 4);
        for (const [i, attack] of chosen.entries()) {
          const cwd = await workDir(env, "attacks", String(i));
          const image = await pushLayerImage(env.registry.url, `attack/a${i}`, "v1", attack.layers);
          const cache = join(await workDir(env, "attacks", `cache-${i}`), "c");
          await pullFails(
            env,
            [image.reference, "--format", "rootfs", "-o", "root.tar", "--cache-dir", cache],
            cwd,
            8,
            attack.expect,
          );
          // Warm: the layers are cached now; still refused.
          await pullFails(
            env,
            [image.reference, "--format", "rootfs", "-o", "-", "--cache-dir", cache],
            cwd,
            8,
            attack.expect,
          );
        }
      },
    );
  } finally {
    await env.close();
  }
});
