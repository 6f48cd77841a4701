//! The run plan: what the interpreter works out about a graph once per graph and mode
//! (the shape of tract's `SimplePlan`), instead of on every forward — which nodes apply
//! their only reader themselves (each kind says what it absorbs:
//! [`crate::kinds::LayerKind::absorbs`]), which sibling nodes run as one product, which
//! int8 convolutions hand int8 codes straight to the next, in which slot each value lives
//! and after which step it is dropped (dropout, the identity at inference, is absorbed by
//! whatever precedes it; a residual sum by the Linear whose only reader it is, its other
//! input carried as [`Plan::residual`]; with a pack cache, which pairs of nodes run as
//! one job, [`Plan::chain`]). Plans are kept in the graph's
//! [`crate::graph::CacheSlot`] under the graph's fingerprint and the mode, so an edited
//! graph compiles a new one.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use crate::error::Result;
use crate::graph::Graph;
use crate::kinds::{Absorb, ForwardOpts};

/// What one step of the plan does with its node.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Runs the node through its kind, applying the readers it absorbs (in order).
    Run { absorbs: Vec<Absorb> },
    /// Runs the node with its siblings (node indices, this one first) as one product
    /// when the kind can; the siblings then take their values from it.
    Siblings { group: Vec<usize> },
    /// This node was absorbed by node `by`: its value is `by`'s output.
    Absorbed { by: usize },
}

/// A compiled graph: one step per node, where each value lives, and the values to drop
/// after each step. Values live in numbered slots: first the values the caller supplies
/// ([`Plan::externals`]), then one per node in graph order.
#[derive(Debug, Clone)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// Names of the values the graph reads but no node computes (the caller's inputs),
    /// slot = index.
    pub externals: Vec<String>,
    /// Per node, the slots of its inputs.
    pub inputs: Vec<Vec<usize>>,
    /// Slots whose last reader is step `i` (the output's is never dropped).
    pub drops: Vec<Vec<usize>>,
    /// Per node, whether a tap captures it.
    pub tapped: Vec<bool>,
    /// The slot of the graph's output, if anything computes it.
    pub output: Option<usize>,
    /// Per node, the slot of the residual it adds ([`Absorb::Residual`]).
    pub residual: Vec<Option<usize>>,
    /// Per step, the node that reads its output as int8 codes (inference: an int8
    /// convolution whose only reader is another; [`crate::kinds::LayerKind::hands_codes`]).
    pub hands: Vec<Option<usize>>,
    /// Per step, the node of the same kind it runs with as one job, if any ([`chains`]).
    pub chain: Vec<Option<usize>>,
}

/// The mode a plan is compiled for: what of the forward options changes the plan.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Mode {
    train: bool,
    packed: bool,
    taps: Vec<String>,
}

impl Mode {
    fn of(opts: &ForwardOpts) -> Self {
        let mut taps: Vec<String> = opts.taps.iter().cloned().collect();
        taps.sort();
        Mode {
            train: opts.train,
            packed: opts.packed.is_some(),
            taps,
        }
    }
}

/// The plan of `g` for `opts`, compiled on first use and kept with the graph.
pub fn plan_for(g: &Graph, opts: &ForwardOpts) -> Result<Arc<Plan>> {
    let mode = Mode::of(opts);
    let key = foldhash::fast::FixedState::with_seed(0x504c_414e).hash_one((g.fingerprint(), &mode));
    g.cache.get_or(key, || Ok(compile(g, &mode)))
}

