/**
 * The `rootfs` writer: an image's layers flattened into one tar of its root
 * filesystem — what `docker export` of a fresh container gives, minus what
 * the runtime adds (`.dockerenv`, `/dev`, `/proc`, `/etc/hosts`, …).
 *
 * Semantics (moby's `pkg/archive` layer application, overlay whiteouts):
 * - layers apply bottom first; within a layer, entries apply in order and a
 *   later entry replaces an earlier one at the same path (a directory over
 *   a directory only updates its metadata; anything else removes the old
 *   subtree first);
 * - `.wh.NAME` removes NAME (and its subtree) as it is at that point;
 *   `.wh..wh..opq` hides everything of lower layers in its directory
 *   (entries of the same layer stay, wherever they sit in the tar);
 *   whiteouts are never written; root-level `.wh..wh.*` (AUFS metadata) is
 *   skipped, as moby does;
 * - missing parent directories are created as moby's layer application
 *   creates them: mode 0600, root, mtime 0 ({@link IMPLICIT_DIR_MODE});
 * - a hard link shares the file its target names **at that moment**: a
 *   later replacement or removal of the target path leaves the link's
 *   content as it was (moby links inodes). Like moby, the link entry's own
 *   mode, owner, mtime and xattrs are then applied to the shared file. In
 *   the output, the surviving paths of one file are one regular entry (the
 *   first surviving path) and hard links to it;
 * - modes (setuid, setgid, sticky), owners (ids and names), mtimes,
 *   symlinks, devices, FIFOs and xattrs are kept. Names longer than ustar
 *   allows, non-ASCII names and link names, big ids and sizes, fractional
 *   times and xattrs get a PAX header. Names are written byte for byte.
 *
 * Safety: registry content is hostile. Every name is normalised like
 * docker's (leading `/` and `.` components dropped); the whole image is
 * refused with {@link InvalidContentError} (exit 8) **before anything is
 * written** when an entry, whiteout or hard-link target has a `..`
 * component, reaches the root through a symlink that an earlier entry or
 * layer created (we refuse rather than resolve such paths: a tar is not an
 * extraction, and a resolved path would silently change what the image
 * says), has a parent that is not a directory, or is a hard link whose
 * target is missing, outside, a symlink or not a regular file. Names, PAX
 * headers, link names ({@link LayerTarLimits}), the number of paths in the
 * tree ({@link RootfsOptions.maxEntries}) and each layer's uncompressed size
 * are bounded. Consequently no path of the output lies below a symlink of
 * the output, and every path appears once: extracting it with GNU tar
 * stays inside the target directory.
 *
 * Cost: two passes over the blobs, no disk beyond them and the output.
 * Pass 1 decompresses every layer and reads only headers to compute the
 * final tree (memory: one small record per path of the image, plus the
 * metadata of directories). Pass 2 decompresses again only the layers that
 * contribute a surviving non-directory entry, stopping after the last one,
 * and streams each surviving file's content straight to the output. Time:
 * about twice the decompression of the layers plus writing the output.
 *
 * @example
 * ```ts
 * const out = await Deno.open("rootfs.tar", { write: true, createNew: true });
 * await writeRootfs([{ path: "blobs/sha256/…", compression: "gzip" }], out.writable);
 * ```
 * @module
 */
import { Buffer } from "node:buffer";
import { pipeline, Readable } from "node:stream";
import { constants as zlibConstants, createGunzip } from "node:zlib";
import { defaultMaxLayerBytes, zstdDecompressFrames } from "../compression.ts";
import { DigestHasher } from "../digest.ts";
import { ImgpullError, IntegrityError, InvalidContentError } from "../errors.ts";
import {
  byteStringToBytes,
  displayName,
  type EntryKind,
  type LayerTarHeader,
  type LayerTarLimits,
  LayerTarReader,
} from "../layer_tar.ts";
import type { LayerCompression } from "../media_types.ts";
import { localIoError } from "../store.ts";

const BLOCK = 512;
const KiB = 1024;
const MiB = 1024 * KiB;
/** Largest single path component (Linux NAME_MAX). */
const MAX_COMPONENT_BYTES = 255;
/** Default of {@link RootfsOptions.maxEntries}. */
export const DEFAULT_MAX_ROOTFS_ENTRIES = 1_000_000;

/** One layer blob on disk. */
export interface RootfsLayer {
  /** The blob file (as the registry sent it). */
  path: string;
  compression: LayerCompression;
  /** When given, the uncompressed stream is checked against it in pass 1 ({@link IntegrityError}). */
  diffId?: string;
  /** Names the layer in messages (e.g. its digest); default its position. */
  label?: string;
}

