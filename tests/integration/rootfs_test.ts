/**
 * The rootfs flattener against Docker: an image with whiteouts, an opaque directory,
 * replacements, hard links (target later replaced and removed), symlinks, setuid/sticky modes,
 * owners, long and UTF-8 names, devices, a FIFO and xattrs (over busybox-static) is pushed to a
 * real Distribution, pulled by the imgpull CLI into the blob cache and a docker-archive, loaded
 * into the tests' dockerd, created and exported. `docker export` and the flattener's output run
 * on the cached blobs are both extracted with GNU tar and compared (path, type, mode, owner,
 * content hash, link target, hard-link groups, device numbers, file mtimes).
 *
 * Hostile layers: tricky but legal ones (absolute names, symlinks pointing outside, a symlink
 * replaced by a file) are flattened and extracted with GNU tar, and nothing lands outside the
 * target; the attack layers are refused (exit 8) and leave an empty output file.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { ExitCode, InvalidContentError } from "../../lib/errors.ts";
import { type RootfsLayer, writeRootfs } from "../../lib/writers/rootfs.ts";
import { imgpull } from "../helpers/cli.ts";
import { type Dockerd, startDockerd } from "../helpers/dockerd.ts";
import { MT } from "../helpers/fixtures.ts";
import { describeTree, diffTrees, extractTar } from "../helpers/formats/fs.ts";
import {
  attackLayers,
  buildTar,
  featureLayers,
  gzip,
  type TarItem,
  zstd,
} from "../helpers/layers.ts";
import { pushBlob, pushManifest, sha256Digest } from "../helpers/push.ts";
import { startRegistry } from "../helpers/registry.ts";

const encoder = new TextEncoder();

interface Pushed {
  reference: string;
  layers: { digest: string; compression: RootfsLayer["compression"] }[];
}

async function busyboxLayer(): Promise<TarItem[]> {
  return [
    { name: "bin", type: "dir", mode: 0o755 },
    { name: "bin/busybox", content: await Deno.readFile("/bin/busybox"), mode: 0o755 },
    { name: "bin/sh", type: "symlink", linkname: "busybox", mode: 0o777 },
    { name: "bin/cat", type: "symlink", linkname: "busybox", mode: 0o777 },
  ];
}

/** Pushes busybox + the feature layers as an OCI image (the last layer zstd, others gzip). */
async function pushFeatureImage(registryUrl: string, repo: string): Promise<Pushed> {
  const tars = [buildTar(await busyboxLayer()), ...featureLayers().map((l) => buildTar(l))];
  const layers = tars.map((tar, i) => {
    const last = i === tars.length - 1;
    const bytes = last ? zstd(tar, 2) : gzip(tar);
    return {
      bytes,
      diffId: sha256Digest(tar),
      mediaType: last ? MT.ociLayerZstd : MT.ociLayerGzip,
      compression: last ? "zstd" as const : "gzip" as const,
    };
  });
  const config = encoder.encode(JSON.stringify({
    architecture: "amd64",
    os: "linux",
    created: "1970-01-01T00:00:00Z",
    config: { Cmd: ["/bin/sh"], Env: ["PATH=/bin"] },
    rootfs: { type: "layers", diff_ids: layers.map((l) => l.diffId) },
    history: layers.map(() => ({ created: "1970-01-01T00:00:00Z", created_by: "rootfs test" })),
  }));
  await pushBlob(registryUrl, repo, config);
  for (const l of layers) await pushBlob(registryUrl, repo, l.bytes);
  const manifest = encoder.encode(JSON.stringify({
    schemaVersion: 2,
    mediaType: MT.ociManifest,
    config: { mediaType: MT.ociConfig, digest: sha256Digest(config), size: config.byteLength },
    layers: layers.map((l) => ({
      mediaType: l.mediaType,
      digest: sha256Digest(l.bytes),
      size: l.bytes.byteLength,
    })),
  }));
  await pushManifest(registryUrl, repo, "v1", manifest, MT.ociManifest);
  return {
    reference: `${new URL(registryUrl).host}/${repo}:v1`,
    layers: layers.map((l) => ({ digest: sha256Digest(l.bytes), compression: l.compression })),
  };
}

/** Flattens into a file given as the sink (as pulls write it); writeRootfs closes it. */
async function flattenToFile(layers: RootfsLayer[], out: string): Promise<unknown> {
  const file = await Deno.open(out, { write: true, createNew: true });
  try {
    await writeRootfs(layers, file);
    return undefined;
  } catch (e) {
    return e;
  }
}

async function dockerOk(d: Dockerd, ...args: string[]): Promise<string> {
  const r = await d.docker(args);
  assert.equal(r.code, 0, `docker ${args.join(" ")} failed: ${r.stderr}`);
  return r.stdout.trim();
}

