//! `report.html`: the page a person reads first after a run. One file with
//! inline CSS and SVG, no scripts and no network, so it opens the same from a
//! CI artifact or an offline laptop. It leads with the verdict, then the
//! anomalies, then a timeline that puts faults, roles and operations on one
//! time axis, so each anomaly can be read against what the cluster was doing.

use std::collections::{BTreeSet, HashSet};
use std::fmt::Write;

use crate::history::{History, NemesisAction, Op, Outcome};
use crate::verdict::Verdict;

const WIDTH: f64 = 1200.0;
const LABEL_W: f64 = 110.0;
const ROW_H: f64 = 24.0;
const LANE_H: f64 = 16.0;
/// Past this many marks a row is a smear; a sample shows its shape as well.
const MAX_MARKS_PER_ROW: usize = 4000;
const MAX_ANOMALIES_LISTED: usize = 500;
const MAX_OPS_LISTED: usize = 30;
const WORKLOADS: [&str; 4] = ["set", "append", "register", "bank"];

const LEGEND: &str = "<p class=\"key\"><span style=\"background:#1d4ed8\"></span>primary\
<span style=\"background:#93c5fd\"></span>standby<span style=\"background:#374151\"></span>down\
<span style=\"background:#16a34a\"></span>ok<span style=\"background:#9ca3af\"></span>fail\
<span style=\"background:#f97316\"></span>info<span style=\"background:#dc2626\"></span>in an anomaly</p>";

