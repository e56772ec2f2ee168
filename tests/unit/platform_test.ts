import assert from "node:assert/strict";
import {
  describePlatform,
  formatPlatform,
  hostPlatform,
  isAttestationPlatform,
  normalizePlatform,
  parsePlatform,
  type Platform,
  selectPlatform,
} from "../../lib/platform.ts";
import { InvalidPlatformError } from "../../lib/errors.ts";
import { prng } from "../helpers/random.ts";

const p = (os: string, architecture: string, variant?: string): Platform =>
  variant === undefined ? { os, architecture } : { os, architecture, variant };

Deno.test("parsePlatform: valid specifiers, normalised", async (t) => {
  const cases: [string, Platform][] = [
    ["linux/amd64", p("linux", "amd64")],
    ["linux/x86_64", p("linux", "amd64")],
    ["linux/x86-64", p("linux", "amd64")],
    ["linux/amd64/v1", p("linux", "amd64")],
    ["linux/amd64/v3", p("linux", "amd64", "v3")],
    ["linux/arm64", p("linux", "arm64")],
    ["linux/arm64/v8", p("linux", "arm64")],
    ["linux/aarch64", p("linux", "arm64")],
    ["linux/aarch64/8", p("linux", "arm64")],
    ["linux/arm64/v8.0", p("linux", "arm64")],
    ["linux/arm64/v8.2", p("linux", "arm64", "v8.2")],
    ["linux/arm64/9", p("linux", "arm64", "v9")],
    ["linux/arm", p("linux", "arm", "v7")],
    ["linux/arm/7", p("linux", "arm", "v7")],
    ["linux/arm/v7", p("linux", "arm", "v7")],
    ["linux/arm/v6", p("linux", "arm", "v6")],
    ["linux/arm/5", p("linux", "arm", "v5")],
    ["linux/armhf", p("linux", "arm", "v7")],
    ["linux/armel", p("linux", "arm", "v6")],
    ["linux/i386", p("linux", "386")],
    ["linux/i686", p("linux", "386")],
    ["linux/386", p("linux", "386")],
    ["linux/ppc64le", p("linux", "ppc64le")],
    ["linux/s390x", p("linux", "s390x")],
    ["linux/riscv64", p("linux", "riscv64")],
    ["Linux/ARM64/V8", p("linux", "arm64")],
    ["LINUX/AMD64", p("linux", "amd64")],
    ["macos/arm64", p("darwin", "arm64")],
    ["windows/amd64", p("windows", "amd64")],
    ["unknown/unknown", p("unknown", "unknown")],
    [
      "windows(10.0.17763)/amd64",
      { os: "windows", architecture: "amd64", "os.version": "10.0.17763" },
    ],
    [
      "windows(10.0.20348+win32k)/amd64",
      {
        os: "windows",
        architecture: "amd64",
        "os.version": "10.0.20348",
        "os.features": ["win32k"],
      },
    ],
    [
      "windows(+b+a+b)/amd64",
      { os: "windows", architecture: "amd64", "os.features": ["a", "b"] },
    ],
    ["linux(1%2B2)/amd64", { os: "linux", architecture: "amd64", "os.version": "1+2" }],
  ];
  for (const [input, want] of cases) {
    await t.step(input, () => assert.deepEqual(parsePlatform(input), want));
  }
});

