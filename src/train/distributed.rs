//! Data-parallel training over MPI, as PyTorch's `DistributedDataParallel` does it: one
//! process (rank) per GPU, started by `mpirun -np N`, each with the whole model; every
//! update, each rank runs its shard of the global batch (`N ×
//! per_device_train_batch_size` examples) and the ranks average their gradients
//! (`MPI_Allreduce`) before clipping, so that clipping, the loss scale's overflow check and
//! AdamW see the same gradients on every rank and the weights stay the same everywhere.
//!
//! - **Shards** ([`shard`]): as PyTorch's `DistributedSampler`: the epoch's order is the one
//!   process's (same seed), padded to a multiple of N by repeating its start, and rank r
//!   takes its elements r, r + N, r + 2N, ...; cut into batches of B, rank r's k-th batch
//!   and the others' make up the k-th global batch of N·B of the one process. The batches
//!   per epoch are those of one process with the global batch.
//! - **The loss**: each rank's loss is its batch's mean, and the gradients are averaged over
//!   the ranks, as DDP averages them. With the same number of labelled rows or tokens on
//!   every rank (sequence classification with full batches: every row counts once) this is
//!   the mean over the global batch, and N ranks of batch B train as one process of batch
//!   N·B; with token-level losses whose counts differ between ranks (fill-mask, token
//!   classification, causal LM) it is the mean of the ranks' means, as with DDP. The loss
//!   logged is the mean of the ranks' losses: the loss the averaged gradient is the
//!   gradient of. The last global batch of an epoch, padded with examples from its start,
//!   differs from one process's (as with DDP).
//! - **Rank 0** logs, evaluates and writes checkpoints; the others train silently and wait
//!   at the end for rank 0 to have saved. A resumed run must have as many ranks and the
//!   same per-device batch as the checkpoint's.
//! - **Failure is loud**: at the start the ranks compare hashes of their adapters, model
//!   configurations and arguments, initial weights (and optimizer state), and training
//!   data, and every rank fails with an error naming what differs. Every collective runs
//!   under a watchdog: a rank that waits longer than the timeout (a rank died or hangs)
//!   prints so and exits with an error, and `mpirun` ends the others. A rank that dies is
//!   noticed by `mpirun`, which ends the job. A rank that fails must end the job with
//!   `Distributed::abort` (never by returning normally: MPI's finalisation would wait for
//!   the others).
//!
//! The communication is MPI's (the `mpi` crate over the system's MPI library, the `mpi`
//! feature); without the feature this module only has the sharding, and no [`Distributed`]
//! can be made.

use std::time::Duration;

#[cfg(feature = "mpi")]
pub use with_mpi::LAUNCHER_VARIABLES;

#[cfg(not(target_arch = "wasm32"))]
use crate::context::Context;
use crate::error::{Error, Result};
#[cfg(not(target_arch = "wasm32"))]
use crate::model::{Session, StepMetrics};

/// The examples of a global batch that rank `rank` of `ranks` runs (as PyTorch's
/// `DistributedSampler` deals them: every `ranks`-th, from the `rank`-th). The epoch's
/// order is padded first ([`pad_order`]), so every rank gets as many.
pub fn shard(global_batch: &[usize], rank: usize, ranks: usize) -> Vec<usize> {
    global_batch
        .iter()
        .skip(rank)
        .step_by(ranks.max(1))
        .copied()
        .collect()
}

/// An epoch's order padded to a multiple of `ranks` by repeating its start, as
/// `DistributedSampler` (without `drop_last`) pads it.
pub fn pad_order(order: &mut Vec<usize>, ranks: usize) {
    let n = order.len();
    if n == 0 || ranks <= 1 {
        return;
    }
    let pad = n.next_multiple_of(ranks) - n;
    for i in 0..pad {
        order.push(order[i % n]);
    }
}

