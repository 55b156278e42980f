//! CPU reference, in f64, for one batch element.

/// Element `(r, c)` of a matrix stored row-major, read transposed when `trans`.
fn at(x: &[f64], rows: usize, cols: usize, trans: bool, r: usize, c: usize) -> f64 {
    if trans {
        x[c * rows + r]
    } else {
        x[r * cols + c]
    }
}

/// `op(a) · op(b)`, `[m, n]`.
pub fn matmul(
    a: &[f64],
    b: &[f64],
    (m, n, k): (usize, usize, usize),
    trans_a: bool,
    trans_b: bool,
) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k)
                .map(|l| at(a, m, k, trans_a, i, l) * at(b, k, n, trans_b, l, j))
                .sum();
        }
    }
    c
}

/// Gradients of `sum(op(a) · op(b) ⊙ dc)` with respect to a and b, stored like a and b.
pub fn backward(
    a: &[f64],
    b: &[f64],
    dc: &[f64],
    (m, n, k): (usize, usize, usize),
    trans_a: bool,
    trans_b: bool,
) -> (Vec<f64>, Vec<f64>) {
    let mut da = vec![0.0; m * k];
    let mut db = vec![0.0; k * n];
    for i in 0..m {
        for j in 0..n {
            let g = dc[i * n + j];
            for l in 0..k {
                let ia = if trans_a { l * m + i } else { i * k + l };
                let ib = if trans_b { j * k + l } else { l * n + j };
                da[ia] += g * b[ib];
                db[ib] += g * a[ia];
            }
        }
    }
    (da, db)
}