Deno.test("parsePlatform: one word, as containerd's Parse (os: linux, arch: the host's)", () => {
  const cases: [string, Platform][] = [
    ["arm64", p("linux", "arm64")],
    ["ARM64", p("linux", "arm64")],
    ["aarch64", p("linux", "arm64")],
    ["Aarch64", p("linux", "arm64")],
    ["x86_64", p("linux", "amd64")],
    ["amd64", p("linux", "amd64")],
    ["armhf", p("linux", "arm", "v7")],
    ["armel", p("linux", "arm", "v6")],
    ["arm", p("linux", "arm", "v7")],
    ["i386", p("linux", "386")],
    ["386", p("linux", "386")],
    ["s390x", p("linux", "s390x")],
    ["riscv64", p("linux", "riscv64")],
    ["linux", p("linux", "amd64")],
    ["LINUX", p("linux", "amd64")],
    ["macOS", p("darwin", "amd64")],
    ["darwin", p("darwin", "amd64")],
    ["windows", p("windows", "amd64")],
    [
      "windows(10.0.17763)",
      { os: "windows", architecture: "amd64", "os.version": "10.0.17763" },
    ],
  ];
  for (const [input, want] of cases) {
    assert.deepEqual(parsePlatform(input, { arch: "x86_64" }), want, input);
  }
  // The os alone takes the host architecture, whichever spelling the host uses.
  assert.deepEqual(parsePlatform("linux", { arch: "aarch64" }), p("linux", "arm64"));
  assert.deepEqual(parsePlatform("linux", { arch: "arm64" }), p("linux", "arm64"));
  // An architecture alone never depends on the host.
  assert.deepEqual(parsePlatform("armhf", { arch: "aarch64" }), p("linux", "arm", "v7"));
  // Without defaults, the host is Deno's.
  const host = normalizePlatform({ os: "linux", architecture: Deno.build.arch });
  assert.deepEqual(parsePlatform("linux"), host);
  assert.throws(() => parsePlatform("linux", { arch: "" }), InvalidPlatformError);
});

Deno.test("describePlatform: resolved platform, and what was typed when it differs", () => {
  assert.equal(describePlatform(parsePlatform("linux/arm64")), "linux/arm64");
  assert.equal(describePlatform(parsePlatform("linux/arm64"), "linux/arm64"), "linux/arm64");
  assert.equal(
    describePlatform(parsePlatform("arm64"), "arm64"),
    'linux/arm64 (from "arm64")',
  );
  assert.equal(
    describePlatform(parsePlatform("linux/arm64/v8"), "linux/arm64/v8"),
    'linux/arm64 (from "linux/arm64/v8")',
  );
  const windows: Platform = {
    os: "windows",
    architecture: "amd64",
    "os.version": "10.0.20348",
    "os.features": ["win32k", "a+b"],
  };
  const text = describePlatform(windows);
  assert.equal(text, "windows(10.0.20348+win32k+a%2Bb)/amd64");
  assert.deepEqual(parsePlatform(text), normalizePlatform(windows), "it parses back");
  assert.equal(
    describePlatform({ os: "windows", architecture: "amd64", "os.features": ["x"] }),
    "windows(+x)/amd64",
  );
  assert.equal(describePlatform({} as Platform), "unknown/unknown");
  assert.ok(describePlatform(p("linux", "amd64"), "x".repeat(500)).length < 100);
});

Deno.test("parsePlatform: invalid specifiers throw InvalidPlatformError", async (t) => {
  const cases: [string, string][] = [
    ["", "platform is empty"],
    ["nonsense", "unknown operating system or architecture"],
    ["arm65", "unknown operating system or architecture"],
    ["x86_64(1.0)", "unknown operating system or architecture"],
    ["Linux ", "invalid os"],
    ["linux/", "invalid component"],
    ["/amd64", "invalid os"],
    ["/", "invalid os"],
    ["linux//v7", "invalid component"],
    ["linux/arm/", "invalid component"],
    ["a/b/c/d", "too many components"],
    ["linux/arm64/v8/x", "too many components"],
    ["linux/*", "wildcards"],
    ["linux/amd 64", "invalid component"],
    [" linux/amd64", "invalid os"],
    ["linux/amd64 ", "invalid component"],
    ["lin.ux/amd64", "invalid os"],
    ["linux/amd64:1", "invalid component"],
    ["linux/ärm", "invalid component"],
    ["windows(10/amd64", "invalid os"],
    ["windows(%zz)/amd64", "percent-encoding"],
  ];
  for (const [input, fragment] of cases) {
    await t.step(JSON.stringify(input), () => {
      assert.throws(() => parsePlatform(input), (e: unknown) => {
        assert.ok(e instanceof InvalidPlatformError, `${e}`);
        assert.equal(e.exitCode, 2);
        assert.ok(e.message.includes(fragment), `${e.message} lacks ${fragment}`);
        assert.ok(e.message.startsWith("invalid platform "), e.message);
        assert.ok(e.hint?.includes("os/arch"), e.hint);
        assert.ok(!e.message.includes("architecture is missing"), e.message);
        return true;
      });
    });
  }
  assert.throws(() => parsePlatform(42 as unknown as string), InvalidPlatformError);
});

