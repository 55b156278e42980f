//! GPU errors: every piece of the library's work runs inside error scopes, so a GPU error
//! comes back as `Err`; a lost device stays lost; errors a browser answers late are kept
//! for the next read-back.

use std::sync::{Arc, Mutex};

use super::Context;
use crate::error::{Error, Result};

/// An error scope's answer if it has one now (native wgpu answers at once; a browser
/// later), else the future that will give it.
fn answered<F: std::future::Future<Output = Option<wgpu::Error>>>(
    pop: F,
) -> std::result::Result<Option<wgpu::Error>, std::pin::Pin<Box<F>>> {
    let mut pop = Box::pin(pop);
    match pop
        .as_mut()
        .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
    {
        std::task::Poll::Ready(e) => Ok(e),
        std::task::Poll::Pending => Err(pop),
    }
}

/// What [`Context::scoped_async`]'s error scopes caught, when the device says.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) type ScopeFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Option<String>> + Send>>;
/// What [`Context::scoped_async`]'s error scopes caught, when the device says.
#[cfg(target_arch = "wasm32")]
pub(crate) type ScopeFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Option<String>>>>;

/// Everything in `log`, joined, and the log emptied; `None` when it is empty.
pub(crate) fn take_all(log: &ErrorLog) -> Option<String> {
    let mut log = log.lock().unwrap();
    (!log.is_empty()).then(|| {
        let message = log.join("; ");
        log.clear();
        message
    })
}

/// Errors the device reported outside any scope of ours (only for devices we opened).
pub(crate) type ErrorLog = Arc<Mutex<Vec<String>>>;

impl Context {
    /// For an application's own device-lost callback: a function to call with the reason
    /// when its device is lost, after which the library reports the loss instead of using
    /// the device. (A context that opened its device registers this itself.)
    pub fn device_lost_hook(&self) -> impl Fn(&str) + Send + Sync + 'static {
        let lost = self.lost.clone();
        move |reason: &str| {
            *lost.lock().unwrap() = Some(reason.to_string());
        }
    }

    /// Runs `f` inside validation, out-of-memory and internal error scopes, so a GPU error
    /// comes back as `Err` instead of reaching the uncaptured-error handler. Never blocks.
    pub(crate) fn scoped<T>(&self, during: &'static str, f: impl FnOnce() -> T) -> Result<T> {
        // A lost device stays lost: refuse the work instead of handing it to wgpu.
        self.refuse_if_lost(during)?;
        let (out, caught) = self.in_error_scopes(f);
        match answered(caught) {
            Ok(Some(e)) => {
                return Err(Error::Gpu {
                    during,
                    message: e.to_string(),
                })
            }
            Ok(None) => {}
            Err(later) => self.answer_later(during, later),
        }
        self.check_health(during)?;
        Ok(out)
    }

    /// Runs `f` inside out-of-memory, validation and internal error scopes; the future
    /// resolves to the first error they caught.
    fn in_error_scopes<T>(
        &self,
        f: impl FnOnce() -> T,
    ) -> (
        T,
        impl std::future::Future<Output = Option<wgpu::Error>> + 'static,
    ) {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let internal = self.device.push_error_scope(wgpu::ErrorFilter::Internal);
        let out = f();
        let (internal, validation, oom) = (internal.pop(), validation.pop(), oom.pop());
        let caught = async move { internal.await.or(validation.await).or(oom.await) };
        (out, caught)
    }

    /// [`Context::scoped`] without blocking: `f` runs inside the same error scopes, and the
    /// returned future resolves to the first error they caught (at once on native wgpu; in a
    /// browser when the device answers). For work whose results are read back
    /// asynchronously, which awaits it first.
    pub(crate) fn scoped_async<T>(
        &self,
        during: &'static str,
        f: impl FnOnce() -> T,
    ) -> Result<(T, ScopeFuture)> {
        self.check_health(during)?;
        let (out, caught) = self.in_error_scopes(f);
        let caught: ScopeFuture =
            Box::pin(async move { caught.await.map(|e| format!("{during}: {e}")) });
        Ok((out, caught))
    }

    /// `Err` once the device is lost.
    fn refuse_if_lost(&self, during: &'static str) -> Result<()> {
        match self.lost.lock().unwrap().clone() {
            Some(reason) => Err(Error::Gpu {
                during,
                message: format!("device lost ({reason})"),
            }),
            None => Ok(()),
        }
    }

    /// Keeps an error scope's late answer (a browser's) for the next health check: the
    /// scope's work went on, and what it caught must not be lost.
    #[cfg(target_arch = "wasm32")]
    fn answer_later(
        &self,
        during: &'static str,
        answer: impl std::future::Future<Output = Option<wgpu::Error>> + 'static,
    ) {
        let late = self.late.clone();
        wasm_bindgen_futures::spawn_local(async move {
            if let Some(e) = answer.await {
                late.lock().unwrap().push(format!("{during}: {e}"));
            }
        });
    }

    /// Native wgpu answers error scopes at once, so nothing comes later.
    #[cfg(not(target_arch = "wasm32"))]
    fn answer_later(&self, _during: &'static str, _answer: impl std::future::Future) {}

    /// Errors caught earlier but answered late, for a read-back to report with its own.
    pub(crate) fn late_errors(&self) -> ErrorLog {
        self.late.clone()
    }

    /// Reports device loss, or an error the device raised outside our scopes.
    pub fn check_health(&self, during: &'static str) -> Result<()> {
        self.refuse_if_lost(during)?;
        if let Some(message) = take_all(&self.late) {
            return Err(Error::Gpu { during, message });
        }
        if let Some(message) = self.uncaptured.as_ref().and_then(take_all) {
            return Err(Error::Gpu { during, message });
        }
        Ok(())
    }
}
