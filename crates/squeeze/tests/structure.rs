//! Structured cuts of transformer encoders derived from the graph: attention heads are
//! coupled-channel groups (q/k/v rows and the output projection's columns of a head,
//! `heads` updated when cut), and whole encoder layers drop with consistent renumbering
//! and HF export — on a 2-layer BERT with uneven heads.

use candle_core::{Device, Tensor};
use squeeze::coupling::{channel_groups, prune_group, ChannelGroup, MemberRole};
use squeeze::formats::hf_bert;
use squeeze::graph::Op;
use squeeze::interp::{forward_tokens, ForwardOpts};
use squeeze::passes::{run_recipe, Recipe};
use squeeze::text::bert::{self, BertShape};
use squeeze::Model;

mod common;
use common::max_abs;

/// Max abs change of an embedding when a cut removes only what contributes nothing.
const CUT_TOL: f32 = 1e-5;

fn shape(heads: [usize; 2]) -> BertShape {
    common::bert_shape(12, &heads)
}

fn ids_mask() -> (Tensor, Tensor) {
    let seqs: [&[u32]; 2] = [&[2, 5, 9, 3], &[2, 7, 3]];
    squeeze::text::pad_batch(&seqs).unwrap()
}

fn embed(m: &Model) -> Tensor {
    let (ids, mask) = ids_mask();
    forward_tokens(&m.graph, &m.params, &ids, &mask, &ForwardOpts::eval())
        .unwrap()
        .output
}

fn heads_of(m: &Model, layer: usize) -> usize {
    match &m
        .graph
        .node(&format!("encoder.layer.{layer}.attention.core"))
        .unwrap()
        .op
    {
        Op::Attention(a) => a.heads,
        _ => unreachable!(),
    }
}

/// The coupled group of encoder layer `layer`'s heads.
fn head_group(groups: &[ChannelGroup], layer: usize) -> &ChannelGroup {
    let q = format!("encoder.layer.{layer}.attention.self.query");
    groups.iter().find(|g| g.sources.contains(&q)).unwrap()
}

#[test]
fn a_head_is_a_group_and_cutting_a_silent_head_changes_nothing() {
    let mut m = bert::random(&shape([3, 2]), 5).unwrap();
    let groups = channel_groups(&m.graph).unwrap();
    let g = head_group(&groups, 0);
    assert!(g.prunable, "{:?}", g.pinned_because);
    assert_eq!(g.channels, 3, "layer 0 has 3 heads");
    for p in ["query", "key", "value"] {
        let w = format!("encoder.layer.0.attention.self.{p}.weight");
        assert!(g
            .members
            .iter()
            .any(|x| x.param == w && x.axis == 0 && x.per_channel == 4));
    }
    let o = "encoder.layer.0.attention.output.dense.weight";
    assert!(g.members.iter().any(|x| x.param == o
        && x.axis == 1
        && x.per_channel == 4
        && x.role == MemberRole::Consumer));
    // silence head 1 (its columns of the output projection), then cut it
    let w = m.params.get(o).unwrap();
    let mut v: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
    let cols = w.dim(1).unwrap();
    for r in 0..w.dim(0).unwrap() {
        v[r * cols + 4..r * cols + 8].fill(0.0);
    }
    m.params
        .insert(o, Tensor::from_vec(v, w.dims(), &Device::Cpu).unwrap());
    let before = embed(&m);
    prune_group(&mut m, g, &[0, 2]).unwrap();
    assert_eq!(heads_of(&m, 0), 2);
    assert_eq!(bert::layer_shapes(&m.graph)[0].heads, 2);
    let d = max_abs(&before, &embed(&m));
    assert!(d < CUT_TOL, "cutting a silent head moved embeddings by {d}");
}

#[test]
fn head_pruned_models_export_to_hf_and_back() {
    let mut m = bert::random(&shape([3, 3]), 6).unwrap();
    let groups = channel_groups(&m.graph).unwrap();
    let g = head_group(&groups, 1).clone();
    prune_group(&mut m, &g, &[1]).unwrap();
    let dir = common::tmpdir("heads-hf");
    hf_bert::export(&m, &dir).unwrap();
    let back = hf_bert::import(&dir).unwrap();
    assert_eq!(heads_of(&back, 1), 1);
    assert!(max_abs(&embed(&m), &embed(&back)) < CUT_TOL);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn dropping_the_last_layer_leaves_the_first_layers_pooled_output() {
    let mut m = bert::random(&shape([2, 2]), 7).unwrap();
    let (ids, mask) = ids_mask();
    let tap = "encoder.layer.0.output.LayerNorm";
    let opts = ForwardOpts {
        taps: [tap.to_string()].into_iter().collect(),
        ..ForwardOpts::eval()
    };
    let out = forward_tokens(&m.graph, &m.params, &ids, &mask, &opts).unwrap();
    let h = &out.taps[tap].output;
    let want = pooled(h, &mask);
    bert::drop_layers(&mut m, &[1]).unwrap();
    assert_eq!(bert::layer_shapes(&m.graph).len(), 1);
    assert!(max_abs(&embed(&m), &want) < CUT_TOL);
}

#[test]
fn dropping_the_first_layer_renumbers_the_rest_and_exports() {
    let orig = bert::random(&shape([2, 2]), 8).unwrap();
    let r = Recipe::parse(
        "[[passes]]\ntype = \"drop_layers\"\nlayers = [0]\n",
        std::path::Path::new("drop.toml"),
    )
    .unwrap();
    let mut ctx = r.context(
        std::path::Path::new("/unused"),
        std::path::Path::new("/unused"),
    );
    let (m, log) = run_recipe(orig.clone(), &r, &mut ctx).unwrap();
    assert!(log[0].label.contains("2 → 1"), "{}", log[0].label);
    assert!(m
        .graph
        .nodes
        .iter()
        .all(|n| !n.name.starts_with("encoder.layer.1.")));
    let a = orig
        .params
        .get("encoder.layer.1.output.dense.weight")
        .unwrap();
    assert_eq!(
        max_abs(
            a,
            m.params.get("encoder.layer.0.output.dense.weight").unwrap()
        ),
        0.0
    );
    let dir = common::tmpdir("drop-hf");
    hf_bert::export(&m, &dir).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["num_hidden_layers"], 1);
    let back = hf_bert::import(&dir).unwrap();
    assert!(max_abs(&embed(&m), &embed(&back)) < CUT_TOL);
    let _ = std::fs::remove_dir_all(dir);
    // refusals: every layer, or one that does not exist
    let mut x = orig.clone();
    assert!(bert::drop_layers(&mut x, &[0, 1])
        .unwrap_err()
        .to_string()
        .contains("no encoder"));
    assert!(bert::drop_layers(&mut x, &[5])
        .unwrap_err()
        .to_string()
        .contains("layers 0..2"));
}

