//! Data sets. Fashion-MNIST (Xiao et al. 2017) from IDX files, gzip-compressed as the
//! Debian package `dataset-fashion-mnist` ships them, with a validation split carved from
//! the training set, seeded augmentation (random crop with padding + horizontal flip) and
//! batching into normalized tensors.

pub mod idx;

pub use idx::{parse_idx, read_idx, Idx};

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use rand::{rngs::StdRng, Rng};

use crate::error::{Error, Result};

/// Where the Debian package puts the files.
pub const DEFAULT_DIR: &str = "/usr/share/datasets/fashion-mnist";
/// Channel statistics of the Fashion-MNIST training images.
pub const MEAN: f32 = 0.2860;
pub const STD: f32 = 0.3530;
/// Training images held out for model selection.
pub const VALIDATION: usize = 5000;

/// Labelled 28×28 grey images.
#[derive(Debug, Clone)]
pub struct ImageSet {
    pub pixels: Vec<u8>,
    pub labels: Vec<u8>,
    pub rows: usize,
    pub cols: usize,
}

/// The three splits.
#[derive(Debug, Clone)]
pub struct FashionMnist {
    pub train: ImageSet,
    pub valid: ImageSet,
    pub test: ImageSet,
}

fn load_pair(dir: &Path, prefix: &str) -> Result<ImageSet> {
    let img = read_idx(&dir.join(format!("{prefix}-images-idx3-ubyte.gz")))?;
    let lab = read_idx(&dir.join(format!("{prefix}-labels-idx1-ubyte.gz")))?;
    if img.dims.len() != 3 || lab.dims.len() != 1 || img.dims[0] != lab.dims[0] {
        return Err(Error::Data(format!(
            "{}: image dims {:?} do not match label dims {:?}",
            dir.display(),
            img.dims,
            lab.dims
        )));
    }
    if let Some(bad) = lab.data.iter().find(|&&l| l >= 10) {
        return Err(Error::Data(format!(
            "{prefix} labels: value {bad} is not a class 0..9"
        )));
    }
    Ok(ImageSet {
        pixels: img.data,
        labels: lab.data,
        rows: img.dims[1],
        cols: img.dims[2],
    })
}

impl FashionMnist {
    /// Loads all four files from `dir` and splits the last [`VALIDATION`] training images off.
    pub fn load(dir: &Path) -> Result<Self> {
        let mut train = load_pair(dir, "train")?;
        let test = load_pair(dir, "t10k")?;
        let n = train
            .len()
            .checked_sub(VALIDATION)
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                Error::Data(format!(
                    "{}: training set too small for a validation split",
                    dir.display()
                ))
            })?;
        let valid = train.split_off(n);
        Ok(FashionMnist { train, valid, test })
    }

    /// The default directory, or the one given.
    pub fn dir(given: Option<&Path>) -> PathBuf {
        given
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR))
    }
}

impl ImageSet {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    fn split_off(&mut self, n: usize) -> ImageSet {
        let px = self.rows * self.cols;
        ImageSet {
            pixels: self.pixels.split_off(n * px),
            labels: self.labels.split_off(n),
            rows: self.rows,
            cols: self.cols,
        }
    }

    /// The first `n` examples (for quick runs and tests).
    pub fn take(&self, n: usize) -> ImageSet {
        let n = n.min(self.len());
        let px = self.rows * self.cols;
        ImageSet {
            pixels: self.pixels[..n * px].to_vec(),
            labels: self.labels[..n].to_vec(),
            rows: self.rows,
            cols: self.cols,
        }
    }

    /// A normalized batch `[B, 1, H, W]` and its labels `[B]` (u32). With `augment`, each image
    /// is shifted by up to `pad` pixels (zero fill) and flipped horizontally with p = ½.
    pub fn batch(
        &self,
        idx: &[usize],
        augment: Option<(&mut StdRng, usize)>,
    ) -> Result<(Tensor, Tensor)> {
        let (h, w) = (self.rows, self.cols);
        let mut x = vec![0f32; idx.len() * h * w];
        let fill = -MEAN / STD;
        let mut aug = augment;
        for (b, &i) in idx.iter().enumerate() {
            let src = &self.pixels[i * h * w..(i + 1) * h * w];
            let dst = &mut x[b * h * w..(b + 1) * h * w];
            let (dy, dx, flip) = match aug.as_mut() {
                Some((rng, pad)) => {
                    let p = *pad as i64;
                    (
                        rng.random_range(-p..=p),
                        rng.random_range(-p..=p),
                        rng.random::<bool>(),
                    )
                }
                None => (0, 0, false),
            };
            for r in 0..h {
                for c in 0..w {
                    let sr = r as i64 + dy;
                    let sc0 = if flip { (w - 1 - c) as i64 } else { c as i64 };
                    let sc = sc0 + dx;
                    dst[r * w + c] = if sr >= 0 && sr < h as i64 && sc >= 0 && sc < w as i64 {
                        (src[sr as usize * w + sc as usize] as f32 / 255.0 - MEAN) / STD
                    } else {
                        fill
                    };
                }
            }
        }
        let labels: Vec<u32> = idx.iter().map(|&i| self.labels[i] as u32).collect();
        let xt = Tensor::from_vec(x, (idx.len(), 1, h, w), &Device::Cpu)?; // [B,1,H,W]
        let yt = Tensor::from_vec(labels, idx.len(), &Device::Cpu)?; // [B]
        Ok((xt, yt))
    }
}
