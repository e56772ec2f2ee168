/**
 * Image references, normalised the way Docker does it
 * (distribution/reference v0.6 `ParseNormalizedNamed`).
 *
 * Pure functions only: no I/O, no globals. Every rejection is an
 * {@link InvalidReferenceError} whose message says what is wrong.
 *
 * @example
 * ```ts
 * const ref = parseReference("nginx");
 * // { registry: "docker.io", repository: "library/nginx", tag: "latest" }
 * registryApiHost(ref); // "registry-1.docker.io"
 * formatReference(ref); // "nginx:latest"
 * ```
 * @module
 */
import { InvalidReferenceError } from "./errors.ts";

/**
 * The registry name Docker Hub references normalise to.
 *
 * @example
 * ```ts
 * parseReference("nginx").registry === DOCKER_HUB; // true
 * ```
 */
export const DOCKER_HUB = "docker.io";

/** The legacy Hub name ("the Docker Index"), normalised to {@link DOCKER_HUB}. */
const LEGACY_HUB = "index.docker.io";

/** Where Hub's registry API really lives. */
const HUB_API_HOST = "registry-1.docker.io";

/** Namespace of Hub's official images. */
const OFFICIAL_PREFIX = "library/";

/** Default tag when neither a tag nor a digest is given. */
const DEFAULT_TAG = "latest";

/** distribution's `RepositoryNameTotalLengthMax`; since v0.6 it counts the path only. */
const MAX_REPOSITORY_LENGTH = 255;

/**
 * Longest input we look at. The grammar puts no bound on the registry host, but no real
 * reference comes near this; refusing early keeps hostile input cheap.
 */
const MAX_INPUT_LENGTH = 4096;

/**
 * A parsed, normalised image reference.
 *
 * @example
 * ```ts
 * const ref: Reference = { registry: "docker.io", repository: "library/nginx", tag: "latest" };
 * ```
 */
export interface Reference {
  /** Registry as the user names it, normalised: "docker.io" for Hub (also for input "index.docker.io"), else "host[:port]" lower-cased host. */
  registry: string;
  /** Repository path, e.g. "library/nginx", "org/app". */
  repository: string;
  /** Tag if given (or "latest" when neither tag nor digest given). */
  tag?: string;
  /** "sha256:<64 hex>" if given. When both tag and digest were given, both are kept; the digest wins for pulling. */
  digest?: string;
}

// A registry written as a bare IPv6 address (`::1:5000/app`): at least two colons before the
// first slash and nothing but hex digits, colons and dots. The last group is taken as the port
// when it looks like one (the usual intent), for the hint only.
const UNBRACKETED_IPV6 = /^([0-9a-f.]*:[0-9a-f.]*:[0-9a-f:.]*?)(?::([0-9]{2,5}))?(?=\/)/i;

// One path component: alphanumeric runs joined by ".", "_", "__" or dashes. distribution
// writes the dash separator as `[-]*`; `-+` matches the same language without the
// catastrophic backtracking an empty-matching separator causes in a backtracking engine.
const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
// A DNS label as distribution accepts it (upper case allowed; we lower-case afterwards).
const HOST_LABEL = /^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$/i;
const TAG = /^\w[\w.-]{0,127}$/;
// Docker refuses a bare image ID where a name is expected.
const IMAGE_ID = /^[a-f0-9]{64}$/;
const SCHEME = /^[a-z][a-z0-9+.-]*:\/\//i;
/** Digest algorithms we can verify, with the length of their hex encoding. */
const DIGEST_HEX_LENGTH: Readonly<Record<string, number>> = { sha256: 64, sha512: 128 };

/** Quotes a piece of input for a message, shortened so hostile input stays readable. */
function quote(text: string, max = 64): string {
  return JSON.stringify(text.length > max ? text.slice(0, max) + "…" : text);
}

/** Builds the error, quoting the whole input. */
function invalid(input: string, reason: string, hint?: string): InvalidReferenceError {
  return new InvalidReferenceError(`invalid reference ${quote(input, 100)}: ${reason}`, { hint });
}

