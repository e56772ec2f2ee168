/**
 * Distribution: the bundle `deno task bundle` makes behaves as `main.ts` (run with the documented
 * permissions, against a real Distribution, proven by `podman load`); `deno task compile` embeds
 * it with the permissions baked in, or fails with one clear line when it cannot get Deno's base
 * runtime; `deno publish --dry-run` passes; the permission list is the same everywhere.
 */
import assert from "node:assert/strict";
import { join, resolve } from "node:path";
import { imgpull, PERMISSIONS as CLI_PERMISSIONS } from "../helpers/cli.ts";
import { pushFixtures } from "../helpers/fixtures.ts";
import { podmanLoad } from "../helpers/podman.ts";
import { freePort } from "../helpers/ports.ts";
import { type CommandResult, run } from "../helpers/process.ts";
import { startRegistry } from "../helpers/registry.ts";
import { bundle } from "../../scripts/bundle.ts";
import { ROOT, sourceCommit } from "../../scripts/build_stamp.ts";
import { binaryName } from "../../scripts/compile.ts";
import { ALLOWED_ENV, PERMISSIONS } from "../../scripts/permissions.ts";
import { userAgent, VERSION, versionText } from "../../lib/version.ts";

/** Deno's own cache, kept when a test points HOME elsewhere (as tests/helpers/cli.ts does). */
const DENO_DIR = Deno.env.get("DENO_DIR") ?? `${Deno.env.get("HOME")}/.cache/deno`;

/** `scripts/compile.ts --out-dir OUT --bundle BUNDLE ARGS`, with `env` (and NO_COLOR) only. */
function compile(
  outDir: string,
  bundlePath: string,
  args: string[],
  env: Record<string, string>,
): Promise<CommandResult> {
  return run(Deno.execPath(), [
    "run",
    "-A",
    join(ROOT, "scripts", "compile.ts"),
    "--out-dir",
    outDir,
    "--bundle",
    bundlePath,
    ...args,
  ], { env: { NO_COLOR: "1", ...env } });
}

/** Runs the bundle exactly as the README's `deno run` line runs it. */
function runBundle(bundlePath: string, args: string[], cwd?: string): Promise<CommandResult> {
  return run(Deno.execPath(), [
    "run",
    "--quiet",
    "--no-config",
    ...PERMISSIONS,
    bundlePath,
    ...args,
  ], {
    cwd,
    env: { NO_COLOR: "1", DENO_DIR, HOME: cwd ?? "/nonexistent" },
  });
}

async function listDir(dir: string): Promise<string[]> {
  const names: string[] = [];
  for await (const entry of Deno.readDir(dir)) names.push(entry.name);
  return names.sort();
}

