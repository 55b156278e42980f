//! Tilings of the f32 kernel and how one is chosen: by shape, fixed, or timed once per kind
//! of product shape on the device and remembered in the context ([`TilingChoice`]).

use crate::context::{Capabilities, Context};
use crate::error::{Error, Result};

use super::views::{Layout, StridedMatmul};

/// A tiling of the kernel, set through its override constants: a workgroup computes a
/// `bm × bn` block of C with `(bm/tm)·(bn/tn)` threads of `tm × tn` each, through K in
/// slices of `bk`; with `prefetch`, the next slice is loaded while the current one is used;
/// `direct` tilings stage nothing and read the operands straight from memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Tiling {
    /// Rows of C per workgroup.
    pub bm: u32,
    /// Columns of C per workgroup.
    pub bn: u32,
    /// K per slice staged through workgroup memory.
    pub bk: u32,
    /// Rows of C per thread.
    pub tm: u32,
    /// Columns of C per thread.
    pub tn: u32,
    /// Loads the next K-slice into registers while the current one is used.
    pub prefetch: bool,
    /// Stages nothing in workgroup memory (no barriers): each thread reads its rows and
    /// columns from memory (`tm` and `tn` 4 or 8, `bk` unused). A CPU adapter's caches do
    /// the staging.
    #[serde(default)]
    pub direct: bool,
}

impl Tiling {
    /// A tiling without prefetching.
    pub const fn new(bm: u32, bn: u32, bk: u32, tm: u32, tn: u32) -> Tiling {
        Tiling {
            bm,
            bn,
            bk,
            tm,
            tn,
            prefetch: false,
            direct: false,
        }
    }

    /// The same tiling, loading the next K-slice into registers during the current one.
    pub const fn prefetched(self) -> Tiling {
        Tiling {
            prefetch: true,
            ..self
        }
    }

    /// The same block shapes, read straight from memory (no staging, no barriers).
    pub const fn direct(self) -> Tiling {
        Tiling {
            direct: true,
            ..self
        }
    }

    /// Threads per workgroup.
    pub fn threads(&self) -> u32 {
        (self.bm / self.tm) * (self.bn / self.tn)
    }

    /// Bytes of workgroup memory (the two k-major tiles).
    pub fn workgroup_bytes(&self) -> u32 {
        (self.bm + self.bn) * self.bk * 4
    }

    /// Whether the kernel supports this tiling (its register block holds at most 8 × 8,
    /// in vec4s; in a staged tiling every thread stages whole vec4s, at most 4 per operand
    /// and slice) and the adapter can run it.
    pub fn fits(&self, caps: &Capabilities) -> bool {
        let Tiling {
            bm, bn, bk, tm, tn, ..
        } = *self;
        let wg = self.threads();
        let staged_fits = self.direct
            || ((bm * bk / 4) % wg == 0
                && (bn * bk / 4) % wg == 0
                && bm * bk / 4 / wg <= 4
                && bn * bk / 4 / wg <= 4);
        staged_fits
            && tm % 4 == 0
            && tm <= 8
            && (tn == 4 || tn == 8)
            && bk % 4 == 0
            && bm % tm == 0
            && bn % tn == 0
            && wg <= caps.max_invocations_per_workgroup
            && self.workgroup_bytes() <= caps.max_workgroup_storage
    }
}

impl std::fmt::Display for Tiling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}x{}x{}/{}x{}{}",
            self.bm,
            self.bn,
            self.bk,
            self.tm,
            self.tn,
            match (self.prefetch, self.direct) {
                (_, true) => "+direct",
                (true, false) => "+prefetch",
                (false, false) => "",
            }
        )
    }
}

/// The tilings the library chooses from, small to large; the large ones also prefetched
/// (only timing tells whether that pays on a given GPU, so only the tuner picks them); last
/// the direct ones.
pub const TILINGS: [Tiling; 11] = [
    Tiling::new(32, 32, 16, 4, 4),
    Tiling::new(64, 64, 16, 4, 4),
    Tiling::new(128, 64, 16, 8, 4),
    Tiling::new(64, 128, 16, 4, 8),
    Tiling::new(128, 128, 8, 8, 8),
    Tiling::new(128, 128, 16, 8, 8),
    Tiling::new(128, 128, 8, 8, 8).prefetched(),
    Tiling::new(128, 128, 16, 8, 8).prefetched(),
    Tiling::new(4, 64, 4, 4, 8).direct(),
    Tiling::new(8, 32, 4, 8, 4).direct(),
    Tiling::new(8, 64, 4, 8, 8).direct(),
];

