//! Draws a [`Report`] as one HTML page: inline CSS and SVG, no script, nothing loaded from
//! elsewhere. The same report gives the same bytes (no clock, no random ids), so pages can be
//! compared and archived.
//!
//! The page marks what tools read: each DAG node is a `<g class="node">` with `data-step`,
//! `data-label` and `data-status`; each plotted point is a `<circle class="point">` with
//! `data-series`, `data-x` and `data-value` (the exact number, as Rust prints an `f64`).

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::{Across, Dag, Plot, Report, Series, short_run_id};

/// Node boxes of the DAG, in SVG user units.
const NODE_HEIGHT: f64 = 34.0;
const NODE_MIN_WIDTH: f64 = 90.0;
const NODE_MAX_WIDTH: f64 = 260.0;
const COLUMN_GAP: f64 = 64.0;
const ROW_GAP: f64 = 14.0;
const DAG_MARGIN: f64 = 12.0;
/// Roughly how wide one character of the node font is, to size the boxes.
const CHAR_WIDTH: f64 = 7.2;

/// One chart per metric, in SVG user units.
const CHART_WIDTH: f64 = 440.0;
const CHART_HEIGHT: f64 = 240.0;
const CHART_LEFT: f64 = 64.0;
const CHART_RIGHT: f64 = 16.0;
const CHART_TOP: f64 = 28.0;
const CHART_BOTTOM: f64 = 64.0;
/// Axis labels longer than this are cut with an ellipsis (the point's tooltip has it whole).
const AXIS_LABEL_CHARS: usize = 18;

