// Embedding lookup and its gradient.
//
// forward:  out[r, c] = (accumulate ? out[r, c] : 0) + table[ids[r], c]
//   `accumulate` lets word and token-type embeddings add up in one buffer.
// backward: dtable[tok, c] += sum over positions q with ids[q] == tok of dout[q, c]
//   The host sorts the positions by token (TokenIds) and cuts each token's run into pieces
//   of at most PIECE positions. A workgroup sums one piece for 64 columns (workgroup z picks
//   them): a token of one piece adds into its row directly; the pieces of a longer run (a
//   frequent token, or every token type) each write a row of `partial`, and backward_merge
//   adds those up per token, in order. No float atomics: the same result every run, and
//   no serial walk over the whole batch.
//   groups = [pieces, merges,
//             (tok, start, end, slot) per piece      (slot NONE: straight into dtable),
//             ... padded to max_pieces = rows + rows / PIECE + 1,
//             (tok, first slot, end slot) per merge]
//   with positions[start .. end] the piece's positions. Workgroups past the counts return
//   at once, so one dispatch size serves every batch.
// Token ids are validated on the host; the `tok < vocab` tests only keep a bad id from
// touching memory outside the table.
// The table, out and dout are T, dtable Out (f32 or f16 each: a variant each); sums and
// the partial sums are f32.

alias T = f32;
alias Out = f32;

const PIECE: u32 = 64u;
const NONE: u32 = 0xffffffffu;

struct Params {
    rows: u32,
    cols: u32,
    vocab: u32,
    accumulate: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// forward: out from ids and table.
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> table: array<T>;
@group(0) @binding(3) var<storage, read_write> out: array<T>;
// backward: dtable from dout, the positions grouped by token (see above).
@group(0) @binding(4) var<storage, read> groups: array<u32>;
@group(0) @binding(5) var<storage, read> positions: array<u32>;
@group(0) @binding(6) var<storage, read> dout: array<T>;
@group(0) @binding(7) var<storage, read_write> dtable: array<Out>;
@group(0) @binding(8) var<storage, read_write> partial: array<f32>;

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
        v = f32(table[tok * p.cols + c]);
    }
    if (p.accumulate != 0u) {
        v += f32(out[i]);
    }
    out[i] = T(v);
}

@compute @workgroup_size(64)
fn backward(@builtin(workgroup_id) wid: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_id) lid: vec3<u32>) {
    let g = wid.x + wid.y * nwg.x;
    if (g >= groups[0]) {
        return;
    }
    let at = 2u + 4u * g;
    let tok = groups[at];
    let start = groups[at + 1u];
    let end = groups[at + 2u];
    let slot = groups[at + 3u];
    let c = wid.z * 64u + lid.x;
    if (tok >= p.vocab || c >= p.cols) {
        return;
    }
    var s = 0.0;
    for (var q = start; q < end; q++) {
        s += f32(dout[positions[q] * p.cols + c]);
    }
    if (slot == NONE) {
        dtable[tok * p.cols + c] = Out(f32(dtable[tok * p.cols + c]) + (s));
    } else {
        partial[slot * p.cols + c] = s;
    }
}

@compute @workgroup_size(64)
fn backward_merge(@builtin(workgroup_id) wid: vec3<u32>,
                  @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_id) lid: vec3<u32>) {
    let m = wid.x + wid.y * nwg.x;
    if (m >= groups[1]) {
        return;
    }
    let at = 2u + 4u * (p.rows + p.rows / PIECE + 1u) + 3u * m;
    let tok = groups[at];
    let first = groups[at + 1u];
    let end = groups[at + 2u];
    let c = wid.z * 64u + lid.x;
    if (tok >= p.vocab || c >= p.cols) {
        return;
    }
    var s = 0.0;
    for (var k = first; k < end; k++) {
        s += partial[k * p.cols + c];
    }
    dtable[tok * p.cols + c] = Out(f32(dtable[tok * p.cols + c]) + (s));
}
