//! The model zoo: builders for the Fashion-MNIST architectures compression papers use,
//! with widths as parameters — `mlp` (LeNet-300-100, LeCun 1989 / Han 2015), `lenet5`
//! (the Caffe LeNet-5 variant of Deep Compression), `vgg` (conv-BN-ReLU stacks, the Network
//! Slimming subject, Liu 2017), `resnet` (ResNet-20-style, He 2016), `densenet` (a small
//! DenseNet with compressing transitions, Huang 2017), `densenet-bc` (the same with 1×1
//! bottlenecks of 4·growth channels before each 3×3 conv: DenseNet-BC, the subject of
//! CondenseNet's learned group convolutions, Huang et al. 2018), and `cnn`, the fixed
//! network of the training-speed benchmark. Weights use Kaiming-normal initialization
//! for layers followed by ReLU and PyTorch's default uniform range for classifiers.

use candle_core::{Device, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::graph::{Graph, Op, INPUT};
use crate::kinds::{
    batch_norm::BatchNorm,
    conv2d::Conv2d,
    linear::Linear,
    pool::{AvgPool2d, MaxPool2d},
};
use crate::model::Model;
use crate::params::ParamStore;

/// Fashion-MNIST input: one 28×28 channel.
pub const INPUT_SHAPE: [usize; 3] = [1, 28, 28];
pub const CLASSES: usize = 10;

/// Names of the architectures [`build`] knows.
pub const ARCHS: [&str; 7] = [
    "mlp",
    "lenet5",
    "vgg",
    "resnet",
    "densenet",
    "densenet-bc",
    "cnn",
];

/// Width options of the zoo builders; `None` takes the architecture's default.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZooOpts {
    /// Hidden/stage widths (meaning per arch: mlp hidden sizes, vgg conv widths with 0 = pool,
    /// resnet stage widths, lenet5 [conv1, conv2, fc], densenet and densenet-bc `[growth]`).
    pub widths: Option<Vec<usize>>,
    /// resnet: blocks per stage; densenet: layers per dense block.
    pub depth: Option<usize>,
}

/// `n` draws from N(0, std²) (Box–Muller), from a seeded generator.
pub(crate) fn normal(rng: &mut StdRng, n: usize, std: f64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * std) as f32
        })
        .collect()
}

/// Graph + parameter builder with seeded initialization.
struct Builder {
    g: Graph,
    p: ParamStore,
    rng: StdRng,
    /// Floats initialized so far, and why the next are refused (memory).
    floats: u64,
    refused: Option<String>,
}

/// Bytes training needs per parameter: the weight, its gradient and up to two optimizer
/// moments.
const TRAIN_BYTES_PER_PARAM: u64 = 16;

impl Builder {
    fn new(arch: &str, seed: u64) -> Self {
        Builder {
            g: Graph::new(arch, &INPUT_SHAPE),
            p: ParamStore::new(),
            rng: StdRng::seed_from_u64(seed),
            floats: 0,
            refused: None,
        }
    }

    /// Whether `n` more parameters fit the machine's memory for training (if not, the
    /// reason is kept and [`Builder::put`] returns it).
    fn fits(&mut self, n: usize) -> bool {
        self.floats = self.floats.saturating_add(n as u64);
        if self.refused.is_none() {
            let bytes = self.floats.saturating_mul(TRAIN_BYTES_PER_PARAM);
            if let Err(e) = crate::limits::ensure_fits(bytes, "training this model") {
                self.refused = Some(format!(
                    "{e} (at least {} parameters so far): choose smaller --widths or --depth",
                    self.floats
                ));
            }
        }
        self.refused.is_none()
    }

    fn normal(&mut self, n: usize, std: f64) -> Vec<f32> {
        if !self.fits(n) {
            return Vec::new();
        }
        normal(&mut self.rng, n, std)
    }

    fn uniform(&mut self, n: usize, bound: f64) -> Vec<f32> {
        if !self.fits(n) {
            return Vec::new();
        }
        (0..n)
            .map(|_| ((self.rng.random::<f64>() * 2.0 - 1.0) * bound) as f32)
            .collect()
    }

