import assert from "node:assert/strict";
import { joinPath, splitPath } from "../../lib/paths.ts";

Deno.test("paths: output paths are split as their OS reads them", () => {
  assert.deepEqual(splitPath("C:\\out\\x.tar", "windows"), { dir: "C:\\out", base: "x.tar" });
  assert.deepEqual(splitPath("C:/out/x.tar", "windows"), { dir: "C:/out", base: "x.tar" });
  assert.deepEqual(splitPath("x.tar", "windows"), { dir: ".", base: "x.tar" });
  assert.deepEqual(splitPath("\\\\server\\share\\x.tar", "windows").base, "x.tar");
  assert.deepEqual(splitPath("/tmp/out/x.tar", "linux"), { dir: "/tmp/out", base: "x.tar" });
  assert.deepEqual(splitPath("x.tar", "darwin"), { dir: ".", base: "x.tar" });
  assert.deepEqual(splitPath("/x.tar", "linux"), { dir: "/", base: "x.tar" });
  // A backslash is a file name character on Linux.
  assert.deepEqual(splitPath("a\\b.tar", "linux"), { dir: ".", base: "a\\b.tar" });
  assert.equal(joinPath("C:\\out", ".x.partial", "windows"), "C:\\out\\.x.partial");
  assert.equal(joinPath("/tmp", ".x.partial", "linux"), "/tmp/.x.partial");
});