/** Where `text` first occurs in `bytes`, or -1. */
function indexOfText(bytes: Uint8Array, text: string): number {
  const needle = new TextEncoder().encode(text);
  outer: for (let i = bytes.indexOf(needle[0]); i >= 0; i = bytes.indexOf(needle[0], i + 1)) {
    for (let j = 1; j < needle.length; j++) if (bytes[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

/** The permissions `deno compile` wrote into a binary's metadata (a flat JSON object). */
function bakedPermissions(binary: Uint8Array): Record<string, unknown> {
  const key = '"permissions":';
  const at = indexOfText(binary, key);
  assert.ok(at >= 0, "the binary has no permissions metadata");
  const text = new TextDecoder().decode(binary.subarray(at + key.length, at + key.length + 4096));
  return JSON.parse(text.slice(0, text.indexOf("}") + 1));
}

Deno.test("bundle: dist/imgpull.js behaves as main.ts; compile embeds it", async (t) => {
  const root = await Deno.makeTempDir({ prefix: "imgpull-bundle-" });
  const closers: (() => Promise<void>)[] = [];
  try {
    const commit = await sourceCommit();
    const built = await bundle(join(root, "dist", "imgpull.js"));
    assert.equal(built.commit, commit);
    const bundlePath = built.path;
    const info = { version: VERSION, deno: Deno.version.deno, target: Deno.build.target, commit };

    await t.step("the bundle is one self-contained module with the commit stamped in", async () => {
      const text = await Deno.readTextFile(bundlePath);
      assert.match(text, new RegExp(`stampBuild\\(\\{\\s*commit: "${commit}"\\s*\\}\\)`));
      const imports = [...text.matchAll(/^import .* from "([^"]+)";$/gm)].map((m) => m[1]);
      assert.ok(imports.length > 0);
      for (const specifier of imports) assert.match(specifier, /^node:/, "only node: built-ins");
      assert.doesNotMatch(text, /import\.meta\.url/, "nothing read relative to the module");
    });

    await t.step("--version names version, Deno, target and the stamped commit", async () => {
      const result = await runBundle(bundlePath, ["--version"]);
      assert.equal(result.code, 0, result.stderr);
      assert.equal(result.stdout.trim(), versionText(info));
    });

    await t.step("--help is main.ts's, byte for byte", async () => {
      const fromBundle = await runBundle(bundlePath, ["--help"]);
      const fromMain = await imgpull(["--help"]);
      assert.equal(fromBundle.code, 0, fromBundle.stderr);
      assert.match(fromBundle.stdout, /^imgpull .*\n\nUsage: imgpull \[options\]/);
      assert.equal(fromBundle.stdout, fromMain.stdout);
    });

    const storageDir = join(root, "storage");
    const registry = await startRegistry({ mode: "http", storageDir });
    closers.push(() => registry.close());
    const fixtures = await pushFixtures(registry.url, join(root, "fixtures"));
    const H = registry.host;

    await t.step("pulls from anonymous HTTP Distribution; podman loads the archive", async () => {
      const cwd = join(root, "pull");
      await Deno.mkdir(cwd);
      const result = await runBundle(bundlePath, [
        `${H}/fixtures/app:v1`,
        "--platform",
        "linux/amd64",
        "--no-cache",
      ], cwd);
      assert.equal(result.code, 0, result.stderr);
      const archive = join(cwd, "fixtures_app_v1.tar");
      assert.equal(resolve(cwd, result.stdout.trim()), archive);
      assert.deepEqual(await listDir(cwd), ["fixtures_app_v1.tar"]);
      const loaded = await podmanLoad(archive);
      assert.equal(loaded.code, 0, `podman load failed: ${loaded.stderr}`);
      assert.ok(
        loaded.images.some((n) => n === `${H}/fixtures/app:v1`),
        `podman loaded ${loaded.images.join(", ")}`,
      );
      assert.deepEqual(loaded.ids, [fixtures.images.app.manifests[0].config.digest.slice(7)]);
      // Distribution's access log: http.request.useragent=… (quoted when it has spaces).
      const agents = new Set(
        [...registry.log().matchAll(/useragent=(?:"([^"]*)"|(\S+))/g)].map((m) => m[1] ?? m[2])
          .filter((agent) => agent.startsWith("imgpull")),
      );
      assert.deepEqual([...agents], [userAgent(info)], "the User-Agent names the build");
    });

    await t.step("errors: same exit code and message as main.ts, nothing left behind", async () => {
      const cases: [string[], number, RegExp][] = [
        [[`${H}/fixtures/app:nosuchtag`, "--no-cache"], 4, /^\[-\] .*nosuchtag.*not found/m],
        [["UPPER/case"], 2, /^\[-\] invalid reference/m],
        [["--no-such-flag"], 2, /^\[-\] /],
      ];
      for (const [args, code, message] of cases) {
        const cwd = await Deno.makeTempDir({ dir: root, prefix: "fail-" });
        const fromBundle = await runBundle(bundlePath, args, cwd);
        assert.equal(fromBundle.code, code, `${args.join(" ")}: ${fromBundle.stderr}`);
        assert.match(fromBundle.stderr, message);
        assert.doesNotMatch(fromBundle.stderr, /\n\s+at /, "no stack trace");
        assert.equal(fromBundle.stdout, "");
        assert.deepEqual(await listDir(cwd), [], "a failed pull leaves nothing behind");
        const fromMain = await imgpull(args, { cwd, env: { HOME: cwd } });
        assert.deepEqual(
          { code: fromBundle.code, stderr: fromBundle.stderr },
          { code: fromMain.code, stderr: fromMain.stderr },
        );
      }
    });

    await t.step("compile with DENORT_BIN: host binary embeds the bundle, SHA256SUMS", async () => {
      const outDir = join(root, "compiled");
      await Deno.mkdir(outDir);
      await Deno.copyFile(bundlePath, join(outDir, "imgpull.js"));
      const deno = Deno.execPath();
      const result = await compile(outDir, join(outDir, "imgpull.js"), [], {
        DENORT_BIN: deno,
        DENO_DIR,
      });
      assert.equal(result.code, 0, result.stderr);
      const name = binaryName(Deno.build.target);
      assert.equal(name, `imgpull-${VERSION}-${Deno.build.target}`);
      assert.deepEqual(await listDir(outDir), [name, "SHA256SUMS", "imgpull.js"].sort());
      const binary = await Deno.readFile(join(outDir, name));
      assert.ok(binary.length > (await Deno.stat(deno)).size, "runtime plus program");
      // The embedded program is the stamped bundle, lib/ included.
      assert.ok(indexOfText(binary, `commit: "${commit}"`) >= 0, "stamp embedded");
      const mediaType = "application/vnd.docker.distribution.manifest.list.v2+json";
      assert.ok(indexOfText(binary, mediaType) >= 0, "lib/media_types.ts embedded");
      // Exactly the documented permissions, and no prompt ([] means "all" for that kind).
      const baked = bakedPermissions(binary);
      assert.deepEqual(baked.allow_env, [...ALLOWED_ENV]);
      for (const kind of ["allow_net", "allow_read", "allow_write", "allow_run"]) {
        assert.deepEqual(baked[kind], [], kind);
      }
      for (const kind of ["allow_sys", "allow_ffi"]) assert.equal(baked[kind], null, kind);
      assert.equal(baked.prompt, false);
      const sums = await run("sha256sum", ["--check", "--strict", "SHA256SUMS"], { cwd: outDir });
      assert.equal(sums.code, 0, sums.stdout + sums.stderr);
      assert.equal(sums.stdout, `${name}: OK\nimgpull.js: OK\n`);
    });

    await t.step("compile without a base runtime: one clear line, exit 1, no file", async () => {
      const outDir = join(root, "no-runtime");
      const denoDir = join(root, "empty-deno-dir");
      // Deno's downloads honour HTTPS_PROXY: a closed loopback port makes the download fail at
      // once, on any machine, without touching the network.
      const proxy = `http://127.0.0.1:${await freePort()}`;
      const target = "x86_64-apple-darwin";
      const result = await compile(outDir, bundlePath, ["--target", target], {
        HTTPS_PROXY: proxy,
        DENO_DIR: denoDir,
      });
      assert.equal(result.code, 1, result.stderr);
      assert.equal(result.stdout, "");
      const lines = result.stderr.trimEnd().split("\n");
      assert.equal(lines.length, 1, result.stderr);
      assert.match(
        lines[0],
        new RegExp(
          `^\\[-\\] compile: cannot get Deno's base runtime \\(denort\\) for ${target}: ` +
            `DENORT_BIN is not set and the download from https://dl\\.deno\\.land failed ` +
            `\\(.*refused.*\\); set DENORT_BIN to a denort .* binary for ${target}$`,
        ),
      );
      assert.deepEqual(await listDir(outDir), [], "no binary, no SHA256SUMS");
    });
  } finally {
    for (const close of closers.reverse()) await close().catch((e) => console.error(e));
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("publish: deno publish --dry-run passes (licence, exports, slow types)", async () => {
  const result = await run(Deno.execPath(), ["publish", "--dry-run", "--allow-dirty"], {
    cwd: ROOT,
    env: { NO_COLOR: "1", DENO_DIR, HOME: Deno.env.get("HOME") ?? "/nonexistent" },
  });
  assert.equal(result.code, 0, result.stdout + result.stderr);
  assert.match(result.stdout + result.stderr, /Success Dry run complete/);
  assert.match(result.stdout + result.stderr, /LICENSE/);
});

Deno.test("permissions and version: one list, one version, everywhere", async () => {
  const config = JSON.parse(await Deno.readTextFile(join(ROOT, "deno.json")));
  assert.equal(config.version, VERSION, "lib/version.ts VERSION is deno.json's version");
  assert.equal(config.license, "Apache-2.0");
  assert.deepEqual(CLI_PERMISSIONS, [...PERMISSIONS], "tests/helpers/cli.ts");
  assert.ok(
    config.tasks.pull.includes(` ${PERMISSIONS.join(" ")} `),
    `deno.json task "pull": ${config.tasks.pull}`,
  );
  const readme = await Deno.readTextFile(join(ROOT, "README.md"));
  for (const flag of PERMISSIONS) assert.ok(readme.includes(`\`${flag}\``), `README lists ${flag}`);
});