    fn put(&mut self, name: String, v: Vec<f32>, shape: &[usize]) -> Result<()> {
        if let Some(why) = &self.refused {
            return Err(Error::Graph(why.clone()));
        }
        self.p
            .insert(name, Tensor::from_vec(v, shape, &Device::Cpu)?);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn conv(
        &mut self,
        name: &str,
        from: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Result<String> {
        let op = Op::Conv2d(Conv2d {
            in_channels: cin,
            out_channels: cout,
            kernel: k,
            stride,
            padding: pad,
            groups: 1,
            bias: false,
            width: None,
            quant: None,
        });
        let w = self.normal(cout * cin * k * k, (2.0 / (cin * k * k) as f64).sqrt());
        self.put(format!("{name}.weight"), w, &[cout, cin, k, k])?;
        Ok(self.g.push(name, op, &[from]))
    }

    fn bn(&mut self, name: &str, from: &str, c: usize) -> Result<String> {
        self.put(format!("{name}.weight"), vec![1.0; c], &[c])?;
        self.put(format!("{name}.bias"), vec![0.0; c], &[c])?;
        self.put(format!("{name}.running_mean"), vec![0.0; c], &[c])?;
        self.put(format!("{name}.running_var"), vec![1.0; c], &[c])?;
        Ok(self.g.push(
            name,
            Op::BatchNorm(BatchNorm {
                channels: c,
                eps: 1e-5,
                momentum: 0.1,
            }),
            &[from],
        ))
    }

    fn linear(
        &mut self,
        name: &str,
        from: &str,
        cin: usize,
        cout: usize,
        relu_follows: bool,
    ) -> Result<String> {
        let w = if relu_follows {
            self.normal(cout * cin, (2.0 / cin as f64).sqrt())
        } else {
            self.uniform(cout * cin, 1.0 / (cin as f64).sqrt())
        };
        self.put(format!("{name}.weight"), w, &[cout, cin])?;
        let b = self.uniform(cout, 1.0 / (cin as f64).sqrt());
        self.put(format!("{name}.bias"), b, &[cout])?;
        Ok(self.g.push(
            name,
            Op::Linear(Linear {
                in_features: cin,
                out_features: cout,
                bias: true,
                quant: None,
            }),
            &[from],
        ))
    }

    fn op(&mut self, name: &str, op: Op, from: &[&str]) -> String {
        self.g.push(name, op, from)
    }

    /// 2×2 max pooling with stride 2.
    fn max_pool2(&mut self, name: &str, from: &str) -> String {
        let op = Op::MaxPool2d(MaxPool2d {
            kernel: 2,
            stride: 2,
        });
        self.op(name, op, &[from])
    }

    /// conv (`{name}.conv`, "same" padding) → BN (`{name}.bn`); returns the BN's name.
    fn conv_bn(
        &mut self,
        name: &str,
        from: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
    ) -> Result<String> {
        let c = self.conv(&format!("{name}.conv"), from, cin, cout, k, stride, k / 2)?;
        self.bn(&format!("{name}.bn"), &c, cout)
    }

    /// `{block}.relu` reading `from` (closes a conv → BN → ReLU block); returns its name.
    fn relu(&mut self, block: &str, from: &str) -> String {
        self.op(&format!("{block}.relu"), Op::Relu, &[from])
    }

    fn finish(self) -> Result<Model> {
        let m = Model::new(self.g, self.p);
        m.check()?;
        Ok(m)
    }
}

fn widths(opts: &ZooOpts, default: &[usize], arch: &str, n: Option<usize>) -> Result<Vec<usize>> {
    let w = opts.widths.clone().unwrap_or_else(|| default.to_vec());
    if n.is_some_and(|n| w.len() != n) || w.is_empty() {
        return Err(Error::Graph(format!(
            "{arch}: expected {} widths, got {w:?}",
            n.unwrap_or(1)
        )));
    }
    Ok(w)
}

/// Builds architecture `arch` with seeded random weights.
pub fn build(arch: &str, opts: &ZooOpts, seed: u64) -> Result<Model> {
    match arch {
        "mlp" => mlp(&widths(opts, &[300, 100], arch, None)?, seed),
        "lenet5" => lenet5(&widths(opts, &[20, 50, 500], arch, Some(3))?, seed),
        "vgg" => vgg(
            &widths(opts, &[32, 32, 0, 64, 64, 0, 128, 128, 0], arch, None)?,
            seed,
        ),
        "resnet" => resnet(
            &widths(opts, &[16, 32, 64], arch, None)?,
            opts.depth.unwrap_or(3),
            seed,
        ),
        "densenet" => densenet(
            widths(opts, &[12], arch, Some(1))?[0],
            opts.depth.unwrap_or(4),
            false,
            seed,
        ),
        "densenet-bc" => densenet(
            widths(opts, &[12], arch, Some(1))?[0],
            opts.depth.unwrap_or(4),
            true,
            seed,
        ),
        "cnn" => cnn(seed),
        _ => Err(Error::Graph(format!(
            "unknown architecture `{arch}` (known: {})",
            ARCHS.join(", ")
        ))),
    }
}

fn mlp(hidden: &[usize], seed: u64) -> Result<Model> {
    let mut b = Builder::new("mlp", seed);
    let mut x = b.op("flatten", Op::Flatten, &[INPUT]);
    let mut cin = 28 * 28;
    for (i, &h) in hidden.iter().enumerate() {
        let l = b.linear(&format!("fc{}", i + 1), &x, cin, h, true)?;
        x = b.op(&format!("relu{}", i + 1), Op::Relu, &[&l]);
        cin = h;
    }
    b.linear(&format!("fc{}", hidden.len() + 1), &x, cin, 10, false)?;
    b.finish()
}

fn lenet5(w: &[usize], seed: u64) -> Result<Model> {
    let mut b = Builder::new("lenet5", seed);
    let c1 = b.conv("conv1", INPUT, 1, w[0], 5, 1, 0)?; // 28 → 24
    let r1 = b.op("relu1", Op::Relu, &[&c1]);
    let p1 = b.max_pool2("pool1", &r1); // → 12
    let c2 = b.conv("conv2", &p1, w[0], w[1], 5, 1, 0)?; // → 8
    let r2 = b.op("relu2", Op::Relu, &[&c2]);
    let p2 = b.max_pool2("pool2", &r2); // → 4
    let f = b.op("flatten", Op::Flatten, &[&p2]);
    let l1 = b.linear("fc1", &f, w[1] * 16, w[2], true)?;
    let r3 = b.op("relu3", Op::Relu, &[&l1]);
    b.linear("fc2", &r3, w[2], CLASSES, false)?;
    b.finish()
}

fn vgg(cfg: &[usize], seed: u64) -> Result<Model> {
    let mut b = Builder::new("vgg", seed);
    let (mut x, mut c, mut hw, mut i) = (INPUT.to_string(), 1, 28, 0);
    for &w in cfg {
        if w == 0 {
            i += 1;
            x = b.max_pool2(&format!("pool{i}"), &x);
            hw /= 2;
        } else {
            let name = format!("features.{}", b.g.nodes.len());
            let n = b.conv_bn(&name, &x, c, w, 3, 1)?;
            x = b.relu(&name, &n);
            c = w;
        }
    }
    let f = b.op("flatten", Op::Flatten, &[&x]);
    b.linear("classifier", &f, c * hw * hw, CLASSES, false)?;
    b.finish()
}

fn resnet(stages: &[usize], blocks: usize, seed: u64) -> Result<Model> {
    let mut b = Builder::new("resnet", seed);
    let stem = b.conv_bn("stem", INPUT, 1, stages[0], 3, 1)?;
    let mut x = b.relu("stem", &stem);
    let mut c = stages[0];
    for (s, &w) in stages.iter().enumerate() {
        for k in 0..blocks {
            let stride = if s > 0 && k == 0 { 2 } else { 1 };
            let name = format!("layer{}.{k}", s + 1);
            let an = b.conv_bn(&format!("{name}.a"), &x, c, w, 3, stride)?;
            let a = b.relu(&format!("{name}.a"), &an);
            let bb = b.conv_bn(&format!("{name}.b"), &a, w, w, 3, 1)?;
            let short = if stride != 1 || c != w {
                b.conv_bn(&format!("{name}.down"), &x, c, w, 1, stride)?
            } else {
                x.clone()
            };
            let add = b.op(&format!("{name}.add"), Op::Add, &[&bb, &short]);
            x = b.op(&format!("{name}.relu"), Op::Relu, &[&add]);
            c = w;
        }
    }
    let gp = b.op("pool", Op::GlobalAvgPool, &[&x]);
    b.linear("fc", &gp, c, CLASSES, false)?;
    b.finish()
}

/// Dense layer of a DenseNet: BN → ReLU → 3×3 conv (`{name}.bn`, `.relu`, `.conv`), or
/// with a bottleneck BN → ReLU → 1×1 conv to 4·growth (`{name}.a.*`) then `{name}.b.*`;
/// returns the new features (growth channels).
fn dense_layer(
    b: &mut Builder,
    name: &str,
    x: &str,
    c: usize,
    growth: usize,
    bottleneck: bool,
) -> Result<String> {
    let (mut x, mut c, mut name) = (x.to_string(), c, name.to_string());
    if bottleneck {
        let a = format!("{name}.a");
        let n = b.bn(&format!("{a}.bn"), &x, c)?;
        let r = b.relu(&a, &n);
        x = b.conv(&format!("{a}.conv"), &r, c, 4 * growth, 1, 1, 0)?;
        (c, name) = (4 * growth, format!("{name}.b"));
    }
    let n = b.bn(&format!("{name}.bn"), &x, c)?;
    let r = b.relu(&name, &n);
    b.conv(&format!("{name}.conv"), &r, c, growth, 3, 1, 1)
}

fn densenet(growth: usize, layers: usize, bottleneck: bool, seed: u64) -> Result<Model> {
    let arch = if bottleneck {
        "densenet-bc"
    } else {
        "densenet"
    };
    let mut b = Builder::new(arch, seed);
    let mut c = 2 * growth;
    let mut x = b.conv("stem", INPUT, 1, c, 3, 1, 1)?;
    for blk in 1..=3 {
        for l in 0..layers {
            let name = format!("block{blk}.{l}");
            let cv = dense_layer(&mut b, &name, &x, c, growth, bottleneck)?;
            x = b.op(&format!("{name}.cat"), Op::Concat, &[&x, &cv]);
            c += growth;
        }
        if blk < 3 {
            let name = format!("trans{blk}");
            let n = b.bn(&format!("{name}.bn"), &x, c)?;
            let r = b.relu(&name, &n);
            let cv = b.conv(&format!("{name}.conv"), &r, c, c / 2, 1, 1, 0)?;
            c /= 2;
            x = b.op(
                &format!("{name}.pool"),
                Op::AvgPool2d(AvgPool2d {
                    kernel: 2,
                    stride: 2,
                }),
                &[&cv],
            );
        }
    }
    let n = b.bn("final.bn", &x, c)?;
    let r = b.relu("final", &n);
    let gp = b.op("pool", Op::GlobalAvgPool, &[&r]);
    b.linear("fc", &gp, c, CLASSES, false)?;
    b.finish()
}

/// The fixed network of the training-speed benchmark (mirrored by
/// `bench/peers/cnn_peer.py`): conv32-BN-ReLU-pool, conv64-BN-ReLU-pool, fc128, fc10.
fn cnn(seed: u64) -> Result<Model> {
    let mut b = Builder::new("cnn", seed);
    let x = b.conv_bn("block1", INPUT, 1, 32, 3, 1)?;
    let x = b.relu("block1", &x);
    let x = b.max_pool2("pool1", &x);
    let x = b.conv_bn("block2", &x, 32, 64, 3, 1)?;
    let x = b.relu("block2", &x);
    let x = b.max_pool2("pool2", &x);
    let f = b.op("flatten", Op::Flatten, &[&x]);
    let h = b.linear("fc1", &f, 64 * 7 * 7, 128, true)?;
    let r = b.op("relu3", Op::Relu, &[&h]);
    b.linear("fc2", &r, 128, CLASSES, false)?;
    b.finish()
}
