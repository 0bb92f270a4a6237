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
    todo!()
}

/// Replaces each finding's range with `[REDACTED:<kind>]`.
pub fn redact(_text: &str, _findings: &[Finding]) -> String {
    todo!()
}
