/**
 * Just enough tar for the conformance corpus: a ustar writer for hand-made layers (so every byte,
 * mode and whiteout is chosen here), a reader for what loaders and skopeo produce (ustar, GNU
 * long names, PAX), a flattener that applies layers in order with whiteouts, and a comparable
 * listing of a root filesystem (type, mode, owner, size, link target per path).
 * @module
 */

/** One entry to write. Directories end without a slash; the writer adds it. */
export interface TarInput {
  path: string;
  type: "file" | "dir" | "symlink";
  /** Permission bits, e.g. 0o755. */
  mode: number;
  content?: Uint8Array;
  linkTarget?: string;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const BLOCK = 512;

function writeString(header: Uint8Array, offset: number, length: number, value: string): void {
  const bytes = encoder.encode(value);
  if (bytes.byteLength > length) throw new Error(`tar field too long: ${value}`);
  header.set(bytes, offset);
}

function writeOctal(header: Uint8Array, offset: number, length: number, value: number): void {
  writeString(header, offset, length, `${value.toString(8).padStart(length - 1, "0")}\0`);
}

function headerFor(entry: TarInput, size: number): Uint8Array {
  const h = new Uint8Array(BLOCK);
  let name = entry.type === "dir" ? `${entry.path}/` : entry.path;
  let prefix = "";
  if (name.length > 100) {
    const cut = name.lastIndexOf("/", name.length - 2);
    prefix = name.slice(0, cut);
    name = name.slice(cut + 1);
  }
  writeString(h, 0, 100, name);
  writeOctal(h, 100, 8, entry.mode);
  writeOctal(h, 108, 8, 0);
  writeOctal(h, 116, 8, 0);
  writeOctal(h, 124, 12, size);
  writeOctal(h, 136, 12, 0);
  h.fill(0x20, 148, 156);
  h[156] = entry.type === "dir" ? 0x35 : entry.type === "symlink" ? 0x32 : 0x30;
  if (entry.linkTarget) writeString(h, 157, 100, entry.linkTarget);
  writeString(h, 257, 8, "ustar\u000000");
  writeString(h, 265, 32, "root");
  writeString(h, 297, 32, "root");
  writeString(h, 345, 155, prefix);
  let sum = 0;
  for (const b of h) sum += b;
  writeString(h, 148, 8, `${sum.toString(8).padStart(6, "0")}\0 `);
  return h;
}

/**
 * Serialises entries as ustar (uid/gid 0, mtime 0). `end: false` leaves out the two zero blocks
 * that close an archive, for layers assembled from several pieces (estargz).
 */
export function writeTar(entries: TarInput[], opts: { end?: boolean } = {}): Uint8Array {
  const parts: Uint8Array[] = [];
  for (const entry of entries) {
    const content = entry.type === "file" ? entry.content ?? new Uint8Array() : new Uint8Array();
    parts.push(headerFor(entry, content.byteLength));
    if (content.byteLength > 0) {
      const padded = new Uint8Array(Math.ceil(content.byteLength / BLOCK) * BLOCK);
      padded.set(content);
      parts.push(padded);
    }
  }
  if (opts.end !== false) parts.push(new Uint8Array(BLOCK * 2));
  return concat(parts);
}

/** Concatenates byte arrays. */
export function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let offset = 0;
  for (const p of parts) {
    out.set(p, offset);
    offset += p.byteLength;
  }
  return out;
}

/** One entry read back from a tar. */
export interface TarEntry {
  /** Normalised: no leading `./` or `/`, no trailing `/`. */
  path: string;
  /** ustar type flag: `0` file, `1` hard link, `2` symlink, `5` dir, … */
  typeflag: string;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  linkTarget: string;
  /** Offset of the entry's data in the tar. */
  dataOffset: number;
}

function readString(bytes: Uint8Array, offset: number, length: number): string {
  const field = bytes.subarray(offset, offset + length);
  const nul = field.indexOf(0);
  return decoder.decode(nul === -1 ? field : field.subarray(0, nul));
}

