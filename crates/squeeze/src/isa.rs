//! CPU-feature dispatch in one place. squeeze is compiled for baseline x86-64 (never with
//! a global `target-cpu`); kernels that have vector paths ask [`active`] which one to run:
//! AVX-512 VNNI with Intel's AMX-INT8 matrix unit, AVX-512 with the VNNI integer dot
//! products, AVX-512F without them, AVX2 + FMA with the VEX-encoded VNNI dot products
//! (AVX-VNNI), AVX2 + FMA, or the portable scalar reference. The best path the CPU supports
//! is chosen once at run time; `SQUEEZE_ISA=amx|avx512vnni|avx512|avxvnni|avx2|scalar`
//! forces a lower one (and is refused with an error if the CPU lacks it), and [`force`]
//! does the same from code (the ISA benchmark).
//! Every path is tested against the reference on machines that have it; `.ci/run` also
//! runs the kernel tests under the lower paths the CPU has (`avx512` on a VNNI machine
//! runs the integer kernels' non-VNNI forms beside the AVX-512 float ones).
//!
//! ```
//! let isa = squeeze::isa::active().unwrap();
//! assert!(squeeze::isa::supported().contains(&isa));
//! ```

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// A kernel path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Portable Rust loops (the reference every vector path is tested against).
    Scalar,
    /// 256-bit AVX2 with fused multiply-add (AMD Zen 3, Intel Haswell and later).
    Avx2,
    /// [`Isa::Avx2`] plus AVX-VNNI, the VEX-encoded 256-bit `vpdpbusd` (Intel Alder Lake
    /// and later client cores, Sierra Forest; AMD Zen 5 has it beside AVX-512): the integer
    /// kernels' AVX2 tiles with one dot-product instruction where AVX2 takes two or three.
    /// Chosen where AVX-512 is absent; everything without an integer dot product runs its
    /// AVX2 form.
    AvxVnni,
    /// 512-bit AVX-512F (Intel Skylake-SP and later), integer kernels in their AVX2 forms.
    Avx512,
    /// AVX-512 with the VNNI integer dot products (`vpdpbusd`, with AVX-512BW): AMD Zen 4,
    /// Intel Ice Lake and later.
    Avx512Vnni,
    /// [`Isa::Avx512Vnni`] plus the AMX-INT8 tile unit (`tdpbusd`: 16×16 i32 sums of
    /// 64-byte rows per instruction; Intel Sapphire Rapids and later), which the int8
    /// convolution's product uses; everything else runs its AVX-512 VNNI form.
    Amx,
}

/// The environment variable that forces a lower path.
pub const ENV: &str = "SQUEEZE_ISA";

impl Isa {
    /// Every path, best first.
    pub const ALL: [Isa; 6] = [
        Isa::Amx,
        Isa::Avx512Vnni,
        Isa::Avx512,
        Isa::AvxVnni,
        Isa::Avx2,
        Isa::Scalar,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::AvxVnni => "avxvnni",
            Isa::Avx512 => "avx512",
            Isa::Avx512Vnni => "avx512vnni",
            Isa::Amx => "amx",
        }
    }

    /// Whether the path runs AVX-512 (with or without VNNI).
    pub fn avx512(self) -> bool {
        matches!(self, Isa::Avx512 | Isa::Avx512Vnni | Isa::Amx)
    }

    /// Parses a path name as `SQUEEZE_ISA` and `--isa` spell it.
    pub fn parse(s: &str) -> Result<Isa> {
        Isa::ALL
            .into_iter()
            .find(|i| i.name() == s.trim())
            .ok_or_else(|| {
                Error::Data(format!(
                    "unknown instruction set `{s}`: expected amx, avx512vnni, avx512, avxvnni, avx2 or scalar"
                ))
            })
    }

    /// Whether this CPU can run the path.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::AvxVnni => Isa::Avx2.is_supported() && std::is_x86_feature_detected!("avxvnni"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => std::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Amx => Isa::Avx512Vnni.is_supported() && amx_granted(),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    fn code(self) -> u8 {
        match self {
            Isa::Scalar => 1,
            Isa::Avx2 => 2,
            Isa::Avx512 => 3,
            Isa::Avx512Vnni => 4,
            Isa::Amx => 5,
            Isa::AvxVnni => 6,
        }
    }

    fn from_code(c: u8) -> Option<Isa> {
        Isa::ALL.into_iter().find(|i| i.code() == c)
    }
}

/// The paths this CPU supports, best first.
pub fn supported() -> Vec<Isa> {
    Isa::ALL.into_iter().filter(|i| i.is_supported()).collect()
}

/// The best path this CPU supports (found once: every kernel call asks).
pub fn detected() -> Isa {
    static BEST: OnceLock<Isa> = OnceLock::new();
    *BEST.get_or_init(|| supported()[0])
}

/// Whether the path may use the VNNI integer dot products (`vpdpbusd`, with AVX-512BW):
/// [`Isa::Avx512Vnni`], which only a CPU that has them supports. Kernels with a VNNI form
/// ask this; other paths run their AVX2 form.
pub fn avx512_vnni(isa: Isa) -> bool {
    matches!(isa, Isa::Avx512Vnni | Isa::Amx) && isa.is_supported()
}

/// Whether the path may use the VEX-encoded VNNI dot products on 256-bit registers:
/// [`Isa::AvxVnni`] on a CPU that has them. The integer kernels' AVX2 tiles ask this.
pub fn avx_vnni(isa: Isa) -> bool {
    isa == Isa::AvxVnni && isa.is_supported()
}

