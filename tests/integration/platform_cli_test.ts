/**
 * `--platform` spelled as Docker and containerd accept it (an architecture or an os alone, any
 * case), through the real CLI against a real Distribution registry holding the fixtures'
 * multi-platform images.
 *
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { imgpull } from "../helpers/cli.ts";
import { pushFixtures } from "../helpers/fixtures.ts";
import { startRegistry } from "../helpers/registry.ts";
import { normalizePlatform } from "../../lib/platform.ts";

Deno.test("--platform: an architecture or an os alone is accepted, as containerd does", async (t) => {
  const root = await Deno.makeTempDir({ prefix: "imgpull-platform-" });
  const registry = await startRegistry({ mode: "http", storageDir: join(root, "storage") });
  try {
    const fixtures = await pushFixtures(registry.url, join(root, "fixtures"));
    const image = `${registry.host}/${fixtures.images.multi.reference}`;
    const host = normalizePlatform({ os: "linux", architecture: Deno.build.arch });
    const hostName = host.architecture === "arm64"
      ? "linux/arm64/v8"
      : `linux/${host.architecture}`;
    // [--platform, the platform resolved, the index entry pulled]
    const cases: [string, string, string][] = [
      ["arm64", "linux/arm64", "linux/arm64/v8"],
      ["AARCH64", "linux/arm64", "linux/arm64/v8"],
      ["x86_64", "linux/amd64", "linux/amd64"],
      ["armhf", "linux/arm/v7", "linux/arm/v7"],
      ["armel", "linux/arm/v6", "linux/arm/v6"],
      ["i386", "linux/386", "linux/386"],
      ["linux", `linux/${host.architecture}`, hostName],
      ["Linux", `linux/${host.architecture}`, hostName],
    ];
    for (const [flag, resolved, chosen] of cases) {
      await t.step(flag, async () => {
        const cwd = await Deno.makeTempDir({ dir: root });
        const r = await imgpull(["--no-cache", "--platform", flag, image, "-o", "out.tar"], {
          cwd,
          env: { HOME: cwd },
        });
        assert.equal(r.code, 0, r.stderr);
        assert.match(r.stderr, new RegExp(`for platform ${resolved}\\b`), r.stderr);
        assert.match(r.stderr, new RegExp(`platform: ${chosen}$`, "m"), r.stderr);
        assert.ok((await Deno.stat(join(cwd, "out.tar"))).size > 0);
      });
    }
    await t.step("an unknown word is still a usage error", async () => {
      const r = await imgpull(["--platform", "arm65", image], { env: { HOME: root } });
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, /unknown operating system or architecture/);
      assert.doesNotMatch(r.stderr, /architecture is missing/);
    });
  } finally {
    await registry.close();
    await Deno.remove(root, { recursive: true });
  }
});
