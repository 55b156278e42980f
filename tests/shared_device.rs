//! The library as a guest on an application's device (`Context::from_device`): it leaves the
//! app's device-lost callback in place (the app forwards the loss through the library's
//! hook), submits nothing before the first request, chooses matmul tilings without timing
//! them on the app's queue, and on a device with WebGPU's default limits it runs what fits
//! and refuses the rest with an error naming the limit.

mod common;

use std::sync::{Arc, Mutex, OnceLock};

use common::*;
use roformer_wgpu::model::{
    Encoder, EncoderOptions, Head, Request, RoFormerConfig, Sequence, Want,
};
use roformer_wgpu::ops::attention::flash::{self, FlashKernels};
use roformer_wgpu::ops::matmul::{self, TilingChoice};
use roformer_wgpu::wgpu;
use roformer_wgpu::{Context, Error};

/// The library's device-lost hook, as the app's callback holds it.
type LostHook = Box<dyn Fn(&str) + Send + Sync>;

/// A device as an application would open it, on the adapter the tests' context uses, with
/// `limits` (the adapter's own when `None`).
fn app_device(
    library: &Context,
    limits: Option<wgpu::Limits>,
) -> (wgpu::Adapter, wgpu::Device, wgpu::Queue) {
    let caps = library.capabilities();
    let backends = wgpu::Backends::from(caps.backend);
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    // As an app should: WGPU_DEBUG / WGPU_VALIDATION apply (CI's validation run sets them).
    desc.flags = wgpu::InstanceFlags::from_env_or_default();
    let instance = wgpu::Instance::new(desc);
    let adapter = pollster::block_on(instance.enumerate_adapters(backends))
        .into_iter()
        .find(|a| a.get_info().name == caps.adapter_name)
        .expect("the tests' adapter");
    let required_limits = limits.unwrap_or_else(|| adapter.limits());
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("the app's device"),
        required_limits,
        ..Default::default()
    }))
    .unwrap();
    (adapter, device, queue)
}

/// The number of the app's next submission (an empty one), from `SubmissionIndex`'s debug
/// form: consecutive numbers mean nobody submitted in between.
fn submit_nothing(queue: &wgpu::Queue) -> u64 {
    let index = format!("{:?}", queue.submit([]));
    index
        .trim_start_matches("SubmissionIndex { index: ")
        .trim_end_matches(" }")
        .parse()
        .unwrap_or_else(|_| panic!("unexpected SubmissionIndex format {index}"))
}

fn tiny(name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let d = fixtures_dir();
    (
        d.join(format!("{name}.config.json")),
        d.join(format!("{name}.safetensors")),
    )
}

#[test]
fn a_guest_keeps_the_apps_callback_and_queue_until_asked() {
    let turn = ctx(); // one device at a time (GL)
    let (adapter, device, queue) = app_device(&turn, None);
    // The app's own device-lost callback, which forwards the loss to the library.
    let app_saw: Arc<Mutex<Option<String>>> = Arc::default();
    let hook: Arc<OnceLock<LostHook>> = Arc::default();
    let (saw, forward) = (app_saw.clone(), hook.clone());
    device.set_device_lost_callback(move |reason, message| {
        let why = format!("{reason:?}: {message}");
        if let Some(h) = forward.get() {
            h(&why);
        }
        *saw.lock().unwrap() = Some(why);
    });

    let before = submit_nothing(&queue);
    let ctx = Context::from_device(&adapter, device.clone(), queue.clone());
    let _ = hook.set(Box::new(ctx.device_lost_hook()));
    assert!(!ctx.owns_device());
    assert_eq!(matmul::tiling_choice(&ctx), TilingChoice::Heuristic);
    let (config, weights) = tiny("roformer_tiny_mlm");
    let encoder =
        Encoder::from_pretrained(&ctx, config, weights, EncoderOptions::default()).unwrap();
    assert_eq!(
        submit_nothing(&queue),
        before + 1,
        "the library submitted work before it was asked to run anything"
    );

    let request = Request::new(vec![Sequence::new(vec![5, 6, 7])], Want::logits());
    let r = encoder.run_blocking(&ctx, &request).unwrap();
    assert_eq!(r.logits(0).unwrap().shape, [3, 99]);
    assert_eq!(matmul::tuned_tilings(&ctx), []);

    device.destroy();
    let _ = device.poll(wgpu::PollType::wait_indefinitely());
    assert!(
        app_saw.lock().unwrap().is_some(),
        "the app's device-lost callback did not run"
    );
    let e = encoder.run(&ctx, &request).unwrap_err();
    assert!(e.to_string().contains("device lost"), "{e}");
}

#[test]
fn webgpu_default_limits_run_what_fits_and_name_the_limit_otherwise() {
    let turn = ctx();
    let adapter_limits = turn.capabilities().max_workgroup_storage;
    let defaults = wgpu::Limits::defaults();
    let (adapter, device, queue) = {
        let probe = app_device(&turn, None);
        let limits = defaults.clone().or_worse_values_from(&probe.0.limits());
        drop(probe);
        app_device(&turn, Some(limits))
    };
    let ctx = Context::from_device(&adapter, device, queue);
    assert_eq!(
        ctx.capabilities().max_workgroup_storage,
        16384.min(adapter_limits)
    );

    let (config, weights) = tiny("roformer_tiny_mlm");
    let request = Request::new(vec![Sequence::new(vec![5, 6, 7, 8, 9])], Want::logits());
    // Softmax attention (matmul + softmax) fits the defaults and gives the usual results.
    let guest =
        Encoder::from_pretrained(&ctx, &config, &weights, EncoderOptions::default()).unwrap();
    let host =
        Encoder::from_pretrained(&turn, &config, &weights, EncoderOptions::default()).unwrap();
    let (a, b) = (
        guest.run_blocking(&ctx, &request).unwrap(),
        host.run_blocking(&turn, &request).unwrap(),
    );
    let err = roformer_wgpu::check::rel_l2(&a.logits(0).unwrap().data, &b.logits(0).unwrap().data);
    assert!(err < 1e-6, "{err:e}");

    // Fused attention's tiled kernels stage more workgroup memory than the defaults allow:
    // the adapter's choice is then the row kernels (none), with softmax attention's results;
    // forced tiles name the limit.
    let mut fused = RoFormerConfig::from_file(&config).unwrap();
    fused.attention = roformer_wgpu::model::AttentionKind::FusedSoftmax;
    let fused_logits = |kernels: FlashKernels| {
        flash::set_kernels(&ctx, kernels);
        let encoder = Encoder::new(
            &ctx,
            fused.clone(),
            Head::MaskedLm,
            EncoderOptions::default(),
        )
        .unwrap();
        encoder
            .load_tensors(
                &ctx,
                &roformer_wgpu::io::read_safetensors(&weights).unwrap(),
            )
            .unwrap();
        encoder.run_blocking(&ctx, &request)
    };
    let rows = fused_logits(FlashKernels::Auto).unwrap();
    let err =
        roformer_wgpu::check::rel_l2(&rows.logits(0).unwrap().data, &b.logits(0).unwrap().data);
    assert!(err < 1e-5, "fused attention on the row kernels: {err:e}");
    match fused_logits(FlashKernels::Tiled) {
        Err(Error::OverLimit { limit_name, .. }) => {
            assert_eq!(limit_name, "max_compute_workgroup_storage_size")
        }
        other => panic!("expected OverLimit, got {other:?}"),
    }
}
