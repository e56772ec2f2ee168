/**
 * Platforms (`os/arch[/variant]`): parsing, normalisation and choosing an index entry,
 * with the rules of containerd's `platforms` package (database.go, compare.go).
 *
 * Pure functions only: the caller passes in the environment; the host architecture defaults to
 * `Deno.build.arch` (which needs no permission) and can be passed in for tests.
 *
 * @example
 * ```ts
 * const want = parsePlatform("linux/arm64/v8"); // { os: "linux", architecture: "arm64" }
 * selectPlatform(want, [{ os: "linux", architecture: "amd64" }, { os: "linux", architecture: "arm64", variant: "v8" }]);
 * // { index: 1, exact: true }
 * ```
 * @module
 */
import { InvalidPlatformError } from "./errors.ts";

/**
 * A platform as OCI descriptors and image configs write it.
 *
 * @example
 * ```ts
 * const pi: Platform = { os: "linux", architecture: "arm", variant: "v7" };
 * ```
 */
export interface Platform {
  /** Operating system, e.g. "linux", "windows". */
  os: string;
  /** CPU architecture in Go's spelling, e.g. "amd64", "arm64", "arm". */
  architecture: string;
  /** CPU variant, e.g. "v7" for arm, "v3" for amd64; absent when it is the baseline. */
  variant?: string;
  /** OS version; only Windows images use it, e.g. "10.0.20348.2700". */
  "os.version"?: string;
  /** Required OS features, e.g. ["win32k"]. */
  "os.features"?: string[];
}

/**
 * The entry {@link selectPlatform} chose.
 *
 * @example
 * ```ts
 * const m: PlatformMatch = { index: 2, exact: false }; // e.g. arm/v6 for an arm/v7 request
 * ```
 */
export interface PlatformMatch {
  /** Index into the candidate list. */
  index: number;
  /** False when only a compatible fallback matched (arm/v6 for arm/v7, 386 for amd64, ...). */
  exact: boolean;
}

// containerd's grammar: the os may carry "(version+feature+...)"; other parts are plain words.
const OS_COMPONENT = /^([A-Za-z0-9_-]+)(?:\(([A-Za-z0-9_.%-]*)((?:\+[A-Za-z0-9_.%-]+)*)\))?$/;
const COMPONENT = /^[A-Za-z0-9_.-]+$/;

/** containerd's `isKnownOS`, for a one-word specifier ("linux", "windows"). */
const KNOWN_OS = new Set([
  "aix",
  "android",
  "darwin",
  "dragonfly",
  "freebsd",
  "hurd",
  "illumos",
  "ios",
  "js",
  "linux",
  "nacl",
  "netbsd",
  "openbsd",
  "plan9",
  "solaris",
  "windows",
  "zos",
]);

/** containerd's `isKnownArch`, for a one-word specifier ("arm64", "x86_64"). */
const KNOWN_ARCH = new Set([
  "386",
  "amd64",
  "amd64p32",
  "arm",
  "armbe",
  "arm64",
  "arm64be",
  "ppc64",
  "ppc64le",
  "loong64",
  "mips",
  "mipsle",
  "mips64",
  "mips64le",
  "mips64p32",
  "mips64p32le",
  "ppc",
  "riscv",
  "riscv64",
  "s390",
  "s390x",
  "sparc",
  "sparc64",
  "wasm",
]);

/**
 * arm64 variants and the levels each can run, from containerd's compare.go: for each major
 * version, the highest minor it covers. v9.x runs v9.0..v9.x and then v8.0..v8.(x+5).
 */
const ARM64_LEVELS: Readonly<Record<string, readonly (readonly [number, number])[]>> = {
  "v8": [[8, 0]],
  "v8.0": [[8, 0]],
  "v8.1": [[8, 1]],
  "v8.2": [[8, 2]],
  "v8.3": [[8, 3]],
  "v8.4": [[8, 4]],
  "v8.5": [[8, 5]],
  "v8.6": [[8, 6]],
  "v8.7": [[8, 7]],
  "v8.8": [[8, 8]],
  "v8.9": [[8, 9]],
  "v9": [[9, 0], [8, 5]],
  "v9.0": [[9, 0], [8, 5]],
  "v9.1": [[9, 1], [8, 6]],
  "v9.2": [[9, 2], [8, 7]],
  "v9.3": [[9, 3], [8, 8]],
  "v9.4": [[9, 4], [8, 9]],
  "v9.5": [[9, 5], [8, 9]],
  "v9.6": [[9, 6], [8, 9]],
  "v9.7": [[9, 7], [8, 9]],
};

