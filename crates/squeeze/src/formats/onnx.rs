//! ONNX export: a squeeze model as one `.onnx` file that ONNX Runtime and tract run. The
//! graph's nodes are written in order, each by its own kind (`LayerKind::onnx`); this
//! module adds the graph's inputs and output. Image models read `input` `[batch, C, H, W]`
//! (f32) and give `logits`; text encoders read `input_ids`, `attention_mask` (int64,
//! `[batch, sequence]`, both axes dynamic) and, where the model has a segment table,
//! `token_type_ids`, and give `sentence_embedding` — the inputs and output of
//! sentence-transformers' own ONNX export. A layer ONNX cannot express is refused with its
//! name before anything is written; where the file is not exactly our model (ONNX
//! Runtime's per-tensor dynamic int8 inputs, a weight written dense), [`Exported::notes`]
//! says so, layer by layer.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::graph::{infer_shapes, inputs_of, Graph, Lookup, INPUT, MASK};
use crate::model::Model;
use crate::onnx::proto::{self, data_type, Dimension, ModelProto, TensorShapeProto};
use crate::onnx::{self, Emit, Lower, TokenInputs, MS_DOMAIN, OPSET};

/// The output's name in an image model's file.
pub const LOGITS: &str = "logits";
/// The output's name in a text encoder's file.
pub const EMBEDDING: &str = "sentence_embedding";

/// A written model: the file's bytes and where it differs from ours.
#[derive(Debug)]
pub struct Exported {
    pub bytes: Vec<u8>,
    /// Per layer, what the file does differently (empty: the same computation).
    pub notes: Vec<String>,
    /// The graph's input names, in order.
    pub inputs: Vec<String>,
    /// The graph's output name.
    pub output: String,
}

/// The ONNX file of `model` at operator-set version `opset` (only [`OPSET`] is written).
pub fn export(model: &Model, opset: i64) -> Result<Exported> {
    if opset != OPSET {
        return Err(Error::Graph(format!(
            "ONNX opset {opset} is not supported: the writer writes opset {OPSET} only"
        )));
    }
    let g = &model.graph;
    let shapes = infer_shapes(g)?;
    let mut emit = Emit::default();
    let (inputs, tokens) = graph_inputs(g);
    let mut names: HashMap<String, String> = HashMap::new();
    names.insert(INPUT.into(), inputs[0].name.clone());
    if let Some(t) = &tokens {
        let mask = emit.op(
            "Cast",
            &["attention_mask"],
            "attention_mask_f32",
            vec![onnx::int("to", 1)],
        );
        names.insert(INPUT.into(), t.ids.clone());
        names.insert(MASK.into(), mask);
    }
    for node in &g.nodes {
        let ins = node.inputs.iter().map(|i| names[i].clone()).collect();
        let in_shapes = inputs_of(node, &shapes)?
            .iter()
            .map(|s| s.to_vec())
            .collect();
        let mut cx = Lower::new(
            &mut emit,
            &node.name,
            (ins, in_shapes),
            tokens.as_ref(),
            &model.params,
        );
        let out = node.op.def().onnx(&mut cx).map_err(|e| Error::Node {
            node: node.name.clone(),
            kind: node.op.kind(),
            cause: Box::new(e),
        })?;
        names.insert(node.name.clone(), out);
    }
    let output = if g.is_text() { EMBEDDING } else { LOGITS };
    let last = names[&g.output].clone();
    emit.op("Identity", &[&last], output, vec![]);
    let width = shapes[&g.output].iter().product::<usize>();
    let out_info = value_info(output, data_type::FLOAT, &[Axis::Batch, Axis::Fixed(width)]);
    Ok(Exported {
        inputs: inputs.iter().map(|i| i.name.clone()).collect(),
        output: output.into(),
        bytes: onnx::encode(&model_proto(
            g,
            emit.nodes,
            emit.inits,
            (inputs, out_info),
            emit.uses_ms,
        )),
        notes: onnx::grouped(&emit.notes),
    })
}

/// One axis of a graph input or output.
enum Axis {
    Batch,
    Sequence,
    Fixed(usize),
}

fn value_info(name: &str, elem_type: i32, axes: &[Axis]) -> proto::ValueInfoProto {
    let dim = axes
        .iter()
        .map(|a| match a {
            Axis::Batch => Dimension {
                dim_param: Some("batch".into()),
                ..Default::default()
            },
            Axis::Sequence => Dimension {
                dim_param: Some("sequence".into()),
                ..Default::default()
            },
            Axis::Fixed(n) => Dimension {
                dim_value: Some(*n as i64),
                ..Default::default()
            },
        })
        .collect();
    proto::ValueInfoProto {
        name: name.into(),
        r#type: Some(proto::TypeProto {
            tensor_type: Some(proto::TensorTypeProto {
                elem_type,
                shape: Some(TensorShapeProto { dim }),
            }),
        }),
    }
}

/// The graph's inputs, and for a token graph the names its lookups read.
fn graph_inputs(g: &Graph) -> (Vec<proto::ValueInfoProto>, Option<TokenInputs>) {
    if !g.is_text() {
        let mut axes = vec![Axis::Batch];
        axes.extend(g.input_shape.iter().map(|&d| Axis::Fixed(d)));
        return (vec![value_info("input", data_type::FLOAT, &axes)], None);
    }
    let ids = [Axis::Batch, Axis::Sequence];
    let mut inputs = vec![
        value_info("input_ids", data_type::INT64, &ids),
        value_info("attention_mask", data_type::INT64, &ids),
    ];
    let segments = g
        .nodes
        .iter()
        .any(|n| matches!(n.op.def().lookup_table(), Some((Lookup::Segments, _))));
    if segments {
        inputs.push(value_info("token_type_ids", data_type::INT64, &ids));
    }
    let tokens = TokenInputs {
        ids: "input_ids".into(),
        types: segments.then(|| "token_type_ids".to_string()),
    };
    (inputs, Some(tokens))
}

fn model_proto(
    g: &Graph,
    node: Vec<proto::NodeProto>,
    initializer: Vec<proto::TensorProto>,
    (input, output): (Vec<proto::ValueInfoProto>, proto::ValueInfoProto),
    uses_ms: bool,
) -> ModelProto {
    let mut opset_import = vec![proto::OperatorSetIdProto {
        domain: String::new(),
        version: OPSET,
    }];
    if uses_ms {
        opset_import.push(proto::OperatorSetIdProto {
            domain: MS_DOMAIN.into(),
            version: 1,
        });
    }
    ModelProto {
        ir_version: 8,
        opset_import,
        producer_name: "squeeze".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: format!("squeeze `{}` model", g.arch),
        graph: Some(proto::GraphProto {
            node,
            name: g.arch.clone(),
            initializer,
            input,
            output: vec![output],
        }),
        metadata_props: vec![],
    }
}