const CSS: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#111;max-width:1240px}\
h1{margin:0 0 4px}h1 small{color:#666;font-weight:400}.word{font-size:60px;font-weight:800;margin:0}\
.valid{color:#15803d}.invalid{color:#b91c1c}.vacuous,.unknown{color:#b45309}\
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;\
vertical-align:top}.facts td:first-child{color:#555}code{background:#f3f4f6;padding:0 3px}.ops{color:#555}\
li{margin:4px 0}svg{border:1px solid #ddd}svg text{font:11px sans-serif}.key span{display:inline-block;\
width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}";

/// The whole report for one run.
pub fn render(h: &History, v: &Verdict) -> String {
    let (word, class) = match (v.valid, v.vacuous, v.unknown()) {
        (false, _, _) => ("INVALID", "invalid"),
        (true, true, _) => ("VACUOUS", "vacuous"),
        (true, false, true) => ("UNKNOWN", "unknown"),
        (true, false, false) => ("VALID", "valid"),
    };
    let mut out = String::with_capacity(256 * 1024);
    _ = write!(
        out,
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{} seed {}: {word}</title>\
         <style>{CSS}</style></head><body>\n",
        esc(&v.scenario),
        v.seed
    );
    headline(&mut out, v, word, class);
    anomalies(&mut out, v);
    out += "<h2>Timeline</h2>\n";
    out += &Timeline::new(h, v).svg();
    checkers(&mut out, v);
    out += "</body></html>\n";
    out
}

fn headline(out: &mut String, v: &Verdict, word: &str, class: &str) {
    let _ = writeln!(out, "<h1>{} <small>seed {}</small></h1>", esc(&v.scenario), v.seed);
    let _ = writeln!(out, "<p class=\"word {class}\">{word}</p>");
    if let Some(reason) = &v.vacuous_reason {
        let lead = if v.vacuous {
            "The run proves nothing"
        } else {
            "Some faults missed their target"
        };
        let _ = writeln!(out, "<p class=\"vacuous\">{lead}: {}</p>", esc(reason));
    }
    let unknown = v.checkers.iter().filter(|c| c.status == "unknown").count();
    if unknown > 0 {
        let _ = writeln!(
            out,
            "<p class=\"unknown\">{unknown} checker(s) could not decide: that is not a pass.</p>"
        );
    }
    let failovers: Vec<String> = v
        .failovers
        .iter()
        .map(|f| {
            let at = secs(f.fault_ns);
            format!(
                "{} at {at}: {} ms (timeline {} &rarr; {})",
                esc(&f.fault),
                f.ms,
                f.from_timeline,
                f.to_timeline
            )
        })
        .collect();
    let failovers = if failovers.is_empty() {
        "none".to_string()
    } else {
        failovers.join("<br>")
    };
    let recovery = v
        .recovery_ms
        .map_or_else(|| "did not converge".to_string(), |ms| format!("{ms} ms"));
    let c = &v.counts;
    let rows = [
        ("duration", format!("{:.1} s", v.duration_ms as f64 / 1000.0)),
        ("operations", format!("{} ok, {} fail, {} info", c.ok, c.fail, c.info)),
        ("failovers", failovers),
        ("recovery after heal", recovery),
        ("run directory", format!("<code>{}</code>", esc(&v.dir))),
    ];
    out.push_str("<table class=\"facts\">");
    for (name, value) in rows {
        let _ = write!(out, "<tr><td>{name}</td><td>{value}</td></tr>");
    }
    out.push_str("</table>\n");
}

fn anomalies(out: &mut String, v: &Verdict) {
    let all: Vec<_> = v.anomalies().collect();
    let _ = writeln!(out, "<h2>Anomalies ({})</h2>", all.len());
    if all.is_empty() {
        out.push_str("<p>None.</p>\n");
        return;
    }
    out.push_str("<ol>\n");
    for a in all.iter().take(MAX_ANOMALIES_LISTED) {
        let mut ops: Vec<String> = a.ops.iter().take(MAX_OPS_LISTED).map(u64::to_string).collect();
        if a.ops.len() > MAX_OPS_LISTED {
            ops.push(format!("and {} more", a.ops.len() - MAX_OPS_LISTED));
        }
        let ops = if ops.is_empty() {
            String::new()
        } else {
            format!(" <span class=\"ops\">ops {}</span>", ops.join(", "))
        };
        let _ = writeln!(
            out,
            "<li><b>{}</b> <code>{}</code> {}{ops}</li>",
            esc(&a.checker),
            esc(&a.kind),
            esc(&a.message)
        );
    }
    out.push_str("</ol>\n");
    if all.len() > MAX_ANOMALIES_LISTED {
        let _ = writeln!(out, "<p>{} more in verdict.json.</p>", all.len() - MAX_ANOMALIES_LISTED);
    }
}

fn checkers(out: &mut String, v: &Verdict) {
    out.push_str(
        "<h2>Checkers</h2>\n<table><tr><th>checker</th><th>status</th><th>summary</th><th>anomalies</th></tr>\n",
    );
    for c in &v.checkers {
        let status = esc(&c.status);
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td class=\"{status}\"><b>{status}</b></td><td>{}</td><td>{}</td></tr>",
            esc(&c.name),
            esc(&c.summary),
            c.anomalies.len()
        );
    }
    out.push_str("</table>\n");
}

/// A fault from its start to its heal (or the end of the run).
struct Window<'a> {
    fault: &'a str,
    targets: String,
    hit: bool,
    start_ns: u64,
    end_ns: u64,
}

/// The timeline picture: fault lanes on top, then one row per node, then one
/// row per workload, all against one time axis.
struct Timeline<'a> {
    h: &'a History,
    end_ns: u64,
    flagged: HashSet<u64>,
    out: String,
}