/** Builds the error with the specifier quoted and shortened. */
function invalid(spec: string, reason: string, hint?: string): InvalidPlatformError {
  const shown = spec.length > 100 ? spec.slice(0, 100) + "…" : spec;
  return new InvalidPlatformError(`invalid platform ${JSON.stringify(shown)}: ${reason}`, {
    hint: hint ?? 'expected os/arch[/variant], e.g. "linux/amd64" or "linux/arm/v7"',
  });
}

/**
 * Where a one-word specifier gets its missing half: the host architecture, as `Deno.build.arch`
 * spells it ("x86_64", "aarch64") or normalised. The os is always "linux" (see
 * {@link parsePlatform}).
 */
export interface PlatformDefaults {
  /** Host architecture; default `Deno.build.arch`. */
  arch?: string;
}

/**
 * Parses a platform specifier as containerd's `platforms.Parse` does, case-insensitively, and
 * normalises it ({@link normalizePlatform}):
 *
 * - `os/arch` and `os/arch/variant`; the os may carry containerd's `os(version+feature)` form,
 *   e.g. `windows(10.0.17763)/amd64`.
 * - one word: a known os ("linux", "windows", "macOS" → darwin) takes the host architecture;
 *   otherwise a known architecture ("arm64", "aarch64", "x86_64", "armhf", "i386", "s390x", …)
 *   takes the os "linux". containerd would take the host's os here; images are Linux images
 *   even on a macOS or Windows host (as for {@link hostPlatform}), and on Linux both agree.
 *
 * Throws {@link InvalidPlatformError} for anything else (exit code 2).
 *
 * @example
 * ```ts
 * parsePlatform("linux/arm/v7"); // { os: "linux", architecture: "arm", variant: "v7" }
 * parsePlatform("Linux/x86_64"); // { os: "linux", architecture: "amd64" }
 * parsePlatform("arm64"); // { os: "linux", architecture: "arm64" }
 * parsePlatform("linux", { arch: "aarch64" }); // { os: "linux", architecture: "arm64" }
 * ```
 */
export function parsePlatform(s: string, defaults: PlatformDefaults = {}): Platform {
  if (typeof s !== "string") {
    throw new InvalidPlatformError(`invalid platform: expected a string, got ${typeof s}`);
  }
  if (s === "") throw invalid(s, "platform is empty");
  if (s.includes("*")) throw invalid(s, "wildcards are not supported");
  // Split at most 4 ways, like containerd, so a hostile "a/a/a/..." costs nothing.
  const parts = s.split("/", 4);
  if (parts.length > 3) throw invalid(s, "too many components");

  const osMatch = OS_COMPONENT.exec(parts[0]);
  if (osMatch === null) {
    throw invalid(s, `invalid os ${JSON.stringify(parts[0].slice(0, 40))}`);
  }
  for (const part of parts.slice(1)) {
    if (!COMPONENT.test(part)) {
      throw invalid(
        s,
        `invalid component ${JSON.stringify(part.slice(0, 40))}: ` +
          'use letters, digits, "_", "." and "-"',
      );
    }
  }

  const p: Platform = { os: osMatch[1], architecture: parts[1] ?? "" };
  if (parts.length === 1) Object.assign(p, oneWord(s, osMatch[1], osMatch[0], defaults));
  if (parts.length === 3) p.variant = parts[2];
  if (osMatch[2]) p["os.version"] = decodeOsOption(s, osMatch[2]);
  if (osMatch[3]) {
    p["os.features"] = osMatch[3].slice(1).split("+").map((f) => decodeOsOption(s, f));
  }
  return normalizePlatform(p);
}

/**
 * containerd's rule for a specifier without "/": a known os first (with the host
 * architecture), else a known architecture (with os "linux").
 */
