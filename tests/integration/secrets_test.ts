/**
 * Secrets and tokens against real Distribution (TLS + htpasswd Basic, TLS + token server): no
 * password, token or Authorization value appears in stdout or stderr, with --verbose too, for
 * good and bad credentials and failing or hostile token servers; tokens that expire during a
 * pull are renewed. One set of registries serves every step.
 */
import assert from "node:assert/strict";
import { describeBad, Services } from "../helpers/hostile_runner.ts";
import { classTitle, runClass } from "../helpers/hostile_scenarios.ts";

Deno.test("secrets: no secret in any output; tokens renewed mid-pull", async (t) => {
  const services = new Services();
  try {
    for (
      const cls of [
        "token-expiry",
        "secrets-token",
        "secrets-basic",
        "secrets-failing-token-server",
      ]
    ) {
      await t.step(classTitle(cls), async () => {
        const results = await runClass(cls, services);
        const bad = describeBad(results);
        assert.ok(bad === "", `\n${bad}`);
      });
    }
  } finally {
    await services.close();
  }
});
