//! Models and data that used to give a plausible number are refused with an error naming
//! the file and what is wrong: a graph whose output is an inner node, an unknown field in
//! an attribute-less op, a BatchNorm with a negative variance or an absurd `eps`, weights
//! too large for f32 products, an empty test set, an STS-B file too small to correlate;
//! and Hugging Face directories whose pooling, `max_seq_length` or tokenizer squeeze
//! cannot honour.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use squeeze::checkpoint;
use squeeze::data::ImageSet;
use squeeze::formats::{hf_bert, load_any};

mod common;
use common::{small, tmpdir};

/// A saved small vgg (it has BatchNorm layers) and its model.json as JSON.
fn saved(name: &str) -> (std::path::PathBuf, serde_json::Value) {
    let dir = tmpdir(name);
    checkpoint::save(&small("vgg"), &dir).unwrap();
    let text = std::fs::read_to_string(dir.join("model.json")).unwrap();
    (dir, serde_json::from_str(&text).unwrap())
}

fn with_graph(dir: &Path, v: &serde_json::Value) -> String {
    std::fs::write(dir.join("model.json"), v.to_string()).unwrap();
    checkpoint::load(dir)
        .expect_err("must be refused")
        .to_string()
}

fn node_of(v: &serde_json::Value, kind: &str) -> usize {
    v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .position(|n| n["op"]["type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} node"))
}

#[test]
fn broken_graphs_are_refused_by_name() {
    let (dir, v) = saved("refuse-graph");
    let mut w = v.clone();
    let inner = v["nodes"][node_of(&v, "relu")]["name"].clone();
    w["output"] = inner.clone();
    let e = with_graph(&dir, &w);
    assert!(
        e.contains("model.json")
            && e.contains(&format!("output is `{}`", inner.as_str().unwrap()))
            && e.contains("reads it"),
        "{e}"
    );
    let mut w = v.clone();
    w["nodes"][node_of(&v, "relu")]["op"]["foo"] = 1.into();
    let e = with_graph(&dir, &w);
    assert!(
        e.contains("unknown field `foo`") && e.contains("relu"),
        "{e}"
    );
    let mut w = v.clone();
    w["nodes"][node_of(&v, "batch_norm")]["op"]["eps"] = 1e19.into();
    let e = with_graph(&dir, &w);
    assert!(e.contains("`eps` must be in (0, 1]"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Rewrites one tensor of the saved weights with `f` applied to its values.
fn with_values(dir: &Path, suffix: &str, f: impl Fn(&mut Vec<f32>)) -> String {
    let w = dir.join("model.safetensors");
    let mut map: BTreeMap<String, Tensor> = checkpoint::load_tensors(&w).unwrap();
    let name = map.keys().find(|k| k.ends_with(suffix)).unwrap().clone();
    let t = &map[&name];
    let mut v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    f(&mut v);
    let dims = t.dims().to_vec();
    map.insert(name, Tensor::from_vec(v, dims, &Device::Cpu).unwrap());
    checkpoint::save_tensors(&w, &map).unwrap();
    checkpoint::load(dir)
        .expect_err("must be refused")
        .to_string()
}

#[test]
fn broken_values_are_refused_by_name() {
    let (dir, _) = saved("refuse-values");
    let orig = std::fs::read(dir.join("model.safetensors")).unwrap();
    let e = with_values(&dir, "running_var", |v| v[1] = -1.0);
    assert!(
        e.contains("running_var") && e.contains("negative variance"),
        "{e}"
    );
    std::fs::write(dir.join("model.safetensors"), &orig).unwrap();
    let e = with_values(&dir, "conv.weight", |v| v[0] = 3e38);
    assert!(e.contains("conv.weight") && e.contains("beyond"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn data_too_small_for_its_metric_is_refused() {
    let m = small("mlp");
    let empty = ImageSet {
        pixels: vec![],
        labels: vec![],
        rows: 28,
        cols: 28,
    };
    let e = squeeze::eval::accuracy(&m.graph, &m.params, &empty, 64)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no images"), "{e}");
    let dir = tmpdir("refuse-stsb");
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("one.csv");
    std::fs::write(&f, "g\tx\ty\t1\t3.0\tA man plays.\tA man is playing.\n").unwrap();
    let e = squeeze::text::stsb::read(&f).unwrap_err().to_string();
    assert!(e.contains("one.csv") && e.contains("at least 3"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn hf_directories_squeeze_cannot_honour_are_refused() {
    let dir = tmpdir("refuse-hf");
    let shape = squeeze::text::bert::BertShape {
        family: Default::default(),
        position_offset: 0,
        pooling: Default::default(),
        dropout: 0.0,
        normalize: true,
        ..common::bert_shape(8, &[2, 2])
    };
    let mut m = squeeze::text::bert::random(&shape, 3).unwrap();
    m.assets.insert(
        "tokenizer.json".into(),
        common::tokenizer::tokenizer_json(&["hello"]),
    );
    hf_bert::export(&m, &dir).unwrap();
    assert!(load_any(&dir).is_ok());
    let edit = |file: &str, f: &dyn Fn(&mut serde_json::Value)| -> String {
        let p = dir.join(file);
        let orig = std::fs::read_to_string(&p).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&orig).unwrap();
        f(&mut v);
        std::fs::write(&p, v.to_string()).unwrap();
        let e = load_any(&dir).map(|_| ()).unwrap_err().to_string();
        std::fs::write(&p, orig).unwrap();
        e
    };
    for mode in ["pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken"] {
        let e = edit("1_Pooling/config.json", &|v| v[mode] = true.into());
        assert!(e.contains("1_Pooling") && e.contains(mode), "{e}");
    }
    std::fs::write(
        dir.join("sentence_bert_config.json"),
        r#"{"max_seq_length": 0}"#,
    )
    .unwrap();
    let e = load_any(&dir).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("max_seq_length 0"), "{e}");
    std::fs::remove_file(dir.join("sentence_bert_config.json")).unwrap();
    let tok = dir.join("tokenizer.json");
    let bytes = std::fs::read(&tok).unwrap();
    std::fs::write(&tok, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_any(&dir).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("tokenizer.json"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