/** Options of {@link writeRootfs} and {@link planRootfs}. */
export interface RootfsOptions extends LayerTarLimits {
  /** Most paths the flattened tree may hold at any time (default {@link DEFAULT_MAX_ROOTFS_ENTRIES}). */
  maxEntries?: number;
  /**
   * Largest uncompressed size of one layer, in bytes. Default
   * `defaultMaxLayerBytes` of lib/compression.ts (100× the blob, at least 1 GiB).
   */
  maxLayerBytes?: number;
  signal?: AbortSignal;
}

/** What {@link writeRootfs} wrote. */
export interface RootfsSummary {
  /** Entries in the output (directories, files, links, …). */
  entries: number;
  /** Bytes of file content in the output. */
  contentBytes: number;
  /** Bytes written in total. */
  tarBytes: number;
  /** Layers decompressed in pass 2 (the others contribute nothing that survives). */
  layersReread: number;
}

// ---------------------------------------------------------------------------
// Layer streams

/**
 * Reads a file in 1 MiB chunks: fresh ones when the consumer may keep them
 * (zstd's decompressor stream), else one reused buffer.
 */
async function* readBlob(path: string, what: string, fresh: boolean): AsyncGenerator<Uint8Array> {
  const file = await openBlob(path, what);
  const buffer = new Uint8Array(MiB);
  try {
    for (;;) {
      const chunk = fresh ? new Uint8Array(MiB) : buffer;
      const n = await readBlobChunk(file, chunk, what);
      if (n === null) return;
      yield chunk.subarray(0, n);
    }
  } finally {
    file.close();
  }
}

async function openBlob(path: string, what: string): Promise<Deno.FsFile> {
  try {
    return await Deno.open(path, { read: true });
  } catch (e) {
    throw localIoError(e, `cannot read ${what}`);
  }
}

async function readBlobChunk(
  file: Deno.FsFile,
  into: Uint8Array,
  what: string,
): Promise<number | null> {
  try {
    return await file.read(into);
  } catch (e) {
    throw localIoError(e, `cannot read ${what}`);
  }
}

/** Compressed bytes read at a time by {@link gunzip}. */
const GZIP_IN_BYTES = 256 * KiB;
/** Uncompressed bytes {@link gunzip} yields at most at a time. */
const GZIP_OUT_BYTES = 1 * MiB;

/**
 * Buffers of finished {@link gunzip} runs, for the next layer: layers are
 * read one after another, and a fresh pair per layer was 2.5 MiB of garbage
 * per layer and pass.
 */
const spareGzipBuffers: { input: Uint8Array; output: Uint8Array }[] = [];

/** The native side of a node:zlib stream (Node's binding API, which Deno's node:zlib keeps). */
interface ZlibHandle {
  writeSync(
    flush: number,
    input: Uint8Array,
    inOffset: number,
    inLength: number,
    output: Uint8Array,
    outOffset: number,
    outLength: number,
  ): void;
  onerror: (message: string, errno: number, code?: string) => void;
}

/**
 * The handle and result slots (`[availOut, availIn]`) of a fresh node:zlib
 * gunzip, or undefined when this runtime's node:zlib has no such internals.
 */
function gunzipHandle(): { handle: ZlibHandle; state: Uint32Array; close(): void } | undefined {
  const stream = createGunzip() as unknown as {
    _handle?: Partial<ZlibHandle>;
    _writeState?: unknown;
    close(): void;
  };
  const handle = stream._handle;
  const state = stream._writeState;
  if (
    typeof handle?.writeSync !== "function" || !(state instanceof Uint32Array) ||
    state.length < 2
  ) {
    stream.close();
    return undefined;
  }
  return { handle: handle as ZlibHandle, state, close: () => stream.close() };
}

function gzipError(what: string, message: string, cause?: unknown): InvalidContentError {
  return new InvalidContentError(`cannot decompress ${what} (gzip): ${message}`, { cause });
}

/**
 * Decompresses a gzip blob (any number of members, as node:zlib's Gunzip
 * reads them). Yields views into one reused buffer: a chunk is valid only
 * until the next one is asked for. Reading and output buffers live as long
 * as the layer: the stream API's fresh buffer per output chunk made the
 * process grow by tens of MB of garbage per layer before V8 collected it.
 */
