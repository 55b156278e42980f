//! Timing the tilings on the device (native only: it waits for the GPU): once per kind of
//! product shape, remembered in the context and in a cache file per adapter and driver.

use std::sync::atomic::Ordering::SeqCst;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};
use crate::timing::time_dispatches;

use super::tiling::{ShapeClass, Tiling, TILINGS};
use super::views::{Layout, MatrixView, Operands, StridedMatmul};
use super::{dispatch, state};

/// The tiling timing found fastest for this product's shape class: remembered per context
/// and in the tuning cache, timed once otherwise.
pub(crate) fn timed_tiling(ctx: &Context, s: &StridedMatmul, layout: &Layout) -> Result<Tiling> {
    let caps = ctx.capabilities();
    let class = ShapeClass::of(s, layout);
    let state = state(ctx);
    let cache = super::tuning_cache(ctx).map(|dir| cache_file(ctx, &dir));
    {
        let mut tuned = state.tuned.lock().unwrap();
        // Once per context: what earlier processes timed on this adapter and driver.
        if let (Some(file), false) = (&cache, state.cache_read.swap(true, SeqCst)) {
            for (c, t) in read_cache(file) {
                if t.fits(caps) {
                    tuned.entry(c).or_insert(t);
                }
            }
        }
        if let Some(&t) = tuned.get(&class) {
            return Ok(t);
        }
    }
    let started = web_time::Instant::now();
    let t = tune(ctx, s, layout)?.0;
    let mut tuned = state.tuned.lock().unwrap();
    tuned.insert(class, t);
    ctx.record_tuning(started.elapsed());
    if let Some(file) = &cache {
        // A cache that cannot be written costs the next process a tuning, no more.
        let _ = write_cache(file, &caps.adapter_name, &tuned);
    }
    Ok(t)
}

/// The cache file of this adapter, driver and library version in `dir`.
fn cache_file(ctx: &Context, dir: &std::path::Path) -> std::path::PathBuf {
    let caps = ctx.capabilities();
    let key = format!(
        "{}|{}|{:?}|{}",
        caps.adapter_name,
        caps.driver,
        caps.backend,
        env!("CARGO_PKG_VERSION")
    );
    // FNV-1a: the same name in every process and Rust version.
    let hash = key.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    });
    dir.join(format!("matmul-tilings-{hash:016x}.json"))
}

/// The tunings in a cache file, with the adapter they are for (for whoever reads it); a
/// missing or unreadable file is an empty cache.
#[derive(serde::Serialize, serde::Deserialize)]
struct CacheFile {
    adapter: String,
    tunings: Vec<(ShapeClass, Tiling)>,
}

pub(super) fn read_cache(file: &std::path::Path) -> Vec<(ShapeClass, Tiling)> {
    std::fs::read(file)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<CacheFile>(&bytes).ok())
        .map_or_else(Vec::new, |c| c.tunings)
}

fn write_cache(
    file: &std::path::Path,
    adapter: &str,
    tuned: &std::collections::HashMap<ShapeClass, Tiling>,
) -> Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.display().to_string(),
            source,
        })?;
    }
    let mut tunings: Vec<(ShapeClass, Tiling)> = tuned.iter().map(|(c, t)| (*c, *t)).collect();
    tunings.sort_by_key(|(c, _)| format!("{c:?}"));
    let body = CacheFile {
        adapter: adapter.to_string(),
        tunings,
    };
    let bytes = serde_json::to_vec_pretty(&body).map_err(|e| Error::invalid(e.to_string()))?;
    crate::io::write_atomic(file, &bytes)
}

/// Times every tiling that fits on a `[m, k] · [k, n]` product (operands stored transposed
/// as asked) on scratch buffers, fastest first: what [`TilingChoice::Auto`](super::TilingChoice::Auto) does for a
/// large product, shown (by `bench`) for any.
pub fn time_tilings(
    ctx: &Context,
    (m, n, k): (usize, usize, usize),
    trans_a: bool,
    trans_b: bool,
) -> Result<Vec<(Tiling, std::time::Duration)>> {
    let view = |rows, cols, trans| {
        if trans {
            MatrixView::row_major(cols, rows).transposed()
        } else {
            MatrixView::row_major(rows, cols)
        }
    };
    let s = StridedMatmul {
        m,
        n,
        k,
        batch: [1, 1],
        a: view(m, k, trans_a),
        b: view(k, n, trans_b),
        c: MatrixView::row_major(m, n),
        alpha: 1.0,
        beta: 0.0,
        bias_offset: 0,
    };
    let ta = Tensor::zeros(ctx, &[m, k], DType::F32)?;
    let tb = Tensor::zeros(ctx, &[k, n], DType::F32)?;
    Ok(tune(ctx, &s, &Layout::of(&s, &ta, &tb))?.1)
}

/// Times every tiling that fits on scratch operands laid out like `s`'s (contiguity and
/// vec4 eligibility), capped in size, and returns them fastest first.
pub(crate) fn tune(
    ctx: &Context,
    s: &StridedMatmul,
    layout: &Layout,
) -> Result<(Tiling, Vec<(Tiling, std::time::Duration)>)> {
    // At most 2^24 elements (64 MiB) per scratch operand: fewer batches, then fewer rows.
    const CAP: usize = 1 << 24;
    let (mut m, n, k) = (s.m, s.n, s.k);
    let per = (m * k).max(k * n).max(m * n);
    let batch = (s.batch[0] * s.batch[1]).clamp(1, (CAP / per).max(1));
    if batch * per > CAP {
        m = (CAP / k.max(n)).max(256).min(m).next_multiple_of(4);
    }
    let view = |rows: usize, cols: usize, contig_is_col: bool| {
        let v = MatrixView::row_major(rows, cols);
        if contig_is_col {
            v
        } else {
            MatrixView::row_major(cols, rows).transposed()
        }
    };
    let spec = StridedMatmul {
        m,
        n,
        k,
        batch: [batch, 1],
        a: view(m, k, layout.a_k_contig),
        b: view(k, n, layout.b_n_contig),
        c: MatrixView::row_major(m, n),
        alpha: 1.0,
        beta: 0.0,
        bias_offset: 0,
    };
    let ta = Tensor::zeros(ctx, &[batch, m, k], DType::F32)?;
    let tb = Tensor::zeros(ctx, &[batch, k, n], DType::F32)?;
    let tc = Tensor::zeros(ctx, &[batch, m, n], DType::F32)?;
    let scratch_layout = Layout::of(&spec, &ta, &tb);
    let ops = Operands {
        a: &ta,
        b: &tb,
        bias: None,
        c: &tc,
        gelu: None,
    };
    let mut times = Vec::new();
    for t in TILINGS.iter().filter(|t| t.fits(ctx.capabilities())) {
        let d = dispatch(ctx, &spec, &scratch_layout, *t, &ops)?;
        time_dispatches(ctx, std::slice::from_ref(&d), 1)?; // compile, warm
        let time = time_dispatches(ctx, std::slice::from_ref(&d), 3)?;
        times.push((*t, time));
    }
    times.sort_by_key(|&(_, d)| d);
    Ok((times[0].0, times))
}
