//! The `alert_deliveries` table (one row per queued notification) and the response columns of `alerts`
//! (one row per alert a playbook responded to), for SQL (`vigil-sql` serves them).

use std::sync::{Arc, OnceLock};

use arrow::array::{
    ArrayRef, Int64Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder, UInt16Builder,
    UInt32Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::outbox::{DeliveryRecord, DeliveryStatus};
use crate::responder::ResponseView;

pub fn deliveries_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let ts = |n: &str, nullable| {
                Field::new(
                    n,
                    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                    nullable,
                )
            };
            let utf8 = |n: &str, nullable| Field::new(n, DataType::Utf8, nullable);
            Arc::new(Schema::new(vec![
                Field::new("delivery_seq", DataType::Int64, false),
                utf8("webhook_id", false),
                utf8("finding_id", false),
                // See `DeliveryRecord::alert_id`: the alert the notification describes, NULL for old records.
                utf8("alert_id", true),
                utf8("fingerprint", false),
                utf8("destination", false),
                utf8("playbook", true),
                Field::new("revision", DataType::UInt32, false),
                utf8("activity", false),
                Field::new("attempts", DataType::UInt32, false),
                utf8("status", false),
                utf8("last_error", true),
                Field::new("last_status_code", DataType::UInt16, true),
                ts("created_at", false),
                ts("delivered_at", true),
                ts("next_attempt_at", true),
            ]))
        })
        .clone()
}

pub fn deliveries_to_batch(rows: &[DeliveryRecord]) -> RecordBatch {
    let n = rows.len();
    let ts = || TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let text = || StringBuilder::with_capacity(n, n * 24);
    let (mut seq, mut revision, mut attempts, mut code) = (
        Int64Builder::with_capacity(n),
        UInt32Builder::with_capacity(n),
        UInt32Builder::with_capacity(n),
        UInt16Builder::with_capacity(n),
    );
    let (mut id, mut finding, mut fp, mut dest, mut pb, mut act, mut status, mut err) = (
        text(),
        text(),
        text(),
        text(),
        text(),
        text(),
        text(),
        text(),
    );
    let mut alert = text();
    let (mut created, mut delivered, mut next) = (ts(), ts(), ts());
    for d in rows {
        seq.append_value(i64::try_from(d.seq).unwrap_or(i64::MAX));
        id.append_value(&d.webhook_id);
        finding.append_value(&d.finding_id);
        alert.append_option(d.alert_id.as_deref());
        fp.append_value(&d.fingerprint);
        dest.append_value(&d.destination);
        pb.append_option(d.playbook.as_deref());
        revision.append_value(d.revision);
        act.append_value(d.activity.as_str());
        attempts.append_value(d.attempts);
        status.append_value(d.status.as_str());
        err.append_option(d.last_error.as_deref());
        code.append_option(d.last_status_code);
        created.append_value(d.created_at_ms * 1000);
        delivered.append_option(d.delivered_at_ms.map(|t| t * 1000));
        next.append_option(d.next_attempt_at_ms.map(|t| t * 1000));
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(seq.finish()),
        Arc::new(id.finish()),
        Arc::new(finding.finish()),
        Arc::new(alert.finish()),
        Arc::new(fp.finish()),
        Arc::new(dest.finish()),
        Arc::new(pb.finish()),
        Arc::new(revision.finish()),
        Arc::new(act.finish()),
        Arc::new(attempts.finish()),
        Arc::new(status.finish()),
        Arc::new(err.finish()),
        Arc::new(code.finish()),
        Arc::new(created.finish()),
        Arc::new(delivered.finish()),
        Arc::new(next.finish()),
    ];
    RecordBatch::try_new(deliveries_schema(), columns).expect("delivery columns match the schema")
}

/// The responses taken, folded to one row per alert ([`vigil_detect::alert_response_schema`]), so joining
/// them to `alerts` never repeats an alert row. Several playbooks can answer one alert: their names and
/// actions are listed in the order they were triggered, the status is `delivered` only once every action
/// webhook accepted (else the first unfinished action's status), and `responded_at` is when the last one
/// did. Responses from older outboxes, which did not record their alert, are left out.
pub fn alert_responses_to_batch(responses: &[ResponseView]) -> RecordBatch {
    let mut by_alert: Vec<(&str, Vec<&ResponseView>)> = Vec::new();
    let mut index: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for r in responses.iter().filter(|r| !r.record.alert_id.is_empty()) {
        let id = r.record.alert_id.as_str();
        match index.get(id) {
            Some(&i) => by_alert[i].1.push(r),
            None => {
                index.insert(id, by_alert.len());
                by_alert.push((id, vec![r]));
            }
        }
    }
    let n = by_alert.len();
    let text = || StringBuilder::with_capacity(n, n * 24);
    let ts = || TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let (mut alert, mut playbook, mut action, mut status) = (text(), text(), text(), text());
    let (mut requested, mut responded) = (ts(), ts());
    for (id, rs) in &by_alert {
        let join =
            |f: fn(&ResponseView) -> &str| rs.iter().map(|r| f(r)).collect::<Vec<_>>().join(",");
        alert.append_value(id);
        playbook.append_value(join(|r| r.record.playbook.as_str()));
        action.append_value(join(|r| r.record.action.as_str()));
        let unfinished = rs.iter().find(|r| r.status != DeliveryStatus::Delivered);
        status.append_value(
            unfinished
                .map_or(DeliveryStatus::Delivered, |r| r.status)
                .as_str(),
        );
        requested.append_option(
            rs.iter()
                .map(|r| r.record.triggered_at_ms)
                .min()
                .map(|t| t * 1000),
        );
        let all_done: Option<Vec<i64>> = rs.iter().map(|r| r.completed_at_ms).collect();
        responded.append_option(
            all_done
                .filter(|_| unfinished.is_none())
                .and_then(|t| t.into_iter().max())
                .map(|t| t * 1000),
        );
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(alert.finish()),
        Arc::new(playbook.finish()),
        Arc::new(action.finish()),
        Arc::new(status.finish()),
        Arc::new(requested.finish()),
        Arc::new(responded.finish()),
    ];
    RecordBatch::try_new(vigil_detect::alert_response_schema(), columns)
        .expect("response columns match the schema")
}
