//! Authentication and TLS on every listener of the real binary: no token, a wrong one, an out-of-scope one
//! and a valid one on OTLP gRPC, OTLP/HTTP, the query API, /metrics and PostgreSQL; refusals counted;
//! events carry the sending token's name; bootstrap tokens printed once; revocation seen by a running
//! server; TLS clients that do not trust the certificate fail.

use std::process::Command;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use tonic::transport::Channel;
use tonic::Code;
use vigil_ingest::synth::traces_request;

use crate::harness::{checkout_file, psql, Bearer, CertFiles, StartOptions, Vigil};
use crate::python_sdk::python_has;
use crate::sample_rows;

/// POST a small protobuf trace request to OTLP/HTTP; returns the status code.
async fn otlp_http(
    v: &Vigil,
    client: &reqwest::Client,
    token: Option<&str>,
    prefix: u32,
) -> reqwest::Result<u16> {
    let body =
        traces_request(&sample_rows(prefix, chrono::Utc::now().timestamp_micros())).encode_to_vec();
    let mut request = client
        .post(v.otlp_url("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    Ok(request.send().await?.status().as_u16())
}

/// An OTLP gRPC export of five events; the status code (Ok on success).
async fn otlp_grpc(v: &Vigil, token: Option<&str>, prefix: u32) -> Code {
    let channel = Channel::from_shared(format!("http://{}", v.grpc))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let request = traces_request(&sample_rows(prefix, chrono::Utc::now().timestamp_micros()));
    let result = match token {
        Some(token) => {
            TraceServiceClient::with_interceptor(channel, Bearer::new(token))
                .export(request)
                .await
        }
        None => TraceServiceClient::new(channel).export(request).await,
    };
    result
        .map(|_| Code::Ok)
        .unwrap_or_else(|status| status.code())
}

async fn with_token(request: reqwest::RequestBuilder, token: Option<&str>) -> reqwest::Result<u16> {
    let request = match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    };
    Ok(request.send().await?.status().as_u16())
}

async fn query_api(
    v: &Vigil,
    client: &reqwest::Client,
    token: Option<&str>,
) -> reqwest::Result<u16> {
    with_token(
        client
            .post(v.admin_url("/api/v1/query"))
            .json(&serde_json::json!({ "sql": "SELECT 1" })),
        token,
    )
    .await
}

async fn metrics_endpoint(v: &Vigil, token: Option<&str>) -> u16 {
    with_token(v.client().get(v.admin_url("/metrics")), token)
        .await
        .expect("admin port reachable")
}

/// `vigil_auth_failures_total{listener, reason}` from a /metrics text (0 when not yet counted).
fn failures(metrics: &str, listener: &str, reason: &str) -> u64 {
    let key = format!("vigil_auth_failures_total{{listener=\"{listener}\",reason=\"{reason}\"}}");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_listener_refuses_missing_wrong_and_out_of_scope_tokens_and_counts_them() {
    let v = Vigil::start().await;
    let ingest = v.create_token("collector-eu", "ingest").await;
    let query = v.create_token("grafana", "query").await;
    let http = v.client();
    let wrong = Some("vgl_this_is_not_a_token");
    // Waiting for the new tokens probed /metrics; count from here.
    let before = v.metrics().await;

    // OTLP/HTTP needs `ingest`.
    assert_eq!(otlp_http(&v, &http, None, 1).await.unwrap(), 401);
    assert_eq!(otlp_http(&v, &http, wrong, 2).await.unwrap(), 401);
    assert_eq!(otlp_http(&v, &http, Some(&query), 3).await.unwrap(), 403);
    assert_eq!(otlp_http(&v, &http, Some(&ingest), 4).await.unwrap(), 200);

    // OTLP gRPC needs `ingest`.
    assert_eq!(otlp_grpc(&v, None, 11).await, Code::Unauthenticated);
    assert_eq!(otlp_grpc(&v, wrong, 12).await, Code::Unauthenticated);
    assert_eq!(
        otlp_grpc(&v, Some(&query), 13).await,
        Code::PermissionDenied
    );
    assert_eq!(otlp_grpc(&v, Some(&ingest), 14).await, Code::Ok);

    // The query API needs `query`.
    assert_eq!(query_api(&v, &http, None).await.unwrap(), 401);
    assert_eq!(query_api(&v, &http, wrong).await.unwrap(), 401);
    assert_eq!(query_api(&v, &http, Some(&ingest)).await.unwrap(), 403);
    assert_eq!(query_api(&v, &http, Some(&query)).await.unwrap(), 200);

    // /metrics needs `admin`; the probes stay open.
    assert_eq!(metrics_endpoint(&v, None).await, 401);
    assert_eq!(metrics_endpoint(&v, wrong).await, 401);
    assert_eq!(metrics_endpoint(&v, Some(&query)).await, 403);
    assert_eq!(metrics_endpoint(&v, Some(&v.token)).await, 200);
    for probe in ["/healthz", "/readyz"] {
        assert_eq!(
            with_token(http.get(v.admin_url(probe)), None)
                .await
                .unwrap(),
            200,
            "{probe} needs no token"
        );
    }

    // PostgreSQL: the password is a `query` token, whatever the user name.
    let out = psql(&v, "127.0.0.1", "vgl_this_is_not_a_token", &[], "SELECT 1").await;
    assert!(!out.status.success(), "wrong token");
    let out = psql(&v, "127.0.0.1", &ingest, &[], "SELECT 1").await;
    assert!(!out.status.success(), "ingest token on pg");
    assert!(String::from_utf8_lossy(&out.stderr)
        .to_lowercase()
        .contains("password authentication failed"));
    let out = psql(&v, "127.0.0.1", &query, &[], "SELECT count(*) FROM events").await;
    assert!(
        out.status.success(),
        "query token on pg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "10");

    // Every refusal above was counted, by listener and reason.
    let metrics = v.metrics().await;
    for listener in ["otlp_http", "otlp_grpc", "query_http", "admin"] {
        for reason in ["missing", "invalid", "forbidden"] {
            let counted =
                failures(&metrics, listener, reason) - failures(&before, listener, reason);
            assert_eq!(counted, 1, "{listener}/{reason}\n{metrics}");
        }
    }
    assert_eq!(failures(&metrics, "pg", "invalid"), 1);
    assert_eq!(failures(&metrics, "pg", "forbidden"), 1);

    // Only the accepted requests stored events, each recording the token that sent it; "share of telemetry
    // from verified sources" is a query.
    let rows = v
        .query("SELECT source, count(*) AS n FROM events GROUP BY source")
        .await;
    assert_eq!(
        rows,
        [serde_json::json!({ "source": "collector-eu", "n": 10 })]
    );
    let share = v
        .query("SELECT avg(CASE WHEN source IS NOT NULL AND source <> 'anonymous' THEN 1.0 ELSE 0.0 END) AS verified FROM events")
        .await;
    assert_eq!(share[0]["verified"].as_f64(), Some(1.0));

    // `vigil sql` sends --token (or VIGIL_TOKEN) and says what is missing without one.
    let out = v.cli(&[
        "sql",
        "--format",
        "csv",
        "--token",
        &query,
        "SELECT count(*) AS n FROM events",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "n\n10");
    let out = v.cli(&["sql", "SELECT 1"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("VIGIL_TOKEN"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `vgl_...` tokens in the bootstrap banner, by name.
fn printed_tokens(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let name = words.next()?.to_string();
            let token = words.find(|w| w.starts_with("vgl_"))?.to_string();
            Some((name, token))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn bootstrap_tokens_are_printed_once_stored_hashed_and_work() {
    let mut v = Vigil::start_opts(StartOptions {
        unprovisioned: true,
        ..Default::default()
    })
    .await;
    let stdout = v.stdout();
    assert!(stdout.contains("WILL NOT BE SHOWN AGAIN"), "{stdout}");
    let tokens = printed_tokens(&stdout);
    let names: Vec<&str> = tokens.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["ingest", "admin"], "{stdout}");
    let (ingest, admin) = (tokens[0].1.clone(), tokens[1].1.clone());

    let on_disk = std::fs::read_to_string(v.data_dir().join("tokens.json")).expect("tokens.json");
    assert!(
        !on_disk.contains(&ingest) && !on_disk.contains(&admin),
        "only hashes are stored"
    );
    assert!(on_disk.contains("sha256:"));

    let http = v.client();
    assert_eq!(otlp_http(&v, &http, Some(&ingest), 1).await.unwrap(), 200);
    assert_eq!(
        query_api(&v, &http, Some(&ingest)).await.unwrap(),
        403,
        "the ingest token only ingests"
    );
    v.token = admin;
    assert_eq!(
        v.count("SELECT count(*) FROM events WHERE source = 'ingest'")
            .await,
        5
    );

    // A second start creates and prints nothing; the tokens still work.
    v.stop();
    v.restart().await;
    let again = v.stdout();
    assert_eq!(
        again.matches("WILL NOT BE SHOWN AGAIN").count(),
        1,
        "{again}"
    );
    assert_eq!(printed_tokens(&again).len(), 2);
    assert_eq!(otlp_http(&v, &http, Some(&ingest), 2).await.unwrap(), 200);
    let listed = v.cli(&["token", "list"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert_eq!(listed.lines().count(), 3, "header + two tokens:\n{listed}");
    assert!(!listed.contains("vgl_"), "list never shows a secret");
}

#[tokio::test(flavor = "multi_thread")]
async fn revoking_a_token_takes_effect_on_the_running_server() {
    let v = Vigil::start().await;
    let laptop = v.create_token("laptop", "ingest").await;
    let http = v.client();
    assert_eq!(
        otlp_http(&v, &http, Some(&laptop), 1).await.unwrap(),
        200,
        "a token created while running works"
    );
    let out = v.cli(&["token", "revoke", "laptop"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("revoked tok_"));

    // The server looks at the token file at most once per `auth.recheck_interval` (1 s by default).
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut status, mut accepted) = (200, 1);
    for prefix in 2.. {
        status = otlp_http(&v, &http, Some(&laptop), prefix).await.unwrap();
        if status != 200 || Instant::now() > deadline {
            break;
        }
        accepted += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status, 401, "revoked without a restart");
    assert_eq!(
        otlp_grpc(&v, Some(&laptop), 1000).await,
        Code::Unauthenticated
    );
    assert_eq!(
        v.count("SELECT count(*) FROM events WHERE source = 'laptop'")
            .await,
        accepted * 5
    );
    let listed = String::from_utf8_lossy(&v.cli(&["token", "list"]).stdout).into_owned();
    assert!(
        listed
            .lines()
            .any(|l| l.contains("laptop") && l.contains(" yes ")),
        "{listed}"
    );
}

/// A token written in `[auth] tokens` is taken out of the file and the configuration reloaded: it stops
/// working at once, on both OTLP transports, without a restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_config_token_removed_by_a_reload_stops_working() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vigil.toml");
    let token = "collector-eu-secret-with-plenty-of-entropy-0123456789";
    let hash = vigil_ingest::security::TokenHash::of(token).to_string();
    std::fs::write(
        &config,
        format!(
            "[[auth.tokens]]\nname = \"collector-eu\"\nscopes = [\"ingest\"]\nhash = \"{hash}\"\n"
        ),
    )
    .unwrap();
    let v = Vigil::start_with(&["--config", config.to_str().unwrap()], &[]).await;
    let http = v.client();
    assert_eq!(otlp_http(&v, &http, Some(token), 1).await.unwrap(), 200);
    assert_eq!(
        v.count("SELECT count(*) FROM events WHERE source = 'collector-eu'")
            .await,
        5
    );

    std::fs::write(&config, "").unwrap();
    let resp = http
        .post(v.admin_url("/-/reload"))
        .bearer_auth(&v.token)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let summary = resp.text().await.unwrap();
    assert_eq!(status, 200, "{summary}");
    assert!(summary.contains("0 configured tokens"), "{summary}");
    assert_eq!(otlp_http(&v, &http, Some(token), 2).await.unwrap(), 401);
    assert_eq!(otlp_grpc(&v, Some(token), 3).await, Code::Unauthenticated);
    // The harness's own admin token (in tokens.json) is untouched.
    assert_eq!(v.count("SELECT count(*) FROM events").await, 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_on_every_listener_and_untrusting_clients_fail() {
    let certs = tempfile::tempdir().expect("tempdir");
    let server_cert = CertFiles::issued(certs.path(), "server");
    let other = CertFiles::issued(certs.path(), "other");
    let v = Vigil::start_opts(StartOptions {
        tls: Some(server_cert.clone()),
        ..Default::default()
    })
    .await;
    let ingest = v.create_token("tls-sender", "ingest").await;

    // Trusting clients: OTLP/HTTP and the query API over https.
    let trusting = v.client();
    assert_eq!(
        otlp_http(&v, &trusting, Some(&ingest), 1)
            .await
            .expect("https OTLP"),
        200
    );
    assert_eq!(
        otlp_http(&v, &trusting, None, 2).await.expect("https OTLP"),
        401,
        "TLS does not replace tokens"
    );
    assert_eq!(v.count("SELECT count(*) FROM events").await, 5);

    // A client that does not trust the certificate fails at the handshake, on both HTTP listeners.
    let untrusting = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&other.ca_pem()).expect("pem"))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let err = otlp_http(&v, &untrusting, Some(&ingest), 3)
        .await
        .expect_err("untrusted OTLP/HTTP");
    assert!(err.is_connect(), "{err:?}");
    let err = query_api(&v, &untrusting, Some(&v.token))
        .await
        .expect_err("untrusted query API");
    assert!(err.is_connect(), "{err:?}");
    // Plaintext on a TLS port gets no answer.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/readyz", v.admin))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));

    // PostgreSQL: verify-full against the server's certificate works; another root fails; plaintext refused.
    let query = v.create_token("grafana", "query").await;
    let root = server_cert.ca.to_str().expect("utf-8 path");
    let out = psql(
        &v,
        "localhost",
        &query,
        &[("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", root)],
        "SELECT count(*) FROM events",
    )
    .await;
    assert!(
        out.status.success(),
        "psql over TLS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "5");
    let other_root = other.ca.to_str().expect("utf-8 path");
    let out = psql(
        &v,
        "localhost",
        &query,
        &[("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", other_root)],
        "SELECT 1",
    )
    .await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("certificate verify failed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = psql(
        &v,
        "127.0.0.1",
        &query,
        &[("PGSSLMODE", "disable")],
        "SELECT 1",
    )
    .await;
    assert!(
        !out.status.success(),
        "no cleartext token over a plain connection"
    );

    // `vigil sql` over https, trusting the CA it is given.
    let ca = server_cert.ca.to_str().expect("utf-8 path");
    let out = v.cli(&[
        "sql",
        "--format",
        "csv",
        "--tls-ca",
        ca,
        "--token",
        &query,
        "SELECT count(*) AS n FROM events",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "n\n5");

    // gRPC: the stock OpenTelemetry Python exporters over TLS, trusting and not.
    if python_has(&[
        "opentelemetry.sdk",
        "opentelemetry.exporter.otlp.proto.grpc",
        "grpc",
    ]) {
        let send = |ca: &std::path::Path| {
            Command::new("python3")
                .arg(checkout_file("tests/otel_sdk_send.py"))
                .arg(format!("https://localhost:{}", v.grpc.port()))
                .arg(format!("https://localhost:{}/v1/traces", v.http.port()))
                .arg("3")
                .env("VIGIL_TOKEN", &ingest)
                .env("VIGIL_CA_CERT", ca)
                .env("VIGIL_EXPORT_TIMEOUT", "3")
                // requests lets these override a session's `verify` (the exporter's certificate_file).
                .env_remove("REQUESTS_CA_BUNDLE")
                .env_remove("CURL_CA_BUNDLE")
                .output()
                .expect("python3 runs")
        };
        let ok = send(&server_cert.ca);
        assert!(
            ok.status.success(),
            "SDK over TLS: {}",
            String::from_utf8_lossy(&ok.stderr)
        );
        assert_eq!(
            v.count("SELECT count(*) FROM events WHERE service IN ('sdk-grpc', 'sdk-http')")
                .await,
            6
        );
        assert!(
            !send(&other.ca).status.success(),
            "an SDK that does not trust the certificate cannot export"
        );
    }
}
