//! A lower-bound cost model of a planned step on a named GPU, from first principles: every
//! dispatch's memory traffic and arithmetic ([`Work`]) against the GPU's bandwidth and rates,
//! scaled by how much of the GPU the dispatch can occupy, plus a per-dispatch overhead.
//!
//! For a dispatch of `W` workgroups of `n` invocations:
//!
//! ```text
//! ideal     = max(bytes / bandwidth, flops / rate)          (rate: tensor cores if used, else FP32)
//! resident  = min(threads per SM / n, workgroup memory per SM / workgroup memory)  workgroups per SM
//! busy      = min(W, SMs)                                   (a workgroup runs on one SM)
//! per SM    = min(W / busy, resident) · n                   threads on each busy SM
//! occupancy = busy / SMs · min(1, per SM · chains / threads to saturate an SM)
//! time      = overhead + max(ideal / occupancy, serial steps · cycles per step / clock)
//! ```
//!
//! `bytes` counts each tensor the kernel loads as read and each it stores as written, once
//! each (a lower bound: caches are assumed perfect; a table the data indexes, as an
//! embedding's, not at all); `threads to saturate an SM` is the resident-thread count that
//! hides memory latency (half the SM's maximum), and `chains` the independent accumulations
//! a thread keeps in flight (up to 4). A workgroup holds its workgroup (shared) memory while
//! resident, so a kernel with large tiles fits fewer workgroups on an SM; and it runs on one
//! SM, so a few large workgroups leave SMs idle however many threads they have. A dispatch
//! *cannot fill the GPU* when it has fewer workgroups than the GPU has multiprocessors, when
//! its workgroup memory keeps too few threads resident, or when an invocation runs a serial
//! loop over the data (rows, tokens, positions: it grows with the batch or the length) long
//! enough to set the dispatch's time.
//!
//! The named GPUs' figures are the vendors'; the H200 run (issue 12) calibrates them. The
//! model of *this* adapter, [`Gpu::measured`] (`bench step --model local`), takes its figures
//! from measurements instead, and `--profile` holds each dispatch's prediction against its
//! measured time ([`Agreement`]): on llvmpipe an SM is a CPU core, which runs a workgroup
//! one SIMD vector (its subgroup) at a time, and the overhead is what an empty dispatch
//! costs there.

use std::borrow::Cow;

use roformer_wgpu::{Dispatch, Work};

/// The parameters of a GPU the model knows.
#[derive(Clone, Debug, PartialEq)]
pub struct Gpu {
    /// Name as `--model` takes it.
    pub name: Cow<'static, str>,
    /// What it is.
    pub description: Cow<'static, str>,
    /// Multiprocessors (SMs, compute units, GPU cores).
    pub sms: u32,
    /// FP32 rate, TFLOP/s (dense FMA counted as 2).
    pub fp32_tflops: f64,
    /// Tensor-core FP16 rate with FP32 accumulation, TFLOP/s (dense).
    pub tensor_tflops: f64,
    /// Memory bandwidth, GB/s.
    pub bandwidth_gbs: f64,
    /// Cost of one dispatch inside a compute pass, µs.
    pub dispatch_us: f64,
    /// Resident threads per multiprocessor at most.
    pub threads_per_sm: u32,
    /// Workgroup (shared) memory per multiprocessor, bytes: resident workgroups share it.
    pub workgroup_memory_per_sm: u64,
    /// Clock, GHz (for serial loops).
    pub clock_ghz: f64,
    /// Subgroup (warp, SIMD-group) size: the row kernels' layout depends on it.
    pub subgroup_size: u32,
    /// Discrete or integrated: the matmul heuristic's tilings depend on it (not a CPU).
    pub device_type: wgpu::DeviceType,
}

impl Gpu {
    /// The capabilities to plan with for this GPU ([`roformer_wgpu::Context::plan_as`]): this
    /// adapter's (`local`: the pipelines are still compiled here, within its limits) with the
    /// GPU's name, kind and subgroup size.
    pub fn capabilities(&self, local: &roformer_wgpu::Capabilities) -> roformer_wgpu::Capabilities {
        let mut caps = local.clone();
        caps.adapter_name = self.description.to_string();
        caps.device_type = self.device_type;
        caps.subgroup_sizes = Some((self.subgroup_size, self.subgroup_size));
        caps
    }
}

/// Independent accumulations per thread the occupancy counts, at most: a thread with a
/// register block of 4 or more keeps as much arithmetic in flight as 4 threads of one.
const MAX_CHAINS_PER_THREAD: u32 = 4;

/// Cycles one step of a serial loop takes at least (a dependent add on loads that can be
/// kept in flight).
const CYCLES_PER_SERIAL_STEP: f64 = 4.0;

