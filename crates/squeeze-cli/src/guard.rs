//! `compress --max-drop PTS`: an accuracy-aware limit in the manner of NNCF's `max_drop`.
//! The quality of the input model and of the model after each pass is measured on a
//! held-out split that no reported number uses — Fashion-MNIST's validation images (the
//! last 5,000 training images) for image classifiers, the last STS-B training pairs for
//! text encoders (the calibration sentences are the first ones) — never on the test set.
//! A compressed model that loses more than PTS points is not written; the error names the
//! pass that cost most and where a recipe that fine-tunes is.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use squeeze::data::{FashionMnist, ImageSet};
use squeeze::model::Model;
use squeeze::passes::PassRecord;
use squeeze::text::stsb::{self, Pair};

/// STS-B training pairs held out for text encoders: the last ones of the file.
pub const TEXT_HELD_OUT: usize = 1500;
/// Where those pairs come from.
pub const STSB_TRAIN: &str = "data/stsb/sts-train.csv";

enum HeldOut {
    Images(ImageSet),
    Pairs(Vec<Pair>),
}

pub struct Guard {
    held: HeldOut,
    max_drop: f64,
    baseline: f64,
    last: f64,
    /// (pass, quality after it)
    steps: Vec<(String, f64)>,
}

impl Guard {
    /// Loads the held-out split for `model`'s kind and measures the input model on it.
    pub fn new(model: &Model, max_drop: f64, images: &Path) -> Result<Self> {
        let held = if model.graph.is_text() {
            let pairs = stsb::read(Path::new(STSB_TRAIN)).with_context(|| {
                format!("--max-drop measures text encoders on the last STS-B training pairs of {STSB_TRAIN}")
            })?;
            let from = pairs.len().saturating_sub(TEXT_HELD_OUT);
            HeldOut::Pairs(pairs[from..].to_vec())
        } else {
            HeldOut::Images(FashionMnist::load(images)?.valid)
        };
        let mut g = Guard {
            held,
            max_drop,
            baseline: 0.0,
            last: 0.0,
            steps: Vec::new(),
        };
        g.baseline = g.quality(model)?;
        g.last = g.baseline;
        eprintln!(
            "--max-drop {max_drop}: {} of the input model {:.2}",
            g.what(),
            g.baseline
        );
        Ok(g)
    }

    fn what(&self) -> String {
        match &self.held {
            HeldOut::Images(s) => format!(
                "validation accuracy (%, {} held-out training images)",
                s.len()
            ),
            HeldOut::Pairs(p) => {
                format!("Spearman ×100 on {} held-out STS-B training pairs", p.len())
            }
        }
    }

    /// Quality in points: accuracy in percent, or Spearman ×100.
    fn quality(&self, m: &Model) -> Result<f64> {
        Ok(match &self.held {
            HeldOut::Images(s) => 100.0 * squeeze::eval::accuracy(&m.graph, &m.params, s, 256)?,
            HeldOut::Pairs(p) => squeeze::text::Encoder::new(m)?.stsb(p, 32, false)?.0,
        })
    }

    /// Measures the model a pass left.
    pub fn observe(&mut self, rec: &PassRecord, m: &Model) -> squeeze::Result<()> {
        let q = self.quality(m).map_err(|e| squeeze::Error::Pass {
            pass: rec.pass.clone(),
            msg: format!("--max-drop could not measure its result: {e:#}"),
        })?;
        eprintln!(
            "--max-drop: after `{}`: {q:.2} ({:+.2} pt)",
            rec.pass,
            q - self.last
        );
        self.last = q;
        self.steps.push((rec.pass.clone(), q));
        Ok(())
    }

    /// The record for report.json.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "max_drop": self.max_drop, "held_out": self.what(), "baseline": self.baseline,
            "after_each_pass": self.steps.iter().map(|(p, q)| serde_json::json!({"pass": p, "quality": q})).collect::<Vec<_>>(),
            "drop": self.baseline - self.last,
        })
    }

    /// Refuses the result when it lost more than the limit.
    pub fn verdict(&self, recipe: &str, text: &str, recipe_path: Option<&Path>) -> Result<()> {
        let drop = self.baseline - self.last;
        if drop <= self.max_drop {
            eprintln!(
                "--max-drop {}: lost {drop:.2} pt ({:.2} → {:.2}), within the limit",
                self.max_drop, self.baseline, self.last
            );
            return Ok(());
        }
        let mut before = self.baseline;
        let mut costs = Vec::new();
        for (i, (p, q)) in self.steps.iter().enumerate() {
            costs.push((i, p.as_str(), before - q));
            before = *q;
        }
        let per_pass: Vec<String> = costs
            .iter()
            .map(|(i, p, c)| format!("passes[{i}] `{p}` {:+.2}", -c))
            .collect();
        let (wi, worst, _) = costs
            .iter()
            .copied()
            .max_by(|a, b| a.2.total_cmp(&b.2))
            .unwrap_or((0, "?", 0.0));
        anyhow::bail!(
            "not written: {recipe} lost {drop:.2} points of {} ({:.2} → {:.2}), more than \
             --max-drop {}. Per pass: {}. The pass that cost most is passes[{wi}] `{worst}`. \
             {}",
            self.what(),
            self.baseline,
            self.last,
            self.max_drop,
            per_pass.join(", "),
            fine_tuning_hint(text, recipe_path)
        )
    }
}

/// Where a recipe that fine-tunes is: the one its comment names (`# … Fine-tuned form:
/// FILE`), else the recipe of the same name without `-oneshot` beside it, else the
/// general advice.
fn fine_tuning_hint(text: &str, recipe: Option<&Path>) -> String {
    let named = text
        .lines()
        .take_while(|l| l.starts_with('#'))
        .find_map(|l| l.split("Fine-tuned form:").nth(1))
        .map(|f| PathBuf::from(f.trim()));
    let sibling = recipe.and_then(|r| {
        let name = r.file_name()?.to_str()?;
        let tuned: PathBuf = r.with_file_name(name.replace("-oneshot", ""));
        (name.contains("-oneshot") && tuned.is_file()).then_some(tuned)
    });
    let general = "Fine-tuning recovers most of a one-shot loss: give that pass \
                   `finetune_epochs` or follow it with a `finetune` pass (budget in [finetune])";
    match named.or(sibling) {
        Some(t) => format!(
            "{} is the fine-tuned form of this recipe. {general}.",
            t.display()
        ),
        None => format!("{general}."),
    }
}