impl<'a> Timeline<'a> {
    fn new(h: &'a History, v: &Verdict) -> Timeline<'a> {
        let last = [
            h.ops.iter().map(|o| o.end_ns).max(),
            h.nemesis.iter().map(|n| n.time_ns).max(),
            h.probes.iter().map(|p| p.time_ns).max(),
            h.finals.iter().map(|f| f.time_ns).max(),
        ];
        let end_ns = last
            .into_iter()
            .flatten()
            .fold(v.duration_ms * 1_000_000, u64::max)
            .max(1);
        let flagged = v.anomalies().flat_map(|a| a.ops.iter().copied()).collect();
        Timeline {
            h,
            end_ns,
            flagged,
            out: String::new(),
        }
    }

    fn x(&self, t_ns: u64) -> f64 {
        LABEL_W + t_ns.min(self.end_ns) as f64 / self.end_ns as f64 * (WIDTH - LABEL_W - 10.0)
    }

    fn svg(mut self) -> String {
        let windows = fault_windows(self.h, self.end_ns);
        let lanes = assign_lanes(&windows);
        let lane_count = lanes.iter().max().map_or(0, |l| l + 1);
        let nodes: BTreeSet<&str> = self.h.probes.iter().map(|p| p.node.as_str()).collect();
        let workloads: Vec<&str> = WORKLOADS
            .into_iter()
            .filter(|w| self.h.ops.iter().any(|o| o.f.workload() == *w))
            .collect();
        let rows_top = 20.0 + lane_count as f64 * LANE_H;
        let height = rows_top + (nodes.len() + workloads.len()) as f64 * ROW_H + 4.0;
        self.axis(height);
        for (w, lane) in windows.iter().zip(&lanes) {
            let (x0, x1) = (self.x(w.start_ns), self.x(w.end_ns).max(self.x(w.start_ns) + 2.0));
            let y = 20.0 + *lane as f64 * LANE_H;
            let missed = if w.hit { "" } else { " (missed)" };
            let _ = writeln!(
                self.out,
                "<g><title>{l}</title><rect x=\"{x0:.1}\" y=\"{y}\" width=\"{w:.1}\" height=\"{}\" fill=\"#fbbf24\" \
                 fill-opacity=\"0.12\"/><rect x=\"{x0:.1}\" y=\"{y}\" width=\"{w:.1}\" height=\"{}\" fill=\"#fbbf24\"/>\
                 <text x=\"{:.1}\" y=\"{}\">{l}</text></g>",
                height - y,
                LANE_H - 2.0,
                x0 + 2.0,
                y + 11.0,
                l = esc(&format!("{} {}{missed}", w.fault, w.targets)),
                w = x1 - x0,
            );
        }
        let mut y = rows_top;
        for node in &nodes {
            self.node_row(node, y);
            y += ROW_H;
        }
        for w in &workloads {
            self.workload_row(w, y);
            y += ROW_H;
        }
        format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" viewBox=\"0 0 {WIDTH} \
             {height}\">\n{}</svg>\n{LEGEND}\n",
            self.out
        )
    }

    /// A grid line and a label every round number of seconds.
    fn axis(&mut self, height: f64) {
        let total_s = self.end_ns as f64 / 1e9;
        let step_s = [
            1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
        ]
        .into_iter()
        .find(|s| total_s / s <= 12.0)
        .unwrap_or(7200.0);
        let mut t = 0.0;
        while t <= total_s {
            let x = self.x((t * 1e9) as u64);
            let _ = writeln!(
                self.out,
                "<line x1=\"{x:.1}\" y1=\"14\" x2=\"{x:.1}\" y2=\"{height}\" stroke=\"#eee\"/>\
                 <text x=\"{x:.1}\" y=\"11\" text-anchor=\"middle\">{t} s</text>"
            );
            t += step_s;
        }
    }

    /// The node's role over time, one segment per run of equal probes.
    fn node_row(&mut self, node: &str, y: f64) {
        let _ = writeln!(self.out, "<text x=\"4\" y=\"{}\">{}</text>", y + 15.0, esc(node));
        let mut probes: Vec<_> = self.h.probes.iter().filter(|p| p.node == node).collect();
        probes.sort_by_key(|p| p.time_ns);
        probes.dedup_by(|b, a| (a.role.as_str(), a.timeline) == (b.role.as_str(), b.timeline));
        let mut last_timeline = None;
        for (i, p) in probes.iter().enumerate() {
            let end_ns = probes.get(i + 1).map_or(self.end_ns, |n| n.time_ns);
            let (x0, x1) = (self.x(p.time_ns), self.x(end_ns));
            let fill = match p.role.as_str() {
                "primary" => "#1d4ed8",
                "standby" => "#93c5fd",
                "down" => "#374151",
                _ => "#d1d5db",
            };
            let timeline = p.timeline.map_or_else(String::new, |t| format!(" timeline {t}"));
            let _ = write!(
                self.out,
                "<rect x=\"{x0:.1}\" y=\"{}\" width=\"{:.1}\" height=\"{}\" fill=\"{fill}\"><title>{} {}{timeline} \
                 from {}</title></rect>",
                y + 3.0,
                (x1 - x0).max(0.5),
                ROW_H - 6.0,
                esc(node),
                esc(&p.role),
                secs(p.time_ns)
            );
            if p.timeline.is_some() && p.timeline != last_timeline {
                let color = if p.role == "standby" { "#111" } else { "#fff" };
                let t = p.timeline.unwrap_or(0);
                let _ = write!(
                    self.out,
                    "<text x=\"{:.1}\" y=\"{}\" fill=\"{color}\">{t}</text>",
                    x0 + 2.0,
                    y + 15.0
                );
                last_timeline = p.timeline;
            }
        }
        self.out.push('\n');
    }

