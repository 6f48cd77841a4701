//! The demo's readable outputs beside `report.md`: a trade-off plot per workload
//! (Fashion-MNIST: every image model of every table; STS-B: the text models), and one
//! self-contained HTML page holding the tables and the plots (SVG inline), made from the
//! Markdown report by a converter for the few constructs it uses.

use std::path::{Path, PathBuf};

use anyhow::Result;
use squeeze::eval::Metrics;

use crate::plot::{self, Point};

/// Writes `pareto-<workload>.{svg,png}` under `dir` for the image and the text models
/// (each model once, at its first measurement); returns (title, path stem) per plot.
pub fn plots(
    dir: &Path,
    tables: &[(&str, Vec<(String, Metrics)>)],
) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for (slug, title, text) in [
        (
            "fashion-mnist",
            "Fashion-MNIST: test accuracy against file size and batch-1 latency",
            false,
        ),
        (
            "stsb",
            "STS-B dev: Spearman ×100 against file size and batch-1 latency",
            true,
        ),
    ] {
        let mut seen = std::collections::BTreeSet::new();
        let points: Vec<Point> = tables
            .iter()
            .flat_map(|(_, rows)| rows.iter())
            .filter(|(_, m)| m.spearman.is_some() == text)
            .filter(|(d, _)| seen.insert(d.clone()))
            .filter_map(|(d, m)| {
                Some(Point {
                    label: Path::new(d).file_name()?.to_string_lossy().to_string(),
                    quality: m.accuracy.map(|a| a * 100.0).or(m.spearman)?,
                    size_kb: m.size_bytes? as f64 / 1024.0,
                    latency_ms: m.latency_ms_b1?,
                })
            })
            .collect();
        if points.len() < 2 {
            continue;
        }
        let stem = dir.join(format!("pareto-{slug}"));
        let quality = if text {
            "STS-B Spearman ×100"
        } else {
            "test accuracy (%)"
        };
        plot::write(&stem, title, &points, quality)?;
        out.push((title.to_string(), stem));
    }
    Ok(out)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Inline Markdown of one line: `code` and **bold**.
fn inline(s: &str) -> String {
    let mut out = String::new();
    for (i, part) in escape(s).split('`').enumerate() {
        if i % 2 == 1 {
            out += &format!("<code>{part}</code>");
        } else {
            for (j, p) in part.split("**").enumerate() {
                out += &if j % 2 == 1 {
                    format!("<strong>{p}</strong>")
                } else {
                    p.to_string()
                };
            }
        }
    }
    out
}

fn table_html(lines: &[&str]) -> String {
    let cells = |l: &str| -> Vec<String> {
        l.trim()
            .trim_matches('|')
            .split('|')
            .map(|c| inline(c.trim()))
            .collect()
    };
    let mut h = String::from("<table>\n<tr>");
    for c in cells(lines[0]) {
        h += &format!("<th>{c}</th>");
    }
    h += "</tr>\n";
    for l in lines.iter().skip(2) {
        h += "<tr>";
        for c in cells(l) {
            h += &format!("<td>{c}</td>");
        }
        h += "</tr>\n";
    }
    h + "</table>\n"
}

/// The report as one HTML page, the plots' SVG inline (no file beside it needed).
pub fn html(md: &str, plots: &[(String, PathBuf)]) -> Result<String> {
    let mut body = String::new();
    let lines: Vec<&str> = md.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        if l.starts_with('|') {
            let start = i;
            while i < lines.len() && lines[i].starts_with('|') {
                i += 1;
            }
            body += &table_html(&lines[start..i]);
            continue;
        }
        if let Some(h) = l.strip_prefix("## ") {
            body += &format!("<h2>{}</h2>\n", inline(h));
        } else if let Some(item) = l.strip_prefix("- ") {
            body += &format!("<p class=\"row\">{}</p>\n", inline(item));
        } else if l.starts_with("![") {
            // the images: inlined below from their SVG
        } else if !l.trim().is_empty() {
            body += &format!("<p>{}</p>\n", inline(l));
        }
        i += 1;
    }
    for (title, stem) in plots {
        let svg = std::fs::read_to_string(stem.with_extension("svg"))?;
        let svg = svg.trim_start_matches(|c| c != '<');
        let svg = match svg.starts_with("<?xml") {
            true => svg.split_once("?>").map_or(svg, |x| x.1),
            false => svg,
        };
        body += &format!("<h2>{}</h2>\n<figure>{svg}</figure>\n", escape(title));
    }
    Ok(format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>squeeze demo</title>\n\
         <style>body{{font-family:sans-serif;max-width:1300px;margin:2em auto;padding:0 1em}}\
         table{{border-collapse:collapse;margin:1em 0;font-size:14px}}\
         td,th{{border:1px solid #bbb;padding:3px 7px;text-align:right}}\
         td:first-child,th:first-child{{text-align:left}}th{{background:#eee}}\
         p.row{{font-size:14px;margin:.3em 0}}code{{background:#f4f4f4}}</style></head>\n\
         <body>\n<h1>squeeze demo</h1>\n{body}</body></html>\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::html;

    #[test]
    fn the_page_turns_tables_headings_and_code_into_html() {
        let md = "## Fashion-MNIST\n\n| model | quality |\n|---|---|\n| zoo/vgg | 93.68% acc |\n\n- `zoo/vgg`: **the** original <x>\n";
        let h = html(md, &[]).unwrap();
        assert!(h.contains("<h2>Fashion-MNIST</h2>"), "{h}");
        assert!(h.contains("<th>model</th><th>quality</th>"), "{h}");
        assert!(h.contains("<td>zoo/vgg</td><td>93.68% acc</td>"), "{h}");
        assert!(
            h.contains("<code>zoo/vgg</code>: <strong>the</strong> original &lt;x&gt;"),
            "{h}"
        );
    }
}
