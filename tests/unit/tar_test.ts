import assert from "node:assert/strict";
import { tarEntrySize, tarHeader, TarWriter } from "../../lib/tar.ts";

Deno.test("tar: GNU tar reads what TarWriter writes, byte for byte", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const payload = new Uint8Array(1_500_000).map((_, i) => (i * 7) % 251);
    await Deno.writeFile(`${dir}/src`, payload);
    const out = await Deno.open(`${dir}/a.tar`, { write: true, create: true });
    const tar = new TarWriter(out);
    await tar.addDirectory("blobs");
    await tar.addFile("blobs/big", `${dir}/src`, payload.byteLength);
    await tar.addBytes("manifest.json", new TextEncoder().encode("[]"));
    const long = `${"d".repeat(120)}/${"f".repeat(90)}`;
    await tar.addBytes(long, new Uint8Array([1, 2, 3]));
    await tar.finish();
    out.close();
    const size = (await Deno.stat(`${dir}/a.tar`)).size;
    assert.equal(
      size,
      512 + tarEntrySize(payload.byteLength) + tarEntrySize(2) + tarEntrySize(3) + 1024,
    );
    const list = await new Deno.Command("tar", { args: ["-tf", `${dir}/a.tar`] }).output();
    assert.equal(list.code, 0, new TextDecoder().decode(list.stderr));
    assert.deepEqual(new TextDecoder().decode(list.stdout).trim().split("\n"), [
      "blobs/",
      "blobs/big",
      "manifest.json",
      long,
    ]);
    await Deno.mkdir(`${dir}/x`);
    const extract = await new Deno.Command("tar", {
      args: ["-xf", `${dir}/a.tar`, "-C", `${dir}/x`],
    })
      .output();
    assert.equal(extract.code, 0);
    assert.deepEqual(await Deno.readFile(`${dir}/x/blobs/big`), payload);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("tar: sizes beyond 8 GiB use GNU base-256", () => {
  const header = tarHeader("big", 10 * 1024 ** 3, "file");
  assert.equal(header[124], 0x80);
  let value = 0n;
  for (let i = 125; i < 136; i++) value = (value << 8n) | BigInt(header[i]);
  assert.equal(value, BigInt(10 * 1024 ** 3));
});

Deno.test("tar: addFile refuses a file whose size changed", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeFile(`${dir}/src`, new Uint8Array(10));
    using out = await Deno.open(`${dir}/a.tar`, { write: true, create: true });
    const tar = new TarWriter(out);
    await assert.rejects(tar.addFile("x", `${dir}/src`, 5), /changed size/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
