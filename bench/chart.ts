/**
 * A dependency-free SVG bar chart of one side-by-side benchmark: one horizontal bar per tool (its
 * median), a whisker from the fastest to the slowest run, a dashed vertical line at the link limit,
 * and beside each bar its median seconds and its ratio to the baseline (imgpull).
 *
 * `renderBarChart` is pure (rows in, SVG text out), so it is unit-tested without a run
 * (tests/unit/chart_test.ts); `bench/run.ts --chart FILE` and `bench/chart_from_report.ts` call it.
 * @module
 */

/** One bar: a tool's median wall time and the spread of its runs, in seconds. */
export interface ChartRow {
  label: string;
  seconds: number;
  /** Fastest run (default: `seconds`). */
  min?: number;
  /** Slowest run (default: `seconds`). */
  max?: number;
}

/** Options of {@link renderBarChart}. */
export interface ChartOptions {
  title: string;
  /** A second, smaller line under the title (link, image, date). */
  subtitle?: string;
  /** Drawn as a dashed vertical line across every bar. */
  limit?: { label: string; seconds: number };
  /** Row whose median the ratios divide by (default 0: the first row). */
  baseline?: number;
  /** Total width in pixels (default 820). */
  width?: number;
}

const ROW_HEIGHT = 30;
const BAR_HEIGHT = 16;
const LABEL_WIDTH = 270;
const VALUE_WIDTH = 130;
const TOP = 84;
const BOTTOM = 44;
const FONT = "font-family=\"system-ui, -apple-system, 'Segoe UI', sans-serif\"";

/** Escapes text for XML character data and attribute values; drops characters XML forbids. */
export function escapeXml(text: string): string {
  return text
    // deno-lint-ignore no-control-regex
    .replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f\ufffe\uffff]/g, "")
    .replace(/&/g, "&amp;")
    .replace(/</g, "&lt;")
    .replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;")
    .replace(/'/g, "&apos;");
}

/** A round tick step (1, 2 or 5 × 10^n) giving about `target` ticks up to `max`. */
export function niceStep(max: number, target = 6): number {
  if (!(max > 0)) return 1;
  const raw = max / target;
  const power = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 5, 10]) if (raw <= m * power) return m * power;
  return 10 * power;
}

/** Seconds as the reports print them: two decimals below 100, else one. */
function fmtSeconds(s: number): string {
  return s < 100 ? s.toFixed(2) : s.toFixed(1);
}

function fmtRatio(x: number): string {
  return `${x < 10 ? x.toFixed(2) : x.toFixed(1)}×`;
}

/** Pixel coordinates rounded to 0.1: short, stable output. */
const px = (n: number) => String(Math.round(n * 10) / 10);

function checkSeconds(value: number, what: string): void {
  if (!Number.isFinite(value) || value < 0) {
    throw new RangeError(`chart: ${what} must be a finite number ≥ 0, got ${value}`);
  }
}

/**
 * Renders `rows` as a standalone SVG document (UTF-8 text). Bars are drawn in the given order,
 * top to bottom; the scale runs from 0 to a round number above every median, maximum and the
 * limit. Throws a RangeError for negative or non-finite seconds, or a baseline out of range.
 */
