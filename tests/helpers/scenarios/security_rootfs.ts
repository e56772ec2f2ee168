/**
 * Security scenarios (the output formats of issue #8). Root filesystem: a registry serves layers built to escape
 * the image root (`..`, paths through a symlink an earlier entry or layer made, hard links out of
 * the root or through symlinks, whiteouts through symlinks, PAX path overrides) or to exhaust
 * the reader (huge PAX headers, endless names, bad sizes). `--format rootfs` must refuse every
 * one with exit 8 and write nothing: no output file, and nothing on stdout with `-o -`.
 * Integrity: a corrupt layer leaves no half-written OCI layout, archive or root filesystem.
 * @module
 */
import { attackLayers, buildTar, gzip, type TarItem } from "../layers.ts";
import {
  jsonBytes,
  manifestBlob,
  MT,
  putManifest,
  sha256,
  type TestImage,
} from "../hostile_image.ts";
import type { Scenario } from "../hostile_runner.ts";
import { corrupt, expect, fault } from "./kit.ts";

/** Report rows / tests of this module. */
export const CLASSES: { id: string; title: string }[] = [
  {
    id: "rootfs-escape",
    title: "rootfs: layers that escape the root or exhaust the reader are refused, nothing written",
  },
  {
    id: "format-integrity",
    title: "oci-dir, oci-archive, rootfs: a corrupt layer writes nothing (exit 5)",
  },
];

/**
 * A linux/amd64 image whose layers are `layers` (bottom first) gzip-compressed, with the real
 * diff_ids in its config (so a refusal can only come from the content, not from a digest check).
 */
export function layerImage(layers: (TarItem[] | Uint8Array)[], repository: string): TestImage {
  const tars = layers.map((l) => l instanceof Uint8Array ? l : buildTar(l));
  const blobs = tars.map((tar) => {
    const bytes = gzip(tar);
    return { mediaType: MT.ociLayerGzip, digest: sha256(bytes), size: bytes.byteLength, bytes };
  });
  const configBytes = jsonBytes({
    architecture: "amd64",
    os: "linux",
    config: { Cmd: ["/bin/sh"] },
    rootfs: { type: "layers", diff_ids: tars.map((t) => sha256(t)) },
    history: tars.map((_, i) => ({ created_by: `attack layer ${i}` })),
  });
  const config = {
    mediaType: MT.ociConfig,
    digest: sha256(configBytes),
    size: configBytes.byteLength,
    bytes: configBytes,
  };
  const manifest = manifestBlob({
    schemaVersion: 2,
    mediaType: MT.ociManifest,
    config: { mediaType: config.mediaType, digest: config.digest, size: config.size },
    layers: blobs.map((b) => ({ mediaType: b.mediaType, digest: b.digest, size: b.size })),
  }, MT.ociManifest);
  const image: TestImage = {
    repository,
    tag: "latest",
    config,
    layers: blobs,
    manifest,
    blobs: new Map([
      [config.digest, configBytes],
      ...blobs.map((b) => [b.digest, b.bytes] as const),
    ]),
    manifests: new Map(),
  };
  putManifest(image, image.tag, manifest);
  putManifest(image, manifest.digest, manifest);
  return image;
}

function slug(id: string): string {
  return id.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "");
}

/** Attacks also run with `-o -`: a streaming writer must not have emitted a byte either. */
const STDOUT_TOO = new Set(["symlink-then-through (later layer)", "hardlink ../../etc/passwd"]);

const escapes: Scenario[] = attackLayers().flatMap((attack) => {
  const variants: ("file" | "stdout")[] = STDOUT_TOO.has(attack.id) ? ["file", "stdout"] : ["file"];
  return variants.map((to) =>
    fault({
      id: `rootfs-${slug(attack.id)}${to === "stdout" ? "-stdout" : ""}`,
      cls: "rootfs-escape",
      title: `rootfs ${to === "stdout" ? "to stdout " : ""}refuses: ${attack.id}`,
      code: 8,
      message: attack.expect,
    }, () => ({
      image: layerImage(attack.layers, "attack/rootfs"),
      args: ["--format", "rootfs"],
      // The runner passes `-o <output>`.
      output: to === "stdout" ? "-" : undefined,
      expected: null,
      check: (_run, outcome) =>
        expect(outcome.stdout === "", `${outcome.stdout.length} characters on stdout`),
    }))
  );
});

/**
 * A layer whose bytes do not match its digest, for each new format: exit 5 and nothing at the
 * destination (no directory for oci-dir, an existing file kept for the tar formats, nothing on
 * stdout). A writer that parsed the layer before verifying it (rootfs) would say exit 8.
 */
const integrity: Scenario[] = (
  [["oci-dir", "file"], ["oci-archive", "file"], ["rootfs", "file"], ["rootfs", "stdout"]] as const
).map(([format, to]) =>
  fault({
    id: `corrupt-layer-${format}${to === "stdout" ? "-stdout" : ""}`,
    cls: "format-integrity",
    title: `a corrupt layer: --format ${format}${to === "stdout" ? " -o -" : ""} writes nothing`,
    code: 5,
    message: /digest/,
    // An existing archive at the destination must survive (a directory layout has no such file).
    preexisting: format !== "oci-dir" && to === "file",
  }, (dirs) => {
    const image = layerImage([
      [{ name: "etc", type: "dir" }, { name: "etc/big", content: "x".repeat(300 * 1024) }],
      [{ name: "etc/top", content: "top\n" }],
    ], "formats/corrupt");
    const target = image.layers[0];
    return {
      image,
      args: ["--format", format],
      output: to === "stdout" ? "-" : format === "oci-dir" ? `${dirs.out}/layout` : undefined,
      handler: () => (req) =>
        new URL(req.url).pathname.endsWith(`/blobs/${target.digest}`) && req.method === "GET"
          ? new Response(corrupt(target.bytes))
          : undefined,
      expected: null,
      check: (_run, outcome) =>
        expect(outcome.stdout === "", `${outcome.stdout.length} characters on stdout`),
    };
  })
);

/** The scenarios, in class order. */
export const SCENARIOS: Scenario[] = [...escapes, ...integrity];
