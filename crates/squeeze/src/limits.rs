//! The documented range of every number a user gives squeeze: command-line flags and
//! recipe fields alike are checked against [`LIMITS`] before any work starts, so a count
//! of 2^63 or a learning rate of 0 is an error naming the field, not an abort on an
//! 80 PB allocation or a silently useless run. The README's table is generated from here.

/// The range of one named number.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    /// The recipe field (and, with `-` for `_`, the flag) it applies to.
    pub field: &'static str,
    pub min: f64,
    pub max: f64,
    /// Whether `min` itself is excluded (a learning rate must exceed 0).
    pub min_open: bool,
    /// Whether `max` itself is excluded (momentum stays below 1).
    pub max_open: bool,
    /// Whether the value must be a whole number.
    pub integer: bool,
    pub what: &'static str,
}

const fn count(field: &'static str, min: f64, max: f64, what: &'static str) -> Limit {
    Limit {
        field,
        min,
        max,
        min_open: false,
        max_open: false,
        integer: true,
        what,
    }
}

const fn real(
    field: &'static str,
    (min, min_open): (f64, bool),
    (max, max_open): (f64, bool),
    what: &'static str,
) -> Limit {
    Limit {
        field,
        min,
        max,
        min_open,
        max_open,
        integer: false,
        what,
    }
}

/// Every limited number, by field name.
pub const LIMITS: &[Limit] = &[
    count("epochs", 1.0, 1e4, "training epochs"),
    count(
        "finetune_epochs",
        0.0,
        1e4,
        "fine-tuning epochs of a pass (0: none)",
    ),
    count("hint_epochs", 0.0, 1e4, "FitNets hint-stage epochs"),
    count("batch_size", 1.0, 65536.0, "examples per batch"),
    count("batch", 1.0, 4096.0, "sentences per embedding batch"),
    count("limit_train", 1.0, 1e7, "training examples used"),
    count("augment_pad", 0.0, 14.0, "random-crop padding in pixels"),
    count("rounds", 0.0, 1000.0, "timing rounds, or pruning rounds"),
    count("probes", 1.0, 1e4, "Hutchinson probes"),
    count("steps", 1.0, 1e6, "steps"),
    count("runs", 0.0, 1e5, "timed runs"),
    count("speed_runs", 0.0, 1e5, "timed runs (0: no timing)"),
    count("reps", 1.0, 1e5, "kernel repetitions"),
    count(
        "latency_sentences",
        1.0,
        1e5,
        "sentences timed one at a time",
    ),
    count("every_epochs", 1.0, 1e4, "epochs between step decays"),
    count("samples", 1.0, 1e6, "calibration samples"),
    count("agp_events", 1.0, 1e4, "AGP pruning events"),
    count("block", 1.0, 65536.0, "GPTQ / SparseGPT column block"),
    count("group", 1.0, 65536.0, "quantization group size"),
    count("groups", 1.0, 4096.0, "convolution groups"),
    count(
        "condensation",
        1.0,
        4096.0,
        "CondenseNet condensation factor",
    ),
    count("heads", 1.0, 4096.0, "attention heads kept"),
    count(
        "min_channels",
        1.0,
        1e6,
        "narrowest width structured pruning leaves",
    ),
    count("intermediate", 1.0, 1e6, "FFN units kept"),
    count("rank", 1.0, 1e6, "rank of a factorized layer"),
    count("refine", 0.0, 1e5, "models a search's hill climbing scores"),
    count(
        "widths",
        0.0,
        16384.0,
        "a zoo layer's width (vgg: 0 = pooling)",
    ),
    count("depth", 1.0, 200.0, "a zoo model's depth"),
    real("lr", (0.0, true), (10.0, false), "learning rate"),
    real(
        "target",
        (0.0, true),
        (1.0, true),
        "fraction of channels, params or FLOPs removed",
    ),
    real(
        "energy",
        (0.0, true),
        (1.0, false),
        "fraction of a layer's singular-value energy kept",
    ),
    real(
        "keep",
        (0.0, true),
        (1.0, true),
        "fraction of a factorized layer's parameters kept",
    ),
    real(
        "damp",
        (0.0, true),
        (1.0, false),
        "diagonal damping, relative to the Hessian's mean",
    ),
    real(
        "lambda",
        (0.0, true),
        (1.0, false),
        "Network Slimming's L1 weight on γ",
    ),
    real("momentum", (0.0, false), (1.0, true), "SGD momentum"),
    real(
        "max_drop",
        (0.0, false),
        (100.0, false),
        "quality points a compressed model may lose",
    ),
    real("beta1", (0.0, false), (1.0, true), "AdamW β₁"),
    real("beta2", (0.0, false), (1.0, true), "AdamW β₂"),
    real("eps", (0.0, true), (1.0, false), "AdamW ε"),
    real("weight_decay", (0.0, false), (1.0, true), "weight decay"),
    real(
        "warmup_epochs",
        (0.0, false),
        (1e4, false),
        "warm-up epochs",
    ),
    real("gamma", (0.0, true), (1.0, false), "step-decay factor"),
    real(
        "temperature",
        (0.0, true),
        (100.0, false),
        "softmax temperature",
    ),
    real(
        "alpha",
        (0.0, false),
        (1.0, false),
        "soft-target weight; ASVD's exponent",
    ),
    real(
        "hint_weight",
        (0.0, false),
        (1e6, false),
        "hint-loss weight",
    ),
];

