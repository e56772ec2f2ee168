/**
 * The streaming layer tar reader: formats (ustar prefix, GNU L/K, PAX, base-256, v7), content
 * streaming and skipping, end of archive, and refusals of malformed input.
 */
import assert from "node:assert/strict";
import { InvalidContentError } from "../../lib/errors.ts";
import {
  displayName,
  type LayerTarHeader,
  type LayerTarOptions,
  LayerTarReader,
  utf8ByteString,
} from "../../lib/layer_tar.ts";
import { buildTar, concat, paxBlocks, type TarItem } from "../helpers/layers.ts";

const encoder = new TextEncoder();

async function* chunked(bytes: Uint8Array, size = 7): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < bytes.byteLength; i += size) yield bytes.subarray(i, i + size);
}

async function read(
  bytes: Uint8Array,
  options: LayerTarOptions = {},
  chunk = 7,
): Promise<(LayerTarHeader & { text: string })[]> {
  const reader = new LayerTarReader(chunked(bytes, chunk), options);
  const out: (LayerTarHeader & { text: string })[] = [];
  try {
    for (let h = await reader.next(); h; h = await reader.next()) {
      const parts: Uint8Array[] = [];
      for await (const part of reader.content()) parts.push(part.slice());
      out.push({ ...h, text: new TextDecoder().decode(concat(parts)) });
    }
  } finally {
    await reader.close();
  }
  return out;
}

async function refused(bytes: Uint8Array, pattern: RegExp, options: LayerTarOptions = {}) {
  await assert.rejects(read(bytes, options), (e: unknown) => {
    assert.ok(e instanceof InvalidContentError, String(e));
    assert.match((e as Error).message, pattern);
    return true;
  });
}

Deno.test("layer tar: ustar entries with metadata, content streamed in small chunks", async () => {
  const items: TarItem[] = [
    { name: "dir", type: "dir", mode: 0o1777, mtime: 12345 },
    {
      name: "dir/file",
      content: "hello\n",
      mode: 0o4755,
      uid: 1000,
      gid: 1001,
      uname: "u",
      gname: "g",
      mtime: 99,
    },
    { name: "dir/sym", type: "symlink", linkname: "../x" },
    { name: "dir/hard", type: "link", linkname: "dir/file" },
    { name: "dir/c", type: "char", devmajor: 1, devminor: 3 },
    { name: "dir/b", type: "block", devmajor: 259, devminor: 7 },
    { name: "dir/p", type: "fifo" },
  ];
  const entries = await read(buildTar(items), {}, 3);
  assert.deepEqual(entries.map((e) => [e.name, e.kind]), [
    ["dir/", "directory"],
    ["dir/file", "file"],
    ["dir/sym", "symlink"],
    ["dir/hard", "hardlink"],
    ["dir/c", "char"],
    ["dir/b", "block"],
    ["dir/p", "fifo"],
  ]);
  const file = entries[1];
  assert.equal(file.text, "hello\n");
  assert.equal(file.mode, 0o4755);
  assert.deepEqual([file.uid, file.gid, file.uname, file.gname, file.mtime], [
    1000,
    1001,
    "u",
    "g",
    99,
  ]);
  assert.equal(entries[0].mode, 0o1777);
  assert.equal(entries[2].linkname, "../x");
  assert.equal(entries[3].linkname, "dir/file");
  assert.deepEqual([entries[5].devmajor, entries[5].devminor], [259, 7]);
});

Deno.test("layer tar: long names by ustar prefix, PAX and GNU L/K; UTF-8 as byte strings", async () => {
  const medium = `${"a".repeat(120)}/${"b".repeat(90)}`;
  const long = `${"c".repeat(200)}/${"d".repeat(200)}`;
  const link = `${"l".repeat(150)}/target`;
  const utf8 = "ünïcødé/ファイル";
  const entries = await read(buildTar([
    { name: medium, content: "m" },
    { name: long, content: "p" },
    { name: `${long}-gnu`, content: "g", longNames: "gnu" },
    { name: "s1", type: "symlink", linkname: link },
    { name: "s2", type: "symlink", linkname: link, longNames: "gnu" },
    { name: utf8, content: "u" },
  ]));
  assert.deepEqual(entries.map((e) => e.name), [
    medium,
    long,
    `${long}-gnu`,
    "s1",
    "s2",
    utf8ByteString(utf8),
  ]);
  assert.equal(entries[3].linkname, link);
  assert.equal(entries[4].linkname, link);
  assert.equal(displayName(entries[5].name), utf8);
  assert.deepEqual(entries.map((e) => e.text), ["m", "p", "g", "", "", "u"]);
});

Deno.test("layer tar: PAX records override the header; xattrs are raw bytes", async () => {
  const value = new Uint8Array([0, 1, 2, 0xff, 0x0a, 0x3d]);
  const entries = await read(buildTar([{
    name: "short",
    content: "0123456789",
    pax: {
      path: "from/pax",
      uid: "3000000",
      gid: "4000000",
      uname: "ünï",
      gname: "grp",
      mtime: "-12.25",
      "SCHILY.xattr.user.bin": value,
      "SCHILY.xattr.security.capability": "cap",
      atime: "1",
    },
  }]));
  const [e] = entries;
  assert.equal(e.name, "from/pax");
  assert.deepEqual([e.uid, e.gid, e.gname, e.mtime], [3000000, 4000000, "grp", -12.25]);
  assert.equal(displayName(e.uname), "ünï");
  assert.deepEqual([...e.xattrs.keys()], ["user.bin", "security.capability"]);
  assert.deepEqual(e.xattrs.get("user.bin"), value);
  assert.equal(e.text, "0123456789");
});

