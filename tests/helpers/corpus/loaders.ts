/**
 * Loader drivers of the conformance corpus. Each proves one archive end to end and reports a
 * {@link Check} instead of throwing, so a table of outcomes can be printed:
 *
 * - docker: `docker load`, platform from `docker image inspect`, `docker run` of the marker when
 *   the image can run here, the root filesystem of `docker create` + `docker export`.
 * - podman: load, platform, the root filesystem of `podman create` + `podman export`, in a
 *   throw-away store per archive (vfs, cgroupfs); no `podman run` (see {@link provePodman}).
 * - ctr: `ctr images import` (unpacked with the native snapshotter, which checks every diff_id),
 *   the image listed with the expected platform, the unpacked snapshot's tree read from disk.
 *
 * The reference root filesystem is skopeo's `docker-archive:` copy of the same manifest,
 * flattened layer by layer with whiteouts.
 * @module
 */
import { join } from "node:path";
import { gunzipSync } from "node:zlib";
import type { Dockerd } from "../dockerd.ts";
import { podmanStore } from "../podman.ts";
import { type CommandResult, run } from "../process.ts";
import type { CorpusContainerd } from "./services.ts";
import { filter } from "./compress.ts";
import {
  diffListings,
  flattenLayers,
  type FsListing,
  listDirectory,
  listTar,
  readTar,
  type TarEntry,
} from "./tar.ts";

/** The outcome of one check: passed, or failed with the reason. */
export type Check = { ok: true } | { ok: false; error: string };

/** Loader names, in report order. */
export const LOADERS = ["docker", "podman", "ctr"] as const;
export type LoaderName = typeof LOADERS[number];

/** What a loader must see for one archive. */
export interface LoadExpectation {
  /** The archive's first RepoTag: the name the image is loaded under. */
  tag: string;
  /** `os/arch[/variant]` of the image. */
  platform: string;
  /** Run the marker command (only for images of this host's platform with a binary). */
  runnable: boolean;
  /** What `/marker` prints. */
  marker: string;
  /** The image's diff_ids (from the archive's config), for the containerd snapshot. */
  diffIds: string[];
  /** Reference root filesystem (from skopeo). */
  reference: FsListing;
}

function fail(error: string): Check {
  return { ok: false, error };
}

function oneLine(text: string, max = 600): string {
  const t = text.trim().replace(/\s*\n\s*/g, " | ");
  return t.length > max ? `${t.slice(0, max)}…` : t;
}

function failed(what: string, r: CommandResult): Check {
  return fail(`${what} exited ${r.code}: ${oneLine(r.stderr || r.stdout)}`);
}

function compareFs(
  loader: string,
  expected: FsListing,
  actual: FsListing,
  ignore?: (p: string) => boolean,
): Check {
  const diff = diffListings(expected, actual, ignore);
  if (diff.length === 0) return { ok: true };
  return fail(
    `${loader} root filesystem differs from skopeo's (${diff.length}): ${
      diff.slice(0, 6).join("; ")
    }`,
  );
}

/** Paths Docker's init layer adds to every container (and their parent dirs when missing). */
const DOCKER_INIT =
  /^(\.dockerenv|dev(\/.*)?|proc|sys|etc|etc\/(hostname|hosts|resolv\.conf|mtab))$/;

/** Platform string of an image as `inspect` shows it. */
const PLATFORM_FORMAT = "{{.Os}}/{{.Architecture}}{{if .Variant}}/{{.Variant}}{{end}}";

/** Proves an archive with the shared dockerd; removes what it loaded. */
export async function proveDocker(
  dockerd: Dockerd,
  archive: string,
  expect: LoadExpectation,
  workDir: string,
): Promise<Check> {
  const docker = (args: string[]) => dockerd.docker(args);
  let container: string | undefined;
  try {
    const load = await docker(["load", "-i", archive]);
    if (load.code !== 0) return failed("docker load", load);
    if (!load.stdout.includes(`Loaded image: ${expect.tag}`)) {
      return fail(`docker load did not load ${expect.tag}: ${oneLine(load.stdout)}`);
    }
    const inspect = await docker(["image", "inspect", "--format", PLATFORM_FORMAT, expect.tag]);
    if (inspect.code !== 0) return failed("docker image inspect", inspect);
    if (inspect.stdout.trim() !== expect.platform) {
      return fail(`docker sees platform ${inspect.stdout.trim()}, expected ${expect.platform}`);
    }
    if (expect.runnable) {
      const r = await docker(["run", "--rm", "--network", "none", expect.tag]);
      if (r.code !== 0) return failed("docker run", r);
      if (r.stdout.trim() !== expect.marker) {
        return fail(`docker run printed ${JSON.stringify(r.stdout.trim())}, not the marker`);
      }
    }
    const created = await docker(["create", "--network", "none", expect.tag]);
    if (created.code !== 0) return failed("docker create", created);
    container = created.stdout.trim();
    const out = join(workDir, "docker-export.tar");
    const exported = await docker(["export", "-o", out, container]);
    if (exported.code !== 0) return failed("docker export", exported);
    const listing = listTar(await Deno.readFile(out));
    await Deno.remove(out);
    return compareFs(
      "docker",
      expect.reference,
      listing,
      (p) => DOCKER_INIT.test(p),
    );
  } finally {
    if (container) await docker(["rm", "-f", container]);
    await docker(["rmi", "-f", expect.tag]);
  }
}