/**
 * Parses and normalises an image reference the way `docker pull` does.
 *
 * - The first path component is a registry only if it contains "." or ":" or is
 *   "localhost"; otherwise the image is on Docker Hub.
 * - "index.docker.io" becomes "docker.io"; one-component Hub names get "library/".
 * - Without tag or digest the tag is "latest"; with both, both are kept.
 *
 * Throws {@link InvalidReferenceError} for anything Docker would refuse.
 *
 * @example
 * ```ts
 * parseReference("localhost:5000/app:1.0");
 * // { registry: "localhost:5000", repository: "app", tag: "1.0" }
 * parseReference("Nginx"); // throws: invalid reference "Nginx": repository name must be lowercase
 * ```
 */
export function parseReference(input: string): Reference {
  if (typeof input !== "string") {
    throw new InvalidReferenceError(`invalid reference: expected a string, got ${typeof input}`);
  }
  if (input === "") throw invalid(input, "reference is empty");
  if (input.length > MAX_INPUT_LENGTH) {
    throw invalid(input, `reference is longer than ${MAX_INPUT_LENGTH} characters`);
  }
  if (/\s/.test(input)) throw invalid(input, "reference must not contain whitespace");
  if (SCHEME.test(input)) {
    const rest = input.replace(SCHEME, "");
    throw invalid(input, "a reference has no scheme", `write it without the scheme: ${rest}`);
  }
  const unbracketed = UNBRACKETED_IPV6.exec(input);
  if (unbracketed) {
    const [, address, port = ""] = unbracketed;
    const rest = input.slice(unbracketed[0].length);
    throw invalid(
      input,
      "invalid registry: an IPv6 address must be in brackets",
      `write [${address}]${port ? `:${port}` : ""}${rest}`,
    );
  }
  if (IMAGE_ID.test(input)) {
    throw invalid(
      input,
      "a 64-character hexadecimal string is an image ID, not a repository name",
      "to pull by digest, write name@sha256:<hex>",
    );
  }

  // "@" cannot occur in a name or tag, so the first one starts the digest.
  let digest: string | undefined;
  let rest = input;
  const at = input.indexOf("@");
  if (at >= 0) {
    digest = input.slice(at + 1);
    rest = input.slice(0, at);
    if (digest === "") throw invalid(input, 'digest is missing after "@"');
  }

  // A ":" after the last "/" starts the tag; one before it belongs to a registry port.
  let tag: string | undefined;
  let name = rest;
  const colon = rest.lastIndexOf(":");
  if (colon > rest.lastIndexOf("/")) {
    tag = rest.slice(colon + 1);
    name = rest.slice(0, colon);
    if (tag === "") throw invalid(input, 'tag is missing after ":"');
  }
  if (name === "") throw invalid(input, "repository name is missing");

  const { registry, repository } = splitRegistry(input, name);

  if (tag !== undefined && !TAG.test(tag)) {
    throw invalid(
      input,
      `invalid tag ${quote(tag)}: a tag is 1 to 128 letters, digits, "_", "." or "-", ` +
        'and cannot start with "." or "-"',
    );
  }
  if (digest !== undefined) checkDigest(input, digest);

  const ref: Reference = { registry, repository };
  if (tag !== undefined) ref.tag = tag;
  else if (digest === undefined) ref.tag = DEFAULT_TAG;
  if (digest !== undefined) ref.digest = digest;
  return ref;
}

/** distribution's `splitDockerDomain` plus validation of both halves. */
function splitRegistry(input: string, name: string): { registry: string; repository: string } {
  let registry = DOCKER_HUB;
  let repository = name;
  const slash = name.indexOf("/");
  if (slash >= 0) {
    const first = name.slice(0, slash);
    // distribution v0.6 also takes an upper-case first component ("Foo/bar") for a host;
    // its own tests call that a FIXME. We keep the classic rule and report the upper case,
    // which is what the user almost always got wrong.
    if (first === "localhost" || first.includes(".") || first.includes(":")) {
      registry = checkHost(input, first);
      repository = name.slice(slash + 1);
      // Hosts are case-insensitive, so "Docker.IO" is Hub too.
      if (registry === LEGACY_HUB) registry = DOCKER_HUB;
    }
  }
  if (registry === DOCKER_HUB && !repository.includes("/")) {
    repository = OFFICIAL_PREFIX + repository;
  }
  checkRepository(input, registry, repository);
  return { registry, repository };
}

