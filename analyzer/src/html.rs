//! The HTML report: one self-contained file (no scripts, no external
//! resources) with the rack × rack heatmaps of p99 RTT and probe loss — the
//! view Pingmesh made famous — a section per incident with its runs and
//! flaps (a timeline and a table), its evidence, and a time series of each
//! flagged path.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use configs::Topology;

use crate::incident::Incident;
use crate::model::{Observations, PathWindow};
use crate::report::{Analysis, symptom_summary, utc};

/// Escapes text for HTML.
fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[derive(Default)]
struct Cell {
    sent: u64,
    lost: u64,
    p99s: Vec<u64>,
}

impl Cell {
    fn loss(&self) -> Option<f64> {
        (self.sent > 0).then(|| self.lost as f64 / self.sent as f64)
    }

    /// The median of the path windows' p99 RTTs, µs.
    fn p99_us(&mut self) -> Option<f64> {
        if self.p99s.is_empty() {
            return None;
        }
        self.p99s.sort_unstable();
        Some(self.p99s[self.p99s.len() / 2] as f64 / 1_000.0)
    }
}

/// A colour from green (0) through yellow to red (1).
fn colour(badness: f64) -> String {
    let t = badness.clamp(0.0, 1.0);
    let (r, g) = if t < 0.5 {
        ((510.0 * t) as u8, 200)
    } else {
        (255, (200.0 * (2.0 - 2.0 * t)) as u8)
    };
    format!("rgb({r},{g},80)")
}

fn heatmap(
    out: &mut String,
    id: &str,
    title: &str,
    racks: &[(u32, String)],
    cells: &mut BTreeMap<(u32, u32), Cell>,
    value: impl Fn(&mut Cell) -> Option<(f64, String, f64)>,
) {
    let size = 56;
    let label = 90;
    let n = racks.len();
    let (w, h) = (label + size * n + 10, label + size * n + 10);
    let _ = write!(
        out,
        "<figure><figcaption>{}</figcaption><svg class=\"heatmap\" id=\"{id}\" width=\"{w}\" height=\"{h}\" \
         xmlns=\"http://www.w3.org/2000/svg\" font-family=\"sans-serif\" font-size=\"11\">",
        esc(title)
    );
    for (i, (_, name)) in racks.iter().enumerate() {
        let c = label + i * size + size / 2;
        let _ = write!(
            out,
            "<text x=\"{c}\" y=\"{}\" text-anchor=\"middle\">{}</text>\
             <text x=\"{}\" y=\"{c}\" text-anchor=\"end\" dominant-baseline=\"middle\">{}</text>",
            label - 8,
            esc(name),
            label - 8,
            esc(name)
        );
    }
    for (row, (src, src_name)) in racks.iter().enumerate() {
        for (col, (dst, dst_name)) in racks.iter().enumerate() {
            let (x, y) = (label + col * size, label + row * size);
            let shown = cells.get_mut(&(*src, *dst)).and_then(&value);
            let (fill, text, tip) = match shown {
                Some((badness, text, _)) => (colour(badness), text.clone(), text),
                None => ("#ddd".to_string(), "–".to_string(), "no data".to_string()),
            };
            let _ = write!(
                out,
                "<g class=\"cell\" data-src=\"{}\" data-dst=\"{}\"><title>{} → {}: {}</title>\
                 <rect x=\"{x}\" y=\"{y}\" width=\"{size}\" height=\"{size}\" fill=\"{fill}\" stroke=\"#fff\"/>\
                 <text x=\"{}\" y=\"{}\" text-anchor=\"middle\" dominant-baseline=\"middle\">{}</text></g>",
                esc(src_name),
                esc(dst_name),
                esc(src_name),
                esc(dst_name),
                esc(&tip),
                x + size / 2,
                y + size / 2,
                esc(&text)
            );
        }
    }
    out.push_str("</svg></figure>");
}

