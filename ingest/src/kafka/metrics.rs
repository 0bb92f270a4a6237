//! Kafka consumer metrics, in the process-wide Prometheus registry.
//!
//! Lag is the number an operator scales on: it grows when this group reads slower than the Collectors
//! write, and stays high on the partitions of an instance whose sink is refusing work.

use std::sync::LazyLock;

use prometheus::{
    register_histogram, register_int_counter, register_int_counter_vec, register_int_gauge_vec,
    Histogram, IntCounter, IntCounterVec, IntGaugeVec,
};

/// Messages behind the high watermark, per assigned partition; only this process's partitions are shown.
pub static LAG: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "vigil_kafka_lag",
        "Messages between this consumer's position and the partition's high watermark",
        &["topic", "partition"]
    )
    .expect("vigil_kafka_lag registers once")
});

/// Messages consumed, by outcome: `ok` (stored, possibly with zero events) or `dlq` (dead-lettered). Counted
/// when the offset is handed to librdkafka for the next commit, not when the commit lands.
pub static MESSAGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "vigil_kafka_messages_total",
        "Kafka messages consumed and their offsets stored for commit, by outcome",
        &["topic", "outcome"]
    )
    .expect("vigil_kafka_messages_total registers once")
});

/// Events the sink accepted as durable, by source topic; a replayed message counts again (the store drops
/// the repeated events).
pub static EVENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "vigil_kafka_events_total",
        "Events from Kafka accepted by the sink",
        &["topic"]
    )
    .expect("vigil_kafka_events_total registers once")
});

/// Undecodable or refused messages dead-lettered, by source topic: sent to the dead-letter topic, or, with
/// none configured, skipped (and logged).
pub static DLQ: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "vigil_kafka_dlq_total",
        "Kafka messages dead-lettered (sent to the dead-letter topic, or skipped and logged when none is configured), by source topic",
        &["topic"]
    )
    .expect("vigil_kafka_dlq_total registers once")
});

/// Batches the sink refused and that are being retried, by reason (`overloaded`, `unavailable`, `internal`,
/// `dlq`): a steadily growing counter means a stuck consumer.
pub static RETRIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "vigil_kafka_retries_total",
        "Kafka batches retried because the sink or the dead-letter producer refused them",
        &["reason"]
    )
    .expect("vigil_kafka_retries_total registers once")
});

/// Times this consumer left and rejoined its group because its assignment stayed empty although the
/// subscribed topics have partitions (see `kafka::rejoin`): each one is a coordinator mistake repaired.
pub static REJOINS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "vigil_kafka_rejoins_total",
        "Times the Kafka consumer rejoined its group after an empty assignment that did not go away"
    )
    .expect("vigil_kafka_rejoins_total registers once")
});

/// Times the consumer stopped on an error and was started again (see `kafka::supervise`). Each one is a
/// bug met in a batch; the error is in the log.
pub static RESTARTS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "vigil_kafka_consumer_restarts_total",
        "Times the Kafka consumer stopped on an error and was restarted from the committed offsets"
    )
    .expect("vigil_kafka_consumer_restarts_total registers once")
});

/// Batches delivered in more than one part because their events outgrew `kafka.batch_max_bytes` once
/// normalised (see `consumer::decode_part`). Often non-zero means messages that expand a lot: resource
/// attributes copied into each of many events.
pub static BATCH_SPLITS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "vigil_kafka_batch_splits_total",
        "Kafka batches delivered in parts because their normalised events outgrew kafka.batch_max_bytes"
    )
    .expect("vigil_kafka_batch_splits_total registers once")
});

/// 1 while the partition is paused because the sink refused a batch (backpressure), absent otherwise. While
/// paused nothing more is fetched and librdkafka drops what it had prefetched, so a stuck sink costs no
/// memory. `vigil_kafka_lag` is not refreshed meanwhile (librdkafka's statistics are served by the
/// consumer's poll, which waits for the refused batch), so this gauge is what shows a stuck consumer.
pub static PAUSED: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "vigil_kafka_paused",
        "1 while a partition is paused because the sink refused work (backpressure)",
        &["topic", "partition"]
    )
    .expect("vigil_kafka_paused registers once")
});

/// How long a synchronous offset commit takes: slow commits widen the window replayed after a crash.
pub static COMMIT_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "vigil_kafka_commit_seconds",
        "Duration of Kafka offset commits",
        vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]
    )
    .expect("vigil_kafka_commit_seconds registers once")
});

/// One partition's offsets as librdkafka's statistics report them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionOffsets<'a> {
    pub topic: &'a str,
    pub partition: i32,
    /// Whether this consumer is assigned the partition (librdkafka lists every known partition).
    pub assigned: bool,
    pub high_watermark: i64,
    /// The next offset the application will read; negative while unknown.
    pub position: i64,
    /// The committed offset; negative while none.
    pub committed: i64,
}

/// Lag of one partition: from the position when known, else from the committed offset, else unknown.
pub fn lag_of(p: &PartitionOffsets<'_>) -> Option<i64> {
    if !p.assigned || p.partition < 0 || p.high_watermark < 0 {
        return None;
    }
    let from = if p.position >= 0 {
        p.position
    } else {
        p.committed
    };
    (from >= 0).then(|| (p.high_watermark - from).max(0))
}

/// Replaces the lag gauges with this snapshot, so partitions that moved to another consumer disappear
/// instead of reporting a stale lag forever.
pub fn set_lag<'a>(partitions: impl IntoIterator<Item = PartitionOffsets<'a>>) {
    LAG.reset();
    for p in partitions {
        if let Some(lag) = lag_of(&p) {
            LAG.with_label_values(&[p.topic, &p.partition.to_string()])
                .set(lag);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(
        assigned: bool,
        high: i64,
        position: i64,
        committed: i64,
    ) -> PartitionOffsets<'static> {
        PartitionOffsets {
            topic: "t",
            partition: 0,
            assigned,
            high_watermark: high,
            position,
            committed,
        }
    }

    #[test]
    fn lag_is_high_watermark_minus_position_for_assigned_partitions_only() {
        assert_eq!(lag_of(&offsets(true, 100, 60, 50)), Some(40));
        assert_eq!(
            lag_of(&offsets(true, 100, -1001, 50)),
            Some(50),
            "committed offset before any fetch"
        );
        assert_eq!(lag_of(&offsets(true, 100, -1001, -1001)), None);
        assert_eq!(lag_of(&offsets(false, 100, 60, 50)), None);
        assert_eq!(lag_of(&offsets(true, 10, 12, 0)), Some(0), "never negative");
    }

    #[test]
    fn set_lag_drops_partitions_no_longer_assigned() {
        set_lag([PartitionOffsets {
            topic: "lag_test",
            partition: 3,
            ..offsets(true, 10, 4, 0)
        }]);
        assert_eq!(LAG.with_label_values(&["lag_test", "3"]).get(), 6);
        set_lag([PartitionOffsets {
            topic: "lag_test",
            partition: 3,
            ..offsets(false, 10, 4, 0)
        }]);
        let families = prometheus::gather();
        let lag = families.iter().find(|f| f.name() == "vigil_kafka_lag");
        let shown = lag.map(|f| {
            f.get_metric()
                .iter()
                .any(|m| m.get_label().iter().any(|l| l.value() == "lag_test"))
        });
        assert_ne!(shown, Some(true), "revoked partition still reported");
    }
}
