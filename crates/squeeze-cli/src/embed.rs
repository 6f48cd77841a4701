//! `squeeze embed`: sentence embeddings of a text file (one sentence per line) with a text
//! encoder, written as a NumPy `.npy` matrix [lines, dim] (f32) or JSON lines
//! (`{"line": i, "embedding": [...]}`), chosen by the output's extension or `--format`.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use squeeze::formats::load_any;
use squeeze::interp::{keep_packed_only, PackCache};
use squeeze::text::shorten::Shortener;
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
    #[arg(value_parser = crate::count("batch"), long, default_value_t = 32)]
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
    if a.batch == 0 || a.batch > 4096 {
        bail!("--batch {}: expected 1 to 4096 sentences", a.batch);
    }
    crate::outdir::check_disjoint(
        &a.out,
        &[("model", a.dir.as_path()), ("--input", a.input.as_path())],
    )?;
    let _lock = crate::outdir::Lock::take(&a.out)?;
    let mut model =
        load_any(&a.dir).with_context(|| format!("loading model {}", a.dir.display()))?;
    // the kernels' packed form of each weight replaces the stored one: held once
    let packs = Arc::new(PackCache::default());
    keep_packed_only(&model.graph, &mut model.params, &packs)?;
    let enc = Encoder::with_packs(&model, packs)?;
    crate::alloc::trim_lean_heap(); // what the load and the tokenizer's parse freed
    let owned = read_lines(&a.input, enc.tokenizer.max_len)?;
    let lines: Vec<&str> = owned.iter().map(String::as_str).collect();
    if lines.is_empty() {
        bail!("{}: no lines to embed", a.input.display());
    }
    let progress = lines.len() > 1000;
    let emb = enc.embed(&lines, a.batch, progress)?;
    let bytes = match format {
        EmbedFormat::Npy => npy(&emb),
        EmbedFormat::Jsonl => jsonl(&emb)?,
    };
    let tmp = crate::outdir::tmp_file(&a.out);
    crate::cleanup::register(&tmp);
    let written = std::fs::write(&tmp, &bytes)
        .and_then(|_| std::fs::rename(&tmp, &a.out))
        .with_context(|| format!("writing {}", a.out.display()));
    let _ = std::fs::remove_file(&tmp);
    crate::cleanup::unregister(&tmp);
    written?;
    let peak = squeeze::eval::peak_rss_bytes().map_or(String::new(), |b| {
        format!("; peak RSS {:.1} MB", b as f64 / 1e6)
    });
    eprintln!(
        "embedded {} lines ({} dims) into {}{peak}",
        emb.len(),
        emb[0].len(),
        a.out.display()
    );
    Ok(())
}

/// Bytes of a line read before they are handed to the cutter.
const PIECE: usize = 1 << 16;

/// The lines of `path`, read as a stream: each is cut (see [`Shortener`]) to what a model
/// of `max_tokens` tokens can read while it is read, so one huge line costs no more
/// memory than a short one.
fn read_lines(path: &Path, max_tokens: usize) -> Result<Vec<String>> {
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut r = std::io::BufReader::new(file);
    let mut lines = Vec::new();
    loop {
        let mut cut = Shortener::new(max_tokens);
        let mut pending: Vec<u8> = Vec::new();
        let mut any = false;
        let mut ended = false;
        while !ended {
            let buf = r
                .fill_buf()
                .with_context(|| format!("reading {}", path.display()))?;
            if buf.is_empty() {
                break;
            }
            any = true;
            let (take, nl) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (i, 1),
                None => (buf.len(), 0),
            };
            if !cut.done() {
                pending.extend_from_slice(&buf[..take]);
            }
            r.consume(take + nl);
            ended = nl == 1;
            if pending.len() >= PIECE || ended {
                feed(&mut cut, &mut pending, ended, path, lines.len() + 1)?;
            }
        }
        if !any {
            return Ok(lines);
        }
        feed(&mut cut, &mut pending, true, path, lines.len() + 1)?;
        lines.push(cut.finish());
    }
}

/// Hands the complete UTF-8 characters of `pending` to `cut` (all of it at the line's end).
fn feed(
    cut: &mut Shortener,
    pending: &mut Vec<u8>,
    end: bool,
    path: &Path,
    line: usize,
) -> Result<()> {
    let valid = match std::str::from_utf8(pending) {
        Ok(_) => pending.len(),
        Err(e) if e.error_len().is_none() && !end => e.valid_up_to(),
        Err(_) => bail!("{}: line {line} is not UTF-8 text", path.display()),
    };
    let text = std::str::from_utf8(&pending[..valid]).expect("checked above");
    cut.push(text.strip_suffix('\r').filter(|_| end).unwrap_or(text));
    pending.drain(..valid);
    if cut.done() {
        pending.clear();
    }
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
