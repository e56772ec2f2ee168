/**
 * Small base64 helpers (the JSR std modules are out of reach).
 * @module
 */

/** Decodes standard or URL-safe base64, with or without padding. */
export function decodeBase64Url(text: string): Uint8Array<ArrayBuffer> {
  let b64 = text.replace(/-/g, "+").replace(/_/g, "/").replace(/=+$/, "");
  b64 += "=".repeat((4 - (b64.length % 4)) % 4);
  const binary = atob(b64);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/** Encodes UTF-8 text as standard base64 (for Basic credentials). */
export function encodeBase64Text(text: string): string {
  const bytes = new TextEncoder().encode(text);
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary);
}
