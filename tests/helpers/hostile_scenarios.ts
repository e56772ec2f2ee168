/**
 * The fault scenarios of the reliability suite, shared by `tests/integration/*` and
 * `scripts/reliability.ts`. Each scenario sets up a misbehaving registry (the in-test fault
 * registry, over HTTP or HTTPS, or real Distribution with a token server), pulls once with the
 * CLI and states the exit code and message a user must see; {@link ./hostile_runner.ts} judges
 * the rest (no stack trace, no file left behind, archive and cache verified, no secret printed).
 *
 * Scenarios are grouped in classes ({@link CLASSES}); a class is one test and one report row.
 * The scenarios themselves live in one module a fault family under `./scenarios/`; this module
 * puts them together.
 * @module
 */
import {
  describeBad,
  pool,
  type RunResult,
  runScenario,
  type Scenario,
  Services,
} from "./hostile_runner.ts";
import * as integrity from "./scenarios/integrity.ts";
import * as redirectsAuth from "./scenarios/redirects_auth.ts";
import * as resume from "./scenarios/resume.ts";
import * as secrets from "./scenarios/secrets.ts";
import { SECURITY_CLASSES, SECURITY_SCENARIOS } from "./scenarios/security.ts";
import * as stopping from "./scenarios/stopping.ts";
import * as transient from "./scenarios/transient.ts";

export { type Distribution, startDistribution } from "./scenarios/secrets.ts";
export { runLoad } from "./hostile_load.ts";

const FAMILIES = [transient, resume, integrity, redirectsAuth, stopping, secrets];

/** The report rows / tests, in order. */
export const CLASSES: { id: string; title: string }[] = [
  ...FAMILIES.flatMap((f) => f.CLASSES),
  { id: "load", title: "8 concurrent pulls of overlapping images into one cache" },
  ...SECURITY_CLASSES,
];

/** Every single-pull scenario, in class order. */
export const SCENARIOS: Scenario[] = [
  ...FAMILIES.flatMap((f) => f.SCENARIOS),
  ...SECURITY_SCENARIOS,
];

/** The scenarios of one class. */
export function scenariosOf(cls: string): Scenario[] {
  return SCENARIOS.filter((s) => s.cls === cls);
}

/** Concurrency that suits a class: runs that mostly wait on stall timers overlap well. */
export function concurrencyOf(cls: string): number {
  return cls.includes("stall") ? 10 : 6;
}

/** Runs every scenario of a class once (concurrently), with shared services. */
export async function runClass(
  cls: string,
  services: Services,
  options: { preexisting?: boolean } = {},
): Promise<RunResult[]> {
  const scenarios = scenariosOf(cls);
  if (scenarios.length === 0) throw new Error(`no scenarios in class ${cls}`);
  return await pool(
    scenarios.map((s) => () => runScenario(s, services, options)),
    concurrencyOf(cls),
  );
}

/** The title of a class. */
export function classTitle(cls: string): string {
  return CLASSES.find((c) => c.id === cls)?.title ?? cls;
}

/**
 * Registers one Deno test per fault class: every scenario of the class must end as expected
 * (a verified archive or a clean error), with the offending ones listed on failure.
 */
export function testClasses(prefix: string, classes: readonly string[]): void {
  for (const cls of classes) {
    Deno.test(`${prefix}: ${classTitle(cls)}`, async () => {
      const services = new Services();
      try {
        const bad = describeBad(await runClass(cls, services));
        if (bad !== "") throw new Error(`\n${bad}`);
      } finally {
        await services.close();
      }
    });
  }
}
