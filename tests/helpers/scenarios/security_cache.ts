/**
 * Security scenarios (cache): the shared blob cache and `--import-tar`, run against the CLI.
 *
 * - cache-symlinks (11.4, 7.11): another local user who can write in the cache directory plants
 *   symlinks (a partial file aimed at a victim file, a lock aimed at a path to create, a
 *   `partial/` aimed at a directory for `--cache-prune` to empty), or the cache is not private;
 *   the victim must be untouched and an unsafe cache refused with a hint. A new cache is
 *   private (`0700`, blobs `0600`).
 * - import-tar-hostile (11.5): a tar whose sizes are negative, not numbers, huge or past the
 *   end is refused quickly (exit 8) instead of looping.
 * - cache-freshness (11.11): a warm pull counts as a use, so `--cache-prune --older-than 30s`
 *   right after it keeps the layers it copied.
 * @module
 */
import { join } from "node:path";
import { tarHeader } from "../../../lib/tar.ts";
import { buildImage, jsonBytes, KiB, type TestImage } from "../hostile_image.ts";
import { concat } from "../layers.ts";
import { type RunDirs, type Scenario, spawnImgpull } from "../hostile_runner.ts";
import { expect, fault } from "./kit.ts";

/** Report rows / tests of this module. */
export const CLASSES: { id: string; title: string }[] = [
  {
    id: "cache-symlinks",
    title: "a cache directory others can write in cannot be turned against its user",
  },
  { id: "import-tar-hostile", title: "hostile tar sizes in --import-tar are refused quickly" },
  { id: "cache-freshness", title: "a warm pull counts as a use of the blobs it copies" },
];

const VICTIM_TEXT = "the victim's own file\n";

/** `dir` as a private directory (how imgpull creates a cache), with `subdirs` in it. */
async function privateDirs(dir: string, ...subdirs: string[]): Promise<void> {
  await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
  await Deno.chmod(dir, 0o700);
  for (const sub of subdirs) await Deno.mkdir(join(dir, sub), { recursive: true, mode: 0o700 });
}

async function exists(path: string): Promise<boolean> {
  return await Deno.lstat(path).then(() => true, () => false);
}

function layerHex(image: TestImage): string {
  return image.layers[0].digest.slice("sha256:".length);
}

/**
 * A cache other than `dirs.cache` (the runner checks that one after the run, and a planted
 * symlink in it is the attack, not a fault): the later `--cache-dir` wins.
 */
async function otherCache(dirs: RunDirs): Promise<{ root: string; args: string[] }> {
  await privateDirs(dirs.cache);
  const root = join(dirs.home, "shared", "imgpull");
  return { root, args: ["--cache-dir", root] };
}

