/**
 * Layer tars built in memory for the rootfs tests: a small tar writer that
 * is independent of lib/ (so it can test the reader honestly and can write
 * malformed headers on purpose), whiteout helpers, the feature layers of
 * the integration image and a catalogue of attack layers.
 * @module
 */
import { constants as zlibConstants, gzipSync, zstdCompressSync } from "node:zlib";

const BLOCK = 512;
const encoder = new TextEncoder();

/** Entry types of {@link TarItem}. */
export type ItemType = "file" | "dir" | "symlink" | "link" | "char" | "block" | "fifo";

/** One tar entry to build. Names are text (UTF-8) unless `nameBytes` is given. */
export interface TarItem {
  name: string;
  type?: ItemType;
  /** A raw type flag instead of `type` (e.g. "S" sparse, "V"). */
  flag?: string;
  content?: string | Uint8Array;
  mode?: number;
  uid?: number;
  gid?: number;
  uname?: string;
  gname?: string;
  mtime?: number;
  linkname?: string;
  devmajor?: number;
  devminor?: number;
  /** How to store a name that does not fit ustar: PAX `path` (default) or GNU `L`/`K`. */
  longNames?: "pax" | "gnu";
  /** Extra PAX records written before the entry (values: text or raw bytes). */
  pax?: Record<string, string | Uint8Array>;
  /** Exact bytes of the name (instead of the UTF-8 of `name`), e.g. Latin-1. */
  nameBytes?: Uint8Array;
  /** Overrides the 12-byte size field with these bytes (malformed sizes). */
  rawSize?: Uint8Array;
  /** Writes this content length into the header but `content` as the data (truncation). */
  declaredSize?: number;
  /** Writes uid, gid and size in GNU base-256. */
  base256?: boolean;
  /** Corrupts the header checksum. */
  badChecksum?: boolean;
}

const FLAGS: Record<ItemType, string> = {
  file: "0",
  link: "1",
  symlink: "2",
  char: "3",
  block: "4",
  dir: "5",
  fifo: "6",
};

function octal(h: Uint8Array, at: number, len: number, v: number): void {
  h.set(encoder.encode(v.toString(8).padStart(len - 1, "0") + "\0"), at);
}

function base256(h: Uint8Array, at: number, len: number, v: number): void {
  let rest = BigInt(v);
  for (let i = at + len - 1; i > at; i--) {
    h[i] = Number(rest & 0xffn);
    rest >>= 8n;
  }
  h[at] = 0x80;
}

function header(
  name: Uint8Array,
  flag: string,
  size: number,
  item: Partial<TarItem>,
  link: Uint8Array = new Uint8Array(0),
  prefix: Uint8Array = new Uint8Array(0),
): Uint8Array {
  const h = new Uint8Array(BLOCK);
  h.set(name.subarray(0, 100), 0);
  octal(h, 100, 8, item.mode ?? 0o644);
  if (item.base256) {
    base256(h, 108, 8, item.uid ?? 0);
    base256(h, 116, 8, item.gid ?? 0);
    base256(h, 124, 12, size);
  } else {
    octal(h, 108, 8, item.uid ?? 0);
    octal(h, 116, 8, item.gid ?? 0);
    octal(h, 124, 12, size);
  }
  if (item.rawSize) h.set(item.rawSize.subarray(0, 12), 124);
  octal(h, 136, 12, item.mtime ?? 0);
  h[156] = flag.charCodeAt(0);
  h.set(link.subarray(0, 100), 157);
  h.set(encoder.encode("ustar\x0000"), 257);
  h.set(encoder.encode(item.uname ?? "root").subarray(0, 31), 265);
  h.set(encoder.encode(item.gname ?? "root").subarray(0, 31), 297);
  octal(h, 329, 8, item.devmajor ?? 0);
  octal(h, 337, 8, item.devminor ?? 0);
  h.set(prefix.subarray(0, 155), 345);
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  if (item.badChecksum) sum += 1;
  h.set(encoder.encode(sum.toString(8).padStart(6, "0") + "\0 "), 148);
  return h;
}

