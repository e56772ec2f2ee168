/**
 * The real consumers of imgpull's output formats, each as one small driver that returns what the
 * tool said: skopeo (inspect, copy back into a registry), umoci (ls, stat, raw unpack), containerd
 * (`ctr images import`), and the registry's own view of a tag (its digest and bytes).
 * @module
 */
import { join } from "node:path";
import { type CommandResult, run } from "../process.ts";
import type { CorpusContainerd } from "../corpus/services.ts";
import { INDEX_TYPES, MANIFEST_TYPES, sha256 } from "./layout.ts";

/** One line of a failed command, for assertion messages. */
export function said(r: CommandResult): string {
  return `exit ${r.code}: ${(r.stderr || r.stdout).trim().split("\n").slice(-3).join(" | ")}`;
}

/** `skopeo inspect [--raw] TRANSPORT:PATH` (no signature policy: local files only). */
export function skopeoInspect(source: string, raw = false): Promise<CommandResult> {
  return run("skopeo", ["--insecure-policy", "inspect", ...(raw ? ["--raw"] : []), source]);
}

/**
 * `skopeo copy SOURCE docker://HOST/REPO:TAG` into the tests' plain-HTTP registry, with
 * `--preserve-digests` (skopeo fails instead of silently converting) and `--all` for indexes.
 */
export function skopeoCopyToRegistry(
  source: string,
  destination: string,
  opts: { all?: boolean } = {},
): Promise<CommandResult> {
  return run("skopeo", [
    "--insecure-policy",
    "copy",
    "--quiet",
    "--dest-tls-verify=false",
    "--preserve-digests",
    ...(opts.all ? ["--all"] : []),
    source,
    `docker://${destination}`,
  ]);
}

/** What the registry serves for `repo:reference`: digest (Docker-Content-Digest), bytes, type. */
export async function registryManifest(
  registryUrl: string,
  repo: string,
  reference: string,
): Promise<{ digest: string; bytes: Uint8Array; mediaType: string }> {
  const res = await fetch(`${registryUrl}/v2/${repo}/manifests/${reference}`, {
    headers: { Accept: [...INDEX_TYPES, ...MANIFEST_TYPES].join(", ") },
  });
  const bytes = new Uint8Array(await res.arrayBuffer());
  if (res.status !== 200) {
    throw new Error(
      `GET ${repo}:${reference}: HTTP ${res.status} ${new TextDecoder().decode(bytes)}`,
    );
  }
  const digest = res.headers.get("Docker-Content-Digest") ?? "";
  if (digest !== sha256(bytes)) throw new Error(`${repo}:${reference}: digest header ${digest}`);
  return { digest, bytes, mediaType: res.headers.get("Content-Type") ?? "" };
}

/** `umoci ls --layout DIR`: the tags umoci finds (one per line). */
export async function umociLs(dir: string): Promise<CommandResult & { tags: string[] }> {
  const r = await run("umoci", ["ls", "--layout", dir]);
  return { ...r, tags: r.stdout.split("\n").map((l) => l.trim()).filter(Boolean) };
}

/** `umoci stat --json --image DIR:TAG`: the history and the manifest umoci resolved. */
export async function umociStat(
  dir: string,
  tag: string,
): Promise<CommandResult & { json?: Record<string, unknown> }> {
  const r = await run("umoci", ["stat", "--json", "--image", `${dir}:${tag}`]);
  let json: Record<string, unknown> | undefined;
  try {
    json = r.code === 0 ? JSON.parse(r.stdout) : undefined;
  } catch { /* left undefined: the caller reports stdout */ }
  return { ...r, json };
}

/** `umoci raw unpack --image DIR:TAG TARGET` (the root filesystem only, no runtime bundle). */
export function umociRawUnpack(dir: string, tag: string, target: string): Promise<CommandResult> {
  return run("umoci", ["raw", "unpack", "--image", `${dir}:${tag}`, target]);
}

/**
 * Wraps a plain tar (a root filesystem) as a one-layer OCI image in a new layout at `dir`, tag
 * `rootfs`, so `umoci raw unpack` can extract it as a user importing our output would.
 */
export async function layoutOfRootfs(tar: Uint8Array, dir: string): Promise<void> {
  const encoder = new TextEncoder();
  const blobs = join(dir, "blobs", "sha256");
  await Deno.mkdir(blobs, { recursive: true });
  const put = async (bytes: Uint8Array) => {
    const digest = sha256(bytes);
    await Deno.writeFile(join(blobs, digest.slice(7)), bytes);
    return { digest, size: bytes.byteLength };
  };
  const layer = await put(tar);
  const config = await put(encoder.encode(JSON.stringify({
    architecture: "amd64",
    os: "linux",
    rootfs: { type: "layers", diff_ids: [layer.digest] },
  })));
  const manifest = await put(encoder.encode(JSON.stringify({
    schemaVersion: 2,
    mediaType: "application/vnd.oci.image.manifest.v1+json",
    config: { mediaType: "application/vnd.oci.image.config.v1+json", ...config },
    layers: [{ mediaType: "application/vnd.oci.image.layer.v1.tar", ...layer }],
  })));
  await Deno.writeTextFile(join(dir, "oci-layout"), '{"imageLayoutVersion":"1.0.0"}');
  await Deno.writeTextFile(
    join(dir, "index.json"),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [{
        mediaType: "application/vnd.oci.image.manifest.v1+json",
        ...manifest,
        annotations: { "org.opencontainers.image.ref.name": "rootfs" },
      }],
    }),
  );
}

/** One image `ctr images ls` shows. */
export interface CtrImage {
  name: string;
  /** Digest of what the name points to (manifest or index). */
  digest: string;
  /** Platforms column, e.g. `linux/amd64,linux/arm64/v8`. */
  platforms: string[];
}

/**
 * `ctr images import` of an archive into a fresh namespace `ns` of the private containerd (native
 * snapshotter, so unpacking verifies every diff_id), then `ctr images ls`; the namespace's
 * images are removed afterwards.
 */
export async function ctrImport(
  containerd: CorpusContainerd,
  ns: string,
  archive: string,
  opts: { platform?: string; allPlatforms?: boolean } = {},
): Promise<{ import: CommandResult; images: CtrImage[] }> {
  const ctr = (args: string[]) => containerd.ctr(["--namespace", ns, ...args]);
  try {
    const imported = await ctr([
      "images",
      "import",
      "--snapshotter",
      "native",
      ...(opts.allPlatforms ? ["--all-platforms"] : ["--platform", opts.platform ?? "linux/amd64"]),
      archive,
    ]);
    const images: CtrImage[] = [];
    if (imported.code === 0) {
      const listed = await ctr(["images", "ls"]);
      // REF TYPE DIGEST SIZE (two words) PLATFORMS LABELS
      for (const line of listed.stdout.split("\n").slice(1).filter(Boolean)) {
        const cols = line.trim().split(/\s+/);
        images.push({ name: cols[0], digest: cols[2], platforms: (cols[5] ?? "").split(",") });
      }
    }
    return { import: imported, images };
  } finally {
    const names = await ctr(["images", "ls", "-q"]);
    const refs = names.stdout.split("\n").filter(Boolean);
    if (refs.length > 0) await ctr(["images", "rm", "--sync", ...refs]);
  }
}
