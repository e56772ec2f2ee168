/**
 * The rootfs flattener on layers built in memory: whiteouts, opaque directories, replacement,
 * hard links, symlinks, names, metadata, compression, and the attack layers it must refuse
 * before writing anything.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { ExitCode, ImgpullError, IntegrityError, InvalidContentError } from "../../lib/errors.ts";
import {
  byteStringToBytes,
  type EntryKind,
  LayerTarReader,
  utf8ByteString,
} from "../../lib/layer_tar.ts";
import { digestOf } from "../../lib/digest.ts";
import {
  encodeTarHeader,
  type RootfsLayer,
  type RootfsOptions,
  type RootfsSummary,
  writeRootfs,
} from "../../lib/writers/rootfs.ts";
import {
  attackLayers,
  buildTar,
  concat,
  featureLayers,
  gzip,
  LONG_PATH,
  MEDIUM_PATH,
  opaque,
  type TarItem,
  UTF8_PATH,
  whiteout,
  zstd,
} from "../helpers/layers.ts";
import { runOk } from "../helpers/process.ts";

type Layer = TarItem[] | Uint8Array;
type Compression = RootfsLayer["compression"];

interface Flattened {
  tar: Uint8Array<ArrayBuffer>;
  summary?: RootfsSummary;
  error?: unknown;
  aborted: boolean;
}

async function flatten(
  layers: Layer[],
  options: RootfsOptions & { compression?: Compression; diffIds?: boolean } = {},
): Promise<Flattened> {
  const compression = options.compression ?? "none";
  return await flattenBlobs(
    layers.map((layer) => {
      const tar = Array.isArray(layer) ? buildTar(layer) : layer;
      const blob = compression === "gzip" ? gzip(tar) : compression === "zstd" ? zstd(tar, 3) : tar;
      return { blob, compression, diffId: options.diffIds ? digestOf(tar) : undefined };
    }),
    options,
  );
}

/** Flattens layer blobs given as they are stored (compressed or not). */
async function flattenBlobs(
  layers: { blob: Uint8Array; compression: Compression; diffId?: string }[],
  options: RootfsOptions = {},
): Promise<Flattened> {
  const dir = await Deno.makeTempDir({ prefix: "imgpull-rootfs-unit-" });
  try {
    const blobs: RootfsLayer[] = [];
    for (const [i, layer] of layers.entries()) {
      const path = join(dir, `layer${i}`);
      await Deno.writeFile(path, layer.blob);
      blobs.push({ path, compression: layer.compression, label: `l${i}`, diffId: layer.diffId });
    }
    const chunks: Uint8Array[] = [];
    let aborted = false;
    const stream = new WritableStream<Uint8Array>({
      write(chunk) {
        chunks.push(chunk.slice());
      },
      abort() {
        aborted = true;
      },
    });
    try {
      const summary = await writeRootfs(blobs, stream, options);
      return { tar: concat(chunks), summary, aborted };
    } catch (error) {
      return { tar: concat(chunks), error, aborted };
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

interface Out {
  name: string;
  kind: EntryKind;
  mode: number;
  uid: number;
  gid: number;
  uname: string;
  gname: string;
  mtime: number;
  linkname: string;
  dev: [number, number];
  xattrs: Record<string, string>;
  text: string;
}

/** A byte string decoded as UTF-8, in full. */
function utf8(bytes: string): string {
  return new TextDecoder().decode(byteStringToBytes(bytes));
}

/** The output's entries in order, names decoded as UTF-8 without a trailing slash. */
async function entries(tar: Uint8Array): Promise<Out[]> {
  const reader = new LayerTarReader((async function* () {
    yield tar;
  })());
  const out: Out[] = [];
  for (let h = await reader.next(); h; h = await reader.next()) {
    const parts: Uint8Array[] = [];
    for await (const part of reader.content()) parts.push(part.slice());
    out.push({
      name: utf8(h.name).replace(/\/$/, ""),
      kind: h.kind,
      mode: h.mode,
      uid: h.uid,
      gid: h.gid,
      uname: utf8(h.uname),
      gname: utf8(h.gname),
      mtime: h.mtime,
      linkname: utf8(h.linkname),
      dev: [h.devmajor, h.devminor],
      xattrs: Object.fromEntries(
        [...h.xattrs].map(([k, v]) => [k, new TextDecoder().decode(v)]),
      ),
      text: new TextDecoder().decode(concat(parts)),
    });
  }
  await reader.close();
  return out;
}

async function tree(layers: Layer[], options = {}): Promise<Map<string, Out>> {
  const result = await flatten(layers, options);
  if (result.error) throw result.error;
  const list = await entries(result.tar);
  const names = list.map((e) => e.name);
  assert.equal(new Set(names).size, names.length, `duplicate paths: ${names}`);
  // Every parent comes before its children.
  const seen = new Set<string>();
  for (const name of names) {
    const parent = name.includes("/") ? name.slice(0, name.lastIndexOf("/")) : "";
    assert.ok(parent === "" || seen.has(parent), `${name} before its parent`);
    seen.add(name);
  }
  return new Map(list.map((e) => [e.name, e]));
}

/** Content of a path, following one output hard link. */
function content(t: Map<string, Out>, path: string): string | undefined {
  const e = t.get(path);
  if (!e) return undefined;
  if (e.kind === "hardlink") {
    const target = t.get(e.linkname);
    assert.equal(target?.kind, "file", `${path} links to ${e.linkname}`);
    return target!.text;
  }
  assert.equal(e.kind, "file", path);
  return e.text;
}

Deno.test("rootfs: whiteouts remove lower files and trees and are never written", async () => {
  const t = await tree([
    [
      { name: "a/keep", content: "k" },
      { name: "a/gone", content: "g" },
      { name: "a/tree/x", content: "x" },
      { name: "a/tree/y/z", content: "z" },
    ],
    [whiteout("a/gone"), whiteout("a/tree"), whiteout("a/never-existed"), {
      name: "b/.wh.c",
      content: "",
    }],
  ]);
  assert.deepEqual([...t.keys()].sort(), ["a", "a/keep", "b"]);
  assert.ok(![...t.keys()].some((k) => k.includes(".wh.")));
});

Deno.test("rootfs: an opaque directory hides lower entries, keeps its own layer's", async () => {
  const t = await tree([
    [
      { name: "o", type: "dir", mode: 0o700 },
      { name: "o/lower", content: "l" },
      { name: "o/sub/lower", content: "l" },
      { name: "o/sub2/lower", content: "l" },
      { name: "other/untouched", content: "u" },
    ],
    [
      { name: "o/before-marker", content: "b" },
      opaque("o"),
      { name: "o/sub2/new", content: "n" },
      opaque("o/sub2"),
      opaque("o"),
    ],
  ]);
  assert.deepEqual([...t.keys()].sort(), [
    "o",
    "o/before-marker",
    "o/sub2",
    "o/sub2/new",
    "other",
    "other/untouched",
  ]);
  assert.equal(t.get("o")!.mode, 0o700);
});

Deno.test("rootfs: replacement file↔directory, directory over directory", async () => {
  const t = await tree([
    [
      { name: "fd", content: "file" },
      { name: "df/child", content: "c" },
      { name: "dd", type: "dir", mode: 0o700, uid: 1 },
      { name: "dd/child", content: "c" },
      { name: "twice", content: "first" },
      { name: "twice", content: "second" },
    ],
    [
      { name: "fd", type: "dir" },
      { name: "fd/inner", content: "i" },
      { name: "df", content: "now a file" },
      { name: "dd", type: "dir", mode: 0o755, uid: 2 },
    ],
  ]);
  assert.equal(t.get("fd")!.kind, "directory");
  assert.equal(content(t, "fd/inner"), "i");
  assert.equal(content(t, "df"), "now a file");
  assert.equal(t.get("df/child"), undefined);
  assert.deepEqual([t.get("dd")!.mode, t.get("dd")!.uid], [0o755, 2]);
  assert.equal(content(t, "dd/child"), "c");
  assert.equal(content(t, "twice"), "second");
});

Deno.test("rootfs: hard links keep the content their target had when they were made", async () => {
  const t = await tree([
    [
      { name: "f", content: "v1", mode: 0o640, uid: 7 },
      { name: "same-layer", type: "link", linkname: "f" },
      { name: "g", content: "g1" },
      { name: "to-be-replaced-link", type: "link", linkname: "/g" },
    ],
    [
      { name: "g", content: "g2" },
      { name: "lower-link", type: "link", linkname: "same-layer" },
      { name: "chain", type: "link", linkname: "lower-link", mode: 0o600, uid: 9, mtime: 5 },
    ],
    [whiteout("f"), whiteout("same-layer")],
  ]);
  assert.equal(content(t, "g"), "g2");
  assert.equal(content(t, "to-be-replaced-link"), "g1");
  assert.equal(t.get("f"), undefined);
  assert.equal(content(t, "lower-link"), "v1");
  assert.equal(content(t, "chain"), "v1");
  // One regular entry with the content, the other name a hard link with the same metadata:
  // the last link entry's, which moby applies to the shared file.
  const kinds = ["lower-link", "chain"].map((p) => t.get(p)!.kind).sort();
  assert.deepEqual(kinds, ["file", "hardlink"]);
  for (const p of ["lower-link", "chain"]) {
    assert.deepEqual([t.get(p)!.mode, t.get(p)!.uid, t.get(p)!.mtime], [0o600, 9, 5]);
  }
  assert.deepEqual([t.get("to-be-replaced-link")!.mode, t.get("g")!.mode], [0o644, 0o644]);
});

Deno.test("rootfs: symlinks, modes, owners, devices, FIFOs, xattrs, long and UTF-8 names", async () => {
  const t = await tree(featureLayers());
  assert.equal(t.get("links/abs")!.linkname, "/etc/kept.conf");
  assert.equal(t.get("links/up")!.linkname, "../../../..");
  assert.equal(t.get("links/utf8")!.linkname, `../${UTF8_PATH}`);
  assert.equal(t.get("modes/suid")!.mode, 0o4755);
  assert.equal(t.get("modes/sgid")!.mode, 0o2755);
  assert.equal(t.get("modes/sticky")!.mode, 0o1777);
  assert.deepEqual([t.get("modes/owned")!.uid, t.get("modes/owned")!.gid], [65534, 65534]);
  assert.equal(content(t, MEDIUM_PATH), "medium\n");
  assert.equal(content(t, LONG_PATH), "long\n");
  assert.ok(new TextEncoder().encode(LONG_PATH).byteLength > 255);
  assert.equal(content(t, `long/gnu-${"g".repeat(200)}`), "gnu long\n");
  assert.equal(content(t, UTF8_PATH), "utf8\n");
  assert.deepEqual(t.get("devices/null")!.dev, [1, 3]);
  assert.equal(t.get("devices/null")!.kind, "char");
  assert.deepEqual(t.get("devices/loop0")!.dev, [7, 0]);
  assert.equal(t.get("devices/fifo")!.kind, "fifo");
  assert.deepEqual(t.get("xattr-file")!.xattrs, { "user.test": "hello" });
  assert.equal(t.get("xattr-file")!.mtime, 1_600_000_000.5);
  const original = t.get("data/link-to-lower")!;
  // The content of the first file; the owner the last hard link entry gave it.
  assert.deepEqual([original.kind, original.text, original.uid, original.uname], [
    "file",
    "original-1\n",
    0,
    "root",
  ]);
  assert.equal(content(t, "data/link-to-replaced"), "replaced-1\n");
  assert.equal(content(t, "data/replaced"), "replaced-2\n");
  assert.equal(t.get("data/original"), undefined);
  assert.equal(t.get("etc/removed.conf"), undefined);
  assert.deepEqual([...t.keys()].filter((k) => k.startsWith("opaque")).sort(), [
    "opaque",
    "opaque/new",
  ]);
  // Implicit parents: mode 0600, as moby's layer application makes them.
  assert.deepEqual([t.get("implicit")!.kind, t.get("implicit")!.mode], ["directory", 0o600]);
  assert.equal(t.get("late-dir")!.mode, 0o700);
});

Deno.test("rootfs: big ids, long owner names and non-UTF-8 names get PAX; bytes kept", async () => {
  const latin1 = new Uint8Array([...new TextEncoder().encode("latin1-"), 0xe9, 0xff]);
  const result = await flatten([[
    { name: "x", nameBytes: latin1, content: "l" },
    {
      name: "big-ids",
      content: "b",
      pax: { uid: "3000000", gid: "4000000", uname: "a-very-long-user-name-over-32-bytes" },
    },
  ]]);
  assert.ifError(result.error);
  const reader = new LayerTarReader((async function* () {
    yield result.tar;
  })());
  const first = (await reader.next())!;
  const second = (await reader.next())!;
  await reader.close();
  assert.deepEqual([...first.name].map((c) => c.charCodeAt(0)), [...latin1]);
  assert.deepEqual([second.uid, second.gid, second.uname], [
    3000000,
    4000000,
    "a-very-long-user-name-over-32-bytes",
  ]);
});

Deno.test("rootfs: GNU tar lists the output (PAX long and UTF-8 names, links, devices)", async () => {
  const result = await flatten(featureLayers());
  assert.ifError(result.error);
  const dir = await Deno.makeTempDir({ prefix: "imgpull-rootfs-gnu-" });
  try {
    await Deno.writeFile(join(dir, "out.tar"), result.tar);
    const { stdout } = await runOk("tar", ["-tvf", join(dir, "out.tar"), "--numeric-owner"]);
    assert.match(stdout, new RegExp(`${LONG_PATH}$`, "m"));
    assert.ok(stdout.includes(UTF8_PATH), stdout);
    assert.match(stdout, /^crw-rw-rw- 0\/0\s+1,3 .* devices\/null$/m);
    assert.match(stdout, /^-rwsr-xr-x .* modes\/suid$/m);
    assert.match(stdout, /links\/up -> \.\.\/\.\.\/\.\.\/\.\.$/m);
    assert.ok(!stdout.includes(".wh."));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("rootfs: gzip and multi-frame zstd layers, diff_ids checked", async () => {
  const layers = featureLayers();
  const plain = await flatten(layers);
  for (const compression of ["gzip", "zstd"] as const) {
    const other = await flatten(layers, { compression, diffIds: true });
    assert.ifError(other.error);
    assert.deepEqual(other.tar, plain.tar, compression);
  }
  // A wrong diff_id is an integrity failure (exit 5), before anything is written.
  const dir = await Deno.makeTempDir({ prefix: "imgpull-rootfs-unit-" });
  try {
    const path = join(dir, "l");
    await Deno.writeFile(path, buildTar([{ name: "f", content: "x" }]));
    const written: Uint8Array[] = [];
    const stream = new WritableStream<Uint8Array>({ write: (c) => void written.push(c) });
    await assert.rejects(
      writeRootfs([{ path, compression: "none", diffId: `sha256:${"0".repeat(64)}` }], stream),
      IntegrityError,
    );
    assert.equal(written.length, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("rootfs: big files stream through in order, between small entries", async () => {
  const big = new Uint8Array(3 * 1024 * 1024 + 77).map((_, i) => (i * 7919) % 251);
  for (const compression of ["none", "gzip"] as const) {
    const result = await flatten([[
      { name: "small1", content: "a" },
      { name: "big", content: big },
      { name: "small2", content: "b" },
    ]], { compression });
    assert.ifError(result.error);
    const reader = new LayerTarReader((async function* () {
      yield result.tar;
    })());
    const got: Record<string, string> = {};
    for (let h = await reader.next(); h; h = await reader.next()) {
      const parts: Uint8Array[] = [];
      for await (const part of reader.content()) parts.push(part.slice());
      got[h.name] = digestOf(concat(parts));
    }
    await reader.close();
    assert.deepEqual(got, {
      small1: digestOf(new TextEncoder().encode("a")),
      big: digestOf(big),
      small2: digestOf(new TextEncoder().encode("b")),
    });
  }
});

/** Content of `n` bytes that compresses a little (and so spans many decompressor outputs). */
function mixed(n: number): Uint8Array<ArrayBuffer> {
  let x = 2463534242;
  return new Uint8Array(n).map((_, i) => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return i % 4096 < 2048 ? 0x61 : x & 0xff;
  });
}

Deno.test("rootfs: gzip members back to back and trailing NUL padding read as node:zlib reads them", async () => {
  const big = mixed(5 * 1024 * 1024 + 3);
  const tar = buildTar([{ name: "small", content: "s" }, { name: "big", content: big }]);
  const plain = await flatten([tar]);
  assert.ifError(plain.error);
  // Two members: the tar cut in the middle of the big file's content.
  const cut = 3 * 1024 * 1024 + 1;
  const members = concat([gzip(tar.subarray(0, cut)), gzip(tar.subarray(cut))]);
  const padded = concat([gzip(tar), new Uint8Array(10_000)]);
  for (const [what, blob] of [["members", members], ["padded", padded]] as const) {
    const result = await flattenBlobs([{ blob, compression: "gzip", diffId: digestOf(tar) }]);
    assert.equal(result.error, undefined, `${what}: ${result.error}`);
    assert.deepEqual(result.tar, plain.tar, what);
  }
});

Deno.test("rootfs: damaged gzip layers are refused before anything is written", async () => {
  const tar = buildTar([{ name: "a", content: mixed(3 * 1024 * 1024) }, {
    name: "b",
    content: "b",
  }]);
  const good = gzip(tar);
  const flip = (at: number) => {
    const bytes = good.slice();
    for (let i = at; i < at + 64; i++) bytes[i] ^= 0x5a;
    return bytes;
  };
  const damaged: [string, Uint8Array, RegExp][] = [
    ["corrupt early", flip(2000), /cannot decompress layer 1 \(l0\) \(gzip\)/],
    ["corrupt late", flip(good.byteLength - 3000), /\(gzip\)/],
    ["bad CRC", flip(good.byteLength - 8), /\(gzip\): incorrect data check/],
    ["truncated", good.subarray(0, good.byteLength - 5000), /\(gzip\): unexpected end of file/],
    ["trailer missing", good.subarray(0, good.byteLength - 8), /unexpected end of file/],
    ["trailing garbage", concat([good, new Uint8Array([1, 2, 3, 4])]), /incorrect header check/],
    ["not gzip", new TextEncoder().encode("plain text, not gzip"), /incorrect header check/],
    ["empty", new Uint8Array(0), /unexpected end of file/],
  ];
  for (const [what, blob, message] of damaged) {
    // With its diff_id (as pulls give it) the whole stream is read in pass 1.
    const result = await flattenBlobs([{ blob, compression: "gzip", diffId: digestOf(tar) }]);
    assert.ok(result.error instanceof InvalidContentError, `${what}: ${result.error}`);
    assert.match((result.error as Error).message, message, what);
    assert.equal(result.tar.byteLength, 0, `${what}: bytes were written`);
    assert.ok(result.aborted, `${what}: output not aborted`);
  }
});

Deno.test("rootfs: output chunks handed to the stream are never changed afterwards", async () => {
  // The layer streams reuse their buffers; what the output was given must stay as it was.
  const dir = await Deno.makeTempDir({ prefix: "imgpull-rootfs-unit-" });
  try {
    const files = Array.from({ length: 6 }, (_, i) => ({
      name: `f${i}`,
      content: mixed(700 * 1024 + i * 333),
    }));
    const path = join(dir, "l");
    await Deno.writeFile(path, gzip(buildTar(files)));
    const kept: Uint8Array[] = [];
    const copies: Uint8Array[] = [];
    const stream = new WritableStream<Uint8Array>({
      write(chunk) {
        kept.push(chunk);
        copies.push(chunk.slice());
      },
    });
    await writeRootfs([{ path, compression: "gzip" }], stream);
    assert.ok(kept.length > 2);
    assert.deepEqual(concat(kept), concat(copies));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("rootfs: a file given as a sink gets the same tar, and is closed on success and failure", async () => {
  const layers = [...featureLayers(), [{ name: "big", content: mixed(2 * 1024 * 1024 + 5) }]];
  const viaStream = await flatten(layers, { compression: "gzip" });
  assert.ifError(viaStream.error);
  const dir = await Deno.makeTempDir({ prefix: "imgpull-rootfs-unit-" });
  try {
    const blobs: RootfsLayer[] = [];
    for (const [i, layer] of layers.entries()) {
      const path = join(dir, `layer${i}`);
      await Deno.writeFile(path, gzip(buildTar(layer)));
      blobs.push({ path, compression: "gzip" });
    }
    const out = join(dir, "out.tar");
    const file = await Deno.open(out, { write: true, createNew: true });
    const summary = await writeRootfs(blobs, file);
    assert.throws(() => file.close(), Deno.errors.BadResource);
    assert.deepEqual(await Deno.readFile(out), viaStream.tar);
    assert.equal(summary.tarBytes, viaStream.tar.byteLength);

    const bad = join(dir, "bad");
    await Deno.writeFile(bad, buildTar([{ name: "../x", content: "x" }]));
    const refused = join(dir, "refused.tar");
    const second = await Deno.open(refused, { write: true, createNew: true });
    await assert.rejects(
      writeRootfs([{ path: bad, compression: "none" }], second),
      InvalidContentError,
    );
    assert.throws(() => second.close(), Deno.errors.BadResource);
    assert.equal((await Deno.stat(refused)).size, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("rootfs: layers that contribute nothing are not read twice; summary counts", async () => {
  const result = await flatten([
    [{ name: "shadowed", content: "x".repeat(10_000) }],
    [{ name: "shadowed", type: "dir" }],
    [{ name: "kept", content: "k" }],
  ]);
  assert.ifError(result.error);
  assert.equal(result.summary!.layersReread, 1);
  assert.equal(result.summary!.entries, 2);
  assert.equal(result.summary!.contentBytes, 1);
  assert.equal(result.summary!.tarBytes, result.tar.byteLength);
});

Deno.test("rootfs: leading '/' and './' are normalised like docker; the root entry is dropped", async () => {
  const t = await tree([[
    { name: "./", type: "dir" },
    { name: "/abs/file", content: "a" },
    { name: "./dot/./file", content: "d" },
    { name: "//double//slash", content: "s" },
    { name: "h", type: "link", linkname: "/abs/file" },
  ]]);
  assert.deepEqual([...t.keys()].sort(), [
    "abs",
    "abs/file",
    "dot",
    "dot/file",
    "double",
    "double/slash",
    "h",
  ]);
  assert.equal(content(t, "h"), "a");
});

Deno.test("rootfs: encodeTarHeader round-trips through the reader", async () => {
  const header = {
    name: utf8ByteString(`${"ü".repeat(80)}/${"x".repeat(200)}`),
    kind: "symlink" as const,
    size: 0,
    mode: 0o777,
    uid: 0o7777777 + 1,
    gid: 5,
    uname: "",
    gname: utf8ByteString("grüp"),
    mtime: -5,
    linkname: "l".repeat(300),
    devmajor: 0,
    devminor: 0,
    xattrs: new Map([["user.a", new Uint8Array([1, 0, 2])]]),
  };
  const reader = new LayerTarReader((async function* () {
    yield concat([encodeTarHeader(header), new Uint8Array(1024)]);
  })());
  const back = await reader.next();
  await reader.close();
  assert.deepEqual(back, header);
});

Deno.test("rootfs: the path limit bounds the tree", async () => {
  const many = Array.from({ length: 50 }, (_, i) => ({ name: `f${i}`, content: "" }));
  const result = await flatten([many], { maxEntries: 20 });
  assert.ok(result.error instanceof InvalidContentError);
  assert.match((result.error as Error).message, /more than 20 paths/);
  assert.equal(result.tar.byteLength, 0);
});

for (const attack of attackLayers()) {
  Deno.test(`rootfs attack refused before writing: ${attack.id}`, async () => {
    const result = await flatten(attack.layers);
    assert.ok(result.error instanceof InvalidContentError, `not refused: ${result.error}`);
    assert.equal((result.error as ImgpullError).exitCode, ExitCode.invalidContent);
    assert.match((result.error as Error).message, attack.expect);
    assert.equal(result.tar.byteLength, 0, "bytes were written");
    assert.ok(result.aborted, "output not aborted");
  });
}

/** A layer of `n` FIFOs `d/f000000`…: one header patched per entry (the builder is slower). */
function manyFifos(n: number): Uint8Array<ArrayBuffer> {
  const template = buildTar([{ name: "d/f000000", type: "fifo" }], { end: false });
  const out = new Uint8Array((n + 2) * 512);
  for (let i = 0; i < n; i++) {
    const h = out.subarray(i * 512, (i + 1) * 512);
    h.set(template);
    h.set(new TextEncoder().encode(String(i).padStart(6, "0")), 3);
    h.fill(0x20, 148, 156);
    let sum = 0;
    for (let j = 0; j < 512; j++) sum += h[j];
    h.set(new TextEncoder().encode(sum.toString(8).padStart(6, "0") + "\0 "), 148);
  }
  return out;
}

Deno.test("rootfs: a directory with 200k entries, removed by a whiteout", async () => {
  const files = manyFifos(200_000);
  const result = await flatten([files, [whiteout("d")], [{ name: "d/again", content: "x" }]]);
  assert.ifError(result.error);
  assert.equal(result.summary!.entries, 2);
  const wide = await flatten([files]);
  assert.ifError(wide.error);
  assert.equal(wide.summary!.entries, 200_001);
});
