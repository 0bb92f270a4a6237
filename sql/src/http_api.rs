//! `/api/v1/query`: SQL over HTTP for scripts, notebooks and SOAR playbooks.
//!
//! Request: `POST` of `{"sql": "...", "format": "json" | "csv" | "arrow"}` as `application/json`, or the same
//! fields as a form (`curl --data-urlencode 'sql=...'`) or in the query string of a `GET`, as Prometheus'
//! `/api/v1/query` and GreptimeDB's `/v1/sql` take theirs; without `format` the `Accept` header picks
//! (`text/csv`, `application/vnd.apache.arrow.stream`, otherwise JSON). The JSON answer is
//! `{"columns": [{"name", "type"}], "rows": [{..}], "row_count": n, "elapsed_ms": ms}` with timestamps in
//! RFC 3339. Errors are `{"error": "..."}`: 400 when the query is at fault (refused, invalid, over a limit,
//! timed out), 500 otherwise. Same guard and limits as the pg server; authentication is the binary's layer.

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, Query, Request, State};
use axum::http::header::{ACCEPT, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Form, Json, Router};
use bytes::Bytes;
use datafusion::prelude::SessionContext;
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::context::{run_query_as, Interface, QueryLimits, QueryOutput};
use crate::error::QueryError;
use crate::metrics;

pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// What the query routes share.
#[derive(Clone)]
pub struct ApiState {
    pub ctx: Arc<SessionContext>,
    pub limits: QueryLimits,
    /// One slot per answer being collected, encoded or sent: each holds up to `max_result_bytes` of batches
    /// and twice that of text outside the query memory pool, so their number bounds that memory.
    answers: Arc<Semaphore>,
    max_answers: usize,
}

impl ApiState {
    /// `max_concurrent` answers at once (at least one); the rest wait up to the statement timeout (a burst of
    /// a playbook's queries queues), then get 429.
    pub fn new(ctx: Arc<SessionContext>, limits: QueryLimits, max_concurrent: usize) -> Self {
        let max_answers = max_concurrent.clamp(1, Semaphore::MAX_PERMITS);
        ApiState {
            ctx,
            limits,
            answers: Arc::new(Semaphore::new(max_answers)),
            max_answers,
        }
    }
}

/// The query API's routes, to be merged into the binary's HTTP server (behind its authentication).
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/query", get(query_get).post(query_post))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryRequest {
    sql: String,
    #[serde(default)]
    format: Option<Format>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Format {
    Json,
    Csv,
    Arrow,
}

#[derive(Serialize)]
struct Column {
    name: String,
    #[serde(rename = "type")]
    data_type: String,
}

/// The JSON answer without its rows, which are written after it straight into the body (see
/// [`encode_json`]).
#[derive(Serialize)]
struct JsonHead {
    columns: Vec<Column>,
    row_count: usize,
    elapsed_ms: f64,
}

async fn query_get(
    State(state): State<ApiState>,
    headers: HeaderMap,
    request: Result<Query<QueryRequest>, QueryRejection>,
) -> Response {
    match request {
        Ok(Query(request)) => query(&state, &headers, request).await,
        Err(rejection) => error_response(StatusCode::BAD_REQUEST, &rejection.body_text()),
    }
}

/// JSON by default; a form only when the body says it is one, which is what `curl -d` sends.
async fn query_post(State(state): State<ApiState>, request: Request) -> Response {
    let headers = request.headers().clone();
    let is_form = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let parsed = if is_form {
        Form::<QueryRequest>::from_request(request, &())
            .await
            .map(|Form(r)| r)
            .map_err(|rejection| {
                format!(
                    "{} (a form needs a field `sql=...`; to send JSON, set `Content-Type: application/json`)",
                    rejection.body_text()
                )
            })
    } else {
        Json::<QueryRequest>::from_request(request, &())
            .await
            .map(|Json(r)| r)
            .map_err(|rejection| rejection.body_text())
    };
    match parsed {
        Ok(request) => query(&state, &headers, request).await,
        Err(message) => error_response(StatusCode::BAD_REQUEST, &message),
    }
}