/// The GPUs the model knows (vendor figures: H200 SXM, RTX 4090, M3 Max 40-core).
pub const GPUS: [Gpu; 3] = [
    Gpu {
        name: Cow::Borrowed("h200"),
        description: Cow::Borrowed(
            "NVIDIA H200 SXM: 132 SMs, 67 TFLOP/s FP32, 989 TFLOP/s FP16 tensor, 4.8 TB/s",
        ),
        sms: 132,
        fp32_tflops: 67.0,
        tensor_tflops: 989.0,
        bandwidth_gbs: 4800.0,
        dispatch_us: 2.0,
        threads_per_sm: 2048,
        // Hopper: up to 228 KiB of the SM's 256 KiB L1 as shared memory (CUDA guide, 16.8)
        workgroup_memory_per_sm: 228 << 10,
        clock_ghz: 1.98,
        subgroup_size: 32,
        device_type: wgpu::DeviceType::DiscreteGpu,
    },
    Gpu {
        name: Cow::Borrowed("rtx4090"),
        description: Cow::Borrowed(
            "NVIDIA RTX 4090: 128 SMs, 82.6 TFLOP/s FP32, 165 TFLOP/s FP16 tensor, 1.0 TB/s",
        ),
        sms: 128,
        fp32_tflops: 82.6,
        tensor_tflops: 165.0,
        bandwidth_gbs: 1008.0,
        dispatch_us: 2.0,
        threads_per_sm: 1536,
        // Ada: up to 100 KiB of the SM's 128 KiB L1 as shared memory (CUDA guide, 16.7)
        workgroup_memory_per_sm: 100 << 10,
        clock_ghz: 2.52,
        subgroup_size: 32,
        device_type: wgpu::DeviceType::DiscreteGpu,
    },
    Gpu {
        name: Cow::Borrowed("m3-max"),
        description: Cow::Borrowed(
            "Apple M3 Max (40-core GPU): 40 cores, 16.4 TFLOP/s FP32, 400 GB/s",
        ),
        sms: 40,
        fp32_tflops: 16.4,
        tensor_tflops: 16.4,
        bandwidth_gbs: 400.0,
        dispatch_us: 5.0,
        threads_per_sm: 1024,
        // Apple publishes 32 KiB as the most threadgroup memory one threadgroup may have
        // (Metal feature set tables), not a core's total: assumed to be the core's total,
        // which may count too few resident threadgroups.
        workgroup_memory_per_sm: 32 << 10,
        clock_ghz: 1.4,
        subgroup_size: 32,
        device_type: wgpu::DeviceType::IntegratedGpu,
    },
];

/// What was measured of an adapter, for [`Gpu::measured`] (`roformer_lab::profile::measure`
/// measures it).
#[derive(Clone, Debug, PartialEq)]
pub struct Measured {
    /// The adapter's name.
    pub adapter: String,
    /// Its kind.
    pub device_type: wgpu::DeviceType,
    /// Multiprocessors; on a CPU adapter, the cores it runs workgroups on.
    pub sms: u32,
    /// The FP32 rate of long FMA chains, GFLOP/s.
    pub fp32_gflops: f64,
    /// The copy kernel's bandwidth, GB/s (read + write).
    pub copy_gbs: f64,
    /// The subgroup size (a CPU adapter's SIMD width).
    pub subgroup_size: u32,
    /// Most workgroup memory one workgroup may have, bytes.
    pub max_workgroup_memory: u64,
    /// What a dispatch costs by itself, µs: an empty one's time, measured as `--profile`
    /// measures each dispatch.
    pub dispatch_us: f64,
}

impl Measured {
    /// The better of two measurements of one adapter, figure by figure (the higher rates,
    /// the lower overhead): other work on the machine only ever makes one worse.
    pub fn best(&self, other: &Measured) -> Measured {
        Measured {
            fp32_gflops: self.fp32_gflops.max(other.fp32_gflops),
            copy_gbs: self.copy_gbs.max(other.copy_gbs),
            dispatch_us: self.dispatch_us.min(other.dispatch_us),
            ..self.clone()
        }
    }
}

impl Gpu {
    /// The model of an adapter from what was measured of it: its ceilings as the rates, its
    /// empty dispatch's time as the overhead, an SM per core (or multiprocessor), one
    /// subgroup (a CPU's SIMD vector) of threads per SM enough to keep it busy, and as its
    /// clock the rate at which an SM issues one vector FMA (FP32 rate / (SMs · lanes · 2)),
    /// the unit a serial loop's steps are counted in.
    pub fn measured(m: &Measured) -> Gpu {
        let lanes = m.subgroup_size.max(1);
        Gpu {
            name: Cow::Borrowed("local"),
            description: Cow::Owned(format!(
                "{} (measured): {} cores, {:.0} GFLOP/s FP32, {:.1} GB/s copy, {lanes} lanes",
                m.adapter, m.sms, m.fp32_gflops, m.copy_gbs
            )),
            sms: m.sms.max(1),
            fp32_tflops: m.fp32_gflops / 1e3,
            tensor_tflops: m.fp32_gflops / 1e3,
            bandwidth_gbs: m.copy_gbs,
            dispatch_us: m.dispatch_us,
            threads_per_sm: 2 * lanes,
            workgroup_memory_per_sm: m.max_workgroup_memory.max(1),
            clock_ghz: m.fp32_gflops / (m.sms.max(1) as f64 * lanes as f64 * 2.0),
            subgroup_size: lanes,
            device_type: m.device_type,
        }
    }
}

/// The GPU of a name (case-insensitive).
pub fn gpu(name: &str) -> Option<&'static Gpu> {
    GPUS.iter().find(|g| g.name.eq_ignore_ascii_case(name))
}

/// Why a dispatch cannot fill the GPU.
#[derive(Clone, Debug, PartialEq)]
pub enum Underfill {
    /// Fewer workgroups than multiprocessors.
    FewWorkgroups(u64),
    /// Workgroup memory lets only this many workgroups reside on a multiprocessor, too few
    /// threads to fill it.
    WorkgroupMemory(u64),
    /// An invocation runs a serial loop of this many steps over the data.
    SerialLoop(u64),
}

impl std::fmt::Display for Underfill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Underfill::FewWorkgroups(w) => write!(f, "{w} workgroups"),
            Underfill::WorkgroupMemory(w) => {
                write!(f, "workgroup memory for {w} resident workgroups per SM")
            }
            Underfill::SerialLoop(s) => write!(f, "serial loop of {s} steps"),
        }
    }
}