Deno.test("normalizePlatform", () => {
  const cases: [Platform, Platform][] = [
    [p("linux", "x86_64"), p("linux", "amd64")],
    [p("linux", "x86-64", "v1"), p("linux", "amd64")],
    [p("linux", "aarch64"), p("linux", "arm64")],
    [p("linux", "arm64", "v8"), p("linux", "arm64")],
    [p("linux", "arm64", "V8"), p("linux", "arm64")],
    [p("linux", "armhf"), p("linux", "arm", "v7")],
    [p("linux", "armhf", "v6"), p("linux", "arm", "v7")],
    [p("linux", "armel"), p("linux", "arm", "v6")],
    [p("linux", "arm"), p("linux", "arm", "v7")],
    [p("linux", "arm", ""), p("linux", "arm", "v7")],
    [p("linux", "arm", "8"), p("linux", "arm", "v8")],
    [p("linux", "i386"), p("linux", "386")],
    [p("linux", "i486"), p("linux", "386")],
    [p("linux", "i586"), p("linux", "386")],
    [p("linux", "i686", "x"), p("linux", "386")],
    [p("MacOS", "arm64"), p("darwin", "arm64")],
    [p("Linux", "AMD64", ""), p("linux", "amd64")],
    [p("linux", "mips64le", "Foo"), p("linux", "mips64le", "foo")],
    [
      { os: "windows", architecture: "amd64", "os.version": "10.0.1", "os.features": [] },
      { os: "windows", architecture: "amd64", "os.version": "10.0.1" },
    ],
    [
      { os: "windows", architecture: "amd64", "os.version": "", "os.features": ["b", "a", "b"] },
      { os: "windows", architecture: "amd64", "os.features": ["a", "b"] },
    ],
  ];
  for (const [input, want] of cases) {
    const before = structuredClone(input);
    assert.deepEqual(normalizePlatform(input), want, formatPlatform(input));
    assert.deepEqual(input, before, "the input must not be modified");
    assert.deepEqual(normalizePlatform(want), want, "normalising is idempotent");
  }
  // Junk from registry JSON does not throw.
  assert.deepEqual(normalizePlatform({} as Platform), { os: "", architecture: "" });
  assert.deepEqual(
    normalizePlatform({ os: 1, architecture: null, variant: 7 } as unknown as Platform),
    { os: "", architecture: "" },
  );
});

Deno.test("formatPlatform: as given, no normalisation", () => {
  assert.equal(formatPlatform(p("linux", "arm64")), "linux/arm64");
  assert.equal(formatPlatform(p("linux", "arm", "v7")), "linux/arm/v7");
  assert.equal(formatPlatform(p("linux", "arm64", "v8")), "linux/arm64/v8");
  assert.equal(formatPlatform(p("linux", "x86_64")), "linux/x86_64");
  assert.equal(formatPlatform(p("linux", "amd64", "")), "linux/amd64");
  assert.equal(formatPlatform(p("", "")), "unknown/unknown");
  assert.equal(
    formatPlatform({ os: "windows", architecture: "amd64", "os.version": "10.0.17763.1" }),
    "windows/amd64",
  );
  assert.equal(formatPlatform({} as Platform), "unknown/unknown");
});