/// How a context picks the matmul tiling.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TilingChoice {
    /// On a GPU, the first large product of each kind of shape times every tiling that
    /// fits on scratch buffers and the context remembers the fastest; everything else
    /// (small products, CPU adapters) uses [`TilingChoice::Heuristic`].
    #[default]
    Auto,
    /// Like `Auto`, but every product's kind of shape is timed, however small and on any
    /// adapter (CPU adapters included).
    Timed,
    /// By the shape alone: large tiles for large products, small for small.
    Heuristic,
    /// Always this one (it must fit the adapter).
    Fixed(Tiling),
}

/// Products below this many multiply-adds are not worth timing: launch overhead dominates.
const TUNE_MIN_MACS: u64 = 1 << 28;

/// What tuning results are remembered by: shapes within a factor of two, same layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub(crate) struct ShapeClass {
    log2_m: u32,
    log2_n: u32,
    log2_k: u32,
    log2_batch: u32,
    layout: Layout,
}

impl ShapeClass {
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn of(s: &StridedMatmul, layout: &Layout) -> ShapeClass {
        let l = |x: usize| x.next_power_of_two().trailing_zeros();
        ShapeClass {
            log2_m: l(s.m),
            log2_n: l(s.n),
            log2_k: l(s.k),
            log2_batch: l(s.batch[0] * s.batch[1]),
            layout: *layout,
        }
    }
}

/// What a CPU adapter gets without timing: the direct tiling with the largest block (no
/// staging, no barrier, fewest loads per multiply-add), the fastest on llvmpipe (PERF.md).
pub const CPU_TILING: Tiling = Tiling::new(8, 64, 4, 8, 8).direct();

/// The tiling by shape: the largest whose tiles are mostly filled and which still gives
/// the GPU enough workgroups; on a CPU adapter, [`CPU_TILING`].
pub fn heuristic_tiling(caps: &Capabilities, m: usize, n: usize, batch: usize) -> Tiling {
    let fits = |t: &Tiling| t.fits(caps);
    let pick = |t: Tiling| if fits(&t) { Some(t) } else { None };
    let small = TILINGS[0];
    let medium = TILINGS[1];
    if caps.is_cpu() {
        return pick(CPU_TILING).unwrap_or(small);
    }
    let groups =
        |t: &Tiling| (m.div_ceil(t.bm as usize) * n.div_ceil(t.bn as usize) * batch) as u64;
    // Fraction of a tile grid's area that is real output.
    let filled = |t: &Tiling| {
        (m * n) as f64
            / (m.next_multiple_of(t.bm as usize) * n.next_multiple_of(t.bn as usize)) as f64
    };
    let candidates = [TILINGS[4], TILINGS[2], TILINGS[3], medium];
    candidates
        .into_iter()
        .filter(fits)
        .find(|t| filled(t) >= 0.75 && groups(t) >= 128)
        .or_else(|| pick(medium).filter(|t| filled(t) >= 0.5))
        .unwrap_or(small)
}

