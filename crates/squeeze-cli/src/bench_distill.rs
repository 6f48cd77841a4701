//! `squeeze bench distill`: students distilled (or trained from scratch) against their
//! teacher. Each `--variant KEY=DIR[,DIR…]` names one training recipe and its runs (one
//! directory per seed): their test accuracies are measured here, one by one, and averaged;
//! params and FLOPs come from the graph; batch-1 latency and batch-256 throughput of the
//! teacher and of each variant's first student are timed interleaved in this process.
//! Every key is merged into the results file (`--out`, by default
//! `runs/bench/distill.json`); a compact student trained from the teacher (e.g.
//! `dwsep-vgg`) is one more variant, and a compressed model against its dense counterpart
//! (`condensenet`) is measured with that counterpart as the `--teacher`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use squeeze::checkpoint::{self, Model};
use squeeze::data::FashionMnist;
use squeeze::eval::{accuracy, image_speeds, static_cost};

use crate::DataArg;

#[derive(Args)]
pub struct DistillBenchArgs {
    /// The teacher's model directory (for a compressed model: its dense counterpart).
    #[arg(long)]
    pub teacher: PathBuf,
    /// KEY=DIR[,DIR…]: one variant and its runs (one directory per seed; repeatable).
    #[arg(long = "variant", value_name = "KEY=DIRS", required = true)]
    pub variants: Vec<String>,
    #[arg(long, default_value = "runs/bench/distill.json")]
    pub out: PathBuf,
    /// Interleaved timing rounds.
    #[arg(value_parser = crate::count("rounds"), long, default_value_t = 7)]
    pub rounds: usize,
    /// Batch-1 runs per round (batch-256 runs are a tenth of these).
    #[arg(value_parser = crate::count("runs"), long, default_value_t = 100)]
    pub runs: usize,
    #[command(flatten)]
    pub data: DataArg,
}

/// One variant: its key, run directories and loaded students.
struct Variant {
    key: String,
    dirs: Vec<PathBuf>,
    models: Vec<Model>,
}

fn parse(spec: &str) -> Result<Variant> {
    let Some((key, dirs)) = spec.split_once('=') else {
        bail!("--variant `{spec}`: expected KEY=DIR[,DIR…]");
    };
    let dirs: Vec<PathBuf> = dirs
        .split(',')
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .collect();
    if key.is_empty() || dirs.is_empty() {
        bail!("--variant `{spec}`: expected KEY=DIR[,DIR…]");
    }
    let models = dirs
        .iter()
        .map(|d| {
            checkpoint::load(d).with_context(|| format!("--variant {key}: loading {}", d.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Variant {
        key: key.into(),
        dirs,
        models,
    })
}

pub fn run(a: DistillBenchArgs) -> Result<()> {
    let teacher = checkpoint::load(&a.teacher)
        .with_context(|| format!("--teacher: loading {}", a.teacher.display()))?;
    let variants = a
        .variants
        .iter()
        .map(|s| parse(s))
        .collect::<Result<Vec<_>>>()?;
    let data = FashionMnist::load(&a.data.data)?;
    let acc =
        |m: &Model| -> Result<f64> { Ok(100.0 * accuracy(&m.graph, &m.params, &data.test, 500)?) };
    let teacher_acc = acc(&teacher)?;
    let mut per_seed = Vec::new();
    for v in &variants {
        let accs = v.models.iter().map(&acc).collect::<Result<Vec<_>>>()?;
        eprintln!(
            "{}: test accuracy {accs:.2?} (teacher {teacher_acc:.2})",
            v.key
        );
        per_seed.push(accs);
    }
    let mut timed: Vec<&Model> = vec![&teacher];
    timed.extend(variants.iter().map(|v| &v.models[0]));
    eprintln!(
        "timing the teacher and {} students, {} rounds",
        variants.len(),
        a.rounds
    );
    let t = image_speeds(&timed, a.rounds, a.runs)?;
    let tc = static_cost(&teacher)?;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let scratch = variants
        .iter()
        .position(|v| v.key == "student-scratch")
        .map(|i| mean(&per_seed[i]));
    let mut shown = serde_json::Map::new();
    for (i, v) in variants.iter().enumerate() {
        let c = static_cost(&v.models[0])?;
        let m = mean(&per_seed[i]);
        let (st, tt) = (&t[i + 1], &t[0]);
        shown.insert(
            v.key.clone(),
            json!({
                "accuracy_mean": m,
                "accuracy_per_seed": per_seed[i],
                "vs_scratch_pt": scratch.filter(|_| v.key != "student-scratch").map(|s| m - s),
                "teacher_accuracy": teacher_acc,
                "params": c.params,
                "teacher_params": tc.params,
                "flops": c.flops,
                "teacher_flops": tc.flops,
                "latency_ms_b1": st.latency_ms_b1.median,
                "teacher_latency_ms_b1": tt.latency_ms_b1.median,
                "throughput_b256": st.throughput.median,
                "teacher_throughput_b256": tt.throughput.median,
                // the same numbers under the names of a compressed-vs-original entry
                "accuracy": m,
                "baseline": teacher_acc,
                "baseline_flops": tc.flops,
                "baseline_latency_ms_b1": tt.latency_ms_b1.median,
                "baseline_throughput_b256": tt.throughput.median,
                "timing": tt.method,
                "runs": v.dirs,
                "made_by": v.dirs.iter().map(|d| crate::made_by(d)).collect::<Vec<_>>(),
                "teacher": a.teacher,
                "threads": crate::measure::threads(),
                "cpu": squeeze::isa::cpu_name(),
                "command": crate::invocation::invocation(),
            }),
        );
    }
    crate::measure::merge_results(&a.out, &shown)?;
    println!("{}", serde_json::to_string_pretty(&shown)?);
    Ok(())
}
