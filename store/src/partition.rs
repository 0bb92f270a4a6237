//! Hour partitions: the Hive-style directory layout (`events/date=2026-11-22/hour=14/`) that DuckDB and
//! Spark read with `hive_partitioning=true`, and that retention deletes whole.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Timelike};

use crate::Table;

pub(crate) const HOUR_US: i64 = 3_600_000_000;

/// Start of the hour containing `time_us`, in microseconds.
pub(crate) fn hour_start(time_us: i64) -> i64 {
    time_us.div_euclid(HOUR_US) * HOUR_US
}

/// `events/date=YYYY-MM-DD/hour=HH` for the hour starting at `hour_start_us`.
pub(crate) fn partition_dir(table: Table, hour_start_us: i64) -> String {
    // Timestamps outside chrono's range (year ±262143) cannot come from real telemetry; clamp to the epoch.
    let t = DateTime::from_timestamp_micros(hour_start_us).unwrap_or_default();
    format!(
        "{}/date={}/hour={:02}",
        table.name(),
        t.format("%Y-%m-%d"),
        t.hour()
    )
}

/// A fresh file name in a partition. UUID v7 keeps names time-ordered and unique across processes.
pub(crate) fn new_file_path(table: Table, hour_start_us: i64) -> String {
    format!(
        "{}/{}.parquet",
        partition_dir(table, hour_start_us),
        uuid::Uuid::now_v7()
    )
}

/// The partition directory of a file path (`events/date=.../hour=..`), if it is one.
pub(crate) fn dir_of(path: &str) -> Option<&str> {
    path.rsplit_once('/').map(|(dir, _)| dir)
}

/// Parses the hour start (µs) back out of a partition path, so retention does not trust file statistics.
pub(crate) fn hour_of_path(path: &str) -> Option<i64> {
    let mut date = None;
    let mut hour = None;
    for part in path.split('/') {
        if let Some(d) = part.strip_prefix("date=") {
            date = NaiveDate::parse_from_str(d, "%Y-%m-%d").ok();
        } else if let Some(h) = part.strip_prefix("hour=") {
            hour = h.parse::<u32>().ok();
        }
    }
    let dt: NaiveDateTime = date?.and_hms_opt(hour?, 0, 0)?;
    Some(dt.and_utc().timestamp_micros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_paths_are_hive_style_and_round_trip() {
        // 2026-11-22T14:37:05Z
        let t = DateTime::parse_from_rfc3339("2026-11-22T14:37:05Z")
            .unwrap()
            .timestamp_micros();
        let h = hour_start(t);
        assert_eq!(
            partition_dir(Table::Events, h),
            "events/date=2026-11-22/hour=14"
        );
        let p = new_file_path(Table::Alerts, h);
        assert!(
            p.starts_with("alerts/date=2026-11-22/hour=14/") && p.ends_with(".parquet"),
            "{p}"
        );
        assert_eq!(hour_of_path(&p), Some(h));
        assert_eq!(dir_of(&p), Some("alerts/date=2026-11-22/hour=14"));
    }

    #[test]
    fn hour_start_floors_negative_times() {
        assert_eq!(hour_start(-1), -HOUR_US);
        assert_eq!(hour_start(HOUR_US + 5), HOUR_US);
    }
}
