/**
 * The imgpull CLI for the output-format tests, with binary stdout: `-o -` writes a tar to stdout,
 * which tests/helpers/cli.ts would decode as text. Same documented permissions, same Deno cache.
 * @module
 */
import { PERMISSIONS } from "../cli.ts";

const MAIN = new URL("../../../main.ts", import.meta.url).pathname;
/** Deno's own cache, kept when a test points HOME elsewhere (so main.ts is not recompiled). */
const DENO_DIR = Deno.env.get("DENO_DIR") ?? `${Deno.env.get("HOME")}/.cache/deno`;

/** Where and how the CLI runs. */
export interface RawCliOptions {
  cwd: string;
  env?: Record<string, string>;
  stdin?: string | Uint8Array;
}

/** A finished CLI run with stdout as bytes. */
export interface RawResult {
  code: number;
  stdout: Uint8Array;
  stderr: string;
}

function command(args: string[], options: RawCliOptions, stdout: "piped" | "null") {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "--quiet", "--no-config", ...PERMISSIONS, MAIN, ...args],
    cwd: options.cwd,
    env: { NO_COLOR: "1", DENO_DIR, ...options.env },
    stdin: options.stdin === undefined ? "null" : "piped",
    stdout,
    stderr: "piped",
  });
}

async function feed(child: Deno.ChildProcess, stdin: string | Uint8Array | undefined) {
  if (stdin === undefined) return;
  const writer = child.stdin.getWriter();
  await writer.write(typeof stdin === "string" ? new TextEncoder().encode(stdin) : stdin);
  await writer.close();
}

/** Runs `imgpull ARGS…` and returns its exit code, stdout bytes and stderr text. */
export async function imgpullRaw(args: string[], options: RawCliOptions): Promise<RawResult> {
  const child = command(args, options, "piped").spawn();
  await feed(child, options.stdin);
  const out = await child.output();
  return { code: out.code, stdout: out.stdout, stderr: new TextDecoder().decode(out.stderr) };
}

/** Both ends of `imgpull ARGS… | CONSUMER…`. */
export interface PipeResult {
  imgpull: { code: number; stderr: string };
  consumer: { code: number; stdout: string; stderr: string };
}

/**
 * Runs `imgpull ARGS… | CMD CMD_ARGS…` as a shell pipe would: imgpull's stdout streams straight
 * into the consumer's stdin while both run.
 */
export async function imgpullPipe(
  args: string[],
  options: RawCliOptions,
  cmd: string,
  cmdArgs: string[],
  cmdEnv?: Record<string, string>,
): Promise<PipeResult> {
  const producer = command(args, options, "piped").spawn();
  const consumer = new Deno.Command(cmd, {
    args: cmdArgs,
    env: cmdEnv,
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  // stderr is read while stdout streams: a full stderr pipe would block imgpull.
  const stderr = new Response(producer.stderr).arrayBuffer();
  const [, produced, consumed] = await Promise.all([
    feed(producer, options.stdin),
    (async () => {
      // Piping closes the consumer's stdin when imgpull's stdout ends (or errors).
      await producer.stdout.pipeTo(consumer.stdin).catch(() => {});
      const text = new TextDecoder().decode(new Uint8Array(await stderr));
      return { code: (await producer.status).code, stderr: text };
    })(),
    consumer.output(),
  ]);
  const decoder = new TextDecoder();
  return {
    imgpull: produced,
    consumer: {
      code: consumed.code,
      stdout: decoder.decode(consumed.stdout),
      stderr: decoder.decode(consumed.stderr),
    },
  };
}