/// A small line chart of `points` (x in ns, y), scaled to the range.
fn series(out: &mut String, title: &str, points: &[(u64, f64)], unit: &str) {
    let (w, h, pad) = (420.0, 110.0, 30.0);
    let _ = write!(
        out,
        "<svg class=\"series\" width=\"{w}\" height=\"{h}\" xmlns=\"http://www.w3.org/2000/svg\" font-family=\"sans-serif\" font-size=\"10\"><title>{}</title>",
        esc(title)
    );
    if let (Some(first), Some(last)) = (points.first(), points.last()) {
        let span = (last.0 - first.0).max(1) as f64;
        let top = points.iter().map(|p| p.1).fold(0.0, f64::max).max(f64::MIN_POSITIVE);
        let coords: Vec<String> = points
            .iter()
            .map(|&(x, y)| {
                let px = pad + (x - first.0) as f64 / span * (w - 2.0 * pad);
                let py = h - pad + 10.0 - y / top * (h - 2.0 * pad);
                format!("{px:.1},{py:.1}")
            })
            .collect();
        let _ = write!(
            out,
            "<polyline fill=\"none\" stroke=\"#c33\" stroke-width=\"1.5\" points=\"{}\"/>\
             <text x=\"{pad}\" y=\"12\">{} (max {top:.1} {unit})</text>",
            coords.join(" "),
            esc(title)
        );
    }
    out.push_str("</svg>");
}

/// An incident's course as a strip: its runs red, the clean windows between
/// them green, from its start to its end (or the newest window, while it is
/// open).
fn timeline(out: &mut String, incident: &Incident, window_len_ns: u64, newest_ns: u64) {
    let (w, h) = (420.0, 18.0);
    let start = incident.start_ns;
    let end = incident
        .end_ns
        .unwrap_or(newest_ns.max(incident.last_window_ns) + window_len_ns)
        .max(start + 1);
    let x = |ns: u64| (ns.saturating_sub(start)) as f64 / (end - start) as f64 * w;
    let _ = write!(
        out,
        "<svg class=\"timeline\" width=\"{w}\" height=\"{h}\" xmlns=\"http://www.w3.org/2000/svg\">\
         <title>{} → {}</title><rect width=\"{w}\" height=\"{h}\" fill=\"rgb(0,200,80)\"/>",
        utc(start),
        utc(end)
    );
    for r in &incident.runs {
        let (a, b) = (x(r.first_window_ns), x(r.last_window_ns + window_len_ns));
        let _ = write!(
            out,
            "<rect class=\"bad\" x=\"{a:.1}\" width=\"{:.1}\" height=\"{h}\" fill=\"#c33\"><title>{} → {}</title></rect>",
            (b - a).max(1.0),
            utc(r.first_window_ns),
            utc(r.last_window_ns)
        );
    }
    out.push_str("</svg>");
}

