//! `squeeze search`: per-layer ratios for a budget. The recipe's first pass is the template
//! (`low_rank`, `channel_prune` or `magnitude`); its other passes (a `finetune`) and its
//! `[finetune]`/`[calibration]` tables go into every candidate. The sensitivity scan is
//! cached (a killed search resumes; a second budget reuses it); then two candidates that
//! meet the budget by the analytic count (or a measurement, for latency) are made and
//! fine-tuned — the searched ratios (the knapsack's choice refined by hill climbing on the
//! applied model) and one uniform ratio — and each is written to
//! `OUT/<name>/` with the recipe that `squeeze compress` reproduces it with, as soon as it
//! is done, so a failure later keeps it. `OUT/search.json`, `OUT/search.md` and two plots
//! report the scan and the choice.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use squeeze::checkpoint;
use squeeze::data::FashionMnist;
use squeeze::formats::load_any;
use squeeze::model::Model;
use squeeze::passes::{run_recipe, PassCtx, Recipe};
use squeeze::search::refine::Refine;
use squeeze::search::scan::{self, cost, Cost, HeldOut, Scan, ScanSpec};
use squeeze::search::select::{amount, choose, closest, predicted};
use squeeze::search::{Budget, Method};
use squeeze::train::DataSource;

use crate::outdir::{claim_in_place, Staged};
use crate::search_report::{loss_text, plots, summary, Candidate};
use crate::write_json;

/// Where STS-B train pairs are read from for a text model's held-out score.
const STSB_TRAIN: &str = "data/stsb/sts-train.csv";

#[derive(Args)]
pub struct SearchArgs {
    /// Input model directory (never modified).
    pub dir: PathBuf,
    /// Recipe whose first pass is the template searched (`low_rank`, `channel_prune` or
    /// `magnitude`); its other passes and its [finetune] / [calibration] apply to every
    /// candidate.
    #[arg(long)]
    pub recipe: PathBuf,
    /// What to meet, as a fraction of the original kept: params=F (non-zero parameters),
    /// flops=F (analytic count) or latency=F (measured batch-1 latency).
    #[arg(long, value_parser = Budget::parse)]
    pub budget: Budget,
    /// Output directory: the candidates, their recipes, the report and plots.
    #[arg(long)]
    pub out: PathBuf,
    /// Ratios scanned per layer: fractions of the layer kept, each in (0, 1).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0.1,0.2,0.3,0.4,0.5,0.6,0.8"
    )]
    pub ratios: Vec<f64>,
    /// Directory of cached scans (default: $XDG_CACHE_HOME/squeeze/search or
    /// ~/.cache/squeeze/search).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Fashion-MNIST directory (image models) or STS-B train file (text encoders; the
    /// held-out slice is its first --pairs pairs).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Training images whose BatchNorm statistics every scored image model is re-estimated
    /// on before its held-out accuracy is taken (AdaBN, as EagleEye judges candidates);
    /// 0 scores with the statistics the compression left. Models without BatchNorm ignore it.
    #[arg(long, default_value_t = 512)]
    pub adapt_bn: usize,
    /// STS-B train pairs scored for a text encoder.
    #[arg(long, default_value_t = 1000)]
    pub pairs: usize,
    /// Models the hill climbing scores to refine the choice (0: the knapsack's choice as
    /// it is).
    #[arg(value_parser = crate::count("refine"), long, default_value_t = 40)]
    pub refine: usize,
    /// Step of the hill climbing's ratio moves.
    #[arg(long, default_value_t = 0.05)]
    pub step: f64,
    /// Stop after the scan and the choice (no candidates are made).
    #[arg(long)]
    pub scan_only: bool,
    /// Replace the candidates in OUT if squeeze wrote them.
    #[arg(long)]
    pub force: bool,
}