/// The model's answer for one dispatch.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    /// `shader::entry`.
    pub kernel: String,
    /// Workgroups launched.
    pub workgroups: u64,
    /// Invocations launched.
    pub invocations: u64,
    /// What it does.
    pub work: Work,
    /// Fraction of the GPU it can occupy, 0-1.
    pub occupancy: f64,
    /// Lower-bound time, µs.
    pub time_us: f64,
    /// Why it cannot fill the GPU, if it cannot.
    pub underfill: Vec<Underfill>,
}

/// The model's time for one dispatch on `gpu`.
pub fn predict(gpu: &Gpu, d: &Dispatch) -> Prediction {
    let work = *d.work();
    let (shader, entry) = d.kernel();
    let workgroups = d.workgroup_count();
    let n = work.threads_per_workgroup.max(1) as u64;
    let invocations = workgroups * n;
    let bytes = (work.bytes_read + work.bytes_written) as f64;
    let rate = if work.tensor_cores {
        gpu.tensor_tflops
    } else {
        gpu.fp32_tflops
    } * 1e12;
    let ideal_s = (bytes / (gpu.bandwidth_gbs * 1e9)).max(work.flops as f64 / rate);
    // Workgroups an SM holds at once: as many as its threads allow, and its workgroup memory
    // (at least one: the kernel runs within the device's limit).
    let by_threads = (gpu.threads_per_sm as u64 / n).max(1);
    let by_memory = match work.workgroup_memory {
        0 => u64::MAX,
        bytes => (gpu.workgroup_memory_per_sm / bytes).max(1),
    };
    let resident = by_threads.min(by_memory);
    // A workgroup runs on one SM: a few workgroups keep only as many SMs busy, each with
    // its share of the workgroups (as many as it can hold at once).
    let busy = workgroups.clamp(1, gpu.sms as u64);
    let per_workgroups = (workgroups as f64 / busy as f64).min(resident as f64);
    // Independent accumulations stand in for threads (up to 4 each) in hiding latency.
    let chains = work.accumulators.clamp(1, MAX_CHAINS_PER_THREAD) as f64;
    let per_sm = per_workgroups * n as f64 * chains;
    let occupancy =
        busy as f64 / gpu.sms as f64 * (per_sm / (gpu.threads_per_sm as f64 / 2.0)).min(1.0);
    let serial_s = work.serial_steps as f64 * CYCLES_PER_SERIAL_STEP / (gpu.clock_ghz * 1e9);
    let time_us = gpu.dispatch_us + 1e6 * (ideal_s / occupancy.max(1e-9)).max(serial_s);
    let mut underfill = Vec::new();
    if workgroups < gpu.sms as u64 {
        underfill.push(Underfill::FewWorkgroups(workgroups));
    }
    if by_memory < by_threads && workgroups > busy * by_memory && occupancy < 1.0 {
        underfill.push(Underfill::WorkgroupMemory(by_memory));
    }
    // A loop over the data matters when it, not the GPU's width, sets the time.
    if work.serial_steps > 0 && serial_s > ideal_s / occupancy.max(1e-9) {
        underfill.push(Underfill::SerialLoop(work.serial_steps));
    }
    Prediction {
        kernel: format!("{shader}::{entry}"),
        workgroups,
        invocations,
        work,
        occupancy,
        time_us,
        underfill,
    }
}

/// The model's answer for a whole step.
#[derive(Clone, Debug)]
pub struct StepPrediction {
    /// Per dispatch, in launch order.
    pub dispatches: Vec<Prediction>,
    /// Their total, µs.
    pub total_us: f64,
}

impl StepPrediction {
    /// Predicts every dispatch of a step (a session's: `Session::dispatches`).
    pub fn of<'d>(gpu: &Gpu, dispatches: impl IntoIterator<Item = &'d Dispatch>) -> StepPrediction {
        let dispatches: Vec<Prediction> = dispatches.into_iter().map(|d| predict(gpu, d)).collect();
        let total_us = dispatches.iter().map(|p| p.time_us).sum();
        StepPrediction {
            dispatches,
            total_us,
        }
    }

    /// Dispatches that cannot fill the GPU, with more than `share` of the step's time.
    pub fn underfilled_over(&self, share: f64) -> Vec<&Prediction> {
        self.dispatches
            .iter()
            .filter(|p| !p.underfill.is_empty() && p.time_us > share * self.total_us)
            .collect()
    }

    /// The report `bench step --model` prints: the predicted step, the costliest dispatches
    /// (grouped by kernel), every dispatch that cannot fill the GPU, and one summary line.
    pub fn report(&self, gpu: &Gpu, tokens: usize) -> String {
        use std::collections::BTreeMap;
        use std::fmt::Write;
        let mut out = String::new();
        let total = self.total_us;
        let _ = writeln!(out, "model     {}", gpu.description);
        let _ = writeln!(
            out,
            "          per dispatch: {:.1} µs + max(bytes / bandwidth, FLOPs / rate) / occupancy, \
             or {CYCLES_PER_SERIAL_STEP} cycles per serial-loop step if longer",
            gpu.dispatch_us
        );
        let tokens_per_s = tokens as f64 / (total * 1e-6);
        let _ = writeln!(
            out,
            "predicted {} dispatches, {:.2} ms per step, {:.0} tokens/s",
            self.dispatches.len(),
            total / 1e3,
            tokens_per_s
        );
        // By kernel: launches, time, share, traffic, FLOPs.
        let mut per: BTreeMap<&str, (usize, f64, u64, u64)> = BTreeMap::new();
        for p in &self.dispatches {
            let e = per.entry(p.kernel.as_str()).or_default();
            e.0 += 1;
            e.1 += p.time_us;
            e.2 += p.work.bytes_read + p.work.bytes_written;
            e.3 += p.work.flops;
        }
        let mut rows: Vec<_> = per.into_iter().collect();
        rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
        let _ = writeln!(
            out,
            "top kernels by predicted time\n  {:<40} {:>6} {:>10} {:>6} {:>10} {:>10}",
            "kernel", "count", "µs", "share", "MB", "GFLOP"
        );
        for (kernel, (n, us, bytes, flops)) in rows.iter().take(12) {
            let _ = writeln!(
                out,
                "  {kernel:<40} {n:>6} {us:>10.1} {:>5.1}% {:>10.1} {:>10.2}",
                100.0 * us / total,
                *bytes as f64 / 1e6,
                *flops as f64 / 1e9
            );
        }
        let flagged: Vec<&Prediction> = self
            .dispatches
            .iter()
            .filter(|p| !p.underfill.is_empty())
            .collect();
        let _ = writeln!(
            out,
            "cannot fill the GPU ({} SMs): {} dispatches, {:.1}% of the step",
            gpu.sms,
            flagged.len(),
            100.0 * flagged.iter().map(|p| p.time_us).sum::<f64>() / total
        );
        let mut by_kernel: BTreeMap<(&str, String), (usize, f64)> = BTreeMap::new();
        for p in &flagged {
            let why: Vec<String> = p.underfill.iter().map(|u| u.to_string()).collect();
            let e = by_kernel
                .entry((p.kernel.as_str(), why.join(", ")))
                .or_default();
            e.0 += 1;
            e.1 += p.time_us;
        }
        let mut flagged_rows: Vec<_> = by_kernel.into_iter().collect();
        flagged_rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
        for ((kernel, why), (n, us)) in flagged_rows {
            let _ = writeln!(
                out,
                "  {kernel:<40} {n:>4}x  {us:>9.1} µs {:>5.1}%  {why}",
                100.0 * us / total
            );
        }
        let big = self.underfilled_over(0.01).len();
        let _ = writeln!(
            out,
            "predicted: {tokens_per_s:.0} tokens/s, {} dispatches cannot fill the GPU \
             ({big} of them over 1% of the step)",
            flagged.len()
        );
        out
    }
}

