//! Reading results back without blocking. A submission copies what is wanted into a
//! mappable buffer; a [`Pending`] maps it (`map_async`) and resolves once the GPU has
//! finished and the bytes are on the host.
//!
//! Three ways to wait: `.await` it (it is a [`Future`]), check it from an event loop with
//! [`Pending::try_take`], or block with [`Pending::wait`] (scripts). On native wgpu a mapping
//! completes only inside `Device::poll`: `try_take` and the future poll the device without
//! waiting, and the future asks its executor to poll it again, so an executor that has
//! nothing else to do spins on it; an app that polls its device itself each frame can use
//! `try_take`. In a browser the device makes progress on its own and the future is woken.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, Waker};

use crate::context::{Context, ScopeFuture};
use crate::error::{Error, Result};

/// Turns the mapped bytes into the result.
type Finish<T> = Box<dyn FnOnce(&[u8]) -> Result<T> + Send>;

/// The mapping's outcome, and who to wake when it arrives.
#[derive(Default)]
struct MapState {
    done: Option<std::result::Result<(), wgpu::BufferAsyncError>>,
    waker: Option<Waker>,
}

/// A result on its way back from the GPU. See the module documentation.
#[must_use = "a pending result does nothing unless waited for"]
pub struct Pending<T> {
    device: wgpu::Device,
    buffer: wgpu::Buffer,
    index: wgpu::SubmissionIndex,
    state: Arc<Mutex<MapState>>,
    /// The error scopes around the work, until they have answered.
    scopes: Option<ScopeFuture>,
    finish: Option<Finish<T>>,
}

impl<T> std::fmt::Debug for Pending<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("submission", &self.index)
            .field("taken", &self.finish.is_none())
            .finish_non_exhaustive()
    }
}

impl<T> Pending<T> {
    /// Maps `buffer` (`MAP_READ`, written by submission `index`, whose error `scopes` it
    /// checks first) and will hand its bytes to `finish`.
    pub(crate) fn new(
        ctx: &Context,
        buffer: wgpu::Buffer,
        index: wgpu::SubmissionIndex,
        scopes: ScopeFuture,
        finish: impl FnOnce(&[u8]) -> Result<T> + Send + 'static,
    ) -> Pending<T> {
        let state: Arc<Mutex<MapState>> = Arc::default();
        let sink = state.clone();
        buffer.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let mut s = sink.lock().unwrap();
            s.done = Some(r);
            if let Some(w) = s.waker.take() {
                w.wake();
            }
        });
        Pending {
            device: ctx.device().clone(),
            buffer,
            index,
            state,
            scopes: Some(scopes),
            finish: Some(Box::new(finish)),
        }
    }

    /// The result if it has arrived, without waiting (polls the device without blocking);
    /// `None` while it is on its way, and after it was taken.
    pub fn try_take(&mut self) -> Option<Result<T>> {
        self.finish.as_ref()?;
        if let Some(scopes) = &mut self.scopes {
            // Native error scopes answer at once; a browser's when it gets to them.
            match scopes
                .as_mut()
                .poll(&mut TaskContext::from_waker(Waker::noop()))
            {
                Poll::Pending => return None,
                Poll::Ready(Some(message)) => {
                    self.finish = None;
                    return Some(Err(Error::Gpu {
                        during: "a request",
                        message,
                    }));
                }
                Poll::Ready(None) => self.scopes = None,
            }
        }
        let mut done = self.state.lock().unwrap().done.take();
        if done.is_none() {
            // Native wgpu runs mapping callbacks inside poll; this one never waits.
            let _ = self.device.poll(wgpu::PollType::Poll);
            done = self.state.lock().unwrap().done.take();
        }
        let done = done?;
        let finish = self.finish.take()?;
        Some(self.read(done, finish))
    }

    fn read(
        &self,
        done: std::result::Result<(), wgpu::BufferAsyncError>,
        finish: Finish<T>,
    ) -> Result<T> {
        let gpu = |message: String| Error::Gpu {
            during: "read-back",
            message,
        };
        done.map_err(|e| gpu(e.to_string()))?;
        let result = {
            let bytes = self
                .buffer
                .slice(..)
                .get_mapped_range()
                .map_err(|e| gpu(e.to_string()))?;
            finish(&bytes)
        };
        self.buffer.unmap();
        result
    }

    /// Blocks until the result is back (waiting for this submission only, at most the
    /// context's wait timeout), for scripts and tests.
    pub fn wait(mut self, ctx: &Context) -> Result<T> {
        loop {
            if let Some(r) = self.try_take() {
                return r;
            }
            if self.finish.is_none() {
                return Err(Error::invalid("the result was already taken"));
            }
            ctx.wait(Some(self.index.clone()))?;
        }
    }
}

impl<T> Future for Pending<T> {
    type Output = Result<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Result<T>> {
        if self.finish.is_none() {
            return Poll::Ready(Err(Error::invalid("the result was already taken")));
        }
        if let Some(r) = self.try_take() {
            return Poll::Ready(r);
        }
        self.state.lock().unwrap().waker = Some(cx.waker().clone());
        // Nothing else polls a native device for us: ask to be polled again.
        #[cfg(not(target_arch = "wasm32"))]
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
