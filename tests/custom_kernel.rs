//! A kernel of one's own as a graph stage (`Graph::custom_with_backward`): a WGSL square
//! between an embedding and a linear layer, trained through. The loss and every gradient
//! match an f64 CPU computation of the same small model; a stage without a backward rule
//! on the gradient's path is an error naming it.

mod common;

use common::*;
use roformer_wgpu::check::rel_l2;
use roformer_wgpu::graph::{CustomGrads, Graph};
use roformer_wgpu::io::{HostTensor, HostTensors};
use roformer_wgpu::ops::cross_entropy::{Labels, IGNORE_INDEX};
use roformer_wgpu::ops::embedding::TokenIds;
use roformer_wgpu::params::ParamStore;
use roformer_wgpu::{Context, Dispatch, DispatchBuilder, Error, Shader, Tensor};

/// `y = x²` and its backward `dx = 2 x dy`, elementwise.
static SQUARE: Shader = Shader {
    name: "square",
    source: "
struct Params { n: u32, _p0: u32, _p1: u32, _p2: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> dx: array<f32>;

@compute @workgroup_size(64)
fn forward(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x < p.n) { y[id.x] = x[id.x] * x[id.x]; }
}

@compute @workgroup_size(64)
fn backward(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x < p.n) { dx[id.x] = 2.0 * x[id.x] * dy[id.x]; }
}
",
};

fn square(ctx: &Context, inputs: &[&Tensor], y: &Tensor) -> roformer_wgpu::Result<Vec<Dispatch>> {
    let n = y.numel() as u32;
    Ok(vec![DispatchBuilder::new(ctx, &SQUARE, "forward")
        .params(&[n, 0, 0, 0])
        .read("x", inputs[0])
        .write("y", y)
        .build([n.div_ceil(64), 1, 1])?])
}

fn square_backward(ctx: &Context, g: &CustomGrads<'_>) -> roformer_wgpu::Result<Vec<Dispatch>> {
    let Some(dx) = g.grad_inputs[0] else {
        return Ok(Vec::new());
    };
    let n = dx.numel() as u32;
    Ok(vec![DispatchBuilder::new(ctx, &SQUARE, "backward")
        .params(&[n, 0, 0, 0])
        .read("x", g.inputs[0])
        .read("dy", g.grad_output)
        .write("dx", dx)
        .build([n.div_ceil(64), 1, 1])?])
}

const N: usize = 33; // tokens
const V: usize = 13; // vocabulary
const D: usize = 7; // embedding width
const C: usize = 5; // classes

/// The model's loss and the gradients of the table and the weight, in f64.
fn reference(table: &[f32], w: &[f32], ids: &[u32], labels: &[i32]) -> (f64, Vec<f64>, Vec<f64>) {
    let (mut loss, mut count) = (0.0, 0.0);
    let (mut dtable, mut dw) = (vec![0.0; V * D], vec![0.0; C * D]);
    let mut dlogits = vec![[0.0; C]; N];
    let mut s = vec![[0.0; D]; N];
    for r in 0..N {
        let e = &table[ids[r] as usize * D..][..D];
        for j in 0..D {
            s[r][j] = (e[j] as f64).powi(2);
        }
        if labels[r] == IGNORE_INDEX {
            continue;
        }
        let logits: Vec<f64> = (0..C)
            .map(|c| (0..D).map(|j| s[r][j] * w[c * D + j] as f64).sum())
            .collect();
        let max = logits.iter().cloned().fold(f64::MIN, f64::max);
        let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
        loss += lse - logits[labels[r] as usize];
        count += 1.0;
        for c in 0..C {
            dlogits[r][c] = (logits[c] - lse).exp() - f64::from(c as i32 == labels[r]);
        }
    }
    for r in 0..N {
        let e = &table[ids[r] as usize * D..][..D];
        for c in 0..C {
            let g = dlogits[r][c] / count;
            for j in 0..D {
                dw[c * D + j] += g * s[r][j];
                // d s / d e = 2 e
                dtable[ids[r] as usize * D + j] += g * w[c * D + j] as f64 * 2.0 * e[j] as f64;
            }
        }
    }
    (loss / count, dtable, dw)
}

