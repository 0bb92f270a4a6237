//! Restarting a consumer that stopped on an error, so that one bug met in a batch (a panic while combining
//! it, a failed assignment check) does not leave a running server that silently consumes nothing. A restart
//! reads again from the committed offsets, which never pass what was stored, so nothing is lost; what was
//! stored but not committed is read again and dropped as a repeat by the store.

use std::future::Future;
use std::time::{Duration, Instant};

use super::metrics as kmetrics;
use super::KafkaError;

/// The first wait before a restart; it doubles up to [`BACKOFF_MAX`].
pub(super) const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A run that lasted this long was healthy: the next failure waits [`BACKOFF_START`] again.
const HEALTHY_RUN: Duration = Duration::from_secs(300);

/// Runs `attempt` until it returns `Ok` (it stopped for `shutdown`) or a configuration error (which a
/// restart cannot cure); after any other error it waits, counts the restart and runs it again. `shutdown`
/// ends the wait too.
pub(super) async fn supervise<S, F, Fut>(
    shutdown: S,
    first_backoff: Duration,
    mut attempt: F,
) -> Result<(), KafkaError>
where
    S: Future<Output = ()> + Clone,
    F: FnMut(S) -> Fut,
    Fut: Future<Output = Result<(), KafkaError>>,
{
    let mut backoff = first_backoff;
    loop {
        let started = Instant::now();
        let err = match attempt(shutdown.clone()).await {
            Ok(()) => return Ok(()),
            Err(e @ KafkaError::Config(_)) => return Err(e),
            Err(e) => e,
        };
        if started.elapsed() >= HEALTHY_RUN {
            backoff = first_backoff;
        }
        kmetrics::RESTARTS.inc();
        tracing::error!(error = %err, "kafka consumer stopped; restarting in {backoff:?} from the committed offsets");
        tokio::select! {
            () = shutdown.clone() => return Ok(()),
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::FutureExt;

    use super::*;

    #[tokio::test]
    async fn a_consumer_that_fails_is_run_again_until_it_stops_cleanly() {
        let restarts = kmetrics::RESTARTS.get();
        let attempts = AtomicUsize::new(0);
        let never = std::future::pending::<()>().boxed().shared();
        let result = supervise(never, Duration::from_millis(1), |_stop| {
            let n = attempts.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    Err(KafkaError::Internal(format!("failure {n}")))
                } else {
                    Ok(())
                }
            }
        })
        .await;
        assert!(result.is_ok());
        assert_eq!(attempts.load(Ordering::SeqCst), 3);
        assert!(kmetrics::RESTARTS.get() >= restarts + 2);
    }

    #[tokio::test]
    async fn a_configuration_error_is_not_retried_and_shutdown_ends_the_wait() {
        let attempts = AtomicUsize::new(0);
        let never = std::future::pending::<()>().boxed().shared();
        let result = supervise(never, Duration::from_millis(1), |_stop| {
            attempts.fetch_add(1, Ordering::SeqCst);
            async { Err(KafkaError::Config("no brokers".into())) }
        })
        .await;
        assert!(matches!(result, Err(KafkaError::Config(_))));
        assert_eq!(attempts.load(Ordering::SeqCst), 1);

        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let stop = rx.map(|_| ()).boxed().shared();
        let supervised = tokio::spawn(supervise(stop, Duration::from_secs(3600), |_stop| async {
            Err(KafkaError::Internal("always".into()))
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.send(()).expect("the supervisor waits");
        let ended = tokio::time::timeout(Duration::from_secs(5), supervised).await;
        assert!(
            matches!(ended, Ok(Ok(Ok(())))),
            "shutdown ends an hour's wait"
        );
    }
}