fn cache_dir(given: Option<&Path>) -> PathBuf {
    if let Some(d) = given {
        return d.to_path_buf();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("squeeze").join("search")
}

fn held_out(model: &Model, data: Option<&Path>, pairs: usize, adapt: usize) -> Result<HeldOut> {
    if model.graph.is_text() {
        let path = data.unwrap_or(Path::new(STSB_TRAIN));
        let mut p = squeeze::text::stsb::read(path)
            .with_context(|| format!("--data {}", path.display()))?;
        p.truncate(pairs.max(1));
        return Ok(HeldOut::Pairs(p));
    }
    let dir = FashionMnist::dir(data);
    let set = FashionMnist::load(&dir)?;
    let idx: Vec<usize> = (0..adapt.min(set.train.len())).collect();
    let adapt = idx
        .chunks(64)
        .map(|c| DataSource::batch(&set.train, c, None))
        .collect::<squeeze::Result<Vec<_>>>()?;
    Ok(HeldOut::Images {
        valid: set.valid,
        adapt,
    })
}

/// What choosing candidates works with: the model, its scan, the method, the held-out
/// slice and the budget.
struct Choosing<'a> {
    model: &'a Model,
    scan: &'a Scan,
    method: &'a Method,
    held_out: &'a HeldOut,
    budget: &'a Budget,
}

