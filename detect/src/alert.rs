//! The alert record, its Arrow schema (the `alerts` table) and its severities.
//!
//! An alert is what a detector hands to storage and to delivery. Its `fingerprint` identifies the condition
//! (detector + entity + the labels that make it distinct), so delivery can group a burst of identical
//! detections into one finding, Alertmanager-style.

use std::sync::{Arc, OnceLock};

use arrow::array::{
    ArrayRef, Float64Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

/// OCSF severity levels (`severity_id` 1..5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Informational = 1,
    Low = 2,
    Medium = 3,
    High = 4,
    Critical = 5,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Informational => "informational",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
    /// The OCSF `severity_id`.
    pub fn ocsf_id(self) -> u8 {
        self as u8
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "informational" | "info" => Severity::Informational,
            "low" => Severity::Low,
            "medium" => Severity::Medium,
            "high" => Severity::High,
            "critical" => Severity::Critical,
            _ => return None,
        })
    }
}

/// One detection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Unique per alert (UUID v7: sortable by time).
    pub alert_id: String,
    /// When the condition was detected, microseconds UTC (the triggering event's time for per-event detectors).
    pub time_us: i64,
    /// Stable detector id, e.g. `sensitive_data`, `prompt_injection`, `shadow_ai`.
    pub detector: String,
    pub severity: Severity,
    /// `user` | `agent` | `model` | `endpoint` | `provider` | `service`.
    pub entity_type: String,
    pub entity_id: String,
    /// Detector-specific strength (a z-score, a PSI, a match count...). Higher is worse.
    pub score: f64,
    pub title: String,
    pub description: String,
    /// `event_id`s of the events that triggered the alert.
    pub evidence_event_ids: Vec<String>,
    /// A short excerpt of the evidence with sensitive values masked. Never the raw secret.
    pub evidence: String,
    /// OWASP LLM Top 10 2025 category, e.g. `LLM01:2025 Prompt Injection`.
    pub owasp: Option<String>,
    /// MITRE ATLAS technique, e.g. `AML.T0051`.
    pub atlas: Option<String>,
    /// Identity of the condition for grouping/deduplication (hex hash of detector + entity + labels).
    pub fingerprint: String,
}

pub fn alert_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let utf8 = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
            Arc::new(Schema::new(vec![
                Field::new(
                    "time",
                    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                    false,
                ),
                utf8("alert_id", false),
                utf8("detector", false),
                utf8("severity", false),
                utf8("entity_type", false),
                utf8("entity_id", false),
                Field::new("score", DataType::Float64, false),
                utf8("title", false),
                utf8("description", false),
                utf8("evidence_event_ids", false),
                utf8("evidence", true),
                utf8("owasp", true),
                utf8("atlas", true),
                utf8("fingerprint", false),
            ]))
        })
        .clone()
}

/// The response columns the `alerts` table shows next to the stored ones, keyed by `alert_id`: what a
/// response playbook did about the alert and when the action webhook accepted it.
///
/// Stored alerts are append-only Parquet written before any response happens, so these columns are not
/// stored with them: the responder (`vigil-respond`) produces rows of this schema, at most one per
/// `alert_id`, and the SQL layer (`vigil-sql`) joins them in. Defined here, next to the alert schema,
/// because both crates depend on this one and neither may depend on the other. `responded_at - time` is
/// the alert's time to contain.
pub fn alert_response_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let ts = |name: &str| {
                Field::new(
                    name,
                    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                    true,
                )
            };
            Arc::new(Schema::new(vec![
                Field::new("alert_id", DataType::Utf8, false),
                // Playbook names and actions, comma-separated in the order they were triggered.
                Field::new("response_playbook", DataType::Utf8, true),
                Field::new("response_action", DataType::Utf8, true),
                // `delivered` once every action webhook accepted; otherwise the first unfinished action's
                // delivery status (`pending`, `retrying`, `dead_letter`, `disabled`).
                Field::new("response_status", DataType::Utf8, true),
                ts("response_requested_at"),
                // When the last action webhook accepted its action; NULL until all have.
                ts("responded_at"),
            ]))
        })
        .clone()
}

