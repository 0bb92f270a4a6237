//! Starts the real `vigil` binary on free loopback ports with its own data directory, and talks to it.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
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
    _tmp: Option<tempfile::TempDir>,
}

impl Vigil {
    /// A server on fresh ports and a fresh data directory, started and ready.
    pub async fn start() -> Vigil {
        Self::start_with(&[], &[]).await
    }

    pub async fn start_with(extra_args: &[&str], envs: &[(&str, &str)]) -> Vigil {
        let tmp = tempfile::tempdir().expect("a temp dir");
        let mut v = Vigil {
            child: None,
            data_dir: tmp.path().join("data"),
            grpc: addr(),
            http: addr(),
            admin: addr(),
            pg: addr(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            envs: envs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            _tmp: Some(tmp),
        };
        v.spawn().await;
        v
    }

    pub async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.with_extension("log"))
            .expect("log file");
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
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn vigil"));
        self.wait_ready().await;
    }

    async fn wait_ready(&mut self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = format!("http://{}/readyz", self.admin);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("vigil exited during start-up ({status}); log:\n{}", self.log());
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

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
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
        let resp = reqwest::Client::new()
            .post(format!("http://{}/api/v1/query", self.admin))
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
        row.as_object().and_then(|o| o.values().next()).and_then(Value::as_i64).unwrap_or_else(|| panic!("not a count: {row}"))
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

fn addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

