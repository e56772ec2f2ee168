/**
 * containerd's own platform tests as an oracle for lib/platform.ts.
 *
 * The tables are read at test time from containerd's Go sources as Debian ships them
 * (`golang-github-containerd-containerd-dev`, installed by scripts/test.sh); nothing of them is
 * copied here. A small reader for Go composite literals turns each `[]struct{...}{...}` table
 * into plain values, which are run against parsePlatform / formatPlatform / normalizePlatform /
 * selectPlatform. If the package is missing, every test here fails: install it, do not skip.
 *
 * Deliberate divergences from containerd 1.6 (the Debian version), all in one place:
 *
 * 1. Our parser returns the normalised platform (containerd's `Normalize`), where containerd's
 *    `Parse` keeps two non-canonical spellings: `arm` without a variant (we say `arm/v7`) and
 *    `arm64/v8` (we say `arm64`). containerd treats both pairs as the same platform (its own
 *    `matches` lists and `Normalize` say so), and our index selection relies on one spelling.
 *    So parsed platforms are compared after normalising containerd's expectation, and the
 *    `formatted` string is compared after parsing it back; where containerd's expectation is
 *    already canonical, both must agree exactly (checked too).
 * 2. A one-word architecture takes the os "linux", not the host's `runtime.GOOS`: images are
 *    Linux images even on a macOS host. On this Linux host both are "linux", so the host
 *    defaults below map `defaultOS` to "linux" and `defaultArch` to Deno's architecture.
 * 3. `defaultVariant` is containerd's arm CPU variant; Deno runs on no 32-bit arm host, so "".
 * 4. containerd skips its wildcard cases (`skip: true`); we reject wildcards, and check that.
 *
 * @module
 */
import assert from "node:assert/strict";
import {
  formatPlatform,
  normalizePlatform,
  parsePlatform,
  type Platform,
  selectPlatform,
} from "../../lib/platform.ts";
import { InvalidPlatformError } from "../../lib/errors.ts";

const CONTAINERD_PLATFORMS = "/usr/share/gocode/src/github.com/containerd/containerd/platforms";

/** Reads one of containerd's files, failing loudly with what to install. */
function readContainerd(name: string): string {
  const path = `${CONTAINERD_PLATFORMS}/${name}`;
  try {
    return Deno.readTextFileSync(path);
  } catch (e) {
    throw new Error(
      `${path} is missing: install the Debian package golang-github-containerd-containerd-dev ` +
        `(scripts/test.sh does): ${e}`,
    );
  }
}

// ---------------------------------------------------------------------------------------------
// A reader for the Go literals containerd's test tables use: strings, bools, identifiers bound
// in an environment, `path.Join(...)`, and composite literals (struct, slice, map, with the
// type elided inside). Anything else throws, so a changed table cannot be misread silently.

type GoValue = string | boolean | number | GoValue[] | { [key: string]: GoValue };

interface Token {
  kind: "ident" | "string" | "number" | "punct";
  text: string;
  at: number;
}

function tokenize(src: string): Token[] {
  const tokens: Token[] = [];
  let i = 0;
  while (i < src.length) {
    const c = src[i];
    if (/\s/.test(c)) {
      i++;
    } else if (src.startsWith("//", i)) {
      const end = src.indexOf("\n", i);
      i = end < 0 ? src.length : end;
    } else if (src.startsWith("/*", i)) {
      const end = src.indexOf("*/", i + 2);
      if (end < 0) throw new Error(`unterminated comment at ${i}`);
      i = end + 2;
    } else if (c === '"') {
      let j = i + 1;
      while (j < src.length && src[j] !== '"') j += src[j] === "\\" ? 2 : 1;
      // Go's interpreted strings are JSON strings for everything these tables hold.
      tokens.push({ kind: "string", text: JSON.parse(src.slice(i, j + 1)), at: i });
      i = j + 1;
    } else if (c === "`") {
      const end = src.indexOf("`", i + 1);
      tokens.push({ kind: "string", text: src.slice(i + 1, end), at: i });
      i = end + 1;
    } else if (/[A-Za-z_]/.test(c)) {
      const m = /^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*/.exec(src.slice(i, i + 200))!;
      tokens.push({ kind: "ident", text: m[0], at: i });
      i += m[0].length;
    } else if (/[0-9]/.test(c)) {
      const m = /^[0-9]+/.exec(src.slice(i, i + 40))!;
      tokens.push({ kind: "number", text: m[0], at: i });
      i += m[0].length;
    } else if (":=".startsWith(c) && src.startsWith(":=", i)) {
      tokens.push({ kind: "punct", text: ":=", at: i });
      i += 2;
    } else {
      tokens.push({ kind: "punct", text: c, at: i });
      i++;
    }
  }
  return tokens;
}

