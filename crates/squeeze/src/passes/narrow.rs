//! Narrowing a transformer encoder: each attention layer keeps its `heads` heads, and each
//! feed-forward block its `intermediate` hidden units, of largest weight norm — the
//! structured cut that gives a narrower student (fewer heads, smaller FFN; Michel et al.
//! 2019 prune heads, TinyBERT and MiniLM distil into narrower students). The groups come
//! from the graph's coupling analysis (a head is its q/k/v rows and output-projection
//! columns; an FFN unit its up-projection row and bias and down-projection column) and are
//! cut by the materializer; a channel's score is the squared norm of all its weights.
//! Usually followed by distillation from the original.

use serde::{Deserialize, Serialize};

use super::{Declared, Pass, PassCtx, PassRecord};
use crate::coupling::{channel_sums, model_groups, prune_group, ChannelGroup};
use crate::error::{Error, Result};
use crate::graph::Op;
use crate::model::Model;
use crate::prune::channel::allocate::top;

/// The pass: heads per attention layer and hidden units per FFN to keep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Narrow {
    #[serde(default)]
    pub heads: Option<usize>,
    #[serde(default)]
    pub intermediate: Option<usize>,
}

impl Declared for Narrow {
    const HELP: &'static str = "narrow a transformer encoder: keep `heads` heads per attention \
        layer and `intermediate` FFN units (those of largest weight norm), cut through the \
        coupled groups";
    const EXAMPLE: &'static str = "heads = 8, intermediate = 1024";
    fn build(&self) -> Result<Box<dyn Pass>> {
        let (h, i) = (self.heads, self.intermediate);
        if h.is_none() && i.is_none() || h == Some(0) || i == Some(0) {
            return Err(Error::pass(
                PASS,
                "set `heads` and/or `intermediate`, each positive",
            ));
        }
        Ok(Box::new(self.clone()))
    }
}

const PASS: &str = "narrow";

/// What a group is: attention heads, or an FFN's hidden units.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Heads,
    Ffn,
}

fn kind(model: &Model, g: &ChannelGroup) -> Option<Kind> {
    let reads = |op: fn(&Op) -> bool| {
        g.sources
            .iter()
            .any(|s| model.graph.consumers(s).iter().any(|n| op(&n.op)))
    };
    if !g.prunable {
        None
    } else if reads(|o| matches!(o, Op::Attention(_))) {
        Some(Kind::Heads)
    } else if reads(|o| matches!(o, Op::Gelu | Op::Relu)) {
        Some(Kind::Ffn)
    } else {
        None
    }
}

/// Squared norm of every channel's weights over all members of `g`.
fn scores(model: &Model, g: &ChannelGroup) -> Result<Vec<f64>> {
    let mut s = vec![0.0; g.channels];
    for m in &g.members {
        let sq = model.params.get(&m.param)?.sqr()?;
        for (a, b) in s.iter_mut().zip(channel_sums(m, &sq, g.channels)?) {
            *a += b;
        }
    }
    Ok(s)
}

impl Pass for Narrow {
    fn name(&self) -> &'static str {
        PASS
    }

    fn apply(&self, mut model: Model, _ctx: &mut PassCtx) -> Result<(Model, PassRecord)> {
        if !model.graph.is_text() {
            return Err(Error::pass(
                PASS,
                "narrows transformer encoders (heads, FFN units)",
            ));
        }
        let target = |k: Kind| match k {
            Kind::Heads => self.heads,
            Kind::Ffn => self.intermediate,
        };
        let mut cuts = Vec::new();
        // one group at a time: a cut moves the offsets of the others, so re-derive them
        loop {
            let groups = model_groups(&model)?;
            let next = groups.iter().find_map(|g| {
                let k = kind(&model, g)?;
                let n = target(k)?;
                (g.channels > n).then_some((g, k, n))
            });
            let Some((g, k, n)) = next else { break };
            let keep = top(&scores(&model, g)?, n);
            cuts.push(serde_json::json!({ "sources": g.sources, "kind": format!("{k:?}"), "from": g.channels, "to": n }));
            let g = g.clone();
            prune_group(&mut model, &g, &keep)?;
        }
        if cuts.is_empty() {
            return Err(Error::pass(
                PASS,
                "nothing to narrow: every layer is already at or below the targets",
            ));
        }
        let label = format!(
            "{} groups narrowed to {} heads and {} FFN units",
            cuts.len(),
            self.heads.map_or("all".into(), |h| h.to_string()),
            self.intermediate.map_or("all".into(), |h| h.to_string())
        );
        super::done(
            model,
            self.name(),
            label,
            serde_json::json!({ "cuts": cuts }),
        )
    }
}
