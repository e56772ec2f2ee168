/**
 * The security review's attacks (hostile registry, shared cache, hostile archives), through the
 * CLI: each must end in the documented exit code with nothing unverified written. One test per
 * class; the scenarios live in tests/helpers/scenarios/security_*.ts.
 */
import { testClasses } from "../helpers/hostile_scenarios.ts";
import { SECURITY_CLASSES } from "../helpers/scenarios/security.ts";

testClasses("security", SECURITY_CLASSES.map((c) => c.id));
