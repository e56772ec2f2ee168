/**
 * `WWW-Authenticate` parsing (RFC 7235 §4.1, RFC 9110 §11.6.1).
 *
 * The header comes from an untrusted server, so the parser never throws, runs in linear
 * time, reads at most {@link MAX_HEADER_LENGTH} characters and returns whatever it could
 * make sense of: garbage up to the next comma is skipped, a challenge with a broken
 * parameter keeps its other parameters.
 *
 * @example
 * ```ts
 * parseWwwAuthenticate('Bearer realm="https://auth.docker.io/token",service="registry.docker.io"');
 * // [{ scheme: "bearer", params: { realm: "https://auth.docker.io/token", service: "registry.docker.io" } }]
 * ```
 * @module
 */

/**
 * One authentication challenge.
 *
 * @example
 * ```ts
 * const [c] = parseWwwAuthenticate('Basic realm="Registry"');
 * c.scheme; // "basic"
 * c.params.realm; // "Registry"
 * ```
 */
export interface Challenge {
  /** Auth scheme, lower-cased, e.g. "bearer", "basic". */
  scheme: string;
  /**
   * Parameter names lower-cased, values unquoted and unescaped. A token68 (`Negotiate abc==`)
   * is kept under the name "token68". The object has no prototype, so hostile names such
   * as "__proto__" or "constructor" are plain data; when a name repeats, the first wins.
   */
  params: Record<string, string>;
}

/**
 * Characters read from a header (16 KiB); the rest is ignored. Real challenges are < 1 KiB.
 *
 * @example
 * ```ts
 * parseWwwAuthenticate("Basic " + " ".repeat(MAX_HEADER_LENGTH) + "realm=x"); // [{ scheme: "basic", params: {} }]
 * ```
 */
export const MAX_HEADER_LENGTH = 16 * 1024;

// RFC 9110 tchar: any VCHAR except delimiters.
const TCHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
// RFC 7235 token68 characters, without the trailing "=" padding.
const TOKEN68_CHARS = "-._~+/0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

/** Lookup tables indexed by char code (ASCII only; everything else is "not in the set"). */
function table(chars: string): Uint8Array {
  const t = new Uint8Array(128);
  for (let i = 0; i < chars.length; i++) t[chars.charCodeAt(i)] = 1;
  return t;
}
const IS_TCHAR = table(TCHARS);
const IS_TOKEN68 = table(TOKEN68_CHARS);

function inSet(set: Uint8Array, s: string, i: number): boolean {
  const c = s.charCodeAt(i);
  return c < 128 && set[c] === 1;
}

/** OWS/BWS: space and tab; CR and LF are tolerated as well (old line folding). */
function isSpace(s: string, i: number): boolean {
  const c = s.charCodeAt(i);
  return c === 0x20 || c === 0x09 || c === 0x0d || c === 0x0a;
}

function skipSpace(s: string, i: number): number {
  while (i < s.length && isSpace(s, i)) i++;
  return i;
}

function scan(set: Uint8Array, s: string, i: number): number {
  while (i < s.length && inSet(set, s, i)) i++;
  return i;
}

/**
 * End of an unquoted value. RFC 7235 allows only a token, but some servers send bare URLs
 * (`realm=https://host/token`); cutting those at the ":" would hand back a wrong realm, so a
 * bare value runs to the next comma, space or quote instead.
 */
function scanBare(s: string, i: number): number {
  while (i < s.length) {
    const c = s.charCodeAt(i);
    if (c <= 0x20 || c === 0x2c || c === 0x22 || c === 0x7f) break;
    i++;
  }
  return i;
}

/**
 * Reads a quoted-string starting at the opening quote. Returns the unescaped value and the
 * index after the closing quote, or undefined when the string is not terminated.
 */
function readQuoted(s: string, i: number): { value: string; end: number } | undefined {
  const chunks: string[] = [];
  let start = i + 1;
  for (let j = start; j < s.length; j++) {
    const c = s.charCodeAt(j);
    if (c === 0x22 /* " */) {
      chunks.push(s.slice(start, j));
      return { value: chunks.join(""), end: j + 1 };
    }
    if (c === 0x5c /* \ */) {
      if (j + 1 >= s.length) return undefined;
      chunks.push(s.slice(start, j), s[j + 1]);
      j++;
      start = j + 1;
    }
  }
  return undefined;
}

