//! GPU faults reach the caller as errors: a validation error raised outside the library's
//! error scopes (on a device it opened), and a lost device.

use roformer_wgpu::ops::elementwise;
use roformer_wgpu::{Context, DType, Error, Tensor};

#[test]
fn an_uncaptured_validation_error_is_reported_not_a_panic() {
    let ctx = Context::new().unwrap();
    // Invalid usage (MAP_READ with STORAGE), made directly on the device, outside any scope.
    let _bad = ctx
        .device()
        .create_buffer(&roformer_wgpu::wgpu::BufferDescriptor {
            label: Some("invalid"),
            size: 64,
            usage: roformer_wgpu::wgpu::BufferUsages::MAP_READ
                | roformer_wgpu::wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
    let e = ctx.check_health("test").unwrap_err();
    assert!(matches!(e, Error::Gpu { .. }), "{e}");
    assert!(e.to_string().to_lowercase().contains("usage"), "{e}");
    // Reported once; the context keeps working afterwards.
    ctx.check_health("test").unwrap();
    let t = Tensor::full(&ctx, &[5], 2.0).unwrap();
    assert_eq!(t.to_vec::<f32>(&ctx).unwrap(), vec![2.0; 5]);
}

/// Device loss is asynchronous (wgpu reports it when the device is next polled): the next
/// sync point returns the error, and every operation after it fails too.
#[test]
fn a_lost_device_gives_errors_from_then_on() {
    let ctx = Context::new().unwrap();
    let t = Tensor::zeros(&ctx, &[8], DType::F32).unwrap();
    ctx.device().destroy();
    let e = ctx.wait(None).unwrap_err();
    assert!(e.to_string().contains("device lost"), "{e}");
    let failures = [
        Tensor::zeros(&ctx, &[8], DType::F32).err(),
        elementwise::fill(&ctx, &t, 1.0).err(),
        t.to_vec::<f32>(&ctx).err(),
        ctx.wait(None).err(),
    ];
    for (i, f) in failures.iter().enumerate() {
        let e = f
            .as_ref()
            .unwrap_or_else(|| panic!("operation {i} succeeded on a destroyed device"));
        assert!(matches!(e, Error::Gpu { .. }), "operation {i}: {e}");
    }
}
