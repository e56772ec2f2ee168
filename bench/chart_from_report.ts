/**
 * Draws the SVG chart of a side-by-side run from its markdown report (what `bench/run.ts` prints
 * and appends to `--out`), for runs measured before `--chart` existed or kept only as text.
 *
 *     deno run -A bench/chart_from_report.ts REPORT.md --image nginx-like --out docs/bench-wan.svg
 *       [--title TEXT] [--all-rows]
 *
 * The report's first table of that image is used; its link limit row becomes the limit line.
 * @module
 */
import { parseArgs } from "node:util";
import { type ChartOptions, type ChartRow, renderBarChart } from "./chart.ts";

/** One image's table of a report, ready for {@link renderBarChart}. */
export interface ReportChart {
  /** "wan", "loopback", … (the report's `## LINK — DATE` heading), if found. */
  link?: string;
  date?: string;
  image: string;
  rows: ChartRow[];
  limit?: { label: string; seconds: number };
}

/**
 * The rows a chart shows: the pullers. The curl rows are transfer ceilings (they discard what
 * they fetch), so they are left out unless `allRows`; failed rows have no time to draw.
 */
export function isPullerRow(label: string): boolean {
  return !label.startsWith("curl");
}

const number = (cell: string) => {
  const m = cell.trim().match(/^(\d+(?:\.\d+)?)/);
  return m ? Number(m[1]) : undefined;
};

/** Reads the first table of `image` in a report written by bench/run.ts. */
export function parseReport(markdown: string, image: string, allRows = false): ReportChart {
  const lines = markdown.split("\n");
  let link: string | undefined;
  let date: string | undefined;
  let start = -1;
  for (let i = 0; i < lines.length; i++) {
    const run = lines[i].match(/^#{2,4} (\S+(?: \([^)]*\))?) — (\S+), \d+ runs? per tool/);
    if (run) [link, date] = [run[1], run[2]];
    if (new RegExp(`^#{3,5} ${image.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")} — `).test(lines[i])) {
      start = i;
      break;
    }
  }
  if (start < 0) throw new Error(`no table of image ${image} in the report`);
  const rows: ChartRow[] = [];
  let limit: ReportChart["limit"];
  let seen = false;
  for (let i = start + 1; i < lines.length; i++) {
    const line = lines[i].trim();
    if (!line.startsWith("|")) {
      if (seen) break;
      continue;
    }
    seen = true;
    const cells = line.slice(1, -1).split("|").map((c) => c.trim());
    if (cells[0] === "tool" || /^:?-+:?$/.test(cells[0])) continue;
    const [label, medianCell, minCell, maxCell] = cells;
    const seconds = number(medianCell);
    if (seconds === undefined) continue; // failed
    if (label.startsWith("link limit")) {
      limit = { label: "link limit", seconds };
      continue;
    }
    if (!allRows && !isPullerRow(label)) continue;
    rows.push({ label, seconds, min: number(minCell), max: number(maxCell) });
  }
  return { link, date, image, rows, limit };
}

/**
 * Chart options for a parsed table: title from the image and link; the baseline is imgpull at its
 * default setting (the row labelled "(default)"), else the first row.
 */
export function chartOptions(chart: ReportChart, title?: string): ChartOptions {
  const baseline = Math.max(0, chart.rows.findIndex((r) => r.label.includes("(default)")));
  // The same words as bench/run.ts --chart.
  const where = chart.link === undefined
    ? ""
    : chart.link.startsWith("wan")
    ? ": a cold pull on the emulated WAN"
    : `: a cold pull on ${chart.link}`;
  return {
    title: title ?? `${chart.image}${where}`,
    subtitle: [
      chart.date,
      `bar: median; ratio to ${chart.rows[baseline]?.label.replace(" (default)", "") ?? "—"}`,
      chart.limit ? "dashed: link limit (5 RTT)" : undefined,
    ].filter(Boolean).join(" · "),
    limit: chart.limit,
    baseline,
  };
}

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: {
      image: { type: "string", default: "nginx-like" },
      out: { type: "string" },
      title: { type: "string" },
      "all-rows": { type: "boolean" },
    },
  });
  if (positionals.length !== 1 || !values.out) {
    console.error(
      "usage: deno run -A bench/chart_from_report.ts REPORT.md --image NAME --out FILE.svg " +
        "[--title TEXT] [--all-rows]",
    );
    Deno.exit(2);
  }
  const chart = parseReport(
    await Deno.readTextFile(positionals[0]),
    values.image,
    values["all-rows"],
  );
  await Deno.writeTextFile(
    values.out,
    renderBarChart(chart.rows, chartOptions(chart, values.title)),
  );
  console.error(`wrote ${values.out} (${chart.rows.length} bars)`);
}

if (import.meta.main) await main();