async fn query(state: &ApiState, headers: &HeaderMap, request: QueryRequest) -> Response {
    let format = request
        .format
        .unwrap_or_else(|| format_from_accept(headers));
    let wait = state.limits.timeout;
    let Ok(Ok(slot)) = tokio::time::timeout(wait, state.answers.clone().acquire_owned()).await
    else {
        let busy = QueryError::Busy(state.max_answers);
        metrics::record_unrun(Interface::Http.as_str(), busy.outcome());
        return query_error_response(&busy);
    };
    let started = Instant::now();
    let output = match run_query_as(&state.ctx, &request.sql, &state.limits, Interface::Http).await
    {
        Ok(output) => output,
        Err(e) => return query_error_response(&e),
    };
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    let cap = answer_cap(&state.limits);
    let mut body = Capped::new(cap);
    let encoded = match format {
        Format::Json => encode_json(&output, elapsed_ms, &mut body).map(|()| "application/json"),
        Format::Csv => encode_csv(&output, &mut body).map(|()| "text/csv; charset=utf-8"),
        Format::Arrow => encode_arrow(&output, &mut body).map(|()| ARROW_STREAM),
    };
    match encoded {
        Ok(content_type) => {
            let body = Bytes::from_owner(Answer {
                bytes: body.out,
                _slot: slot,
            });
            let mut response = (StatusCode::OK, body).into_response();
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
            response
        }
        Err(_) if body.over => query_error_response(&QueryError::TooManyBytes(cap)),
        Err(e) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("encoding the answer failed: {e}"),
        ),
    }
}

/// The most an encoded answer may hold: twice the limit on its Arrow batches, for text that is longer than
/// the values it prints (JSON names every column in every row).
fn answer_cap(limits: &QueryLimits) -> usize {
    limits.max_result_bytes.saturating_mul(2)
}

/// The response body, refused past `cap` bytes. `max_result_bytes` bounds the answer's Arrow batches, but
/// not its text: a control character becomes six bytes of JSON (`\u0001`), and the body is outside the
/// query memory pool, so a crafted query turned 60 MB of batches into most of a gigabyte.
struct Capped {
    out: Vec<u8>,
    cap: usize,
    over: bool,
}

