//! Data-parallel training over MPI (the `mpi` feature; `.ci/run` installs Open MPI and runs
//! these): `roformer train` under `mpirun -np 2` against one process with the global batch
//! and against transformers' Trainer (tests/fixtures/trainer, made by
//! tools/make_trainer_fixtures.py), resuming with the checkpoint's ranks and batch only, and
//! failures that end the run on every rank: a rank killed, a rank that hangs, ranks whose
//! weights differ, a streamed corpus (not supported with ranks yet).

#![cfg(all(feature = "mpi", feature = "cli"))]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use roformer_wgpu::check::rel_l2;
use roformer_wgpu::io::{read_checkpoint, HostTensor};
use serde_json::Value;

/// One test at a time: each starts several processes on a machine of few cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn fixture() -> PathBuf {
    common::manifest_dir().join("tests/fixtures/trainer/text_classification")
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("roformer-mpi-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `roformer train` on the text-classification fixture with transformers' arguments
/// (tests/fixtures/trainer/text_classification/args.json), file order, a JSON line per
/// update, writing to `out`; `more` added.
fn train_args(out: &Path, more: &[&str]) -> Vec<String> {
    let f = fixture();
    let mut args: Vec<String> = [
        "train",
        "--task",
        "text-classification",
        "--model",
        f.join("initial").to_str().unwrap(),
        "--train",
        f.join("train.csv").to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
        "--json",
        "--learning-rate",
        "0.003",
        "--weight-decay",
        "0.01",
        "--warmup-steps",
        "3",
        "--max-grad-norm",
        "1",
        "--seed",
        "0",
        "--no-shuffle",
        "--logging-steps",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(more.iter().map(|s| s.to_string()));
    args
}

fn environment(command: &mut Command) -> &mut Command {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        command.env("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    // Open MPI's shared-memory transport copies between processes with ptrace rights a
    // container may not grant; its plain copies need none.
    command.env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
}

/// `roformer ARGS` alone.
fn roformer(args: &[String]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_roformer"));
    environment(&mut c).args(args);
    c
}

/// `mpirun -np N roformer ARGS` (as root too, more ranks than cores allowed, ranks not
/// bound to cores).
fn mpirun(ranks: usize, args: &[String]) -> Command {
    let mut c = Command::new("mpirun");
    environment(&mut c)
        .args([
            "--allow-run-as-root",
            "--oversubscribe",
            "--bind-to",
            "none",
        ])
        .args(["-np", &ranks.to_string(), env!("CARGO_BIN_EXE_roformer")])
        .args(args);
    c
}

fn run(mut command: Command) -> Output {
    command
        .output()
        .expect("mpirun and the roformer binary run")
}

/// The JSON lines of a run's standard output.
fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn weights(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let mut all: Vec<(String, Vec<f32>)> = read_checkpoint(dir.join("model.safetensors"))
        .unwrap()
        .iter()
        .map(|(name, t)| (name.clone(), HostTensor::to_f32(t)))
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

/// Two ranks of per-device batch 2 train as one process of batch 4, update for update (the
/// loss of the whole global batch logged, the gradient norm, the learning rate), to the same
/// weights; and both as transformers' Trainer with batch 4 does. Gradients go in small
/// buckets, so that reading back the first overlaps the rest of the backward pass.
#[test]
fn two_ranks_train_as_one_process_with_their_global_batch() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = temp("parity");
    let steps = ["--max-steps", "32", "--save-steps", "0"];
    let one = run(roformer(&train_args(
        &dir.join("one"),
        &[&steps[..], &["--per-device-train-batch-size", "4"]].concat(),
    )));
    assert!(one.status.success(), "{}", stderr(&one));
    let two = run(mpirun(
        2,
        &train_args(
            &dir.join("two"),
            &[
                &steps[..],
                &["--per-device-train-batch-size", "2"],
                &["--ddp-bucket-cap-mb", "0.02"],
            ]
            .concat(),
        ),
    ));
    assert!(two.status.success(), "{}", stderr(&two));
    let (one_logs, two_logs) = (json_lines(&one), json_lines(&two));
    let transformers: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("expected.json")).unwrap())
            .unwrap();
    let theirs: Vec<&Value> = transformers["log_history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e.get("loss").is_some())
        .collect();
    assert_eq!(one_logs.len(), 32, "one process's log lines");
    assert_eq!(two_logs.len(), 32, "two ranks' log lines (rank 0's alone)");
    let rel = |a: &Value, b: &Value, key: &str| {
        let (a, b) = (a[key].as_f64().unwrap(), b[key].as_f64().unwrap());
        (a - b).abs() / b.abs().max(1e-12)
    };
    let mut worst = [0.0f64; 3];
    for ((a, b), t) in one_logs.iter().zip(&two_logs).zip(&theirs) {
        let step = a["step"].as_u64().unwrap();
        assert_eq!(b["step"].as_u64(), Some(step));
        assert_eq!(b["epoch"], a["epoch"], "update {step}: epoch");
        assert_eq!(b["learning_rate"], a["learning_rate"], "update {step}");
        let (loss, norm) = (rel(b, a, "loss"), rel(b, a, "grad_norm"));
        assert!(
            loss < 1e-5,
            "update {step}: loss {} vs {}",
            b["loss"],
            a["loss"]
        );
        assert!(
            norm < 1e-5,
            "update {step}: grad_norm {} vs {}",
            b["grad_norm"],
            a["grad_norm"]
        );
        let against_transformers = rel(b, t, "loss");
        assert!(
            against_transformers < 1e-4,
            "update {step}: loss {} vs transformers' {}",
            b["loss"],
            t["loss"]
        );
        worst = [
            worst[0].max(loss),
            worst[1].max(norm),
            worst[2].max(against_transformers),
        ];
    }
    let (a, b) = (weights(&dir.join("one")), weights(&dir.join("two")));
    assert_eq!(a.len(), b.len());
    let mut largest = 0.0f32;
    for ((name, x), (other, y)) in a.iter().zip(&b) {
        assert_eq!(name, other);
        for (p, q) in x.iter().zip(y) {
            largest = largest.max((p - q).abs() / p.abs().max(1.0));
        }
    }
    let flat = |w: &[(String, Vec<f32>)]| w.iter().flat_map(|t| t.1.clone()).collect::<Vec<_>>();
    let trained = read_checkpoint(fixture().join("trained/model.safetensors")).unwrap();
    let theirs_flat: Vec<f32> = b
        .iter()
        .flat_map(|(name, _)| {
            let t = trained
                .get(name)
                .or_else(|| trained.get(name.strip_prefix("roformer.").unwrap_or(name)))
                .unwrap_or_else(|| panic!("{name} is not in transformers' trained weights"));
            t.to_f32()
        })
        .collect();
    let against_transformers = rel_l2(&flat(&b), &theirs_flat);
    eprintln!(
        "two ranks against one process: worst loss {:.1e}, grad_norm {:.1e}, weights {largest:.1e}; \
         against transformers: worst loss {:.1e}, weights {against_transformers:.1e} (rel L2)",
        worst[0], worst[1], worst[2]
    );
    assert!(largest < 1e-4, "final weights differ by {largest}");
    assert!(against_transformers < 1e-3, "{against_transformers}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A running `mpirun`, its output read line by line as it comes.
struct Running {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
    seen_out: Vec<String>,
    seen_err: Vec<String>,
}

impl Running {
    fn start(mut command: Command) -> Running {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mpirun runs");
        let lines = |r: Box<dyn std::io::Read + Send>| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            rx
        };
        Running {
            stdout: lines(Box::new(child.stdout.take().unwrap())),
            stderr: lines(Box::new(child.stderr.take().unwrap())),
            child,
            seen_out: Vec::new(),
            seen_err: Vec::new(),
        }
    }

    fn drain(&mut self) {
        self.seen_out.extend(self.stdout.try_iter());
        self.seen_err.extend(self.stderr.try_iter());
    }

    /// Waits (at most `limit`) until `ready` holds of what it printed.
    fn wait_for(&mut self, limit: Duration, ready: impl Fn(&[String], &[String]) -> bool) {
        let start = Instant::now();
        loop {
            self.drain();
            if ready(&self.seen_out, &self.seen_err) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "mpirun ended ({status}) first:\n{}",
                    self.seen_err.join("\n")
                );
            }
            assert!(
                start.elapsed() < limit,
                "not ready after {limit:?}:\n{}",
                self.seen_err.join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The pid of rank `rank`, from the line it prints at the start ("rank 1 of 2 (pid
    /// 1234, ..."), once `mpirun` has passed that line on (at most `limit`).
    fn pid_of(&mut self, rank: usize, limit: Duration) -> u32 {
        let tag = format!("rank {rank} of ");
        let pid = |line: &String| -> Option<u32> {
            let rest = &line[line.find(&tag)?..];
            rest.split("(pid ").nth(1)?.split(',').next()?.parse().ok()
        };
        self.wait_for(limit, |_, err| err.iter().any(|l| pid(l).is_some()));
        self.seen_err.iter().find_map(pid).unwrap()
    }

    /// Its exit status, when it ends within `limit` (else it is killed and the test fails).
    fn end_within(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(200));
                self.drain();
                return status;
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                panic!("mpirun still runs after {limit:?}: the surviving rank hangs");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status();
}

/// A run that goes on for long, checkpointing every 3 updates.
fn long_run(out: &Path, more: &[&str]) -> Command {
    mpirun(
        2,
        &train_args(
            out,
            &[
                &[
                    "--max-steps",
                    "100000",
                    "--save-steps",
                    "3",
                    "--per-device-train-batch-size",
                    "2",
                ][..],
                more,
            ]
            .concat(),
        ),
    )
}

/// Every checkpoint left is whole (the model, the optimizer state, the trainer state), and
/// the run's final model was not written.
fn nothing_half_written(out: &Path) {
    let mut found = 0;
    for entry in std::fs::read_dir(out).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("checkpoint-") {
            found += 1;
            for f in [
                "model.safetensors",
                "optimizer.safetensors",
                "trainer_state.json",
            ] {
                assert!(entry.path().join(f).exists(), "{name} lacks {f}");
            }
        }
    }
    assert!(found > 0, "a checkpoint was written before the failure");
    assert!(!out.join("model.safetensors").exists(), "a final model");
}

/// A rank killed in the middle of a run: `mpirun` ends the other one and fails, saying which
/// rank died; the checkpoints written are whole.
#[test]
fn a_killed_rank_ends_the_run_with_an_error() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = temp("killed");
    let mut run = Running::start(long_run(&dir, &[]));
    run.wait_for(Duration::from_secs(120), |out, _| out.len() >= 5);
    let victim = run.pid_of(1, Duration::from_secs(30));
    signal(victim, "KILL");
    let status = run.end_within(Duration::from_secs(60));
    let err = run.seen_err.join("\n");
    assert!(!status.success(), "{err}");
    assert!(err.contains("rank 1") && err.contains("signal 9"), "{err}");
    nothing_half_written(&dir);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A rank that stops answering (stopped with SIGSTOP): the other waits no longer than
/// --ddp-timeout, then ends the run with an error saying so.
#[test]
fn a_hung_rank_ends_the_run_after_the_timeout() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = temp("hung");
    let mut run = Running::start(long_run(&dir, &["--ddp-timeout", "3"]));
    run.wait_for(Duration::from_secs(120), |out, _| out.len() >= 5);
    let victim = run.pid_of(1, Duration::from_secs(30));
    signal(victim, "STOP");
    let stopped = Instant::now();
    let status = run.end_within(Duration::from_secs(60));
    // (Gone already, unless mpirun left it stopped.)
    signal(victim, "KILL");
    let err = run.seen_err.join("\n");
    assert!(!status.success(), "{err}");
    assert!(
        err.contains("rank 0: error:") && err.contains("waited 3 s for the other ranks"),
        "{err}"
    );
    assert!(stopped.elapsed() >= Duration::from_secs(3));
    nothing_half_written(&dir);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Ranks that start from different weights (one weight changed in rank 1's copy of the
/// model): every rank fails at the start, naming the difference.
#[test]
fn ranks_with_different_weights_fail_at_the_start() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = temp("differ");
    let copy = dir.join("other-model");
    std::fs::create_dir_all(&copy).unwrap();
    for entry in std::fs::read_dir(fixture().join("initial"))
        .unwrap()
        .flatten()
    {
        std::fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
    }
    let tensors = read_checkpoint(copy.join("model.safetensors")).unwrap();
    let named: Vec<(String, Vec<usize>, Vec<f32>)> = tensors
        .iter()
        .map(|(name, t)| {
            let mut values = t.to_f32();
            if name.ends_with("classifier.out_proj.bias") {
                values[0] += 0.5;
            }
            (name.clone(), t.shape.clone(), values)
        })
        .collect();
    roformer_wgpu::io::write_safetensors(copy.join("model.safetensors"), &named, &[]).unwrap();
    let out = dir.join("out");
    let ours = train_args(&out, &["--max-steps", "4", "--save-steps", "0"]);
    let mut theirs = ours.clone();
    let at = theirs.iter().position(|a| a == "--model").unwrap();
    theirs[at + 1] = copy.to_str().unwrap().to_string();
    // mpirun's MPMD form: rank 0 runs the first command, rank 1 the second.
    let mut command = mpirun(1, &ours);
    command
        .arg(":")
        .args(["-np", "1", env!("CARGO_BIN_EXE_roformer")]);
    command.args(&theirs);
    let result = run(command);
    let err = stderr(&result);
    assert!(!result.status.success(), "{err}");
    assert!(
        err.contains("differ in initial weights and optimizer state"),
        "{err}"
    );
    assert!(!out.join("model.safetensors").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A checkpoint of two ranks resumes on two ranks with the same per-device batch, to the
/// uninterrupted run's losses bit for bit; one process, three ranks, or another per-device
/// batch are refused with an error saying what the checkpoint needs.
#[test]
fn a_resumed_run_needs_the_checkpoints_ranks_and_batch() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = temp("resume");
    let out = dir.join("out");
    let args = |more: &[&str]| {
        train_args(
            &out,
            &[
                &[
                    "--max-steps",
                    "6",
                    "--save-steps",
                    "3",
                    "--per-device-train-batch-size",
                    "2",
                ][..],
                more,
            ]
            .concat(),
        )
    };
    let whole = run(mpirun(2, &args(&[])));
    assert!(whole.status.success(), "{}", stderr(&whole));
    let losses: Vec<Value> = json_lines(&whole)
        .iter()
        .map(|e| e["loss"].clone())
        .collect();
    assert_eq!(losses.len(), 6);
    // Back to the checkpoint of update 3.
    std::fs::remove_dir_all(out.join("checkpoint-6")).unwrap();
    std::fs::remove_file(out.join("model.safetensors")).unwrap();
    let alone = run(roformer(&args(&["--resume"])));
    assert!(!alone.status.success());
    assert!(
        stderr(&alone).contains("trained on 2 data-parallel rank(s)"),
        "{}",
        stderr(&alone)
    );
    let three = run(mpirun(3, &args(&["--resume"])));
    assert!(!three.status.success());
    assert!(
        stderr(&three).contains("this one has 3: resume it with mpirun -np 2"),
        "{}",
        stderr(&three)
    );
    let mut other_batch = args(&["--resume"]);
    let at = other_batch
        .iter()
        .position(|a| a == "--per-device-train-batch-size")
        .unwrap();
    other_batch[at + 1] = "4".into();
    let batch = run(mpirun(2, &other_batch));
    assert!(!batch.status.success());
    assert!(
        stderr(&batch).contains("--per-device-train-batch-size 4: the checkpoint"),
        "{}",
        stderr(&batch)
    );
    let resumed = run(mpirun(2, &args(&["--resume"])));
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    let rest: Vec<Value> = json_lines(&resumed)
        .iter()
        .map(|e| e["loss"].clone())
        .collect();
    assert_eq!(rest, losses[3..], "the resumed updates' losses");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A corpus streamed from its file (`--streaming`) is refused under `mpirun`, for now: the
/// ranks fail at the start with an error saying so, and nothing is written.
#[test]
fn a_streamed_corpus_is_refused_on_every_rank() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = temp("streamed");
    let corpus = dir.join("corpus.txt");
    let lines: Vec<String> = (0..40)
        .map(|i| format!("line {i} of a small corpus that streams from its file"))
        .collect();
    std::fs::write(&corpus, lines.join("\n")).unwrap();
    let model = common::manifest_dir().join("tests/fixtures/trainer/fill_mask/initial");
    let out = dir.join("out");
    let args: Vec<String> = [
        "train",
        "--task",
        "fill-mask",
        "--model",
        model.to_str().unwrap(),
        "--train",
        corpus.to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
        "--streaming",
        "--max-steps",
        "4",
        "--per-device-train-batch-size",
        "2",
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let o = run(mpirun(2, &args));
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains(": error:")
            && err
                .contains("streams, and data-parallel training reads its training data in memory"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        o.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let written = std::fs::read_dir(&out).map(|d| d.count()).unwrap_or(0);
    assert_eq!(written, 0, "files in {}", out.display());
    let _ = std::fs::remove_dir_all(&dir);
}
