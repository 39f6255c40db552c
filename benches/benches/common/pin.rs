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
