// The losses of transformers' multi-label and regression sequence classifiers, over logits
// [rows, labels] against float targets of the same shape, each the mean over every element:
// binary cross-entropy with logits (torch.nn.BCEWithLogitsLoss) or the squared error
// (torch.nn.MSELoss), both reduction "mean".
//
// rows:     one workgroup per row, its threads over the row's labels:
//           BCE: l = max(x, 0) - x y + log(1 + exp(-|x|))   (never exp of a positive number);
//                a label is missed when (x > 0) != (y > 0.5), sigmoid(x) > 0.5 being x > 0;
//           MSE: l = (x - y)^2, nothing is missed or right (correct stays 0);
//           row_stats[r] = (sum_c l, 1 when the row is BCE and no label is missed, else 0).
// finish:   one workgroup, both sums in one reduction:
//           loss = (sum_r row_loss / (rows labels), rows, sum_r correct_r, 0).
// backward: dlogits[r, c] = grad_scale * loss_scale[0] / (rows labels) * g, with
//           BCE g = sigmoid(x) - y, MSE g = 2 (x - y) (loss_scale: mixed precision's dynamic
//           loss scale, 1 without). Elementwise: it needs nothing from the forward pass.
// The sums run in a fixed order, so the loss is the same every run.
// logits and dlogits are T (f32, or f16 in the f16 variant); targets, the statistics, the
// loss and all arithmetic are f32.

alias T = f32;

struct Params {
    rows: u32,
    labels: u32,
    // 0: binary cross-entropy with logits, 1: mean squared error.
    kind: u32,
    grad_scale: f32,
}

const BCE: u32 = 0u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<T>;
@group(0) @binding(2) var<storage, read> targets: array<f32>;
@group(0) @binding(3) var<storage, read_write> row_stats: array<f32>;
@group(0) @binding(4) var<storage, read_write> loss: array<f32>;
@group(0) @binding(5) var<storage, read_write> dlogits: array<T>;
@group(0) @binding(6) var<storage, read> loss_scale: array<f32>;

// Threads per row (rows, a power of two matched to the row length by the host) or per
// workgroup (finish, backward: 256).
override WG: u32 = 256u;

// log(1 + u) for u in [0, 1], to f32's relative accuracy also where u is tiny (WGSL has no
// log1p, and log(1 + u) loses u below f32's epsilon): 2 atanh(s) with s = u / (2 + u) in
// [0, 1/3], its odd series to s^17 (the next term is under 2e-9 of the sum).
fn log1p_unit(u: f32) -> f32 {
    let s = u / (2.0 + u);
    let z = s * s;
    var poly = 1.0 / 17.0;
    poly = poly * z + 1.0 / 15.0;
    poly = poly * z + 1.0 / 13.0;
    poly = poly * z + 1.0 / 11.0;
    poly = poly * z + 1.0 / 9.0;
    poly = poly * z + 1.0 / 7.0;
    poly = poly * z + 1.0 / 5.0;
    poly = poly * z + 1.0 / 3.0;
    poly = poly * z + 1.0;
    return 2.0 * s * poly;
}

@compute @workgroup_size(WG)
fn rows(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.labels;
    var l = 0.0;
    var missed = 0.0;
    for (var c = li; c < p.labels; c += WG) {
        let x = f32(logits[base + c]);
        let y = targets[base + c];
        if (p.kind == BCE) {
            l += max(x, 0.0) - x * y + log1p_unit(exp(-abs(x)));
            missed += select(0.0, 1.0, (x > 0.0) != (y > 0.5));
        } else {
            let d = x - y;
            l += d * d;
        }
    }
    let sums = row_reduce(ROW_SUM, vec4<f32>(l, missed, 0.0, 0.0), li);
    if (li == 0u) {
        row_stats[2u * row] = sums.x;
        row_stats[2u * row + 1u] = select(0.0, 1.0, p.kind == BCE && sums.y == 0.0);
    }
}

@compute @workgroup_size(WG)
fn finish(@builtin(local_invocation_index) li: u32) {
    var s = 0.0;
    var hits = 0.0;
    for (var r = li; r < p.rows; r += WG) {
        s += row_stats[2u * r];
        hits += row_stats[2u * r + 1u];
    }
    let sums = row_reduce(ROW_SUM, vec4<f32>(s, hits, 0.0, 0.0), li);
    if (li == 0u) {
        loss[0] = sums.x / (f32(p.rows) * f32(p.labels));
        loss[1] = f32(p.rows);
        loss[2] = sums.y;
        loss[3] = 0.0;
    }
}

@compute @workgroup_size(WG)
fn backward(@builtin(workgroup_id) wid: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) li: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + li;
    if (i >= p.rows * p.labels) {
        return;
    }
    let x = f32(logits[i]);
    let y = targets[i];
    var g: f32;
    if (p.kind == BCE) {
        let u = exp(-abs(x));
        g = select(u / (1.0 + u), 1.0 / (1.0 + u), x >= 0.0) - y;
    } else {
        g = 2.0 * (x - y);
    }
    let scale = p.grad_scale * loss_scale[0] / (f32(p.rows) * f32(p.labels));
    dlogits[i] = T(scale * g);
}
