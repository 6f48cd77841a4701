//! Native checkpoints: a directory holding `model.json` (the [`Graph`], typed, versioned,
//! unknown fields rejected) and `model.safetensors` (the [`ParamStore`]), plus, for text
//! encoders, the tokenizer files carried verbatim ([`TEXT_ASSETS`]). Loading asserts
//! every tensor's shape and names the offending file or tensor; saving writes temporary
//! files and renames them, so an interrupted save never leaves a half-written model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

mod read;
pub use read::load_tensors;

use crate::error::{Error, Result};
use crate::graph::{tensor_specs, Graph, FORMAT_VERSION};
pub use crate::model::Model;
use crate::params::ParamStore;
use crate::tensor::TensorInfo;

pub const GRAPH_FILE: &str = "model.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// Files a text encoder carries beside its weights, copied verbatim on save and export.
pub const TEXT_ASSETS: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "sentence_bert_config.json",
];

/// Writes `bytes` to `path` through a temporary sibling file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{}.tmp", std::process::id()));
    PathBuf::from(s)
}

/// Saves tensors as safetensors at `path`, atomically.
pub fn save_tensors(path: &Path, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    let tmp = tmp_path(path);
    // the safetensors writer creates its file private (0600); an ordinary file gets 0666
    // less the umask, which the finished file is given
    std::fs::write(&tmp, []).map_err(|e| Error::io(&tmp, e))?;
    let usual = std::fs::metadata(&tmp)
        .map_err(|e| Error::io(&tmp, e))?
        .permissions();
    let map: std::collections::HashMap<String, Tensor> = tensors.clone().into_iter().collect();
    candle_core::safetensors::save(&map, &tmp)
        .map_err(|e| Error::file(&tmp, format!("cannot write safetensors: {e}")))?;
    std::fs::set_permissions(&tmp, usual).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Saves `model` into directory `dir` (created if needed).
pub fn save(model: &Model, dir: &Path) -> Result<()> {
    model.check()?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    save_tensors(&dir.join(WEIGHTS_FILE), &encoded(model)?)?;
    for (name, bytes) in &model.assets {
        write_atomic(&dir.join(name), bytes)?;
    }
    let json = serde_json::to_vec_pretty(&with_tensor_table(&model.graph))
        .map_err(|e| Error::Graph(format!("cannot serialize graph: {e}")))?;
    write_atomic(&dir.join(GRAPH_FILE), &json)
}

/// The tensors as the weights file holds them: those with a codec encoded into bytes.
fn encoded(model: &Model) -> Result<BTreeMap<String, Tensor>> {
    let mut map = model.params.map().clone();
    for (name, codec) in &model.graph.codecs {
        let t = model.params.get(name)?;
        let v = crate::params::f32_values(t)?;
        let blob = codec
            .encode(&v)
            .map_err(|e| Error::Graph(format!("tensor `{name}`: {e}")))?;
        let n = blob.len();
        map.insert(name.clone(), Tensor::from_vec(blob, n, &Device::Cpu)?);
    }
    Ok(map)
}

/// Decodes the tensors that `graph` stores with a codec (errors name `path` and the
/// tensor).
fn decoded(graph: &Graph, mut map: BTreeMap<String, Tensor>, path: &Path) -> Result<ParamStore> {
    let specs = tensor_specs(graph);
    for (name, codec) in &graph.codecs {
        let err = |m: String| Error::file(path, format!("tensor `{name}`: {m}"));
        let blob = map
            .get(name)
            .ok_or_else(|| err("missing (the graph stores it with a codec)".into()))?;
        if blob.dtype() != candle_core::DType::U8 || blob.rank() != 1 {
            return Err(err(format!(
                "a coded tensor must be 1-D u8 bytes, found {:?} {:?}",
                blob.dtype(),
                blob.dims()
            )));
        }
        let shape = specs
            .get(name)
            .map(|s| s.logical.clone())
            .ok_or_else(|| err("belongs to no node".into()))?;
        let bytes: Vec<u8> = blob.to_vec1()?;
        let v = codec
            .decode(&bytes, shape.iter().product())
            .map_err(|e| err(e.to_string()))?;
        map.insert(
            name.clone(),
            Tensor::from_vec(v, shape.as_slice(), &Device::Cpu)?,
        );
    }
    Ok(ParamStore::from_map(map))
}

/// Reads and validates only the graph of a checkpoint directory.
pub fn load_graph(dir: &Path) -> Result<Graph> {
    let path = dir.join(GRAPH_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let graph: Graph = serde_json::from_str(&text)
        .map_err(|e| Error::file(&path, format!("invalid model description: {e}")))?;
    check_op_fields(&graph, &text).map_err(|m| Error::file(&path, m))?;
    graph
        .validate()
        .map_err(|e| Error::file(&path, e.to_string()))?;
    check_tensor_table(&graph).map_err(|m| Error::file(&path, m))?;
    Ok(Graph {
        format_version: FORMAT_VERSION,
        tensors: BTreeMap::new(),
        ..graph
    })
}

/// Serde's tagged enums let a kind without attributes (`{"type": "relu", "foo": 1}`)
/// ignore other fields; every field of a node's `op` must be one its kind reads back.
fn check_op_fields(g: &Graph, text: &str) -> std::result::Result<(), String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let Some(nodes) = v.get("nodes").and_then(|n| n.as_array()) else {
        return Ok(());
    };
    for (node, raw) in g.nodes.iter().zip(nodes) {
        let (Some(raw), Ok(serde_json::Value::Object(kept))) = (
            raw.get("op").and_then(|o| o.as_object()),
            serde_json::to_value(&node.op),
        ) else {
            continue;
        };
        if let Some(k) = raw.keys().find(|k| !kept.contains_key(*k)) {
            return Err(format!(
                "node `{}`: unknown field `{k}` in its `{}` op (it has {})",
                node.name,
                node.op.kind(),
                match kept.len() {
                    1 => "no fields besides `type`".to_string(),
                    _ => format!(
                        "only {}",
                        kept.keys()
                            .map(|k| format!("`{k}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                }
            ));
        }
    }
    Ok(())
}

/// The graph as written to disk: current format, with every tensor's dtype, role and
/// shape recorded.
fn with_tensor_table(g: &Graph) -> Graph {
    let tensors = tensor_specs(g)
        .iter()
        .map(|(k, s)| (k.clone(), TensorInfo::from(s)))
        .collect();
    Graph {
        format_version: FORMAT_VERSION,
        tensors,
        ..g.clone()
    }
}

/// A format-2 file's tensor table must be what its nodes and masks imply (it is the
/// record a reader without squeeze relies on); version-1 files have none, and a
/// hand-written file may leave it out (the weights are still checked against the graph).
fn check_tensor_table(g: &Graph) -> std::result::Result<(), String> {
    if g.format_version < 2 || g.tensors.is_empty() {
        return Ok(());
    }
    let expected = with_tensor_table(g).tensors;
    for (name, info) in &expected {
        match g.tensors.get(name) {
            Some(found) if found == info => {}
            Some(found) => {
                return Err(format!(
                    "tensor table: `{name}` is recorded as {found:?}, the graph needs {info:?}"
                ))
            }
            None => return Err(format!("tensor table: `{name}` is missing")),
        }
    }
    if let Some(extra) = g.tensors.keys().find(|k| !expected.contains_key(*k)) {
        return Err(format!("tensor table: `{extra}` belongs to no node"));
    }
    Ok(())
}

/// Loads a checkpoint directory, asserting every tensor's shape against the graph.
pub fn load(dir: &Path) -> Result<Model> {
    let graph = load_graph(dir)?;
    let wpath = dir.join(WEIGHTS_FILE);
    let params = decoded(&graph, load_tensors(&wpath)?, &wpath)?;
    graph
        .check_params(&params)
        .map_err(|e| Error::file(&wpath, e.to_string()))?;
    let assets = read_assets(dir)?;
    Ok(Model {
        graph,
        params,
        assets,
    })
}

/// Reads whichever of [`TEXT_ASSETS`] exist in `dir`.
pub fn read_assets(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    for name in TEXT_ASSETS {
        let p = dir.join(name);
        if p.is_file() {
            out.insert(
                name.to_string(),
                std::fs::read(&p).map_err(|e| Error::io(&p, e))?,
            );
        }
    }
    Ok(out)
}

/// Total bytes of the model's description and weights on disk (a native checkpoint's
/// `model.json` + `model.safetensors`, or a HF directory's `config.json` +
/// `model.safetensors`; tokenizer files are not counted).
pub fn size_on_disk(dir: &Path) -> Result<u64> {
    let mut n = 0;
    let desc = if dir.join(GRAPH_FILE).exists() {
        GRAPH_FILE
    } else {
        "config.json"
    };
    for f in [desc, WEIGHTS_FILE] {
        let p = dir.join(f);
        n += std::fs::metadata(&p).map_err(|e| Error::io(&p, e))?.len();
    }
    Ok(n)
}