/** Proves an archive with podman in a store of its own, deleted afterwards. */
export async function provePodman(archive: string, expect: LoadExpectation): Promise<Check> {
  // Short path: podman refuses a runroot longer than 50 characters.
  const dir = await Deno.makeTempDir({ prefix: "cp-pm-" });
  const store = await podmanStore(dir);
  const podman = (args: string[]) => run("podman", [...store.args, ...args], { env: store.env });
  try {
    const load = await podman(["load", "--input", archive]);
    if (load.code !== 0) return failed("podman load", load);
    const names = await podman(["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    const loaded = names.stdout.trim().split("\n");
    if (!loaded.includes(expect.tag) && !loaded.includes(`localhost/${expect.tag}`)) {
      return fail(`podman loaded ${loaded.join(", ")}, not ${expect.tag}`);
    }
    // podman 4.3 has no .Variant in its inspect template: read the JSON.
    const inspect = await podman(["image", "inspect", expect.tag]);
    if (inspect.code !== 0) return failed("podman image inspect", inspect);
    const [img] = JSON.parse(inspect.stdout);
    const seen = [img.Os, img.Architecture, img.Variant].filter(Boolean).join("/");
    const wanted = img.Variant === undefined
      ? expect.platform.split("/").slice(0, 2).join("/")
      : expect.platform;
    if (seen !== wanted) {
      return fail(`podman sees platform ${seen}, expected ${expect.platform}`);
    }
    // No `podman run`: podman 4.3 always puts RLIMIT_NOFILE/RLIMIT_NPROC into the container
    // spec, and crun/runc may not set them in this sandbox ("setrlimit: Operation not
    // permitted", even with --ulimit host). The exported root filesystem is compared instead.
    const created = await podman(["create", "--network", "none", expect.tag]);
    if (created.code !== 0) return failed("podman create", created);
    const out = join(dir, "export.tar");
    const exported = await podman(["export", "-o", out, created.stdout.trim()]);
    if (exported.code !== 0) return failed("podman export", exported);
    const listing = listTar(await Deno.readFile(out));
    await podman(["rm", "-f", created.stdout.trim()]);
    return compareFs("podman", expect.reference, listing, (p) => DOCKER_INIT.test(p));
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(async () => {
      await run("rm", ["-rf", dir]);
    });
  }
}

/** containerd normalises familiar names (`busybox` → `docker.io/library/busybox:latest`). */
function containerdName(tag: string): string {
  const first = tag.split("/")[0];
  const hasHost = tag.includes("/") && (/[.:]/.test(first) || first === "localhost");
  const full = hasHost ? tag : `docker.io/${tag.includes("/") ? tag : `library/${tag}`}`;
  return full;
}

/** Proves an archive with `ctr images import` into namespace `ns` of the private containerd. */
export async function proveCtr(
  containerd: CorpusContainerd,
  ns: string,
  archive: string,
  expect: LoadExpectation,
  workDir: string,
): Promise<Check> {
  const ctr = (args: string[]) => containerd.ctr(["--namespace", ns, ...args]);
  const target = join(workDir, "ctr-rootfs");
  let mounted = false;
  try {
    const imported = await ctr([
      "images",
      "import",
      "--platform",
      expect.platform,
      "--snapshotter",
      "native",
      archive,
    ]);
    if (imported.code !== 0) return failed("ctr images import", imported);
    const listed = await ctr(["images", "ls"]);
    if (listed.code !== 0) return failed("ctr images ls", listed);
    const name = containerdName(expect.tag);
    const line = listed.stdout.split("\n").find((l) => l.split(/\s+/)[0] === name);
    if (!line) return fail(`ctr lists no ${name}: ${oneLine(listed.stdout)}`);
    // REF TYPE DIGEST SIZE(two words) PLATFORMS LABELS
    const platforms = line.trim().split(/\s+/)[5] ?? "";
    // containerd prints arm64/v8 as linux/arm64 (its normal form): the same platform.
    const normal = (p: string) => p.replace(/^linux\/arm64\/v8$/, "linux/arm64");
    if (!platforms.split(",").map(normal).includes(normal(expect.platform))) {
      return fail(`ctr lists ${name} with platform ${platforms}, expected ${expect.platform}`);
    }
    let listing: FsListing = new Map();
    if (expect.diffIds.length > 0) {
      // `images mount` holds a lease on its snapshot (a bare `snapshots view` may be collected);
      // with the native snapshotter it is a bind mount of the unpacked tree.
      await Deno.mkdir(target);
      const mount = await ctr([
        "images",
        "mount",
        "--snapshotter",
        "native",
        "--platform",
        expect.platform,
        name,
        target,
      ]);
      if (mount.code !== 0) return failed("ctr images mount (was the image unpacked?)", mount);
      mounted = true;
      listing = await listDirectory(target);
    }
    return compareFs("ctr", expect.reference, listing);
  } finally {
    if (mounted) await ctr(["images", "unmount", "--rm", target]);
    const names = await ctr(["images", "ls", "-q"]);
    const refs = names.stdout.split("\n").filter(Boolean);
    if (refs.length > 0) await ctr(["images", "rm", "--sync", ...refs]);
  }
}

/** What an archive (docker-archive) holds, read back with the corpus tar reader. */
export interface ArchiveInfo {
  repoTags: string[];
  config: Record<string, unknown>;
  /** `os/arch[/variant]` from the config. */
  platform: string;
  diffIds: string[];
  /** Layer blobs as stored (maybe compressed), in order. */
  layers: Uint8Array[];
}

/** Reads manifest.json, the config and the layers of a docker-archive. */
export async function readArchive(path: string): Promise<ArchiveInfo> {
  const bytes = await Deno.readFile(path);
  const entries = new Map<string, TarEntry>();
  for (const e of readTar(bytes)) entries.set(e.path, e);
  const member = (name: string) => {
    const e = entries.get(name);
    if (!e) throw new Error(`${path} has no ${name}`);
    return bytes.subarray(e.dataOffset, e.dataOffset + e.size);
  };
  const text = (name: string) => new TextDecoder().decode(member(name));
  const manifest = JSON.parse(text("manifest.json"));
  if (!Array.isArray(manifest) || manifest.length !== 1) {
    throw new Error(`${path}: manifest.json should describe one image`);
  }
  const config = JSON.parse(text(manifest[0].Config));
  const platform = [config.os, config.architecture, config.variant].filter(Boolean).join("/");
  return {
    repoTags: manifest[0].RepoTags ?? [],
    config,
    platform,
    diffIds: config.rootfs?.diff_ids ?? [],
    layers: (manifest[0].Layers as string[]).map(member),
  };
}

/** Decompresses a layer blob by its magic number (gzip, zstd, or plain tar). */
export async function layerTar(blob: Uint8Array): Promise<Uint8Array> {
  if (blob[0] === 0x1f && blob[1] === 0x8b) return new Uint8Array(gunzipSync(blob));
  if (blob[0] === 0x28 && blob[1] === 0xb5 && blob[2] === 0x2f && blob[3] === 0xfd) {
    return await filter("zstd", ["-dcq"], blob);
  }
  return blob;
}

/**
 * The reference root filesystem of `source` (`HOST/repo@digest` or `:tag`): skopeo copies it into
 * an OCI layout (`--src-tls-verify=false`: the registry speaks plain HTTP), whose layers are
 * decompressed and flattened in order. An OCI layout rather than `docker-archive:`, which skopeo
 * refuses for zstd layers ("zstd compression is not supported for docker images").
 */
export async function skopeoReference(source: string, workDir: string): Promise<FsListing> {
  const out = join(workDir, "skopeo-oci");
  const r = await run("skopeo", [
    "--insecure-policy",
    "copy",
    "--quiet",
    "--src-tls-verify=false",
    `docker://${source}`,
    `oci:${out}`,
  ]);
  if (r.code !== 0) throw new Error(`skopeo copy ${source} exited ${r.code}: ${oneLine(r.stderr)}`);
  const blob = async (digest: string) => {
    try {
      return await Deno.readFile(join(out, "blobs", ...digest.split(":")));
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
      // skopeo leaves foreign (non-distributable) layers out of the layout: take the blob from
      // the registry, which has it too.
      const [, host, repo] = source.match(/^([^/]+)\/(.+?)[@:][^/]+$/) ?? [];
      const res = await fetch(`http://${host}/v2/${repo}/blobs/${digest}`);
      if (res.status !== 200) throw new Error(`reference blob ${digest}: HTTP ${res.status}`);
      return new Uint8Array(await res.arrayBuffer());
    }
  };
  const index = JSON.parse(await Deno.readTextFile(join(out, "index.json")));
  const manifest = JSON.parse(new TextDecoder().decode(await blob(index.manifests[0].digest)));
  const tars = [];
  for (const layer of manifest.layers ?? []) tars.push(await layerTar(await blob(layer.digest)));
  await Deno.remove(out, { recursive: true });
  return flattenLayers(tars);
}
