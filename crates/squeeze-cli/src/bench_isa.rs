//! `squeeze bench isa`: batch-1 latency of a sentence encoder on each kernel path
//! (AVX-512, AVX2 + FMA, scalar; see [`squeeze::isa`]) in one process, the paths
//! interleaved round by round on the same real STS-B sentences, medians with their spread.
//! Paths the CPU lacks are recorded as `null` with the reason. Writes `--out` (by default
//! `runs/bench/isa.json`; the committed `results/isa.json` only when asked).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::{json, Map, Value};
use squeeze::formats::load_any;
use squeeze::isa::{self, Isa};
use squeeze::text::{stsb, Encoder};

use crate::measure::median;
use crate::write_json;

#[derive(Args)]
pub struct IsaArgs {
    /// Text encoder directory.
    #[arg(long, default_value = "models/all-MiniLM-L6-v2")]
    pub model: PathBuf,
    /// STS-B file whose sentences are timed.
    #[arg(long, default_value = "data/stsb/sts-dev.csv")]
    pub data: PathBuf,
    /// Kernel paths to time, comma-separated.
    #[arg(long, default_value = "avx512,avx2,scalar")]
    pub isa: String,
    /// Interleaved rounds (each path times every sentence once per round).
    #[arg(value_parser = crate::count("rounds"), long, default_value_t = 5)]
    pub rounds: usize,
    /// Sentences timed one by one per round.
    #[arg(value_parser = crate::count("latency_sentences"), long, default_value_t = 100)]
    pub sentences: usize,
    #[arg(long, default_value = "runs/bench/isa.json")]
    pub out: PathBuf,
}

pub fn run(a: IsaArgs) -> Result<()> {
    let paths = a
        .isa
        .split(',')
        .map(Isa::parse)
        .collect::<squeeze::Result<Vec<_>>>()?;
    let model = load_any(&a.model).with_context(|| format!("loading {}", a.model.display()))?;
    let pairs = stsb::read(&a.data)?;
    let texts = stsb::sentences(&pairs);
    let texts = &texts[..a.sentences.min(texts.len())];
    let enc = Encoder::new(&model)?;
    let run_paths: Vec<Isa> = paths.iter().copied().filter(|i| i.is_supported()).collect();
    let mut per_round: Vec<Vec<f64>> = vec![Vec::new(); run_paths.len()];
    for round in 0..a.rounds {
        for (i, &p) in run_paths.iter().enumerate() {
            isa::force(Some(p))?;
            let ms = enc.latency_b1(texts)?;
            eprintln!(
                "round {}/{}: {:<6} {ms:.2} ms",
                round + 1,
                a.rounds,
                p.name()
            );
            per_round[i].push(ms);
        }
    }
    isa::force(None)?;
    let mut out = Map::new();
    let mut med = std::collections::HashMap::new();
    for p in &paths {
        let key = format!("{}_ms_b1", p.name());
        match run_paths.iter().position(|q| q == p) {
            Some(i) => {
                let mut v = per_round[i].clone();
                let m = median(&mut v);
                med.insert(*p, m);
                out.insert(key, json!(m));
                out.insert(format!("{}_rounds_ms", p.name()), json!(per_round[i]));
            }
            None => {
                out.insert(key, Value::Null);
                out.insert(
                    format!("{}_note", p.name()),
                    json!("not measured: this CPU lacks the instruction set"),
                );
            }
        }
    }
    let ratio = match (med.get(&Isa::Avx2), med.get(&Isa::Avx512)) {
        (Some(b), Some(a)) => json!(b / a),
        _ => Value::Null,
    };
    out.insert("avx2_ratio".into(), ratio);
    if let (Some(s), Some(v)) = (med.get(&Isa::Scalar), med.get(&Isa::Avx2)) {
        out.insert("scalar_over_avx2".into(), json!(s / v));
    }
    out.insert("cpu".into(), json!(isa::cpu_name()));
    out.insert(
        "supported".into(),
        json!(isa::supported()
            .iter()
            .map(|i| i.name())
            .collect::<Vec<_>>()),
    );
    out.insert("threads".into(), json!(rayon_threads()));
    out.insert("sentences".into(), json!(texts.len()));
    out.insert("rounds".into(), json!(a.rounds));
    out.insert(
        "method".into(),
        json!("one process; paths interleaved per round; each round's value is the median batch-1 latency over the sentences (tokenization included); the key is the median of the rounds"),
    );
    out.insert(
        "command".into(),
        json!(format!(
            "squeeze bench isa --isa {} --rounds {} --sentences {} --model {} --out {}",
            a.isa,
            a.rounds,
            a.sentences,
            a.model.display(),
            a.out.display()
        )),
    );
    write_json(&a.out, &Value::Object(out))?;
    eprintln!("wrote {}", a.out.display());
    Ok(())
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