/// Builds the `alerts` table rows. `evidence_event_ids` is stored comma-separated.
pub fn alerts_to_batch(alerts: &[Alert]) -> RecordBatch {
    let n = alerts.len();
    let mut time = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut score = Float64Builder::with_capacity(n);
    let mut s: Vec<StringBuilder> = (0..12)
        .map(|_| StringBuilder::with_capacity(n, n * 32))
        .collect();
    for a in alerts {
        time.append_value(a.time_us);
        score.append_value(a.score);
        let values: [Option<&str>; 12] = [
            Some(&a.alert_id),
            Some(&a.detector),
            Some(a.severity.as_str()),
            Some(&a.entity_type),
            Some(&a.entity_id),
            Some(&a.title),
            Some(&a.description),
            None, // evidence_event_ids, below
            Some(&a.evidence),
            a.owasp.as_deref(),
            a.atlas.as_deref(),
            Some(&a.fingerprint),
        ];
        for (i, v) in values.into_iter().enumerate() {
            if i == 7 {
                s[i].append_value(a.evidence_event_ids.join(","));
            } else {
                s[i].append_option(v);
            }
        }
    }
    let mut fin = |i: usize| Arc::new(s[i].finish()) as ArrayRef;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(time.finish()),
        fin(0),
        fin(1),
        fin(2),
        fin(3),
        fin(4),
        Arc::new(score.finish()),
        fin(5),
        fin(6),
        fin(7),
        fin(8),
        fin(9),
        fin(10),
        fin(11),
    ];
    RecordBatch::try_new(alert_schema(), columns).expect("alert columns match the alert schema")
}