export function renderBarChart(rows: readonly ChartRow[], options: ChartOptions): string {
  const baseline = options.baseline ?? 0;
  if (rows.length > 0 && (baseline < 0 || baseline >= rows.length)) {
    throw new RangeError(`chart: baseline ${baseline} is not a row`);
  }
  for (const r of rows) {
    checkSeconds(r.seconds, `${r.label}: seconds`);
    if (r.min !== undefined) checkSeconds(r.min, `${r.label}: min`);
    if (r.max !== undefined) checkSeconds(r.max, `${r.label}: max`);
  }
  if (options.limit) checkSeconds(options.limit.seconds, "the limit");

  const width = options.width ?? 820;
  const x0 = LABEL_WIDTH;
  const x1 = width - VALUE_WIDTH;
  const top = Math.max(
    0,
    ...rows.map((r) => Math.max(r.seconds, r.max ?? r.seconds)),
    options.limit?.seconds ?? 0,
  );
  const step = niceStep(top);
  const scaleMax = Math.max(step, Math.ceil(top / step) * step);
  const x = (s: number) => x0 + (s / scaleMax) * (x1 - x0);
  const plotBottom = TOP + rows.length * ROW_HEIGHT;
  const height = plotBottom + BOTTOM;
  const base = rows[baseline]?.seconds;

  const out: string[] = [
    `<?xml version="1.0" encoding="UTF-8"?>`,
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" ` +
    `viewBox="0 0 ${width} ${height}" role="img" aria-label="${escapeXml(options.title)}">`,
    `<title>${escapeXml(options.title)}</title>`,
    `<rect width="${width}" height="${height}" fill="#ffffff"/>`,
    `<text x="12" y="24" ${FONT} font-size="16" font-weight="600" fill="#111">` +
    `${escapeXml(options.title)}</text>`,
  ];
  if (options.subtitle) {
    out.push(
      `<text x="12" y="42" ${FONT} font-size="12" fill="#555">` +
        `${escapeXml(options.subtitle)}</text>`,
    );
  }
  // Grid and axis: a line per tick, labelled in seconds under the plot.
  for (let t = 0; t <= scaleMax + step / 1e6; t += step) {
    const tx = px(x(t));
    out.push(
      `<line x1="${tx}" y1="${TOP - 6}" x2="${tx}" y2="${plotBottom}" stroke="#e3e3e3"/>`,
      `<text x="${tx}" y="${plotBottom + 16}" ${FONT} font-size="11" fill="#555" ` +
        `text-anchor="middle">${escapeXml(String(Number(t.toPrecision(6))))}</text>`,
    );
  }
  out.push(
    `<text x="${px((x0 + x1) / 2)}" y="${plotBottom + 34}" ${FONT} font-size="11" ` +
      `fill="#555" text-anchor="middle">seconds (bar: median; whisker: fastest to slowest run)` +
      `</text>`,
  );

  rows.forEach((r, i) => {
    const cy = TOP + i * ROW_HEIGHT + ROW_HEIGHT / 2;
    const fill = i === baseline ? "#1f6feb" : "#8c959f";
    out.push(
      `<text x="${x0 - 10}" y="${px(cy + 4)}" ${FONT} font-size="12" fill="#111" ` +
        `text-anchor="end">${escapeXml(r.label)}</text>`,
      `<rect x="${x0}" y="${px(cy - BAR_HEIGHT / 2)}" width="${px(x(r.seconds) - x0)}" ` +
        `height="${BAR_HEIGHT}" fill="${fill}"/>`,
    );
    const lo = r.min ?? r.seconds;
    const hi = r.max ?? r.seconds;
    if (hi > lo) {
      const [a, b] = [px(x(lo)), px(x(hi))];
      out.push(
        `<path d="M${a} ${px(cy)}H${b}M${a} ${px(cy - 5)}V${px(cy + 5)}M${b} ${px(cy - 5)}V${
          px(cy + 5)
        }" stroke="#111" stroke-width="1.2" fill="none"/>`,
      );
    }
    const ratio = base !== undefined && base > 0 ? ` · ${fmtRatio(r.seconds / base)}` : "";
    out.push(
      `<text x="${px(Math.max(x(hi), x(r.seconds)) + 6)}" y="${px(cy + 4)}" ${FONT} ` +
        `font-size="12" fill="#111">${escapeXml(`${fmtSeconds(r.seconds)} s${ratio}`)}</text>`,
    );
  });

  if (options.limit) {
    const lx = px(x(options.limit.seconds));
    // Past the middle, the label ends at the line so it stays inside the picture.
    const anchor = x(options.limit.seconds) > (x0 + x1) / 2 ? "end" : "start";
    const ratio = base !== undefined && base > 0
      ? ` (${fmtRatio(options.limit.seconds / base)})`
      : "";
    out.push(
      `<line x1="${lx}" y1="${TOP - 10}" x2="${lx}" y2="${plotBottom}" stroke="#cf222e" ` +
        `stroke-width="1.5" stroke-dasharray="5 3"/>`,
      `<text x="${lx}" y="${TOP - 14}" ${FONT} font-size="11" fill="#cf222e" ` +
        `text-anchor="${anchor}">${
          escapeXml(`${options.limit.label}: ${fmtSeconds(options.limit.seconds)} s${ratio}`)
        }</text>`,
    );
  }
  out.push("</svg>", "");
  return out.join("\n");
}
