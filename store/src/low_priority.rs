//! Parquet encoding (flushes and compaction) on threads of lower scheduling priority.
//!
//! Encoding a flush is seconds of CPU that nobody waits on, while every OTLP request waits on its own
//! decode, detection and WAL commit. On the tokio blocking pool a flush competed with those at equal
//! priority and put a flush's length into the request tail (ack p99). A thread at nice 10 gets the CPU the
//! request path leaves; when the request path uses it all, the write buffer fills and admission refuses
//! work (429), which frees the CPU for the flush again.

use crate::StoreError;

/// Nice value of encoding threads: a tenth of a normal thread's share of a busy core.
const NICE: i32 = 10;

/// Runs `work` on a new low-priority thread and waits for it without blocking the runtime.
pub(crate) async fn run<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, StoreError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("vigil-{what}"))
        .spawn(move || {
            lower_own_priority();
            let _ = tx.send(work());
        })
        .map_err(|e| StoreError::Manifest(format!("{what} thread: {e}")))?;
    rx.await
        .map_err(|_| StoreError::Manifest(format!("{what} thread ended without a result")))
}

#[cfg(target_os = "linux")]
fn lower_own_priority() {
    // On Linux the nice value belongs to the thread, and `who = 0` names the calling one. A failure only
    // leaves the thread at normal priority.
    // SAFETY: setpriority takes plain integers and touches no memory of ours.
    let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, NICE) };
}

#[cfg(not(target_os = "linux"))]
fn lower_own_priority() {}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn runs_the_work_at_lower_priority_and_returns_its_result() {
        let nice = super::run("test", || {
            // SAFETY: getpriority reads the calling thread's nice value.
            #[cfg(target_os = "linux")]
            let n = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
            #[cfg(not(target_os = "linux"))]
            let n = super::NICE;
            n
        })
        .await
        .expect("thread result");
        assert!(nice >= super::NICE, "nice {nice}");
    }
}