impl Choosing<'_> {
    /// The applied model's cost under the budget, and whether it meets it.
    fn check(&self, choice: &[(String, f64)], ctx: &mut PassCtx) -> Result<(Cost, bool)> {
        let m = scan::apply(self.model, self.method, choice, ctx)?;
        let c = cost(&m, self.held_out, matches!(self.budget, Budget::Latency(_)))?;
        let ok = amount(self.budget, &c)
            <= self.budget.fraction() * amount(self.budget, &self.scan.baseline);
        Ok((c, ok))
    }

    /// The knapsack's answer, re-solved for a larger saving while the applied model misses
    /// the budget; or, if none reaches it, the closest choice.
    fn searched(&self, ctx: &mut PassCtx) -> Result<Candidate> {
        let (s, budget) = (self.scan, self.budget);
        let base = amount(budget, &s.baseline);
        let mut required = base * (1.0 - budget.fraction());
        for _ in 0..8 {
            let Some(choice) = choose(s, budget, required) else {
                break;
            };
            let (c, ok) = self.check(&choice, ctx)?;
            if ok {
                return Ok(self.candidate("searched", choice, c, true));
            }
            required += (amount(budget, &c) - budget.fraction() * base).max(base * 1e-3);
        }
        let choice = closest(s, budget);
        let (c, ok) = self.check(&choice, ctx)?;
        Ok(self.candidate("closest", choice, c, ok))
    }

    /// Hill climbing on the applied model's held-out score from the better (before
    /// fine-tuning) of the candidates so far, scoring up to `evals` models.
    fn refined(
        &self,
        cands: &[Candidate],
        evals: usize,
        step: f64,
        ctx: &mut PassCtx,
    ) -> Result<Candidate> {
        let score = |c: &Candidate| c.applied.map_or(f64::NEG_INFINITY, |a| a.score);
        let start = cands
            .iter()
            .filter(|c| c.meets_budget)
            .max_by(|x, y| score(x).total_cmp(&score(y)))
            .unwrap_or(&cands[0]);
        let start_cost = start
            .applied
            .context("the starting choice has no applied cost")?;
        eprintln!(
            "refining from the {} choice (held-out {:.4} before fine-tuning), up to {evals} models",
            start.name, start_cost.score
        );
        let r = Refine {
            model: self.model,
            method: self.method,
            held_out: self.held_out,
            budget: self.budget,
            baseline: &self.scan.baseline,
            step,
            max_evals: evals,
        };
        let bar = indicatif::ProgressBar::new(evals as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("refine [{bar:30}] {pos}/{len} models, {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let mut best = start_cost.score;
        let out = r.run(
            &self.scan.layers,
            &start.choice,
            start_cost,
            ctx,
            |n, score| {
                best = best.max(score);
                bar.set_position(n as u64);
                bar.set_message(format!("best {best:.4}"));
            },
        )?;
        bar.finish_and_clear();
        let mut c = self.candidate("searched", out.choice, out.cost, true);
        c.refined_from = Some(start.name.clone());
        c.refine_evals = out.evals;
        Ok(c)
    }

    /// One ratio for every scanned layer: the largest, in thousandths, whose applied model
    /// meets the budget.
    fn uniform(&self, ctx: &mut PassCtx) -> Result<Option<Candidate>> {
        let at = |k: usize| -> Vec<(String, f64)> {
            self.scan
                .layers
                .iter()
                .map(|l| (l.clone(), k as f64 / 1000.0))
                .collect()
        };
        let (mut lo, mut hi) = (0usize, 1000usize); // lo meets (or is 0), hi does not
        let mut best = None;
        while hi - lo > 1 {
            let k = (lo + hi) / 2;
            match self.check(&at(k), ctx) {
                Ok((c, true)) => {
                    best = Some((k, c));
                    lo = k;
                }
                _ => hi = k,
            }
        }
        Ok(best.map(|(k, c)| self.candidate("uniform", at(k), c, true)))
    }

    /// Makes candidate `c` (its recipe, fine-tuning included), scores it, and writes it to
    /// `out/<name>` with its recipe.
    fn make(
        &self,
        base: &Recipe,
        c: &mut Candidate,
        ctx: &mut PassCtx,
        out: &Path,
        inputs: &[(&str, &Path)],
    ) -> Result<()> {
        let start = Instant::now();
        let recipe = recipe_of(base, self.method, c);
        let text = toml::to_string(&recipe).context("writing the candidate's recipe")?;
        let dir = out.join(&c.name);
        let staged = Staged::begin(&dir, inputs, true)?;
        std::fs::write(staged.dir().join("recipe.toml"), &text)?;
        let (m, passes) = run_recipe(self.model.clone(), &recipe, ctx)?;
        c.score = Some(self.held_out.score(&m)?);
        c.seconds = start.elapsed().as_secs_f64();
        checkpoint::save(&m, staged.dir())?;
        let command = crate::invocation::invocation();
        write_json(
            &staged.dir().join("candidate.json"),
            &serde_json::json!({ "candidate": c, "passes": passes, "command": command }),
        )?;
        staged.commit()?;
        std::fs::write(out.join(format!("{}.recipe.toml", c.name)), text)?;
        Ok(())
    }

    fn candidate(&self, name: &str, choice: Vec<(String, f64)>, c: Cost, ok: bool) -> Candidate {
        Candidate {
            name: name.into(),
            predicted_loss: predicted(self.scan, self.budget, &choice).map(|p| p.0),
            choice,
            applied: Some(c),
            meets_budget: ok,
            score: None,
            error: None,
            seconds: 0.0,
            refined_from: None,
            refine_evals: 0,
        }
    }
}

/// The full recipe of a candidate: its passes, then the template recipe's other passes.
fn recipe_of(base: &Recipe, method: &Method, c: &Candidate) -> Recipe {
    let mut passes = method.passes(&c.choice);
    passes.extend(base.passes[1..].iter().cloned());
    Recipe {
        calibration: base.calibration.clone(),
        finetune: base.finetune.clone(),
        passes,
    }
}

pub fn run(a: SearchArgs) -> Result<()> {
    let wall = Instant::now();
    if let Some(r) = a.ratios.iter().find(|r| !(**r > 0.0 && **r < 1.0)) {
        bail!("--ratios: {r} is not a fraction in (0, 1)");
    }
    if !(a.step > 0.0 && a.step <= 0.5) {
        bail!("--step: {} is not in (0, 0.5]", a.step);
    }
    let mut inputs = vec![("model", a.dir.as_path()), ("--recipe", a.recipe.as_path())];
    if let Some(d) = &a.data {
        inputs.push(("--data", d.as_path()));
    }
    let _lock = claim_in_place(&a.out, &inputs, a.force, true)?;
    let recipe = Recipe::load(&a.recipe)?;
    let method = Method::from_pass(&recipe.passes[0])
        .with_context(|| format!("recipe {}", a.recipe.display()))?;
    if matches!(
        (&method, &a.budget),
        (Method::Magnitude(_), Budget::Flops(_) | Budget::Latency(_))
    ) {
        bail!(
            "--budget {}: magnitude pruning leaves dense FLOPs and latency unchanged; use params=F",
            a.budget.kind()
        );
    }
    let model = load_any(&a.dir).with_context(|| format!("loading model {}", a.dir.display()))?;
    let h = held_out(&model, a.data.as_deref(), a.pairs, a.adapt_bn)?;
    let work = a.out.join(".work");
    let images = FashionMnist::dir(if model.graph.is_text() {
        None
    } else {
        a.data.as_deref()
    });
    let mut ctx = recipe.context(&images, &work);
    ctx.set_original(&model);
    let layers = method.layers(&model)?;
    if layers.is_empty() {
        bail!("the model has no layer that `{}` applies to", method.name());
    }
    let latency = matches!(a.budget, Budget::Latency(_));
    let key = scan::scan_key(&model, &method, &a.ratios, &h.describe(), latency)?;
    let cache = cache_dir(a.cache.as_deref()).join(format!("{key}.json"));
    eprintln!(
        "scan: {} layers × {} ratios, {} (cache {})",
        layers.len(),
        a.ratios.len(),
        h.describe(),
        cache.display()
    );
    let bar = indicatif::ProgressBar::new((layers.len() * a.ratios.len()) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("scan [{bar:30}] {pos}/{len} points, {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let spec = ScanSpec {
        method: &method,
        layers,
        ratios: a.ratios.clone(),
        held_out: &h,
        latency,
        cache: &cache,
    };
    let s = scan::run(&model, &spec, &mut ctx, |done, _| {
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();
    write_json(&a.out.join("scan.json"), &s)?;
    let choosing = Choosing {
        model: &model,
        scan: &s,
        method: &method,
        held_out: &h,
        budget: &a.budget,
    };
    let mut cands = vec![choosing.searched(&mut ctx)?];
    if let Some(u) = choosing.uniform(&mut ctx)? {
        cands.push(u);
    }
    if a.refine > 0 && cands[0].meets_budget {
        cands[0] = choosing.refined(&cands, a.refine, a.step, &mut ctx)?;
    }
    if !a.scan_only {
        for c in cands.iter_mut() {
            eprintln!(
                "candidate {}: {} layers compressed, predicted loss {}; applying its recipe",
                c.name,
                c.choice.len(),
                loss_text(c.predicted_loss)
            );
            if let Err(e) = choosing.make(&recipe, c, &mut ctx, &a.out, &inputs) {
                eprintln!("candidate {} failed: {e:#}", c.name);
                c.error = Some(format!("{e:#}"));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    let best = cands
        .iter()
        .filter(|c| c.meets_budget && c.score.is_some())
        .max_by(|x, y| x.score.unwrap_or(0.0).total_cmp(&y.score.unwrap_or(0.0)))
        .map(|c| c.name.clone());
    let report = serde_json::json!({
        "model": a.dir, "recipe": a.recipe, "method": method.name(), "budget": a.budget,
        "held_out": h.describe(), "baseline": s.baseline, "scan_seconds": s.seconds,
        "search_wall_s": wall.elapsed().as_secs_f64(), "candidates": cands, "best": best,
        "command": crate::invocation::invocation(),
    });
    write_json(&a.out.join("search.json"), &report)?;
    let md = summary(&s, &a.budget, &cands, best.as_deref());
    squeeze::checkpoint::write_atomic(&a.out.join("search.md"), md.as_bytes())?;
    plots(&s, &a.budget, &cands, &a.out)?;
    println!("{md}");
    if let Some(b) = &best {
        std::fs::copy(
            a.out.join(format!("{b}.recipe.toml")),
            a.out.join("recipe.toml"),
        )?;
    }
    match (cands.iter().any(|c| c.meets_budget), best) {
        (false, _) => bail!(
            "no candidate meets --budget {}={}: the closest, `{}`, is kept in {}",
            a.budget.kind(),
            a.budget.fraction(),
            cands[0].name,
            a.out.join(&cands[0].name).display()
        ),
        (true, None) if !a.scan_only => bail!(
            "every candidate failed; see {}",
            a.out.join("search.json").display()
        ),
        _ => Ok(()),
    }
}
