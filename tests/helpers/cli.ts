/**
 * Runs the imgpull CLI as users do: `deno run` with exactly the permissions
 * the README documents (no -A), as a child process.
 * @module
 */
import { type CommandResult, run } from "./process.ts";

/** The documented permissions (README "Permissions"; one list in scripts/permissions.ts). */
export { PERMISSIONS } from "../../scripts/permissions.ts";
import { PERMISSIONS } from "../../scripts/permissions.ts";

const MAIN = new URL("../../main.ts", import.meta.url).pathname;

/** Options for {@link imgpull}. */
export interface CliOptions {
  cwd?: string;
  /** Extra environment; HOME defaults to an empty temp-free value given by the caller. */
  env?: Record<string, string>;
  stdin?: string;
}

/** Deno's own cache, kept when a test points HOME elsewhere (so main.ts is not recompiled). */
const DENO_DIR = Deno.env.get("DENO_DIR") ?? `${Deno.env.get("HOME")}/.cache/deno`;

/** Runs `imgpull ARGS…` and returns its exit code and output. */
export function imgpull(args: string[], options: CliOptions = {}): Promise<CommandResult> {
  return run(Deno.execPath(), ["run", "--quiet", "--no-config", ...PERMISSIONS, MAIN, ...args], {
    cwd: options.cwd,
    env: { NO_COLOR: "1", DENO_DIR, ...options.env },
    stdin: options.stdin === undefined ? undefined : new TextEncoder().encode(options.stdin),
  });
}
