/**
 * Media types of OCI and Docker manifests, configs and layers.
 * @module
 */

export const MediaType = {
  ociIndex: "application/vnd.oci.image.index.v1+json",
  ociManifest: "application/vnd.oci.image.manifest.v1+json",
  ociConfig: "application/vnd.oci.image.config.v1+json",
  ociLayer: "application/vnd.oci.image.layer.v1.tar",
  ociLayerGzip: "application/vnd.oci.image.layer.v1.tar+gzip",
  ociLayerZstd: "application/vnd.oci.image.layer.v1.tar+zstd",
  ociLayerNondistributable: "application/vnd.oci.image.layer.nondistributable.v1.tar",
  ociLayerNondistributableGzip: "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
  ociLayerNondistributableZstd: "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
  dockerManifestList: "application/vnd.docker.distribution.manifest.list.v2+json",
  dockerManifest: "application/vnd.docker.distribution.manifest.v2+json",
  dockerConfig: "application/vnd.docker.container.image.v1+json",
  dockerLayerGzip: "application/vnd.docker.image.rootfs.diff.tar.gzip",
  dockerLayerForeignGzip: "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
  dockerSchema1: "application/vnd.docker.distribution.manifest.v1+json",
  dockerSchema1Signed: "application/vnd.docker.distribution.manifest.v1+prettyjws",
} as const;

/** Every manifest type we can read, in the order we prefer them. */
export const MANIFEST_ACCEPT: readonly string[] = [
  MediaType.ociIndex,
  MediaType.dockerManifestList,
  MediaType.ociManifest,
  MediaType.dockerManifest,
  MediaType.dockerSchema1Signed,
  MediaType.dockerSchema1,
];

/** How a layer blob is compressed, judged by its media type. */
export type LayerCompression = "gzip" | "zstd" | "none";

const LAYER_COMPRESSION: Record<string, LayerCompression> = {
  [MediaType.ociLayer]: "none",
  [MediaType.ociLayerGzip]: "gzip",
  [MediaType.ociLayerZstd]: "zstd",
  [MediaType.ociLayerNondistributable]: "none",
  [MediaType.ociLayerNondistributableGzip]: "gzip",
  [MediaType.ociLayerNondistributableZstd]: "zstd",
  [MediaType.dockerLayerGzip]: "gzip",
  [MediaType.dockerLayerForeignGzip]: "gzip",
};

/** The compression of a layer media type, or undefined when it is not a layer type we know. */
export function layerCompression(mediaType: string): LayerCompression | undefined {
  return LAYER_COMPRESSION[mediaType];
}

/** Layers that registries may refuse to serve and that `docker save` leaves out of archives. */
export function isForeignLayer(mediaType: string): boolean {
  return mediaType === MediaType.dockerLayerForeignGzip ||
    mediaType.startsWith("application/vnd.oci.image.layer.nondistributable.");
}

/** True for an image index or Docker manifest list. */
export function isIndexType(mediaType: string | undefined): boolean {
  return mediaType === MediaType.ociIndex || mediaType === MediaType.dockerManifestList;
}

/** Config and layer media types of well-known artifacts, with the names users know them by. */
const ARTIFACT_NAMES: Record<string, string> = {
  "application/vnd.cncf.helm.config.v1+json": "Helm chart",
  "application/vnd.cncf.helm.chart.content.v1.tar+gzip": "Helm chart",
  "application/vnd.dev.cosign.simplesigning.v1+json": "cosign signature",
  "application/vnd.dev.cosign.artifact.sig.v1+json": "cosign signature",
  "application/vnd.dev.sigstore.bundle.v0.3+json": "sigstore bundle",
  "application/vnd.in-toto+json": "in-toto attestation",
  "application/vnd.cyclonedx+json": "CycloneDX SBOM",
  "application/spdx+json": "SPDX SBOM",
  "application/vnd.wasm.config.v0+json": "WebAssembly module",
  "application/vnd.oci.empty.v1+json": "OCI artifact",
};

/**
 * What kind of artifact a manifest describes, or undefined for a container image. Decided from
 * media types alone (the manifest's `artifactType`, its config's and its layers'), so that
 * artifacts are refused before their config is parsed or any layer fetched.
 *
 * @example
 * ```ts
 * artifactKind({ config: { mediaType: "application/vnd.cncf.helm.config.v1+json" }, layers: [] });
 * // "Helm chart"
 * artifactKind({ config: { mediaType: MediaType.ociConfig }, layers: [] }); // undefined
 * ```
 */
export function artifactKind(manifest: {
  artifactType?: string;
  config: { mediaType: string };
  layers: readonly { mediaType: string }[];
}): string | undefined {
  const configType = manifest.config.mediaType;
  const named = (type: string | undefined) => type ? ARTIFACT_NAMES[type] : undefined;
  const layerName = manifest.layers.map((l) => named(l.mediaType)).find((n) => n);
  if (manifest.artifactType) {
    const name = named(manifest.artifactType) ?? layerName ?? "OCI artifact";
    return `${name}, artifactType ${manifest.artifactType}`;
  }
  const imageConfig = configType === "" || configType === MediaType.ociConfig ||
    configType === MediaType.dockerConfig;
  if (imageConfig) return layerName;
  return named(configType) ?? layerName ?? `artifact with config ${configType}`;
}
