//! Starts the real `vigil` binary on free loopback ports with its own data directory, and talks to it.
//!
//! Authentication is on, as in production: before the first start the harness creates an `admin` token
//! with `vigil token create` (so no bootstrap tokens are minted) and every helper sends it.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use serde_json::Value;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A file of this checkout, looked up when the test runs: `cargo test` sets `CARGO_MANIFEST_DIR` for the
/// test process, while `env!` would bake in the path of whichever checkout first built a shared target dir.
pub fn checkout_file(relative: &str) -> PathBuf {
    let root = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    root.join(relative)
}

/// A loopback port nothing listens on, below Linux's ephemeral range (32768-60999). A port the kernel hands
/// out for `bind(0)` comes from that range, where any outgoing connection (a Kafka client, an HTTP call) may
/// take it between this check and the server binding it: CI saw exactly that. Ports are tried in an order
/// that starts at a per-process offset, so parallel test binaries rarely try the same ones.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = (std::process::id().wrapping_mul(7919)) % SPAN;
    for _ in 0..SPAN {
        let port = (LOW + (base + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{}", LOW + SPAN)
}

pub struct Vigil {
    pub child: Option<Child>,
    pub data_dir: PathBuf,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub pg: SocketAddr,
    pub extra_args: Vec<String>,
    pub envs: Vec<(String, String)>,
    /// An `admin` token (every scope), sent by every helper; empty when started unprovisioned.
    pub token: String,
    /// The certificate the server serves and the client trusts, when started with TLS.
    pub tls: Option<CertFiles>,
    _tmp: Option<tempfile::TempDir>,
}

/// How to start a server beyond the defaults of [`Vigil::start`].
#[derive(Default)]
pub struct StartOptions<'a> {
    pub args: &'a [&'a str],
    pub envs: &'a [(&'a str, &'a str)],
    /// Skip creating the harness's admin token, so the first start bootstraps its own.
    pub unprovisioned: bool,
    /// Serve TLS with this certificate (`--tls-cert/--tls-key`); the helpers then trust it and use https.
    pub tls: Option<CertFiles>,
    /// Return once the process is started, before it is ready ([`Vigil::wait_ready`] waits).
    pub unready: bool,
}

/// A server certificate and key issued by a throwaway CA, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The issuing CA's certificate: what a client trusts.
    pub ca: PathBuf,
}

impl CertFiles {
    /// A CA and a certificate it issues for `localhost` and 127.0.0.1, made with the openssl CLI. A CA plus a
    /// leaf rather than one self-signed certificate, because strict verifiers (Python 3.13's `ssl`, webpki)
    /// refuse a certificate that is both.
    pub fn issued(dir: &Path, name: &str) -> CertFiles {
        let file = |ext: &str| path_str(&dir.join(format!("{name}.{ext}")));
        let (cert, key, ca, ca_key, csr, ext) = (
            file("crt"),
            file("key"),
            file("ca.crt"),
            file("ca.key"),
            file("csr"),
            file("ext"),
        );
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .output()
                .expect("openssl runs");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let ca_subject = format!("/CN={name} test CA");
        let ca_ext = [
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ];
        openssl(
            &[
                &[
                    "req",
                    "-x509",
                    "-days",
                    "1",
                    "-subj",
                    &ca_subject,
                    "-keyout",
                    &ca_key,
                    "-out",
                    &ca,
                ][..],
                &ec,
                &ca_ext,
            ]
            .concat(),
        );
        openssl(
            &[
                &[
                    "req",
                    "-subj",
                    "/CN=localhost",
                    "-keyout",
                    &key,
                    "-out",
                    &csr,
                ][..],
                &ec,
            ]
            .concat(),
        );
        std::fs::write(
            &ext,
            "basicConstraints=critical,CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n\
             subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write extensions");
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &ext,
            "-out",
            &cert,
        ]);
        CertFiles {
            cert: cert.into(),
            key: key.into(),
            ca: ca.into(),
        }
    }

    /// The CA certificate clients trust.
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(&self.ca).expect("read CA certificate")
    }
}

