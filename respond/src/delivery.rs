//! One HTTP attempt: sign, send, and classify the answer into delivered / retry / dead letter / disable.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use reqwest::{Client, StatusCode};

use crate::config::Auth;
use crate::egress::{EgressPolicy, EgressResolver};
use crate::signing::{SigningKey, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP};

/// Receivers' answers are kept for errors and `vigil alerts test`, cut to this size.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Everything needed to call one destination or playbook endpoint.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub url: url::Url,
    pub auth: Option<Auth>,
    pub key: Option<SigningKey>,
}

/// What to do after an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Delivered {
        status: u16,
    },
    /// 408, 429, 5xx and network errors.
    Retry {
        status: Option<u16>,
        retry_after: Option<Duration>,
        error: String,
    },
    /// Other 4xx (and 3xx, since redirects are not followed): retrying will not help.
    DeadLetter {
        status: u16,
        error: String,
    },
    /// 410 Gone: the receiver asks us to stop calling it.
    Disable {
        status: u16,
        error: String,
    },
}

impl Outcome {
    pub fn status(&self) -> Option<u16> {
        match self {
            Outcome::Delivered { status }
            | Outcome::DeadLetter { status, .. }
            | Outcome::Disable { status, .. } => Some(*status),
            Outcome::Retry { status, .. } => *status,
        }
    }
    /// Metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Delivered { .. } => "delivered",
            Outcome::Retry { .. } => "retry",
            Outcome::DeadLetter { .. } => "dead_letter",
            Outcome::Disable { .. } => "disabled",
        }
    }
}

/// Classifies an HTTP answer (reference.md section 4).
pub fn classify(status: StatusCode, retry_after: Option<Duration>, answer: &str) -> Outcome {
    let code = status.as_u16();
    let error = || format!("HTTP {code}: {}", crate::ocsf::truncate(answer.trim(), 512));
    if status.is_success() {
        Outcome::Delivered { status: code }
    } else if code == 410 {
        Outcome::Disable {
            status: code,
            error: error(),
        }
    } else if code == 408 || code == 429 || status.is_server_error() {
        Outcome::Retry {
            status: Some(code),
            retry_after,
            error: error(),
        }
    } else {
        Outcome::DeadLetter {
            status: code,
            error: error(),
        }
    }
}

/// `Retry-After` as delta-seconds or an HTTP-date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The HTTP client all deliveries share: no redirects, a request timeout, and DNS answers filtered by
/// the egress policy.
pub fn client(timeout: Duration, policy: Arc<EgressPolicy>) -> Result<Client, reqwest::Error> {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .dns_resolver(Arc::new(EgressResolver::new(policy)))
        .user_agent(concat!("Vigil/", env!("CARGO_PKG_VERSION")))
        .build()
}

fn headers(target: &Target, webhook_id: &str, timestamp: i64, body: &[u8]) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(
        USER_AGENT,
        HeaderValue::from_static(concat!("Vigil/", env!("CARGO_PKG_VERSION"))),
    );
    if let Ok(v) = HeaderValue::from_str(webhook_id) {
        h.insert(HEADER_ID, v);
    }
    h.insert(HEADER_TIMESTAMP, HeaderValue::from(timestamp));
    if let Some(key) = &target.key {
        if let Ok(v) = HeaderValue::from_str(&key.sign(webhook_id, timestamp, body)) {
            h.insert(HEADER_SIGNATURE, v);
        }
    }
    h
}

/// The receiver's status and (cut) answer, for `vigil alerts test`.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// Sends one signed request. The signature timestamp is taken now, so every retry is fresh while the
/// `webhook-id` stays the caller's.
pub async fn send(
    client: &Client,
    target: &Target,
    webhook_id: &str,
    body: Vec<u8>,
) -> Result<(Answer, Option<Duration>), reqwest::Error> {
    let now = chrono::Utc::now().timestamp();
    let mut req = client
        .post(target.url.clone())
        .headers(headers(target, webhook_id, now, &body));
    req = match &target.auth {
        None => req,
        Some(Auth::Bearer { token }) => req.bearer_auth(token.expose()),
        Some(Auth::Basic { username, password }) => {
            req.basic_auth(username, Some(password.expose()))
        }
        Some(Auth::Header { name, value }) => req.header(name.as_str(), value.expose()),
    };
    let resp = req.body(body).send().await.map_err(|e| e.without_url())?;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    let mut bytes = Vec::new();
    let mut resp = resp;
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.without_url())? {
        let room = MAX_ANSWER_BYTES.saturating_sub(bytes.len());
        bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if room <= chunk.len() {
            break;
        }
    }
    Ok((
        Answer {
            status,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        },
        retry_after,
    ))
}

/// Sends and classifies; network errors become retries. Error texts never carry the URL (it may hold a
/// token) nor any header.
pub async fn attempt(client: &Client, target: &Target, webhook_id: &str, body: Vec<u8>) -> Outcome {
    match send(client, target, webhook_id, body).await {
        Ok((answer, retry_after)) => classify(
            StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY),
            retry_after,
            &answer.body,
        ),
        Err(e) => Outcome::Retry {
            status: None,
            retry_after: None,
            error: error_chain(&e),
        },
    }
}

/// `e` and its sources, e.g. "error sending request: client error (Connect): Connection refused".
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_the_reference() {
        let c = |code: u16| classify(StatusCode::from_u16(code).unwrap(), None, "nope");
        assert_eq!(c(200).label(), "delivered");
        assert_eq!(c(204).label(), "delivered");
        for code in [408, 429, 500, 502, 503, 504] {
            assert_eq!(c(code).label(), "retry", "{code}");
        }
        assert_eq!(c(410).label(), "disabled");
        for code in [301, 302, 400, 401, 403, 404, 413, 422] {
            assert_eq!(c(code).label(), "dead_letter", "{code}");
        }
        assert_eq!(c(503).status(), Some(503));
    }

    #[test]
    fn retry_after_seconds_and_http_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::ZERO)
        );
        let earlier = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480 - 60);
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", earlier),
            Some(Duration::from_secs(60))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
