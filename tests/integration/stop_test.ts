/**
 * Stopping cleanly: SIGINT/SIGTERM during a download exit with 130 within 2 s and leave no
 * temporary file (and, with a cache, only verified blobs and resumable partials); a full disk,
 * a read-only output directory and an output path that is a directory end in exit 7, the last
 * two before any blob is requested. The disk cases mount small tmpfs file systems, so this file
 * needs root (as the test machines run).
 */
import { testClasses } from "../helpers/hostile_scenarios.ts";

testClasses("stop", ["interrupt", "local-disk"]);
