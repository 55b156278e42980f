// Softmax cross-entropy over rows of logits, with an ignore index; the loss is the mean over
// the rows that are not ignored (torch.nn.CrossEntropyLoss, reduction "mean").
//
// rows:     lse[r] = log sum_c exp(logits[r, c]) (max subtracted first; maximum, first argmax
//           and sum come from one pass and one reduction, the sum rescaled whenever the
//           running maximum grows, as in an online softmax);
//           loss_r = lse[r] - logits[r, label[r]], or 0 when label[r] == ignore_index;
//           correct_r = 1 when argmax_c logits[r, c] == label[r] (first maximum, as torch.argmax).
//           row_stats[r] = (lse, loss_r, correct_r)
// finish:   one workgroup, the three sums in one reduction:
//           loss = (sum_r loss_r / count, count, sum_r correct_r, 0)
//           (count = rows not ignored; the mean is NaN when it is 0, as torch gives).
// backward: dlogits[r, c] = grad_scale * loss_scale[0] / count
//                           * (exp(logits[r, c] - lse[r]) - [c == label[r]]),
//           0 on ignored rows (loss_scale: mixed precision's dynamic loss scale, 1 without).
// The sums over rows run in a fixed order, so the loss is the same every run.
// logits and dlogits are T (f32, or f16 in the f16 variant); the statistics, the loss and
// all arithmetic are f32.

alias T = f32;

struct Params {
    rows: u32,
    classes: u32,
    ignore_index: i32,
    grad_scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<T>;
@group(0) @binding(2) var<storage, read> labels: array<i32>;
@group(0) @binding(3) var<storage, read_write> row_stats: array<f32>;
@group(0) @binding(4) var<storage, read_write> loss: array<f32>;
@group(0) @binding(5) var<storage, read_write> dlogits: array<T>;
@group(0) @binding(6) var<storage, read> loss_scale: array<f32>;

// Threads per row: a power of two from 32 to 256 matched to the row length (set by the
// host), so short rows do not pay for idle threads at every barrier.
override WG: u32 = 256u;

@compute @workgroup_size(WG)
fn rows(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.classes;
    var part = ROW_EMPTY_MAX_SUM;
    for (var c = li; c < p.classes; c += WG) {
        part = row_max_sum_extend(part, f32(logits[base + c]), c);
    }
    part = row_reduce(ROW_MAX_SUM, part, li);
    let arg = u32(part.z);
    let lse = part.x + log(part.y);
    if (li == 0u) {
        let label = labels[row];
        var l = 0.0;
        var correct = 0.0;
        if (label != p.ignore_index) {
            l = lse - f32(logits[base + u32(label)]);
            correct = select(0.0, 1.0, arg == u32(label));
        }
        row_stats[3u * row] = lse;
        row_stats[3u * row + 1u] = l;
        row_stats[3u * row + 2u] = correct;
    }
}

@compute @workgroup_size(WG)
fn finish(@builtin(local_invocation_index) li: u32) {
    var s = 0.0;
    var n = 0.0;
    var hits = 0.0;
    for (var r = li; r < p.rows; r += WG) {
        s += row_stats[3u * r + 1u];
        n += select(0.0, 1.0, labels[r] != p.ignore_index);
        hits += row_stats[3u * r + 2u];
    }
    let sums = row_reduce(ROW_SUM, vec4<f32>(s, n, hits, 0.0), li);
    if (li == 0u) {
        let total = sums.x;
        let count = sums.y;
        let correct = sums.z;
        // No labelled row: NaN, as PyTorch's mean over nothing. Built from `count` (0 here)
        // because a constant NaN is a shader-creation error in WGSL (Chromium's Tint
        // enforces it).
        let nan = bitcast<f32>(0x7fc00000u | u32(count));
        loss[0] = select(nan, total / count, count > 0.0);
        loss[1] = count;
        loss[2] = correct;
        loss[3] = 0.0;
    }
}

@compute @workgroup_size(WG)
fn backward(@builtin(workgroup_id) wid: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) li: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.classes;
    let label = labels[row];
    let count = loss[1];
    let lse = row_stats[3u * row];
    var scale = 0.0;
    if (label != p.ignore_index && count > 0.0) {
        scale = p.grad_scale * loss_scale[0] / count;
    }
    for (var c = li; c < p.classes; c += WG) {
        var g = exp(f32(logits[base + c]) - lse);
        if (i32(c) == label) {
            g -= 1.0;
        }
        dlogits[base + c] = T(scale * g);
    }
}