async function* gunzip(path: string, what: string): AsyncGenerator<Uint8Array> {
  const zlib = gunzipHandle();
  if (!zlib) {
    yield* gunzipStream(readBlob(path, what, true), what);
    return;
  }
  let failure: string | undefined;
  // Called synchronously from writeSync; replaces the stream's handler (we never use the stream).
  zlib.handle.onerror = (message) => {
    failure ??= message;
  };
  const file = await openBlob(path, what);
  const buffers = spareGzipBuffers.pop() ??
    { input: new Uint8Array(GZIP_IN_BYTES), output: new Uint8Array(GZIP_OUT_BYTES) };
  const { input, output } = buffers;
  try {
    for (let ended = false; !ended;) {
      const n = await readBlobChunk(file, input, what);
      const flush = n === null ? zlibConstants.Z_FINISH : zlibConstants.Z_NO_FLUSH;
      let at = 0;
      let left = n ?? 0;
      for (;;) {
        try {
          zlib.handle.writeSync(flush, input, at, left, output, 0, output.byteLength);
        } catch (e) {
          throw gzipError(what, (e as Error).message, e);
        }
        if (failure !== undefined) throw gzipError(what, failure);
        const [availOut, availIn] = zlib.state;
        at += left - availIn;
        left = availIn;
        const produced = output.byteLength - availOut;
        if (produced > 0) yield output.subarray(0, produced);
        if (availOut === 0) continue; // the output filled up: more may be pending
        // Input left over with room to spare: the stream ended (as node:zlib ends, e.g. at
        // trailing NUL padding); the rest of the blob is not read.
        if (left > 0 || n === null) ended = true;
        break;
      }
    }
  } finally {
    file.close();
    zlib.close();
    if (spareGzipBuffers.length < 2) spareGzipBuffers.push(buffers);
  }
}

/** gzip through the node:zlib stream API (fresh buffers): for runtimes without the handle. */
async function* gunzipStream(
  input: AsyncIterable<Uint8Array>,
  what: string,
): AsyncGenerator<Uint8Array> {
  const source = Readable.from(input, { objectMode: false });
  const inflater = createGunzip({ chunkSize: 256 * KiB });
  const output = pipeline(source, inflater, () => {});
  try {
    for await (const chunk of output) yield chunk as Uint8Array;
  } catch (e) {
    if (e instanceof ImgpullError) throw e;
    throw gzipError(what, (e as Error).message, e);
  } finally {
    source.destroy();
    inflater.destroy();
  }
}

/**
 * The uncompressed tar stream of a layer blob. A chunk may be a view into a
 * buffer that is reused for the next one: copy what you keep.
 */
export function layerStream(layer: RootfsLayer, what = `layer ${layer.path}`): AsyncGenerator<
  Uint8Array
> {
  switch (layer.compression) {
    case "none":
      return readBlob(layer.path, what, false);
    case "gzip":
      return gunzip(layer.path, what);
    case "zstd":
      return zstdDecompressFrames(
        readBlob(layer.path, what, true),
        `cannot decompress ${what} (zstd)`,
      );
  }
}

// ---------------------------------------------------------------------------
// The tree (pass 1)

type NodeKind = Exclude<EntryKind, "hardlink">;

/** A regular file's content: where it comes from and which paths share it. */
interface Inode {
  layer: number;
  ordinal: number;
  /** Surviving paths, in the order they were made; the first is written as the file. */
  links: Set<Node>;
  /** Metadata the last hard link entry to it applied (moby chmods/chowns the shared inode). */
  relinked?: LayerTarHeader;
  /** Metadata of the written entry, set in pass 2 for the hard links that follow it. */
  header?: LayerTarHeader;
  emittedAs?: string;
}

interface Node {
  name: string;
  parent?: Node;
  kind: NodeKind;
  /** Layer and entry that gave the node its current state (ordinal -1: implicit directory). */
  layer: number;
  ordinal: number;
  children?: Map<string, Node>;
  inode?: Inode;
  /** A directory's metadata: its last directory entry (none for implicit directories). */
  dirHeader?: LayerTarHeader;
  /** Layer whose opaque marker was applied to this directory. */
  opaqueIn?: number;
  emitted?: boolean;
}

/** What pass 2 does with one entry of a layer. */
type Action =
  /** Write the inode's content under its first surviving path. */
  | { type: "content"; inode: Inode }
  /** Write a hard link to the inode's first path. */
  | { type: "link"; node: Node }
  /** Write a symlink, device or FIFO. */
  | { type: "special"; node: Node };

/** The metadata a hard link entry leaves on its file: its own, xattrs added to earlier ones. */
function relink(previous: LayerTarHeader | undefined, link: LayerTarHeader): LayerTarHeader {
  return { ...link, xattrs: new Map([...previous?.xattrs ?? [], ...link.xattrs]) };
}

function pathOf(node: Node): string {
  const parts: string[] = [];
  for (let n: Node | undefined = node; n?.parent; n = n.parent) parts.push(n.name);
  return parts.reverse().join("/");
}

/** The final tree of an image and what pass 2 must write. */
export class RootfsPlan {
  readonly root: Node = {
    name: "",
    kind: "directory",
    layer: -1,
    ordinal: -1,
    children: new Map(),
  };
  /** Paths in the tree. */
  size = 0;
  readonly #maxEntries: number;
  #what = "";

  constructor(maxEntries = DEFAULT_MAX_ROOTFS_ENTRIES) {
    this.#maxEntries = maxEntries;
  }