Deno.test("layer tar: PAX size, base-256 numbers, negative base-256 mtime", async () => {
  // The header claims 999 bytes but PAX says 3: only 3 (one block) follow.
  const paxSize = concat([
    paxBlocks([["size", encoder.encode("3")]]),
    buildTar([{ name: "f", content: "abc", declaredSize: 999 }]),
  ]);
  const [e] = await read(paxSize);
  assert.deepEqual([e.size, e.text], [3, "abc"]);

  const [b] = await read(
    buildTar([{ name: "b", content: "xy", uid: 0o7777777 + 5, base256: true }]),
  );
  assert.deepEqual([b.uid, b.size, b.text], [0o7777777 + 5, 2, "xy"]);

  const negative = buildTar([{ name: "n", content: "" }]);
  negative.set([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe], 136);
  fixChecksum(negative);
  const [n] = await read(negative);
  assert.equal(n.mtime, -2);
});

function fixChecksum(tar: Uint8Array, at = 0): void {
  const h = tar.subarray(at, at + 512);
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  h.set(encoder.encode(sum.toString(8).padStart(6, "0") + "\0 "), 148);
}

Deno.test("layer tar: v7 directories, global headers, skipped content, end of archive", async () => {
  const v7 = buildTar([{ name: "old/", content: "" }]);
  v7[156] = 0;
  fixChecksum(v7);
  assert.equal((await read(v7))[0].kind, "directory");

  const global = concat([
    new Uint8Array(paxBlocks([["comment", encoder.encode("hi")]])),
    buildTar([{ name: "after-global", content: "z" }]),
  ]);
  global[156] = "g".charCodeAt(0);
  fixChecksum(global);
  assert.deepEqual((await read(global)).map((e) => e.name), ["after-global"]);

  // Content not read is skipped; trailing garbage after the end blocks is never read.
  const tar = concat([
    buildTar([{ name: "a", content: "x".repeat(3000) }, { name: "b", content: "y" }]),
    encoder.encode("garbage after the end"),
  ]);
  const reader = new LayerTarReader(chunked(tar, 100));
  assert.equal((await reader.next())?.name, "a");
  assert.equal((await reader.next())?.name, "b");
  assert.equal(await reader.next(), undefined);
  assert.equal(await reader.next(), undefined);
  await reader.close();

  // A stream ending at a header boundary without end blocks is complete too.
  assert.equal((await read(buildTar([{ name: "a", content: "x" }], { end: false }))).length, 1);
  assert.equal((await read(new Uint8Array(0))).length, 0);
});

Deno.test("layer tar: malformed input is InvalidContentError", async () => {
  const one = buildTar([{ name: "a", content: "x".repeat(600) }], { end: false });
  await refused(one.subarray(0, 700), /truncated/);
  await refused(one.subarray(0, 300), /truncated/);
  await refused(buildTar([{ name: "c", content: "x", badChecksum: true }]), /checksum/);
  await refused(buildTar([{ name: "s", flag: "S" }]), /sparse/);
  await refused(buildTar([{ name: "v", flag: "V" }]), /unsupported tar entry type 'V'/);
  await refused(
    buildTar([{ name: "p", content: "x", pax: { comment: "x".repeat(64 * 1024) } }]),
    /PAX extended header larger/,
    { maxPaxBytes: 32 * 1024 },
  );
  await refused(buildTar([{ name: "p", content: "x", pax: { size: "-1" } }]), /invalid PAX size/);
  await refused(buildTar([{ name: "p", content: "x", pax: { uid: "1e9" } }]), /invalid PAX uid/);
  await refused(buildTar([{ name: "p", pax: { "GNU.sparse.map": "0,1" } }]), /sparse/);
  await refused(buildTar([{ name: "x".repeat(5000), content: "x" }]), /longer than 4096/);
  await refused(
    buildTar([{ name: "g".repeat(5000), content: "x", longNames: "gnu" }]),
    /GNU long name longer/,
  );
  await refused(buildTar([{ name: "big", content: "x".repeat(5000) }]), /larger than 4096 bytes/, {
    maxTotalBytes: 4096,
  });
  await refused(buildTar([{ name: "nul", content: "x", pax: { path: "a\0b" } }]), /NUL/);
  // An extended header followed by the end of the archive.
  await refused(
    concat([paxBlocks([["path", encoder.encode("x")]]), new Uint8Array(1024)]),
    /without/,
  );
});

Deno.test("layer tar: an abort signal stops the reader", async () => {
  const controller = new AbortController();
  controller.abort();
  await assert.rejects(
    read(buildTar([{ name: "a", content: "x" }]), { signal: controller.signal }),
    (e: unknown) => (e as Error).name === "InterruptedError",
  );
});
