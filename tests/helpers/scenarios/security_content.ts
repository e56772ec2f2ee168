/**
 * Security scenarios (registry content and what reaches the terminal): a registry must not be
 * able to change what is pulled past a digest pin, lay out archive members of its own, or write
 * escape sequences and fake `[+]` lines to the user's terminal; security warnings survive `-q`.
 * @module
 */
import {
  buildImage,
  buildIndex,
  jsonBytes,
  manifestBlob,
  MT,
  putManifest,
  readTar,
  sha256,
  type TestImage,
} from "../hostile_image.ts";
import type { Scenario } from "../hostile_runner.ts";
import { exactly, expect, fault, pathOf } from "./kit.ts";

/** Report rows / tests of this module. */
export const CLASSES: { id: string; title: string }[] = [
  { id: "digest-pin", title: "a schema1 signature cannot defeat a digest pin" },
  { id: "member-injection", title: "one digest with two sizes cannot inject members" },
  { id: "terminal-injection", title: "registry text cannot drive the terminal" },
  { id: "warnings", title: "security warnings are not progress (-q keeps them)" },
];

function encodeBase64Url(bytes: Uint8Array): string {
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}

/** An unsigned schema1 manifest over `layers` (bottom first), as genuine bytes. */
function schema1Document(image: TestImage, layers: string[]): Uint8Array<ArrayBuffer> {
  const top = layers.length - 1;
  return jsonBytes({
    schemaVersion: 1,
    name: image.repository,
    tag: "latest",
    architecture: "amd64",
    fsLayers: layers.map((digest) => ({ blobSum: digest })).reverse(),
    history: layers.map((_, i) => ({
      v1Compatibility: JSON.stringify({
        id: String(i).repeat(64).slice(0, 64),
        ...(i > 0 ? { parent: String(i - 1).repeat(64).slice(0, 64) } : {}),
        ...(i === top ? { os: "linux", architecture: "amd64" } : {}),
      }),
    })).reverse(),
  });
}

/** The layer digests an archive's manifest.json lists. */
async function archivedLayers(path: string): Promise<string[]> {
  const files = readTar(await Deno.readFile(path));
  const manifest = JSON.parse(new TextDecoder().decode(files.get("manifest.json")!));
  return (manifest[0].Layers as string[]).map((l) => `sha256:${l.split("/").pop()!}`);
}

/**
 * 11.1: the registry answers `repo@D` with a signed schema1 document whose protected header
 * says `formatLength: 0, formatTail: <the genuine bytes of D>`: the digest check passes on the
 * genuine bytes, so the layers pulled must be the genuine document's, never the body's own.
 */
const digestPin: Scenario = fault({
  id: "schema1-format-tail-swap",
  cls: "digest-pin",
  title: "a signed schema1 body whose formatTail is the genuine document pulls the genuine layers",
  code: 0,
}, () => {
  const image = buildImage({ layers: [40 * 1024] });
  const attacker = buildImage({ layers: [30 * 1024], seed: 66 });
  const genuineLayer = image.layers[0].digest;
  const attackerLayer = attacker.layers[0].digest;
  image.blobs.set(attackerLayer, attacker.layers[0].bytes);
  const genuine = schema1Document(image, [genuineLayer]);
  const pinned = sha256(genuine);
  const protectedHeader = encodeBase64Url(
    new TextEncoder().encode(
      JSON.stringify({ formatLength: 0, formatTail: encodeBase64Url(genuine) }),
    ),
  );
  const hostile = JSON.parse(new TextDecoder().decode(schema1Document(image, [attackerLayer])));
  hostile.signatures = [{
    header: { alg: "ES256" },
    signature: "c2ln",
    protected: protectedHeader,
  }];
  putManifest(image, pinned, { bytes: jsonBytes(hostile), mediaType: MT.schema1Signed });
  return {
    image,
    ref: (img, registry) => `${registry.host}/${img.repository}@${pinned}`,
    expected: null,
    check: async (run, _outcome, dirs) => {
      const attackerRequests = run.requests(`/v2/${image.repository}/blobs/${attackerLayer}`);
      const layers = await archivedLayers(dirs.output);
      return [
        ...expect(attackerRequests.length === 0, "the body's own layer was downloaded"),
        ...expect(
          layers.length === 1 && layers[0] === genuineLayer,
          `the archive holds ${JSON.stringify(layers)}, not the genuine layer ${genuineLayer}`,
        ),
      ];
    },
  };
});

/**
 * 11.2: one digest listed twice with different sizes. Laid out with one size and written with
 * the other, the surplus of the verified blob would overwrite the members after it
 * (manifest.json, RepoTags): the manifest is refused before any layer is fetched.
 */
const memberInjection: Scenario[] = ["layers", "config"].map((where) =>
  fault({
    id: `digest-two-sizes-${where}`,
    cls: "member-injection",
    title: `the same digest with two sizes (${where}) is refused before any download`,
    code: 8,
    message: /listed with two sizes/,
  }, () => {
    const image = buildImage({ layers: [20 * 1024, 8 * 1024] });
    const [big, small] = image.layers;
    const layer = (b: typeof big, size = b.size) => ({
      mediaType: b.mediaType,
      digest: b.digest,
      size,
    });
    // A config that agrees with the three layers, so that only the sizes give it away (the
    // config variant lists the config's own digest as a layer, with another size).
    const config = manifestBlob({
      architecture: "amd64",
      os: "linux",
      rootfs: { type: "layers", diff_ids: [small.digest, big.digest, small.digest] },
    }, MT.dockerConfig);
    image.blobs.set(config.digest, config.bytes);
    const third = where === "layers"
      ? layer(small, big.size)
      : { mediaType: small.mediaType, digest: config.digest, size: config.size + 512 };
    const body = manifestBlob({
      schemaVersion: 2,
      mediaType: MT.dockerManifest,
      config: { mediaType: config.mediaType, digest: config.digest, size: config.size },
      layers: [layer(small), layer(big), third],
    }, MT.dockerManifest);
    putManifest(image, image.tag, body);
    return {
      image,
      expected: null,
      check: (run) => exactly(run, "layer", 0, "refused before any download"),
    };
  })
);

