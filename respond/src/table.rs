//! The `alert_deliveries` table: one row per queued notification, for SQL (`vigil-sql` serves it).

use std::sync::{Arc, OnceLock};

use arrow::array::{ArrayRef, Int64Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder, UInt32Builder, UInt16Builder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::outbox::DeliveryRecord;

pub fn deliveries_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let ts = |n: &str, nullable| Field::new(n, DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), nullable);
            let utf8 = |n: &str, nullable| Field::new(n, DataType::Utf8, nullable);
            Arc::new(Schema::new(vec![
                Field::new("delivery_seq", DataType::Int64, false),
                utf8("webhook_id", false),
                utf8("finding_id", false),
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
    let (mut seq, mut revision, mut attempts, mut code) =
        (Int64Builder::with_capacity(n), UInt32Builder::with_capacity(n), UInt32Builder::with_capacity(n), UInt16Builder::with_capacity(n));
    let (mut id, mut finding, mut fp, mut dest, mut pb, mut act, mut status, mut err) = (text(), text(), text(), text(), text(), text(), text(), text());
    let (mut created, mut delivered, mut next) = (ts(), ts(), ts());
    for d in rows {
        seq.append_value(i64::try_from(d.seq).unwrap_or(i64::MAX));
        id.append_value(&d.webhook_id);
        finding.append_value(&d.finding_id);
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
