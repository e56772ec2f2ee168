import assert from "node:assert/strict";
import {
  type Challenge,
  MAX_HEADER_LENGTH,
  parseWwwAuthenticate,
} from "../../lib/auth/challenge.ts";
import { prng } from "../helpers/random.ts";

/** Builds the expected value: params objects have no prototype. */
function ch(scheme: string, params: Record<string, string> = {}): Challenge {
  return { scheme, params: Object.assign(Object.create(null), params) };
}

const HUB =
  'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull,push"';

Deno.test("parseWwwAuthenticate: table", async (t) => {
  const cases: [string, string, Challenge[]][] = [
    [
      "Docker Hub, scope containing a comma",
      HUB,
      [
        ch("bearer", {
          realm: "https://auth.docker.io/token",
          service: "registry.docker.io",
          scope: "repository:library/nginx:pull,push",
        }),
      ],
    ],
    [
      "params in another order, with error",
      'Bearer scope="repository:a/b:pull",error="insufficient_scope",realm="https://r.example/token"',
      [
        ch("bearer", {
          scope: "repository:a/b:pull",
          error: "insufficient_scope",
          realm: "https://r.example/token",
        }),
      ],
    ],
    ["Basic only", 'Basic realm="Registry Realm"', [ch("basic", { realm: "Registry Realm" })]],
    [
      "two challenges",
      'Basic realm="x", Bearer realm="y",service="z"',
      [ch("basic", { realm: "x" }), ch("bearer", { realm: "y", service: "z" })],
    ],
    [
      "three challenges, the middle one bare",
      'Basic realm="a", Negotiate, Bearer realm="b"',
      [ch("basic", { realm: "a" }), ch("negotiate"), ch("bearer", { realm: "b" })],
    ],
    [
      "scheme and names are case-insensitive",
      'BEARER Realm="R",SERVICE="s"',
      [ch("bearer", { realm: "R", service: "s" })],
    ],
    [
      "values keep their case",
      'Bearer realm="HTTPS://Auth.Example/Token"',
      [ch("bearer", { realm: "HTTPS://Auth.Example/Token" })],
    ],
    [
      "token values unquoted",
      "Bearer realm=simple,service=registry.example.com",
      [ch("bearer", { realm: "simple", service: "registry.example.com" })],
    ],
    [
      "bare URL values run to the next comma",
      "Bearer realm=https://auth.example.com/token?x=1,service=reg",
      [ch("bearer", { realm: "https://auth.example.com/token?x=1", service: "reg" })],
    ],
    [
      "whitespace everywhere",
      '  Bearer   realm = "r" ,  service\t=\t"s"  ,scope= "a:b:pull"  ',
      [ch("bearer", { realm: "r", service: "s", scope: "a:b:pull" })],
    ],
    [
      "escaped quotes and backslashes",
      'Basic realm="a \\"quoted\\" \\\\ word, with = signs"',
      [ch("basic", { realm: 'a "quoted" \\ word, with = signs' })],
    ],
    [
      "backslash before an ordinary character",
      'Basic realm="a\\bc"',
      [ch("basic", { realm: "abc" })],
    ],
    ["empty quoted value", 'Basic realm=""', [ch("basic", { realm: "" })]],
    ["token68", "Negotiate abc==", [ch("negotiate", { token68: "abc==" })]],
    [
      "token68 followed by another challenge",
      'Negotiate YII+/z=, Basic realm="x"',
      [ch("negotiate", { token68: "YII+/z=" }), ch("basic", { realm: "x" })],
    ],
    [
      "params after a token68 are dropped",
      "Negotiate abc, realm=x",
      [ch("negotiate", { token68: "abc" })],
    ],
    [
      "params after a padded token68 are dropped",
      "Negotiate abc==, realm=x",
      [ch("negotiate", { token68: "abc==" })],
    ],
    ["scheme only", "Basic", [ch("basic")]],
    [
      "empty list elements",
      ', ,Basic realm="x",, ,Bearer realm="y",',
      [ch("basic", { realm: "x" }), ch("bearer", { realm: "y" })],
    ],
    [
      "duplicate param: the first wins",
      'Bearer realm="first",realm="second"',
      [ch("bearer", { realm: "first" })],
    ],
    [
      "hostile names are plain data",
      'Bearer __proto__="x",constructor="y",realm="r"',
      [ch("bearer", { ["__proto__"]: "x", constructor: "y", realm: "r" })],
    ],
    ["empty header", "", []],
    ["only whitespace and commas", " , \t ,", []],
    ["param before any scheme is dropped", 'realm="x", Basic realm="y"', [
      ch("basic", { realm: "y" }),
    ]],
    [
      "unterminated quote drops that param, keeps the rest",
      'Bearer service="s",realm="https://trunc',
      [ch("bearer", { service: "s" })],
    ],
    [
      "trailing backslash in a quote",
      'Bearer service="s",realm="abc\\',
      [ch("bearer", { service: "s" })],
    ],
    [
      "missing value is skipped",
      'Bearer realm=,service="s"',
      [ch("bearer", { service: "s" })],
    ],
    [
      "a lone name= is a token68",
      "Bearer realm=",
      [ch("bearer", { token68: "realm=" })],
    ],
    [
      "missing value after a first param",
      'Bearer service="s", realm=, scope="x"',
      [ch("bearer", { service: "s", scope: "x" })],
    ],
    [
      "garbage after a value is skipped up to the comma",
      'Bearer realm="r" junk "more, junk", service="s"',
      [ch("bearer", { realm: "r", service: "s" })],
    ],
    [
      "garbage tokens",
      '@@@, Basic realm="x", ###',
      [ch("basic", { realm: "x" }), ch("###")],
    ],
    [
      "non-ASCII inside quotes is kept",
      'Basic realm="Zürich ☃"',
      [ch("basic", { realm: "Zürich ☃" })],
    ],
    [
      "non-ASCII outside quotes is skipped",
      'Bäsic realm="x", Basic realm="y"',
      [ch("b"), ch("basic", { realm: "y" })],
    ],
  ];
  for (const [name, header, want] of cases) {
    await t.step(name, () => assert.deepEqual(parseWwwAuthenticate(header), want));
  }
});