/** Control characters a terminal acts on: ESC, BEL, CR, C1 CSI, backspace. */
// deno-lint-ignore no-control-regex
const TERMINAL_CONTROLS = /[\x00-\x09\x0b-\x1f\x7f-\x9f]/;

function noControls(stderr: string, stdout: string): string[] {
  const found = [...`${stderr}${stdout}`].filter((c) => TERMINAL_CONTROLS.test(c));
  return expect(
    found.length === 0,
    `printed ${found.length} control characters: ${JSON.stringify(found.join("").slice(0, 20))}`,
  );
}

const ESCAPES = "\x1b]0;pwned\x07\x1b[2J\r[+] Wrote docker.io/library/ubuntu:latest\x9b31m\b";

/**
 * 11.9: registry text (error messages, platform strings) printed byte for byte let a registry
 * retitle the window, clear the screen and forge a `[+] Wrote …` line.
 */
const terminalInjection: Scenario[] = [
  fault({
    id: "escape-in-error-message",
    cls: "terminal-injection",
    title: "escape sequences in a registry error message are printed harmlessly",
    code: 4,
    message: /not found|pwned/i,
  }, () => ({
    handler: () => (req) =>
      pathOf(req).includes("/manifests/")
        ? Response.json({ errors: [{ code: "MANIFEST_UNKNOWN", message: ESCAPES }] }, {
          status: 404,
        })
        : undefined,
    expected: null,
    check: (_run, outcome) => noControls(outcome.stderr, outcome.stdout),
  })),
  fault({
    id: "escape-in-platform",
    cls: "terminal-injection",
    title: "escape sequences in an index's platform strings are printed harmlessly",
    code: 1,
    message: /platform/i,
  }, () => {
    const image = buildImage();
    const index = buildIndex([{
      manifest: image.manifest,
      platform: { os: "linux", architecture: `arm64${ESCAPES}` },
    }]);
    putManifest(image, image.tag, index);
    return {
      image,
      expected: null,
      check: (_run, outcome) => noControls(outcome.stderr, outcome.stdout),
    };
  }),
];

/** A line feed in a registry's message must not start a line of its own (a forged `[+]`). */
const lineInjection: Scenario = fault({
  id: "newline-in-error-message",
  cls: "terminal-injection",
  title: "a line feed in a registry error message cannot forge a [+] line",
  code: 4,
  message: /not found|oops/i,
}, () => ({
  handler: () => (req) =>
    pathOf(req).includes("/manifests/")
      ? Response.json({
        errors: [{
          code: "MANIFEST_UNKNOWN",
          message: "oops\n[+] Wrote docker.io/library/ubuntu:latest\r\n[+] Image ID: sha256:0",
        }],
      }, { status: 404 })
      : undefined,
  expected: null,
  check: (_run, outcome) =>
    expect(
      !outcome.stderr.split("\n").some((l) =>
        l.startsWith("[+] Wrote") || l.startsWith("[+] Image")
      ),
      `a forged line reached the terminal: ${JSON.stringify(outcome.stderr)}`,
    ),
}));

/**
 * Two images in one output, one of them giving a shared layer another size: laid out with one
 * size and downloaded with the other, the surplus would spill over the next members.
 */
const crossImageSizes: Scenario = fault({
  id: "digest-two-sizes-across-images",
  cls: "member-injection",
  title: "two images giving one layer two sizes in one archive are refused before any download",
  code: 8,
  message: /listed with two sizes/,
}, () => {
  const image = buildImage({ layers: [20 * 1024], repository: "test/a" });
  const layer = image.layers[0];
  const lying = manifestBlob({
    schemaVersion: 2,
    mediaType: MT.dockerManifest,
    config: {
      mediaType: image.config.mediaType,
      digest: image.config.digest,
      size: image.config.size,
    },
    layers: [{ mediaType: layer.mediaType, digest: layer.digest, size: 1024 }],
  }, MT.dockerManifest);
  image.manifests.set("test/b:latest", { bytes: lying.bytes, mediaType: lying.mediaType });
  return {
    image,
    ref: (img, registry) => `${registry.host}/${img.repository}:latest`,
    args: (_img, registry) => [`${registry.host}/test/b:latest`],
    expected: null,
    check: (run) => exactly(run, "layer", 0, "refused before any download"),
  };
});

/** 11.14: `-q` hides progress, not the warning that a password was given on the command line. */
const warnings: Scenario[] = [
  fault({
    id: "quiet-keeps-password-warning",
    cls: "warnings",
    title: "-q keeps the --password warning",
    code: 0,
  }, () => {
    const password = `Pw-${crypto.randomUUID()}`;
    return {
      args: ["-q", "--username", "someone", "--password", password],
      secrets: [password],
      check: (_run, outcome) =>
        expect(
          /Warning: --password/.test(outcome.stderr),
          `no --password warning with -q: ${JSON.stringify(outcome.stderr)}`,
        ),
    };
  }),
];

/** The scenarios, in class order. */
export const SCENARIOS: Scenario[] = [
  digestPin,
  ...memberInjection,
  crossImageSizes,
  ...terminalInjection,
  lineInjection,
  ...warnings,
];
