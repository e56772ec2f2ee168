/**
 * Images for the output-format tests, pushed to a real Distribution: an image from hand-made
 * layer tars (the rootfs feature image over busybox-static, tricky and hostile layers), built
 * with the layer builders of ../layers.ts.
 * @module
 */
import { MT } from "../fixtures.ts";
import { buildTar, featureLayers, gzip, type TarItem, zstd } from "../layers.ts";
import { pushBlob, pushManifest, sha256Digest } from "../push.ts";

const encoder = new TextEncoder();

/** A pushed single-platform OCI image. */
export interface PushedLayers {
  /** `HOST/repo:tag`. */
  reference: string;
  manifestDigest: string;
  configDigest: string;
  layerDigests: string[];
}

/** busybox-static as a root filesystem layer (`/bin/busybox`, `/bin/sh`, `/bin/cat`). */
export async function busyboxItems(): Promise<TarItem[]> {
  return [
    { name: "bin", type: "dir", mode: 0o755 },
    { name: "bin/busybox", content: await Deno.readFile("/bin/busybox"), mode: 0o755 },
    { name: "bin/sh", type: "symlink", linkname: "busybox", mode: 0o777 },
    { name: "bin/cat", type: "symlink", linkname: "busybox", mode: 0o777 },
  ];
}

/**
 * Pushes an OCI image (linux/amd64) whose layers are `layers` (bottom first: items or raw tar
 * bytes), gzip-compressed, the last one zstd with several frames when `zstdLast`. The config's
 * diff_ids are the digests of the uncompressed tars, as a real image has them.
 */
export async function pushLayerImage(
  registryUrl: string,
  repo: string,
  tag: string,
  layers: (TarItem[] | Uint8Array)[],
  opts: { zstdLast?: boolean } = {},
): Promise<PushedLayers> {
  const built = layers.map((l, i) => {
    const tar = l instanceof Uint8Array ? l : buildTar(l);
    const useZstd = opts.zstdLast === true && i === layers.length - 1;
    const bytes = useZstd ? zstd(tar, 2) : gzip(tar);
    return {
      bytes,
      diffId: sha256Digest(tar),
      mediaType: useZstd ? MT.ociLayerZstd : MT.ociLayerGzip,
    };
  });
  const config = encoder.encode(JSON.stringify({
    architecture: "amd64",
    os: "linux",
    created: "1970-01-01T00:00:00Z",
    config: { Cmd: ["/bin/sh"], Env: ["PATH=/bin"] },
    rootfs: { type: "layers", diff_ids: built.map((l) => l.diffId) },
    history: built.map(() => ({ created: "1970-01-01T00:00:00Z", created_by: "formats test" })),
  }));
  await pushBlob(registryUrl, repo, config);
  for (const l of built) await pushBlob(registryUrl, repo, l.bytes);
  const manifest = encoder.encode(JSON.stringify({
    schemaVersion: 2,
    mediaType: MT.ociManifest,
    config: { mediaType: MT.ociConfig, digest: sha256Digest(config), size: config.byteLength },
    layers: built.map((l) => ({
      mediaType: l.mediaType,
      digest: sha256Digest(l.bytes),
      size: l.bytes.byteLength,
    })),
  }));
  const manifestDigest = await pushManifest(registryUrl, repo, tag, manifest, MT.ociManifest);
  return {
    reference: `${new URL(registryUrl).host}/${repo}:${tag}`,
    manifestDigest,
    configDigest: sha256Digest(config),
    layerDigests: built.map((l) => sha256Digest(l.bytes)),
  };
}

/**
 * The rootfs feature image: busybox, then the three feature layers of ../layers.ts (whiteouts,
 * an opaque directory, replacements, hard links whose target is replaced and removed, symlinks,
 * setuid/sticky modes, owners, long and UTF-8 names, devices, a FIFO, xattrs); the last layer
 * zstd with two frames and a skippable frame.
 */
export async function pushFeatureImage(registryUrl: string, repo: string): Promise<PushedLayers> {
  return await pushLayerImage(registryUrl, repo, "v1", [
    await busyboxItems(),
    ...featureLayers(),
  ], { zstdLast: true });
}

/**
 * Legal but tricky layers: an absolute name, symlinks pointing outside the root (`outside`, an
 * absolute directory of the test, and `../../..`), then a file replacing a symlink that pointed
 * outside (an extractor must not write through the old link) and a hard link named absolutely.
 * Every extraction of the flattened result must stay inside its target.
 */
export function trickyLayers(outside: string): TarItem[][] {
  return [
    [
      { name: "/abs/file", content: "abs\n" },
      { name: "out", type: "symlink", linkname: outside },
      { name: "up", type: "symlink", linkname: "../../../../../.." },
      { name: "victim", type: "symlink", linkname: `${outside}/victim` },
      { name: "dir", type: "dir" },
      { name: "dir/escape", type: "symlink", linkname: "../../../../../../tmp" },
    ],
    [
      { name: "victim", content: "inside\n" },
      { name: "hl", type: "link", linkname: "/abs/file" },
      { name: "./dir/./inner", content: "dot segments\n" },
    ],
  ];
}
