//! Data loading and training: IDX errors, the real Fashion-MNIST files (when installed),
//! learning above chance, exact resume, and optimizer state that holds no autograd graph.

use std::path::{Path, PathBuf};

use squeeze::data::{read_idx, FashionMnist};
use squeeze::eval::accuracy;
use squeeze::train::{self, NoHooks, OptimizerConfig, Schedule, TrainConfig};
use squeeze::zoo::{self, ZooOpts};

mod common;

fn tmp(name: &str) -> PathBuf {
    let d = common::tmpdir(&format!("train-{name}"));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn idx_errors_name_the_file_and_the_fix() {
    let d = tmp("idx");
    let e = read_idx(&d.join("missing.gz")).unwrap_err().to_string();
    assert!(
        e.contains("missing.gz") && e.contains("apt-get install dataset-fashion-mnist"),
        "{e}"
    );
    let p = d.join("bad.idx");
    std::fs::write(&p, [1, 2, 3, 4, 5]).unwrap();
    assert!(read_idx(&p).unwrap_err().to_string().contains("bad magic"));
    // header says 2×3 bytes, only 4 follow
    std::fs::write(&p, [0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4]).unwrap();
    let e = read_idx(&p).unwrap_err().to_string();
    assert!(e.contains("bad.idx") && e.contains("truncated"), "{e}");
    // dims of 2³²−1 each: their product overflows; refused before anything is allocated
    let mut huge = vec![0u8, 0, 8, 3];
    huge.extend([0xFF; 12]);
    let e = read_idx_bytes(&p, &huge);
    assert!(e.contains("overflow"), "{e}");
    std::fs::write(&p, [0, 0, 8, 1, 0, 0, 0, 2, 7, 9]).unwrap();
    assert_eq!(read_idx(&p).unwrap().data, vec![7, 9]);
    let gz = d.join("cut.gz");
    std::fs::write(&gz, [0x1f, 0x8b, 8, 0, 0, 0]).unwrap();
    assert!(read_idx(&gz)
        .unwrap_err()
        .to_string()
        .contains("corrupt gzip"));
}

/// The error of reading `bytes` written to `p` as an IDX file.
fn read_idx_bytes(p: &Path, bytes: &[u8]) -> String {
    std::fs::write(p, bytes).unwrap();
    read_idx(p).unwrap_err().to_string()
}

fn real_data() -> Option<FashionMnist> {
    let dir = Path::new(squeeze::data::DEFAULT_DIR);
    if !dir.join("train-images-idx3-ubyte.gz").exists() {
        common::skip(&format!(
            "real-data test: {} is absent (apt-get install dataset-fashion-mnist)",
            dir.display()
        ));
        return None;
    }
    Some(FashionMnist::load(dir).unwrap())
}

#[test]
fn real_fashion_mnist_loads_and_a_model_learns_above_chance() {
    let Some(fm) = real_data() else { return };
    assert_eq!(
        (fm.train.len(), fm.valid.len(), fm.test.len()),
        (55_000, 5_000, 10_000)
    );
    assert_eq!((fm.train.rows, fm.train.cols), (28, 28));
    let mut m = zoo::build(
        "mlp",
        &ZooOpts {
            widths: Some(vec![64]),
            depth: None,
        },
        0,
    )
    .unwrap();
    let cfg = config(1, Some(3000), 64);
    let out = tmp("real");
    train::train(
        &mut m,
        &fm.train,
        &fm.valid.take(500),
        &cfg,
        &out,
        false,
        &mut NoHooks,
    )
    .unwrap();
    let acc = accuracy(&m.graph, &m.params, &fm.test.take(1000), 250).unwrap();
    assert!(
        acc > 0.6,
        "accuracy {acc} after one epoch on 3000 images (chance is 0.1)"
    );
}

fn config(epochs: usize, limit: Option<usize>, batch: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: batch,
        optimizer: OptimizerConfig::Sgd {
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 5e-4,
            nesterov: true,
        },
        schedule: Schedule::Cosine { warmup_epochs: 0.5 },
        seed: 5,
        augment_pad: 2,
        limit_train: limit,
    }
}

fn tiny() -> squeeze::Model {
    zoo::build(
        "vgg",
        &ZooOpts {
            widths: Some(vec![3, 0, 4, 0]),
            depth: None,
        },
        1,
    )
    .unwrap()
}

#[test]
fn resume_continues_exactly() {
    let (data, valid) = (common::synthetic(96, 1), common::synthetic(32, 2));
    let cfg = config(2, None, 32);
    let a_dir = tmp("resume-a");
    let mut a = tiny();
    train::train(&mut a, &data, &valid, &cfg, &a_dir, false, &mut NoHooks).unwrap();
    // the same run killed after epoch 1, then resumed from its checkpoint
    struct StopAfterOne;
    impl train::Hooks for StopAfterOne {
        fn should_stop(&self, done: usize) -> bool {
            done == 1
        }
    }
    let b_dir = tmp("resume-b");
    let mut b = tiny();
    let h = train::train(
        &mut b,
        &data,
        &valid,
        &cfg,
        &b_dir,
        false,
        &mut StopAfterOne,
    )
    .unwrap();
    assert_eq!(h.len(), 1);
    let mut fresh = tiny();
    let hist = train::train(&mut fresh, &data, &valid, &cfg, &b_dir, true, &mut NoHooks).unwrap();
    assert_eq!(hist.len(), 2);
    for (k, t) in a.params.iter() {
        let x: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let y: Vec<f32> = fresh
            .params
            .get(k)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(
            x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()),
            "{k} differs after resume"
        );
    }
    // a resume with different options is refused
    let other = TrainConfig { seed: 9, ..cfg };
    let e = train::train(
        &mut tiny(),
        &data,
        &valid,
        &other,
        &b_dir,
        true,
        &mut NoHooks,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("state.json") && e.contains("differ"), "{e}");
}

