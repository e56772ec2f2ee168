/**
 * Reliability scenarios, stopping cleanly: SIGINT / SIGTERM during a download, a full disk,
 * a read-only or unusable output.
 * @module
 */
import { join } from "node:path";
import { stallAfter } from "../fault_registry.ts";
import { type ImageOptions, KiB, MiB } from "../hostile_image.ts";
import { mountTmpfs, type RunDirs, type Scenario, unmount } from "../hostile_runner.ts";
import { expect, fault, type FaultSetup, pathOf, signal, targetPath } from "./kit.ts";

/** Report rows / tests of this module. */
export const CLASSES: { id: string; title: string }[] = [
  { id: "interrupt", title: "SIGINT / SIGTERM during a download" },
  { id: "local-disk", title: "disk full, read-only or unusable output" },
];

function interruptScenario(sig: "SIGINT" | "SIGTERM", cache: boolean): Scenario {
  return fault({
    id: `${sig.toLowerCase()}-${cache ? "cache" : "no-cache"}`,
    cls: "interrupt",
    title: `${sig} during a stalled layer download (${cache ? "--cache-dir" : "--no-cache"})`,
    code: 130,
    message: /Interrupted/,
    cache,
    preexisting: sig === "SIGINT" && !cache,
  }, () => {
    const started = signal();
    return {
      imageOptions: { layers: [400 * KiB, 48 * KiB] },
      handler: (image) => (req, ctx) => {
        if (pathOf(req) !== targetPath(image, "layer") || !ctx.bytes) return undefined;
        setTimeout(started.resolve, 300);
        return stallAfter(ctx.bytes.slice(0, 200 * KiB), {
          "content-length": String(ctx.bytes.byteLength),
        });
      },
      interrupt: () => ({ signal: sig, after: started.promise }),
      check: async (run, _outcome, dirs) => {
        if (!cache) return [];
        const hex = run.image.layers[0].digest.slice(7);
        const partial = join(dirs.cache, "partial", "sha256", hex);
        const exists = (p: string) => Deno.stat(p).then(() => true, () => false);
        return expect(
          await exists(partial) && await exists(`${partial}.json`),
          "the cache kept no resumable partial of the interrupted layer",
        );
      },
    };
  });
}

const TMPFS_IMAGE: ImageOptions = { layers: [MiB, MiB, MiB] };

/** The output directory on a 2 MiB tmpfs, too small for the image. */
async function fullOutputDisk(dirs: RunDirs): Promise<FaultSetup> {
  await mountTmpfs(dirs.out, "size=2m");
  return { imageOptions: TMPFS_IMAGE, extraClose: () => unmount(dirs.out) };
}

const localDisk: Scenario[] = [
  fault({
    id: "disk-full-no-cache",
    cls: "local-disk",
    title: "output on a full 2 MiB tmpfs, --no-cache: exit 7",
    code: 7,
    message: /no space left on device/i,
    root: true,
    preexisting: true,
  }, fullOutputDisk),
  fault({
    id: "disk-full-archive",
    cls: "local-disk",
    title: "output on a full 2 MiB tmpfs, cache elsewhere: exit 7",
    code: 7,
    message: /no space left on device/i,
    cache: true,
    root: true,
  }, fullOutputDisk),
  fault({
    id: "output-read-only",
    cls: "local-disk",
    title: "read-only output directory: exit 7 before any download",
    code: 7,
    message: /read-only|permission|cannot write/i,
    root: true,
    preexisting: true,
  }, async (dirs) => {
    await mountTmpfs(dirs.out, "size=1m");
    if (dirs.preexisting) await Deno.writeTextFile(dirs.output, "an archive from before\n");
    await runMount(["-o", "remount,ro", dirs.out]);
    return {
      ownsDestination: true,
      check: (run) =>
        expect(run.blobRequests().length === 0, `${run.blobRequests().length} blob requests`),
      extraClose: () => unmount(dirs.out),
    };
  }),
  fault({
    id: "output-is-directory",
    cls: "local-disk",
    title: "the output path is a directory: exit 7 before any download",
    code: 7,
    message: /directory/,
  }, async (dirs) => {
    await Deno.mkdir(join(dirs.out, "image.tar"));
    return {
      output: join(dirs.out, "image.tar"),
      ownsDestination: true,
      check: (run) =>
        expect(run.blobRequests().length === 0, `${run.blobRequests().length} blob requests`),
    };
  }),
  fault({
    id: "output-dir-missing",
    cls: "local-disk",
    title: "the output's directory does not exist: exit 7 before any download",
    code: 7,
    message: /no such file|cannot write/i,
  }, (dirs) => ({
    output: join(dirs.out, "missing", "image.tar"),
    ownsDestination: true,
    check: (run) =>
      expect(run.blobRequests().length === 0, `${run.blobRequests().length} blob requests`),
  })),
];

async function runMount(args: string[]): Promise<void> {
  const { code, stderr } = await new Deno.Command("mount", { args, stderr: "piped" }).output();
  if (code !== 0) throw new Error(`mount ${args.join(" ")}: ${new TextDecoder().decode(stderr)}`);
}

/** Every scenario of this family, in class order. */
export const SCENARIOS: Scenario[] = [
  interruptScenario("SIGINT", false),
  interruptScenario("SIGTERM", false),
  interruptScenario("SIGINT", true),
  interruptScenario("SIGTERM", true),
  ...localDisk,
];
