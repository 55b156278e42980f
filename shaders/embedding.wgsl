// Embedding lookup and its gradient.
//
// forward:  out[r, c] = (accumulate ? out[r, c] : 0) + table[ids[r], c]
//   `accumulate` lets word and token-type embeddings add up in one buffer.
// backward: dtable[tok, c] += sum over positions q with ids[q] == tok of dout[q, c]
//   The host groups positions by token (TokenIds), so each token's row is summed by one
//   workgroup in a fixed order: no float atomics, and the same result every run.
//   groups = [count, tok_0, start_0, tok_1, start_1, ..., tok_{count-1}, start_{count-1}, _, end]
//   with positions[start_g .. start_{g+1}] the positions of tok_g. Workgroups past `count`
//   return at once, so one dispatch size serves every batch.
// Token ids are validated on the host; the `tok < vocab` tests only keep a bad id from
// touching memory outside the table.

struct Params {
    rows: u32,
    cols: u32,
    vocab: u32,
    accumulate: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// forward: out from ids and table.
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> table: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
// backward: dtable from dout, the positions grouped by token (see above).
@group(0) @binding(4) var<storage, read> groups: array<u32>;
@group(0) @binding(5) var<storage, read> positions: array<u32>;
@group(0) @binding(6) var<storage, read> dout: array<f32>;
@group(0) @binding(7) var<storage, read_write> dtable: array<f32>;

@compute @workgroup_size(256)
fn forward(@builtin(workgroup_id) wid: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid.x;
    if (i >= p.rows * p.cols) {
        return;
    }
    let r = i / p.cols;
    let c = i % p.cols;
    let tok = ids[r];
    var v = 0.0;
    if (tok < p.vocab) {
        v = table[tok * p.cols + c];
    }
    if (p.accumulate != 0u) {
        v += out[i];
    }
    out[i] = v;
}

@compute @workgroup_size(64)
fn backward(@builtin(workgroup_id) wid: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_id) lid: vec3<u32>) {
    let g = wid.x + wid.y * nwg.x;
    if (g >= groups[0]) {
        return;
    }
    let tok = groups[1u + 2u * g];
    let start = groups[2u + 2u * g];
    let end = groups[4u + 2u * g];
    if (tok >= p.vocab) {
        return;
    }
    for (var c = lid.x; c < p.cols; c += 64u) {
        var s = 0.0;
        for (var q = start; q < end; q++) {
            s += dout[positions[q] * p.cols + c];
        }
        dtable[tok * p.cols + c] += s;
    }
}
