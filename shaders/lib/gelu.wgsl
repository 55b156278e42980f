// GELU in its exact (erf) form, HuggingFace's "gelu", shared by gelu.wgsl and the matmul
// epilogues (appended to their source by the Rust side; WGSL has no includes).
// WGSL has no erf. erf_f32 is N. Juffa's faithfully rounded (< 1 ulp) single-precision
// minimax approximation, the one MLX and others use.

const FRAC_1_SQRT_2: f32 = 0.70710678118654752;
const FRAC_1_SQRT_2PI: f32 = 0.39894228040143268;

fn erf_f32(a: f32) -> f32 {
    let t = abs(a);
    let s = a * a;
    if (t > 0.927734375) {
        var r = fma(-1.72853470e-5, t, 3.83197126e-4);
        let u = fma(-3.88396438e-3, t, 2.42546219e-2);
        r = fma(r, s, u);
        r = fma(r, t, -1.06777877e-1);
        r = fma(r, t, -6.34846687e-1);
        r = fma(r, t, -1.28717512e-1);
        r = fma(r, t, -t);
        r = 1.0 - exp(r);
        return select(r, -r, a < 0.0);
    }
    var r = -5.96761703e-4;
    r = fma(r, s, 4.99119423e-3);
    r = fma(r, s, -2.67681349e-2);
    r = fma(r, s, 1.12819925e-1);
    r = fma(r, s, -3.76125336e-1);
    r = fma(r, s, 1.28379166e-1);
    return fma(r, a, a);
}

// 0.5 x (1 + erf(x / sqrt(2)))
fn gelu_f32(v: f32) -> f32 {
    return 0.5 * v * (1.0 + erf_f32(v * FRAC_1_SQRT_2));
}