function padded(data: Uint8Array): Uint8Array {
  const out = new Uint8Array(Math.ceil(data.byteLength / BLOCK) * BLOCK);
  out.set(data);
  return out;
}

/** A PAX extended header block sequence for `records`. */
export function paxBlocks(records: [string, Uint8Array][], name = "PaxHeaders/x"): Uint8Array {
  const parts: Uint8Array[] = [];
  for (const [key, value] of records) {
    const body = key.length + value.byteLength + 3;
    let length = body + String(body).length;
    if (String(length).length !== String(body).length) length = body + String(length).length;
    const rec = new Uint8Array(length);
    rec.set(encoder.encode(`${length} ${key}=`));
    rec.set(value, length - 1 - value.byteLength);
    rec[length - 1] = 0x0a;
    parts.push(rec);
  }
  const data = concat(parts);
  return concat([header(encoder.encode(name), "x", data.byteLength, {}), padded(data)]);
}

/** Concatenates byte arrays. */
export function concat(parts: Uint8Array[]): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}

function splitUstar(name: Uint8Array): { prefix: Uint8Array; name: Uint8Array } | undefined {
  if (name.byteLength <= 100) return { prefix: new Uint8Array(0), name };
  for (let i = 0; i < name.byteLength; i++) {
    if (name[i] !== 0x2f) continue;
    if (i <= 155 && name.byteLength - i - 1 <= 100) {
      return { prefix: name.subarray(0, i), name: name.subarray(i + 1) };
    }
  }
  return undefined;
}

/** Bytes of one entry (meta headers, header, content). */
export function tarEntry(item: TarItem): Uint8Array {
  const type = item.type ?? "file";
  const flag = item.flag ?? FLAGS[type];
  const content = typeof item.content === "string"
    ? encoder.encode(item.content)
    : item.content ?? new Uint8Array(0);
  let name = item.nameBytes ?? encoder.encode(item.name);
  if (type === "dir" && name[name.byteLength - 1] !== 0x2f) {
    name = concat([name, encoder.encode("/")]);
  }
  const link = encoder.encode(item.linkname ?? "");
  const parts: Uint8Array[] = [];
  const pax: [string, Uint8Array][] = Object.entries(item.pax ?? {}).map((
    [k, v],
  ) => [k, typeof v === "string" ? encoder.encode(v) : v]);
  let split = splitUstar(name);
  let shortLink = link;
  if (!split || link.byteLength > 100) {
    if (item.longNames === "gnu") {
      if (!split) {
        const data = concat([name, new Uint8Array(1)]);
        parts.push(header(encoder.encode("././@LongLink"), "L", data.byteLength, {}), padded(data));
        split = { prefix: new Uint8Array(0), name: name.subarray(0, 100) };
      }
      if (link.byteLength > 100) {
        const data = concat([link, new Uint8Array(1)]);
        parts.push(header(encoder.encode("././@LongLink"), "K", data.byteLength, {}), padded(data));
        shortLink = link.subarray(0, 100);
      }
    } else {
      if (!split) {
        pax.push(["path", name]);
        split = { prefix: new Uint8Array(0), name: name.subarray(0, 100) };
      }
      if (link.byteLength > 100) {
        pax.push(["linkpath", link]);
        shortLink = link.subarray(0, 100);
      }
    }
  }
  if (pax.length > 0) parts.push(paxBlocks(pax));
  const size = item.declaredSize ?? (type === "file" ? content.byteLength : 0);
  parts.push(header(split.name, flag, size, item, shortLink, split.prefix));
  if (content.byteLength > 0) parts.push(padded(content));
  return concat(parts);
}

/** A layer tar of `items`, with the two end-of-archive blocks unless `end` is false. */
export function buildTar(items: TarItem[], opts: { end?: boolean } = {}): Uint8Array<ArrayBuffer> {
  const parts = items.map(tarEntry);
  if (opts.end !== false) parts.push(new Uint8Array(2 * BLOCK));
  return concat(parts);
}

