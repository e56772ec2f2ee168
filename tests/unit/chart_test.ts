/**
 * The benchmark chart (bench/chart.ts): well-formed XML, escaped labels, bars and whiskers to
 * scale, the link limit line, ratios; and the report parser of bench/chart_from_report.ts.
 *
 * @module
 */
import assert from "node:assert/strict";
import { escapeXml, niceStep, renderBarChart } from "../../bench/chart.ts";
import { chartOptions, parseReport } from "../../bench/chart_from_report.ts";
import { chartPath } from "../../bench/run.ts";

interface Element {
  name: string;
  attrs: Map<string, string>;
  text: string;
  children: Element[];
}

const ENTITY = /&(?:amp|lt|gt|quot|apos|#\d+|#x[0-9a-fA-F]+);/g;

/**
 * A strict little XML parser for what the chart emits: one prolog, elements with quoted
 * attributes, character data with the five entities. Throws on anything not well-formed
 * (unbalanced tags, a raw `<` or `&`, duplicate or unquoted attributes).
 */
function parseXml(text: string): Element {
  let pos = 0;
  const fail = (why: string): never => {
    throw new Error(
      `not well-formed at ${pos}: ${why}: ${JSON.stringify(text.slice(pos, pos + 40))}`,
    );
  };
  const checkText = (s: string) => {
    if (s.replace(ENTITY, "").match(/[&<]/)) fail(`raw markup character in ${JSON.stringify(s)}`);
    // deno-lint-ignore no-control-regex
    if (/[\u0000-\u0008\u000b\u000c\u000e-\u001f]/.test(s)) fail("control character");
  };
  const decode = (s: string) =>
    s.replace(
      ENTITY,
      (e) =>
        ({ "&amp;": "&", "&lt;": "<", "&gt;": ">", "&quot;": '"', "&apos;": "'" })[e] ??
          String.fromCodePoint(
            Number(e.startsWith("&#x") ? `0x${e.slice(3, -1)}` : e.slice(2, -1)),
          ),
    );
  if (text.startsWith("<?xml")) {
    const end = text.indexOf("?>");
    if (end < 0) fail("unterminated prolog");
    pos = end + 2;
  }
  const stack: Element[] = [];
  let root: Element | undefined;
  while (pos < text.length) {
    const lt = text.indexOf("<", pos);
    const chunk = text.slice(pos, lt < 0 ? text.length : lt);
    checkText(chunk);
    if (stack.length) stack[stack.length - 1].text += decode(chunk);
    else if (chunk.trim()) fail("text outside the root element");
    if (lt < 0) break;
    pos = lt;
    const close = text.slice(pos).match(/^<\/([A-Za-z][\w:.-]*)\s*>/);
    if (close) {
      const open = stack.pop();
      if (!open || open.name !== close[1]) fail(`</${close[1]}> closes ${open?.name}`);
      pos += close[0].length;
      continue;
    }
    const tag = text.slice(pos).match(/^<([A-Za-z][\w:.-]*)((?:\s+[\w:.-]+="[^"<]*")*)\s*(\/?)>/);
    if (!tag) fail("bad tag");
    const attrs = new Map<string, string>();
    for (const m of tag![2].matchAll(/([\w:.-]+)="([^"]*)"/g)) {
      if (attrs.has(m[1])) fail(`duplicate attribute ${m[1]}`);
      checkText(m[2]);
      attrs.set(m[1], decode(m[2]));
    }
    const el: Element = { name: tag![1], attrs, text: "", children: [] };
    if (stack.length) stack[stack.length - 1].children.push(el);
    else if (root) fail("second root element");
    else root = el;
    if (!tag![3]) stack.push(el);
    pos += tag![0].length;
  }
  if (stack.length) fail(`unclosed <${stack[stack.length - 1].name}>`);
  if (!root) fail("no root element");
  return root!;
}

const all = (el: Element, name: string): Element[] => [
  ...(el.name === name ? [el] : []),
  ...el.children.flatMap((c) => all(c, name)),
];
const num = (el: Element, attr: string) => Number(el.attrs.get(attr));

const ROWS = [
  { label: "imgpull c=3 (default)", seconds: 2, min: 1.5, max: 2.5 },
  { label: "skopeo copy → docker-archive", seconds: 16, min: 15, max: 17 },
  { label: "docker pull + save", seconds: 12 },
];

Deno.test("chart: the SVG is well-formed XML with one bar per row and a limit line", () => {
  const svg = renderBarChart(ROWS, {
    title: "nginx-like on the WAN",
    subtitle: "3 runs",
    limit: { label: "link limit", seconds: 1.33 },
  });
  const root = parseXml(svg);
  assert.equal(root.name, "svg");
  assert.equal(root.attrs.get("xmlns"), "http://www.w3.org/2000/svg");
  const bars = all(root, "rect").filter((r) => r.attrs.get("height") === "16");
  assert.equal(bars.length, 3);
  // Whiskers only where runs differ.
  assert.equal(all(root, "path").length, 2);
  const limit = all(root, "line").filter((l) => l.attrs.get("stroke-dasharray"));
  assert.equal(limit.length, 1);
  const texts = all(root, "text").map((t) => t.text);
  assert.ok(texts.includes("nginx-like on the WAN"));
  assert.ok(texts.includes("link limit: 1.33 s (0.67×)"), texts.join(" | "));
  assert.ok(texts.includes("2.00 s · 1.00×"));
  assert.ok(texts.includes("16.00 s · 8.00×"));
  assert.ok(texts.includes("12.00 s · 6.00×"));
  assert.ok(texts.includes("skopeo copy → docker-archive"));
});

Deno.test("chart: labels and titles are escaped", () => {
  const evil = `a<b>&"c'</text><script>alert(1)</script>\u0001`;
  const svg = renderBarChart([{ label: evil, seconds: 1 }], { title: evil, subtitle: evil });
  assert.ok(!svg.includes("<script>"));
  const root = parseXml(svg);
  assert.equal(all(root, "script").length, 0);
  const clean = evil.replace("\u0001", "");
  assert.equal(all(root, "title")[0].text, clean);
  assert.equal(root.attrs.get("aria-label"), clean);
  assert.equal(all(root, "text").filter((t) => t.text === clean).length, 3);
  assert.equal(escapeXml(`&<>"'`), "&amp;&lt;&gt;&quot;&apos;");
});

Deno.test("chart: bars, whiskers and the limit are to scale", () => {
  const svg = renderBarChart(ROWS, { title: "t", limit: { label: "limit", seconds: 4 } });
  const root = parseXml(svg);
  const bars = all(root, "rect").filter((r) => r.attrs.get("height") === "16");
  const x0 = num(bars[0], "x");
  const w = bars.map((b) => num(b, "width"));
  // Widths proportional to the medians (2 : 16 : 12), within rounding.
  assert.ok(Math.abs(w[1] / w[0] - 8) < 0.05, `${w}`);
  assert.ok(Math.abs(w[2] / w[0] - 6) < 0.05, `${w}`);
  // The axis reaches a round number at or above the slowest run (17 → 20, step 5).
  const ticks = all(root, "text").filter((t) =>
    t.attrs.get("text-anchor") === "middle" &&
    /^\d+(\.\d+)?$/.test(t.text)
  );
  assert.deepEqual(ticks.map((t) => t.text), ["0", "5", "10", "15", "20"]);
  const perSecond = (num(ticks[4], "x") - x0) / 20;
  assert.ok(Math.abs(w[1] - 16 * perSecond) < 0.2);
  const limit = all(root, "line").find((l) => l.attrs.get("stroke-dasharray"))!;
  assert.ok(Math.abs(num(limit, "x1") - (x0 + 4 * perSecond)) < 0.2);
  // The first whisker spans 1.5 s to 2.5 s.
  const d = all(root, "path")[0].attrs.get("d")!;
  const [a, b] = d.match(/^M([\d.]+) [\d.]+H([\d.]+)/)!.slice(1).map(Number);
  assert.ok(
    Math.abs(a - (x0 + 1.5 * perSecond)) < 0.2 && Math.abs(b - (x0 + 2.5 * perSecond)) < 0.2,
  );
});

Deno.test("chart: the baseline option, nice steps, bad input", () => {
  const svg = renderBarChart(ROWS, { title: "t", baseline: 2 });
  const texts = all(parseXml(svg), "text").map((t) => t.text);
  assert.ok(texts.includes("12.00 s · 1.00×") && texts.includes("2.00 s · 0.17×"));
  assert.deepEqual([0.9, 1.33, 17, 136, 0].map((m) => niceStep(m)), [0.2, 0.5, 5, 50, 1]);
  assert.throws(() => renderBarChart([{ label: "x", seconds: NaN }], { title: "t" }), RangeError);
  assert.throws(() => renderBarChart([{ label: "x", seconds: -1 }], { title: "t" }), RangeError);
  assert.throws(() => renderBarChart(ROWS, { title: "t", baseline: 3 }), RangeError);
  // No rows: still a document.
  assert.equal(parseXml(renderBarChart([], { title: "empty" })).name, "svg");
});

Deno.test("chart: a bench/run.ts report becomes chart rows", () => {
  const report = `## wan — 2026-12-02T05:26:38Z, 3 runs per tool

### nginx-like — \`bench/nginx-like:v1\` (linux/amd64 of an OCI index), 7 layers

| tool | median s | min s | max s | ÷ imgpull c=3 | peak RSS MB | connections |
| --- | ---: | ---: | ---: | ---: | ---: | ---: |
| imgpull c=1 | 2.50 | 2.40 | 2.60 | 1.20× | 70 | 9 |
| imgpull c=3 (default) | 2.07 | 2.05 | 2.15 | 1.00× | 80 | 17 + 1 token |
| docker pull + save (overlay2) | 11.79 (pull 10.52 + save 1.11) | 11.08 | 13.46 | 5.69× | 132 | 12 |
| podman pull + save | failed: podman pull: exit 125 | | | | | |
| curl, every blob at once | 7.47 | 7.45 | 7.47 | 3.60× | 13 | 8 |
| link limit: 54.2 MB ÷ 400 Mbit/s + 5 RTT | 1.33 | | | 0.64× | | |

- imgpull c=3 vs skopeo: 7.58× faster
`;
  const chart = parseReport(report, "nginx-like");
  assert.equal(chart.link, "wan");
  assert.equal(chart.date, "2026-12-02T05:26:38Z");
  assert.deepEqual(chart.rows, [
    { label: "imgpull c=1", seconds: 2.5, min: 2.4, max: 2.6 },
    { label: "imgpull c=3 (default)", seconds: 2.07, min: 2.05, max: 2.15 },
    { label: "docker pull + save (overlay2)", seconds: 11.79, min: 11.08, max: 13.46 },
  ]);
  assert.deepEqual(chart.limit, { label: "link limit", seconds: 1.33 });
  assert.equal(chartOptions(chart).baseline, 1);
  assert.equal(parseReport(report, "nginx-like", true).rows.length, 4);
  assert.throws(() => parseReport(report, "big"), /no table of image big/);
});

Deno.test("chart: --chart names one file per image when a run has several", () => {
  assert.equal(chartPath("docs/bench-wan.svg", "big", false), "docs/bench-wan.svg");
  assert.equal(chartPath("docs/bench-wan.svg", "big", true), "docs/bench-wan-big.svg");
  assert.equal(chartPath("out", "many", true), "out-many.svg");
});