function readNumber(bytes: Uint8Array, offset: number, length: number): number {
  if (bytes[offset] & 0x80) {
    // GNU base-256.
    let n = bytes[offset] & 0x7f;
    for (let i = 1; i < length; i++) n = n * 256 + bytes[offset + i];
    return n;
  }
  const text = readString(bytes, offset, length).trim();
  return text === "" ? 0 : parseInt(text, 8);
}

/** Normalises a tar path for comparison (`./a/b/` → `a/b`). */
export function normalisePath(path: string): string {
  let p = path;
  while (p.startsWith("./")) p = p.slice(2);
  p = p.replace(/^\/+/, "").replace(/\/+$/, "");
  return p === "." ? "" : p;
}

function parsePax(data: Uint8Array): Record<string, string> {
  const out: Record<string, string> = {};
  let offset = 0;
  while (offset < data.byteLength) {
    const space = data.indexOf(0x20, offset);
    if (space === -1) break;
    const length = parseInt(decoder.decode(data.subarray(offset, space)), 10);
    if (!(length > 0)) break;
    const record = decoder.decode(data.subarray(space + 1, offset + length - 1));
    const eq = record.indexOf("=");
    out[record.slice(0, eq)] = record.slice(eq + 1);
    offset += length;
  }
  return out;
}

/** Reads every entry of an uncompressed tar (ustar, GNU long names, PAX headers). */
export function readTar(bytes: Uint8Array): TarEntry[] {
  const entries: TarEntry[] = [];
  let offset = 0;
  let longName: string | undefined;
  let longLink: string | undefined;
  let pax: Record<string, string> = {};
  while (offset + BLOCK <= bytes.byteLength) {
    const h = bytes.subarray(offset, offset + BLOCK);
    if (h.every((b) => b === 0)) break;
    const typeflag = String.fromCharCode(h[156] || 0x30);
    let size = readNumber(h, 124, 12);
    if (pax.size) size = Number(pax.size);
    const dataOffset = offset + BLOCK;
    const data = bytes.subarray(dataOffset, dataOffset + size);
    offset = dataOffset + Math.ceil(size / BLOCK) * BLOCK;
    if (typeflag === "L") {
      longName = readString(data, 0, data.byteLength);
      continue;
    }
    if (typeflag === "K") {
      longLink = readString(data, 0, data.byteLength);
      continue;
    }
    if (typeflag === "x") {
      pax = parsePax(data);
      continue;
    }
    if (typeflag === "g") continue;
    const prefix = readString(h, 345, 155);
    const name = readString(h, 0, 100);
    const path = pax.path ?? longName ?? (prefix ? `${prefix}/${name}` : name);
    entries.push({
      path: normalisePath(path),
      typeflag,
      mode: readNumber(h, 100, 8) & 0o7777,
      uid: pax.uid ? Number(pax.uid) : readNumber(h, 108, 8),
      gid: pax.gid ? Number(pax.gid) : readNumber(h, 116, 8),
      size,
      linkTarget: pax.linkpath ?? longLink ?? readString(h, 157, 100),
      dataOffset,
    });
    longName = longLink = undefined;
    pax = {};
  }
  return entries;
}

/** What a path is in a root filesystem, as compared across loaders. */
export interface FsNode {
  type: "file" | "dir" | "symlink" | "other";
  mode: number;
  uid: number;
  gid: number;
  /** Regular files only. */
  size?: number;
  /** Symlinks only. */
  target?: string;
}

/** path → node; the root itself is not listed. */
export type FsListing = Map<string, FsNode>;

function nodeOf(entry: TarEntry, fs: FsListing): FsNode {
  const base = { mode: entry.mode, uid: entry.uid, gid: entry.gid };
  switch (entry.typeflag) {
    case "0":
    case "7":
      return { ...base, type: "file", size: entry.size };
    case "1": {
      // A hard link is a regular file once extracted.
      const target = fs.get(normalisePath(entry.linkTarget));
      return { ...base, type: "file", size: target?.size ?? 0 };
    }
    case "2":
      return { ...base, type: "symlink", target: entry.linkTarget };
    case "5":
      return { ...base, type: "dir" };
    default:
      return { ...base, type: "other" };
  }
}