/** Validates `host[:port]` (name, IPv4 or bracketed IPv6) and returns it with the host lower-cased. */
function checkHost(input: string, hostPort: string): string {
  let host: string;
  let port: string | undefined;
  if (hostPort.startsWith("[")) {
    const close = hostPort.indexOf("]");
    // distribution only asks for hex digits and colons inside the brackets; we also want a
    // real address, since "[:::]" could never be dialled and URL parsing would throw on it.
    if (close < 0 || expandIpv6(hostPort.slice(1, close).toLowerCase()) === undefined) {
      throw invalid(
        input,
        `invalid registry host ${quote(hostPort)}: expected [IPv6 address] in hex notation`,
      );
    }
    host = hostPort.slice(0, close + 1);
    const after = hostPort.slice(close + 1);
    if (after !== "") {
      if (!after.startsWith(":")) {
        throw invalid(input, `invalid registry host ${quote(hostPort)}`);
      }
      port = after.slice(1);
    }
  } else {
    const c = hostPort.indexOf(":");
    host = c >= 0 ? hostPort.slice(0, c) : hostPort;
    port = c >= 0 ? hostPort.slice(c + 1) : undefined;
    if (host === "" || !host.split(".").every((label) => HOST_LABEL.test(label))) {
      throw invalid(
        input,
        `invalid registry host ${quote(host)}: ` +
          'use letters, digits and "-" in dot-separated labels',
      );
    }
  }
  if (port !== undefined) {
    // distribution accepts any digits; a port outside 1-65535 could never be dialled, and
    // URL parsing would throw a TypeError far from here.
    if (!/^[0-9]{1,5}$/.test(port) || Number(port) < 1 || Number(port) > 65535) {
      throw invalid(input, `invalid registry port ${quote(port)}: expected 1-65535`);
    }
    return `${host.toLowerCase()}:${port}`;
  }
  return host.toLowerCase();
}

/** Validates the repository path: lower case, component grammar, length. */
function checkRepository(input: string, registry: string, repository: string): void {
  const lower = repository.toLowerCase();
  if (lower !== repository) {
    // Docker checks case first, so "Nginx" gets the case error even if more is wrong.
    const fixable = lower.split("/").every((c) => PATH_COMPONENT.test(c));
    const hint = fixable
      ? `did you mean ${JSON.stringify(familiarName({ registry, repository: lower }))}?`
      : undefined;
    throw invalid(input, "repository name must be lowercase", hint);
  }
  if (repository.length > MAX_REPOSITORY_LENGTH) {
    throw invalid(
      input,
      `repository name must not be more than ${MAX_REPOSITORY_LENGTH} characters`,
    );
  }
  const components = repository.split("/");
  for (let i = 0; i < components.length; i++) {
    const component = components[i];
    if (component === "") {
      const reason = i === components.length - 1
        ? 'repository name must not end with "/"'
        : i === 0
        ? 'repository name must not start with "/"'
        : 'repository name must not contain "//"';
      throw invalid(input, reason);
    }
    if (!PATH_COMPONENT.test(component)) {
      throw invalid(
        input,
        `invalid repository name component ${quote(component)}: use lowercase letters ` +
          'and digits, separated by ".", "_", "__" or "-"',
      );
    }
  }
}

/** Accepts `sha256:<64 hex>` and `sha512:<128 hex>`, lower-case hex only, as go-digest does. */
function checkDigest(input: string, digest: string): void {
  const colon = digest.indexOf(":");
  if (colon <= 0) {
    throw invalid(input, "digest must be algorithm:hex, e.g. sha256:<64 hex digits>");
  }
  const algorithm = digest.slice(0, colon);
  const hex = digest.slice(colon + 1);
  if (!Object.hasOwn(DIGEST_HEX_LENGTH, algorithm)) {
    throw invalid(
      input,
      `unsupported digest algorithm ${quote(algorithm, 32)}: ` +
        "expected sha256 or sha512",
    );
  }
  if (!/^[0-9a-f]*$/.test(hex)) {
    throw invalid(input, "digest must be lower-case hexadecimal after the algorithm");
  }
  const want = DIGEST_HEX_LENGTH[algorithm];
  if (hex.length !== want) {
    throw invalid(
      input,
      `${algorithm} digest must have ${want} hex digits, got ${hex.length}`,
    );
  }
}

/**
 * The host that serves the registry API: Hub's API is not at "docker.io".
 *
 * @example
 * ```ts
 * registryApiHost(parseReference("nginx")); // "registry-1.docker.io"
 * registryApiHost("ghcr.io"); // "ghcr.io"
 * ```
 */