Deno.test("hostPlatform: DOCKER_DEFAULT_PLATFORM, else linux/<host arch>", () => {
  assert.deepEqual(hostPlatform({ arch: "x86_64" }), p("linux", "amd64"));
  assert.deepEqual(hostPlatform({ arch: "aarch64" }), p("linux", "arm64"));
  assert.deepEqual(
    hostPlatform({ arch: "aarch64", DOCKER_DEFAULT_PLATFORM: "" }),
    p("linux", "arm64"),
  );
  assert.deepEqual(
    hostPlatform({ arch: "x86_64", DOCKER_DEFAULT_PLATFORM: "  " }),
    p("linux", "amd64"),
  );
  assert.deepEqual(
    hostPlatform({ arch: "x86_64", DOCKER_DEFAULT_PLATFORM: "linux/arm/v6" }),
    p("linux", "arm", "v6"),
  );
  assert.deepEqual(
    hostPlatform({ arch: "x86_64", DOCKER_DEFAULT_PLATFORM: " linux/arm64/v8 " }),
    p("linux", "arm64"),
  );
  // One word, as the Docker CLI accepts it: an os takes the host arch, an arch gets linux.
  assert.deepEqual(
    hostPlatform({ arch: "aarch64", DOCKER_DEFAULT_PLATFORM: "linux" }),
    p("linux", "arm64"),
  );
  assert.deepEqual(
    hostPlatform({ arch: "x86_64", DOCKER_DEFAULT_PLATFORM: "windows" }),
    p("windows", "amd64"),
  );
  assert.deepEqual(
    hostPlatform({ arch: "x86_64", DOCKER_DEFAULT_PLATFORM: "arm" }),
    p("linux", "arm", "v7"),
  );
  assert.deepEqual(
    hostPlatform({ arch: "x86_64", DOCKER_DEFAULT_PLATFORM: "aarch64" }),
    p("linux", "arm64"),
  );
  assert.deepEqual(
    hostPlatform({ arch: "x86_64", DOCKER_DEFAULT_PLATFORM: "macOS" }),
    p("darwin", "amd64"),
  );
  for (const bad of ["nonsense", "linux/", "a/b/c/d", "linux/*"]) {
    assert.throws(
      () => hostPlatform({ arch: "x86_64", DOCKER_DEFAULT_PLATFORM: bad }),
      (e: unknown) =>
        e instanceof InvalidPlatformError && e.message.includes("DOCKER_DEFAULT_PLATFORM"),
      bad,
    );
  }
  assert.throws(() => hostPlatform({ arch: "" }), InvalidPlatformError);
});

Deno.test("isAttestationPlatform", () => {
  assert.equal(isAttestationPlatform(p("unknown", "unknown")), true);
  assert.equal(isAttestationPlatform(p("Unknown", "UNKNOWN")), true);
  assert.equal(isAttestationPlatform(p("linux", "unknown")), false);
  assert.equal(isAttestationPlatform(p("unknown", "amd64")), false);
  assert.equal(isAttestationPlatform(undefined), false);
});

/** A realistic multi-arch index, as Docker Hub's official images have. */
const INDEX: (Platform | undefined)[] = [
  p("linux", "amd64"),
  p("unknown", "unknown"),
  p("linux", "arm", "v5"),
  p("unknown", "unknown"),
  p("linux", "arm", "v7"),
  p("linux", "arm64", "v8"),
  p("linux", "386"),
  p("linux", "ppc64le"),
  p("linux", "s390x"),
];