function oneWord(
  spec: string,
  name: string,
  whole: string,
  defaults: PlatformDefaults,
): { os: string; architecture: string } {
  const lower = name.toLowerCase();
  const os = lower === "macos" ? "darwin" : lower;
  if (KNOWN_OS.has(os)) {
    const arch = normalizePlatform({
      os: "linux",
      architecture: str(defaults.arch ?? Deno.build.arch),
    }).architecture;
    if (arch === "") throw invalid(spec, "the host architecture is unknown");
    return { os, architecture: arch };
  }
  const arch = normalizePlatform({ os: "linux", architecture: lower }).architecture;
  if (whole === name && KNOWN_ARCH.has(arch)) return { os: "linux", architecture: lower };
  throw invalid(
    spec,
    "unknown operating system or architecture",
    'expected os/arch[/variant], an os or an architecture, e.g. "linux/amd64", "linux/arm/v7" ' +
      'or "arm64"',
  );
}

/** containerd percent-encodes "%", "+", "(", ")" and "/" inside the os options. */
function decodeOsOption(spec: string, value: string): string {
  if (!value.includes("%")) return value;
  try {
    return decodeURIComponent(value);
  } catch {
    throw invalid(spec, `invalid percent-encoding in ${JSON.stringify(value.slice(0, 40))}`);
  }
}

/**
 * Canonical spelling of a platform, as containerd's `Normalize` (plus i486-i686):
 * x86_64/x86-64 → amd64 (v1 dropped), aarch64 → arm64, arm64/v8 → arm64, armhf → arm/v7,
 * armel → arm/v6, arm → arm/v7, i386..i686 → 386, macos → darwin; all lower case.
 * OS features are sorted and de-duplicated. Returns a new object.
 *
 * @example
 * ```ts
 * normalizePlatform({ os: "linux", architecture: "aarch64", variant: "v8" });
 * // { os: "linux", architecture: "arm64" }
 * ```
 */
export function normalizePlatform(p: Platform): Platform {
  const os = str(p.os).toLowerCase();
  let architecture = str(p.architecture).toLowerCase();
  let variant = str(p.variant).toLowerCase();
  switch (architecture) {
    case "i386":
    case "i486":
    case "i586":
    case "i686":
      architecture = "386";
      variant = "";
      break;
    case "x86_64":
    case "x86-64":
    case "amd64":
      architecture = "amd64";
      // v1 is the baseline every amd64 CPU has: the same as no variant.
      if (variant === "v1") variant = "";
      break;
    case "aarch64":
    case "arm64":
      architecture = "arm64";
      // v8 is the arm64 baseline, so it is the same as no variant.
      if (variant === "8" || variant === "v8" || variant === "v8.0") variant = "";
      else if (variant === "9" || variant === "9.0" || variant === "v9.0") variant = "v9";
      break;
    case "armhf":
      architecture = "arm";
      variant = "v7";
      break;
    case "armel":
      architecture = "arm";
      variant = "v6";
      break;
    case "arm":
      // An arm image without a variant is built for v7 by convention.
      if (variant === "" || variant === "7") variant = "v7";
      else if (variant === "5" || variant === "6" || variant === "8") variant = "v" + variant;
      break;
  }
  const out: Platform = { os: os === "macos" ? "darwin" : os, architecture };
  if (variant !== "") out.variant = variant;
  const osVersion = p["os.version"];
  if (typeof osVersion === "string" && osVersion !== "") out["os.version"] = osVersion;
  const features = p["os.features"];
  if (Array.isArray(features) && features.length > 0) {
    out["os.features"] = [...new Set(features.filter((f) => typeof f === "string" && f))].sort();
  }
  return out;
}

/** Registry JSON is untrusted: a missing or non-string field counts as empty. */
function str(value: unknown): string {
  return typeof value === "string" ? value : "";
}

/**
 * `os/arch[/variant]` exactly as given (no normalisation); a missing os or architecture is
 * shown as "unknown", as containerd does.
 *
 * @example
 * ```ts
 * formatPlatform({ os: "linux", architecture: "arm", variant: "v7" }); // "linux/arm/v7"
 * ```
 */
export function formatPlatform(p: Platform): string {
  const os = str(p?.os) || "unknown";
  const arch = str(p?.architecture) || "unknown";
  const variant = str(p?.variant);
  return variant === "" ? `${os}/${arch}` : `${os}/${arch}/${variant}`;
}

/** containerd's escaping inside `os(...)`: the characters its grammar uses. */
function encodeOsOption(value: string): string {
  return value.replace(/[%+()/]/g, (c) => "%" + c.charCodeAt(0).toString(16).toUpperCase());
}

