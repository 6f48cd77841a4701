//! What `squeeze search` writes beside its candidates: a Markdown summary and two SVG
//! plots — the scan (held-out score against the fraction kept, one line per layer) and the
//! trade-off (cost kept against score, the scan's single-layer points and the
//! candidates). The SVG is written directly: the plots are lines, dots and labels, and a
//! plotting crate's text layout would need system fonts that a fresh machine lacks.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use squeeze::search::scan::Scan;
use squeeze::search::select::amount;
use squeeze::search::Budget;

use squeeze::search::scan::Cost;

/// A candidate: its ratios, the applied model's cost, and what happened to it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Candidate {
    pub name: String,
    pub choice: Vec<(String, f64)>,
    /// Summed held-out loss of its ratios in the scan (none if a ratio was not scanned).
    pub predicted_loss: Option<f64>,
    /// Cost of the applied model before fine-tuning (the budget's check).
    pub applied: Option<Cost>,
    pub meets_budget: bool,
    /// Held-out score after the recipe (fine-tuning included).
    pub score: Option<f64>,
    pub error: Option<String>,
    pub seconds: f64,
    /// The choice the hill climbing started from, and how many models it scored.
    pub refined_from: Option<String>,
    pub refine_evals: usize,
}

/// A predicted loss for people: the number, or why there is none.
pub fn loss_text(l: Option<f64>) -> String {
    l.map_or("– (ratio not scanned)".into(), |v| format!("{v:.4}"))
}

const W: f64 = 720.0;
const H: f64 = 440.0;
const PAD: (f64, f64, f64, f64) = (70.0, 190.0, 40.0, 50.0); // left, right, top, bottom
const COLORS: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

/// A plot area mapping data ranges onto the SVG canvas.
struct Frame {
    x: (f64, f64),
    y: (f64, f64),
    svg: String,
}

