/**
 * A tiny but real image for the mirror tests: one gzip layer holding `/marker` (a valid tar, so
 * `podman load` accepts it and checks its diff_id), a Docker schema2 manifest, pushed to any
 * registry in any repository. The marker text differs per copy, so which endpoint served a pull
 * shows in the digests.
 * @module
 */
import { buildTar, gzip } from "../layers.ts";
import { type ExpectedArchive, jsonBytes, MT, sha256 } from "../hostile_image.ts";
import { pushBlob, pushManifest, type PushOptions } from "../push.ts";

/** An image built by {@link markerImage}. */
export interface MarkerImage {
  marker: string;
  config: Uint8Array<ArrayBuffer>;
  layer: Uint8Array<ArrayBuffer>;
  manifest: Uint8Array<ArrayBuffer>;
  /** Manifest digest. */
  digest: string;
  /** What the archive must hold (config and layer digests). */
  expected: ExpectedArchive;
}

/** Builds the image whose `/marker` says `marker`. */
export function markerImage(marker: string): MarkerImage {
  const tar = buildTar([{ name: "marker", content: `${marker}\n`, mode: 0o644, mtime: 0 }]);
  const layer = gzip(tar);
  const config = jsonBytes({
    architecture: "amd64",
    os: "linux",
    config: { Cmd: ["/bin/cat", "/marker"] },
    rootfs: { type: "layers", diff_ids: [sha256(tar)] },
    history: [{ created_by: `marker ${marker}` }],
  });
  const manifest = jsonBytes({
    schemaVersion: 2,
    mediaType: MT.dockerManifest,
    config: { mediaType: MT.dockerConfig, digest: sha256(config), size: config.byteLength },
    layers: [{ mediaType: MT.dockerLayerGzip, digest: sha256(layer), size: layer.byteLength }],
  });
  return {
    marker,
    config,
    layer,
    manifest,
    digest: sha256(manifest),
    expected: { configDigest: sha256(config), layerDigests: [sha256(layer)] },
  };
}

/** Pushes `image` to `registryUrl` as `repo:tag` (blobs first); returns the manifest digest. */
export async function pushMarkerImage(
  registryUrl: string,
  repo: string,
  tag: string,
  image: MarkerImage,
  options: PushOptions = {},
): Promise<string> {
  await pushBlob(registryUrl, repo, image.config, options);
  await pushBlob(registryUrl, repo, image.layer, options);
  return await pushManifest(registryUrl, repo, tag, image.manifest, MT.dockerManifest, options);
}