/** Go's path.Join: join the non-empty parts with "/" and clean the result. */
function goPathJoin(parts: string[]): string {
  const joined = parts.filter((p) => p !== "").join("/");
  if (joined === "") return "";
  const out: string[] = [];
  for (const seg of joined.split("/")) {
    if (seg === "" || seg === ".") continue;
    if (seg === "..") out.pop();
    else out.push(seg);
  }
  return (joined.startsWith("/") ? "/" : "") + out.join("/");
}

class GoLiteralReader {
  #pos = 0;
  constructor(readonly tokens: Token[], readonly env: Record<string, GoValue>) {}

  #peek(offset = 0): Token | undefined {
    return this.tokens[this.#pos + offset];
  }
  #next(): Token {
    const t = this.tokens[this.#pos++];
    if (t === undefined) throw new Error("unexpected end of Go source");
    return t;
  }
  #expect(text: string): void {
    const t = this.#next();
    if (t.text !== text) throw new Error(`expected ${text} at ${t.at}, got ${t.text}`);
  }

  /** Skips a type: `[]T`, `map[K]V`, `struct { ... }`, `pkg.Name`, `name`. */
  skipType(): void {
    const t = this.#next();
    if (t.text === "[") {
      this.#expect("]");
      this.skipType();
    } else if (t.text === "map") {
      this.#expect("[");
      this.skipType();
      this.#expect("]");
      this.skipType();
    } else if (t.text === "struct") {
      this.#expect("{");
      let depth = 1;
      while (depth > 0) {
        const u = this.#next();
        if (u.text === "{") depth++;
        if (u.text === "}") depth--;
      }
    } else if (t.kind !== "ident") {
      throw new Error(`unexpected ${t.text} in a type at ${t.at}`);
    }
  }

  /** A value: literal, identifier, call, or composite literal (typed or type-elided). */
  value(): GoValue {
    const t = this.#peek();
    if (t === undefined) throw new Error("unexpected end of Go source");
    if (t.text === "{") return this.#composite();
    if (t.kind === "string") return this.#next().text;
    if (t.kind === "number") return Number(this.#next().text);
    if (t.text === "[" || t.text === "map" || t.text === "struct") {
      this.skipType();
      return this.#composite();
    }
    if (t.kind === "ident") {
      this.#next();
      if (t.text === "true" || t.text === "false") return t.text === "true";
      const after = this.#peek();
      if (after?.text === "(") return this.#call(t);
      if (after?.text === "{") return this.#composite();
      if (!(t.text in this.env)) throw new Error(`unknown Go identifier ${t.text} at ${t.at}`);
      return this.env[t.text];
    }
    throw new Error(`unexpected ${t.text} at ${t.at}`);
  }

  #call(fn: Token): GoValue {
    this.#expect("(");
    const args: GoValue[] = [];
    while (this.#peek()?.text !== ")") {
      args.push(this.value());
      if (this.#peek()?.text === ",") this.#next();
    }
    this.#expect(")");
    if (fn.text === "path.Join" && args.every((a) => typeof a === "string")) {
      return goPathJoin(args as string[]);
    }
    throw new Error(`unsupported Go call ${fn.text} at ${fn.at}`);
  }

  /** `{ a, b }` is a list, `{ k: v, ... }` an object (map keys become strings). */
  #composite(): GoValue {
    this.#expect("{");
    const list: GoValue[] = [];
    const fields: Record<string, GoValue> = {};
    let keyed = false;
    while (this.#peek()?.text !== "}") {
      const t = this.#peek()!;
      if ((t.kind === "ident" || t.kind === "string") && this.#peek(1)?.text === ":") {
        this.#next();
        this.#next();
        fields[t.text] = this.value();
        keyed = true;
      } else {
        list.push(this.value());
      }
      if (this.#peek()?.text === ",") this.#next();
    }
    this.#expect("}");
    if (keyed && list.length > 0) throw new Error("mixed keyed and positional elements");
    return keyed ? fields : list;
  }
}