    /// Ticks at each operation's completion: ok on top, fail in the middle,
    /// info at the bottom; operations named by an anomaly in red, always drawn.
    fn workload_row(&mut self, workload: &str, y: f64) {
        let _ = writeln!(self.out, "<text x=\"4\" y=\"{}\">{workload}</text>", y + 15.0);
        let ops: Vec<&Op> = self.h.ops.iter().filter(|o| o.f.workload() == workload).collect();
        let stride = ops.len().div_ceil(MAX_MARKS_PER_ROW).max(1);
        let mut paths = [String::new(), String::new(), String::new()];
        for op in ops.iter().step_by(stride) {
            let lane = match op.outcome {
                Outcome::Ok => 0,
                Outcome::Fail => 1,
                Outcome::Info => 2,
            };
            let _ = write!(
                paths[lane],
                "M{:.1} {}v6",
                self.x(op.end_ns),
                y + 2.0 + lane as f64 * 7.0
            );
        }
        for (d, color) in paths.iter().zip(["#16a34a", "#9ca3af", "#f97316"]) {
            if !d.is_empty() {
                let _ = writeln!(self.out, "<path d=\"{d}\" stroke=\"{color}\" stroke-width=\"1\"/>");
            }
        }
        for op in ops.iter().filter(|o| self.flagged.contains(&o.index)) {
            let (x0, x1) = (self.x(op.start_ns), self.x(op.end_ns));
            let _ = writeln!(
                self.out,
                "<rect x=\"{:.1}\" y=\"{}\" width=\"{:.1}\" height=\"{}\" fill=\"#dc2626\"><title>op {} {:?} on {} \
                 ({} to {})</title></rect>",
                x0 - 1.0,
                y + 1.0,
                (x1 - x0).max(0.0) + 2.0,
                ROW_H - 2.0,
                op.index,
                op.outcome,
                esc(op.node.as_deref().unwrap_or("?")),
                secs(op.start_ns),
                secs(op.end_ns)
            );
        }
    }
}

/// Pairs each fault's start with the first later stop of the same fault on
/// the same targets; a fault never healed lasts until the end of the run.
fn fault_windows(h: &History, end_ns: u64) -> Vec<Window<'_>> {
    let (mut open, mut done) = (Vec::new(), Vec::new());
    for n in &h.nemesis {
        let (fault, targets, hit, start_ns) = (n.fault.as_str(), n.targets.join(","), n.hit, n.time_ns);
        let started = open
            .iter()
            .position(|w: &Window| w.fault == fault && w.targets == targets);
        match (n.action, started) {
            (NemesisAction::Start, _) => open.push(Window {
                fault,
                targets,
                hit,
                start_ns,
                end_ns,
            }),
            (NemesisAction::Stop, Some(i)) => done.push(Window {
                end_ns: n.time_ns,
                ..open.remove(i)
            }),
            (NemesisAction::Stop, None) => {}
        }
    }
    done.extend(open);
    done.sort_by_key(|w| w.start_ns);
    done
}