impl Frame {
    fn new(title: &str, x: (f64, f64), y: (f64, f64), labels: (&str, &str)) -> Frame {
        let mut f = Frame {
            x,
            y,
            svg: String::new(),
        };
        let _ = write!(
            f.svg,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <text x=\"{}\" y=\"22\" font-size=\"15\">{}</text>\n",
            PAD.0,
            escape(title)
        );
        let (x0, y0, x1, y1) = (PAD.0, H - PAD.3, W - PAD.1, PAD.2);
        let _ = writeln!(f.svg, "<rect x=\"{x0}\" y=\"{y1}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"black\"/>", x1 - x0, y0 - y1);
        for i in 0..=4 {
            let t = i as f64 / 4.0;
            let (xv, yv) = (x.0 + t * (x.1 - x.0), y.0 + t * (y.1 - y.0));
            let (px, py) = (f.px(xv), f.py(yv));
            let _ = writeln!(
                f.svg,
                "<text x=\"{px:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                y0 + 16.0,
                num(xv)
            );
            let _ = writeln!(
                f.svg,
                "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                x0 - 6.0,
                py + 4.0,
                num(yv)
            );
            let _ = writeln!(
                f.svg,
                "<line x1=\"{x0}\" x2=\"{x1}\" y1=\"{py:.1}\" y2=\"{py:.1}\" stroke=\"#ddd\"/>"
            );
        }
        let _ = writeln!(
            f.svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            (x0 + x1) / 2.0,
            H - 10.0,
            escape(labels.0)
        );
        let _ = writeln!(
            f.svg,
            "<text transform=\"translate(16,{}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
            (y0 + y1) / 2.0,
            escape(labels.1)
        );
        f
    }
    fn px(&self, v: f64) -> f64 {
        PAD.0 + (v - self.x.0) / (self.x.1 - self.x.0).max(1e-12) * (W - PAD.0 - PAD.1)
    }
    fn py(&self, v: f64) -> f64 {
        H - PAD.3 - (v - self.y.0) / (self.y.1 - self.y.0).max(1e-12) * (H - PAD.2 - PAD.3)
    }
    fn line(&mut self, pts: &[(f64, f64)], color: &str) {
        let p: Vec<String> = pts
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", self.px(*x), self.py(*y)))
            .collect();
        let _ = writeln!(
            self.svg,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\"/>",
            p.join(" ")
        );
        for (x, y) in pts {
            self.dot(*x, *y, color, 2.5);
        }
    }
    fn dot(&mut self, x: f64, y: f64, color: &str, r: f64) {
        let _ = writeln!(
            self.svg,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"{r}\" fill=\"{color}\"/>",
            self.px(x),
            self.py(y)
        );
    }
    fn legend(&mut self, i: usize, label: &str, color: &str) {
        let (x, y) = (W - PAD.1 + 12.0, PAD.2 + 14.0 + 16.0 * i as f64);
        let _ = writeln!(self.svg, "<rect x=\"{x}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\">{}</text>", y - 9.0, x + 14.0, y, escape(label));
    }
    fn finish(mut self) -> String {
        self.svg.push_str("</svg>\n");
        self.svg
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn num(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// The range of `v` widened a little (a flat range gets a unit).
fn range(v: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = v.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(1e-3);
    (lo - pad, hi + pad)
}

/// Held-out score against the fraction kept, per layer.
fn scan_plot(s: &Scan) -> String {
    let scores = s
        .points
        .iter()
        .filter_map(|p| p.cost.map(|c| c.score))
        .chain([s.baseline.score]);
    let mut f = Frame::new(
        &format!("{} scan: one layer compressed at a time", s.method),
        (0.0, 1.0),
        range(scores),
        ("fraction of the layer kept", "held-out score"),
    );
    for (i, l) in s.layers.iter().enumerate() {
        let mut pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter(|p| &p.layer == l)
            .filter_map(|p| p.cost.map(|c| (p.keep, c.score)))
            .collect();
        pts.push((1.0, s.baseline.score));
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let color = COLORS[i % COLORS.len()];
        f.line(&pts, color);
        if i < 24 {
            f.legend(i, l, color);
        }
    }
    f.finish()
}

/// Cost kept against score: the scan's points and the candidates.
fn tradeoff_plot(s: &Scan, b: &Budget, cands: &[Candidate]) -> String {
    let base = amount(b, &s.baseline);
    let frac = |c: &squeeze::search::scan::Cost| amount(b, c) / base;
    let pts: Vec<(f64, f64)> = s
        .points
        .iter()
        .filter_map(|p| p.cost.as_ref().map(|c| (frac(c), c.score)))
        .collect();
    let cand: Vec<(f64, f64, &str)> = cands
        .iter()
        .filter_map(|c| Some((frac(c.applied.as_ref()?), c.score?, c.name.as_str())))
        .collect();
    let ys = pts
        .iter()
        .map(|p| p.1)
        .chain(cand.iter().map(|c| c.1))
        .chain([s.baseline.score]);
    let mut f = Frame::new(
        &format!(
            "budget {}={}: cost kept vs held-out score",
            b.kind(),
            b.fraction()
        ),
        (0.0, 1.05),
        range(ys),
        (
            &format!("fraction of the original's {} kept", b.kind()),
            "held-out score",
        ),
    );
    for (x, y) in &pts {
        f.dot(*x, *y, "#bbb", 2.5);
    }
    f.legend(0, "one layer (scan)", "#bbb");
    f.dot(1.0, s.baseline.score, "black", 4.0);
    f.legend(1, "original", "black");
    for (i, (x, y, name)) in cand.iter().enumerate() {
        let color = COLORS[(i + 2) % COLORS.len()];
        f.dot(*x, *y, color, 5.0);
        f.legend(i + 2, &format!("{name} (fine-tuned)"), color);
    }
    let bx = f.px(b.fraction());
    let _ = writeln!(f.svg, "<line x1=\"{bx:.1}\" x2=\"{bx:.1}\" y1=\"{}\" y2=\"{}\" stroke=\"#d62728\" stroke-dasharray=\"4 3\"/>", PAD.2, H - PAD.3);
    f.finish()
}

/// Writes `scan.svg` and `tradeoff.svg` into `out`.
pub fn plots(s: &Scan, b: &Budget, cands: &[Candidate], out: &Path) -> Result<()> {
    squeeze::checkpoint::write_atomic(&out.join("scan.svg"), scan_plot(s).as_bytes())?;
    squeeze::checkpoint::write_atomic(
        &out.join("tradeoff.svg"),
        tradeoff_plot(s, b, cands).as_bytes(),
    )?;
    Ok(())
}

/// The Markdown summary: the scan table and the candidates.
pub fn summary(s: &Scan, b: &Budget, cands: &[Candidate], best: Option<&str>) -> String {
    let mut md = format!(
        "# search: {} under {}={}\n\nHeld-out: {}; baseline score {:.4}; scan {:.0} s.\n\n| layer |",
        s.method,
        b.kind(),
        b.fraction(),
        s.held_out,
        s.baseline.score,
        s.seconds
    );
    for r in &s.ratios {
        let _ = write!(md, " keep {r} |");
    }
    md.push_str("\n|---|");
    md.push_str(&"---|".repeat(s.ratios.len()));
    md.push('\n');
    for l in &s.layers {
        let _ = write!(md, "| `{l}` |");
        for r in &s.ratios {
            let cell = match s.point(l, *r).and_then(|p| p.cost) {
                Some(c) => format!(" {:.4} |", c.score),
                None => " – |".into(),
            };
            md.push_str(&cell);
        }
        md.push('\n');
    }
    let base = amount(b, &s.baseline);
    md.push_str("\n| candidate | layers compressed | predicted loss | cost kept | meets budget | held-out score after fine-tuning |\n|---|---|---|---|---|---|\n");
    for c in cands {
        let kept = c
            .applied
            .map_or("–".into(), |a| format!("{:.3}", amount(b, &a) / base));
        let score = match (&c.score, &c.error) {
            (Some(v), _) => format!("{v:.4}"),
            (None, Some(e)) => format!("failed: {e}"),
            _ => "not made".into(),
        };
        let _ = writeln!(
            md,
            "| {}{} | {} | {} | {kept} | {} | {score} |",
            c.name,
            if best == Some(c.name.as_str()) {
                " (best)"
            } else {
                ""
            },
            c.choice.len(),
            loss_text(c.predicted_loss),
            c.meets_budget
        );
    }
    md
}