  #refuse(name: string, reason: string): InvalidContentError {
    return new InvalidContentError(`${this.#what}: entry "${displayName(name)}" ${reason}`, {
      hint: "the image's layers are malformed or built to escape the root filesystem",
    });
  }

  #split(name: string, entryName = name): string[] {
    const parts: string[] = [];
    for (const part of name.split("/")) {
      if (part === "" || part === ".") continue;
      if (part === "..") throw this.#refuse(entryName, `has a '..' component`);
      if (part.length > MAX_COMPONENT_BYTES) {
        throw this.#refuse(entryName, `has a component longer than ${MAX_COMPONENT_BYTES} bytes`);
      }
      parts.push(part);
    }
    return parts;
  }

  #added(): void {
    if (++this.size > this.#maxEntries) {
      throw new InvalidContentError(
        `${this.#what}: the image has more than ${this.#maxEntries} paths; refusing it`,
      );
    }
  }

  /** Walks to the parent of `parts`, creating missing directories; refuses symlinks and files. */
  #parent(parts: string[], layer: number, name: string): Node {
    let dir = this.root;
    for (let i = 0; i < parts.length - 1; i++) {
      let next = dir.children!.get(parts[i]);
      if (!next) {
        next = {
          name: parts[i],
          parent: dir,
          kind: "directory",
          layer,
          ordinal: -1,
          children: new Map(),
        };
        dir.children!.set(parts[i], next);
        this.#added();
      } else if (next.kind === "symlink") {
        throw this.#refuse(name, `passes through the symlink "${displayName(pathOf(next))}"`);
      } else if (next.kind !== "directory") {
        throw this.#refuse(
          name,
          `has a parent that is not a directory ("${displayName(pathOf(next))}")`,
        );
      }
      dir = next;
    }
    return dir;
  }

  #remove(node: Node): void {
    node.parent!.children!.delete(node.name);
    const stack = [node];
    while (stack.length > 0) {
      const n = stack.pop()!;
      this.size--;
      n.inode?.links.delete(n);
      // No spread: a directory may hold more children than a call takes arguments.
      for (const child of n.children?.values() ?? []) stack.push(child);
    }
  }

  /** Drops what lower layers put below `node`; true when something of `layer` remains. */
  #pruneLower(node: Node, layer: number): boolean {
    let keep = node.layer === layer;
    for (const child of [...node.children?.values() ?? []]) {
      if (this.#pruneLower(child, layer)) keep = true;
      else this.#remove(child);
    }
    return keep;
  }

  #opaque(dir: Node, layer: number): void {
    // Already applied here or above in this layer: lower entries are gone already.
    for (let d: Node | undefined = dir; d; d = d.parent) if (d.opaqueIn === layer) return;
    dir.opaqueIn = layer;
    for (const child of [...dir.children!.values()]) {
      if (!this.#pruneLower(child, layer)) this.#remove(child);
    }
  }

  #linkTarget(h: LayerTarHeader): Inode {
    const parts = this.#split(h.linkname, h.name);
    if (parts.length === 0) throw this.#refuse(h.name, "is a hard link to the root directory");
    let node: Node | undefined = this.root;
    for (let i = 0; i < parts.length; i++) {
      node = node.children?.get(parts[i]);
      const shown = `"${displayName(h.linkname)}"`;
      if (!node) throw this.#refuse(h.name, `is a hard link to ${shown}, which does not exist`);
      if (node.kind === "symlink") {
        throw this.#refuse(
          h.name,
          i === parts.length - 1
            ? `is a hard link to the symlink ${shown}`
            : `is a hard link through the symlink "${displayName(pathOf(node))}"`,
        );
      }
      if (i < parts.length - 1 && node.kind !== "directory") {
        throw this.#refuse(h.name, `is a hard link to ${shown}, which does not exist`);
      }
    }
    if (node.kind !== "file") {
      throw this.#refuse(h.name, `is a hard link to ${node.kind} "${displayName(h.linkname)}"`);
    }
    return node.inode!;
  }

  /** Names the layer in messages of the entries that follow. */
  startLayer(what: string): void {
    this.#what = what;
  }

  /** Applies entry `ordinal` of layer `layer` to the tree. */
  apply(layer: number, ordinal: number, h: LayerTarHeader): void {
    const parts = this.#split(h.name);
    if (parts.length === 0) {
      // The root's own entry: its metadata is the runtime's business.
      if (h.kind === "directory") return;
      throw this.#refuse(h.name, "replaces the root directory");
    }
    // AUFS metadata (`.wh..wh.plnk`, …) at the root: skipped, as moby does.
    if (parts[0].startsWith(".wh..wh.")) return;
    const base = parts[parts.length - 1];
    const parent = this.#parent(parts, layer, h.name);
    if (base.startsWith(".wh.")) {
      if (base === ".wh..wh..opq") return this.#opaque(parent, layer);
      const victim = base.slice(4);
      if (victim === "" || victim === "." || victim === "..") {
        throw this.#refuse(h.name, "is a whiteout of its own directory");
      }
      const node = parent.children!.get(victim);
      if (node) this.#remove(node);
      return;
    }
    const existing = parent.children!.get(base);
    if (h.kind === "directory" && existing?.kind === "directory") {
      existing.dirHeader = h;
      existing.layer = layer;
      existing.ordinal = ordinal;
      return;
    }
    // moby removes what is there first: a link to its own path, or below it, finds nothing.
    if (existing) this.#remove(existing);
    const node: Node = {
      name: base,
      parent,
      kind: h.kind === "hardlink" ? "file" : h.kind,
      layer,
      ordinal,
    };
    if (h.kind === "hardlink") {
      node.inode = this.#linkTarget(h);
      node.inode.links.add(node);
      node.inode.relinked = relink(node.inode.relinked, h);
    } else if (h.kind === "file") {
      node.inode = { layer, ordinal, links: new Set([node]) };
    } else if (h.kind === "directory") {
      node.children = new Map();
      node.dirHeader = h;
    }
    parent.children!.set(base, node);
    this.#added();
  }

  /** Pass-2 actions by layer, then by entry ordinal. */
  actions(layers: number): Map<number, Action>[] {
    const byLayer = Array.from({ length: layers }, () => new Map<number, Action>());
    const stack = [this.root];
    while (stack.length > 0) {
      const node = stack.pop()!;
      if (node.children) { for (const child of node.children.values()) stack.push(child); }
      else if (node.inode) {
        const inode = node.inode;
        const first = inode.links.values().next().value;
        if (first === node) byLayer[inode.layer].set(inode.ordinal, { type: "content", inode });
        else byLayer[node.layer].set(node.ordinal, { type: "link", node });
      } else if (node.kind !== "directory") {
        byLayer[node.layer].set(node.ordinal, { type: "special", node });
      }
    }
    return byLayer;
  }
}