/// Overlapping faults go in separate lanes so their labels stay readable.
fn assign_lanes(windows: &[Window]) -> Vec<usize> {
    let mut lane_ends: Vec<u64> = Vec::new();
    windows
        .iter()
        .map(|w| match lane_ends.iter().position(|end| *end < w.start_ns) {
            Some(i) => {
                lane_ends[i] = w.end_ns;
                i
            }
            None => {
                lane_ends.push(w.end_ns);
                lane_ends.len() - 1
            }
        })
        .collect()
}

fn secs(ns: u64) -> String {
    format!("{:.3} s", ns as f64 / 1e9)
}

/// Every string from the history or a checker goes through here: node names,
/// errors and messages are data, never markup.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{NemesisEvent, Probe, F};
    use crate::verdict::{Anomaly, CheckerResult, Counts};

    fn op(index: u64, outcome: Outcome, end_ns: u64) -> Op {
        Op {
            index,
            process: 1,
            start_ns: end_ns.saturating_sub(1_000_000),
            end_ns,
            outcome,
            node: Some("n1".into()),
            timeline: Some(1),
            lsn: None,
            error: None,
            f: F::SetAdd { id: index as i64 },
        }
    }

    fn small() -> (History, Verdict) {
        let mut ops: Vec<Op> = (0..10_000).map(|i| op(i, Outcome::Ok, i * 1_000_000)).collect();
        ops[7].outcome = Outcome::Info;
        ops[8].outcome = Outcome::Fail;
        let probe = |time_ns, node: &str, role: &str, timeline| Probe {
            time_ns,
            node: node.into(),
            role: role.into(),
            timeline,
            lsn: None,
        };
        let fault = |time_ns, action| NemesisEvent {
            time_ns,
            fault: "isolate".into(),
            action,
            targets: vec!["n1".into()],
            intended: "primary".into(),
            hit: true,
            detail: String::new(),
        };
        let h = History {
            ops,
            nemesis: vec![
                fault(2_000_000_000, NemesisAction::Start),
                fault(4_000_000_000, NemesisAction::Stop),
            ],
            probes: vec![
                probe(0, "n1", "primary", Some(1)),
                probe(2_500_000_000, "n1", "down", None),
            ],
            finals: vec![],
        };
        let anomaly = Anomaly {
            checker: "lost-writes".into(),
            kind: "lost".into(),
            message: "id 4321 is missing on <n2> & n3".into(),
            ops: vec![4321],
        };
        let checker = CheckerResult {
            name: "lost-writes".into(),
            status: "invalid".into(),
            summary: "1 missing".into(),
            anomalies: vec![anomaly],
        };
        let v = Verdict {
            scenario: "isolate-primary".into(),
            seed: 7,
            valid: false,
            vacuous: false,
            vacuous_reason: None,
            checkers: vec![checker],
            failovers: vec![],
            recovery_ms: Some(1200),
            counts: Counts {
                ok: 9998,
                fail: 1,
                info: 1,
            },
            windows: vec![],
            duration_ms: 10_000,
            dir: "runs/x".into(),
        };
        (h, v)
    }

    #[test]
    fn report_leads_with_the_verdict_and_escapes_every_message() {
        let (h, v) = small();
        let html = render(&h, &v);
        assert!(html.contains("INVALID"));
        assert!(html.contains("id 4321 is missing on &lt;n2&gt; &amp; n3"));
        assert!(!html.contains("<n2>"));
        assert!(html.contains("<svg"));
        // The fault band, the node row and the anomalous op, even though the
        // 10 000-op row is sampled.
        assert!(html.contains("isolate n1"));
        assert!(html.contains("#374151"));
        assert!(html.contains("<title>op 4321 "));
        assert!(!html.contains("<script"));
    }

    #[test]
    fn faults_pair_with_their_heal_and_unhealed_faults_last_to_the_end() {
        let (mut h, _) = small();
        h.nemesis.truncate(1);
        let w = fault_windows(&h, 99);
        assert_eq!((w.len(), w[0].start_ns, w[0].end_ns), (1, 2_000_000_000, 99));
        assert_eq!(esc("a'\"b"), "a&#39;&quot;b");
    }
}
