//! Coupled-channel groups on every zoo architecture: the expected groups exist, and
//! removing a channel whose producers and norms were zeroed leaves the logits unchanged.

use candle_core::{Device, Tensor};
use squeeze::coupling::{channel_groups, prune_group, ChannelGroup, MemberRole};
use squeeze::interp::predict;
use squeeze::Model;

mod common;
use common::small as model;

/// Max abs logit change from removing an all-zero channel (f32 reassociation only).
const PRUNE_TOL: f32 = 1e-5;

fn group_of<'a>(gs: &'a [ChannelGroup], source: &str) -> &'a ChannelGroup {
    gs.iter()
        .find(|g| g.sources.iter().any(|s| s == source))
        .unwrap_or_else(|| panic!("no group for {source}"))
}

/// Zeroes channel `c` in every producer and norm member of the group.
fn zero_channel(m: &mut Model, g: &ChannelGroup, c: usize) {
    for mem in g.members.iter().filter(|m| m.role != MemberRole::Consumer) {
        if mem.param.ends_with("running_mean") || mem.param.ends_with("running_var") {
            continue;
        }
        let t = m.params.get(&mem.param).unwrap();
        let mut mask = vec![1f32; t.dim(mem.axis).unwrap()];
        for i in 0..mem.per_channel {
            mask[mem.offset + c * mem.per_channel + i] = 0.0;
        }
        let mut shape = vec![1; t.rank()];
        shape[mem.axis] = mask.len();
        let mask = Tensor::from_vec(mask, shape, &Device::Cpu).unwrap();
        let z = t.broadcast_mul(&mask).unwrap();
        m.params.insert(mem.param.clone(), z);
    }
}

/// For every prunable group: zero one channel, then remove it; logits must not move.
fn check_prune_invariance(arch: &str) -> usize {
    let base = model(arch);
    let x = common::batch(2, 5);
    let groups = channel_groups(&base.graph).unwrap();
    let mut n = 0;
    for (gi, g) in groups.iter().enumerate().filter(|(_, g)| g.prunable) {
        let c = g.channels / 2;
        let mut m = base.clone();
        zero_channel(&mut m, g, c);
        let before = predict(&m.graph, &m.params, &x).unwrap();
        let keep: Vec<usize> = (0..g.channels).filter(|&i| i != c).collect();
        prune_group(&mut m, g, &keep).unwrap();
        let after = predict(&m.graph, &m.params, &x).unwrap();
        let d = common::max_abs(&before, &after);
        assert!(
            d < PRUNE_TOL,
            "{arch} group {gi} ({:?}): logits moved by {d}",
            g.sources
        );
        let g2 = channel_groups(&m.graph).unwrap();
        assert_eq!(group_of(&g2, &g.sources[0]).channels, g.channels - 1);
        n += 1;
    }
    n
}

#[test]
fn mlp_groups_are_hidden_layers_and_output_is_pinned() {
    let gs = channel_groups(&model("mlp").graph).unwrap();
    let fc1 = group_of(&gs, "fc1");
    assert!(fc1.prunable && fc1.channels == 300);
    assert!(fc1
        .members
        .iter()
        .any(|m| m.param == "fc2.weight" && m.axis == 1 && m.role == MemberRole::Consumer));
    assert!(!group_of(&gs, "fc3").prunable);
    assert_eq!(check_prune_invariance("mlp"), 2);
}

#[test]
fn lenet5_flatten_multiplies_channel_indices_by_spatial_size() {
    let gs = channel_groups(&model("lenet5").graph).unwrap();
    let c2 = group_of(&gs, "conv2");
    let fc = c2.members.iter().find(|m| m.param == "fc1.weight").unwrap();
    assert_eq!((fc.axis, fc.offset, fc.per_channel), (1, 0, 16));
    assert_eq!(check_prune_invariance("lenet5"), 3);
}

#[test]
fn vgg_groups_carry_the_batchnorm() {
    let gs = channel_groups(&model("vgg").graph).unwrap();
    let g = group_of(&gs, "features.0.conv");
    let bn: Vec<_> = g
        .members
        .iter()
        .filter(|m| m.role == MemberRole::Norm)
        .map(|m| m.param.as_str())
        .collect();
    assert_eq!(bn.len(), 4, "{bn:?}");
    assert_eq!(check_prune_invariance("vgg"), 3);
}

#[test]
fn resnet_residual_adds_unite_every_branch_of_a_stage() {
    let gs = channel_groups(&model("resnet").graph).unwrap();
    let stem = group_of(&gs, "stem.conv");
    // stage 1: stem + both blocks' second convs add into one channel space
    for s in ["layer1.0.b.conv", "layer1.1.b.conv"] {
        assert!(
            stem.sources.iter().any(|x| x == s),
            "{s} not coupled to the stem: {:?}",
            stem.sources
        );
    }
    let st2 = group_of(&gs, "layer2.0.down.conv");
    assert!(st2.sources.iter().any(|x| x == "layer2.1.b.conv"));
    // the last stage reaches the classifier through global pooling: fc's columns are cut too
    assert!(
        st2.prunable
            && st2
                .members
                .iter()
                .any(|m| m.param == "fc.weight" && m.per_channel == 1)
    );
    assert!(check_prune_invariance("resnet") >= 4);
}

#[test]
fn densenet_concat_offsets_reach_every_later_layer() {
    let gs = channel_groups(&model("densenet").graph).unwrap();
    let stem = group_of(&gs, "stem");
    // stem channels sit at offset 0 of block1.0.bn, block1.1.bn and trans1.conv's input
    for p in [
        "block1.0.bn.weight",
        "block1.1.bn.weight",
        "trans1.bn.weight",
    ] {
        assert!(
            stem.members.iter().any(|m| m.param == p && m.offset == 0),
            "{p}"
        );
    }
    let l0 = group_of(&gs, "block1.0.conv");
    let m = l0
        .members
        .iter()
        .find(|m| m.param == "block1.1.conv.weight")
        .unwrap();
    assert_eq!(
        (m.axis, m.offset),
        (1, 8),
        "growth 4 after an 8-channel stem"
    );
    assert!(check_prune_invariance("densenet") >= 6);
}