// ---------------------------------------------------------------------------
// Tar output

const encoder = new TextEncoder();

function ascii(s: string): boolean {
  return /^[\x20-\x7e]*$/.test(s);
}

/** ustar prefix/name split of an ASCII path, or undefined when it does not fit. */
function ustarSplit(path: string): { prefix: string; name: string } | undefined {
  if (path.length <= 100) return { prefix: "", name: path };
  for (let i = path.indexOf("/"); i >= 0; i = path.indexOf("/", i + 1)) {
    if (i <= 155 && path.length - i - 1 <= 100 && path.length - i - 1 > 0) {
      return { prefix: path.slice(0, i), name: path.slice(i + 1) };
    }
  }
  return undefined;
}

function putBytes(header: Uint8Array, offset: number, length: number, s: string): void {
  const n = Math.min(length, s.length);
  for (let i = 0; i < n; i++) header[offset + i] = s.charCodeAt(i) & 0xff;
}

function putOctal(header: Uint8Array, offset: number, length: number, value: number): void {
  putBytes(header, offset, length, value.toString(8).padStart(length - 1, "0") + "\0");
}

/** GNU base-256 for numbers too big for octal. */
function putBase256(header: Uint8Array, offset: number, length: number, value: number): void {
  let rest = BigInt(value);
  for (let i = offset + length - 1; i > offset; i--) {
    header[i] = Number(rest & 0xffn);
    rest >>= 8n;
  }
  header[offset] = 0x80;
}

function paxRecord(key: string, value: Uint8Array): Uint8Array {
  const body = key.length + value.byteLength + 3; // " ", "=", "\n"
  let length = body + String(body).length;
  if (String(length).length !== String(body).length) length = body + String(length).length;
  const head = encoder.encode(`${length} ${key}=`);
  const out = new Uint8Array(length);
  out.set(head);
  out.set(value, head.byteLength);
  out[length - 1] = 0x0a;
  return out;
}

const TYPE_FLAGS: Record<EntryKind, string> = {
  file: "0",
  hardlink: "1",
  symlink: "2",
  char: "3",
  block: "4",
  directory: "5",
  fifo: "6",
};
const OCTAL7 = 0o7777777;
const OCTAL11 = 8 ** 11;

/** One 512-byte header block, with its checksum. */
function headerBlock(
  e: LayerTarHeader,
  names: { prefix: string; name: string; linkname: string },
  typeFlag: string,
  size: number,
): Uint8Array {
  const h = new Uint8Array(BLOCK);
  putBytes(h, 0, 100, names.name);
  putOctal(h, 100, 8, e.mode & 0o7777);
  putOctal(h, 108, 8, e.uid <= OCTAL7 ? e.uid : 0);
  putOctal(h, 116, 8, e.gid <= OCTAL7 ? e.gid : 0);
  putOctal(h, 124, 12, size < OCTAL11 ? size : 0);
  const mtime = Math.floor(e.mtime);
  putOctal(h, 136, 12, mtime >= 0 && mtime < OCTAL11 ? mtime : 0);
  h[156] = typeFlag.charCodeAt(0);
  putBytes(h, 157, 100, names.linkname);
  putBytes(h, 257, 8, "ustar\x0000");
  if (ascii(e.uname) && e.uname.length < 32) putBytes(h, 265, 32, e.uname);
  if (ascii(e.gname) && e.gname.length < 32) putBytes(h, 297, 32, e.gname);
  if (e.kind === "char" || e.kind === "block") {
    for (const [offset, value] of [[329, e.devmajor], [337, e.devminor]]) {
      if (value <= OCTAL7) putOctal(h, offset, 8, value);
      else putBase256(h, offset, 8, value);
    }
  }
  putBytes(h, 345, 155, names.prefix);
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += h[i];
  putBytes(h, 148, 8, sum.toString(8).padStart(6, "0") + "\0 ");
  return h;
}