/// Whether the path may use the AMX-INT8 tiles: [`Isa::Amx`] on a CPU that has them and
/// whose kernel granted this process the tile state.
pub fn amx(isa: Isa) -> bool {
    isa == Isa::Amx && isa.is_supported()
}

/// The CPU has AMX-TILE and AMX-INT8 (CPUID leaf 7, EDX bits 24 and 25) and Linux granted
/// this process the 8 KiB tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM,
/// XFEATURE_XTILEDATA)`, required once per process before the first tile instruction,
/// which would otherwise fault). Asked once.
#[cfg(target_arch = "x86_64")]
fn amx_granted() -> bool {
    static GRANTED: OnceLock<bool> = OnceLock::new();
    *GRANTED.get_or_init(|| {
        // SAFETY: CPUID leaf 7 exists on every CPU with AVX-512 (checked by the caller).
        #[allow(unused_unsafe)]
        let leaf = unsafe { std::arch::x86_64::__cpuid_count(7, 0) };
        let (tile, int8) = ((leaf.edx >> 24) & 1 == 1, (leaf.edx >> 25) & 1 == 1);
        #[cfg(target_os = "linux")]
        {
            const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
            const XFEATURE_XTILEDATA: libc::c_long = 18;
            // SAFETY: a request for a permission; it changes no memory of this process.
            tile && int8
                && unsafe {
                    libc::syscall(
                        libc::SYS_arch_prctl,
                        ARCH_REQ_XCOMP_PERM,
                        XFEATURE_XTILEDATA,
                    )
                } == 0
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (tile, int8);
            false
        }
    })
}

/// Set by [`force`]; 0 = not forced.
static FORCED: AtomicU8 = AtomicU8::new(0);

/// `SQUEEZE_ISA`, read and checked once.
static FROM_ENV: OnceLock<std::result::Result<Option<Isa>, String>> = OnceLock::new();

/// `isa` if this CPU supports it, else an error (kernels call this before running a path).
pub fn require(isa: Isa) -> Result<Isa> {
    checked(isa, "the kernel")
}

fn checked(isa: Isa, source: &str) -> Result<Isa> {
    if !isa.is_supported() {
        return Err(Error::Data(format!(
            "{source} asks for {} but this CPU lacks it (supported: {})",
            isa.name(),
            supported()
                .iter()
                .map(|i| i.name())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(isa)
}

fn from_env() -> Result<Option<Isa>> {
    FROM_ENV
        .get_or_init(|| match std::env::var(ENV) {
            Ok(v) if !v.is_empty() => Isa::parse(&v)
                .and_then(|i| checked(i, &format!("{ENV}={v}")))
                .map(Some)
                .map_err(|e| match e {
                    Error::Data(m) => m,
                    e => e.to_string(),
                }),
            _ => Ok(None),
        })
        .clone()
        .map_err(Error::Data)
}

/// The path kernels run now: forced by [`force`], else `SQUEEZE_ISA`, else the best the
/// CPU supports. An unsupported or misspelled `SQUEEZE_ISA` is an error.
pub fn active() -> Result<Isa> {
    if let Some(i) = Isa::from_code(FORCED.load(Ordering::Relaxed)) {
        return Ok(i);
    }
    Ok(from_env()?.unwrap_or_else(detected))
}

/// Makes every kernel of this process run `isa` from now on (`None`: back to the
/// environment / detection); refused if the CPU lacks it.
pub fn force(isa: Option<Isa>) -> Result<()> {
    let code = match isa {
        Some(i) => checked(i, "--isa")?.code(),
        None => 0,
    };
    FORCED.store(code, Ordering::Relaxed);
    Ok(())
}

/// The CPU model, family and what its vector units are — "AMD EPYC (family 25, model 17;
/// AVX-512 on 256-bit units, VNNI)" — recorded beside every timing (AMD family 25 is Zen
/// 3/4, whose AVX-512 runs on 256-bit halves; family 26 is Zen 5, full-width).
pub fn cpu_kind() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |k: &str| {
        info.lines()
            .find(|l| l.split(':').next().is_some_and(|n| n.trim() == k))
            .and_then(|l| l.split(':').nth(1))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let flags = field("flags");
    let has = |f: &str| flags.split_whitespace().any(|x| x == f);
    let amd = field("vendor_id") == "AuthenticAMD";
    let family: u32 = field("cpu family").parse().unwrap_or(0);
    let units = match (has("avx512f"), amd, family) {
        (false, _, _) if has("avx2") => "AVX2 + FMA, no AVX-512".to_string(),
        (false, _, _) => "no AVX2".to_string(),
        (true, true, 25) => "AVX-512 on 256-bit units".to_string(),
        (true, true, f) if f >= 26 => "full-width AVX-512".to_string(),
        (true, _, _) => "AVX-512".to_string(),
    };
    let vnni = match (has("avx512_vnni"), has("avx_vnni")) {
        (true, true) => ", AVX-512 VNNI + AVX-VNNI",
        (true, false) => ", VNNI",
        (false, true) => ", AVX-VNNI",
        (false, false) => ", no VNNI",
    };
    let amx = if has("amx_int8") { ", AMX-INT8" } else { "" };
    format!(
        "{} (family {family}, model {}; {units}{vnni}{amx})",
        cpu_name(),
        field("model")
    )
}

/// The CPU's model name (from `/proc/cpuinfo`), for benchmark records.
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}