/**
 * The test table of `func <name>(`: the composite after its `range []struct`, as a list of
 * objects keyed by the Go field names.
 */
function goTable(src: string, testName: string, env: Record<string, GoValue>) {
  const start = src.indexOf(`func ${testName}(`);
  if (start < 0) throw new Error(`containerd's ${testName} is gone: the oracle needs updating`);
  const tableAt = src.indexOf("range []struct", start);
  const nextFunc = src.indexOf("\nfunc ", start + 1);
  if (tableAt < 0 || (nextFunc >= 0 && tableAt > nextFunc)) {
    throw new Error(`containerd's ${testName} has no table: the oracle needs updating`);
  }
  const reader = new GoLiteralReader(tokenize(src.slice(tableAt + "range ".length)), env);
  const table = reader.value();
  if (!Array.isArray(table) || table.length === 0) {
    throw new Error(`containerd's ${testName} table is empty or not a list`);
  }
  return table as Record<string, GoValue>[];
}

// ---------------------------------------------------------------------------------------------

/** What containerd's runtime defaults are, as our parser sees them on this host (see above). */
const HOST_ARCH = normalizePlatform({ os: "linux", architecture: Deno.build.arch }).architecture;
const GO_ENV: Record<string, GoValue> = {
  defaultOS: "linux",
  defaultArch: HOST_ARCH,
  defaultVariant: "",
};

/** A Go `specs.Platform{OS:, Architecture:, Variant:}` as ours. */
function toPlatform(v: GoValue | undefined): Platform {
  if (v === undefined || typeof v !== "object" || Array.isArray(v)) {
    throw new Error(`not a specs.Platform: ${JSON.stringify(v)}`);
  }
  const known = new Set(["OS", "Architecture", "Variant"]);
  for (const key of Object.keys(v)) {
    if (!known.has(key)) throw new Error(`unexpected specs.Platform field ${key}`);
  }
  const p: Platform = { os: String(v.OS ?? ""), architecture: String(v.Architecture ?? "") };
  if (v.Variant) p.variant = String(v.Variant);
  return p;
}

function asString(v: GoValue | undefined, what: string): string {
  if (typeof v !== "string") throw new Error(`${what} is not a string: ${JSON.stringify(v)}`);
  return v;
}