Deno.test("parseWwwAuthenticate: params have no prototype", () => {
  const [c] = parseWwwAuthenticate('Bearer realm="r"');
  assert.equal(Object.getPrototypeOf(c.params), null);
  assert.equal(c.params.constructor, undefined);
  assert.equal(c.params.toString, undefined);
  const [h] = parseWwwAuthenticate('Bearer __proto__="x"');
  assert.equal(Object.getPrototypeOf(h.params), null);
  assert.equal(Object.hasOwn(h.params, "__proto__"), true);
  assert.equal(({} as Record<string, unknown>).x, undefined, "Object.prototype untouched");
});

Deno.test("parseWwwAuthenticate: non-string input gives []", () => {
  for (const bad of [undefined, null, 42, {}, ["Basic"]]) {
    assert.deepEqual(parseWwwAuthenticate(bad as unknown as string), []);
  }
});

Deno.test("parseWwwAuthenticate: reads at most MAX_HEADER_LENGTH characters", () => {
  assert.equal(MAX_HEADER_LENGTH, 16 * 1024);
  const pad = "x".repeat(MAX_HEADER_LENGTH);
  // Everything past the cap is ignored: the cut value and a challenge that starts there.
  assert.deepEqual(parseWwwAuthenticate(`Basic realm="${pad}", Bearer realm="y"`), [ch("basic")]);
  const fits = `Basic realm="${"x".repeat(MAX_HEADER_LENGTH - 30)}", Bearer realm="y"`;
  assert.equal(parseWwwAuthenticate(fits).length, 2);
  assert.deepEqual(
    parseWwwAuthenticate('Basic realm="x", ' + " ".repeat(MAX_HEADER_LENGTH) + "Bearer realm=y"),
    [ch("basic", { realm: "x" })],
  );
});

