//! An application that owns its wgpu device and uses the library as a guest on it: it opens
//! the device itself, hands it over (`Context::from_device`), and then runs an event loop
//! that does GPU work of its own every frame (a compute pass moving particles) while
//! inference requests go out and come back asynchronously (`Encoder::run` +
//! `Pending::try_take`); nothing in the loop waits for the GPU.
//!
//!     cargo run --release --example embed_app [-- CONFIG.json WEIGHTS.safetensors]
//!
//! By default it loads the small masked-LM fixture. It prints each result as it arrives and
//! checks, at the end, that the app's own work computed what it should.

use roformer_lab::args;

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};

use clap::Parser;
use roformer_wgpu::model::{Encoder, EncoderOptions, Request, Sequence, Want};
use roformer_wgpu::readback::Pending;
use roformer_wgpu::wgpu;
use roformer_wgpu::Context;

/// The app's own kernel: every particle moves by its velocity.
const PARTICLES: &str = "
@group(0) @binding(0) var<storage, read_write> position: array<f32>;
@group(0) @binding(1) var<storage, read> velocity: array<f32>;
@compute @workgroup_size(64)
fn step(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x < arrayLength(&position)) { position[id.x] += velocity[id.x]; }
}";

type LostHook = Box<dyn Fn(&str) + Send + Sync>;

/// An app that owns its wgpu device runs inference as a guest on it, asynchronously, while
/// doing GPU work of its own every frame.
#[derive(Parser)]
#[command(name = "embed_app")]
struct Cli {
    /// A masked-LM model's config.json [default: the small fixture's].
    #[arg(requires = "weights")]
    config: Option<String>,
    /// Its weights.
    weights: Option<String>,
}

fn main() -> std::process::ExitCode {
    args::exit_code(run(args::parse_args()))
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let config = cli
        .config
        .unwrap_or_else(|| format!("{fixtures}/roformer_tiny_mlm.config.json"));
    let weights = cli
        .weights
        .unwrap_or_else(|| format!("{fixtures}/roformer_tiny_mlm.safetensors"));

    // The app opens its device as it would for rendering.
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        ..Default::default()
    }))?;
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("app"),
        required_limits: adapter.limits(),
        ..Default::default()
    }))?;
    println!(
        "app device: {} ({:?})",
        adapter.get_info().name,
        adapter.get_info().backend
    );
    // Its own device-lost callback, which also tells the library.
    let hook: Arc<OnceLock<LostHook>> = Arc::default();
    let forward = hook.clone();
    device.set_device_lost_callback(move |reason, message| {
        eprintln!("app: device lost ({reason:?}: {message})");
        if let Some(h) = forward.get() {
            h(message.as_str());
        }
    });

    // The library, as a guest.
    let ctx = Context::from_device(&adapter, device.clone(), queue.clone());
    let _ = hook.set(Box::new(ctx.device_lost_hook()));
    let encoder = Encoder::from_pretrained(&ctx, &config, &weights, EncoderOptions::default())?;
    let vocab = encoder.config().vocab_size as u32;

    // The app's own GPU state and pipeline.
    let n = 4096usize;
    let storage = |data: &[f32], label| {
        let b = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (data.len() * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        queue.write_buffer(&b, 0, bytemuck::cast_slice(data));
        b
    };
    let position = storage(&vec![0.0; n], "position");
    let velocity: Vec<f32> = (0..n).map(|i| (i % 7) as f32 * 0.25).collect();
    let velocity_buf = storage(&velocity, "velocity");
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("particles"),
        source: wgpu::ShaderSource::Wgsl(PARTICLES.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("particles"),
        layout: None,
        module: &module,
        entry_point: Some("step"),
        compilation_options: Default::default(),
        cache: None,
    });
    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: position.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: velocity_buf.as_entire_binding(),
            },
        ],
    });

    // The event loop: app work every frame, a request every fourth frame, results as they
    // arrive.
    let frames = 40;
    let mut in_flight: VecDeque<(usize, Pending<roformer_wgpu::model::Results>)> = VecDeque::new();
    let (mut sent, mut received) = (0, 0);
    for frame in 0..frames {
        let mut encoder_cmds = device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder_cmds.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(n.div_ceil(64) as u32, 1, 1);
        }
        queue.submit([encoder_cmds.finish()]);

        if frame % 4 == 0 {
            let ids: Vec<u32> = (0..5 + frame % 9)
                .map(|i| (7 * i as u32 + frame as u32) % (vocab - 1) + 1)
                .collect();
            let request = Request::new(vec![Sequence::new(ids)], Want::logits());
            in_flight.push_back((frame, encoder.run(&ctx, &request)?));
            sent += 1;
        }
        // The app polls its device once per frame; results that have arrived are taken.
        let _ = device.poll(wgpu::PollType::Poll);
        while let Some((asked, mut pending)) = in_flight.pop_front() {
            match pending.try_take() {
                Some(result) => {
                    let logits = result?;
                    let first = &logits.logits(0)?.data[..vocab as usize];
                    let best = (0..first.len())
                        .max_by(|&a, &b| first[a].total_cmp(&first[b]))
                        .unwrap_or(0);
                    println!(
                        "frame {frame:>2}: request of frame {asked} back, token 0 predicts {best}"
                    );
                    received += 1;
                }
                None => {
                    in_flight.push_front((asked, pending));
                    break;
                }
            }
        }
    }
    // Shutting down: the last results.
    for (asked, pending) in in_flight {
        let logits = pending.wait(&ctx)?;
        println!(
            "end: request of frame {asked} back ({} logits)",
            logits.logits(0)?.data.len()
        );
        received += 1;
    }

    // The app's own work, read back its own way.
    let readback = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("readback"),
        size: (n * 4) as u64,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut copy = device.create_command_encoder(&Default::default());
    copy.copy_buffer_to_buffer(&position, 0, &readback, 0, (n * 4) as u64);
    queue.submit([copy.finish()]);
    readback
        .slice(..)
        .map_async(wgpu::MapMode::Read, |r| r.expect("map"));
    device.poll(wgpu::PollType::wait_indefinitely())?;
    let moved: Vec<f32> = bytemuck::pod_collect_to_vec(&readback.slice(..).get_mapped_range()?);
    let right = moved
        .iter()
        .zip(&velocity)
        .all(|(p, v)| *p == v * frames as f32);
    println!(
        "app: {frames} frames of its own compute work, particles {}; library: {received} of {sent} requests answered",
        if right { "where they should be" } else { "WRONG" }
    );
    if !right || received != sent {
        return Err("the app's work or the library's requests did not finish right".into());
    }
    Ok(())
}