/**
 * The platform a pull resolved to, for people: `os/arch[/variant]`, with the os version and
 * features in containerd's `os(version+feature)` form when present (containerd's `FormatAll`),
 * and, when the user typed something else, what they typed: `linux/arm64 (from "aarch64")`.
 * The result parses back ({@link parsePlatform}) to the same platform, apart from the note.
 *
 * @example
 * ```ts
 * describePlatform(parsePlatform("arm64"), "arm64"); // 'linux/arm64 (from "arm64")'
 * describePlatform(parsePlatform("linux/arm/v7"), "linux/arm/v7"); // "linux/arm/v7"
 * describePlatform({ os: "windows", architecture: "amd64", "os.version": "10.0.17763" });
 * // "windows(10.0.17763)/amd64"
 * ```
 */
export function describePlatform(resolved: Platform, given?: string): string {
  const version = str(resolved?.["os.version"]);
  const rawFeatures = resolved?.["os.features"];
  const features = Array.isArray(rawFeatures) ? rawFeatures.filter((f) => str(f) !== "") : [];
  let text = formatPlatform(resolved);
  if (version !== "" || features.length > 0) {
    const options = [version, ...features].map(encodeOsOption).join("+");
    text = text.replace(/^[^/]*/, (os) => `${os}(${options})`);
  }
  if (typeof given !== "string" || given === text) return text;
  const shown = given.length > 60 ? given.slice(0, 60) + "…" : given;
  return `${text} (from ${JSON.stringify(shown)})`;
}

/**
 * The platform Docker pulls by default: `DOCKER_DEFAULT_PLATFORM` when set and not blank,
 * else `linux/<host arch>` (images are Linux images even on a macOS host). `arch` is
 * `Deno.build.arch` ("x86_64" | "aarch64"), passed in by the caller. Like the Docker CLI
 * (containerd's `Parse`), a one-word `DOCKER_DEFAULT_PLATFORM` is accepted: a known os takes
 * the host architecture, a known architecture gets os "linux".
 *
 * @example
 * ```ts
 * hostPlatform({ arch: "aarch64" }); // { os: "linux", architecture: "arm64" }
 * hostPlatform({ arch: "x86_64", DOCKER_DEFAULT_PLATFORM: "linux/arm/v6" });
 * // { os: "linux", architecture: "arm", variant: "v6" }
 * ```
 */
export function hostPlatform(env: { DOCKER_DEFAULT_PLATFORM?: string; arch: string }): Platform {
  const host = normalizePlatform({ os: "linux", architecture: str(env.arch) });
  const fromEnv = str(env.DOCKER_DEFAULT_PLATFORM).trim();
  if (fromEnv === "") {
    if (host.architecture === "") throw new InvalidPlatformError("host architecture is unknown");
    return host;
  }
  const where = "(from DOCKER_DEFAULT_PLATFORM)";
  try {
    return parsePlatform(fromEnv, { arch: str(env.arch) });
  } catch (e) {
    if (e instanceof InvalidPlatformError) {
      throw new InvalidPlatformError(`${e.message} ${where}`, { hint: e.hint, cause: e });
    }
    throw e;
  }
}

/**
 * True for the `unknown/unknown` entries buildx adds to an index for attestations.
 *
 * @example
 * ```ts
 * isAttestationPlatform({ os: "unknown", architecture: "unknown" }); // true
 * isAttestationPlatform(undefined); // false
 * ```
 */
export function isAttestationPlatform(p?: Platform): boolean {
  return p !== undefined && p !== null && str(p.os).toLowerCase() === "unknown" &&
    str(p.architecture).toLowerCase() === "unknown";
}

/** Ceiling on a numeric variant we expand into fallbacks; real ones stop at v4 / v8. */
const MAX_LEVEL = 16;

/**
 * containerd's `platformVector`: the (normalised) architectures and variants a platform can
 * run, best first. Only the first entry is an exact match.
 */