#[test]
fn optimizer_state_holds_no_autograd_graph() {
    let m = tiny();
    let cfg = config(1, None, 16);
    let (mut params, mut opt) = train::prepare(&m, &cfg.optimizer).unwrap();
    let data = common::synthetic(32, 3);
    for step in 0..3 {
        let idx: Vec<usize> = (step * 8..step * 8 + 16).collect();
        let b = train::DataSource::batch(&data, &idx, None).unwrap();
        let ce = train::CrossEntropy;
        train::train_step(
            &m,
            &mut params,
            &mut opt,
            &b,
            (0.05, step as u64),
            &ce,
            &mut NoHooks,
        )
        .unwrap();
    }
    for (k, t) in opt.state() {
        assert!(
            !t.track_op(),
            "optimizer buffer {k} keeps the autograd graph alive (memory leak)"
        );
    }
}

#[test]
fn augmentation_is_seeded_and_changes_pixels() {
    use rand::SeedableRng;
    let d = common::synthetic(4, 4);
    let idx = [0, 1, 2, 3];
    let a = d
        .batch(&idx, Some((&mut rand::rngs::StdRng::seed_from_u64(1), 2)))
        .unwrap()
        .0;
    let b = d
        .batch(&idx, Some((&mut rand::rngs::StdRng::seed_from_u64(1), 2)))
        .unwrap()
        .0;
    let plain = d.batch(&idx, None).unwrap().0;
    let diff = |p: &candle_core::Tensor, q: &candle_core::Tensor| {
        (p - q)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    assert_eq!(diff(&a, &b), 0.0);
    assert!(diff(&a, &plain) > 0.0);
}

/// Max fraction of its first-epoch value the embedding loss may keep after training.
const EMB_LOSS_DROP: f64 = 0.7;

#[test]
fn a_text_encoder_trains_on_sentences_toward_target_embeddings() {
    use squeeze::interp::{forward_tokens, ForwardOpts};
    use squeeze::text::bert;
    use squeeze::text::pad_batch;
    use squeeze::train::{fit, EmbeddingLoss, EmbeddingTarget, Run, SentenceSet};
    let shape = common::bert_shape(8, &[2, 2]);
    // sentences of 3–8 random tokens; targets: a differently initialised teacher's embeddings
    let mut r = common::lcg(17).map(|s| (s >> 33) as u32);
    let ids: Vec<Vec<u32>> = (0..48)
        .map(|_| {
            let len = 3 + r.next().unwrap() % 6;
            (0..len).map(|_| 1 + r.next().unwrap() % 29).collect()
        })
        .collect();
    let teacher = bert::random(&shape, 99).unwrap();
    let seqs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    let (tid, tmask) = pad_batch(&seqs).unwrap();
    let targets = forward_tokens(
        &teacher.graph,
        &teacher.params,
        &tid,
        &tmask,
        &ForwardOpts::eval(),
    )
    .unwrap()
    .output
    .to_vec2::<f32>()
    .unwrap();
    let set = SentenceSet {
        ids,
        targets: Some(targets),
    };
    let cfg = TrainConfig {
        epochs: 6,
        batch_size: 8,
        optimizer: OptimizerConfig::Adamw {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        },
        schedule: Schedule::Constant { warmup_epochs: 0.0 },
        seed: 1,
        augment_pad: 0,
        limit_train: None,
    };
    let out = tmp("text-fit");
    let mut student = bert::random(&shape, 5).unwrap();
    let objective = EmbeddingTarget(EmbeddingLoss::Cosine);
    let run = Run {
        train: &set,
        valid: &set,
        objective: &objective,
        cfg: &cfg,
        out: &out,
        resume: false,
    };
    let hist = fit(&mut student, &run, &mut NoHooks).unwrap();
    let (first, last) = (hist[0].valid_loss.unwrap(), hist[5].valid_loss.unwrap());
    assert!(hist.iter().all(|h| h.valid_accuracy.is_none()));
    assert!(
        last < EMB_LOSS_DROP * first,
        "cosine loss {first} → {last}: the encoder did not learn"
    );
    // images cannot feed an embedding objective, and sentences cannot be augmented
    let bad = TrainConfig {
        augment_pad: 2,
        ..cfg.clone()
    };
    let run = Run { cfg: &bad, ..run };
    let e = fit(&mut student, &run, &mut NoHooks)
        .unwrap_err()
        .to_string();
    assert!(e.contains("augment"), "{e}");
}