/** Header block(s) of an output entry: a PAX header first when ustar cannot say it all. */
export function encodeTarHeader(e: LayerTarHeader): Uint8Array {
  const records: Uint8Array[] = [];
  const pax = (key: string, value: string) =>
    records.push(paxRecord(key, byteStringToBytes(value)));
  const fits = ascii(e.name) ? ustarSplit(e.name) : undefined;
  if (!fits) pax("path", e.name);
  const linkFits = ascii(e.linkname) && e.linkname.length <= 100;
  if (!linkFits) pax("linkpath", e.linkname);
  if (e.uid > OCTAL7) pax("uid", String(e.uid));
  if (e.gid > OCTAL7) pax("gid", String(e.gid));
  if (!ascii(e.uname) || e.uname.length >= 32) pax("uname", e.uname);
  if (!ascii(e.gname) || e.gname.length >= 32) pax("gname", e.gname);
  if (!Number.isInteger(e.mtime) || e.mtime < 0 || e.mtime >= OCTAL11) {
    pax("mtime", String(e.mtime));
  }
  if (e.size >= OCTAL11) pax("size", String(e.size));
  for (const [key, value] of e.xattrs) records.push(paxRecord(`SCHILY.xattr.${key}`, value));
  // Readers without PAX see a printable, truncated stand-in.
  const fallback = (s: string) => s.replace(/[^\x20-\x7e]/g, "_").slice(-100);
  const names = {
    ...(fits ?? { prefix: "", name: fallback(e.name) }),
    linkname: linkFits ? e.linkname : fallback(e.linkname),
  };
  const main = headerBlock(e, names, TYPE_FLAGS[e.kind], e.size);
  if (records.length === 0) return main;
  const paxSize = records.reduce((n, r) => n + r.byteLength, 0);
  const base = e.name.replace(/\/+$/, "").split("/").pop() ?? "";
  const paxName = `PaxHeaders/${fallback(base).slice(0, 80)}`;
  const paxHeader = headerBlock(
    { ...e, mode: 0o644, uid: 0, gid: 0, uname: "", gname: "", mtime: 0, kind: "file" },
    { prefix: "", name: paxName, linkname: "" },
    "x",
    paxSize,
  );
  const out = new Uint8Array(BLOCK + paxSize + padding(paxSize) + BLOCK);
  out.set(paxHeader);
  let at = BLOCK;
  for (const r of records) {
    out.set(r, at);
    at += r.byteLength;
  }
  out.set(main, BLOCK + paxSize + padding(paxSize));
  return out;
}

function padding(size: number): number {
  return (BLOCK - (size % BLOCK)) % BLOCK;
}

/**
 * Where {@link writeRootfs} can write besides a stream: a file (a
 * `Deno.FsFile` is one). Unlike a stream, it does not keep what it is given
 * once `write` resolves (Deno's writer contract), so one output buffer
 * serves the whole tar and no garbage piles up.
 */
export interface RootfsSink {
  /** Writes some of `p` (at least one byte), resolving with how many. */
  write(p: Uint8Array): Promise<number>;
  close(): void;
}

/**
 * Copies everything into 1 MiB blocks and writes whole blocks: the layer
 * streams reuse their buffers. A stream gets a fresh block each time (it may
 * keep what it is given); a sink gets the same block again.
 */
class TarOutput {
  readonly #write: (block: Uint8Array) => Promise<void>;
  readonly #reuse: boolean;
  #buffer = new Uint8Array(MiB);
  #used = 0;
  written = 0;

