/**
 * Content digests (`algorithm:hex`): validation and incremental hashing.
 *
 * A digest that came from a registry is untrusted until {@link parseDigest}
 * accepted it; only then may it become part of a file name.
 *
 * @example
 * ```ts
 * const d = parseDigest("sha256:" + "a".repeat(64));
 * const hasher = new DigestHasher(d.algorithm);
 * hasher.update(new Uint8Array([1, 2, 3]));
 * hasher.digest(); // "sha256:…"
 * ```
 * @module
 */
import { createHash, type Hash } from "node:crypto";
import { InvalidContentError } from "./errors.ts";

/** Hash algorithms we verify, with the length of their hex encoding. */
const HEX_LENGTH = { sha256: 64, sha512: 128 } as const;

/** A supported digest algorithm. */
export type DigestAlgorithm = keyof typeof HEX_LENGTH;

/** A validated digest, split in its parts. */
export interface Digest {
  algorithm: DigestAlgorithm;
  hex: string;
  /** `algorithm:hex` */
  value: string;
}

/** True when `value` is a well-formed digest of a supported algorithm. */
export function isDigest(value: unknown): value is string {
  if (typeof value !== "string") return false;
  const colon = value.indexOf(":");
  if (colon < 0) return false;
  const algorithm = value.slice(0, colon);
  const hex = value.slice(colon + 1);
  if (!Object.hasOwn(HEX_LENGTH, algorithm)) return false;
  return hex.length === HEX_LENGTH[algorithm as DigestAlgorithm] && /^[0-9a-f]+$/.test(hex);
}

/**
 * Validates an untrusted digest string. Throws {@link InvalidContentError}
 * for anything else, including path-traversal attempts such as `sha256:../x`.
 */
export function parseDigest(value: unknown, what = "digest"): Digest {
  if (!isDigest(value)) {
    const shown = typeof value === "string" ? JSON.stringify(value.slice(0, 100)) : typeof value;
    throw new InvalidContentError(
      `invalid ${what} ${shown}: expected sha256:<64 hex> or sha512:<128 hex>`,
    );
  }
  const colon = value.indexOf(":");
  return {
    algorithm: value.slice(0, colon) as DigestAlgorithm,
    hex: value.slice(colon + 1),
    value,
  };
}

/** Incremental hash that yields an `algorithm:hex` digest. */
export class DigestHasher {
  readonly #hash: Hash;
  readonly #algorithm: DigestAlgorithm;
  /** Bytes hashed so far. */
  length = 0;

  constructor(algorithm: DigestAlgorithm = "sha256") {
    this.#algorithm = algorithm;
    this.#hash = createHash(algorithm);
  }

  /** Adds bytes to the hash. */
  update(chunk: Uint8Array): void {
    this.#hash.update(chunk);
    this.length += chunk.byteLength;
  }

  /** Finishes the hash; the hasher cannot be used afterwards. */
  digest(): string {
    return `${this.#algorithm}:${this.#hash.digest("hex")}`;
  }
}

/** Digest of a whole buffer. */
export function digestOf(bytes: Uint8Array, algorithm: DigestAlgorithm = "sha256"): string {
  const hasher = new DigestHasher(algorithm);
  hasher.update(bytes);
  return hasher.digest();
}