Deno.test("selectPlatform: table", async (t) => {
  // [name, requested, candidates, expected]
  const cases: [
    string,
    Platform,
    (Platform | undefined)[],
    { index: number; exact: boolean } | undefined,
  ][] = [
    ["amd64 from a full index", p("linux", "amd64"), INDEX, { index: 0, exact: true }],
    ["x86_64 is amd64", p("linux", "x86_64"), INDEX, { index: 0, exact: true }],
    ["arm64 request, arm64/v8 entry", p("linux", "arm64"), INDEX, { index: 5, exact: true }],
    [
      "arm64/v8 request, arm64 entry",
      p("linux", "arm64", "v8"),
      [p("linux", "amd64"), p("linux", "arm64")],
      { index: 1, exact: true },
    ],
    [
      "aarch64 request, arm64 entry",
      p("linux", "aarch64"),
      [p("linux", "arm64")],
      { index: 0, exact: true },
    ],
    ["arm/v7 exact", p("linux", "arm", "v7"), INDEX, { index: 4, exact: true }],
    ["armhf is arm/v7", p("linux", "armhf"), INDEX, { index: 4, exact: true }],
    ["arm (no variant) is arm/v7", p("linux", "arm"), INDEX, { index: 4, exact: true }],
    [
      "arm/v7 prefers v7 even when v6 comes first",
      p("linux", "arm", "v7"),
      [p("linux", "arm", "v6"), p("linux", "arm", "v7")],
      { index: 1, exact: true },
    ],
    [
      "arm/v7 entry without variant",
      p("linux", "arm", "v7"),
      [p("linux", "arm")],
      { index: 0, exact: true },
    ],
    [
      "arm/v7 falls back to v6 before v5",
      p("linux", "arm", "v7"),
      [p("linux", "arm", "v5"), p("linux", "arm", "v6"), p("linux", "amd64")],
      { index: 1, exact: false },
    ],
    [
      "arm/v7 falls back to v5",
      p("linux", "arm", "v7"),
      [p("linux", "amd64"), p("linux", "arm", "v5")],
      { index: 1, exact: false },
    ],
    [
      "armel is arm/v6, falls back to v5",
      p("linux", "armel"),
      [p("linux", "arm", "v7"), p("linux", "arm", "v5")],
      { index: 1, exact: false },
    ],
    [
      "arm/v6 never takes v7",
      p("linux", "arm", "v6"),
      [p("linux", "arm", "v7"), p("linux", "arm64")],
      undefined,
    ],
    [
      "arm/v5 takes nothing lower",
      p("linux", "arm", "v5"),
      [p("linux", "arm", "v6"), p("linux", "arm", "v7")],
      undefined,
    ],
    [
      "arm/v8 falls back to v7",
      p("linux", "arm", "v8"),
      [p("linux", "arm", "v6"), p("linux", "arm", "v7")],
      { index: 1, exact: false },
    ],
    [
      "arm64 falls back to 32-bit arm, best first",
      p("linux", "arm64"),
      [p("linux", "amd64"), p("linux", "arm", "v6"), p("linux", "arm", "v7")],
      { index: 2, exact: false },
    ],
    [
      "arm64 takes arm/v8 before arm/v7",
      p("linux", "arm64"),
      [p("linux", "arm", "v7"), p("linux", "arm", "v8")],
      { index: 1, exact: false },
    ],
    [
      "arm never takes arm64",
      p("linux", "arm", "v7"),
      [p("linux", "arm64"), p("linux", "arm64", "v8")],
      undefined,
    ],
    [
      "arm64/v8.2 takes v8.1 before v8",
      p("linux", "arm64", "v8.2"),
      [p("linux", "arm64"), p("linux", "arm64", "v8.1"), p("linux", "arm64", "v8.3")],
      { index: 1, exact: false },
    ],
    [
      "arm64 (v8) never takes v8.1",
      p("linux", "arm64"),
      [p("linux", "arm64", "v8.1"), p("linux", "arm64", "v9")],
      undefined,
    ],
    [
      "arm64/v9 takes v8.5 and below",
      p("linux", "arm64", "v9"),
      [p("linux", "arm64", "v8.6"), p("linux", "arm64", "v8.5"), p("linux", "arm64")],
      { index: 1, exact: false },
    ],
    [
      "unknown arm64 variant still matches itself",
      p("linux", "arm64", "v42"),
      [p("linux", "arm64"), p("linux", "arm64", "v42")],
      { index: 1, exact: true },
    ],
    [
      "amd64 entry with v1 is plain amd64",
      p("linux", "amd64"),
      [p("linux", "amd64", "v2"), p("linux", "amd64", "v1")],
      { index: 1, exact: true },
    ],
    [
      "plain amd64 never takes v2",
      p("linux", "amd64"),
      [p("linux", "amd64", "v2"), p("linux", "amd64", "v3")],
      undefined,
    ],
    [
      "amd64/v3 takes the highest lower level",
      p("linux", "amd64", "v3"),
      [p("linux", "amd64"), p("linux", "amd64", "v2"), p("linux", "amd64", "v4")],
      { index: 1, exact: false },
    ],
    [
      "amd64/v3 exact",
      p("linux", "amd64", "v3"),
      [p("linux", "amd64"), p("linux", "amd64", "v3")],
      { index: 1, exact: true },
    ],
    [
      "amd64/v2 falls back to plain amd64",
      p("linux", "amd64", "v2"),
      [p("linux", "386"), p("linux", "amd64")],
      { index: 1, exact: false },
    ],
    [
      "amd64 falls back to 386 last",
      p("linux", "amd64"),
      [p("linux", "arm64"), p("linux", "386")],
      { index: 1, exact: false },
    ],
    [
      "i686 request is 386",
      p("linux", "i686"),
      [p("linux", "amd64"), p("linux", "386")],
      { index: 1, exact: true },
    ],
    ["386 never takes amd64", p("linux", "386"), [p("linux", "amd64")], undefined],
    [
      "first of equal entries wins",
      p("linux", "amd64"),
      [p("linux", "arm64"), p("linux", "amd64"), p("linux", "amd64")],
      { index: 1, exact: true },
    ],
    ["os must match", p("linux", "amd64"), [p("windows", "amd64")], undefined],
    [
      "os is compared case-insensitively",
      p("linux", "amd64"),
      [p("Linux", "AMD64")],
      { index: 0, exact: true },
    ],
    [
      "undefined entries never match",
      p("linux", "amd64"),
      [undefined, p("linux", "amd64")],
      { index: 1, exact: true },
    ],
    ["only undefined entries", p("linux", "amd64"), [undefined, undefined], undefined],
    ["empty index", p("linux", "amd64"), [], undefined],
    [
      "unknown/unknown never matches, even when requested",
      p("unknown", "unknown"),
      [p("unknown", "unknown")],
      undefined,
    ],
    ["unknown/unknown entries are skipped", p("linux", "ppc64le"), INDEX, {
      index: 7,
      exact: true,
    }],
    ["no match", p("linux", "riscv64"), INDEX, undefined],
    ["darwin is macos", p("macos", "arm64"), [p("darwin", "arm64")], { index: 0, exact: true }],
    [
      "os.version and os.features are ignored for linux",
      { os: "linux", architecture: "amd64", "os.version": "5.10", "os.features": ["x"] },
      [{ os: "linux", architecture: "amd64", "os.version": "6.1", "os.features": ["y"] }],
      { index: 0, exact: true },
    ],
    [
      "windows os.version: same major.minor.build",
      { os: "windows", architecture: "amd64", "os.version": "10.0.20348.100" },
      [
        { os: "windows", architecture: "amd64", "os.version": "10.0.17763.5000" },
        { os: "windows", architecture: "amd64", "os.version": "10.0.20348.2700" },
      ],
      { index: 1, exact: true },
    ],
    [
      "windows without a requested version takes any",
      p("windows", "amd64"),
      [{ os: "windows", architecture: "amd64", "os.version": "10.0.17763.5000" }],
      { index: 0, exact: true },
    ],
    [
      "windows os.features must be requested",
      { os: "windows", architecture: "amd64" },
      [
        { os: "windows", architecture: "amd64", "os.features": ["win32k"] },
        p("windows", "amd64"),
      ],
      { index: 1, exact: true },
    ],
    [
      "junk entries from registry JSON are skipped",
      p("linux", "amd64"),
      [
        {} as Platform,
        null as unknown as Platform,
        "linux/amd64" as unknown as Platform,
        { os: "linux", architecture: 5 } as unknown as Platform,
        p("linux", "amd64"),
      ],
      { index: 4, exact: true },
    ],
  ];
  for (const [name, requested, candidates, want] of cases) {
    await t.step(name, () => assert.deepEqual(selectPlatform(requested, candidates), want));
  }
});

