//! Typed tensor specs. Every tensor of a model has a spec: its logical shape (what it
//! stands for, e.g. a `[out, in]` weight), its stored shape and dtype (how it lies in the
//! safetensors file: f32, or u8 for packed int8/int4 and bit-planes, u32/i64 for indices)
//! and its role. Parameters are counted over logical shapes, bytes over stored ones, so
//! reports stay honest for packed and sparse forms.

use candle_core::DType;
use serde::{Deserialize, Serialize};

/// Element type of a stored tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dtype {
    F32,
    F16,
    Bf16,
    /// Bytes: masks, packed integers (int8 with an offset, two int4 per byte), bit-planes.
    U8,
    U32,
    I64,
}

impl Dtype {
    /// The candle dtype tensors of this type are held in.
    pub fn candle(self) -> DType {
        match self {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::Bf16 => DType::BF16,
            Dtype::U8 => DType::U8,
            Dtype::U32 => DType::U32,
            Dtype::I64 => DType::I64,
        }
    }

    /// The spec dtype of a candle dtype (`None` for types squeeze never stores).
    pub fn of(d: DType) -> Option<Dtype> {
        Some(match d {
            DType::F32 => Dtype::F32,
            DType::F16 => Dtype::F16,
            DType::BF16 => Dtype::Bf16,
            DType::U8 => Dtype::U8,
            DType::U32 => Dtype::U32,
            DType::I64 => Dtype::I64,
            _ => return None,
        })
    }

    /// Whether values of this type can be NaN or infinite.
    pub fn is_float(self) -> bool {
        matches!(self, Dtype::F32 | Dtype::F16 | Dtype::Bf16)
    }

    pub fn bytes(self) -> usize {
        match self {
            Dtype::U8 => 1,
            Dtype::F16 | Dtype::Bf16 => 2,
            Dtype::F32 | Dtype::U32 => 4,
            Dtype::I64 => 8,
        }
    }
}

/// What a tensor is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TensorRole {
    /// A learned parameter, trained by the optimizer.
    Param,
    /// State updated outside the optimizer (BatchNorm running statistics).
    Buffer,
    /// A pruning mask (1 = kept) over the parameter of the same name without `.mask`.
    Mask,
    /// Integer-coded weights (quantized, binarized); count as parameters logically.
    Packed,
    /// Quantization scales.
    Scale,
    /// Quantization zero points.
    ZeroPoint,
    /// Indices (sparse positions, shared-weight cluster ids, channel gathers).
    Index,
    /// Shared-weight centroids.
    Codebook,
}

impl TensorRole {
    /// Whether the optimizer updates tensors of this role.
    pub fn trainable(self) -> bool {
        matches!(self, TensorRole::Param | TensorRole::Codebook)
    }
    /// Whether the logical elements count in the model's parameter total.
    pub fn counts_as_parameter(self) -> bool {
        matches!(self, TensorRole::Param | TensorRole::Packed)
    }
}

/// The spec of one tensor of a node (`suffix` is the name after `<node>.`).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub suffix: String,
    /// Shape of what the tensor stands for.
    pub logical: Vec<usize>,
    /// Shape as stored.
    pub stored: Vec<usize>,
    pub dtype: Dtype,
    pub role: TensorRole,
    /// Takes weight decay when trained (conv/linear weights).
    pub decay: bool,
}

impl TensorSpec {
    /// An f32 tensor stored at its logical shape.
    pub fn f32(suffix: &str, shape: Vec<usize>, role: TensorRole) -> Self {
        TensorSpec {
            suffix: suffix.to_string(),
            logical: shape.clone(),
            stored: shape,
            dtype: Dtype::F32,
            role,
            decay: false,
        }
    }
    /// A trainable f32 parameter.
    pub fn param(suffix: &str, shape: Vec<usize>) -> Self {
        Self::f32(suffix, shape, TensorRole::Param)
    }
    /// A trainable f32 weight that takes weight decay.
    pub fn weight(suffix: &str, shape: Vec<usize>) -> Self {
        TensorSpec {
            decay: true,
            ..Self::param(suffix, shape)
        }
    }
    /// The u8 mask (1 = kept) of a parameter of shape `shape`.
    pub fn mask_of(param_suffix: &str, shape: Vec<usize>) -> Self {
        TensorSpec {
            dtype: Dtype::U8,
            ..Self::f32(&format!("{param_suffix}.mask"), shape, TensorRole::Mask)
        }
    }
    /// Logical elements.
    pub fn logical_len(&self) -> usize {
        self.logical.iter().product()
    }
    /// Stored bytes.
    pub fn stored_bytes(&self) -> usize {
        self.stored.iter().product::<usize>() * self.dtype.bytes()
    }
}

/// The record of one tensor in `model.json` (format 2): what the file's tensor must be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorInfo {
    pub dtype: Dtype,
    pub role: TensorRole,
    pub shape: Vec<usize>,
    /// Present when the stored shape differs from the logical one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored: Option<Vec<usize>>,
}

impl From<&TensorSpec> for TensorInfo {
    fn from(s: &TensorSpec) -> Self {
        TensorInfo {
            dtype: s.dtype,
            role: s.role,
            shape: s.logical.clone(),
            stored: (s.stored != s.logical).then(|| s.stored.clone()),
        }
    }
}