const symlinks: Scenario[] = [
  fault({
    id: "cache-partial-symlink",
    cls: "cache-symlinks",
    title: "a partial file planted as a symlink to a victim file: the victim is not written",
    code: 0,
    cache: true,
  }, async (dirs) => {
    const image = buildImage({ layers: [300 * KiB, 20 * KiB] });
    const victim = join(dirs.home, "victim.txt");
    await Deno.writeTextFile(victim, VICTIM_TEXT);
    await privateDirs(dirs.cache, "partial/sha256");
    await Deno.symlink(victim, join(dirs.cache, "partial", "sha256", layerHex(image)));
    return {
      image,
      check: async () => [
        ...expect(
          await Deno.readTextFile(victim) === VICTIM_TEXT,
          "the victim file was overwritten through the planted partial symlink",
        ),
        ...expect(
          (await Deno.lstat(victim)).isFile &&
            !(await Deno.lstat(join(dirs.cache, "blobs", "sha256", layerHex(image)))).isSymlink,
          "the cached blob is a symlink",
        ),
      ],
    };
  }),
  fault({
    id: "cache-lock-symlink",
    cls: "cache-symlinks",
    title: "a lock file planted as a symlink: nothing is created where it points",
    code: 0,
    cache: true,
  }, async (dirs) => {
    const image = buildImage({ layers: [100 * KiB] });
    const target = join(dirs.home, "created-through-the-lock");
    await privateDirs(dirs.cache, "locks/sha256");
    await Deno.symlink(target, join(dirs.cache, "locks", "sha256", `${layerHex(image)}.lock`));
    return {
      image,
      check: async () =>
        expect(!(await exists(target)), "a file was created where the planted lock points"),
    };
  }),
  fault({
    id: "cache-partial-dir-symlink-prune",
    cls: "cache-symlinks",
    title: "partial/ planted as a symlink to a directory, then --cache-prune: refused, " +
      "the directory keeps its files",
    code: 7,
    message: /symbolic link/,
    cache: true,
  }, async (dirs) => {
    const cache = await otherCache(dirs);
    const victimDir = join(dirs.home, "victim-dir");
    await Deno.mkdir(join(victimDir, "sha256"), { recursive: true });
    await Deno.writeTextFile(join(victimDir, "precious.txt"), VICTIM_TEXT);
    await Deno.writeTextFile(join(victimDir, "sha256", "nested.txt"), VICTIM_TEXT);
    await privateDirs(cache.root);
    await Deno.symlink(victimDir, join(cache.root, "partial"));
    return {
      args: [...cache.args, "--cache-prune"],
      expected: null,
      check: async () =>
        expect(
          await exists(join(victimDir, "precious.txt")) &&
            await exists(join(victimDir, "sha256", "nested.txt")),
          "--cache-prune deleted files in the directory a planted partial/ symlink points to",
        ),
    };
  }),
  fault({
    id: "cache-root-symlink",
    cls: "cache-symlinks",
    title: "the cache directory is a symlink: refused with a hint",
    code: 7,
    message: /symbolic link/,
    cache: true,
  }, async (dirs) => {
    const cache = await otherCache(dirs);
    const elsewhere = join(dirs.home, "elsewhere");
    await privateDirs(elsewhere);
    await Deno.mkdir(join(dirs.home, "shared"));
    await Deno.symlink(elsewhere, cache.root);
    return {
      args: cache.args,
      check: async () =>
        expect((await Array.fromAsync(Deno.readDir(elsewhere))).length === 0, "wrote through it"),
    };
  }),
  fault({
    id: "cache-root-group-writable",
    cls: "cache-symlinks",
    title: "a group-writable cache directory: refused, the hint says chmod 700",
    code: 7,
    message: /chmod 700/,
    cache: true,
  }, async (dirs) => {
    await Deno.mkdir(dirs.cache);
    await Deno.chmod(dirs.cache, 0o770);
    return {
      check: async () =>
        expect((await Array.fromAsync(Deno.readDir(dirs.cache))).length === 0, "used it"),
    };
  }),
  fault({
    id: "cache-area-world-writable",
    cls: "cache-symlinks",
    title: "a world-writable area (blobs/) in the cache: refused",
    code: 7,
    message: /writable by other users/,
    cache: true,
  }, async (dirs) => {
    await privateDirs(dirs.cache, "blobs");
    await Deno.chmod(join(dirs.cache, "blobs"), 0o777);
    return {};
  }),
  fault({
    id: "cache-root-other-owner",
    cls: "cache-symlinks",
    title: "a cache directory owned by another user: refused",
    code: 7,
    message: /another user/,
    cache: true,
    root: true,
  }, async (dirs) => {
    const cache = await otherCache(dirs);
    await privateDirs(cache.root);
    await Deno.chown(cache.root, 4242, 4242);
    return { args: cache.args };
  }),
  fault({
    id: "cache-new-is-private",
    cls: "cache-symlinks",
    title: "a new cache is private: directory 0700, blobs 0600",
    code: 0,
    cache: true,
  }, () => ({
    check: async (run, _outcome, dirs) => {
      const rootMode = (await Deno.stat(dirs.cache)).mode! & 0o777;
      const blobModes = await Promise.all(
        [run.image.config, ...run.image.layers].map(async (b) =>
          (await Deno.stat(join(dirs.cache, "blobs", "sha256", b.digest.slice(7)))).mode! & 0o777
        ),
      );
      return [
        ...expect(rootMode === 0o700, `cache directory mode ${rootMode.toString(8)}`),
        ...expect(
          blobModes.every((m) => (m & 0o077) === 0),
          `blob modes ${blobModes.map((m) => m.toString(8)).join(", ")}: readable by others`,
        ),
      ];
    },
  })),
];

// ---------------------------------------------------------------------------------------------
// Hostile tars.

const BLOCK = 512;

/** A header for `name` whose size field is `size` (12 raw bytes), checksum recomputed. */
function rawHeader(name: string, type: string, size: Uint8Array): Uint8Array {
  const header = tarHeader(name, 0, "file").slice();
  header.fill(0, 124, 136);
  header.set(size.subarray(0, 12), 124);
  header[156] = type.charCodeAt(0);
  header.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of header) sum += b;
  header.fill(0, 148, 156);
  header.set(new TextEncoder().encode(sum.toString(8).padStart(6, "0") + "\0 "), 148);
  return header;
}

function octalSize(value: number | string): Uint8Array {
  const text = typeof value === "number" ? value.toString(8).padStart(11, "0") : value;
  return new TextEncoder().encode(`${text}\0`.slice(0, 12));
}

function padded(data: Uint8Array): Uint8Array[] {
  const rest = (BLOCK - data.byteLength % BLOCK) % BLOCK;
  return [data, new Uint8Array(rest)];
}

