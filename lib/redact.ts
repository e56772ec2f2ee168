/**
 * Secrets never reach any output. Whatever credential or token the library
 * handles is registered here, and the CLI passes every line it prints
 * through {@link redact} — messages, hints, `--verbose` logs and stack
 * traces alike, including text a hostile registry echoed back to us.
 *
 * @example
 * ```ts
 * registerSecret("hunter2");
 * redact("login failed for hunter2"); // "login failed for ***"
 * ```
 * @module
 */

const secrets = new Set<string>();

/** Shorter values would redact ordinary words; they are not worth guessing anyway. */
const MIN_SECRET_LENGTH = 4;

/** Remembers a secret (and its Basic-auth and base64 forms are registered by callers). */
export function registerSecret(value: string | undefined): void {
  if (value && value.length >= MIN_SECRET_LENGTH) secrets.add(value);
}

/** Replaces every registered secret in `text` with `***`. */
export function redact(text: string): string {
  if (secrets.size === 0) return text;
  // Longest first, so that a secret containing another is replaced whole.
  for (const secret of [...secrets].sort((a, b) => b.length - a.length)) {
    text = text.replaceAll(secret, "***");
  }
  return text;
}