/// Adds `authorization: Bearer <token>` to every gRPC call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl Bearer {
    pub fn new(token: &str) -> Bearer {
        Bearer(format!("Bearer {token}").parse().expect("a token is ASCII"))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

pub type GrpcClient = TraceServiceClient<InterceptedService<Channel, Bearer>>;

impl Vigil {
    /// A server on fresh ports and a fresh data directory, started and ready.
    pub async fn start() -> Vigil {
        Self::start_with(&[], &[]).await
    }

    pub async fn start_with(extra_args: &[&str], envs: &[(&str, &str)]) -> Vigil {
        Self::start_opts(StartOptions {
            args: extra_args,
            envs,
            ..Default::default()
        })
        .await
    }

    pub async fn start_opts(options: StartOptions<'_>) -> Vigil {
        let tmp = tempfile::tempdir().expect("a temp dir");
        let mut extra_args: Vec<String> = options.args.iter().map(|s| s.to_string()).collect();
        if let Some(tls) = &options.tls {
            extra_args.extend([
                "--tls-cert".into(),
                path_str(&tls.cert),
                "--tls-key".into(),
                path_str(&tls.key),
            ]);
        }
        let mut v = Vigil {
            child: None,
            data_dir: tmp.path().join("data"),
            grpc: addr(),
            http: addr(),
            admin: addr(),
            pg: addr(),
            extra_args,
            envs: options
                .envs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            token: String::new(),
            tls: options.tls,
            _tmp: Some(tmp),
        };
        if !options.unprovisioned {
            v.token = v.create_token_offline("e2e-admin", "admin");
        }
        v.spawn_process();
        if !options.unready {
            v.wait_ready().await;
        }
        v
    }

    /// `vigil token create`; returns the token once the server (if running) knows it.
    pub async fn create_token(&self, name: &str, scopes: &str) -> String {
        let token = self.create_token_offline(name, scopes);
        if self.child.is_some() {
            self.wait_known(&token).await;
        }
        token
    }

    fn create_token_offline(&self, name: &str, scopes: &str) -> String {
        let out = self.cli(&["token", "create", "--name", name, "--scope", scopes]);
        assert!(
            out.status.success(),
            "token create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("UTF-8 token")
            .trim()
            .to_string()
    }

    /// A running server re-reads the token file at most once per `auth.recheck_interval` (1 s): waits until
    /// `/metrics` stops answering 401 ("who are you?") for `token` (it answers 403 or 200 once known).
    pub async fn wait_known(&self, token: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let resp = self
                .client()
                .get(self.admin_url("/metrics"))
                .bearer_auth(token)
                .send()
                .await;
            if resp.is_ok_and(|r| r.status() != reqwest::StatusCode::UNAUTHORIZED) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the server did not pick up a new token in 10 s");
    }

    /// Runs another `vigil` command on this server's data directory and admin address.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_vigil"))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--admin-addr")
            .arg(self.admin.to_string())
            .args(args)
            .env_remove("VIGIL_CONFIG")
            .env_remove("VIGIL_TOKEN")
            .output()
            .expect("run vigil")
    }

    /// What the server printed on stdout, every start appended.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension("out")).unwrap_or_default()
    }

    /// A reqwest client that trusts the server's certificate (when it has one) and sends no token.
    pub fn client(&self) -> reqwest::Client {
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(60));
        if let Some(tls) = &self.tls {
            let cert = reqwest::Certificate::from_pem(&tls.ca_pem()).expect("certificate PEM");
            builder = builder
                .tls_built_in_root_certs(false)
                .add_root_certificate(cert);
        }
        builder.build().expect("reqwest client")
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// `http(s)://<admin addr><path>`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme(), self.admin)
    }

    /// `http(s)://<OTLP/HTTP addr><path>`.
    pub fn otlp_url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme(), self.http)
    }

    /// An OTLP gRPC trace client (plaintext) that sends the harness's token.
    pub async fn grpc_client(&self) -> GrpcClient {
        let channel = Channel::from_shared(format!("http://{}", self.grpc))
            .expect("endpoint")
            .connect()
            .await
            .expect("gRPC connects");
        TraceServiceClient::with_interceptor(channel, Bearer::new(&self.token))
    }

    /// The `/metrics` text, fetched with the harness's admin token.
    pub async fn metrics(&self) -> String {
        let resp = self
            .client()
            .get(self.admin_url("/metrics"))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("metrics");
        assert!(resp.status().is_success(), "/metrics: {}", resp.status());
        resp.text().await.expect("metrics text")
    }

    pub async fn spawn(&mut self) {
        self.spawn_process();
        self.wait_ready().await;
    }

    fn spawn_process(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.with_extension("log"))
            .expect("log file");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.with_extension("out"))
            .expect("stdout file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vigil"));
        cmd.arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--admin-addr")
            .arg(self.admin.to_string())
            .arg("serve")
            .arg("--otlp-grpc-addr")
            .arg(self.grpc.to_string())
            .arg("--otlp-http-addr")
            .arg(self.http.to_string())
            .arg("--pg-addr")
            .arg(self.pg.to_string())
            .args(&self.extra_args)
            .env("VIGIL_LOG", "info")
            .env_remove("VIGIL_CONFIG")
            .env_remove("VIGIL_NO_AUTH")
            .stdout(out)
            .stderr(log);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn vigil"));
    }

    /// Waits for `/readyz`; panics with the log if the process exits first.
    pub async fn wait_ready(&mut self) {
        let client = self.client();
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = self.admin_url("/readyz");
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "vigil exited during start-up ({status}); log:\n{}",
                    self.log()
                );
            }
            if let Ok(resp) = client.get(&url).send().await {
                if resp.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("vigil not ready in 60 s; log:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default()
    }

    /// SIGKILL: no flush, no goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGHUP: reload the configuration.
    pub fn sighup(&self) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if c.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
            panic!("vigil did not stop on SIGTERM; log:\n{}", self.log());
        }
    }

    pub async fn restart(&mut self) {
        self.spawn().await;
    }

    /// POST /api/v1/query; panics with the server's message on error.
    pub async fn query(&self, sql: &str) -> Vec<Value> {
        let resp = self
            .client()
            .post(self.admin_url("/api/v1/query"))
            .bearer_auth(&self.token)
            .json(&serde_json::json!({ "sql": sql }))
            .send()
            .await
            .expect("query API reachable");
        let status = resp.status();
        let body: Value = resp.json().await.expect("JSON answer");
        assert!(status.is_success(), "query {sql:?} failed: {body}");
        body["rows"].as_array().cloned().unwrap_or_default()
    }

    pub async fn count(&self, sql: &str) -> i64 {
        let rows = self.query(sql).await;
        let row = rows.first().unwrap_or_else(|| panic!("no row for {sql}"));
        row.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_i64)
            .unwrap_or_else(|| panic!("not a count: {row}"))
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}

impl Drop for Vigil {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn path_str(p: &Path) -> String {
    p.to_str().expect("UTF-8 temp path").to_string()
}

fn addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Runs `sql` with the real psql client over the PostgreSQL wire protocol (unaligned, tuples only).
pub async fn psql(
    v: &Vigil,
    host: &str,
    password: &str,
    env: &[(&str, &str)],
    sql: &str,
) -> std::process::Output {
    let port = v.pg.port().to_string();
    let mut cmd = tokio::process::Command::new("psql");
    cmd.env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "5")
        .env_remove("PGSERVICE");
    for (k, val) in env {
        cmd.env(k, val);
    }
    cmd.args([
        "-h", host, "-p", &port, "-U", "whoever", "-d", "vigil", "-w", "-X", "-A", "-t", "-c", sql,
    ])
    .kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("psql in time")
        .expect("psql runs")
}
