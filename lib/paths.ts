/**
 * Paths the user gives (`-o`, `--cache-dir`), split the way the operating system reads them:
 * `C:\out\image.tar` lives in `C:\out` on Windows, and `/` is the only separator elsewhere.
 * Paths imgpull builds itself under such a directory use `/`, which Windows accepts too.
 *
 * @module
 */
import { posix, win32 } from "node:path";

/** The directory and file name of `path`, for the given OS (default: this one). */
export function splitPath(
  path: string,
  os: typeof Deno.build.os = Deno.build.os,
): { dir: string; base: string } {
  const p = os === "windows" ? win32 : posix;
  return { dir: p.dirname(path), base: p.basename(path) };
}

/**
 * `dir` joined with `name` for the given OS.
 *
 * @example
 * ```ts
 * joinPath("C:\\out", ".x.partial", "windows"); // "C:\\out\\.x.partial"
 * ```
 */
export function joinPath(
  dir: string,
  name: string,
  os: typeof Deno.build.os = Deno.build.os,
): string {
  return (os === "windows" ? win32 : posix).join(dir, name);
}