impl Capped {
    fn new(cap: usize) -> Self {
        Capped {
            out: Vec::new(),
            cap,
            over: false,
        }
    }
}

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len().saturating_add(buf.len()) > self.cap {
            self.over = true;
            return Err(std::io::Error::other(format!(
                "the answer is over {} bytes",
                self.cap
            )));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn format_from_accept(headers: &HeaderMap) -> Format {
    let accept = headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept.contains("text/csv") {
        Format::Csv
    } else if accept.contains(ARROW_STREAM) {
        Format::Arrow
    } else {
        Format::Json
    }
}

/// An answer's bytes with its slot: the slot is free once the server has sent them and let go, so a client
/// that reads slowly keeps its share.
struct Answer {
    bytes: Vec<u8>,
    _slot: OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Answer {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

fn query_error_response(e: &QueryError) -> Response {
    if let QueryError::Busy(_) = e {
        let mut response = error_response(StatusCode::TOO_MANY_REQUESTS, &e.to_string());
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    }
    let status = if e.is_client_error() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    error_response(status, &e.to_string())
}

fn error_response(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// Timestamps without a time zone are UTC in Vigil; give them one so the JSON writer prints an offset and
/// the text is RFC 3339.
fn with_utc_timestamps(output: &QueryOutput) -> Result<(SchemaRef, Vec<RecordBatch>), ArrowError> {
    let needs = |dt: &DataType| matches!(dt, DataType::Timestamp(_, None));
    if !output.schema.fields().iter().any(|f| needs(f.data_type())) {
        return Ok((output.schema.clone(), output.batches.clone()));
    }
    let fields: Vec<Field> = output
        .schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Timestamp(unit, None) => f
                .as_ref()
                .clone()
                .with_data_type(DataType::Timestamp(*unit, Some("UTC".into()))),
            _ => f.as_ref().clone(),
        })
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let batches = output
        .batches
        .iter()
        .map(|batch| {
            let columns = batch
                .columns()
                .iter()
                .zip(schema.fields())
                .map(|(col, field)| {
                    if col.data_type() == field.data_type() {
                        Ok(col.clone())
                    } else {
                        cast(col, field.data_type())
                    }
                })
                .collect::<Result<Vec<ArrayRef>, _>>()?;
            RecordBatch::try_new(schema.clone(), columns)
        })
        .collect::<Result<_, _>>()?;
    Ok((schema, batches))
}

/// `{"columns": [...], "row_count": n, "elapsed_ms": t, "rows": [...]}`, the rows written by Arrow's JSON
/// writer straight into the body (no second copy of them).
fn encode_json(output: &QueryOutput, elapsed_ms: f64, body: &mut Capped) -> Result<(), ArrowError> {
    use std::io::Write;
    let (schema, batches) = with_utc_timestamps(output)?;
    let head = JsonHead {
        columns: schema
            .fields()
            .iter()
            .map(|f| Column {
                name: f.name().clone(),
                data_type: f.data_type().to_string(),
            })
            .collect(),
        row_count: output.row_count(),
        elapsed_ms,
    };
    let head = serde_json::to_vec(&head).map_err(|e| ArrowError::JsonError(e.to_string()))?;
    // The head's closing brace makes way for the rows.
    body.write_all(&head[..head.len() - 1])?;
    body.write_all(br#","rows":"#)?;
    let before = body.out.len();
    {
        let mut writer = arrow::json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, arrow::json::writer::JsonArray>(&mut *body);
        for batch in &batches {
            writer.write(batch)?;
        }
        writer.finish()?;
    }
    if body.out.len() == before {
        body.write_all(b"[]")?;
    }
    body.write_all(b"}")?;
    Ok(())
}

fn encode_csv(output: &QueryOutput, body: &mut Capped) -> Result<(), ArrowError> {
    let (schema, batches) = with_utc_timestamps(output)?;
    let mut writer = arrow::csv::WriterBuilder::new()
        .with_header(true)
        .build(body);
    if batches.is_empty() {
        writer.write(&RecordBatch::new_empty(schema))?;
    }
    for batch in &batches {
        writer.write(batch)?;
    }
    Ok(())
}

fn encode_arrow(output: &QueryOutput, body: &mut Capped) -> Result<(), ArrowError> {
    let mut writer = arrow::ipc::writer::StreamWriter::try_new(body, &output.schema)?;
    for batch in &output.batches {
        writer.write(batch)?;
    }
    writer.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::session_context;
    use crate::test_support::TestSource;

    async fn serve(dir: &std::path::Path) -> String {
        serve_with(dir, QueryLimits::default()).await
    }

    async fn serve_with(dir: &std::path::Path, limits: QueryLimits) -> String {
        serve_answering(dir, limits, 8).await
    }

    /// The query API with `answers` slots.
    async fn serve_answering(dir: &std::path::Path, limits: QueryLimits, answers: usize) -> String {
        let source = TestSource::with_hours(dir, &[(0, 4), (1, 5)], 3);
        let ctx = Arc::new(session_context(Arc::new(source), limits.clone()).unwrap());
        let app = router(ApiState::new(ctx, limits, answers));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/api/v1/query")
    }

    /// POSTs `{"sql": sql}` and returns the status and the JSON body.
    async fn post_sql(
        client: &reqwest::Client,
        url: &str,
        sql: &str,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        let resp = client
            .post(url)
            .json(&serde_json::json!({ "sql": sql }))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap())
    }

    #[tokio::test]
    async fn json_answer_has_columns_rows_and_rfc3339_times() {
        let dir = tempfile::tempdir().unwrap();
        let url = serve(dir.path()).await;
        let client = reqwest::Client::new();
        let resp = client
            .post(&url)
            .json(&serde_json::json!({"sql": "SELECT kind, count(*) AS n, min(time) AS first FROM events GROUP BY kind ORDER BY kind"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["row_count"], 2);
        assert_eq!(body["columns"][0]["name"], "kind");
        assert_eq!(body["columns"][1]["name"], "n");
        let rows = body["rows"].as_array().unwrap();
        assert_eq!(rows[0]["kind"], "inference");
        // 4 + 5 + 3 events, even ones are inference: 2 + 3 + 2.
        assert_eq!(rows[0]["n"], 7);
        assert_eq!(rows[1]["n"], 5);
        let first = rows[0]["first"].as_str().unwrap();
        let parsed =
            chrono::DateTime::parse_from_rfc3339(first).unwrap_or_else(|e| panic!("{first}: {e}"));
        assert_eq!(parsed.timestamp(), crate::test_support::BASE_US / 1_000_000);
        assert!(body["elapsed_ms"].as_f64().unwrap() >= 0.0);
    }

    #[tokio::test]
    async fn a_get_or_a_form_asks_as_well_as_json_does() {
        let dir = tempfile::tempdir().unwrap();
        let url = serve(dir.path()).await;
        let client = reqwest::Client::new();
        let sql = "SELECT user_id, count(*) AS n FROM events GROUP BY user_id ORDER BY user_id";
        let expected = "user_id,n\nuser0,5\nuser1,4\nuser2,3\n";

        let resp = client
            .get(&url)
            .query(&[("sql", sql), ("format", "csv")])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), expected);

        // What `curl --data-urlencode sql=...` sends.
        let resp = client
            .post(&url)
            .header(ACCEPT, "text/csv")
            .form(&[("sql", sql)])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), expected);

        // What `curl -d '{"sql": ...}'` sends without a Content-Type: a form that is JSON.
        let resp = client
            .post(&url)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(serde_json::json!({ "sql": sql }).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
        let body: serde_json::Value = resp.json().await.unwrap();
        let error = body["error"].as_str().unwrap();
        assert!(error.contains("Content-Type: application/json"), "{error}");

        // The guard holds whatever the request's shape.
        let resp = client
            .get(&url)
            .query(&[("sql", "COPY events TO '/tmp/x.parquet'")])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
    }

    #[tokio::test]
    async fn csv_and_arrow_answers() {
        let dir = tempfile::tempdir().unwrap();
        let url = serve(dir.path()).await;
        let client = reqwest::Client::new();
        let sql = "SELECT user_id, count(*) AS n FROM events GROUP BY user_id ORDER BY user_id";

        let resp = client
            .post(&url)
            .json(&serde_json::json!({"sql": sql, "format": "csv"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/csv"));
        let text = resp.text().await.unwrap();
        // Users cycle user0,user1,user2 within each file: 4 -> 2,1,1; 5 -> 2,2,1; 3 -> 1,1,1.
        assert_eq!(text, "user_id,n\nuser0,5\nuser1,4\nuser2,3\n");

        let resp = client
            .post(&url)
            .header(ACCEPT, ARROW_STREAM)
            .json(&serde_json::json!({"sql": sql}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()[CONTENT_TYPE], ARROW_STREAM);
        let bytes = resp.bytes().await.unwrap();
        let reader =
            arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).unwrap();
        let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().unwrap();
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 3);
        assert_eq!(batches[0].schema().field(1).name(), "n");

        let resp = client
            .post(&url)
            .header(ACCEPT, "text/csv")
            .json(&serde_json::json!({"sql": sql}))
            .send()
            .await
            .unwrap();
        assert!(resp.text().await.unwrap().starts_with("user_id,n\n"));
    }

    #[tokio::test]
    async fn empty_answers_keep_their_columns() {
        let dir = tempfile::tempdir().unwrap();
        let url = serve(dir.path()).await;
        let client = reqwest::Client::new();
        let body: serde_json::Value = client
            .post(&url)
            .json(
                &serde_json::json!({"sql": "SELECT event_id FROM events WHERE user_id = 'nobody'"}),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["row_count"], 0);
        assert_eq!(body["rows"], serde_json::json!([]));
        assert_eq!(body["columns"][0]["name"], "event_id");
    }

    /// An answer whose text is many times its Arrow size (a control character is six bytes of JSON) is
    /// refused at the byte limit instead of being built in full.
    #[tokio::test]
    async fn answers_are_capped_as_text_too() {
        let dir = tempfile::tempdir().unwrap();
        let limits = QueryLimits {
            max_result_bytes: 2 << 20,
            ..QueryLimits::default()
        };
        let url = serve_with(dir.path(), limits).await;
        let client = reqwest::Client::new();
        // 1.2 MB of Arrow, 7.2 MB of JSON or CSV-quoted text.
        let sql = "SELECT repeat(chr(1), 600) AS s FROM range(2000)";
        let (status, body) = post_sql(&client, &url, sql).await;
        assert_eq!(status, 400);
        let error = body["error"].as_str().unwrap();
        assert!(error.contains("more than 4194304 bytes"), "{error}");
        // The same rows in a readable size are answered, in the shape clients parse.
        let readable = "SELECT repeat('a', 600) AS s FROM range(2000)";
        let (status, body) = post_sql(&client, &url, readable).await;
        assert_eq!(status, 200);
        assert_eq!(body["row_count"], 2000);
        assert_eq!(body["rows"].as_array().unwrap().len(), 2000);
        assert_eq!(body["columns"][0]["name"], "s");
    }

    #[tokio::test]
    async fn errors_are_json_with_status() {
        let dir = tempfile::tempdir().unwrap();
        let url = serve(dir.path()).await;
        let client = reqwest::Client::new();
        for (sql, needle) in [
            ("COPY (SELECT 1) TO '/tmp/x'", "COPY is not allowed"),
            (
                "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
                "CREATE EXTERNAL TABLE is not allowed",
            ),
            (
                "SELECT * FROM read_csv('/etc/passwd')",
                "table function read_csv is not allowed",
            ),
            ("SELECT nope FROM events", "invalid SQL"),
            ("SELECT 1/0", "the query failed on a value: Divide by zero"),
            // 600 KB, under the body limit: a chain this deep overflowed the stack and aborted the process.
            (
                &format!("SELECT 1{}", "+1".repeat(300_000)),
                "nests expressions",
            ),
        ] {
            let (status, body) = post_sql(&client, &url, sql).await;
            assert_eq!(status, 400, "{sql}");
            let error = body["error"].as_str().unwrap();
            assert!(error.contains(needle), "{sql}: {error}");
        }
        let resp = client
            .post(&url)
            .header(CONTENT_TYPE, "application/json")
            .body("{\"query\": 1}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
        let body: serde_json::Value = resp.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("sql"), "{body}");
    }

    /// Answers hold their slot until the server has sent them: a client that does not read its 30 MB
    /// answer keeps the only slot, so the next query waits, then gets 429 with Retry-After; once the answer
    /// is read, queries run again. Without the cap, clients that stop reading could hold any number of
    /// answers of up to three times `max_result_bytes` each.
    #[tokio::test]
    async fn answers_past_the_cap_wait_then_get_429_until_a_slot_is_free() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let limits = QueryLimits {
            timeout: std::time::Duration::from_secs(2),
            ..QueryLimits::default()
        };
        let url = serve_answering(dir.path(), limits.clone(), 1).await;
        let big = reqwest::Url::parse_with_params(
            &url,
            &[
                ("sql", "SELECT repeat('x', 1000) AS pad FROM range(30000)"),
                ("format", "csv"),
            ],
        )
        .unwrap();
        let mut reader = tokio::net::TcpStream::connect(big.socket_addrs(|| None).unwrap()[0])
            .await
            .unwrap();
        let request = format!(
            "GET {}?{} HTTP/1.1\r\nhost: vigil\r\nconnection: close\r\n\r\n",
            big.path(),
            big.query().unwrap()
        );
        reader.write_all(request.as_bytes()).await.unwrap();
        // Read the head only: the rest of the answer fills the socket buffers and waits.
        let mut head = vec![0u8; 1024];
        let n = reader.read(&mut head).await.unwrap();
        assert!(
            head[..n].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&head[..n])
        );

        let client = reqwest::Client::new();
        let started = Instant::now();
        let busy = client
            .post(&url)
            .json(&serde_json::json!({ "sql": "SELECT 1 AS one" }))
            .send()
            .await
            .unwrap();
        assert_eq!(busy.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(busy.headers()[RETRY_AFTER], "1");
        assert!(
            started.elapsed() >= limits.timeout,
            "it waited for a slot first, as long as a query may run"
        );
        let error = busy.json::<serde_json::Value>().await.unwrap();
        assert!(
            error["error"].as_str().unwrap().contains("retry shortly"),
            "{error}"
        );

        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).await.unwrap();
        assert!(n + rest.len() > 30_000_000, "the whole answer arrives");
        let (status, answer) = post_sql(&client, &url, "SELECT 1 AS one").await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["rows"][0]["one"], 1);
    }
}