function removeTree(fs: FsListing, path: string, keepSelf: boolean): void {
  if (!keepSelf) fs.delete(path);
  const prefix = path === "" ? "" : `${path}/`;
  for (const key of [...fs.keys()]) if (key.startsWith(prefix) && key !== path) fs.delete(key);
}

/**
 * Applies layer tars (bottom first) like an overlay unpacker: `.wh.NAME` deletes NAME from the
 * layers below, `.wh..wh..opq` empties its directory of what the layers below put there, and a
 * non-directory replacing a directory drops the directory's content.
 */
export function flattenLayers(layers: Uint8Array[]): FsListing {
  const fs: FsListing = new Map();
  for (const layer of layers) {
    const entries = readTar(layer);
    for (const e of entries) {
      const slash = e.path.lastIndexOf("/");
      const dir = slash === -1 ? "" : e.path.slice(0, slash);
      const base = e.path.slice(slash + 1);
      if (base === ".wh..wh..opq") removeTree(fs, dir, true);
      else if (base.startsWith(".wh.")) {
        removeTree(fs, dir === "" ? base.slice(4) : `${dir}/${base.slice(4)}`, false);
      }
    }
    for (const e of entries) {
      const base = e.path.slice(e.path.lastIndexOf("/") + 1);
      if (base.startsWith(".wh.") || e.path === "") continue;
      const node = nodeOf(e, fs);
      const existing = fs.get(e.path);
      if (existing?.type === "dir" && node.type !== "dir") removeTree(fs, e.path, true);
      fs.set(e.path, node);
    }
  }
  return fs;
}

/** The listing of one tar (e.g. `docker export`), without whiteout processing. */
export function listTar(bytes: Uint8Array): FsListing {
  const fs: FsListing = new Map();
  for (const e of readTar(bytes)) if (e.path !== "") fs.set(e.path, nodeOf(e, fs));
  return fs;
}

/** Lists a directory tree on disk (a containerd snapshot) with lstat. */
export async function listDirectory(root: string): Promise<FsListing> {
  const fs: FsListing = new Map();
  const walk = async (dir: string, rel: string) => {
    for await (const d of Deno.readDir(dir)) {
      const path = rel ? `${rel}/${d.name}` : d.name;
      const full = `${dir}/${d.name}`;
      const st = await Deno.lstat(full);
      const base = { mode: (st.mode ?? 0) & 0o7777, uid: st.uid ?? -1, gid: st.gid ?? -1 };
      if (st.isSymlink) {
        fs.set(path, { ...base, type: "symlink", target: await Deno.readLink(full) });
      } else if (st.isDirectory) {
        fs.set(path, { ...base, type: "dir" });
        await walk(full, path);
      } else if (st.isFile) fs.set(path, { ...base, type: "file", size: st.size });
      else fs.set(path, { ...base, type: "other" });
    }
  };
  await walk(root, "");
  return fs;
}

function describe(node: FsNode | undefined): string {
  if (!node) return "(absent)";
  // A symlink's own mode is not meaningful (0777 on Linux, whatever the tar said).
  const mode = node.type === "symlink" ? "" : ` ${node.mode.toString(8).padStart(4, "0")}`;
  const extra = node.type === "file"
    ? ` size=${node.size}`
    : node.type === "symlink"
    ? ` -> ${node.target}`
    : "";
  return `${node.type}${mode} ${node.uid}:${node.gid}${extra}`;
}

/**
 * Differences between an expected listing and an actual one, as `path: expected ≠ actual` lines
 * (sorted). `ignore(path, node)` drops entries the loader adds on its own (e.g. Docker's init
 * layer) when the expected listing does not have them.
 */
export function diffListings(
  expected: FsListing,
  actual: FsListing,
  ignore: (path: string) => boolean = () => false,
): string[] {
  const paths = new Set([...expected.keys(), ...actual.keys()]);
  const out: string[] = [];
  for (const path of [...paths].sort()) {
    const e = expected.get(path);
    const a = actual.get(path);
    if (!e && ignore(path)) continue;
    const de = describe(e);
    const da = describe(a);
    if (de !== da) out.push(`/${path}: expected ${de}, got ${da}`);
  }
  return out;
}
