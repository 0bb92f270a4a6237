//! Background tasks: a flush task (woken when the buffer is full, and every second to check its age) and a
//! maintenance task (compaction, retention, delayed deletes every `maintenance_interval`). They hold only a
//! weak reference, so a dropped store is not kept alive by its own tasks.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::Store;

pub(crate) fn spawn(store: &Arc<Store>) {
    if store.background.swap(true, Ordering::SeqCst) {
        return;
    }
    let flush = {
        let weak: Weak<Store> = Arc::downgrade(store);
        let shared = store.shared.clone();
        let mut stop = store.stop.subscribe();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = shared.flush_wanted.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                if !shared.should_flush() {
                    continue;
                }
                let Some(store) = weak.upgrade() else { break };
                if let Err(e) = store.flush().await {
                    tracing::error!(error = %e, "flush failed; rows stay in the WAL and the buffer");
                }
            }
        })
    };
    let maintenance = {
        let weak: Weak<Store> = Arc::downgrade(store);
        let every = store.config.maintenance_interval;
        let mut stop = store.stop.subscribe();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await; // the first tick is immediate
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tick.tick() => {}
                }
                let Some(store) = weak.upgrade() else { break };
                if let Err(e) = store.compact().await {
                    tracing::error!(error = %e, "compaction failed");
                }
                let now_us = chrono::Utc::now().timestamp_micros();
                if let Err(e) = store.apply_retention(now_us).await {
                    tracing::error!(error = %e, "retention failed");
                }
            }
        })
    };
    store.tasks.lock().extend([flush, maintenance]);
}