/** `dir/.wh.base` for a path `dir/base`. */
export function whiteout(path: string): TarItem {
  const i = path.lastIndexOf("/");
  return { name: `${path.slice(0, i + 1)}.wh.${path.slice(i + 1)}`, content: "" };
}

/** `dir/.wh..wh..opq`. */
export function opaque(dir: string): TarItem {
  return { name: `${dir}/.wh..wh..opq`, content: "" };
}

/** gzip bytes (node:zlib, stable header). */
export function gzip(bytes: Uint8Array): Uint8Array<ArrayBuffer> {
  return new Uint8Array(gzipSync(bytes));
}

/** zstd bytes; with `frames` > 1, several frames back to back plus a skippable frame. */
export function zstd(bytes: Uint8Array, frames = 1): Uint8Array<ArrayBuffer> {
  const params = { params: { [zlibConstants.ZSTD_c_compressionLevel]: 3 } };
  const parts: Uint8Array[] = [];
  const step = Math.ceil(bytes.byteLength / frames);
  for (let i = 0; i < frames; i++) {
    parts.push(new Uint8Array(zstdCompressSync(bytes.subarray(i * step, (i + 1) * step), params)));
    if (frames > 1 && i === 0) {
      // A skippable frame (magic 0x184D2A50, 4 bytes of payload).
      parts.push(new Uint8Array([0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4]));
    }
  }
  return concat(parts);
}

// ---------------------------------------------------------------------------
// The feature image

const LONG_DIR = `long/${"d".repeat(120)}`;
/** A path of more than 255 bytes (components under 255). */
export const LONG_PATH = `${LONG_DIR}/${"e".repeat(140)}/${"f".repeat(60)}.txt`;
/** A path of 101–255 bytes that fits the ustar prefix split. */
export const MEDIUM_PATH = `${LONG_DIR}/medium.txt`;
/** A UTF-8 name. */
export const UTF8_PATH = "utf8/ünïcødé-ファイル-😀.txt";

/**
 * Three layers covering what a root filesystem can hold (to be put on top
 * of a busybox layer): whiteouts, an opaque directory, file↔directory
 * replacement, hard links (same layer, to a lower layer, target later
 * replaced and removed), symlinks, setuid/sticky modes, owners, long and
 * UTF-8 names, devices, a FIFO, xattrs, a fractional mtime.
 */
