//! Comparing results with a reference: the relative L2 error that every test and the
//! `verify` example hold outputs and gradients to.

/// `‖ours − reference‖ / ‖reference‖`, computed in f64. Any non-finite value in `ours`
/// (an unwritten, NaN-poisoned element for instance) gives infinity, so it never passes.
/// When the reference is all zeros the absolute norm of the difference is returned.
pub fn rel_l2<A: Copy + Into<f64>, B: Copy + Into<f64>>(ours: &[A], reference: &[B]) -> f64 {
    if ours.len() != reference.len() {
        return f64::INFINITY;
    }
    let mut diff = 0.0f64;
    let mut norm = 0.0f64;
    for (&o, &r) in ours.iter().zip(reference) {
        let (o, r): (f64, f64) = (o.into(), r.into());
        if !o.is_finite() {
            return f64::INFINITY;
        }
        diff += (o - r) * (o - r);
        norm += r * r;
    }
    if norm == 0.0 {
        diff.sqrt()
    } else {
        (diff / norm).sqrt()
    }
}