/// Renders the analysis of `obs` as a self-contained HTML page.
pub fn render(analysis: &Analysis, obs: &Observations, topology: &Topology) -> String {
    let in_range = |p: &&PathWindow| p.window_ns >= analysis.from_ns && p.window_ns < analysis.to_ns;
    let rack_of = |node: u32| topology.node(node).map(|n| n.rack);
    let mut cells: BTreeMap<(u32, u32), Cell> = BTreeMap::new();
    for p in obs.paths.iter().filter(in_range) {
        let (Some(a), Some(b)) = (rack_of(p.src), rack_of(p.dst)) else {
            continue;
        };
        let cell = cells.entry((a, b)).or_default();
        cell.sent += p.probes_sent;
        cell.lost += p.probes_lost + p.probes_failed;
        if p.probes_answered() > 0 {
            cell.p99s.push(p.rtt_p99_ns);
        }
    }
    let racks: Vec<(u32, String)> = topology.racks().iter().map(|r| (r.id, r.name.clone())).collect();
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>flowmesh report {} → {}</title>\
         <style>body{{font-family:sans-serif;margin:2em;max-width:70em}}figure{{display:inline-block;margin:0 2em 1em 0}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 6px;font-size:90%}}\
         section.incident{{border-left:4px solid #c33;padding-left:1em;margin:1.5em 0}}svg.timeline{{display:block;margin:.5em 0}}table.runs{{margin-bottom:1em}}</style></head><body>\
         <h1>flowmesh network report</h1><p>{} → {} UTC: {} windows, {} path windows judged, {} incidents ({} anomalies), {} telemetry gaps.</p>",
        utc(analysis.from_ns),
        utc(analysis.to_ns),
        utc(analysis.from_ns),
        utc(analysis.to_ns),
        analysis.windows,
        analysis.judged_paths,
        analysis.incidents.len(),
        analysis.anomalies.len(),
        analysis.telemetry_gaps.len()
    );
    out.push_str("<h2>Rack × rack (rows: source rack, columns: destination rack)</h2>");
    heatmap(
        &mut out,
        "p99",
        "p99 network RTT, µs (median over path windows)",
        &racks,
        &mut cells,
        |c| c.p99_us().map(|us| (us / 1_000.0, format!("{us:.0}"), us)),
    );
    heatmap(&mut out, "loss", "probe loss", &racks, &mut cells, |c| {
        // Full red at 5 % loss.
        c.loss().map(|l| (l * 20.0, format!("{:.2}%", l * 100.0), l))
    });

    out.push_str("<h2>Incidents</h2>");
    if analysis.incidents.is_empty() {
        out.push_str("<p class=\"none\">No network anomalies.</p>");
    }
    let newest = analysis.last_window_ns;
    for (n, a) in analysis.incidents.iter().enumerate() {
        let _ = write!(
            out,
            "<section class=\"incident\" data-kind=\"{}\" data-element=\"{}\" data-flaps=\"{}\" data-open=\"{}\">\
             <h3>{}. {} {}</h3><p>{}.</p><p class=\"course\">{}.</p>",
            a.kind,
            esc(&a.element),
            a.flaps,
            a.open,
            n + 1,
            esc(&a.kind.replace('_', " ")),
            esc(&a.element),
            esc(&a.evidence_line()),
            esc(&a.course(analysis.quiet_windows))
        );
        timeline(&mut out, a, analysis.window_len_ns, newest);
        out.push_str("<table class=\"runs\"><tr><th>run</th><th>from</th><th>to</th><th>windows</th><th>clean windows before</th><th>bad paths at worst</th><th>symptoms</th></tr>");
        for (k, r) in a.runs.iter().enumerate() {
            let _ = write!(
                out,
                "<tr class=\"run\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} of {} ({:.0} %)</td><td>{}</td></tr>",
                k + 1,
                utc(r.first_window_ns),
                utc(r.last_window_ns),
                r.windows,
                r.clean_windows_before,
                r.bad_paths,
                r.paths,
                r.share * 100.0,
                esc(&symptom_summary(&r.symptoms))
            );
        }
        out.push_str("</table>");
        out.push_str("<table><tr><th>window</th><th>path</th><th>probes</th><th>loss</th><th>p99 RTT µs</th><th>responder p99 µs</th><th>retrans</th></tr>");
        for w in &a.worst {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{} → {}</td><td>{}</td><td>{}</td><td>{:.0}</td><td>{:.0}</td><td>{}</td></tr>",
                utc(w.window_ns),
                esc(&w.src),
                esc(&w.dst),
                w.probes_sent,
                w.loss_text(),
                w.rtt_p99_us,
                w.responder_delay_p99_us,
                w.retrans_text(),
            );
        }
        out.push_str("</table>");
        if !a.runners_up.is_empty() {
            let runners: Vec<String> = a.runners_up.iter().map(ToString::to_string).collect();
            let _ = write!(out, "<p>Runners-up: {}</p>", esc(&runners.join("; ")));
        }
        // A time series for each flagged path (the worst ones).
        let flagged: BTreeSet<(String, String)> = a.worst.iter().map(|w| (w.src.clone(), w.dst.clone())).collect();
        for (src, dst) in flagged {
            let ids = |name: &str| topology.nodes().iter().find(|n| n.name == name).map(|n| n.id);
            let (Some(s), Some(d)) = (ids(&src), ids(&dst)) else {
                continue;
            };
            let path: Vec<&PathWindow> = obs
                .paths
                .iter()
                .filter(in_range)
                .filter(|p| p.src == s && p.dst == d)
                .collect();
            let loss: Vec<(u64, f64)> = path
                .iter()
                .filter_map(|p| p.loss_rate().map(|l| (p.window_ns, l * 100.0)))
                .collect();
            let p99: Vec<(u64, f64)> = path
                .iter()
                .map(|p| (p.window_ns, p.rtt_p99_ns as f64 / 1_000.0))
                .collect();
            let _ = write!(out, "<div class=\"path\"><h4>{} → {}</h4>", esc(&src), esc(&dst));
            series(&mut out, "loss %", &loss, "%");
            series(&mut out, "p99 RTT µs", &p99, "µs");
            out.push_str("</div>");
        }
        out.push_str("</section>");
    }
    if !analysis.telemetry_gaps.is_empty() {
        out.push_str("<h2>Telemetry gaps (not evidence of health)</h2><table><tr><th>node</th><th>what</th><th>windows</th><th>from</th><th>to</th></tr>");
        for g in &analysis.telemetry_gaps {
            let _ = write!(
                out,
                "<tr class=\"gap\" data-state=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                g.state.label(),
                esc(&g.node),
                esc(&g.describe()),
                g.windows,
                utc(g.first_window_ns),
                utc(g.last_window_ns)
            );
        }
        out.push_str("</table>");
    }
    out.push_str("</body></html>\n");
    out
}
