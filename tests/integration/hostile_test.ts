/**
 * Hostile and broken registries, through the CLI: transient failures are retried and the pull
 * completes; permanent ones (401/403/404, integrity, invalid content, bad digests, refused
 * redirects, broken auth) end in one clean `[-]` line with the documented exit code, no stack
 * trace and no file left behind. One test per fault class; its scenarios run concurrently.
 * The scenarios live in tests/helpers/hostile_scenarios.ts (shared with
 * scripts/reliability.ts).
 */
import { testClasses } from "../helpers/hostile_scenarios.ts";

const CLASSES = [
  "transient-503",
  "transient-502",
  "transient-500",
  "transient-429",
  "transient-cut",
  "transient-stall",
  "rate-limit",
  "not-retried",
  "resume",
  "stall-forever",
  "blob-integrity",
  "manifest-integrity",
  "invalid-content",
  "bad-digests",
  "redirects",
  "redirect-credentials",
  "www-authenticate",
  "token-endpoint",
  "plain-http-fallback",
  "huge-bodies",
];

testClasses("hostile", CLASSES);
