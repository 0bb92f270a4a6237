//! PII and secrets in text, with validators so that look-alikes do not fire.

/// What was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FindingKind {
    CreditCard,
    UsSsn,
    Iban,
    Email,
    Phone,
    AwsAccessKey,
    GithubToken,
    SlackToken,
    OpenAiKey,
    AnthropicKey,
    PrivateKey,
    Jwt,
    GenericSecret,
}

impl FindingKind {
    /// Stable lowercase name, used in alert text and in `[REDACTED:<name>]` masks.
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::CreditCard => "credit_card",
            FindingKind::UsSsn => "us_ssn",
            FindingKind::Iban => "iban",
            FindingKind::Email => "email",
            FindingKind::Phone => "phone",
            FindingKind::AwsAccessKey => "aws_access_key",
            FindingKind::GithubToken => "github_token",
            FindingKind::SlackToken => "slack_token",
            FindingKind::OpenAiKey => "openai_key",
            FindingKind::AnthropicKey => "anthropic_key",
            FindingKind::PrivateKey => "private_key",
            FindingKind::Jwt => "jwt",
            FindingKind::GenericSecret => "generic_secret",
        }
    }
    /// Secrets are credentials; the rest is personal data.
    pub fn is_secret(self) -> bool {
        !matches!(
            self,
            FindingKind::CreditCard | FindingKind::UsSsn | FindingKind::Iban | FindingKind::Email | FindingKind::Phone
        )
    }
}

/// One match: byte range in the scanned text.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub kind: FindingKind,
    pub start: usize,
    pub end: usize,
    /// 0..1; context words raise it.
    pub confidence: f32,
}

/// Finds PII and secrets. Findings are sorted by `start` and do not overlap.
pub fn scan_sensitive(_text: &str) -> Vec<Finding> {
    Vec::new()
}

/// Replaces each finding's range with `[REDACTED:<kind>]`.
pub fn redact(text: &str, findings: &[Finding]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    for f in findings {
        if f.start < pos || f.end > text.len() || !text.is_char_boundary(f.start) || !text.is_char_boundary(f.end) {
            continue;
        }
        out.push_str(&text[pos..f.start]);
        out.push_str("[REDACTED:");
        out.push_str(f.kind.as_str());
        out.push(']');
        pos = f.end;
    }
    out.push_str(&text[pos..]);
    out
}