  constructor(output: { stream: WritableStreamDefaultWriter<Uint8Array> } | { sink: RootfsSink }) {
    if ("stream" in output) {
      this.#write = (block) => output.stream.write(block);
      this.#reuse = false;
    } else {
      this.#write = async (block) => {
        for (let at = 0; at < block.byteLength;) at += await output.sink.write(block.subarray(at));
      };
      this.#reuse = true;
    }
  }

  async #flush(): Promise<void> {
    if (this.#used === 0) return;
    const block = this.#buffer.subarray(0, this.#used);
    // Not zeroed: fresh zeroed pages cost as much as the decompression of random data.
    if (!this.#reuse) this.#buffer = Buffer.allocUnsafe(MiB);
    this.#used = 0;
    await this.#write(block);
  }

  async write(bytes: Uint8Array): Promise<void> {
    this.written += bytes.byteLength;
    for (let at = 0; at < bytes.byteLength;) {
      const n = Math.min(bytes.byteLength - at, this.#buffer.byteLength - this.#used);
      this.#buffer.set(bytes.subarray(at, at + n), this.#used);
      this.#used += n;
      at += n;
      if (this.#used === this.#buffer.byteLength) await this.#flush();
    }
  }

  async finish(): Promise<void> {
    await this.write(new Uint8Array(2 * BLOCK));
    await this.#flush();
  }
}

// ---------------------------------------------------------------------------
// The two passes

function layerWhat(layer: RootfsLayer, index: number): string {
  return `layer ${index + 1}${layer.label ? ` (${layer.label})` : ""}`;
}

async function layerLimit(layer: RootfsLayer, what: string, options: RootfsOptions) {
  if (options.maxLayerBytes !== undefined) return options.maxLayerBytes;
  try {
    return defaultMaxLayerBytes((await Deno.stat(layer.path)).size);
  } catch (e) {
    throw localIoError(e, `cannot read ${what}`);
  }
}

/** Passes chunks through while hashing them. */
async function* hashing(
  input: AsyncIterable<Uint8Array>,
  hasher: DigestHasher,
): AsyncGenerator<Uint8Array> {
  for await (const chunk of input) {
    hasher.update(chunk);
    yield chunk;
  }
}

/**
 * Pass 1: reads every layer's headers and computes the final tree. Throws
 * {@link InvalidContentError} for anything unsafe or malformed (see the
 * module notes) and {@link IntegrityError} when a layer's diff_id is given
 * and differs.
 */
export async function planRootfs(
  layers: readonly RootfsLayer[],
  options: RootfsOptions = {},
): Promise<RootfsPlan> {
  const plan = new RootfsPlan(options.maxEntries);
  for (const [index, layer] of layers.entries()) {
    const what = layerWhat(layer, index);
    plan.startLayer(what);
    const hasher = layer.diffId ? new DigestHasher("sha256") : undefined;
    const raw = layerStream(layer, what);
    const chunks = hasher ? hashing(raw, hasher) : raw;
    const reader = new LayerTarReader(chunks, {
      ...options,
      maxTotalBytes: await layerLimit(layer, what, options),
      label: `${index + 1}${layer.label ? ` (${layer.label})` : ""}`,
    });
    try {
      let ordinal = 0;
      for (let h = await reader.next(); h; h = await reader.next()) plan.apply(index, ordinal++, h);
      if (hasher) {
        // The diff_id covers the whole stream, end-of-archive blocks and padding too.
        for (let r = await chunks.next(); !r.done; r = await chunks.next()) { /* hashed */ }
        const actual = hasher.digest();
        if (actual !== layer.diffId) {
          throw new IntegrityError(
            `${what}: uncompressed content is ${actual}, but the image says ${layer.diffId}`,
          );
        }
      }
    } finally {
      await reader.close();
    }
  }
  return plan;
}

/**
 * Mode of directories no entry names but a path needs: moby's `UnpackLayer`
 * creates them with 0600 (and `docker export` shows that).
 */
export const IMPLICIT_DIR_MODE = 0o600;

const IMPLICIT_DIR: Omit<LayerTarHeader, "name"> = {
  kind: "directory",
  size: 0,
  mode: IMPLICIT_DIR_MODE,
  uid: 0,
  gid: 0,
  uname: "",
  gname: "",
  mtime: 0,
  linkname: "",
  devmajor: 0,
  devminor: 0,
  xattrs: new Map(),
};

/** Pass 2: writes the planned tree as a tar. */
class Emitter {
  entries = 0;
  contentBytes = 0;

  constructor(readonly out: TarOutput) {}

  async #dir(node: Node): Promise<void> {
    node.emitted = true;
    const meta = node.dirHeader ?? IMPLICIT_DIR;
    await this.out.write(
      encodeTarHeader({
        ...meta,
        kind: "directory",
        size: 0,
        linkname: "",
        name: `${pathOf(node)}/`,
      }),
    );
    this.entries++;
  }

  async parents(node: Node): Promise<void> {
    const chain: Node[] = [];
    for (let p = node.parent; p?.parent; p = p.parent) if (!p.emitted) chain.push(p);
    for (const p of chain.reverse()) await this.#dir(p);
  }

  async entry(header: LayerTarHeader): Promise<void> {
    await this.out.write(encodeTarHeader(header));
    this.entries++;
  }

  /** Directories nothing below them made appear yet (empty ones, mostly). */
  async remainingDirectories(root: Node): Promise<void> {
    const walk = async (node: Node): Promise<void> => {
      for (const child of node.children!.values()) {
        if (child.kind !== "directory") {
          if (!child.emitted) throw new Error(`rootfs: ${pathOf(child)} was never written`);
          continue;
        }
        if (!child.emitted) await this.#dir(child);
        await walk(child);
      }
    };
    await walk(root);
  }
}

function changed(what: string): InvalidContentError {
  return new InvalidContentError(`${what} changed between the two passes over it`);
}

async function emitLayer(
  layer: RootfsLayer,
  index: number,
  actions: Map<number, Action>,
  emitter: Emitter,
  options: RootfsOptions,
): Promise<void> {
  const what = layerWhat(layer, index);
  const reader = new LayerTarReader(layerStream(layer, what), {
    ...options,
    maxTotalBytes: await layerLimit(layer, what, options),
    label: `${index + 1}${layer.label ? ` (${layer.label})` : ""}`,
  });
  try {
    let left = actions.size;
    for (let ordinal = 0; left > 0; ordinal++) {
      const h = await reader.next();
      if (!h) break;
      const action = actions.get(ordinal);
      if (!action) continue;
      left--;
      if (action.type === "content") {
        if (h.kind !== "file") throw changed(what);
        const inode = action.inode;
        const node = inode.links.values().next().value!;
        const path = pathOf(node);
        const r = inode.relinked;
        const header: LayerTarHeader = r
          ? {
            ...h,
            mode: r.mode,
            uid: r.uid,
            gid: r.gid,
            uname: r.uname,
            gname: r.gname,
            mtime: r.mtime,
            xattrs: new Map([...h.xattrs, ...r.xattrs]),
          }
          : h;
        inode.header = header;
        inode.emittedAs = path;
        await emitter.parents(node);
        await emitter.entry({ ...header, name: path });
        for await (const chunk of reader.content()) await emitter.out.write(chunk);
        await emitter.out.write(new Uint8Array(padding(h.size)));
        emitter.contentBytes += h.size;
        node.emitted = true;
      } else if (action.type === "link") {
        const node = action.node;
        const inode = node.inode!;
        if (h.kind !== "hardlink" || !inode.header) throw changed(what);
        await emitter.parents(node);
        // A hard link shares its file's metadata.
        await emitter.entry({
          ...inode.header,
          xattrs: new Map(),
          kind: "hardlink",
          size: 0,
          name: pathOf(node),
          linkname: inode.emittedAs!,
        });
        node.emitted = true;
      } else {
        const node = action.node;
        if (h.kind !== node.kind) throw changed(what);
        await emitter.parents(node);
        await emitter.entry({ ...h, name: pathOf(node) });
        node.emitted = true;
      }
    }
    if (left > 0) throw changed(what);
  } finally {
    await reader.close();
  }
}

/**
 * Flattens `layers` (bottom first) into a tar of the root filesystem,
 * written to `output`. Pass 1 checks everything before the first byte is
 * written; on any failure a stream is aborted, a sink closed (write to a
 * temporary file and rename it when this resolves, as the docker-archive
 * writer does). On success `output` is closed.
 *
 * Give a file as a {@link RootfsSink} (`Deno.FsFile`) rather than its
 * `writable`: a stream may keep every block it is given, so each 1 MiB
 * block is a fresh one, and the process grows by tens of MB of them before
 * they are collected; a sink reuses one.
 *
 * Cost: each layer is decompressed once to plan, and once more if it
 * contributes surviving files, links or special files; no disk is used
 * beyond the blobs and the output; memory grows with the number of paths
 * (bounded by {@link RootfsOptions.maxEntries}), not with their size.
 */
export async function writeRootfs(
  layers: readonly RootfsLayer[],
  output: WritableStream<Uint8Array> | RootfsSink,
  options: RootfsOptions = {},
): Promise<RootfsSummary> {
  const writer = output instanceof WritableStream ? output.getWriter() : undefined;
  const sink = writer ? undefined : output as RootfsSink;
  let closed = false;
  try {
    const plan = await planRootfs(layers, options);
    const actions = plan.actions(layers.length);
    const out = new TarOutput(writer ? { stream: writer } : { sink: sink! });
    const emitter = new Emitter(out);
    let layersReread = 0;
    for (const [index, layer] of layers.entries()) {
      if (actions[index].size === 0) continue;
      layersReread++;
      await emitLayer(layer, index, actions[index], emitter, options);
    }
    await emitter.remainingDirectories(plan.root);
    await out.finish();
    closed = true;
    if (writer) await writer.close();
    else sink!.close();
    return {
      entries: emitter.entries,
      contentBytes: emitter.contentBytes,
      tarBytes: out.written,
      layersReread,
    };
  } catch (e) {
    if (writer) await writer.abort(e).catch(() => {});
    else if (!closed) {
      try {
        sink!.close();
      } catch { /* closed already */ }
    }
    throw e;
  }
}
