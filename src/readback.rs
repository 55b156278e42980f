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

use crate::context::{take_all, Context, ErrorLog, ScopeFuture};
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
    /// The context's late errors (see [`Pending::failed`]).
    late: ErrorLog,
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
    /// Bytes this result brings back from the GPU (its read-back buffer).
    pub fn bytes(&self) -> u64 {
        self.buffer.size()
    }

    /// Maps `buffer` (`MAP_READ`, written by submission `index`, whose error `scopes` it
    /// checks first) and will hand its bytes to `finish`.
    fn new(
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
            late: ctx.late_errors(),
            finish: Some(Box::new(finish)),
        }
    }

    /// Encodes work with `encode` (which also copies what is wanted into the `size`-byte
    /// read-back buffer it is given), submits it inside error scopes, and returns the bytes
    /// turned into the result by `finish` once they are back: every read-back in the
    /// library goes this way, native or in a browser.
    pub(crate) fn submit(
        ctx: &Context,
        during: &'static str,
        size: u64,
        encode: impl FnOnce(&mut wgpu::CommandEncoder, &wgpu::Buffer),
        finish: impl FnOnce(&[u8]) -> Result<T> + Send + 'static,
    ) -> Result<Pending<T>> {
        ctx.refuse_if_plan_only(during)?;
        let buffer = ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some(during),
            // A mapping of zero bytes is an error; an empty result still reads 4.
            size: size.max(4).next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let (index, scopes) = ctx.scoped_async(during, || {
            let mut encoder =
                ctx.device()
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some(during),
                    });
            encode(&mut encoder, &buffer);
            ctx.queue().submit([encoder.finish()])
        })?;
        Ok(Pending::new(ctx, buffer, index, scopes, finish))
    }

    /// This result turned into another by `f` on arrival.
    pub fn then<U>(mut self, f: impl FnOnce(T) -> U + Send + 'static) -> Pending<U>
    where
        T: 'static,
    {
        let finish = self.finish.take();
        Pending {
            device: self.device.clone(),
            buffer: self.buffer.clone(),
            index: self.index.clone(),
            state: self.state.clone(),
            scopes: self.scopes.take(),
            late: self.late.clone(),
            finish: finish.map(|g| -> Finish<U> { Box::new(move |bytes| g(bytes).map(f)) }),
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
                Poll::Ready(Some(message)) => return Some(Err(self.failed(message))),
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

    /// The error for work whose scopes caught `message`; errors caught earlier and
    /// answered late (a browser's) come first, as they are usually the cause (a pipeline
    /// that failed to compile, then the work that used it).
    fn failed(&mut self, message: String) -> Error {
        self.finish = None;
        let message = match take_all(&self.late) {
            Some(earlier) => format!("{earlier}; then {message}"),
            None => message,
        };
        Error::Gpu {
            during: "a request",
            message,
        }
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
    /// context's wait timeout), for scripts and tests (native only).
    #[cfg(not(target_arch = "wasm32"))]
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
        // A browser answers the error scopes later; their future wakes this task then.
        if let Some(scopes) = &mut self.scopes {
            match scopes.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(message)) => return Poll::Ready(Err(self.failed(message))),
                Poll::Ready(None) => self.scopes = None,
            }
        }
        // Registered before looking, so a mapping that completes meanwhile wakes us.
        self.state.lock().unwrap().waker = Some(cx.waker().clone());
        if let Some(r) = self.try_take() {
            return Poll::Ready(r);
        }
        // Nothing else polls a native device for us: ask to be polled again.
        #[cfg(not(target_arch = "wasm32"))]
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
