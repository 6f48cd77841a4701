//! Knowledge distillation: Hinton's soft-target loss against a hand computation, its
//! gradient against finite differences and its high-temperature limit; FitNets hint
//! regressors receive gradients while the teacher receives none; bad options are refused
//! with the field named.

use candle_core::{DType, Device, Tensor, Var};
use squeeze::distill::{self, kd_loss, Distill, HintSpec, SoftTargets};
use squeeze::graph::trainable_names;
use squeeze::graph::Op;
use squeeze::interp::ForwardOpts;
use squeeze::train::{forward_batch, Batch, Objective};
use squeeze::zoo::{self, ZooOpts};

/// Agreement of the loss with the hand computation (f64 throughout).
const VALUE_TOL: f64 = 1e-9;
/// Agreement of autograd with central differences of step 1e-5 (f64).
const FD_TOL: f64 = 1e-6;
/// Relative distance to Hinton's high-temperature gradient at T = 10³.
const LIMIT_TOL: f64 = 1e-2;

fn t2(v: &[f64], rows: usize) -> Tensor {
    Tensor::from_vec(v.to_vec(), (rows, v.len() / rows), &Device::Cpu).unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

fn softmax(z: &[f64], t: f64) -> Vec<f64> {
    let m = z.iter().cloned().fold(f64::MIN, f64::max);
    let e: Vec<f64> = z.iter().map(|v| ((v - m) / t).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// The gradient of `f` at `x`, flattened.
fn grad(x: &Tensor, f: impl Fn(&Tensor) -> Tensor) -> Vec<f64> {
    let v = Var::from_tensor(x).unwrap();
    let grads = f(v.as_tensor()).backward().unwrap();
    let g = grads.get(v.as_tensor()).unwrap().flatten_all().unwrap();
    g.to_vec1().unwrap()
}

#[test]
fn soft_target_loss_equals_a_hand_computation() {
    let (zs, zt) = (
        [1.0, 2.0, 0.5, -1.0, 0.0, 3.0],
        [0.5, 1.0, 3.0, 2.0, -2.0, 0.5],
    );
    let labels = Tensor::new(&[1u32, 2], &Device::Cpu).unwrap();
    let st = SoftTargets {
        temperature: 2.0,
        alpha: 0.7,
    };
    let got = scalar(&kd_loss(&t2(&zs, 2), &t2(&zt, 2), &labels, st).unwrap());
    let mut want = 0.0;
    for (r, y) in [(0, 1), (1, 2)] {
        let (s, t) = (&zs[r * 3..r * 3 + 3], &zt[r * 3..r * 3 + 3]);
        let (q, p) = (softmax(s, 2.0), softmax(t, 2.0));
        let kl: f64 = p.iter().zip(&q).map(|(p, q)| p * (p / q).ln()).sum();
        let ce = -softmax(s, 1.0)[y].ln();
        want += (0.7 * 4.0 * kl + 0.3 * ce) / 2.0;
    }
    assert!((got - want).abs() < VALUE_TOL, "{got} vs {want}");
}

#[test]
fn soft_target_gradient_matches_finite_differences() {
    let zs = [0.3, -1.2, 2.0, 0.1, 1.5, 0.2, -0.7, 0.9];
    let zt = t2(&[1.0, 0.0, -1.0, 2.0, 0.5, 0.5, 1.5, -2.0], 2);
    let labels = Tensor::new(&[3u32, 0], &Device::Cpu).unwrap();
    let st = SoftTargets {
        temperature: 3.0,
        alpha: 0.6,
    };
    let g = grad(&t2(&zs, 2), |z| kd_loss(z, &zt, &labels, st).unwrap());
    let f = |z: &[f64]| scalar(&kd_loss(&t2(z, 2), &zt, &labels, st).unwrap());
    for i in 0..zs.len() {
        let (mut a, mut b) = (zs, zs);
        a[i] += 1e-5;
        b[i] -= 1e-5;
        let fd = (f(&a) - f(&b)) / 2e-5;
        assert!((fd - g[i]).abs() < FD_TOL, "logit {i}: {fd} vs {}", g[i]);
    }
}

#[test]
fn at_high_temperature_the_soft_gradient_is_the_logit_difference() {
    // Hinton et al. 2015: for zero-mean logits and T ≫ |z|, ∂(T²·KL)/∂z_s ≈ (z_s − z_t)/C,
    // here further divided by the batch size B of the mean
    let zs = [1.0, -0.5, 0.25, -0.75, 0.5, 0.5, -2.0, 1.0];
    let zt = [-1.0, 2.0, 0.0, -1.0, 1.5, -0.5, -0.5, -0.5];
    let (b, c) = (2.0, 4.0);
    let labels = Tensor::new(&[0u32, 0], &Device::Cpu).unwrap();
    let st = SoftTargets {
        temperature: 1e3,
        alpha: 1.0,
    };
    let g = grad(&t2(&zs, 2), |z| {
        kd_loss(z, &t2(&zt, 2), &labels, st).unwrap()
    });
    for i in 0..zs.len() {
        let want = (zs[i] - zt[i]) / (c * b);
        assert!(
            (g[i] - want).abs() <= LIMIT_TOL * want.abs().max(1e-3),
            "logit {i}: {} vs {want}",
            g[i]
        );
    }
}

fn vgg(widths: &[usize], seed: u64) -> squeeze::Model {
    let opts = ZooOpts {
        widths: Some(widths.to_vec()),
        depth: None,
    };
    zoo::build("vgg", &opts, seed).unwrap()
}

fn first_relu(m: &squeeze::Model) -> String {
    let n = m.graph.nodes.iter().find(|n| matches!(n.op, Op::Relu));
    n.unwrap().name.clone()
}

#[test]
fn hint_regressor_learns_and_the_teacher_gets_no_gradient() {
    let teacher = vgg(&[6, 0, 8, 0], 1);
    let mut student = vgg(&[3, 0, 4, 0], 2);
    let before = student.graph.clone();
    let spec = HintSpec {
        student: first_relu(&student),
        teacher: first_relu(&teacher),
        weight: 1.0,
    };
    let hints = distill::add_regressors(&mut student, &teacher, &[spec], 0).unwrap();
    assert_eq!(
        student.graph.output, before.output,
        "the regressor is a side branch"
    );
    let (params, vars) = student
        .params
        .with_vars(&trainable_names(&student.graph))
        .unwrap();
    let x = Tensor::randn(0f32, 1.0, (4, 1, 28, 28), &Device::Cpu).unwrap();
    let batch = Batch::Images {
        x,
        labels: Tensor::new(&[0u32, 3, 7, 9], &Device::Cpu).unwrap(),
    };
    let obj = Distill {
        teacher: &teacher,
        soft: Some(SoftTargets {
            temperature: 4.0,
            alpha: 0.9,
        }),
        hints: hints.clone(),
    };
    let opts = ForwardOpts {
        taps: obj.taps().into_iter().collect(),
        ..ForwardOpts::train(0)
    };
    let out = forward_batch(&student.graph, &params, &batch, &opts).unwrap();
    let grads = obj.loss(&out, &batch).unwrap().loss.backward().unwrap();
    let reg = format!("{}.weight", hints[0].regressor);
    let (_, rv) = vars.iter().find(|(n, _)| *n == reg).unwrap();
    let g = grads
        .get(rv.as_tensor())
        .expect("the regressor has a gradient");
    let norm = scalar(&g.sqr().unwrap().sum_all().unwrap());
    assert!(norm > 0.0, "regressor gradient is zero");
    for (name, t) in teacher.params.iter() {
        assert!(
            grads.get(t).is_none(),
            "teacher tensor {name} got a gradient"
        );
    }
    distill::strip_regressors(&mut student, &hints).unwrap();
    assert_eq!(
        student.graph, before,
        "stripping restores the student's graph"
    );
    assert!(!student.params.contains(&reg));
}

#[test]
fn bad_distillation_options_name_the_field() {
    for (t, a, field) in [
        (0.0, 0.5, "temperature"),
        (-1.0, 0.5, "temperature"),
        (2.0, 1.5, "alpha"),
        (2.0, -0.1, "alpha"),
        (f64::NAN, 0.5, "temperature"),
    ] {
        let e = SoftTargets {
            temperature: t,
            alpha: a,
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains(field), "{e}");
    }
    let teacher = vgg(&[6, 0], 1);
    let mut student = vgg(&[3, 0], 2);
    let spec = HintSpec::parse("features.0.relu=nope", 1.0).unwrap();
    let e = distill::add_regressors(&mut student, &teacher, &[spec], 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("teacher") && e.contains("`nope`"), "{e}");
    let e = HintSpec::parse("features.0.relu", 1.0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("STUDENT_NODE=TEACHER_NODE"), "{e}");
    // a feature map cannot be hinted onto a vector
    let spec = HintSpec::parse("features.0.relu=classifier", 1.0).unwrap();
    let e = distill::add_regressors(&mut student, &teacher, &[spec], 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("feature maps"), "{e}");
}