/** A PAX extended header carrying `size=<value>`. */
function paxSize(value: string): Uint8Array[] {
  const body = ` size=${value}\n`;
  let length = body.length + 1;
  while (String(length).length + body.length !== length) length++;
  const data = new TextEncoder().encode(`${length}${body}`);
  return [rawHeader("PaxHeaders/layer.tar", "x", octalSize(data.byteLength)), ...padded(data)];
}

/** The kinds of hostile tar {@link hostileTar} builds. */
export const HOSTILE_TARS = [
  "pax-negative",
  "pax-non-decimal",
  "pax-huge",
  "octal-huge",
  "octal-garbage",
  "base256-negative",
  "past-eof",
] as const;
export type HostileTar = typeof HOSTILE_TARS[number];

/**
 * A small docker-archive-like tar (a `layer.tar` member and a `manifest.json` listing it)
 * whose `layer.tar` size is hostile in the way `kind` says.
 */
export function hostileTar(kind: HostileTar): Uint8Array<ArrayBuffer> {
  const layer = new TextEncoder().encode("not really a layer\n");
  const manifest = jsonBytes([{ Config: "config.json", RepoTags: [], Layers: ["layer.tar"] }]);
  const layerHeader = (size: Uint8Array) => rawHeader("layer.tar", "0", size);
  const member: Uint8Array[] = {
    // The tar: a PAX size of -1536 sends the reader back to the PAX header, forever.
    "pax-negative": () => [...paxSize("-1536"), layerHeader(octalSize(0))],
    "pax-non-decimal": () => [...paxSize("12.5"), layerHeader(octalSize(0)), ...padded(layer)],
    "pax-huge": () => [...paxSize("99999999999999999999999"), layerHeader(octalSize(0))],
    "octal-huge": () => [layerHeader(octalSize(8 ** 11 - 1)), ...padded(layer)],
    "octal-garbage": () => [layerHeader(octalSize("0000000002x")), ...padded(layer)],
    "base256-negative": () => [layerHeader(new Uint8Array(12).fill(0xff)), ...padded(layer)],
    "past-eof": () => [layerHeader(octalSize(64 * KiB)), ...padded(layer)],
  }[kind]();
  const tail = kind === "past-eof"
    ? []
    : [rawHeader("manifest.json", "0", octalSize(manifest.byteLength)), ...padded(manifest)];
  return concat([...member, ...tail, new Uint8Array(2 * BLOCK)]);
}

const hostileTars: Scenario[] = HOSTILE_TARS.map((kind) =>
  fault({
    id: `import-tar-${kind}`,
    cls: "import-tar-hostile",
    title: `--import-tar with a ${kind.replaceAll("-", " ")} member size: exit 8 quickly`,
    code: 8,
    cache: true,
  }, async (dirs) => {
    const tar = join(dirs.home, "saved.tar");
    await Deno.writeFile(tar, hostileTar(kind));
    return {
      args: ["--import-tar", tar],
      expected: null,
      check: (_run, outcome) =>
        expect(outcome.elapsedMs < 15_000, `took ${Math.round(outcome.elapsedMs)} ms`),
    };
  })
);

// ---------------------------------------------------------------------------------------------
// Freshness.

const freshness: Scenario[] = [
  fault({
    id: "warm-pull-then-prune",
    cls: "cache-freshness",
    title: "layers last used an hour ago, a warm pull, then --cache-prune --older-than 30s: " +
      "the layers stay",
    code: 0,
    cache: true,
  }, async (dirs) => {
    const image = buildImage({ layers: [200 * KiB, 30 * KiB] });
    await privateDirs(dirs.cache, "blobs/sha256");
    const hourAgo = new Date(Date.now() - 3_600_000);
    for (const layer of image.layers) {
      const path = join(dirs.cache, "blobs", "sha256", layer.digest.slice(7));
      await Deno.writeFile(path, layer.bytes, { mode: 0o600 });
      await Deno.utime(path, hourAgo, hourAgo);
    }
    return {
      image,
      check: async (run) => {
        const fetched = run.blobRequests().filter((r) => !r.path.endsWith(image.config.digest));
        const prune = await spawnImgpull(
          ["--cache-prune", "--older-than", "30s", "--cache-dir", dirs.cache],
          { cwd: dirs.out, env: { HOME: dirs.home } },
        );
        const kept = await Promise.all(
          image.layers.map((l) => exists(join(dirs.cache, "blobs", "sha256", l.digest.slice(7)))),
        );
        return [
          ...expect(fetched.length === 0, `the warm pull downloaded ${fetched.length} layers`),
          ...expect(prune.code === 0, `--cache-prune exited ${prune.code}: ${prune.stderr}`),
          ...expect(
            kept.every(Boolean),
            `--cache-prune --older-than 30s removed ${
              kept.filter((k) => !k).length
            } layers the pull just used`,
          ),
        ];
      },
    };
  }),
];

/** The scenarios, in class order. */
export const SCENARIOS: Scenario[] = [...symlinks, ...hostileTars, ...freshness];
