/**
 * `podman load` in a throw-away store (vfs, cgroupfs, file events: works as root without
 * systemd), isolated from the host's /var/lib/containers and storage.conf.
 * @module
 */
import { join } from "node:path";
import { type CommandResult, run } from "./process.ts";

/** What {@link podmanLoad} saw. */
export interface PodmanLoadResult extends CommandResult {
  /** `repository:tag` of every image in the store after the load (`<none>:<none>` if untagged). */
  images: string[];
  /** Full image IDs, in the same order as `images`. */
  ids: string[];
  /** `Architecture` of each image (same order), from `podman image inspect`. */
  architectures: string[];
  /** `Os` of each image (same order). */
  oses: string[];
}

/** A podman store of its own: the global flags and environment that point podman at it. */
export interface PodmanStore {
  args: string[];
  env: Record<string, string>;
}

/**
 * Prepares a throw-away podman store under `dir` (vfs, cgroupfs, file events), isolated from the
 * host's /var/lib/containers and storage.conf. podman refuses a runroot longer than 50
 * characters: give a short `runroot` when `dir` is deep.
 */
export async function podmanStore(
  dir: string,
  runroot = join(dir, "runroot"),
): Promise<PodmanStore> {
  const storageConf = join(dir, "storage.conf");
  await Deno.writeTextFile(
    storageConf,
    `[storage]\ndriver = "vfs"\ngraphroot = "${dir}/root"\nrunroot = "${runroot}"\n`,
  );
  await Deno.mkdir(join(dir, "tmp"), { recursive: true });
  return {
    args: [
      "--root",
      join(dir, "root"),
      "--runroot",
      runroot,
      "--tmpdir",
      join(dir, "libpod-tmp"),
      // Otherwise the network backend takes a lock file in /etc/containers/networks.
      "--network-config-dir",
      join(dir, "networks"),
      "--volumepath",
      join(dir, "volumes"),
      "--storage-driver",
      "vfs",
      "--cgroup-manager",
      "cgroupfs",
      "--events-backend",
      "file",
    ],
    // containers.conf can set a different events/cgroup backend; the flags win anyway, but the
    // variables keep host storage.conf options (e.g. additional image stores) out.
    env: { CONTAINERS_STORAGE_CONF: storageConf, TMPDIR: join(dir, "tmp") },
  };
}

/**
 * Loads `archivePath` (docker-archive, OCI archive or OCI dir) into a fresh temporary podman
 * store, lists and inspects what got loaded, and deletes the store. Never throws on a failed
 * load: `code`/`stderr` are those of `podman load` so tests can assert either outcome.
 */
export async function podmanLoad(archivePath: string): Promise<PodmanLoadResult> {
  const dir = await Deno.makeTempDir({ prefix: "imgpull-podman-" });
  try {
    const store = await podmanStore(dir);
    const podman = (args: string[]) => run("podman", [...store.args, ...args], { env: store.env });

    const load = await podman(["load", "--input", archivePath]);
    const result: PodmanLoadResult = { ...load, images: [], ids: [], architectures: [], oses: [] };
    if (load.code !== 0) return result;

    const listed = await podman([
      "images",
      "--no-trunc",
      "--format",
      "{{.ID}} {{.Repository}}:{{.Tag}}",
    ]);
    if (listed.code !== 0) throw new Error(`podman images failed: ${listed.stderr}`);
    for (const line of listed.stdout.split("\n").filter(Boolean)) {
      const [id, name] = line.split(" ");
      const inspected = await podman([
        "image",
        "inspect",
        "--format",
        "{{.Architecture}} {{.Os}}",
        id,
      ]);
      if (inspected.code !== 0) throw new Error(`podman image inspect failed: ${inspected.stderr}`);
      const [arch, os] = inspected.stdout.trim().split(" ");
      result.ids.push(id.replace(/^sha256:/, ""));
      result.images.push(name);
      result.architectures.push(arch);
      result.oses.push(os);
    }
    return result;
  } finally {
    // vfs layers are plain directories (no mounts): a recursive remove suffices.
    await Deno.remove(dir, { recursive: true });
  }
}

/** Loads an archive with {@link podmanLoad} and returns the first image's architecture. */
export async function podmanInspectArch(archivePath: string): Promise<string> {
  const result = await podmanLoad(archivePath);
  if (result.code !== 0 || result.architectures.length === 0) {
    throw new Error(`podman load of ${archivePath} failed (${result.code}): ${result.stderr}`);
  }
  return result.architectures[0];
}