/// The limit of `field`, if it has one.
pub fn of(field: &str) -> Option<&'static Limit> {
    LIMITS.iter().find(|l| l.field == field)
}

impl Limit {
    /// The range in words: "an integer from 1 to 10000", "a number in (0, 10]".
    pub fn range(&self) -> String {
        let n = |v: f64| {
            if v.abs() >= 1e5 {
                format!("{v:e}")
            } else {
                format!("{v}")
            }
        };
        if self.integer {
            return format!("an integer from {} to {}", n(self.min), n(self.max));
        }
        format!(
            "a number in {}{}, {}{}",
            if self.min_open { "(" } else { "[" },
            n(self.min),
            n(self.max),
            if self.max_open { ")" } else { "]" }
        )
    }

    /// `Ok` when `v` is in range; otherwise "out of range: expected …".
    pub fn check(&self, v: f64) -> Result<(), String> {
        let low = if self.min_open {
            v > self.min
        } else {
            v >= self.min
        };
        let high = if self.max_open {
            v < self.max
        } else {
            v <= self.max
        };
        let whole = !self.integer || v.fract() == 0.0;
        if v.is_finite() && low && high && whole {
            return Ok(());
        }
        Err(format!(
            "out of range: expected {} ({})",
            self.range(),
            self.what
        ))
    }
}

/// Checks `value` as field `field` (no limit: always fine).
pub fn check(field: &str, value: f64) -> Result<(), String> {
    of(field).map_or(Ok(()), |l| l.check(value))
}

/// The table of limits as Markdown (the README's copy is checked against it).
pub fn markdown() -> String {
    let mut s = String::from("| field or flag | range | what |\n|---|---|---|\n");
    for l in LIMITS {
        s.push_str(&format!("| `{}` | {} | {} |\n", l.field, l.range(), l.what));
    }
    s
}

/// Checks every limited number anywhere in `v` (a recipe, a training configuration), by
/// its field name; the error names the path (`passes[1]: \`finetune_epochs\``). TOML's
/// values are walked because they keep NaN and infinities, which JSON cannot hold.
pub fn check_tree(v: &toml::Value) -> Result<(), String> {
    walk(v, "")
}

fn walk(v: &toml::Value, path: &str) -> Result<(), String> {
    match v {
        toml::Value::Table(m) => {
            for (k, x) in m {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                let n = match x {
                    toml::Value::Integer(i) => Some(*i as f64),
                    toml::Value::Float(f) => Some(*f),
                    _ => None,
                };
                if let Some(n) = n {
                    let at = if path.is_empty() {
                        String::new()
                    } else {
                        format!("{path}: ")
                    };
                    check(k, n).map_err(|e| format!("{at}`{k}` = {x} is {e}"))?;
                }
                walk(x, &p)?;
            }
        }
        toml::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                walk(x, &format!("{path}[{i}]"))?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Memory the OS says is available to a new allocation (`MemAvailable`), if it says.
pub fn available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Refuses to go on when `bytes` (computed from a user's values) exceed the available
/// memory: a clear error instead of an abort on allocation. `what` says what needs it.
pub fn ensure_fits(bytes: u64, what: &str) -> Result<(), String> {
    match available_bytes() {
        Some(avail) if bytes > avail => Err(format!(
            "{what} needs about {:.1} GB, but this machine has {:.1} GB available",
            bytes as f64 / 1e9,
            avail as f64 / 1e9
        )),
        _ => Ok(()),
    }
}