/// A link between GPUs, over which data-parallel training all-reduces the gradients.
#[derive(Clone, Debug, PartialEq)]
pub struct Link {
    /// Short name.
    pub name: Cow<'static, str>,
    /// What it is, and where its figures come from.
    pub description: Cow<'static, str>,
    /// What one GPU sends (and at the same time receives) over it, GB/s, each way.
    pub bandwidth_gbs: f64,
    /// One message's latency, µs (a ring all-reduce has 2(N - 1) steps in a row).
    pub latency_us: f64,
}

/// The links the scaling prediction knows (vendor figures).
pub const LINKS: [Link; 2] = [
    Link {
        name: Cow::Borrowed("NVLink"),
        description: Cow::Borrowed(
            "NVLink 4 between the 8 H200s of an HGX board: 900 GB/s per GPU both ways \
             (NVIDIA's H200 datasheet), 450 GB/s each way; 2 µs a message (beyond 8 GPUs: \
             an NVLink Switch system, as if)",
        ),
        bandwidth_gbs: 450.0,
        latency_us: 2.0,
    },
    Link {
        name: Cow::Borrowed("InfiniBand"),
        description: Cow::Borrowed(
            "InfiniBand NDR, a 400 Gb/s ConnectX-7 port per GPU (as DGX H200 has): 50 GB/s \
             each way; 5 µs a message",
        ),
        bandwidth_gbs: 50.0,
        latency_us: 5.0,
    },
];

/// The host link of an H200 SXM, GB/s each way: PCIe Gen5 x16 (128 GB/s both ways, NVIDIA's
/// datasheet). This library's all-reduce reads the gradients back through it and writes them
/// back (its MPI works on host memory, so NVLink carries none of it).
pub const PCIE_GEN5_GBS: f64 = 64.0;

/// A ring all-reduce of `bytes` over `ranks` GPUs, µs: each sends and receives
/// 2(N - 1)/N of the bytes (N - 1 steps of reduce-scatter, N - 1 of all-gather, each a
/// message of bytes / N), each step paying the link's latency. 0 for one GPU.
pub fn ring_all_reduce_us(bytes: u64, ranks: u32, link: &Link) -> f64 {
    if ranks <= 1 {
        return 0.0;
    }
    let n = ranks as f64;
    let steps = 2.0 * (n - 1.0);
    steps / n * bytes as f64 / (link.bandwidth_gbs * 1e3) + steps * link.latency_us
}

/// A step's predicted time in the parts data parallelism treats differently, µs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepParts {
    /// The forward pass (and mixed precision's weight casts before it).
    pub forward_us: f64,
    /// The backward pass: the gradients' reduction can run beside it.
    pub backward_us: f64,
    /// Clipping and AdamW, after the reduction.
    pub optimizer_us: f64,
}

impl StepParts {
    /// The step alone, µs.
    pub fn total_us(&self) -> f64 {
        self.forward_us + self.backward_us + self.optimizer_us
    }
}

/// A data-parallel step's prediction (the per-GPU batch fixed: N times the tokens).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DataParallel {
    /// GPUs.
    pub ranks: u32,
    /// The ring all-reduce, µs.
    pub all_reduce_us: f64,
    /// Reading the gradients back to the host and writing them back, µs (host-staged
    /// reduction only).
    pub staging_us: f64,
    /// The step, µs: the reduction overlapping the backward pass as buckets allow (the
    /// read-back and the ring beside it; the write-back after).
    pub step_us: f64,
    /// The step with nothing overlapped, µs.
    pub serial_us: f64,
    /// One GPU's step over this step: the share of N GPUs' throughput that is kept.
    pub efficiency: f64,
}