Deno.test("containerd oracle: platforms_test.go TestParseSelector", async (t) => {
  const table = goTable(readContainerd("platforms_test.go"), "TestParseSelector", GO_ENV);
  let exactFormats = 0, matchesChecked = 0, skipped = 0;
  for (const row of table) {
    const input = asString(row.input, "input");
    await t.step(input, () => {
      if (row.skip === true) {
        // containerd does not support these yet; neither do we, and we say so (divergence 4).
        skipped++;
        assert.throws(() => parsePlatform(input), InvalidPlatformError);
        return;
      }
      const expected = normalizePlatform(toPlatform(row.expected));
      const parsed = parsePlatform(input, { arch: Deno.build.arch });
      assert.deepEqual(parsed, expected, `parse ${input}`);

      // Formatting: ours is canonical; containerd's string must name the same platform.
      const formatted = asString(row.formatted, "formatted");
      const ours = formatPlatform(parsed);
      assert.equal(ours, formatPlatform(parsePlatform(formatted)), `format ${input}`);
      if (formatPlatform(toPlatform(row.expected)) === ours) {
        assert.equal(ours, formatted, `format ${input} (canonical in containerd too)`);
        exactFormats++;
      }
      // Round trip: the formatted output parses back to itself.
      assert.equal(formatPlatform(parsePlatform(ours)), ours, `round trip ${input}`);

      // Matching: the parsed platform selects the expectation and every listed spelling,
      // exactly (containerd's NewMatcher is strict equality after normalising).
      const candidates = [
        toPlatform(row.expected),
        ...((row.matches ?? []) as GoValue[])
          .map(toPlatform),
      ];
      for (const candidate of candidates) {
        assert.deepEqual(
          selectPlatform(parsed, [candidate]),
          { index: 0, exact: true },
          `${input} matches ${formatPlatform(candidate)}`,
        );
        matchesChecked++;
      }
    });
  }
  // Guard against a reader that quietly reads nothing.
  assert.ok(table.length >= 15, `only ${table.length} rows read`);
  // Today: 3 skipped, 12 formats equal as written, 28 matches.
  assert.ok(skipped >= 1 && exactFormats >= 10 && matchesChecked >= 25, "too little checked");
});

Deno.test("containerd oracle: platforms_test.go TestParseSelectorInvalid", async (t) => {
  const table = goTable(readContainerd("platforms_test.go"), "TestParseSelectorInvalid", GO_ENV);
  assert.ok(table.length >= 5, `only ${table.length} rows read`);
  for (const row of table) {
    const input = asString(row.input, "input");
    await t.step(JSON.stringify(input), () => {
      assert.throws(() => parsePlatform(input), InvalidPlatformError);
    });
  }
});

/** containerd's `Only` (strict = false) and `OnlyStrict` (strict = true) tables. */
async function matcherTable(t: Deno.TestContext, testName: string, strict: boolean) {
  const table = goTable(readContainerd("compare_test.go"), testName, GO_ENV);
  assert.ok(table.length >= 5, `only ${table.length} rows read`);
  let checked = 0;
  for (const row of table) {
    const spec = asString(row.platform, "platform");
    await t.step(spec, () => {
      const wanted = parsePlatform(spec);
      const matches = row.matches as Record<string, GoValue[]>;
      assert.ok(matches && Array.isArray(matches.true), `${spec}: no 'true' list`);
      for (const [should, list] of Object.entries(matches)) {
        for (const candidateSpec of list) {
          const candidate = parsePlatform(asString(candidateSpec, "candidate"));
          const m = selectPlatform(wanted, [candidate]);
          // Only: any match. OnlyStrict: the exact platform only (no fallback).
          const got = strict ? m?.exact === true : m !== undefined;
          assert.equal(got, should === "true", `${testName}(${spec}) vs ${candidateSpec}`);
          checked++;
        }
      }
    });
  }
  assert.ok(checked >= 50, `only ${checked} pairs checked`);
}

Deno.test("containerd oracle: compare_test.go TestOnly (fallbacks)", async (t) => {
  await matcherTable(t, "TestOnly", false);
});

Deno.test("containerd oracle: compare_test.go TestOnlyStrict (exact)", async (t) => {
  await matcherTable(t, "TestOnlyStrict", true);
});

Deno.test("containerd oracle: the Go literal reader refuses what it does not know", () => {
  const read = (src: string) => goTable(`func TestX() { for range ${src} }`, "TestX", GO_ENV);
  assert.deepEqual(read(`[]struct{ a string }{ { a: "x" } }`), [{ a: "x" }]);
  assert.deepEqual(read(`[]struct{ a string }{ { a: path.Join(defaultOS, "", "b/") } }`), [{
    a: "linux/b",
  }]);
  assert.throws(() => read(`[]struct{ a string }{ { a: mystery } }`), /unknown Go identifier/);
  assert.throws(() => read(`[]struct{ a string }{ { a: fmt.Sprint(1) } }`), /unsupported Go call/);
  assert.throws(() => goTable("package x", "TestX", GO_ENV), /is gone/);
});
