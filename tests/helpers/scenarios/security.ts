/**
 * The security review's attacks as fault scenarios (docs/security.md lists what each proves).
 * One module per area, so that each stays about one idea.
 * @module
 */
import type { Scenario } from "../hostile_runner.ts";
import * as auth from "./security_auth.ts";
import * as cache from "./security_cache.ts";
import * as content from "./security_content.ts";
import * as fetch from "./security_fetch.ts";
import * as rootfs from "./security_rootfs.ts";

const AREAS = [content, auth, cache, fetch, rootfs];

/** Report rows / tests of the security suite. */
export const SECURITY_CLASSES: { id: string; title: string }[] = AREAS.flatMap((a) => a.CLASSES);

/** Every security scenario. */
export const SECURITY_SCENARIOS: Scenario[] = AREAS.flatMap((a) => a.SCENARIOS);