Deno.test("parsePlatform and selectPlatform: seeded fuzz", () => {
  const rand = prng(0xa4c);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)];
  const words = [
    "linux",
    "windows",
    "unknown",
    "amd64",
    "x86_64",
    "arm",
    "arm64",
    "aarch64",
    "armhf",
    "386",
    "i686",
    "v5",
    "v6",
    "v7",
    "v8",
    "v8.2",
    "v9",
    "v2",
    "v99",
    "7",
    "",
    "*",
    "(",
    ")",
    "+",
    "%",
    " ",
    "A",
  ];
  const start = performance.now();
  let parsed = 0;
  for (let n = 0; n < 4000; n++) {
    let spec = "";
    const parts = Math.floor(rand() * 5);
    for (let i = 0; i < parts; i++) {
      spec += pick(words);
      if (rand() < 0.3) spec += pick(words);
      if (i < parts - 1) spec += rand() < 0.9 ? "/" : pick(["//", "(", ")"]);
    }
    let platform: Platform;
    try {
      platform = parsePlatform(spec);
    } catch (e) {
      if (e instanceof InvalidPlatformError) continue;
      throw new Error(`${JSON.stringify(spec)} threw ${e}`);
    }
    parsed++;
    assert.deepEqual(normalizePlatform(platform), platform, spec);
    assert.equal(platform.os, platform.os.toLowerCase(), spec);
    // Selecting among random (normalised or not) candidates never throws, and a match is sound.
    const candidates: (Platform | undefined)[] = [];
    const count = Math.floor(rand() * 6);
    for (let i = 0; i < count; i++) {
      candidates.push(
        rand() < 0.1 ? undefined : p(
          pick(["linux", "Linux", "unknown", "windows"]),
          pick(words),
          pick([undefined, ...words]),
        ),
      );
    }
    const m = selectPlatform(platform, candidates);
    if (m !== undefined) {
      const c = candidates[m.index];
      assert.ok(c !== undefined && !isAttestationPlatform(c), spec);
      const nc = normalizePlatform(c);
      assert.equal(nc.os, platform.os, spec);
      if (m.exact) {
        assert.equal(nc.architecture, platform.architecture);
        assert.equal(nc.variant, platform.variant);
      }
    }
  }
  assert.ok(parsed > 200, `only ${parsed} specifiers parsed: the fuzzer is too weak`);
  assert.ok(performance.now() - start < 5000, "fuzzing took too long");
});

Deno.test("parsePlatform: hostile input is rejected fast", () => {
  const start = performance.now();
  for (
    const s of [
      "a/".repeat(1_000_000),
      "linux/" + "a".repeat(1_000_000) + "!",
      "x(" + "+a".repeat(100_000),
      "linux/arm/v" + "9".repeat(1000),
    ]
  ) {
    try {
      parsePlatform(s);
    } catch (e) {
      assert.ok(e instanceof InvalidPlatformError);
      assert.ok(e.message.length < 300, "messages stay short");
    }
  }
  // A huge numeric variant is not expanded into a huge fallback list.
  assert.equal(
    selectPlatform(p("linux", "arm", "v99999999"), [p("linux", "arm", "v5")]),
    undefined,
  );
  assert.ok(performance.now() - start < 1000, "hostile inputs took too long");
});