/// Compiles the plan of `g` (every rule below reads only names, inputs and kinds).
fn compile(g: &Graph, mode: &Mode) -> Plan {
    let n = g.nodes.len();
    let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, node) in g.nodes.iter().enumerate() {
        for inp in &node.inputs {
            readers.entry(inp.as_str()).or_default().push(i);
        }
    }
    let taps: HashSet<&str> = mode.taps.iter().map(String::as_str).collect();
    // a node's value can go into its reader when nobody else sees it
    let free = |j: usize| {
        let name = g.nodes[j].name.as_str();
        !taps.contains(name) && g.output != name
    };
    let untapped = |j: usize| !taps.contains(g.nodes[j].name.as_str());
    let mut steps: Vec<Step> = (0..n).map(|_| Step::Run { absorbs: vec![] }).collect();
    // the node that computes each value (the caller's values have none)
    let producer: HashMap<&str, usize> = g
        .nodes
        .iter()
        .enumerate()
        .map(|(k, m)| (m.name.as_str(), k))
        .collect();
    // the residual input's name of each node that absorbs a residual sum
    let mut residual_of: Vec<Option<String>> = vec![None; n];
    // the node whose value is each step's output (the last one it absorbed)
    let mut tails: Vec<usize> = (0..n).collect();
    for i in 0..n {
        if !matches!(steps[i], Step::Run { .. }) {
            continue;
        }
        let def = g.nodes[i].op.def();
        let (mut tail, mut absorbs) = (i, Vec::new());
        loop {
            let only = match readers.get(g.nodes[tail].name.as_str()).map(Vec::as_slice) {
                Some(&[j]) if free(tail) && untapped(j) => j,
                _ => break,
            };
            let Some(what) = g.nodes[only].op.def().as_absorbed() else {
                break;
            };
            let ins = &g.nodes[only].inputs;
            if what == Absorb::Identity {
                if mode.train || ins.len() != 1 {
                    break;
                }
                steps[only] = Step::Absorbed { by: i };
                tail = only;
                continue;
            }
            // a residual sum: its other input, which must be ready before node i runs
            let residual = match what {
                Absorb::Residual => match ins.iter().position(|v| *v != g.nodes[tail].name) {
                    Some(o) if ins.len() == 2 && ins[1 - o] == g.nodes[tail].name => {
                        let ready = producer.get(ins[o].as_str()).is_none_or(|&k| k < i);
                        ready.then(|| ins[o].clone())
                    }
                    _ => None,
                },
                _ => None,
            };
            let fits = match what {
                Absorb::Residual => residual.is_some(),
                _ => ins.len() == 1,
            };
            if !fits || !def.absorbs(what, &absorbs, mode.train) {
                break;
            }
            if residual.is_some() {
                residual_of[i] = residual;
            }
            absorbs.push(what);
            steps[only] = Step::Absorbed { by: i };
            tail = only;
        }
        steps[i] = Step::Run { absorbs };
        tails[i] = tail;
    }
    if !mode.train {
        for group in g.sibling_groups() {
            let all_plain = group.iter().all(|&j| {
                !taps.contains(g.nodes[j].name.as_str())
                    && matches!(&steps[j], Step::Run { absorbs } if absorbs.is_empty())
            });
            if all_plain {
                let first = group[0];
                steps[first] = Step::Siblings { group };
            }
        }
    }
    // int8 codes from one integer convolution into the next: the only reader, unseen by
    // taps, running alone
    let hands = (0..n)
        .map(|i| {
            let tail = tails[i];
            let run = |k: usize| matches!(steps[k], Step::Run { .. });
            let j = match readers.get(g.nodes[tail].name.as_str()).map(Vec::as_slice) {
                Some(&[j]) if free(tail) && untapped(j) && g.nodes[j].inputs.len() == 1 => j,
                _ => return None,
            };
            let ok = !mode.train
                && std::env::var_os("SQUEEZE_NO_HANDOFF").is_none()
                && run(i)
                && run(j)
                && g.nodes[i].op.def().hands_codes()
                && g.nodes[j].op.def().takes_codes();
            ok.then_some(j)
        })
        .collect();
    let chain = match mode.train || !mode.packed {
        true => vec![None; n],
        false => chains(
            g,
            &steps,
            &tails,
            &readers,
            (&residual_of, &producer),
            &free,
        ),
    };
    // slots: the caller's values first, then one per node
    let mut slot: HashMap<&str, usize> = HashMap::new();
    let mut externals = Vec::new();
    for node in &g.nodes {
        for inp in &node.inputs {
            if !producer.contains_key(inp.as_str()) && !slot.contains_key(inp.as_str()) {
                slot.insert(inp.as_str(), externals.len());
                externals.push(inp.clone());
            }
        }
    }
    let base = externals.len();
    for (i, node) in g.nodes.iter().enumerate() {
        slot.insert(node.name.as_str(), base + i);
    }
    let inputs: Vec<Vec<usize>> = g
        .nodes
        .iter()
        .map(|node| node.inputs.iter().map(|v| slot[v.as_str()]).collect())
        .collect();
    let output = slot.get(g.output.as_str()).copied();
    let mut last: HashMap<usize, usize> = HashMap::new();
    for (i, ins) in inputs.iter().enumerate() {
        for &v in ins {
            last.insert(v, i);
        }
    }
    let mut drops = vec![Vec::new(); n];
    for (v, i) in last {
        if Some(v) != output {
            drops[i].push(v);
        }
    }
    let residual = residual_of
        .iter()
        .map(|r| r.as_deref().map(|v| slot[v]))
        .collect();
    let tapped = g
        .nodes
        .iter()
        .map(|node| taps.contains(node.name.as_str()))
        .collect();
    Plan {
        steps,
        externals,
        inputs,
        drops,
        tapped,
        output,
        residual,
        hands,
        chain,
    }
}

/// Pairs of nodes that run as one job at inference with a pack cache
/// ([`crate::kinds::LayerKind::forward_chain`]): node i of a kind that chains, applying
/// at most a GELU (and dropouts), whose only reader is node j of the same kind applying
/// at most a residual sum that is ready before i runs; neither in a sibling group nor in
/// another pair, nothing between them tapped. Whether the pair does run as one (the
/// widths) is the kind's call at run time: the plan reads no attribute.
fn chains(
    g: &Graph,
    steps: &[Step],
    tails: &[usize],
    readers: &HashMap<&str, Vec<usize>>,
    (residual_of, producer): (&[Option<String>], &HashMap<&str, usize>),
    free: &dyn Fn(usize) -> bool,
) -> Vec<Option<usize>> {
    let n = g.nodes.len();
    let mut grouped = vec![false; n];
    for s in steps {
        if let Step::Siblings { group } = s {
            group.iter().for_each(|&j| grouped[j] = true);
        }
    }
    let runs = |k: usize, allowed: &[Absorb]| match &steps[k] {
        Step::Run { absorbs } => !grouped[k] && absorbs.iter().all(|a| allowed.contains(a)),
        _ => false,
    };
    let mut chain = vec![None; n];
    let mut taken = vec![false; n];
    for i in 0..n {
        if taken[i] || !g.nodes[i].op.def().chains() || !runs(i, &[Absorb::Gelu]) {
            continue;
        }
        let tail = tails[i];
        let j = match readers.get(g.nodes[tail].name.as_str()).map(Vec::as_slice) {
            Some(&[j]) if free(tail) && free(j) => j,
            _ => continue,
        };
        let ready = residual_of[j]
            .as_deref()
            .is_none_or(|r| producer.get(r).is_none_or(|&k| k < i));
        let same = g.nodes[j].op.kind() == g.nodes[i].op.kind();
        if same && g.nodes[j].inputs.len() == 1 && runs(j, &[Absorb::Residual]) && ready {
            chain[i] = Some(j);
            (taken[i], taken[j]) = (true, true);
        }
    }
    chain
}