function compatibleArchs(p: Platform): { architecture: string; variant: string }[] {
  const variant = p.variant ?? "";
  const vector = [{ architecture: p.architecture, variant }];
  const level = /^v?([0-9]{1,2})$/.exec(variant);
  const n = level === null ? 0 : Number(level[1]);
  switch (p.architecture) {
    case "amd64":
      // amd64/vN runs vN-1 .. v2 and the baseline; every amd64 runs 386 last.
      if (n > 1 && n <= MAX_LEVEL) {
        for (let v = n - 1; v >= 2; v--) vector.push({ architecture: "amd64", variant: `v${v}` });
        vector.push({ architecture: "amd64", variant: "" });
      }
      vector.push({ architecture: "386", variant: "" });
      break;
    case "arm":
      // arm/vN runs vN-1 down to v5.
      if (n > 5 && n <= MAX_LEVEL) {
        for (let v = n - 1; v >= 5; v--) vector.push({ architecture: "arm", variant: `v${v}` });
      }
      break;
    case "arm64": {
      const levels = ARM64_LEVELS[variant === "" ? "v8" : variant];
      // containerd matches nothing at all for an arm64 variant it does not know; we keep
      // at least the exact match.
      if (levels === undefined) break;
      vector.length = 0;
      for (const [major, top] of levels) {
        for (let minor = top; minor >= 0; minor--) {
          const v = minor === 0 ? `v${major}` : `v${major}.${minor}`;
          vector.push({ architecture: "arm64", variant: v === "v8" ? "" : v });
        }
      }
      // Every arm64 CPU also runs 32-bit arm/v8 and what that runs.
      for (let v = 8; v >= 5; v--) vector.push({ architecture: "arm", variant: `v${v}` });
      break;
    }
  }
  return vector;
}

/** For Windows, the image must be built for the same major.minor.build as requested. */
function osVersionMatches(requested: Platform, candidate: Platform): boolean {
  const want = requested["os.version"];
  const have = candidate["os.version"];
  if (requested.os !== "windows" || !want || !have) return true;
  const prefix = (v: string) => v.split(".").slice(0, 3).join(".");
  return prefix(want) === prefix(have);
}

/** containerd: a candidate's OS features must all be among the requested ones. */
function osFeaturesMatch(requested: Platform, candidate: Platform): boolean {
  const have = candidate["os.features"] ?? [];
  const want = new Set(requested["os.features"] ?? []);
  return have.every((f) => want.has(f));
}

/**
 * Picks the index entry to pull for `requested`, as containerd's `platforms.Only` does.
 * Both sides are normalised first, so `arm64` and `arm64/v8` are the same (exact) match.
 * Failing an exact match, compatible fallbacks are taken, best first:
 *
 * - amd64/vN: vN-1 … v2, then plain amd64 (or v1), then 386; plain amd64: 386.
 * - arm/vN: vN-1 … v5 (arm/v7 → v6 → v5).
 * - arm64: lower arm64 levels (v8.x, v9.x), then arm/v8 … arm/v5.
 *
 * Among equally good entries the first wins. Undefined entries (no platform) and
 * `unknown/unknown` (attestations) never match. os.version and os.features only count for
 * non-Linux platforms. Returns undefined when nothing fits.
 *
 * @example
 * ```ts
 * selectPlatform(parsePlatform("linux/arm/v7"), [
 *   { os: "linux", architecture: "arm", variant: "v6" },
 *   { os: "linux", architecture: "amd64" },
 * ]); // { index: 0, exact: false }
 * ```
 */
export function selectPlatform(
  requested: Platform,
  candidates: readonly (Platform | undefined)[],
): PlatformMatch | undefined {
  const want = normalizePlatform(requested);
  if (want.os === "" || want.architecture === "" || isAttestationPlatform(want)) return undefined;
  const vector = compatibleArchs(want);
  const linux = want.os === "linux";
  let best: { index: number; rank: number } | undefined;
  for (let index = 0; index < candidates.length; index++) {
    const raw = candidates[index];
    if (raw === undefined || raw === null || typeof raw !== "object") continue;
    const c = normalizePlatform(raw);
    if (isAttestationPlatform(c) || c.os !== want.os) continue;
    if (!linux && !(osVersionMatches(want, c) && osFeaturesMatch(want, c))) continue;
    const variant = c.variant ?? "";
    const rank = vector.findIndex((v) =>
      v.architecture === c.architecture && v.variant === variant
    );
    if (rank < 0) continue;
    if (best === undefined || rank < best.rank) best = { index, rank };
    if (rank === 0) break; // Nothing beats an exact match, and the first one wins.
  }
  return best && { index: best.index, exact: best.rank === 0 };
}
