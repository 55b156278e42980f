//! Submitting dispatches, and waiting for them (native only: a browser's thread never
//! blocks).

#[cfg(not(target_arch = "wasm32"))]
use std::time::Duration;

use super::Context;
use crate::dispatch::Dispatch;
#[cfg(not(target_arch = "wasm32"))]
use crate::error::Error;
use crate::error::Result;

impl Context {
    /// Encodes `dispatches` into one compute pass and submits it. Does not wait.
    pub fn submit(&self, dispatches: &[Dispatch]) -> Result<wgpu::SubmissionIndex> {
        self.refuse_if_plan_only("submit")?;
        self.scoped("submit", || {
            let mut encoder = self
                .device()
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
                for d in dispatches {
                    d.encode(&mut pass);
                }
            }
            self.queue().submit([encoder.finish()])
        })
    }

    /// Submits `dispatches` and waits for them (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn run(&self, dispatches: &[Dispatch]) -> Result<()> {
        let index = self.submit(dispatches)?;
        self.wait(Some(index))
    }

    /// Blocks until `index` (or all work, with `None`) has finished on the GPU,
    /// at most the context's wait timeout (native only: a browser's device cannot be waited
    /// for, only awaited through a [`crate::readback::Pending`]).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn wait(&self, index: Option<wgpu::SubmissionIndex>) -> Result<()> {
        let r = self.device.poll(wgpu::PollType::Wait {
            submission_index: index,
            timeout: self.wait_timeout,
        });
        match r {
            Ok(_) => self.check_health("wait"),
            Err(wgpu::PollError::Timeout) => {
                Err(Error::Timeout(self.wait_timeout.unwrap_or(Duration::MAX)))
            }
            Err(e) => Err(Error::Gpu {
                during: "wait",
                message: e.to_string(),
            }),
        }
    }

    /// Runs a future of this library's (a read-back, a pipeline) to its end on this thread,
    /// sleeping in the device's own wait while the GPU works: the executor of the blocking
    /// wrappers (native only). On a device an app handed over, that wait also covers the
    /// app's own submitted work; an app that must not wait for it awaits the futures from its
    /// own loop instead.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn block_on<T>(&self, future: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        let mut future = std::pin::pin!(future);
        let mut task = std::task::Context::from_waker(std::task::Waker::noop());
        loop {
            if let std::task::Poll::Ready(out) = future.as_mut().poll(&mut task) {
                return out;
            }
            self.wait(None)?;
        }
    }
}