const STYLE: &str = "\
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;color:#1f2328;margin:24px auto;max-width:1100px;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.sub{color:#59636e;margin:0 0 12px}.sub code{font-size:13px}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;color:#fff}
.badge.succeeded{background:#1a7f37}.badge.failed{background:#cf222e}.badge.cancelled,.badge.unfinished{background:#6e7781}
table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #d1d9e0;padding:3px 10px;text-align:left}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#59636e;font-style:italic}
.scroll{overflow-x:auto;border:1px solid #d1d9e0;border-radius:6px;padding:4px}
svg text{font:12px system-ui,-apple-system,'Segoe UI',sans-serif;fill:#1f2328}
.node rect{stroke-width:1.5}
.node.succeeded rect{fill:#dafbe1;stroke:#1a7f37}
.node.cached rect{fill:#ddf4ff;stroke:#0969da}
.node.failed rect{fill:#ffebe9;stroke:#cf222e}
.node.skipped rect{fill:#f6f8fa;stroke:#8c959f;stroke-dasharray:4 3}
.node.not-run rect{fill:#fff;stroke:#afb8c1;stroke-dasharray:2 3}
.edge{fill:none;stroke:#8c959f;stroke-width:1.3}
.legend span{display:inline-block;margin-right:14px;font-size:12px}
.legend i{display:inline-block;width:12px;height:12px;border-radius:3px;margin-right:4px;vertical-align:-2px;border:1.5px solid}
.legend .succeeded i{background:#dafbe1;border-color:#1a7f37}.legend .cached i{background:#ddf4ff;border-color:#0969da}
.legend .failed i{background:#ffebe9;border-color:#cf222e}.legend .skipped i{background:#f6f8fa;border-color:#8c959f}
.legend .not-run i{background:#fff;border-color:#afb8c1}
.charts{display:flex;flex-wrap:wrap;gap:12px}
.chart{border:1px solid #d1d9e0;border-radius:6px}
.axis{stroke:#59636e;stroke-width:1}.grid{stroke:#eaeef2;stroke-width:1}
.line{fill:none;stroke:#0969da;stroke-width:1.5}.point{fill:#0969da;stroke:#fff;stroke-width:1}
.chart .title{font-weight:600;font-size:13px}
footer{margin-top:32px;color:#59636e;font-size:12px}
";

/// The whole page.
pub fn render(report: &Report) -> String {
    let mut html = String::with_capacity(16 * 1024);
    let title = format!("{} — run {}", report.pipeline, short_run_id(&report.run_id));
    html.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    html.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    let _ = writeln!(html, "<title>{}</title>", esc(&title));
    let _ = writeln!(html, "<style>\n{STYLE}</style>\n</head>\n<body>");
    header(&mut html, report);
    html.push_str("<h2>Steps</h2>\n");
    legend(&mut html);
    if let Some(why) = &report.dag.no_plan {
        let _ = writeln!(
            html,
            "<p class=\"note\">The steps are drawn without their edges: {}.</p>",
            esc(why)
        );
    }
    html.push_str("<div class=\"scroll\">\n");
    dag_svg(&mut html, &report.dag);
    html.push_str("</div>\n<h2>Metrics</h2>\n");
    metrics_table(&mut html, report);
    let _ = writeln!(
        html,
        "<h2>Metrics across {}</h2>",
        match report.plot.across {
            Across::Items => "fan-out items",
            Across::Runs => "runs",
        }
    );
    plot(&mut html, &report.plot);
    let _ = writeln!(
        html,
        "<footer>Written by kiln {} from run <code>{}</code>.</footer>\n</body>\n</html>",
        env!("CARGO_PKG_VERSION"),
        esc(&report.run_id)
    );
    html
}

fn header(html: &mut String, report: &Report) {
    let _ = writeln!(
        html,
        "<h1>{} <span class=\"badge {status}\" id=\"run-status\">{status}</span></h1>",
        esc(&report.pipeline),
        status = esc(&report.status)
    );
    let _ = writeln!(
        html,
        "<p class=\"sub\">Run <code>{}</code> · {}</p>",
        esc(&report.run_id),
        esc(&report.duration_text())
    );
    if report.params.is_empty() {
        return;
    }
    html.push_str("<table id=\"params\"><tr><th>param</th><th>value</th></tr>\n");
    for (name, value) in &report.params {
        let _ = writeln!(
            html,
            "<tr><td><code>{}</code></td><td><code>{}</code></td></tr>",
            esc(name),
            esc(value)
        );
    }
    html.push_str("</table>\n");
}

fn legend(html: &mut String) {
    html.push_str("<p class=\"legend\">");
    for (class, text) in [
        ("succeeded", "ran"),
        ("cached", "from the cache"),
        ("failed", "failed"),
        ("skipped", "skipped"),
        ("not-run", "not run"),
    ] {
        let _ = write!(html, "<span class=\"{class}\"><i></i>{text}</span>");
    }
    html.push_str("</p>\n");
}

/// The DAG, left to right: a column per depth, the steps of a column in plan order.
fn dag_svg(html: &mut String, dag: &Dag) {
    let depths = dag.depths();
    let columns = depths.iter().max().map_or(0, |d| d + 1);
    let longest = dag
        .nodes
        .iter()
        .map(|n| n.label.chars().count())
        .max()
        .unwrap_or(0);
    let width = (longest as f64 * CHAR_WIDTH + 24.0).clamp(NODE_MIN_WIDTH, NODE_MAX_WIDTH);
    let fits = ((width - 16.0) / CHAR_WIDTH).floor() as usize;
    let mut rows = vec![0usize; columns];
    let mut at = Vec::with_capacity(dag.nodes.len());
    for &depth in &depths {
        let x = DAG_MARGIN + depth as f64 * (width + COLUMN_GAP);
        let y = DAG_MARGIN + rows[depth] as f64 * (NODE_HEIGHT + ROW_GAP);
        rows[depth] += 1;
        at.push((x, y));
    }
    let tallest = rows.iter().copied().max().unwrap_or(0);
    let svg_width =
        2.0 * DAG_MARGIN + columns as f64 * width + columns.saturating_sub(1) as f64 * COLUMN_GAP;
    let svg_height = 2.0 * DAG_MARGIN
        + tallest as f64 * NODE_HEIGHT
        + tallest.saturating_sub(1) as f64 * ROW_GAP;
    let _ = writeln!(
        html,
        "<svg id=\"dag\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" \
         viewBox=\"0 0 {0} {1}\" role=\"img\" aria-label=\"the run's steps\">",
        num(svg_width.max(1.0)),
        num(svg_height.max(1.0))
    );
    html.push_str(
        "<defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" \
         markerWidth=\"7\" markerHeight=\"7\" orient=\"auto-start-reverse\">\
         <path d=\"M0,0L10,5L0,10z\" fill=\"#8c959f\"/></marker></defs>\n",
    );
    for &(from, to) in &dag.edges {
        let (fx, fy) = at[from];
        let (tx, ty) = at[to];
        let (x1, y1) = (fx + width, fy + NODE_HEIGHT / 2.0);
        let (x2, y2) = (tx, ty + NODE_HEIGHT / 2.0);
        let bend = (x2 - x1).abs() / 2.0;
        let _ = writeln!(
            html,
            "<path class=\"edge\" data-from=\"{}\" data-to=\"{}\" d=\"M{},{}C{},{} {},{} {},{}\" \
             marker-end=\"url(#arrow)\"/>",
            esc(&dag.nodes[from].id),
            esc(&dag.nodes[to].id),
            num(x1),
            num(y1),
            num(x1 + bend),
            num(y1),
            num(x2 - bend),
            num(y2),
            num(x2),
            num(y2)
        );
    }
    for (node, &(x, y)) in dag.nodes.iter().zip(&at) {
        let status = node.status.as_str();
        let _ = writeln!(
            html,
            "<g class=\"node {status}\" data-step=\"{}\" data-label=\"{}\" data-status=\"{status}\">\
             <title>{} — {}</title>\
             <rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" rx=\"6\"/>\
             <text x=\"{}\" y=\"{}\" text-anchor=\"middle\" dominant-baseline=\"central\">{}</text></g>",
            esc(&node.id),
            esc(&node.label),
            esc(&node.label),
            esc(&node.detail),
            num(x),
            num(y),
            num(width),
            num(NODE_HEIGHT),
            num(x + width / 2.0),
            num(y + NODE_HEIGHT / 2.0),
            esc(&cut(&node.label, fits))
        );
    }
    html.push_str("</svg>\n");
}

/// A row per step that reported metrics, a column per metric name.
fn metrics_table(html: &mut String, report: &Report) {
    if report.metrics.is_empty() {
        html.push_str("<p class=\"note\">No step of this run reported metrics.</p>\n");
        return;
    }
    let names: BTreeSet<&str> = report
        .metrics
        .iter()
        .flat_map(|(_, m)| m.keys().map(String::as_str))
        .collect();
    html.push_str("<table id=\"metrics\"><tr><th>step</th>");
    for name in &names {
        let _ = write!(html, "<th>{}</th>", esc(name));
    }
    html.push_str("</tr>\n");
    for (label, metrics) in &report.metrics {
        let _ = write!(html, "<tr><td><code>{}</code></td>", esc(label));
        for name in &names {
            match metrics.get(*name) {
                Some(v) => {
                    let _ = write!(
                        html,
                        "<td class=\"num\" title=\"{v}\">{}</td>",
                        esc(&readable(*v))
                    );
                }
                None => html.push_str("<td class=\"num\">–</td>"),
            }
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</table>\n");
}

fn plot(html: &mut String, plot: &Plot) {
    if let Some(note) = &plot.note {
        let _ = writeln!(
            html,
            "<p class=\"note\" id=\"plot-note\">{}.</p>",
            esc(note)
        );
    }
    if plot.series.is_empty() {
        return;
    }
    html.push_str("<div class=\"charts\" id=\"plot\">\n");
    for series in &plot.series {
        chart(html, plot, series);
    }
    html.push_str("</div>\n");
}

/// One metric's chart: its own y axis (metrics have their own scales), the plot's categories
/// on x; points joined by a line across runs, where the order means time.
fn chart(html: &mut String, plot: &Plot, series: &Series) {
    let (lo, hi, step) = y_axis(series.points.iter().map(|(_, v)| *v));
    let inner_w = CHART_WIDTH - CHART_LEFT - CHART_RIGHT;
    let inner_h = CHART_HEIGHT - CHART_TOP - CHART_BOTTOM;
    let n = plot.xs.len().max(1) as f64;
    let x_at = |i: usize| CHART_LEFT + (i as f64 + 0.5) * inner_w / n;
    let y_at = |v: f64| CHART_TOP + (hi - v) / (hi - lo) * inner_h;
    let _ = writeln!(
        html,
        "<svg class=\"chart\" data-series=\"{}\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" \
         height=\"{}\" viewBox=\"0 0 {1} {2}\" role=\"img\" aria-label=\"{0}\">",
        esc(&series.name),
        num(CHART_WIDTH),
        num(CHART_HEIGHT)
    );
    let _ = writeln!(
        html,
        "<text class=\"title\" x=\"{}\" y=\"18\">{}</text>",
        num(CHART_LEFT),
        esc(&series.name)
    );
    let ticks = ((hi - lo) / step).round() as usize;
    for t in 0..=ticks {
        // Each tick from its index, so rounding errors do not add up; printed to the step's
        // own precision, so 0.30000000000000004 reads 0.3.
        let v = lo + step * t as f64;
        let y = y_at(v);
        let _ = writeln!(
            html,
            "<line class=\"grid\" x1=\"{}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\"/>\
             <text x=\"{}\" y=\"{y}\" text-anchor=\"end\" dominant-baseline=\"central\">{}</text>",
            num(CHART_LEFT),
            num(CHART_WIDTH - CHART_RIGHT),
            num(CHART_LEFT - 6.0),
            esc(&tick(v, step)),
            y = num(y)
        );
    }
    let bottom = CHART_TOP + inner_h;
    let _ = writeln!(
        html,
        "<line class=\"axis\" x1=\"{l}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\"/>\
         <line class=\"axis\" x1=\"{l}\" y1=\"{t}\" x2=\"{l}\" y2=\"{b}\"/>",
        l = num(CHART_LEFT),
        r = num(CHART_WIDTH - CHART_RIGHT),
        t = num(CHART_TOP),
        b = num(bottom)
    );
    let tilt = plot.xs.len() > 5;
    for (i, x) in plot.xs.iter().enumerate() {
        let (cx, cy) = (x_at(i), bottom + 14.0);
        let label = esc(&cut(x, AXIS_LABEL_CHARS));
        if tilt {
            let _ = writeln!(
                html,
                "<text x=\"{0}\" y=\"{1}\" text-anchor=\"end\" transform=\"rotate(-35 {0} {1})\">{label}</text>",
                num(cx),
                num(cy)
            );
        } else {
            let _ = writeln!(
                html,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{label}</text>",
                num(cx),
                num(cy)
            );
        }
    }
    if plot.across == Across::Runs && series.points.len() > 1 {
        let line: Vec<String> = series
            .points
            .iter()
            .map(|&(i, v)| format!("{},{}", num(x_at(i)), num(y_at(v))))
            .collect();
        let _ = writeln!(
            html,
            "<polyline class=\"line\" points=\"{}\"/>",
            line.join(" ")
        );
    }
    for &(i, v) in &series.points {
        let x = &plot.xs[i];
        let _ = writeln!(
            html,
            "<circle class=\"point\" data-series=\"{}\" data-x=\"{}\" data-value=\"{v}\" cx=\"{}\" \
             cy=\"{}\" r=\"4.5\"><title>{}: {}</title></circle>",
            esc(&series.name),
            esc(x),
            num(x_at(i)),
            num(y_at(v)),
            esc(x),
            esc(&readable(v))
        );
    }
    html.push_str("</svg>\n");
}

/// The y axis: a range that holds every value, cut into 3 to 6 round steps (1, 2 or 5 times
/// a power of ten), and the step. Never empty: a single value gets a step around it.
fn y_axis(values: impl Iterator<Item = f64>) -> (f64, f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0, 0.25);
    }
    let span = if hi > lo {
        hi - lo
    } else if lo == 0.0 {
        1.0
    } else {
        lo.abs() / 5.0
    };
    let rough = span / 4.0;
    let power = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|s| *s >= rough)
        .unwrap_or(10.0 * power);
    let mut bottom = (lo / step).floor() * step;
    let mut top = (hi / step).ceil() * step;
    if top - bottom < step / 2.0 {
        bottom -= step;
        top += step;
    }
    (bottom, top, step)
}

/// A tick's value with as many decimals as its step has.
fn tick(v: f64, step: f64) -> String {
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    let s = format!("{v:.decimals$}");
    if s.trim_start_matches('-')
        .trim_matches(|c| c == '0' || c == '.')
        .is_empty()
    {
        "0".to_owned()
    } else {
        s
    }
}

/// A coordinate: two decimals, no trailing zeros.
fn num(v: f64) -> String {
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

/// A metric for people: about six significant digits, no trailing zeros; large or tiny
/// numbers in exponent form.
fn readable(v: f64) -> String {
    if v == 0.0 {
        return "0".to_owned();
    }
    let magnitude = v.abs().log10().floor();
    if !(-4.0..15.0).contains(&magnitude) {
        return format!("{v:.4e}");
    }
    let decimals = (5.0 - magnitude).max(0.0) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

/// `text` cut to `chars` characters, with an ellipsis when it was longer.
fn cut(text: &str, chars: usize) -> String {
    if text.chars().count() <= chars {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(chars.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Text made safe for HTML content and attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_read_well() {
        assert_eq!(readable(0.0), "0");
        assert_eq!(readable(0.93125), "0.93125");
        assert_eq!(readable(0.9312512345), "0.931251");
        assert_eq!(readable(12.0), "12");
        assert_eq!(readable(1234.56789), "1234.57");
        assert_eq!(readable(-0.25), "-0.25");
        assert_eq!(readable(3.0e20), "3.0000e20");
        assert_eq!(readable(2.5e-7), "2.5000e-7");
    }

    #[test]
    fn coordinates_are_short() {
        assert_eq!(num(12.0), "12");
        assert_eq!(num(12.345), "12.35");
        assert_eq!(num(-0.001), "0");
        assert_eq!(num(0.5), "0.5");
    }

    #[test]
    fn the_y_axis_is_round_and_never_empty() {
        assert_eq!(y_axis([].into_iter()), (0.0, 1.0, 0.25));
        assert_eq!(y_axis([0.0].into_iter()), (-0.5, 0.5, 0.5));
        let (lo, hi, step) = y_axis([0.911, 0.975].into_iter());
        assert_eq!(step, 0.02);
        assert!(
            (lo - 0.9).abs() < 1e-9 && (hi - 0.98).abs() < 1e-9,
            "{lo} {hi}"
        );
        let (lo, hi, step) = y_axis([0.05, 0.6].into_iter());
        assert_eq!(step, 0.2);
        assert!(lo <= 0.05 && hi >= 0.6 && lo == 0.0, "{lo} {hi}");
        let (lo, hi, _) = y_axis([2.0].into_iter());
        assert!(lo < 2.0 && hi > 2.0);
        assert_eq!(tick(0.30000000000000004, 0.1), "0.3");
        assert_eq!(tick(-0.0, 0.5), "0");
        assert_eq!(tick(1500.0, 500.0), "1500");
    }

    #[test]
    fn text_is_escaped_and_cut() {
        assert_eq!(
            esc("<a href=\"x\">&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(cut("train[lr=0.1]", 20), "train[lr=0.1]");
        assert_eq!(cut("abcdef", 4), "abc…");
    }

    #[test]
    fn unsafe_names_cannot_break_out_of_the_page() {
        let report = Report {
            run_id: "0190-<script>".into(),
            pipeline: "p</title><script>alert(1)</script>".into(),
            status: "succeeded".into(),
            duration: None,
            params: vec![("x\"onmouseover=\"".into(), "<b>".into())],
            dag: Dag {
                nodes: vec![super::super::DagNode {
                    id: "a<".into(),
                    label: "a<".into(),
                    status: super::super::NodeStatus::Failed,
                    detail: "failed: </svg><script>".into(),
                    fan_out: false,
                }],
                edges: Default::default(),
                no_plan: None,
            },
            metrics: vec![("a<".into(), [("m\"".to_owned(), 1.0)].into())],
            plot: Plot {
                across: Across::Runs,
                xs: vec!["r<1".into()],
                series: vec![Series {
                    name: "m\"".into(),
                    points: vec![(0, 1.0)],
                }],
                note: None,
            },
        };
        let page = render(&report);
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains("x\"onmouseover"), "{page}");
        assert!(page.contains("data-series=\"m&quot;\""), "{page}");
    }
}
