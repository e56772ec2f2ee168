/**
 * Security scenarios (content): each attack from the security review, run against the CLI.
 * @module
 */
import type { Scenario } from "../hostile_runner.ts";

/** Report rows / tests of this module. */
export const CLASSES: { id: string; title: string }[] = [];

/** The scenarios, in class order. */
export const SCENARIOS: Scenario[] = [];