/// The store, ids and labels of the test model, with the graph up to the square stage.
fn model(ctx: &Context) -> (ParamStore, Vec<f32>, Vec<f32>, Vec<u32>, Vec<i32>) {
    let store = ParamStore::new(
        ctx,
        &[("table".into(), vec![V, D]), ("w".into(), vec![C, D])],
    )
    .unwrap();
    let table: Vec<f32> = (0..V * D)
        .map(|i| ((i * 37 % 23) as f32 - 11.0) / 9.0)
        .collect();
    let w: Vec<f32> = (0..C * D)
        .map(|i| ((i * 29 % 17) as f32 - 8.0) / 7.0)
        .collect();
    let mut tensors = HostTensors::new();
    tensors.insert("table".into(), HostTensor::f32(&[V, D], table.clone()));
    tensors.insert("w".into(), HostTensor::f32(&[C, D], w.clone()));
    store.load(ctx, &tensors).unwrap();
    let ids: Vec<u32> = (0..N).map(|i| (i * 5 % V) as u32).collect();
    let labels: Vec<i32> = (0..N)
        .map(|i| {
            if i % 4 == 3 {
                IGNORE_INDEX
            } else {
                (i % C) as i32
            }
        })
        .collect();
    (store, table, w, ids, labels)
}

#[test]
fn a_custom_stage_trains_like_the_cpu_model() {
    let ctx = &ctx();
    let (store, table, w, ids, labels) = model(ctx);
    let token_ids = TokenIds::new(ctx, &ids, &[N], V).unwrap();
    let label_ids = Labels::new(ctx, &labels, &[N], C, IGNORE_INDEX).unwrap();
    let mut g = Graph::new();
    let t = g.param(&store, "table").unwrap();
    let e = g.embedding("embed", t, &token_ids).unwrap();
    let s = g
        .custom_with_backward("square", &[e], &[N, D], square, square_backward)
        .unwrap();
    let wt = g.param(&store, "w").unwrap();
    let logits = g.linear("out", s, wt, None).unwrap();
    let loss = g.cross_entropy("loss", logits, &label_ids).unwrap();
    g.keep(loss);
    g.backward(loss).unwrap();
    let plan = g.plan(ctx, &store, true).unwrap();
    plan.fill_pool(ctx, f32::NAN).unwrap();
    ctx.run(plan.dispatches()).unwrap();

    let (want_loss, want_dtable, want_dw) = reference(&table, &w, &ids, &labels);
    let got_loss = plan.tensor(loss).unwrap().to_vec::<f32>(ctx).unwrap()[0];
    assert!(
        ((got_loss as f64 - want_loss) / want_loss).abs() < 1e-5,
        "loss {got_loss} vs {want_loss}"
    );
    let grads = store.download_grads(ctx).unwrap();
    for (name, want) in [("table", &want_dtable), ("w", &want_dw)] {
        let (_, _, got) = grads.iter().find(|(n, _, _)| n == name).unwrap();
        let err = rel_l2(got, want);
        assert!(err < 1e-5, "grad {name}: relative L2 {err:.2e}");
    }
}

#[test]
fn a_gradient_through_a_stage_without_backward_is_an_error() {
    let ctx = &ctx();
    let (store, _, _, ids, labels) = model(ctx);
    let token_ids = TokenIds::new(ctx, &ids, &[N], V).unwrap();
    let label_ids = Labels::new(ctx, &labels, &[N], C, IGNORE_INDEX).unwrap();
    let mut g = Graph::new();
    let t = g.param(&store, "table").unwrap();
    let e = g.embedding("embed", t, &token_ids).unwrap();
    let s = g.custom("my square", &[e], &[N, D], square).unwrap();
    let wt = g.param(&store, "w").unwrap();
    let logits = g.linear("out", s, wt, None).unwrap();
    let loss = g.cross_entropy("loss", logits, &label_ids).unwrap();
    match g.backward(loss) {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("my square"), "{m}"),
        other => panic!("expected an error naming the stage, got {other:?}"),
    }
    // Forward only, it plans and runs.
    let mut g = Graph::new();
    let t = g.param(&store, "table").unwrap();
    let e = g.embedding("embed", t, &token_ids).unwrap();
    let s = g.custom("my square", &[e], &[N, D], square).unwrap();
    g.keep(s);
    let plan = g.plan(ctx, &store, false).unwrap();
    ctx.run(plan.dispatches()).unwrap();
    let got = plan.tensor(s).unwrap().to_vec::<f32>(ctx).unwrap();
    let (_, table, ..) = model(ctx);
    let want: Vec<f64> = ids
        .iter()
        .flat_map(|&i| {
            table[i as usize * D..][..D]
                .iter()
                .map(|&v| (v as f64).powi(2))
        })
        .collect();
    assert!(rel_l2(&got, &want) < 1e-6);
}