/// Predicts a data-parallel step of `ranks` GPUs from one GPU's step: `gradient_bytes`
/// all-reduced over `link` each step, staged through the host at `staged_gbs` (this
/// library's reduction: read back, MPI, written back) or GPU to GPU (`None`: NCCL's way).
pub fn data_parallel(
    step: &StepParts,
    gradient_bytes: u64,
    ranks: u32,
    link: &Link,
    staged_gbs: Option<f64>,
) -> DataParallel {
    let alone = step.total_us();
    if ranks <= 1 {
        return DataParallel {
            ranks,
            all_reduce_us: 0.0,
            staging_us: 0.0,
            step_us: alone,
            serial_us: alone,
            efficiency: 1.0,
        };
    }
    let all_reduce_us = ring_all_reduce_us(gradient_bytes, ranks, link);
    let copy_us = staged_gbs.map_or(0.0, |g| gradient_bytes as f64 / (g * 1e3));
    let step_us = step.forward_us
        + step.backward_us.max(copy_us + all_reduce_us)
        + copy_us
        + step.optimizer_us;
    DataParallel {
        ranks,
        all_reduce_us,
        staging_us: 2.0 * copy_us,
        step_us,
        serial_us: alone + all_reduce_us + 2.0 * copy_us,
        efficiency: alone / step_us,
    }
}

/// The table `bench step --model GPU --ranks ...` prints: per link and way of reducing, the
/// all-reduce, the step and the scaling efficiency at each count of GPUs.
pub fn scaling_report(
    step: &StepParts,
    gradient_bytes: u64,
    ranks: &[u32],
    tokens: usize,
) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "data-parallel: {:.1} MB of f32 gradients all-reduced per step (ring: 2(N-1)/N x bytes \
         / link bandwidth + 2(N-1) x latency); one GPU's step {:.2} ms (forward {:.2}, \
         backward {:.2}, optimizer {:.2}); N x {tokens} tokens per step",
        gradient_bytes as f64 / 1e6,
        step.total_us() / 1e3,
        step.forward_us / 1e3,
        step.backward_us / 1e3,
        step.optimizer_us / 1e3
    );
    for link in &LINKS {
        let _ = writeln!(out, "  {}: {}", link.name, link.description);
    }
    let _ = writeln!(
        out,
        "  host-staged (this library): + read-back and write-back over PCIe Gen5, {PCIE_GEN5_GBS} \
         GB/s each way"
    );
    let _ = writeln!(
        out,
        "  {:<34} {:>5} {:>12} {:>10} {:>10} {:>11} {:>12} {:>12}",
        "reduction", "N", "all-reduce", "staging", "step", "efficiency", "no overlap", "tokens/s"
    );
    let ways: Vec<(String, &Link, Option<f64>)> = LINKS
        .iter()
        .map(|l| (format!("{}, GPU to GPU", l.name), l, None))
        .chain(std::iter::once((
            "InfiniBand, host-staged (ours)".to_string(),
            &LINKS[1],
            Some(PCIE_GEN5_GBS),
        )))
        .collect();
    for (name, link, staged) in ways {
        for &n in ranks {
            let p = data_parallel(step, gradient_bytes, n, link, staged);
            let _ = writeln!(
                out,
                "  {name:<34} {n:>5} {:>9.2} ms {:>7.2} ms {:>7.2} ms {:>10.1}% {:>11.1}% {:>12.0}",
                p.all_reduce_us / 1e3,
                p.staging_us / 1e3,
                p.step_us / 1e3,
                100.0 * p.efficiency,
                100.0 * step.total_us() / p.serial_us,
                n as f64 * tokens as f64 / (p.step_us * 1e-6)
            );
        }
    }
    out
}

/// How predicted times compare with measured ones, dispatch by dispatch: the ratio
/// predicted / measured (a lower bound's is at most 1) and whether the order agrees.
#[derive(Clone, Debug, PartialEq)]
pub struct Agreement {
    /// Dispatches compared.
    pub dispatches: usize,
    /// Median of predicted / measured.
    pub median: f64,
    /// The lowest ratio, and its dispatch's index.
    pub lowest: (f64, usize),
    /// The highest ratio, and its dispatch's index.
    pub highest: (f64, usize),
    /// Fraction of the dispatches predicted to take longer than they did.
    pub over: f64,
    /// Spearman's rank correlation of predicted and measured times (ties share their mean
    /// rank).
    pub spearman: f64,
    /// Predicted total / measured total.
    pub total: f64,
}

impl Agreement {
    /// Compares `predicted[i]` with `measured[i]` (any one unit); `None` when they differ in
    /// length, are empty, or a measured time is not positive.
    pub fn of(predicted: &[f64], measured: &[f64]) -> Option<Agreement> {
        if predicted.len() != measured.len()
            || predicted.is_empty()
            || measured.iter().any(|&m| m.is_nan() || m <= 0.0)
        {
            return None;
        }
        let ratios: Vec<f64> = predicted.iter().zip(measured).map(|(p, m)| p / m).collect();
        let mut sorted = ratios.clone();
        sorted.sort_by(f64::total_cmp);
        let mid = sorted.len() / 2;
        let median = if sorted.len() % 2 == 1 {
            sorted[mid]
        } else {
            (sorted[mid - 1] + sorted[mid]) / 2.0
        };
        let pick = |better: fn(f64, f64) -> bool| {
            ratios
                .iter()
                .enumerate()
                .fold((ratios[0], 0), |best, (i, &r)| {
                    if better(r, best.0) {
                        (r, i)
                    } else {
                        best
                    }
                })
        };
        Some(Agreement {
            dispatches: ratios.len(),
            median,
            lowest: pick(|a, b| a < b),
            highest: pick(|a, b| a > b),
            over: ratios.iter().filter(|&&r| r > 1.0).count() as f64 / ratios.len() as f64,
            spearman: pearson(&ranks(predicted), &ranks(measured)),
            total: predicted.iter().sum::<f64>() / measured.iter().sum::<f64>(),
        })
    }
}

