/**
 * Layer encodings of the corpus, each built the way real producers lay out the bytes: plain
 * gzip, gzip in several members (pigz-style concatenation), an eStargz-style blob (one gzip
 * member per file, a table-of-contents member, the 51-byte footer), uncompressed tar, zstd in one
 * frame and zstd in several frames followed by a skippable frame (zstd:chunked-style), the zstd
 * frames made by the Debian `zstd` CLI.
 * @module
 */
import { gunzipSync, gzipSync } from "node:zlib";
import { createHash } from "node:crypto";
import { concat, type TarInput, writeTar } from "./tar.ts";

/** How a corpus layer is encoded. */
export type LayerEncoding =
  | "gzip"
  | "gzip-multi-member"
  | "estargz"
  | "uncompressed"
  | "zstd"
  | "zstd-multi-frame";

/** An encoded layer blob and the digest of its uncompressed tar stream (its diff_id). */
export interface EncodedLayer {
  bytes: Uint8Array;
  diffId: string;
  /** Extra descriptor annotations (eStargz TOC digest). */
  annotations?: Record<string, string>;
}

const encoder = new TextEncoder();

/** `sha256:<hex>` of bytes. */
export function sha256(bytes: Uint8Array): string {
  return `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
}

function gzip(bytes: Uint8Array): Uint8Array {
  // node:zlib writes mtime 0 and no name: stable bytes.
  return new Uint8Array(gzipSync(bytes, { level: 6 }));
}

/**
 * Runs `cmd` with `input` on stdin and returns its stdout. Writing and reading happen at once:
 * writing everything first deadlocks as soon as the output outgrows the pipe buffer.
 */
export async function filter(cmd: string, args: string[], input: Uint8Array): Promise<Uint8Array> {
  const child = new Deno.Command(cmd, {
    args,
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const write = (async () => {
    const writer = child.stdin.getWriter();
    try {
      await writer.write(input);
      await writer.close();
    } catch {
      // The child exited early; its exit status tells why.
    }
  })();
  const [out] = await Promise.all([child.output(), write]);
  if (out.code !== 0) {
    throw new Error(`${cmd} ${args.join(" ")} failed: ${new TextDecoder().decode(out.stderr)}`);
  }
  return new Uint8Array(out.stdout);
}

/** Compresses with the `zstd` CLI (one frame per call, content size in the frame header). */
function zstdCli(bytes: Uint8Array): Promise<Uint8Array> {
  return filter("zstd", ["-q", "-3", "-c", "-"], bytes);
}

/** A zstd skippable frame: magic 0x184D2A50 (LE), payload size (LE u32), payload. */
export function skippableFrame(payload: Uint8Array): Uint8Array {
  const header = new Uint8Array(8);
  header.set([0x50, 0x2a, 0x4d, 0x18]);
  new DataView(header.buffer).setUint32(4, payload.byteLength, true);
  return concat([header, payload]);
}

function chunks(bytes: Uint8Array, count: number): Uint8Array[] {
  const size = Math.ceil(bytes.byteLength / count);
  const out: Uint8Array[] = [];
  for (let i = 0; i < bytes.byteLength; i += size) out.push(bytes.subarray(i, i + size));
  return out;
}

/**
 * The eStargz footer: an empty gzip member whose FEXTRA field holds subfield `SG` with
 * `%016x` of the TOC member's offset followed by `STARGZ` (51 bytes in all).
 */
function estargzFooter(tocOffset: number): Uint8Array {
  const payload = encoder.encode(`${tocOffset.toString(16).padStart(16, "0")}STARGZ`);
  const extra = concat([new Uint8Array([0x53, 0x47, payload.byteLength, 0]), payload]);
  return concat([
    new Uint8Array([0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff]),
    new Uint8Array([extra.byteLength, 0]),
    extra,
    // A final stored deflate block of length 0, then CRC32 and ISIZE of the empty payload.
    new Uint8Array([0x01, 0x00, 0x00, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]),
  ]);
}

/**
 * eStargz-style gzip: each entry in its own gzip member (no end-of-archive blocks yet), then a
 * member holding a tar with `stargz.index.json` and the two zero blocks, then the footer. The
 * uncompressed stream (what `gzip -dc` yields, the diff_id) is therefore one tar that contains
 * `stargz.index.json` as a regular file, as eStargz defines it.
 */
function estargz(entries: TarInput[]): EncodedLayer {
  const members: Uint8Array[] = [];
  const tocEntries: Record<string, unknown>[] = [];
  let offset = 0;
  for (const entry of entries) {
    const member = gzip(writeTar([entry], { end: false }));
    tocEntries.push({
      name: entry.path,
      type: entry.type === "file" ? "reg" : entry.type,
      mode: entry.mode,
      ...(entry.type === "file"
        ? {
          size: entry.content?.byteLength ?? 0,
          offset,
          digest: sha256(entry.content ?? new Uint8Array()),
        }
        : {}),
      ...(entry.linkTarget ? { linkName: entry.linkTarget } : {}),
    });
    members.push(member);
    offset += member.byteLength;
  }
  const toc = encoder.encode(JSON.stringify({ version: 1, entries: tocEntries }));
  const tocTar = writeTar([{ path: "stargz.index.json", type: "file", mode: 0o644, content: toc }]);
  const tocOffset = offset;
  members.push(gzip(tocTar), estargzFooter(tocOffset));
  const bytes = concat(members);
  return {
    bytes,
    diffId: sha256(new Uint8Array(gunzipSync(bytes))),
    annotations: { "containerd.io/snapshot/stargz/toc.digest": sha256(toc) },
  };
}

/** Encodes a layer's entries as `encoding`. */
export async function encodeLayer(
  entries: TarInput[],
  encoding: LayerEncoding,
): Promise<EncodedLayer> {
  if (encoding === "estargz") return estargz(entries);
  const tar = writeTar(entries);
  const diffId = sha256(tar);
  switch (encoding) {
    case "uncompressed":
      return { bytes: tar, diffId };
    case "gzip":
      return { bytes: gzip(tar), diffId };
    case "gzip-multi-member":
      return { bytes: concat(chunks(tar, 4).map(gzip)), diffId };
    case "zstd":
      return { bytes: await zstdCli(tar), diffId };
    case "zstd-multi-frame": {
      const frames = await Promise.all(chunks(tar, 4).map(zstdCli));
      const trailer = skippableFrame(encoder.encode(JSON.stringify({ corpus: "skippable" })));
      return { bytes: concat([...frames, trailer]), diffId };
    }
  }
}

/** Media type of a layer in `encoding`, in OCI or Docker flavour. */
export function layerMediaType(encoding: LayerEncoding, flavour: "oci" | "docker"): string {
  if (flavour === "docker") {
    if (encoding === "uncompressed") return "application/vnd.docker.image.rootfs.diff.tar";
    if (encoding.startsWith("zstd")) return "application/vnd.docker.image.rootfs.diff.tar.zstd";
    return "application/vnd.docker.image.rootfs.diff.tar.gzip";
  }
  if (encoding === "uncompressed") return "application/vnd.oci.image.layer.v1.tar";
  if (encoding.startsWith("zstd")) return "application/vnd.oci.image.layer.v1.tar+zstd";
  return "application/vnd.oci.image.layer.v1.tar+gzip";
}