export function featureLayers(): TarItem[][] {
  const t = 1_600_000_000;
  return [
    [
      { name: "etc", type: "dir", mode: 0o755, mtime: t },
      { name: "etc/removed.conf", content: "gone\n", mtime: t },
      { name: "etc/kept.conf", content: "kept\n", mode: 0o600, mtime: t },
      { name: "opaque", type: "dir", mode: 0o750, mtime: t },
      { name: "opaque/old1", content: "old1\n", mtime: t },
      { name: "opaque/sub", type: "dir", mtime: t },
      { name: "opaque/sub/old2", content: "old2\n", mtime: t },
      { name: "data", type: "dir", mode: 0o755, mtime: t },
      {
        name: "data/original",
        content: "original-1\n",
        mode: 0o640,
        uid: 1000,
        gid: 1001,
        uname: "user",
        gname: "group",
        mtime: t,
      },
      {
        name: "data/hardlink",
        type: "link",
        linkname: "data/original",
        mode: 0o640,
        uid: 1000,
        gid: 1001,
        mtime: t,
      },
      { name: "data/replaced", content: "replaced-1\n", mtime: t },
      { name: "data/link-to-replaced", type: "link", linkname: "data/replaced", mtime: t },
      { name: "replace", type: "dir", mtime: t },
      { name: "replace/file-becomes-dir", content: "file\n", mtime: t },
      { name: "replace/dir-becomes-file", type: "dir", mtime: t },
      { name: "replace/dir-becomes-file/child", content: "child\n", mtime: t },
      { name: "links", type: "dir", mtime: t },
      { name: "links/abs", type: "symlink", linkname: "/etc/kept.conf", mode: 0o777, mtime: t },
      { name: "links/rel", type: "symlink", linkname: "../etc/kept.conf", mode: 0o777, mtime: t },
      { name: "links/up", type: "symlink", linkname: "../../../..", mode: 0o777, mtime: t },
      { name: "links/utf8", type: "symlink", linkname: `../${UTF8_PATH}`, mode: 0o777, mtime: t },
      { name: "modes", type: "dir", mtime: t },
      { name: "modes/suid", content: "#!/bin/sh\n", mode: 0o4755, mtime: t },
      { name: "modes/sgid", content: "#!/bin/sh\n", mode: 0o2755, mtime: t },
      { name: "modes/sticky", type: "dir", mode: 0o1777, mtime: t },
      { name: "modes/owned", content: "owned\n", uid: 65534, gid: 65534, mtime: t },
      { name: MEDIUM_PATH, content: "medium\n", mtime: t },
      { name: LONG_PATH, content: "long\n", mtime: t },
      { name: "long/gnu-" + "g".repeat(200), content: "gnu long\n", longNames: "gnu", mtime: t },
      { name: UTF8_PATH, content: "utf8\n", mtime: t },
      { name: "devices", type: "dir", mtime: t },
      { name: "devices/null", type: "char", devmajor: 1, devminor: 3, mode: 0o666, mtime: t },
      { name: "devices/loop0", type: "block", devmajor: 7, devminor: 0, mode: 0o660, mtime: t },
      { name: "devices/fifo", type: "fifo", mode: 0o644, mtime: t },
      {
        name: "xattr-file",
        content: "xattrs\n",
        pax: { "SCHILY.xattr.user.test": "hello", "mtime": `${t}.5` },
        mtime: t,
      },
    ],
    [
      whiteout("etc/removed.conf"),
      { name: "opaque", type: "dir", mode: 0o755, mtime: t + 1 },
      opaque("opaque"),
      { name: "opaque/new", content: "new\n", mtime: t + 1 },
      { name: "replace/file-becomes-dir", type: "dir", mtime: t + 1 },
      { name: "replace/file-becomes-dir/inner", content: "inner\n", mtime: t + 1 },
      { name: "replace/dir-becomes-file", content: "now a file\n", mtime: t + 1 },
      // The hard link's target is replaced: data/link-to-replaced keeps "replaced-1".
      { name: "data/replaced", content: "replaced-2\n", mtime: t + 1 },
      // A hard link to a file of a lower layer.
      { name: "data/link-to-lower", type: "link", linkname: "data/hardlink", mtime: t },
      { name: "implicit/parent/file", content: "implicit parents\n", mtime: t + 1 },
    ],
    [
      // Both older names of the first file go: data/link-to-lower keeps its content.
      whiteout("data/original"),
      whiteout("data/hardlink"),
      { name: "late-dir", type: "dir", mode: 0o700, mtime: t + 2 },
      { name: "late-dir/file", content: "late\n", mtime: t + 2 },
    ],
  ];
}

// ---------------------------------------------------------------------------
// Attacks

/** An attack: layers (bottom first) that must be refused. */
export interface AttackLayers {
  id: string;
  layers: (TarItem[] | Uint8Array)[];
  /** A word the error message must contain. */
  expect: RegExp;
}

const big = (n: number) => "x".repeat(n);

