import assert from "node:assert/strict";
import { joinPath, splitPath } from "../../lib/paths.ts";
import { certsDirRoots } from "../../lib/tls.ts";

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

Deno.test("certs.d roots: Docker's and podman's, per OS, system then user", () => {
  assert.deepEqual(certsDirRoots("linux", { HOME: "/home/u" }), [
    "/etc/docker/certs.d",
    "/etc/containers/certs.d",
    "/home/u/.config/containers/certs.d",
  ]);
  assert.deepEqual(
    certsDirRoots("linux", { HOME: "/home/u", XDG_CONFIG_HOME: "/x" }).at(-1),
    "/x/containers/certs.d",
  );
  assert.deepEqual(certsDirRoots("darwin", { HOME: "/Users/u" }), [
    "/etc/docker/certs.d",
    "/etc/containers/certs.d",
    "/Users/u/.docker/certs.d",
    "/Users/u/.config/containers/certs.d",
  ]);
  assert.deepEqual(certsDirRoots("windows", { HOME: "C:\\Users\\u" }), [
    "C:\\ProgramData\\docker\\certs.d",
    "C:\\Users\\u\\.docker\\certs.d",
  ]);
  assert.deepEqual(certsDirRoots("linux", {}), ["/etc/docker/certs.d", "/etc/containers/certs.d"]);
});