/// Global batches in an epoch of `examples` for `ranks` ranks of `per_device` each (those
/// of one process with the global batch).
pub fn batches_per_epoch(examples: usize, per_device: usize, ranks: usize) -> u64 {
    examples.div_ceil(ranks.max(1)).div_ceil(per_device.max(1)) as u64
}

/// FNV-1a, 64 bits: a hash every rank computes alike whatever its build (std's hasher may
/// differ between builds), to compare what the ranks hold (natively: no MPI in a browser).
#[derive(Clone, Copy, Debug)]
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(super) struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
impl Fnv {
    pub(super) fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        self
    }

    pub(super) fn words<T: bytemuck::Pod>(&mut self, values: &[T]) -> &mut Self {
        self.bytes(&(values.len() as u64).to_le_bytes())
            .bytes(bytemuck::cast_slice(values))
    }

    pub(super) fn finish(&self) -> u64 {
        self.0
    }
}

/// How long a rank waits in a collective before it gives up, by default: 30 minutes, as
/// PyTorch's `init_process_group` and transformers' `ddp_timeout` default to (rank 0
/// evaluates and saves while the others wait).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// Gradient bucket size by default: 25 MiB, as `DistributedDataParallel`'s `bucket_cap_mb`.
pub const DEFAULT_BUCKET_BYTES: usize = 25 << 20;

/// This process's place in a data-parallel run, and its communicator (see the module
/// documentation). Made by `Distributed::from_launcher` (the `mpi` feature); handed to
/// [`super::Trainer::distributed`].
pub struct Distributed {
    rank: usize,
    size: usize,
    local_rank: usize,
    bucket_bytes: usize,
    timeout: Duration,
    #[cfg(feature = "mpi")]
    mpi: with_mpi::Mpi,
}

impl std::fmt::Debug for Distributed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Distributed")
            .field("rank", &self.rank)
            .field("size", &self.size)
            .field("local_rank", &self.local_rank)
            .finish_non_exhaustive()
    }
}

impl Distributed {
    /// This process's rank, from 0.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Ranks in the run.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Its rank among the ranks on its machine (which adapter it takes).
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// Whether this is rank 0, which logs, evaluates and saves.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// How long a collective may wait for the other ranks.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Gradients reduced together, in bytes (25 MiB by default).
    pub fn bucket_bytes(&self) -> usize {
        self.bucket_bytes
    }

    /// Sets the gradient bucket size (at least 4 bytes): smaller buckets start reducing
    /// earlier in the backward pass and cost more messages.
    pub fn set_bucket_bytes(&mut self, bytes: usize) {
        self.bucket_bytes = bytes.max(4);
    }

    /// The options that open this rank's adapter: the ranks of one machine take the best
    /// adapters in turn, by local rank (`WGPU_ADAPTER_NAME` still narrows the choice).
    pub fn context_options(&self) -> crate::ContextOptions {
        crate::ContextOptions {
            adapter_turn: self.local_rank,
            ..Default::default()
        }
    }