Deno.test("parseWwwAuthenticate: hostile input is linear and never throws", () => {
  const hostile = [
    '"'.repeat(5_000_000),
    "\\".repeat(5_000_000),
    ",".repeat(5_000_000),
    "a=".repeat(2_000_000),
    "a ".repeat(2_000_000),
    "Basic " + 'a="\\'.repeat(1_000_000),
    "Basic " + "a=b ".repeat(1_000_000),
    "B " + "=".repeat(5_000_000),
    "Negotiate " + "a".repeat(5_000_000),
    "Bearer " + 'realm="'.repeat(1_000_000),
    "x".repeat(5_000_000),
    "\u0000\uffff\ud800".repeat(1_000_000),
  ];
  for (const h of hostile) {
    const start = performance.now();
    const out = parseWwwAuthenticate(h);
    assert.ok(Array.isArray(out));
    const ms = performance.now() - start;
    assert.ok(ms < 200, `${JSON.stringify(h.slice(0, 20))}… took ${ms.toFixed(0)} ms`);
  }
  // Many tiny challenges within the cap stay cheap too.
  const many = "A,".repeat(MAX_HEADER_LENGTH / 2);
  assert.equal(parseWwwAuthenticate(many).length, MAX_HEADER_LENGTH / 2);
});

Deno.test("parseWwwAuthenticate: seeded fuzz", () => {
  const rand = prng(0xc0ffee);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)];
  const alphabet = [...'abBZ09 \t,="\\=/+:-.~é\u0000'];
  const pieces = [
    "Bearer",
    "Basic",
    "Negotiate",
    " ",
    ",",
    "=",
    '"',
    "\\",
    "realm",
    "service",
    "scope",
    '"https://a/t"',
    '"a,b"',
    '"\\""',
    "abc==",
  ];
  const seeds = [
    HUB,
    'Basic realm="x", Bearer realm="y",service="z"',
    "Negotiate abc==, Basic realm=simple",
    'Bearer realm="a \\"b\\" c",error="insufficient_scope"',
  ];
  const start = performance.now();
  for (let n = 0; n < 6000; n++) {
    let header = "";
    const mode = n % 3;
    if (mode === 0) {
      const len = Math.floor(rand() * 60);
      for (let i = 0; i < len; i++) header += pick(alphabet);
    } else if (mode === 1) {
      const len = Math.floor(rand() * 12);
      for (let i = 0; i < len; i++) header += pick(pieces);
    } else {
      const chars = [...pick(seeds)];
      const edits = 1 + Math.floor(rand() * 4);
      for (let e = 0; e < edits; e++) {
        const at = Math.floor(rand() * (chars.length + 1));
        const op = rand();
        if (op < 0.33) chars.splice(at, 1);
        else if (op < 0.66) chars.splice(at, 0, pick(alphabet));
        else chars.splice(at, 1, pick(alphabet));
      }
      header = chars.join("");
    }
    let out: Challenge[];
    try {
      out = parseWwwAuthenticate(header);
    } catch (e) {
      throw new Error(`${JSON.stringify(header)} threw ${e}`);
    }
    for (const c of out) {
      assert.ok(c.scheme.length > 0 && c.scheme === c.scheme.toLowerCase(), header);
      assert.equal(Object.getPrototypeOf(c.params), null, header);
      for (const [k, v] of Object.entries(c.params)) {
        assert.equal(k, k.toLowerCase(), header);
        assert.equal(typeof v, "string", header);
      }
    }
    // Parsing is deterministic and does not depend on surrounding whitespace.
    assert.deepEqual(parseWwwAuthenticate(` ${header}`), out, header);
  }
  assert.ok(performance.now() - start < 5000, "fuzzing took too long");
});
