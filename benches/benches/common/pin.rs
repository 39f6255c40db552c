//! Threads pinned to CPUs (with `taskset`, Linux), and one-worker runtimes,
//! for the benchmarks that put the server and its clients on cores of
//! their own.

#![allow(dead_code)] // each benchmark uses its own part of this

use tokio::runtime::Runtime;

/// The kernel's id of the calling thread.
pub(crate) fn this_tid() -> Option<u32> {
    std::fs::read_link("/proc/thread-self")
        .ok()?
        .file_name()?
        .to_str()?
        .parse()
        .ok()
}
/// Pins the calling thread to `cpu`; the threads it starts from now on
/// inherit this. False when it could not.
pub(crate) fn pin_this_thread(cpu: usize) -> bool {
    let Some(tid) = this_tid() else { return false };
    std::process::Command::new("taskset")
        .args(["-p", "-c", &cpu.to_string(), &tid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
/// A tokio runtime with one worker.
pub(crate) fn runtime(name: &str) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .enable_all()
        .build()
        .unwrap()
}
/// Pins the calling thread to CPU 0 unless `HEROLD_BENCH_PIN=0`, the
/// machine has one CPU or `taskset` is missing: whether it did.
pub(crate) fn pin_unless_told_not_to() -> bool {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pin = std::env::var("HEROLD_BENCH_PIN").map_or(true, |v| v != "0");
    pin && cpus >= 2 && pin_this_thread(0)
}
/// The number in environment variable `name`, or `default`.
pub(crate) fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
