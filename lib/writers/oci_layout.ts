/**
 * The OCI image layout (image-spec `image-layout.md`), as a directory (`oci-dir`) or a tar of
 * it (`oci-archive`):
 *
 * ```
 * oci-layout                     {"imageLayoutVersion":"1.0.0"}
 * blobs/<alg>/<hex>              every index, manifest, config and layer, byte for byte
 * index.json                     one entry per image: its index (several platforms) or manifest
 * ```
 *
 * Blobs are exactly what the registry sent, so digests, the index digest and signatures that
 * refer to them stay valid. Each `index.json` entry carries `org.opencontainers.image.ref.name`
 * (the tag, as skopeo and umoci look it up) and `io.containerd.image.name` (the full name, as
 * containerd and Docker 25 write it).
 *
 * @example
 * ```ts
 * const entries = ociLayoutEntries([{ descriptor, fullName: "docker.io/library/alpine:3", tag: "3" }], {
 *   documents: new Map([[descriptor.digest, manifestBytes]]),
 *   blobs: new Map([[configDigest, configDescriptor]]),
 * });
 * ```
 * @module
 */
import { parseDigest } from "../digest.ts";
import type { Descriptor } from "../manifest.ts";
import type { AssemblyEntry } from "./assembly.ts";
import { blobName } from "./docker_archive.ts";

/** One image in the layout. */
export interface OciLayoutImage {
  /** What index.json lists for it: its index or its manifest (with `platform` if known). */
  descriptor: Descriptor;
  /** Full name with tag, e.g. `docker.io/library/nginx:latest`. */
  fullName: string;
  /** The tag alone (`org.opencontainers.image.ref.name`). */
  tag: string;
}

/** The content of a layout: documents known now, and blobs that come later. */
export interface OciLayoutContent {
  /** Indexes, manifests and configs, byte for byte, by digest. */
  documents: Map<string, Uint8Array>;
  /** Layers (and any blob not in `documents`), by digest. */
  blobs: Map<string, Descriptor>;
}

/** The `index.json` of a layout holding `images`. */
export function ociIndexDocument(images: readonly OciLayoutImage[]): Uint8Array {
  const manifests = images.map((image) => {
    const d: Record<string, unknown> = {
      mediaType: image.descriptor.mediaType,
      digest: image.descriptor.digest,
      size: image.descriptor.size,
    };
    if (image.descriptor.platform) d.platform = image.descriptor.platform;
    d.annotations = {
      "io.containerd.image.name": image.fullName,
      "org.opencontainers.image.ref.name": image.tag,
    };
    return d;
  });
  return new TextEncoder().encode(JSON.stringify({
    schemaVersion: 2,
    mediaType: "application/vnd.oci.image.index.v1+json",
    manifests,
  }));
}

/** The entries of an OCI layout (the same for the directory and the tar). */
export function ociLayoutEntries(
  images: readonly OciLayoutImage[],
  content: OciLayoutContent,
): AssemblyEntry[] {
  const encoder = new TextEncoder();
  const layoutFile = encoder.encode(JSON.stringify({ imageLayoutVersion: "1.0.0" }));
  const entries: AssemblyEntry[] = [
    { name: "oci-layout", type: "file", size: layoutFile.byteLength, bytes: layoutFile },
    { name: "blobs/", type: "directory", size: 0 },
  ];
  const digests = [...content.documents.keys(), ...content.blobs.keys()];
  const algorithms = [...new Set(digests.map((d) => parseDigest(d).algorithm))].sort();
  for (const algorithm of algorithms) {
    entries.push({ name: `blobs/${algorithm}/`, type: "directory", size: 0 });
  }
  for (const [digest, bytes] of content.documents) {
    entries.push({ name: blobName(digest), type: "file", size: bytes.byteLength, bytes });
  }
  for (const [digest, descriptor] of content.blobs) {
    if (content.documents.has(digest)) continue;
    entries.push({ name: blobName(digest), type: "file", size: descriptor.size, digest });
  }
  const index = ociIndexDocument(images);
  entries.push({ name: "index.json", type: "file", size: index.byteLength, bytes: index });
  return entries;
}