export function registryApiHost(ref: Reference | string): string {
  const registry = typeof ref === "string" ? ref : ref.registry;
  const lower = registry.toLowerCase();
  return lower === DOCKER_HUB || lower === LEGACY_HUB ? HUB_API_HOST : registry;
}

/**
 * The short name Docker shows: no "docker.io/", no "library/" for official images.
 *
 * @example
 * ```ts
 * familiarName(parseReference("docker.io/library/nginx")); // "nginx"
 * familiarName(parseReference("quay.io/org/app")); // "quay.io/org/app"
 * ```
 */
export function familiarName(ref: Reference): string {
  if (ref.registry !== DOCKER_HUB) return fullName(ref);
  // Like distribution, only strip "library/" when nothing nested follows, so that the
  // familiar name parses back to the same repository.
  if (ref.repository.startsWith(OFFICIAL_PREFIX)) {
    const rest = ref.repository.slice(OFFICIAL_PREFIX.length);
    if (!rest.includes("/")) return rest;
  }
  return ref.repository;
}

/**
 * The fully qualified name, registry included.
 *
 * @example
 * ```ts
 * fullName(parseReference("nginx")); // "docker.io/library/nginx"
 * ```
 */
export function fullName(ref: Reference): string {
  return `${ref.registry}/${ref.repository}`;
}

/**
 * The familiar form with `:tag` and/or `@digest`; parses back to the same reference.
 *
 * @example
 * ```ts
 * formatReference(parseReference("docker.io/library/redis:7")); // "redis:7"
 * ```
 */
export function formatReference(ref: Reference): string {
  let s = familiarName(ref);
  if (ref.tag !== undefined) s += `:${ref.tag}`;
  if (ref.digest !== undefined) s += `@${ref.digest}`;
  return s;
}

/**
 * True for registries on this machine: "localhost", 127.0.0.0/8 and IPv6 loopback, with or
 * without a port. Anything it is unsure about is not loopback.
 *
 * @example
 * ```ts
 * isLoopbackRegistry("127.0.0.1:5000"); // true
 * isLoopbackRegistry("[::1]:5000"); // true
 * isLoopbackRegistry("128.0.0.1"); // false
 * ```
 */
export function isLoopbackRegistry(registry: string): boolean {
  if (typeof registry !== "string") return false;
  let host = registry.toLowerCase();
  let port: string | undefined;
  if (host.startsWith("[")) {
    const close = host.indexOf("]");
    if (close < 0) return false;
    const after = host.slice(close + 1);
    if (after !== "") {
      if (!after.startsWith(":")) return false;
      port = after.slice(1);
    }
    host = host.slice(1, close);
    if (port !== undefined && !/^[0-9]{1,5}$/.test(port)) return false;
    return isIpv6Loopback(host);
  }
  const c = host.indexOf(":");
  if (c >= 0) {
    port = host.slice(c + 1);
    host = host.slice(0, c);
    if (!/^[0-9]{1,5}$/.test(port)) return false;
  }
  if (host === "localhost") return true;
  const m = /^127\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})$/.exec(host);
  return m !== null && m.slice(1).every((octet) => Number(octet) <= 255);
}

/** `::1` in any spelling, or an IPv4-mapped 127.x.y.z written in hex (`::ffff:7f00:1`). */
function isIpv6Loopback(text: string): boolean {
  const groups = expandIpv6(text);
  if (groups === undefined) return false;
  if (groups.slice(0, 7).every((g) => g === 0) && groups[7] === 1) return true;
  return groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff &&
    groups[6] >> 8 === 127;
}

/** The eight 16-bit groups of a hex-only IPv6 address, or undefined when it is not one. */
function expandIpv6(text: string): number[] | undefined {
  const halves = text.split("::");
  if (halves.length > 2) return undefined;
  const parse = (part: string): number[] | undefined => {
    if (part === "") return [];
    const out: number[] = [];
    for (const group of part.split(":")) {
      if (!/^[0-9a-f]{1,4}$/.test(group)) return undefined;
      out.push(parseInt(group, 16));
    }
    return out;
  };
  const head = parse(halves[0]);
  if (head === undefined) return undefined;
  if (halves.length === 1) return head.length === 8 ? head : undefined;
  const tail = parse(halves[1]);
  if (tail === undefined || head.length + tail.length > 7) return undefined;
  return [...head, ...new Array<number>(8 - head.length - tail.length).fill(0), ...tail];
}