/// 1-based ranks, ties given their mean rank.
fn ranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut ranks = vec![0.0; x.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && x[order[j + 1]] == x[order[i]] {
            j += 1;
        }
        for &k in &order[i..=j] {
            ranks[k] = (i + j) as f64 / 2.0 + 1.0;
        }
        i = j + 1;
    }
    ranks
}

/// Pearson's correlation (0 where either side is constant).
fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    if sxx == 0.0 || syy == 0.0 {
        0.0
    } else {
        sxy / (sxx * syy).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roformer_wgpu::ops::{elementwise, matmul, reduce};
    use roformer_wgpu::Context;

    #[test]
    fn a_bandwidth_bound_dispatch_costs_its_bytes_over_the_bandwidth() {
        let ctx = &Context::new().unwrap();
        let h200 = gpu("H200").unwrap();
        // 16M floats filled: 64 MiB written by 65536 workgroups of 256, which fill the GPU
        let n = 1 << 24;
        let t = roformer_wgpu::Tensor::zeros(ctx, &[n], roformer_wgpu::DType::F32).unwrap();
        let p = predict(h200, &elementwise::plan_fill(ctx, &t, 1.0).unwrap());
        assert_eq!(p.work.bytes_written, 4 * n as u64);
        assert_eq!(
            p.work.bytes_read, 0,
            "fill stores its read_write output only"
        );
        assert_eq!(p.work.threads_per_workgroup, 256);
        assert_eq!(p.occupancy, 1.0);
        let expected = 2.0 + 4.0 * n as f64 / 4800e9 * 1e6;
        assert!(
            (p.time_us - expected).abs() < 1e-6,
            "{} vs {expected}",
            p.time_us
        );
        assert!(p.underfill.is_empty());
    }

    #[test]
    fn a_ring_all_reduce_moves_2_n_minus_1_over_n_of_the_bytes() {
        let link = Link {
            name: Cow::Borrowed("test"),
            description: Cow::Borrowed(""),
            bandwidth_gbs: 100.0,
            latency_us: 3.0,
        };
        // 8 GPUs, 1 GB: each sends 7/4 GB at 100 GB/s (17.5 ms), 14 steps of 3 µs.
        let t = ring_all_reduce_us(1_000_000_000, 8, &link);
        assert!((t - (17_500.0 + 42.0)).abs() < 1e-6, "{t}");
        // Two GPUs: each sends half and receives half, twice: the bytes once.
        let t2 = ring_all_reduce_us(1_000_000_000, 2, &link);
        assert!((t2 - (10_000.0 + 6.0)).abs() < 1e-6, "{t2}");
        assert_eq!(ring_all_reduce_us(1_000_000_000, 1, &link), 0.0);
        // A step of 10 ms forward, 20 backward, 1 optimizer: a 17.5 ms reduction hides in
        // the backward pass; a staged one adds its read-back to the reduction's side and its
        // write-back after (1 GB at 50 GB/s: 20 ms each).
        let step = StepParts {
            forward_us: 10_000.0,
            backward_us: 20_000.0,
            optimizer_us: 1_000.0,
        };
        let direct = data_parallel(&step, 1_000_000_000, 8, &link, None);
        assert!((direct.step_us - 31_000.0).abs() < 1e-6);
        assert!((direct.efficiency - 1.0).abs() < 1e-12);
        assert!((direct.serial_us - (31_000.0 + t)).abs() < 1e-6);
        let staged = data_parallel(&step, 1_000_000_000, 8, &link, Some(50.0));
        assert!((staged.staging_us - 40_000.0).abs() < 1e-6);
        let want = 10_000.0 + (20_000.0 + t) + 20_000.0 + 1_000.0;
        assert!((staged.step_us - want).abs() < 1e-6, "{}", staged.step_us);
        assert!((staged.efficiency - 31_000.0 / want).abs() < 1e-12);
        assert_eq!(
            data_parallel(&step, 1 << 30, 1, &link, Some(50.0)).efficiency,
            1.0
        );
    }

    #[test]
    fn a_measured_adapter_is_modelled_from_its_figures() {
        let local = Gpu::measured(&Measured {
            adapter: "llvmpipe".into(),
            device_type: wgpu::DeviceType::Cpu,
            sms: 2,
            fp32_gflops: 32.0,
            copy_gbs: 8.0,
            subgroup_size: 8,
            max_workgroup_memory: 32768,
            dispatch_us: 20.0,
        });
        assert_eq!(
            (local.sms, local.threads_per_sm, local.subgroup_size),
            (2, 16, 8)
        );
        assert_eq!(local.dispatch_us, 20.0);
        // 32 GFLOP/s from 2 cores of 8 lanes: a vector FMA (2 FLOPs a lane) at 1 GHz
        assert_eq!(local.clock_ghz, 1.0);
        let m = Measured {
            adapter: "llvmpipe".into(),
            device_type: wgpu::DeviceType::Cpu,
            sms: 2,
            fp32_gflops: 32.0,
            copy_gbs: 8.0,
            subgroup_size: 8,
            max_workgroup_memory: 32768,
            dispatch_us: 20.0,
        };
        let slower = Measured {
            fp32_gflops: 40.0,
            copy_gbs: 5.0,
            dispatch_us: 15.0,
            ..m.clone()
        };
        let best = m.best(&slower);
        assert_eq!((best.fp32_gflops, best.copy_gbs), (40.0, 8.0));
        assert_eq!(best.dispatch_us, 15.0);
        let ctx = &Context::new().unwrap();
        let n = 1 << 22;
        let t = roformer_wgpu::Tensor::zeros(ctx, &[n], roformer_wgpu::DType::F32).unwrap();
        let p = predict(&local, &elementwise::plan_fill(ctx, &t, 1.0).unwrap());
        let expected = 20.0 + 4.0 * n as f64 / 8e9 * 1e6;
        assert!(
            (p.time_us - expected).abs() < 1e-6,
            "{} vs {expected}",
            p.time_us
        );
        // One workgroup of 256 runs on one core of the two, one 8-lane vector at a time:
        // half the adapter, however many threads it has.
        let small = roformer_wgpu::Tensor::zeros(ctx, &[256], roformer_wgpu::DType::F32).unwrap();
        let one = predict(&local, &elementwise::plan_fill(ctx, &small, 1.0).unwrap());
        assert_eq!(one.workgroups, 1);
        assert_eq!(one.occupancy, 0.5);
        assert_eq!(one.underfill, [Underfill::FewWorkgroups(1)]);
    }

    #[test]
    fn a_table_the_data_indexes_does_not_count() {
        use roformer_wgpu::ops::embedding::{self, TokenIds};
        let ctx = &Context::new().unwrap();
        let (vocab, dim, n) = (1000, 64, 128);
        let ids: Vec<u32> = (0..n as u32).map(|i| i * 7 % vocab as u32).collect();
        let ids = TokenIds::new(ctx, &ids, &[n], vocab).unwrap();
        let f32s = |shape: &[usize]| {
            roformer_wgpu::Tensor::zeros(ctx, shape, roformer_wgpu::DType::F32).unwrap()
        };
        let (table, out) = (f32s(&[vocab, dim]), f32s(&[n, dim]));
        let d = embedding::plan_forward(ctx, &table, &ids, &out, false).unwrap();
        // the ids and the rows gathered into out, not the 1000-row table
        assert_eq!(d.work().bytes_written, 4 * (n * dim) as u64);
        assert!(d.work().bytes_read < 4 * (n * dim) as u64, "{:?}", d.work());
        // backward: dout read, the table's gradient rows (and the long runs' partial sums)
        // not counted; the first dispatch zeroes the whole gradient
        let dout = f32s(&[n, dim]);
        let plan = embedding::plan_backward(ctx, &dout, &ids, &table, false).unwrap();
        assert_eq!(plan[0].work().bytes_written, 4 * (vocab * dim) as u64);
        for d in &plan[1..] {
            assert_eq!(d.work().bytes_written, 0, "{:?}", d.kernel());
            assert!(
                d.work().bytes_read < 4 * (n * dim) as u64 + (64 << 10),
                "{:?}",
                d.work()
            );
        }
    }

    #[test]
    fn agreement_is_the_ratio_distribution_and_the_rank_correlation() {
        // Spearman by hand: ranks differ by (-1, 1, -1, 1, 0), 1 - 6·4 / (5·24) = 0.8
        let a = Agreement::of(&[1.0, 2.0, 3.0, 4.0, 5.0], &[2.0, 1.0, 4.0, 3.0, 5.0]).unwrap();
        assert!((a.spearman - 0.8).abs() < 1e-12, "{a:?}");
        // ratios 0.5, 2, 0.75, 4/3, 1: median 1, lowest the first, highest the second
        assert_eq!(a.median, 1.0);
        assert_eq!(a.lowest, (0.5, 0));
        assert_eq!(a.highest, (2.0, 1));
        assert_eq!(a.over, 0.4);
        assert_eq!(a.total, 1.0);
        // ties share their mean rank: ranks (1.5, 1.5, 3) against (1, 2, 3): 1.5 / √3
        let t = Agreement::of(&[1.0, 1.0, 2.0], &[1.0, 2.0, 3.0]).unwrap();
        assert!((t.spearman - 1.5 / 3f64.sqrt()).abs() < 1e-12, "{t:?}");
        // ratios 1, 1/2, 2/3
        assert!((t.median - 2.0 / 3.0).abs() < 1e-12, "{t:?}");
        // order reversed: -1
        let r = Agreement::of(&[3.0, 2.0, 1.0], &[1.0, 2.0, 3.0]).unwrap();
        assert!((r.spearman + 1.0).abs() < 1e-12);
        assert_eq!(Agreement::of(&[1.0], &[0.0]), None);
        assert_eq!(Agreement::of(&[1.0, 2.0], &[1.0]), None);
        assert_eq!(Agreement::of(&[], &[]), None);
    }

    #[test]
    fn workgroup_memory_limits_the_workgroups_resident_on_an_sm() {
        static TILED: roformer_wgpu::Shader = roformer_wgpu::Shader {
            name: "tiled",
            source: "
struct Params { n: u32, _p0: u32, _p1: u32, _p2: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
var<workgroup> tile: array<f32, 4096>;
@compute @workgroup_size(64)
fn tiled(@builtin(global_invocation_id) id: vec3<u32>,
         @builtin(local_invocation_index) l: u32) {
    tile[l * 64u] = f32(id.x);
    workgroupBarrier();
    if (id.x < p.n) { out[id.x] = tile[(63u - l) * 64u]; }
}
@compute @workgroup_size(64)
fn plain(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x < p.n) { out[id.x] = f32(id.x); }
}",
        };
        let ctx = &Context::new().unwrap();
        let n = 8192 * 64;
        let out = roformer_wgpu::Tensor::zeros(ctx, &[n], roformer_wgpu::DType::F32).unwrap();
        let launch = |entry| {
            roformer_wgpu::DispatchBuilder::new(ctx, &TILED, entry)
                .params(&[n as u32, 0, 0, 0])
                .write("out", &out)
                .build([8192, 1, 1])
                .unwrap()
        };
        let (tiled, plain) = (launch("tiled"), launch("plain"));
        assert_eq!(tiled.work().workgroup_memory, 16384);
        // 16 KiB each: 14 workgroups of 64 threads fit an H200 SM (228 KiB), 6 an RTX 4090's
        // (100 KiB), 2 an M3 Max core (32 KiB); half an SM's threads saturate it (1024, 768,
        // 512)
        for (name, occupancy, resident) in [
            ("h200", 0.875, 14),
            ("rtx4090", 0.5, 6),
            ("m3-max", 0.25, 2),
        ] {
            let g = gpu(name).unwrap();
            let p = predict(g, &tiled);
            assert!((p.occupancy - occupancy).abs() < 1e-12, "{name}: {p:?}");
            assert_eq!(
                p.underfill,
                [Underfill::WorkgroupMemory(resident)],
                "{name}"
            );
            let bytes = 4.0 * n as f64;
            let expected = g.dispatch_us + bytes / (g.bandwidth_gbs * 1e9) / occupancy * 1e6;
            assert!(
                (p.time_us - expected).abs() < 1e-9,
                "{name}: {} vs {expected}",
                p.time_us
            );
            // without the tile, the same launch fills the GPU
            let q = predict(g, &plain);
            assert_eq!(q.occupancy, 1.0, "{name}");
            assert!(q.underfill.is_empty(), "{name}");
        }
    }

    #[test]
    fn adamw_moves_28_bytes_per_parameter() {
        use roformer_wgpu::ops::adamw::{self, AdamWConfig, AdamWState};
        let ctx = &Context::new().unwrap();
        let n = 1 << 20;
        let t = || roformer_wgpu::Tensor::zeros(ctx, &[n], roformer_wgpu::DType::F32).unwrap();
        let (param, grad) = (t(), t());
        let state = AdamWState { m: t(), v: t() };
        let stats = roformer_wgpu::Tensor::zeros(ctx, &[2], roformer_wgpu::DType::F32).unwrap();
        let step = adamw::plan_step(
            ctx,
            &AdamWConfig::default(),
            &param,
            &grad,
            &state,
            Some(&stats),
        )
        .unwrap();
        let w = step.dispatch.work();
        // loads grad, param, m and v (and clipping's two factors), stores param, m and v
        assert_eq!(w.bytes_read, 16 * n as u64 + 8);
        assert_eq!(w.bytes_written, 12 * n as u64);
        let h200 = gpu("h200").unwrap();
        let p = predict(h200, &step.dispatch);
        let expected = 2.0 + (28 * n + 8) as f64 / 4800e9 * 1e6;
        assert!(
            (p.time_us - expected).abs() < 1e-6,
            "{} vs {expected}",
            p.time_us
        );
    }

    #[test]
    fn matmul_declares_its_flops_and_threads_and_a_column_sum_is_flagged() {
        let ctx = &Context::new().unwrap();
        let h200 = gpu("h200").unwrap();
        let (m, k, n) = (512, 256, 384);
        let a = roformer_wgpu::Tensor::zeros(ctx, &[m, k], roformer_wgpu::DType::F32).unwrap();
        let b = roformer_wgpu::Tensor::zeros(ctx, &[k, n], roformer_wgpu::DType::F32).unwrap();
        let c = roformer_wgpu::Tensor::zeros(ctx, &[m, n], roformer_wgpu::DType::F32).unwrap();
        let d = matmul::plan(ctx, &a, &b, None, &c, &matmul::MatmulOptions::default()).unwrap();
        let p = predict(h200, &d);
        assert_eq!(p.work.flops, 2 * (m * n * k) as u64);
        assert_eq!(p.work.bytes_read, 4 * (m * k + k * n) as u64);
        // a real tiling: several threads per workgroup, each with a register block
        assert!(p.work.threads_per_workgroup >= 8, "{:?}", p.work);
        assert!(p.work.accumulators >= 16, "{:?}", p.work);
        assert_eq!(p.work.bytes_written, 4 * (m * n) as u64);
        // accumulating into C loads it too
        let add = matmul::MatmulOptions {
            accumulate: true,
            ..Default::default()
        };
        let d = matmul::plan(ctx, &a, &b, None, &c, &add).unwrap();
        assert_eq!(d.work().bytes_read, 4 * (m * k + k * n + m * n) as u64);
        assert_eq!(d.work().bytes_written, 4 * (m * n) as u64);
        // 768 columns of 4096 rows: 12 column blocks, so the rows are cut into chunks summed
        // in parallel, filling the GPU; the partial sums' own sum is small
        let x = roformer_wgpu::Tensor::zeros(ctx, &[4096, 768], roformer_wgpu::DType::F32).unwrap();
        let out = roformer_wgpu::Tensor::zeros(ctx, &[768], roformer_wgpu::DType::F32).unwrap();
        let plan = reduce::plan_sum_rows(ctx, &x, &out, false).unwrap();
        assert_eq!(plan.len(), 2);
        let first = predict(h200, &plan[0]);
        assert!(first.underfill.is_empty(), "{:?}", first);
        assert!(first.workgroups >= 512);
        let second = predict(h200, &plan[1]);
        assert_eq!(second.underfill, [Underfill::FewWorkgroups(12)]);
        assert!(second.work.bytes_read < 512 * 64 * 4 * 2);
    }
}
