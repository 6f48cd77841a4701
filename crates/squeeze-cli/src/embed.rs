//! `squeeze embed`: sentence embeddings of a text file (one sentence per line) with a text
//! encoder, written as a NumPy `.npy` matrix [lines, dim] (f32) or JSON lines
//! (`{"line": i, "embedding": [...]}`), chosen by the output's extension or `--format`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use squeeze::formats::load_any;
use squeeze::text::Encoder;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EmbedFormat {
    Npy,
    Jsonl,
}

#[derive(Args)]
pub struct EmbedArgs {
    /// Text encoder directory (squeeze checkpoint or HF / sentence-transformers directory).
    pub dir: PathBuf,
    /// Text file, one sentence per line (every line is embedded, empty ones included).
    #[arg(long)]
    pub input: PathBuf,
    /// Output file (.npy or .jsonl).
    #[arg(long)]
    pub out: PathBuf,
    /// Output format (default: from the --out extension).
    #[arg(long, value_enum)]
    pub format: Option<EmbedFormat>,
    /// Sentences per batch.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
}

pub fn run(a: EmbedArgs) -> Result<()> {
    let format = match (a.format, a.out.extension().and_then(|e| e.to_str())) {
        (Some(f), _) => f,
        (None, Some("npy")) => EmbedFormat::Npy,
        (None, Some("jsonl")) => EmbedFormat::Jsonl,
        _ => bail!(
            "--out {}: cannot tell the format from the extension; use .npy or .jsonl, or --format",
            a.out.display()
        ),
    };
    let text = std::fs::read_to_string(&a.input)
        .with_context(|| format!("reading {} (expected UTF-8 text)", a.input.display()))?;
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        bail!("{}: no lines to embed", a.input.display());
    }
    let model = load_any(&a.dir).with_context(|| format!("loading model {}", a.dir.display()))?;
    let enc = Encoder::new(&model)?;
    let progress = lines.len() > 1000;
    let emb = enc.embed(&lines, a.batch, progress)?;
    let bytes = match format {
        EmbedFormat::Npy => npy(&emb),
        EmbedFormat::Jsonl => jsonl(&emb)?,
    };
    squeeze::checkpoint::write_atomic(&a.out, &bytes)?;
    eprintln!(
        "embedded {} lines ({} dims) into {}",
        emb.len(),
        emb[0].len(),
        a.out.display()
    );
    Ok(())
}

/// NumPy format 1.0: magic, header dict padded to a multiple of 64 bytes, little-endian f32.
fn npy(rows: &[Vec<f32>]) -> Vec<u8> {
    let dim = rows.first().map_or(0, |r| r.len());
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {dim}), }}",
        rows.len()
    );
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    for r in rows {
        for v in r {
            out.extend(v.to_le_bytes());
        }
    }
    out
}

fn jsonl(rows: &[Vec<f32>]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        serde_json::to_writer(&mut out, &serde_json::json!({"line": i, "embedding": r}))?;
        out.write_all(b"\n")?;
    }
    Ok(out)
}