Deno.test("rootfs: flattened layers equal docker export of a container", async () => {
  const root = await Deno.makeTempDir({ prefix: "imgpull-rootfs-it-" });
  const closers: (() => Promise<void>)[] = [];
  try {
    const dockerdPromise = startDockerd();
    dockerdPromise.then((d) => closers.push(() => d.close()), () => {});
    const registry = await startRegistry({ mode: "http", storageDir: join(root, "storage") });
    closers.push(() => registry.close());
    const image = await pushFeatureImage(registry.url, "rootfs/features");
    const dockerd = await dockerdPromise;

    const home = join(root, "home");
    const cache = join(root, "cache");
    await Deno.mkdir(home);
    const archive = join(root, "image.tar");
    const pulled = await imgpull(
      [image.reference, "--platform", "linux/amd64", "--cache-dir", cache, "-o", archive],
      { cwd: root, env: { HOME: home } },
    );
    assert.equal(pulled.code, 0, `imgpull failed:\n${pulled.stderr}`);

    await dockerOk(dockerd, "load", "-i", archive);
    const container = await dockerOk(dockerd, "create", image.reference);
    const exported = join(root, "export.tar");
    await dockerOk(dockerd, "export", "-o", exported, container);

    // The flattener on the blobs as the cache holds them.
    const layers: RootfsLayer[] = image.layers.map((l) => ({
      path: join(cache, "blobs", "sha256", l.digest.slice("sha256:".length)),
      compression: l.compression,
      label: l.digest,
    }));
    for (const l of layers) assert.ok((await Deno.stat(l.path)).isFile, `${l.path} not cached`);
    const ours = join(root, "rootfs.tar");
    const error = await flattenToFile(layers, ours);
    assert.ifError(error);

    await extractTar(exported, join(root, "x-docker"));
    await extractTar(ours, join(root, "x-ours"));
    const expected = await describeTree(join(root, "x-docker"));
    const actual = await describeTree(join(root, "x-ours"));
    assert.ok(
      expected.has("data/link-to-lower") && expected.has("devices/null"),
      "export incomplete",
    );
    const differences = diffTrees(expected, actual);
    assert.deepEqual(differences, [], `\n${differences.join("\n")}`);
    assert.ok(actual.size > 40, `only ${actual.size} paths compared`);
  } finally {
    for (const c of closers.reverse()) await c().catch((e) => console.error("cleanup:", e));
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("rootfs: hostile layers — GNU tar extraction stays inside; attacks write nothing", async () => {
  const root = await Deno.makeTempDir({ prefix: "imgpull-rootfs-hostile-" });
  try {
    const outside = join(root, "outside");
    await Deno.mkdir(outside);
    const write = async (name: string, items: TarItem[] | Uint8Array) => {
      const path = join(root, name);
      await Deno.writeFile(path, gzip(Array.isArray(items) ? buildTar(items) : items));
      return { path, compression: "gzip" as const, label: name };
    };

    // Legal but tricky: everything must land below target/.
    const tricky = [
      await write("t1", [
        { name: "/abs/file", content: "abs" },
        { name: "out", type: "symlink", linkname: outside },
        { name: "up", type: "symlink", linkname: "../../../../../.." },
        { name: "victim", type: "symlink", linkname: join(outside, "victim") },
      ]),
      await write("t2", [
        // A file replaces the symlink: extracting it must not write through the old link.
        { name: "victim", content: "inside" },
        { name: "hl", type: "link", linkname: "/abs/file" },
      ]),
    ];
    const out = join(root, "tricky.tar");
    assert.ifError(await flattenToFile(tricky, out));
    const target = join(root, "target");
    await extractTar(out, target);
    assert.deepEqual([...Deno.readDirSync(outside)], [], "something landed outside");
    const facts = await describeTree(target);
    assert.deepEqual([...facts.keys()].sort(), ["abs", "abs/file", "hl", "out", "up", "victim"]);
    assert.equal(facts.get("victim")!.type, "file");
    assert.equal(facts.get("out")!.target, outside);
    assert.equal(facts.get("hl")!.links, "abs/file hl");

    // Attacks: refused with exit 8 before a byte is written.
    for (const [i, attack] of attackLayers().entries()) {
      const layers = [];
      for (const [j, l] of attack.layers.entries()) layers.push(await write(`a${i}-${j}`, l));
      const output = join(root, `attack${i}.tar`);
      const error = await flattenToFile(layers, output);
      assert.ok(error instanceof InvalidContentError, `${attack.id}: not refused (${error})`);
      assert.equal(error.exitCode, ExitCode.invalidContent);
      assert.equal((await Deno.stat(output)).size, 0, `${attack.id}: bytes written`);
    }
    assert.deepEqual([...Deno.readDirSync(outside)], []);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
