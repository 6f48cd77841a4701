//! FitNets hints (Romero et al. 2015): a student node's output is mapped by a learned
//! regressor onto a teacher node's output — a 1×1 convolution for feature maps of the
//! same spatial size, a linear layer for vectors — and the squared difference is a
//! training loss. The regressor is grafted onto the student graph as an ordinary layer
//! that feeds nothing, so the one trainer and optimizer update it with the student;
//! [`strip_regressors`] removes it (and its tensors) from the finished model.

use candle_core::{Device, Tensor};
use rand::{rngs::StdRng, SeedableRng};

use crate::error::{Error, Result};
use crate::graph::{infer_shapes, Op};
use crate::kinds::conv2d::Conv2d;
use crate::kinds::linear::Linear;
use crate::model::Model;

/// A hint as the user names it: student node → teacher node, with the term's weight.
#[derive(Debug, Clone, PartialEq)]
pub struct HintSpec {
    pub student: String,
    pub teacher: String,
    pub weight: f64,
}

impl HintSpec {
    /// Parses `STUDENT=TEACHER` (node names).
    pub fn parse(s: &str, weight: f64) -> Result<Self> {
        match s.split_once('=') {
            Some((a, b)) if !a.is_empty() && !b.is_empty() => Ok(HintSpec {
                student: a.trim().into(),
                teacher: b.trim().into(),
                weight,
            }),
            _ => Err(Error::Train(format!(
                "hint `{s}`: expected STUDENT_NODE=TEACHER_NODE"
            ))),
        }
    }
}

/// A grafted hint: the regressor node in the student, the teacher node it is compared
/// with, and the term's weight.
#[derive(Debug, Clone, PartialEq)]
pub struct Hint {
    pub regressor: String,
    pub teacher: String,
    pub weight: f64,
}

/// Per-sample output shape of `node` in `m`, or an error naming `which` side.
fn shape_of(m: &Model, node: &str, which: &str) -> Result<Vec<usize>> {
    let shapes = infer_shapes(&m.graph)?;
    if m.graph.node(node).is_none() {
        let names: Vec<&str> = m.graph.nodes.iter().map(|n| n.name.as_str()).collect();
        return Err(Error::Train(format!(
            "hint: the {which} has no node `{node}` (its nodes: {})",
            names.join(", ")
        )));
    }
    Ok(shapes[node].clone())
}

/// The regressor layer from a student output of shape `s` to a teacher output `t`.
fn regressor_op(s: &[usize], t: &[usize], spec: &HintSpec) -> Result<Op> {
    match (s, t) {
        ([cs, h, w], [ct, h2, w2]) if (h, w) == (h2, w2) => Ok(Op::Conv2d(Conv2d {
            in_channels: *cs,
            out_channels: *ct,
            kernel: 1,
            stride: 1,
            padding: 0,
            groups: 1,
            bias: true,
            width: None,
            quant: None,
        })),
        ([cs], [ct]) => Ok(Op::Linear(Linear {
            in_features: *cs,
            out_features: *ct,
            bias: true,
            quant: None,
        })),
        _ => Err(Error::Train(format!(
            "hint `{}={}`: student output {s:?} and teacher output {t:?} must both be \
             feature maps of one spatial size or both be vectors",
            spec.student, spec.teacher
        ))),
    }
}

/// Grafts one regressor per hint onto `student` (He-initialized from `seed`) and returns
/// the hints the [`super::Distill`] objective reads. Each node must exist in its model.
pub fn add_regressors(
    student: &mut Model,
    teacher: &Model,
    specs: &[HintSpec],
    seed: u64,
) -> Result<Vec<Hint>> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x4849_4e54);
    let mut out = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        if !(spec.weight.is_finite() && spec.weight >= 0.0) {
            return Err(Error::Train(format!(
                "hint weight must be a non-negative number, got {}",
                spec.weight
            )));
        }
        let s = shape_of(student, &spec.student, "student")?;
        let t = shape_of(teacher, &spec.teacher, "teacher")?;
        let op = regressor_op(&s, &t, spec)?;
        let name = format!("hint{i}_regressor");
        if student.graph.node(&name).is_some() {
            return Err(Error::Train(format!(
                "the student already has a node `{name}`"
            )));
        }
        // the kind's own tensor specs give the shapes: He-normal weight, zero bias
        for t in op.def().tensors() {
            let n: usize = t.logical.iter().product();
            let v = if t.suffix == "weight" {
                let fan_in = n / t.logical[0];
                crate::zoo::normal(&mut rng, n, (2.0 / fan_in as f64).sqrt())
            } else {
                vec![0.0; n]
            };
            let key = format!("{name}.{}", t.suffix);
            student
                .params
                .insert(key, Tensor::from_vec(v, t.logical, &Device::Cpu)?);
        }
        let output = student.graph.output.clone();
        student.graph.push(&name, op, &[spec.student.as_str()]);
        student.graph.output = output; // the regressor is a side branch
        out.push(Hint {
            regressor: name,
            teacher: spec.teacher.clone(),
            weight: spec.weight,
        });
    }
    student.graph.validate()?;
    student.graph.check_params(&student.params)?;
    Ok(out)
}

/// Removes the hints' regressor nodes and their tensors from a trained student.
pub fn strip_regressors(student: &mut Model, hints: &[Hint]) -> Result<()> {
    for h in hints {
        if !student.graph.consumers(&h.regressor).is_empty() || student.graph.output == h.regressor
        {
            return Err(Error::Train(format!(
                "`{}` feeds the model; it is not a hint regressor",
                h.regressor
            )));
        }
        let Some(i) = student.graph.index_of(&h.regressor) else {
            continue;
        };
        let node = student.graph.nodes.remove(i);
        for t in node.op.def().tensors() {
            student
                .params
                .remove(&format!("{}.{}", node.name, t.suffix));
        }
    }
    student.graph.validate()?;
    student.graph.check_params(&student.params)
}
