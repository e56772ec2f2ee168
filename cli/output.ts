/**
 * Every byte imgpull prints goes through here: secrets redacted (see lib/redact.ts) and control
 * characters from outside (registry messages, platform strings, URLs) made harmless, so that a
 * registry cannot move the cursor, retitle the window or forge a `[+]` line.
 *
 * @module
 */
import { redact } from "../lib/redact.ts";

const encoder = new TextEncoder();

/**
 * Replaces C0 controls (but newline), DEL and C1 controls with `?`, and a carriage return too:
 * text may only move down a line, never back over what was printed.
 *
 * @example
 * ```ts
 * printable("bad\x1b]0;title\x07"); // "bad?]0;title?"
 * ```
 */
export function printable(text: string): string {
  // deno-lint-ignore no-control-regex
  return text.replace(/[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g, "?");
}

/** Progress, messages and errors on stderr. */
export function writeErr(text: string): void {
  Deno.stderr.writeSync(encoder.encode(printable(redact(text))));
}

/** Terminal control sequences of our own (cursor moves for the bars), written as they are. */
export function writeErrControl(sequence: string): void {
  Deno.stderr.writeSync(encoder.encode(sequence));
}

/** Results (the archive path, listings) on stdout, one line each. */
export function writeOut(text: string): void {
  Deno.stdout.writeSync(encoder.encode(`${printable(redact(text))}\n`));
}

/**
 * Text from outside (a registry's error message, a platform string, a URL) as one line: line
 * breaks become spaces, so that it cannot start a line of its own (a forged `[+] Wrote …`).
 *
 * @example
 * ```ts
 * oneLine("oops\n[+] Wrote x"); // "oops [+] Wrote x"
 * ```
 */
export function oneLine(text: string): string {
  return text.replace(/\r\n|[\r\n\u2028\u2029\x85]/g, " ");
}
