/**
 * imgpull's version and build information: what `--version` prints and what
 * the `User-Agent` header says.
 *
 * The source commit is not known when imgpull runs from a checkout or a
 * URL (nothing is read from disk or git at run time, so the same code works
 * inside a compiled binary); `scripts/bundle.ts` stamps it into the bundle,
 * and the binaries are compiled from that bundle.
 * @module
 */

/** imgpull's version: the `version` of deno.json (a test keeps them equal). */
export const VERSION = "0.1.0";

/** The commit of an unstamped build (a checkout, or `main.ts` from a URL). */
export const UNKNOWN_COMMIT = "unknown";

/** What a build of imgpull is made of. */
export interface BuildInfo {
  /** imgpull's version, e.g. `0.1.0`. */
  version: string;
  /** The Deno runtime it runs on, e.g. `2.9.6`. */
  deno: string;
  /** Target triple, e.g. `x86_64-unknown-linux-gnu` (`Deno.build.target`). */
  target: string;
  /** Short source commit (`454ec79`, `454ec79-dirty`), or `unknown` when not stamped. */
  commit: string;
}

const COMMIT_PATTERN = /^(?:[0-9a-f]{7,40}(?:-dirty)?|unknown)$/;

let stampedCommit = UNKNOWN_COMMIT;

/**
 * Records the source commit of this build. Called once, by the stamp module
 * that `scripts/bundle.ts` generates and bundles ahead of `main.ts`; never by
 * library users.
 *
 * @example
 * ```ts
 * import { buildInfo, stampBuild } from "./version.ts";
 * stampBuild({ commit: "454ec79" });
 * console.log(buildInfo().commit); // 454ec79
 * ```
 */
export function stampBuild(stamp: { commit: string }): void {
  if (!COMMIT_PATTERN.test(stamp.commit)) {
    throw new TypeError(`not a commit stamp: ${JSON.stringify(stamp.commit)}`);
  }
  stampedCommit = stamp.commit;
}

/**
 * The version, runtime, target and commit of the running imgpull. Needs no
 * permission.
 *
 * @example
 * ```ts
 * import { buildInfo } from "./version.ts";
 * const { version, deno, target, commit } = buildInfo();
 * console.log(`${version} on Deno ${deno} (${target}), commit ${commit}`);
 * ```
 */
export function buildInfo(): BuildInfo {
  return {
    version: VERSION,
    deno: Deno.version.deno,
    target: Deno.build.target,
    commit: stampedCommit,
  };
}

function details(info: BuildInfo): string {
  return `deno ${info.deno}; ${info.target}; commit ${info.commit}`;
}

/**
 * The line `imgpull --version` prints:
 * `imgpull 0.1.0 (deno 2.9.6; x86_64-unknown-linux-gnu; commit 454ec79)`.
 *
 * @example
 * ```ts
 * import { versionText } from "./version.ts";
 * console.log(versionText());
 * ```
 */
export function versionText(info: BuildInfo = buildInfo()): string {
  return `imgpull ${info.version} (${details(info)})`;
}

/**
 * The same facts as {@link versionText} in `User-Agent` form (RFC 9110
 * product and comment): `imgpull/0.1.0 (deno 2.9.6; x86_64-unknown-linux-gnu; commit 454ec79)`.
 *
 * @example
 * ```ts
 * import { userAgent } from "./version.ts";
 * const headers = new Headers({ "user-agent": userAgent() });
 * ```
 */
export function userAgent(info: BuildInfo = buildInfo()): string {
  return `imgpull/${info.version} (${details(info)})`;
}