    /// A training step of `session` with its gradients averaged over the ranks (in buckets,
    /// overlapping the backward pass), and its metrics those of the global batch: the mean
    /// of the ranks' losses, their labelled and correct counts summed; `tokens` (this
    /// rank's) summed too and returned beside them. Native only (a browser has no MPI).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn step(
        &self,
        ctx: &Context,
        session: &mut Session<'_>,
        tokens: usize,
    ) -> Result<(StepMetrics, usize)> {
        let mut m = session.step_reduced(ctx, self.bucket_bytes, &mut |grads| {
            self.all_reduce_mean("the gradients' all-reduce", grads)
        })?;
        let mut totals = [
            m.loss as f64,
            m.counted as f64,
            m.correct as f64,
            tokens as f64,
        ];
        self.sum_f64("the losses' all-reduce", &mut totals)?;
        m.loss = (totals[0] / self.size as f64) as f32;
        m.counted = totals[1] as u32;
        m.correct = totals[2] as u32;
        Ok((m, totals[3] as usize))
    }

    /// Replaces `values` on every rank with their mean over the ranks (`MPI_Allreduce`, then
    /// a division); `what` names it if the watchdog ends the run.
    pub fn all_reduce_mean(&self, what: &str, values: &mut [f32]) -> Result<()> {
        self.sum_f32(what, values)?;
        let ranks = self.size as f32;
        values.iter_mut().for_each(|v| *v /= ranks);
        Ok(())
    }

    /// Fails on every rank unless every rank's `value` is the same, naming `what` and the
    /// ranks that differ. `hint` says what to do about it.
    pub fn agree(&self, what: &str, value: u64, hint: &str) -> Result<()> {
        let all = self.gather_u64(&format!("comparing {what}"), value)?;
        if all.iter().all(|&v| v == all[0]) {
            return Ok(());
        }
        let each: Vec<String> = all
            .iter()
            .enumerate()
            .map(|(r, v)| format!("rank {r} {v:016x}"))
            .collect();
        Err(Error::invalid(format!(
            "the {} ranks differ in {what} ({}): {hint}",
            self.size,
            each.join(", ")
        )))
    }
}

#[cfg(not(feature = "mpi"))]
impl Distributed {
    fn no_mpi<T>() -> Result<T> {
        Err(Error::invalid(
            "data-parallel training needs the `mpi` feature, which this build lacks",
        ))
    }

    fn sum_f32(&self, _what: &str, _values: &mut [f32]) -> Result<()> {
        Self::no_mpi()
    }

    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    fn sum_f64(&self, _what: &str, _values: &mut [f64]) -> Result<()> {
        Self::no_mpi()
    }

    fn gather_u64(&self, _what: &str, _value: u64) -> Result<Vec<u64>> {
        Self::no_mpi()
    }

    /// Rank 0's `value`, on every rank.
    pub fn broadcast_flag(&self, _what: &str, _value: bool) -> Result<bool> {
        Self::no_mpi()
    }

    /// Waits for every rank to get here.
    pub fn barrier(&self, _what: &str) -> Result<()> {
        Self::no_mpi()
    }
}

#[cfg(feature = "mpi")]
mod with_mpi {
    use std::io::Write;
    use std::sync::{Arc, Condvar, Mutex};
    use std::time::{Duration, Instant};

    use mpi::collective::SystemOperation;
    use mpi::environment::Universe;
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::*;

    use super::{Distributed, DEFAULT_BUCKET_BYTES};
    use crate::error::{Error, Result};

    /// Environment variables by which a process knows an MPI launcher started it
    /// (Open MPI's `mpirun`, MPICH's and Intel MPI's Hydra, PMIx launchers such as Slurm's
    /// `srun --mpi=pmix`).
    pub const LAUNCHER_VARIABLES: [&str; 4] = [
        "OMPI_COMM_WORLD_SIZE",
        "PMI_SIZE",
        "PMIX_RANK",
        "MPI_LOCALNRANKS",
    ];

    /// One line on stderr in one write, so that the line of one rank never interleaves with
    /// another's in the launcher's output (`writeln!` writes each piece of its format apart).
    fn stderr_line(text: &str) {
        let _ = std::io::stderr().write_all(format!("{text}\n").as_bytes());
    }

    pub(super) struct Mpi {
        world: SimpleCommunicator,
        watchdog: Watchdog,
        // Last: MPI is finalised when it drops, after the communicators.
        _universe: Universe,
    }