/** Skips to the next top-level comma (or the end), stepping over quoted strings. */
function skipToComma(s: string, i: number): number {
  while (i < s.length) {
    const c = s.charCodeAt(i);
    if (c === 0x2c /* , */) return i;
    if (c === 0x22 /* " */) {
      const q = readQuoted(s, i);
      if (q === undefined) return s.length;
      i = q.end;
    } else {
      i++;
    }
  }
  return i;
}

/** Whether the list element after the comma at `i` is a "name=" parameter. */
function paramFollows(s: string, i: number): boolean {
  while (i < s.length && (s[i] === "," || isSpace(s, i))) i++;
  const end = scan(IS_TCHAR, s, i);
  return end > i && s[skipSpace(s, end)] === "=";
}

/** Stores a parameter unless the name was already seen (names must not repeat: RFC 7235). */
function setParam(params: Record<string, string>, name: string, value: string): void {
  if (!Object.hasOwn(params, name)) params[name] = value;
}

/**
 * Parses a `WWW-Authenticate` header value into its challenges, in order.
 *
 * Several challenges may share one header (`Basic realm="x", Bearer realm="y"`); parameters
 * come in any order; quoted values may hold commas, "=" and escaped quotes. Never throws:
 * malformed parts are skipped and an unusable header gives `[]`. Only the first
 * {@link MAX_HEADER_LENGTH} characters are read.
 *
 * @example
 * ```ts
 * parseWwwAuthenticate('Basic realm="Registry", Bearer realm="https://r/token",scope="repository:a:pull,push"');
 * // [{ scheme: "basic", params: { realm: "Registry" } },
 * //  { scheme: "bearer", params: { realm: "https://r/token", scope: "repository:a:pull,push" } }]
 * ```
 */
export function parseWwwAuthenticate(header: string): Challenge[] {
  if (typeof header !== "string") return [];
  const s = header.length > MAX_HEADER_LENGTH ? header.slice(0, MAX_HEADER_LENGTH) : header;
  const challenges: Challenge[] = [];
  // The challenge that parameters attach to; undefined after a token68 (it takes none).
  let current: Challenge | undefined;
  let i = 0;
  // Every pass consumes at least one character, and no character is read more than a few
  // times (a token may be scanned once as token68 and once as a name): linear time.
  while (i < s.length) {
    const c = s.charCodeAt(i);
    if (c === 0x2c || isSpace(s, i)) {
      i++;
      continue;
    }
    const nameEnd = scan(IS_TCHAR, s, i);
    if (nameEnd === i) {
      i = Math.max(skipToComma(s, i), i + 1);
      continue;
    }
    const name = s.slice(i, nameEnd);
    const afterName = skipSpace(s, nameEnd);

    if (s[afterName] === "=") {
      // "name = value": a parameter of the current challenge.
      const v = skipSpace(s, afterName + 1);
      let value: string | undefined;
      let end = v;
      if (s[v] === '"') {
        const q = readQuoted(s, v);
        if (q === undefined) break; // Unterminated: the rest is one broken value.
        value = q.value;
        end = q.end;
      } else {
        end = scanBare(s, v);
        if (end > v) value = s.slice(v, end);
      }
      if (value !== undefined && current !== undefined) {
        setParam(current.params, name.toLowerCase(), value);
      }
      // A parameter must be followed by a comma or the end; anything else is skipped.
      i = skipToComma(s, Math.max(end, v));
      continue;
    }

    // Otherwise the token is an auth-scheme starting a new challenge.
    current = { scheme: name.toLowerCase(), params: Object.create(null) };
    challenges.push(current);
    i = afterName;
    if (i >= s.length || s[i] === ",") continue;

    // token68 ("Negotiate abc==") if it runs up to a comma or the end, except that
    // "realm=, service=x" is a parameter without its value, not a token68. Otherwise it is
    // the first parameter, which the next pass reads.
    let t = scan(IS_TOKEN68, s, i);
    if (t > i) {
      while (s[t] === "=") t++;
      const after = skipSpace(s, t);
      // "name=" is ambiguous: a token68 or a parameter without its value.
      const ambiguous = t - i >= 2 && s[t - 1] === "=" && s[t - 2] !== "=" &&
        scan(IS_TCHAR, s, i) === t - 1;
      if (after >= s.length || (s[after] === "," && !(ambiguous && paramFollows(s, after)))) {
        current.params.token68 = s.slice(i, t);
        current = undefined;
        i = after;
      }
    }
  }
  return challenges;
}