/// Why rows read back from the `alerts` table are not alerts.
#[derive(Debug, thiserror::Error)]
pub enum AlertRowsError {
    #[error("alerts rows lack column {0}")]
    MissingColumn(&'static str),
    #[error("alerts column {column}: {source}")]
    Cast {
        column: &'static str,
        source: arrow::error::ArrowError,
    },
    #[error("alerts row {row}: unknown severity {value:?}")]
    Severity { row: usize, value: String },
}

/// Reads `alerts` table rows (as stored, or as a query returns them with any string encoding) back into
/// alerts: the inverse of `alerts_to_batch`, for handing stored alerts to delivery again.
pub fn alerts_from_batch(batch: &RecordBatch) -> Result<Vec<Alert>, AlertRowsError> {
    use arrow::array::{Array, AsArray};
    use arrow::compute::cast;
    use arrow::datatypes::{Float64Type, TimestampMicrosecondType};
    let column = |name: &'static str, ty: &DataType| -> Result<ArrayRef, AlertRowsError> {
        let c = batch
            .column_by_name(name)
            .ok_or(AlertRowsError::MissingColumn(name))?;
        cast(c, ty).map_err(|source| AlertRowsError::Cast {
            column: name,
            source,
        })
    };
    let time = column("time", &DataType::Timestamp(TimeUnit::Microsecond, None))?;
    let time = time.as_primitive::<TimestampMicrosecondType>();
    let score = column("score", &DataType::Float64)?;
    let score = score.as_primitive::<Float64Type>();
    const NAMES: [&str; 12] = [
        "alert_id",
        "detector",
        "severity",
        "entity_type",
        "entity_id",
        "title",
        "description",
        "evidence_event_ids",
        "evidence",
        "owasp",
        "atlas",
        "fingerprint",
    ];
    let strings: Vec<ArrayRef> = NAMES
        .iter()
        .map(|n| column(n, &DataType::Utf8))
        .collect::<Result<_, _>>()?;
    let text = |c: usize, row: usize| -> Option<String> {
        let a = strings[c].as_string::<i32>();
        a.is_valid(row).then(|| a.value(row).to_string())
    };
    (0..batch.num_rows())
        .map(|row| {
            let sev = text(2, row).unwrap_or_default();
            Ok(Alert {
                alert_id: text(0, row).unwrap_or_default(),
                time_us: time.value(row),
                detector: text(1, row).unwrap_or_default(),
                severity: Severity::parse(&sev)
                    .ok_or(AlertRowsError::Severity { row, value: sev })?,
                entity_type: text(3, row).unwrap_or_default(),
                entity_id: text(4, row).unwrap_or_default(),
                score: if score.is_valid(row) {
                    score.value(row)
                } else {
                    0.0
                },
                title: text(5, row).unwrap_or_default(),
                description: text(6, row).unwrap_or_default(),
                evidence_event_ids: text(7, row)
                    .map(|s| {
                        s.split(',')
                            .filter(|e| !e.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
                evidence: text(8, row).unwrap_or_default(),
                owasp: text(9, row),
                atlas: text(10, row),
                fingerprint: text(11, row).unwrap_or_default(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;

    #[test]
    fn alerts_batch_keeps_every_field() {
        let a = Alert {
            alert_id: "a1".into(),
            time_us: 5,
            detector: "shadow_ai".into(),
            severity: Severity::High,
            entity_type: "model".into(),
            entity_id: "m".into(),
            score: 1.5,
            title: "t".into(),
            description: "d".into(),
            evidence_event_ids: vec!["e1".into(), "e2".into()],
            evidence: "x".into(),
            owasp: Some("LLM03:2025 Supply Chain".into()),
            atlas: None,
            fingerprint: "f".into(),
        };
        let b = alerts_to_batch(&[a]);
        assert_eq!(b.num_rows(), 1);
        let col = |n: &str| {
            b.column_by_name(n)
                .unwrap()
                .as_string::<i32>()
                .value(0)
                .to_string()
        };
        assert_eq!(col("detector"), "shadow_ai");
        assert_eq!(col("severity"), "high");
        assert_eq!(col("evidence_event_ids"), "e1,e2");
        assert_eq!(col("owasp"), "LLM03:2025 Supply Chain");
        assert_eq!(col("fingerprint"), "f");
        assert!(b.column_by_name("atlas").unwrap().is_null(0));
    }

    #[test]
    fn alerts_read_back_as_they_were_written_even_as_string_views() {
        let a = Alert {
            alert_id: "0193-a".into(),
            time_us: 1_767_225_600_000_000,
            detector: "token_spike".into(),
            severity: Severity::Medium,
            entity_type: "user".into(),
            entity_id: "u1".into(),
            score: 7.5,
            title: "t".into(),
            description: "d".into(),
            evidence_event_ids: vec!["e1".into(), "e2".into()],
            evidence: String::new(),
            owasp: None,
            atlas: Some("AML.T0034".into()),
            fingerprint: "fp".into(),
        };
        let b = alerts_to_batch(std::slice::from_ref(&a));
        assert_eq!(alerts_from_batch(&b).unwrap(), vec![a.clone()]);
        // Parquet scans in DataFusion hand strings back as Utf8View.
        let view: Vec<ArrayRef> = b
            .columns()
            .iter()
            .map(|c| match c.data_type() {
                DataType::Utf8 => arrow::compute::cast(c, &DataType::Utf8View).unwrap(),
                _ => c.clone(),
            })
            .collect();
        let fields: Vec<Field> = b
            .schema()
            .fields()
            .iter()
            .zip(&view)
            .map(|(f, c)| Field::new(f.name(), c.data_type().clone(), f.is_nullable()))
            .collect();
        let b = RecordBatch::try_new(Arc::new(Schema::new(fields)), view).unwrap();
        assert_eq!(alerts_from_batch(&b).unwrap(), vec![a]);
    }
}