#[test]
fn a_channel_gather_maps_cuts_through_its_index() {
    use squeeze::coupling::model_groups;
    use squeeze::graph::Graph;
    use squeeze::kinds::{gather::ChannelGather, linear::Linear};
    let lin = |i, o| {
        Op::Linear(Linear {
            in_features: i,
            out_features: o,
            bias: true,
            quant: None,
        })
    };
    let mut g = Graph::new("gather", &[3]);
    g.push("fc1", lin(3, 6), &["input"]);
    g.push(
        "pick",
        Op::ChannelGather(ChannelGather { channels: 4 }),
        &["fc1"],
    );
    g.push("fc2", lin(4, 2), &["pick"]);
    let mut p = squeeze::params::ParamStore::new();
    let v = |n: usize, s: u64| -> Vec<f32> {
        common::lcg(s)
            .take(n)
            .map(|x| (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
            .collect()
    };
    let mut w1 = v(18, 1);
    let mut b1 = v(6, 2);
    w1[..3].fill(0.0); // channel 0 of fc1 is always 0
    b1[0] = 0.0;
    let t = |d: Vec<f32>, s: &[usize]| Tensor::from_vec(d, s, &Device::Cpu).unwrap();
    p.insert("fc1.weight", t(w1, &[6, 3]));
    p.insert("fc1.bias", t(b1, &[6]));
    p.insert(
        "pick.index",
        Tensor::from_vec(vec![5u32, 0, 0, 3], 4, &Device::Cpu).unwrap(),
    );
    p.insert("fc2.weight", t(v(8, 3), &[2, 4]));
    p.insert("fc2.bias", t(v(2, 4), &[2]));
    let mut m = Model::new(g, p);
    m.check().unwrap();
    // from the graph alone the gather's index is unknown: fc1's channels are pinned
    let blind = channel_groups(&m.graph).unwrap();
    assert!(blind
        .iter()
        .filter(|g| g.sources == ["fc1"])
        .all(|g| !g.prunable));
    let groups = model_groups(&m).unwrap();
    let grp = groups.iter().find(|g| g.sources == ["fc1"]).unwrap();
    assert!(grp.prunable && grp.channels == 6);
    let x = Tensor::from_vec(v(6, 9), (2, 3), &Device::Cpu).unwrap();
    let before = squeeze::interp::predict(&m.graph, &m.params, &x).unwrap();
    // cut channel 0 (read at positions 1 and 2) and channel 1 (read nowhere)
    prune_group(&mut m, grp, &[2, 3, 4, 5]).unwrap();
    let idx: Vec<u32> = m.params.get("pick.index").unwrap().to_vec1().unwrap();
    assert_eq!(idx, vec![3, 1], "5 → 3, 3 → 1 among the kept channels");
    assert_eq!(m.params.get("fc2.weight").unwrap().dims(), &[2, 2]);
    let after = squeeze::interp::predict(&m.graph, &m.params, &x).unwrap();
    assert!(max_abs(&before, &after) < CUT_TOL);
    // cutting every channel the gather reads would leave it empty: refused, model intact
    let groups = model_groups(&m).unwrap();
    let grp = groups.iter().find(|g| g.sources == ["fc1"]).unwrap();
    let e = prune_group(&mut m, grp, &[0, 2]).unwrap_err().to_string();
    assert!(e.contains("pick.index") && e.contains("empty"), "{e}");
    m.check().unwrap();
}

/// Sentence-transformers pooling, written out: the mean of the hidden states `[N, L, D]`
/// over the unmasked tokens, divided by its L2 norm.
fn pooled(h: &Tensor, mask: &Tensor) -> Tensor {
    let m = mask.unsqueeze(2).unwrap().to_dtype(h.dtype()).unwrap(); // [N, L, 1]
    let sum = h.broadcast_mul(&m).unwrap().sum(1).unwrap(); // [N, D]
    let mean = sum.broadcast_div(&m.sum(1).unwrap()).unwrap();
    let norm = mean.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap();
    mean.broadcast_div(&norm).unwrap()
}