    impl Distributed {
        /// This process's rank, when an MPI launcher (`mpirun`, `mpiexec`, `srun`) started
        /// it: initialises MPI (once per process) and finds its rank, the ranks' count and
        /// its rank on its machine; `None` when no launcher did (a plain process trains
        /// alone), or when MPI was initialised already. A collective that waits longer than
        /// `timeout` ends the process with an error. Installs a panic hook that ends the
        /// process without finalising MPI (which would wait for the others).
        pub fn from_launcher(timeout: Duration) -> Result<Option<Distributed>> {
            if !LAUNCHER_VARIABLES
                .iter()
                .any(|v| std::env::var_os(v).is_some())
            {
                return Ok(None);
            }
            let Some((universe, _)) = mpi::initialize_with_threading(mpi::Threading::Funneled)
            else {
                return Ok(None);
            };
            let world = universe.world();
            let rank = world.rank() as usize;
            let size = world.size() as usize;
            let local_rank = world.split_shared(world.rank()).rank() as usize;
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                previous(info);
                stderr_line(&format!("rank {rank}: panicked; ending the run"));
                std::process::exit(101);
            }));
            Ok(Some(Distributed {
                rank,
                size,
                local_rank,
                bucket_bytes: DEFAULT_BUCKET_BYTES,
                timeout,
                mpi: Mpi {
                    world,
                    watchdog: Watchdog::start(rank, timeout),
                    _universe: universe,
                },
            }))
        }

        /// Ends the whole run now, every rank, with `code` (`MPI_Abort`): what a rank that
        /// failed must do (print its error first). Returning normally instead would
        /// finalise MPI, which waits for the others.
        pub fn abort(&self, code: i32) -> ! {
            self.mpi.world.abort(code)
        }

        /// Rank 0's `value`, on every rank.
        pub fn broadcast_flag(&self, what: &str, value: bool) -> Result<bool> {
            let mut v = u8::from(value);
            self.mpi.watchdog.guard(what, || {
                self.mpi.world.process_at_rank(0).broadcast_into(&mut v)
            });
            Ok(v != 0)
        }

        /// Waits for every rank to get here.
        pub fn barrier(&self, what: &str) -> Result<()> {
            self.mpi.watchdog.guard(what, || self.mpi.world.barrier());
            Ok(())
        }

        pub(super) fn sum_f32(&self, what: &str, values: &mut [f32]) -> Result<()> {
            let send = values.to_vec();
            self.mpi.watchdog.guard(what, || {
                self.mpi
                    .world
                    .all_reduce_into(&send[..], values, SystemOperation::sum())
            });
            Ok(())
        }

        pub(super) fn sum_f64(&self, what: &str, values: &mut [f64]) -> Result<()> {
            let send = values.to_vec();
            self.mpi.watchdog.guard(what, || {
                self.mpi
                    .world
                    .all_reduce_into(&send[..], values, SystemOperation::sum())
            });
            Ok(())
        }

        pub(super) fn gather_u64(&self, what: &str, value: u64) -> Result<Vec<u64>> {
            let mut all = vec![0u64; self.size];
            self.mpi.watchdog.guard(what, || {
                self.mpi.world.all_gather_into(&value, &mut all[..])
            });
            if all[self.rank] != value {
                return Err(Error::invalid(format!(
                    "{what}: MPI gathered a wrong value"
                )));
            }
            Ok(all)
        }
    }

    /// What the watchdog watches: the collective under way, and when it must be over.
    struct Deadline {
        what: String,
        at: Instant,
    }

    #[derive(Default)]
    struct Watched {
        deadline: Option<Deadline>,
        closed: bool,
    }

    /// A thread that ends the process when a collective waits past the timeout (MPI's
    /// blocking calls have none): `mpirun` then ends the other ranks.
    struct Watchdog {
        shared: Arc<(Mutex<Watched>, Condvar)>,
        timeout: Duration,
    }

    impl Watchdog {
        fn start(rank: usize, timeout: Duration) -> Watchdog {
            let shared: Arc<(Mutex<Watched>, Condvar)> = Arc::default();
            let watched = shared.clone();
            std::thread::spawn(move || {
                let (lock, wake) = &*watched;
                let mut w = lock.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    if w.closed {
                        return;
                    }
                    let Some(d) = &w.deadline else {
                        w = wake.wait(w).unwrap_or_else(|e| e.into_inner());
                        continue;
                    };
                    let now = Instant::now();
                    if now >= d.at {
                        stderr_line(&format!(
                            "rank {rank}: error: {} waited {:.0} s for the other ranks (one has \
                             died, hangs or failed): ending the run",
                            d.what,
                            timeout.as_secs_f64()
                        ));
                        std::process::exit(1);
                    }
                    let left = d.at - now;
                    w = wake
                        .wait_timeout(w, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            });
            Watchdog { shared, timeout }
        }

        /// Runs the collective `f` under the watchdog.
        fn guard<T>(&self, what: &str, f: impl FnOnce() -> T) -> T {
            let (lock, wake) = &*self.shared;
            let set = |deadline| {
                lock.lock().unwrap_or_else(|e| e.into_inner()).deadline = deadline;
                wake.notify_one();
            };
            set(Some(Deadline {
                what: what.to_string(),
                at: Instant::now() + self.timeout,
            }));
            let out = f();
            set(None);
            out
        }
    }

    impl Drop for Watchdog {
        fn drop(&mut self) {
            let (lock, wake) = &*self.shared;
            lock.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
            wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_deal_the_global_batches_as_distributed_sampler() {
        // torch.utils.data.DistributedSampler(range(10), num_replicas=3, shuffle=False)
        // gives rank 0 [0, 3, 6, 9], rank 1 [1, 4, 7, 0], rank 2 [2, 5, 8, 1]: the order
        // padded with its start to 12, every third from the rank's.
        let mut order: Vec<usize> = (0..10).collect();
        pad_order(&mut order, 3);
        assert_eq!(order.len(), 12);
        let per_rank: Vec<Vec<usize>> = (0..3).map(|r| shard(&order, r, 3)).collect();
        assert_eq!(
            per_rank,
            [vec![0, 3, 6, 9], vec![1, 4, 7, 0], vec![2, 5, 8, 1]]
        );
        // Batches of 2 per rank: batch k of every rank makes global batch k of 6, in the
        // one process's order.
        for (k, global) in order.chunks(6).enumerate() {
            let mut union: Vec<usize> = per_rank
                .iter()
                .flat_map(|r| r[2 * k..2 * k + 2].to_vec())
                .collect();
            let mut want = global.to_vec();
            union.sort();
            want.sort();
            assert_eq!(union, want, "global batch {k}");
        }
        // Fewer examples than ranks: the start repeats as often as needed.
        let mut tiny = vec![7, 8];
        pad_order(&mut tiny, 5);
        assert_eq!(tiny, [7, 8, 7, 8, 7]);
        // One rank: nothing changes.
        let mut one: Vec<usize> = (0..5).collect();
        pad_order(&mut one, 1);
        assert_eq!(shard(&one, 0, 1), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn batches_per_epoch_are_those_of_one_process_with_the_global_batch() {
        for examples in [1usize, 7, 33, 40, 129] {
            for ranks in [1, 2, 3, 8] {
                for b in [1, 4, 5] {
                    // len(DataLoader) on each rank: ceil(ceil(n / ranks) / b).
                    let per_rank = examples.div_ceil(ranks).div_ceil(b) as u64;
                    assert_eq!(batches_per_epoch(examples, b, ranks), per_rank);
                    // One process with the global batch over the padded order.
                    let padded = examples.next_multiple_of(ranks);
                    assert_eq!(per_rank, padded.div_ceil(ranks * b) as u64);
                }
            }
        }
    }

    #[test]
    fn fnv_is_the_published_function() {
        // FNV-1a 64 test vectors (Fowler, Noll, Vo).
        assert_eq!(Fnv::default().finish(), 0xcbf29ce484222325);
        assert_eq!(Fnv::default().bytes(b"a").finish(), 0xaf63dc4c8601ec8c);
        assert_eq!(Fnv::default().bytes(b"foobar").finish(), 0x85944171f73967e8);
    }
}