/// The tiling for a product, as the context's [`TilingChoice`] says.
pub(crate) fn choose(ctx: &Context, s: &StridedMatmul, layout: &Layout) -> Result<Tiling> {
    let caps = ctx.capabilities();
    let batch = s.batch[0] * s.batch[1];
    match super::tiling_choice(ctx) {
        TilingChoice::Fixed(t) => {
            if t.fits(caps) {
                Ok(t)
            } else {
                Err(Error::invalid(format!(
                    "matmul tiling {t} is not supported here (register block up to 8x8, \
                     at most {} threads and {} bytes of workgroup memory)",
                    caps.max_invocations_per_workgroup, caps.max_workgroup_storage
                )))
            }
        }
        TilingChoice::Heuristic => Ok(heuristic_tiling(caps, s.m, s.n, batch)),
        choice @ (TilingChoice::Auto | TilingChoice::Timed) => {
            let macs = (s.m * s.n * s.k) as u64 * batch as u64;
            let worth_timing = !caps.is_cpu() && macs >= TUNE_MIN_MACS;
            // A context that only plans cannot time anything.
            if (!worth_timing && choice == TilingChoice::Auto) || ctx.plan_only() {
                return Ok(heuristic_tiling(caps, s.m, s.n, batch));
            }
            #[cfg(not(target_arch = "wasm32"))]
            return super::tuning::timed_tiling(ctx, s, layout);
            // In a browser nothing may wait for the GPU, so nothing is timed.
            #[cfg(target_arch = "wasm32")]
            return {
                let _ = layout;
                Ok(heuristic_tiling(caps, s.m, s.n, batch))
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{
        matmul, reference, set_tiling, set_tuning_cache, time_tilings, tuned_tilings,
        tuning::read_cache, MatmulOptions,
    };
    use super::*;
    use crate::testing::*;

    /// A random `[m, k] · [k, n]` product against the f64 reference, at whatever tiling the
    /// context chooses.
    fn check_product(ctx: &Context, (m, n, k): (usize, usize, usize), rng: &mut impl rand::Rng) {
        let a = randn(rng, m * k);
        let b = randn(rng, k * n);
        let c = matmul(
            ctx,
            &upload(ctx, &a, &[m, k]),
            &upload(ctx, &b, &[k, n]),
            None,
            &MatmulOptions::default(),
        )
        .unwrap();
        let want = reference::matmul(&to_f64(&a), &to_f64(&b), (m, n, k), false, false);
        assert_close(&format!("{m}x{n}x{k}"), &download(ctx, &c), &want, 1e-5);
    }

    /// `TilingChoice::Timed` times each kind of shape once: the first product of a kind
    /// tunes (every tiling that fits, once), later ones of the same kind reuse the choice,
    /// another kind tunes again; every product is right whatever was chosen.
    #[test]
    fn tuning_times_each_kind_of_shape_once_and_products_stay_right() {
        let _turn = ctx(); // a second device must not race the shared one
        let ctx = &Context::new().unwrap();
        set_tiling(ctx, TilingChoice::Timed);
        set_tuning_cache(ctx, None); // what this process times, not what earlier ones did
        let mut rng = rng(8);
        // (m, n, k): the first two are one kind (within a factor of two, neither read as
        // vec4s), the third another.
        let shapes = [(33, 65, 17), (41, 67, 19), (130, 7, 17)];
        let expected_tunings = [1, 1, 2];
        for (&(m, n, k), &tunings) in shapes.iter().zip(&expected_tunings) {
            check_product(ctx, (m, n, k), &mut rng);
            assert_eq!(ctx.setup_costs().tunings, tunings, "after {m}x{n}x{k}");
            assert_eq!(tuned_tilings(ctx).len(), tunings);
        }
        let fitting: Vec<Tiling> = TILINGS
            .iter()
            .copied()
            .filter(|t| t.fits(ctx.capabilities()))
            .collect();
        assert!(tuned_tilings(ctx).iter().all(|t| fitting.contains(t)));
        // The timing itself: one time per fitting tiling, each tiling once.
        let times = time_tilings(ctx, (64, 64, 32), false, true).unwrap();
        assert_eq!(times.len(), fitting.len());
        assert!(fitting
            .iter()
            .all(|t| times.iter().filter(|(u, _)| u == t).count() == 1));
    }

    /// A second context (a second process) on the same adapter reads what the first timed
    /// from the cache folder and times nothing; a corrupt cache file is ignored.
    #[test]
    fn timed_tilings_are_kept_on_disk_for_the_next_process() {
        let _turn = ctx();
        let dir = std::env::temp_dir().join(format!("roformer-tilings-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let product = |ctx: &Context| check_product(ctx, (40, 24, 16), &mut rng(9));
        let open = || {
            let ctx = Context::new().unwrap();
            set_tiling(&ctx, TilingChoice::Timed);
            set_tuning_cache(&ctx, Some(dir.clone()));
            ctx
        };
        let first = open();
        product(&first);
        assert_eq!(first.setup_costs().tunings, 1);
        let files: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(files.len(), 1, "one cache file per adapter");
        let second = open();
        product(&second);
        assert_eq!(
            second.setup_costs().tunings,
            0,
            "the second process timed again"
        );
        assert_eq!(tuned_tilings(&second), tuned_tilings(&first));
        // A corrupt file is an empty cache: the next process times again, and rewrites it.
        let file = files[0].as_ref().unwrap().path();
        std::fs::write(&file, "{ not json").unwrap();
        let third = open();
        product(&third);
        assert_eq!(third.setup_costs().tunings, 1);
        assert!(!read_cache(&file).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_fixed_tiling_the_kernel_cannot_run_is_an_error() {
        let shared = ctx(); // taking the turn: a second device must not race the first
        let bad = Tiling::new(64, 64, 16, 16, 4); // register block taller than 8
        assert!(!bad.fits(shared.capabilities()));
        let ctx = Context::new().unwrap();
        set_tiling(&ctx, TilingChoice::Fixed(bad));
        let a = upload(&ctx, &[1.0; 4], &[2, 2]);
        let r = matmul(&ctx, &a, &a, None, &MatmulOptions::default());
        assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
    }
}