/** Layers built to escape the root or exhaust memory; each must be refused (exit 8). */
export function attackLayers(): AttackLayers[] {
  return [
    { id: "dotdot", layers: [[{ name: "../x", content: "x" }]], expect: /'\.\.'/ },
    { id: "dotdot-inside", layers: [[{ name: "a/../../x", content: "x" }]], expect: /'\.\.'/ },
    {
      id: "symlink-then-through (same layer)",
      layers: [[
        { name: "ln", type: "symlink", linkname: "/tmp" },
        { name: "ln/x", content: "x" },
      ]],
      expect: /symlink/,
    },
    {
      id: "symlink-then-through (later layer)",
      layers: [[{ name: "ln", type: "symlink", linkname: "../../.." }], [{
        name: "ln/etc/x",
        content: "x",
      }]],
      expect: /symlink/,
    },
    {
      id: "symlink dir then whiteout through it",
      layers: [[{ name: "ln", type: "symlink", linkname: "/etc" }], [whiteout("ln/passwd")]],
      expect: /symlink/,
    },
    {
      id: "hardlink ../../etc/passwd",
      layers: [[{ name: "h", type: "link", linkname: "../../etc/passwd" }]],
      expect: /'\.\.'/,
    },
    {
      id: "hardlink to a missing absolute path",
      layers: [[{ name: "h", type: "link", linkname: "/etc/passwd" }]],
      expect: /does not exist/,
    },
    {
      id: "hardlink to a symlink's path",
      layers: [[
        { name: "s", type: "symlink", linkname: "/etc/shadow" },
        { name: "h", type: "link", linkname: "s" },
      ]],
      expect: /symlink/,
    },
    {
      id: "hardlink through a symlink",
      layers: [[
        { name: "d", type: "symlink", linkname: "/etc" },
        { name: "h", type: "link", linkname: "d/passwd" },
      ]],
      expect: /symlink/,
    },
    {
      id: "hardlink to a directory",
      layers: [[{ name: "d", type: "dir" }, { name: "h", type: "link", linkname: "d" }]],
      expect: /directory/,
    },
    {
      id: "hardlink to itself",
      layers: [[{ name: "f", content: "x" }], [{ name: "f", type: "link", linkname: "f" }]],
      expect: /does not exist/,
    },
    {
      id: "whiteout of '..'",
      layers: [[{ name: "a/f", content: "x" }], [{ name: "a/.wh...", content: "" }]],
      expect: /whiteout|'\.\.'/,
    },
    {
      id: "parent is a file",
      layers: [[{ name: "f", content: "x" }, { name: "f/g", content: "y" }]],
      expect: /not a directory/,
    },
    {
      id: "huge PAX header",
      layers: [[{ name: "p", content: "x", pax: { comment: big(2 * 1024 * 1024) } }]],
      expect: /PAX/,
    },
    {
      id: "PAX path with '..'",
      layers: [[{ name: "innocent", content: "x", pax: { path: "../../evil" } }]],
      expect: /'\.\.'/,
    },
    {
      id: "malformed PAX record",
      layers: [concat([
        header(encoder.encode("PaxHeaders/p"), "x", 12, {}),
        padded(encoder.encode("99 path=a\n\n\n")),
        buildTar([{ name: "p", content: "x" }]),
      ])],
      expect: /PAX/,
    },
    {
      id: "name longer than 4096 bytes",
      layers: [[{ name: `${big(200)}/`.repeat(21) + "f", content: "x" }]],
      expect: /longer/,
    },
    {
      id: "component longer than 255 bytes",
      layers: [[{ name: `a/${big(300)}`, content: "x" }]],
      expect: /longer than 255/,
    },
    {
      id: "negative size (base-256)",
      layers: [[{
        name: "n",
        content: "x",
        rawSize: new Uint8Array([
          0xff,
          0xff,
          0xff,
          0xff,
          0xff,
          0xff,
          0xff,
          0xff,
          0xff,
          0xff,
          0xff,
          0xfe,
        ]),
      }]],
      expect: /negative/,
    },
    {
      id: "garbage size",
      layers: [[{ name: "g", content: "x", rawSize: encoder.encode("12x4567\0\0\0\0\0") }]],
      expect: /not a number/,
    },
    {
      id: "size past the end (truncated)",
      layers: [[{ name: "t", content: "x", declaredSize: 1 << 30 }]],
      expect: /truncated/,
    },
    {
      id: "bad checksum",
      layers: [[{ name: "c", content: "x", badChecksum: true }]],
      expect: /checksum/,
    },
    { id: "GNU sparse file", layers: [[{ name: "s", flag: "S", content: "" }]], expect: /sparse/ },
    {
      id: "root replaced by a file",
      layers: [[{ name: "./", type: "symlink", linkname: "/" }]],
      expect: /root/,
    },
  ];
}
