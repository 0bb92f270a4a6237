//! PII and secrets in text, with validators so that look-alikes do not fire.

use std::sync::LazyLock;

use regex::Regex;

use super::prefilter::Hints;

use super::validators;

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
            FindingKind::CreditCard
                | FindingKind::UsSsn
                | FindingKind::Iban
                | FindingKind::Email
                | FindingKind::Phone
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
///
/// A recogniser's regex runs only when its literal trigger (a vendor prefix, a key word, `@`) or a long
/// enough digit run is present; [`Hints`] finds those in one pass shared with the injection scan.
pub fn scan_sensitive(text: &str) -> Vec<Finding> {
    scan_sensitive_with(text, &Hints::of(text))
}

/// [`scan_sensitive`] with the text's [`Hints`] already computed (they are shared with the injection scan).
pub fn scan_sensitive_with(text: &str, hints: &Hints) -> Vec<Finding> {
    let triggers = hints.sensitive;
    if triggers == 0 {
        return Vec::new();
    }
    let mut found = Vec::new();
    let r = recognisers();
    if triggers & T_PRIVATE_KEY != 0 {
        private_keys(r, text, &mut found);
    }
    if triggers & T_AWS != 0 {
        simple(&r.aws, text, FindingKind::AwsAccessKey, 0.95, &mut found);
    }
    if triggers & T_GITHUB != 0 {
        simple(&r.github, text, FindingKind::GithubToken, 0.95, &mut found);
    }
    if triggers & T_SLACK != 0 {
        slack(r, text, &mut found);
    }
    if triggers & T_SK != 0 {
        vendor_sk(r, text, &mut found);
    }
    if triggers & T_JWT != 0 {
        jwts(r, text, &mut found);
    }
    if triggers & T_KEYWORD != 0 {
        generic_secrets(r, text, &mut found);
    }
    if triggers & T_EMAIL != 0 {
        emails(r, text, &mut found);
    }
    if triggers & T_DIGITS != 0 {
        cards(r, text, &mut found);
        ssns(r, text, &mut found);
        phones(r, text, &mut found);
        ibans(r, text, &mut found);
    }
    resolve_overlaps(found)
}

/// Replaces each finding's range with `[REDACTED:<kind>]`, keeping every other byte as it was. Findings
/// must be sorted and non-overlapping (what `scan_sensitive` returns); any that are not, or that do not
/// fall on character boundaries, are skipped rather than corrupting the text.
pub fn redact(text: &str, findings: &[Finding]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    for f in masked(text, findings) {
        out.push_str(&text[pos..f.start]);
        out.push_str("[REDACTED:");
        out.push_str(f.kind.as_str());
        out.push(']');
        pos = f.end;
    }
    out.push_str(&text[pos..]);
    out
}

/// Where byte `offset` of `text` lands in `redact(text, findings)`, so that offsets recorded against the
/// text as received (ingest's ranges of tools' results) still point at the same words in the text as
/// stored. An offset inside a masked span moves to the mask's start, or to its end when `end` is set (a
/// range's end), so a range keeps covering whatever replaced its bytes.
pub fn redacted_offset(text: &str, findings: &[Finding], offset: usize, end: bool) -> usize {
    let mut shift: isize = 0;
    for f in masked(text, findings) {
        if offset <= f.start {
            break;
        }
        let mask = "[REDACTED:]".len() + f.kind.as_str().len();
        if offset < f.end {
            let at = f.start as isize + shift;
            return at as usize + if end { mask } else { 0 };
        }
        shift += mask as isize - (f.end - f.start) as isize;
    }
    (offset as isize + shift) as usize
}

/// The findings `redact` masks: in order, not overlapping, on character boundaries.
fn masked<'a>(text: &'a str, findings: &'a [Finding]) -> impl Iterator<Item = &'a Finding> + 'a {
    let mut pos = 0;
    findings.iter().filter(move |f| {
        let ok = f.start >= pos
            && f.start <= f.end
            && f.end <= text.len()
            && text.is_char_boundary(f.start)
            && text.is_char_boundary(f.end);
        if ok {
            pos = f.end;
        }
        ok
    })
}

pub(super) const T_PRIVATE_KEY: u32 = 1;
pub(super) const T_AWS: u32 = 1 << 1;
pub(super) const T_GITHUB: u32 = 1 << 2;
pub(super) const T_SLACK: u32 = 1 << 3;
pub(super) const T_SK: u32 = 1 << 4;
pub(super) const T_JWT: u32 = 1 << 5;
pub(super) const T_KEYWORD: u32 = 1 << 6;
pub(super) const T_EMAIL: u32 = 1 << 7;
pub(super) const T_DIGITS: u32 = 1 << 8;

/// Literal triggers, matched ASCII-case-insensitively; the regexes behind them are stricter.
pub(super) const TRIGGERS: &[(&str, u32)] = &[
    ("-----begin", T_PRIVATE_KEY),
    ("akia", T_AWS),
    ("asia", T_AWS),
    ("abia", T_AWS),
    ("acca", T_AWS),
    ("ghp_", T_GITHUB),
    ("gho_", T_GITHUB),
    ("ghs_", T_GITHUB),
    ("ghu_", T_GITHUB),
    ("ghr_", T_GITHUB),
    ("github_pat_", T_GITHUB),
    ("xox", T_SLACK),
    ("sk-", T_SK),
    ("eyj", T_JWT),
    ("pass", T_KEYWORD),
    ("pwd", T_KEYWORD),
    ("secret", T_KEYWORD),
    ("token", T_KEYWORD),
    ("apikey", T_KEYWORD),
    ("api_key", T_KEYWORD),
    ("api-key", T_KEYWORD),
    ("access", T_KEYWORD),
    ("private", T_KEYWORD),
    ("bearer", T_KEYWORD),
    ("credential", T_KEYWORD),
    ("@", T_EMAIL),
];

/// Digit runs shorter than this (separators allowed) cannot be a card, SSN, phone number or IBAN.
pub(super) const MIN_DIGIT_RUN: u32 = 8;

/// Longest run of digits where up to two separators (space, dash, dot, parentheses, plus) may sit between
/// digits, as in "(415) 555-2671".
pub(super) fn longest_digit_run(bytes: &[u8]) -> u32 {
    let (mut best, mut run, mut gap) = (0u32, 0u32, 0u8);
    for &b in bytes {
        if b.is_ascii_digit() {
            run += 1;
            gap = 0;
            best = best.max(run);
        } else if gap < 2 && matches!(b, b' ' | b'-' | b'.' | b'(' | b')' | b'+' | b'/') {
            gap += 1;
        } else {
            run = 0;
            gap = 0;
        }
    }
    best
}

struct Recognisers {
    private_key: Regex,
    aws: Regex,
    github: Regex,
    slack: Regex,
    sk: Regex,
    jwt: Regex,
    generic: Regex,
    email: Regex,
    card: Regex,
    ssn: Regex,
    e164: Regex,
    nanp: Regex,
    iban: Regex,
}

fn recognisers() -> &'static Recognisers {
    static R: LazyLock<Recognisers> = LazyLock::new(|| {
        let re = |p: &str| Regex::new(p).expect("recogniser pattern compiles");
        Recognisers {
            private_key: re(
                r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----(?:[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|[A-Za-z0-9+/=\s:,\-]*)",
            ),
            aws: re(r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b"),
            github: re(r"\b(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{22,255})\b"),
            slack: re(r"\bxox[abpr]-(?:[0-9A-Za-z]+-){1,4}[0-9A-Za-z]{6,}\b"),
            sk: re(r"\bsk-(?:(ant)-)?(?:(?:proj|svcacct|admin)-)?([A-Za-z0-9_\-]{20,})"),
            jwt: re(r"\b(eyJ[A-Za-z0-9_\-]{10,})\.([A-Za-z0-9_\-]{10,})\.([A-Za-z0-9_\-]*)"),
            generic: re(
                r#"(?i)(?:^|[^a-z0-9])((?:[a-z0-9]+[_\-.])*(?:password|passwd|pwd|pass|secret|token|api[_\-]?key|apikey|access[_\-]?key|private[_\-]?key|credentials?|bearer)(?:[_\-][a-z0-9]+)*)["']?(\s*(?::=|=>|[:=])\s*|\s+is\s+|\s+)["']?([^\s"'`,;<>(){}\[\]]{8,})"#,
            ),
            email: re(
                r"\b[A-Za-z0-9][A-Za-z0-9._%+\-]*@[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?)*\.([A-Za-z]{2,24})\b",
            ),
            card: re(r"\b[0-9](?:[ \-]?[0-9]){12,18}\b"),
            ssn: re(r"\b([0-9]{3})([\- ]?)([0-9]{2})([\- ]?)([0-9]{4})\b"),
            e164: re(r"\+[1-9](?:[ .\-]?\(?[0-9]\)?){7,14}\b"),
            nanp: re(
                r"(?:\+?1[ .\-]?)?\(?\b([2-9][0-9]{2})\)?([ .\-]?)([2-9][0-9]{2})([ .\-])([0-9]{4})\b",
            ),
            iban: re(r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}"),
        }
    });
    &R
}

fn push(found: &mut Vec<Finding>, kind: FindingKind, start: usize, end: usize, confidence: f32) {
    found.push(Finding {
        kind,
        start,
        end,
        confidence,
    });
}

fn simple(re: &Regex, text: &str, kind: FindingKind, confidence: f32, found: &mut Vec<Finding>) {
    for m in re.find_iter(text) {
        push(found, kind, m.start(), m.end(), confidence);
    }
}

fn private_keys(r: &Recognisers, text: &str, found: &mut Vec<Finding>) {
    for m in r.private_key.find_iter(text) {
        let end = m.start() + m.as_str().trim_end().len();
        push(found, FindingKind::PrivateKey, m.start(), end, 1.0);
    }
}

fn slack(r: &Recognisers, text: &str, found: &mut Vec<Finding>) {
    for m in r.slack.find_iter(text) {
        // Real tokens carry workspace and user ids; "xoxb-your-token-here" carries none.
        if m.as_str().bytes().filter(u8::is_ascii_digit).count() >= 8 {
            push(found, FindingKind::SlackToken, m.start(), m.end(), 0.95);
        }
    }
}

/// `sk-` keys (OpenAI legacy/project/service-account, Anthropic `sk-ant-`). The body must look random:
/// "sk-learn-compatible-estimator" is all lower-case words.
fn vendor_sk(r: &Recognisers, text: &str, found: &mut Vec<Finding>) {
    for c in r.sk.captures_iter(text) {
        let (Some(m), Some(body)) = (c.get(0), c.get(2)) else {
            continue;
        };
        let b = body.as_str().as_bytes();
        let classes = [
            u8::is_ascii_lowercase,
            u8::is_ascii_uppercase,
            u8::is_ascii_digit,
        ]
        .iter()
        .filter(|f| b.iter().any(f))
        .count();
        if classes < 3 || validators::shannon_entropy(b) < 3.5 {
            continue;
        }
        let kind = if c.get(1).is_some() {
            FindingKind::AnthropicKey
        } else {
            FindingKind::OpenAiKey
        };
        push(found, kind, m.start(), m.end(), 0.95);
    }
}

fn jwts(r: &Recognisers, text: &str, found: &mut Vec<Finding>) {
    for c in r.jwt.captures_iter(text) {
        let (Some(m), Some(header)) = (c.get(0), c.get(1)) else {
            continue;
        };
        if validators::jwt_header_valid(header.as_str()) {
            push(found, FindingKind::Jwt, m.start(), m.end(), 0.95);
        }
    }
}

/// Values assigned to a secret-sounding key. Random-looking values (entropy limits) are secrets whatever
/// the key; for password keys an explicit assignment of a mixed-class value is enough, because human
/// passwords are not random.
fn generic_secrets(r: &Recognisers, text: &str, found: &mut Vec<Finding>) {
    for c in r.generic.captures_iter(text) {
        let (Some(key), Some(sep), Some(val)) = (c.get(1), c.get(2), c.get(3)) else {
            continue;
        };
        // Sentence punctuation after the value is not part of it; `!` and `?` often are, so they stay.
        let v = val.as_str().trim_end_matches(['.', ':']);
        if v.len() < 8 || is_placeholder(v) {
            continue;
        }
        let vb = v.as_bytes();
        let explicit = sep.as_str().contains([':', '=']);
        let key_l = key.as_str().to_ascii_lowercase();
        let is_password = ["pass", "pwd"].iter().any(|k| key_l.contains(k));
        let mixed = [
            u8::is_ascii_lowercase,
            u8::is_ascii_uppercase,
            u8::is_ascii_digit,
        ]
        .iter()
        .filter(|f| vb.iter().any(f))
        .count()
            + usize::from(vb.iter().any(|b| !b.is_ascii_alphanumeric()));
        let confidence = if validators::high_entropy_secret(vb)
            && (explicit || vb.iter().any(u8::is_ascii_digit))
        {
            0.8
        } else if is_password && explicit && mixed >= 3 {
            0.7
        } else {
            continue;
        };
        push(
            found,
            FindingKind::GenericSecret,
            val.start(),
            val.start() + v.len(),
            confidence,
        );
    }
}

/// Template variables, masks and environment look-ups are not secrets.
fn is_placeholder(v: &str) -> bool {
    let l = v.to_ascii_lowercase();
    v.starts_with(['<', '$', '{', '%', '*', '.'])
        || l.starts_with("xxx")
        || l.contains("environ")
        || l.contains("getenv")
        || l.contains("process.env")
        || l.contains("your_")
        || l.contains("your-")
        || v.bytes().all(|b| b == v.as_bytes()[0])
}

fn emails(r: &Recognisers, text: &str, found: &mut Vec<Finding>) {
    const FILE_EXTENSIONS: &[&str] = &[
        "png", "jpg", "jpeg", "gif", "svg", "webp", "js", "css", "ts", "json", "py", "rs",
    ];
    for c in r.email.captures_iter(text) {
        let (Some(m), Some(tld)) = (c.get(0), c.get(1)) else {
            continue;
        };
        if FILE_EXTENSIONS
            .iter()
            .any(|e| tld.as_str().eq_ignore_ascii_case(e))
        {
            continue;
        }
        push(found, FindingKind::Email, m.start(), m.end(), 0.9);
    }
}

const CARD_CONTEXT: &[&str] = &[
    "card",
    "visa",
    "mastercard",
    "amex",
    "credit",
    "debit",
    "cc",
    "payment",
    "pay with",
    "cvv",
    "expir",
];
const CARD_ANTI_CONTEXT: &[&str] = &[
    "order",
    "tracking",
    "invoice",
    "isbn",
    "ref",
    "account no",
    "serial",
];

fn cards(r: &Recognisers, text: &str, found: &mut Vec<Finding>) {
    for m in r.card.find_iter(text) {
        let s = m.as_str();
        let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_digit).collect();
        if !(13..=19).contains(&digits.len()) || !consistent_grouping(s) {
            continue;
        }
        if digits.iter().all(|&d| d == digits[0]) {
            continue;
        }
        if !validators::luhn_valid(&digits) || !validators::card_network_accepts(&digits) {
            continue;
        }
        let positive = context_has(text, m.start(), CARD_CONTEXT);
        if !positive && context_has(text, m.start(), CARD_ANTI_CONTEXT) {
            continue;
        }
        push(
            found,
            FindingKind::CreditCard,
            m.start(),
            m.end(),
            if positive { 0.95 } else { 0.8 },
        );
    }
}

/// Card numbers are written bare or with one kind of separator; "4111-1111 1111-1111" is not a card.
fn consistent_grouping(s: &str) -> bool {
    !(s.contains(' ') && s.contains('-'))
}

const SSN_CONTEXT: &[&str] = &[
    "ssn",
    "social security",
    "social sec",
    "ss#",
    "ss #",
    "tax id",
    "taxpayer",
];

fn ssns(r: &Recognisers, text: &str, found: &mut Vec<Finding>) {
    for c in r.ssn.captures_iter(text) {
        let (Some(m), Some(a), Some(s1), Some(g), Some(s2), Some(n)) =
            (c.get(0), c.get(1), c.get(2), c.get(3), c.get(4), c.get(5))
        else {
            continue;
        };
        if s1.as_str() != s2.as_str() || !validators::ssn_valid(a.as_str(), g.as_str(), n.as_str())
        {
            continue;
        }
        // Part of a longer dashed or dotted identifier (a part number, a version): not an SSN.
        let before = text[..m.start()].bytes().next_back();
        let after = text[m.end()..].bytes().next();
        if matches!(before, Some(b'-' | b'.' | b'/')) || matches!(after, Some(b'-' | b'/')) {
            continue;
        }
        if after == Some(b'.')
            && text[m.end() + 1..]
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_digit())
        {
            continue;
        }
        let context = context_has(text, m.start(), SSN_CONTEXT);
        let dashed = s1.as_str() == "-";
        if context || dashed {
            push(
                found,
                FindingKind::UsSsn,
                m.start(),
                m.end(),
                if context { 0.95 } else { 0.6 },
            );
        }
    }
}

const PHONE_CONTEXT: &[&str] = &[
    "phone", "call", "tel", "mobile", "cell", "contact", "reach me", "text me", "fax", "number",
    "whatsapp", "dial",
];

fn phones(r: &Recognisers, text: &str, found: &mut Vec<Finding>) {
    for m in r.e164.find_iter(text) {
        let n = m.as_str().bytes().filter(u8::is_ascii_digit).count();
        let before = text[..m.start()].bytes().next_back();
        if !(8..=15).contains(&n) || before.is_some_and(|b| b.is_ascii_alphanumeric()) {
            continue;
        }
        let conf = if context_has(text, m.start(), PHONE_CONTEXT) {
            0.9
        } else {
            0.7
        };
        push(found, FindingKind::Phone, m.start(), m.end(), conf);
    }
    for c in r.nanp.captures_iter(text) {
        let (Some(m), Some(area), Some(s1), Some(exch), Some(s2)) =
            (c.get(0), c.get(1), c.get(2), c.get(3), c.get(4))
        else {
            continue;
        };
        // Version strings and IP-like dotted runs: "10.212.555.1234", "v2.345.678.9012".
        let before = text[..m.start()].bytes().next_back();
        let after = text[m.end()..].bytes().next();
        if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            || after.is_some_and(|b| b == b'.' || b == b'-')
                && text[m.end() + 1..]
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_digit())
        {
            continue;
        }
        let paren = m.as_str().contains('(');
        if !paren && !s1.as_str().is_empty() && s1.as_str() != s2.as_str() {
            continue;
        }
        if !validators::nanp_valid(area.as_str().as_bytes(), exch.as_str().as_bytes()) {
            continue;
        }
        if context_has(text, m.start(), PHONE_CONTEXT) {
            push(found, FindingKind::Phone, m.start(), m.end(), 0.8);
        }
    }
}

fn ibans(r: &Recognisers, text: &str, found: &mut Vec<Finding>) {
    for m in r.iban.find_iter(text) {
        let s = m.as_str().as_bytes();
        let Some(expected) = validators::iban_expected_len(s) else {
            continue;
        };
        // The pattern runs on into following words ("... 00 AND"); cut it at the country's length.
        let mut compact = Vec::with_capacity(expected);
        let mut end = 0;
        for (i, &b) in s.iter().enumerate() {
            if b != b' ' {
                compact.push(b);
                if compact.len() == expected {
                    end = i + 1;
                    break;
                }
            }
        }
        if compact.len() != expected {
            continue;
        }
        let abs_end = m.start() + end;
        if text[abs_end..]
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        {
            continue;
        }
        if validators::iban_valid(&compact) {
            push(found, FindingKind::Iban, m.start(), abs_end, 0.95);
        }
    }
}

/// Whether one of the (lower-case) context words occurs in the few dozen bytes before a match.
fn context_has(text: &str, start: usize, words: &[&str]) -> bool {
    const WINDOW: usize = 48;
    let mut from = start.saturating_sub(WINDOW);
    while !text.is_char_boundary(from) {
        from += 1;
    }
    let window = text[from..start].to_ascii_lowercase();
    words.iter().any(|w| {
        window.match_indices(w).any(|(i, _)| {
            // Whole-word start, so "cc" does not match "account".
            i == 0 || !window.as_bytes()[i - 1].is_ascii_alphanumeric()
        })
    })
}

/// Keeps the strongest of overlapping findings (a key inside `api_key=...` is the vendor key, not a generic
/// secret), then orders them by position.
fn resolve_overlaps(mut found: Vec<Finding>) -> Vec<Finding> {
    found.sort_by(|a, b| {
        b.confidence
            .total_cmp(&a.confidence)
            .then((b.end - b.start).cmp(&(a.end - a.start)))
            .then(a.start.cmp(&b.start))
    });
    // Kept findings by start. They never overlap, so only the last one starting before `f.end` can
    // overlap `f`: one lookup each, where comparing against every kept finding made a text of 150,000
    // e-mail addresses (1 MB, a few KB gzipped) cost 10^10 comparisons.
    let mut kept: std::collections::BTreeMap<usize, Finding> = std::collections::BTreeMap::new();
    for f in found {
        let overlaps = kept
            .range(..f.end)
            .next_back()
            .is_some_and(|(_, k)| k.end > f.start);
        if !overlaps {
            kept.insert(f.start, f);
        }
    }
    kept.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pairwise rule the ordered lookup replaced.
    fn resolve_overlaps_pairwise(mut found: Vec<Finding>) -> Vec<Finding> {
        found.sort_by(|a, b| {
            b.confidence
                .total_cmp(&a.confidence)
                .then((b.end - b.start).cmp(&(a.end - a.start)))
                .then(a.start.cmp(&b.start))
        });
        let mut kept: Vec<Finding> = Vec::new();
        for f in found {
            if kept.iter().all(|k| f.end <= k.start || f.start >= k.end) {
                kept.push(f);
            }
        }
        kept.sort_by_key(|f| f.start);
        kept
    }

    #[test]
    fn overlaps_resolve_as_the_pairwise_rule_does() {
        // A small deterministic generator: many overlapping spans of mixed confidence.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % m) as usize
        };
        for _ in 0..200 {
            let found: Vec<Finding> = (0..next(40))
                .map(|_| {
                    let start = next(200);
                    Finding {
                        kind: FindingKind::Email,
                        start,
                        end: start + 1 + next(30),
                        confidence: next(4) as f32 / 4.0,
                    }
                })
                .collect();
            let key = |v: Vec<Finding>| {
                v.into_iter()
                    .map(|f| (f.start, f.end, f.confidence.to_bits()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(
                key(resolve_overlaps(found.clone())),
                key(resolve_overlaps_pairwise(found))
            );
        }
    }

    #[test]
    fn a_prompt_of_many_addresses_is_scanned_whole() {
        let text = "a@b.cc ".repeat(150_000);
        assert_eq!(scan_sensitive(&text).len(), 150_000);
    }

    fn kinds(text: &str) -> Vec<FindingKind> {
        scan_sensitive(text).into_iter().map(|f| f.kind).collect()
    }

    fn found(text: &str, kind: FindingKind) -> Option<String> {
        scan_sensitive(text)
            .into_iter()
            .find(|f| f.kind == kind)
            .map(|f| text[f.start..f.end].to_string())
    }

    #[test]
    fn credit_cards_need_luhn_and_a_known_issuer() {
        assert_eq!(
            found(
                "card 4111 1111 1111 1111 exp 12/27",
                FindingKind::CreditCard
            )
            .as_deref(),
            Some("4111 1111 1111 1111")
        );
        assert_eq!(
            found("amex 3782-822463-10005", FindingKind::CreditCard).as_deref(),
            Some("3782-822463-10005")
        );
        assert!(found("pay with 5555555555554444", FindingKind::CreditCard).is_some());
        // Fails Luhn; all-same digits; unknown issuer prefix; order number context.
        assert!(kinds("card 4111 1111 1111 1112").is_empty());
        assert!(kinds("id 0000 0000 0000 0000").is_empty());
        assert!(kinds("ref 1234567812345670").is_empty());
        assert!(kinds("order number 4024007198964305 shipped").is_empty());
        assert!(kinds("ISBN 978-3-16-148410-0").is_empty());
    }

    #[test]
    fn ssn_needs_dashes_or_context_and_valid_parts() {
        assert!(found("SSN: 219-09-9999", FindingKind::UsSsn).is_some());
        assert!(found("my social security number is 219099999", FindingKind::UsSsn).is_some());
        assert!(found("employee 536-22-1234 onboarding", FindingKind::UsSsn).is_some());
        assert!(kinds("ssn 000-12-3456").is_empty());
        assert!(kinds("ssn 666-12-3456").is_empty());
        assert!(kinds("ssn 912-12-3456").is_empty());
        assert!(kinds("ssn 123-00-4567").is_empty());
        assert!(kinds("ssn 123-45-0000").is_empty());
        assert!(kinds("ssn 111-11-1111").is_empty());
        // Nine digits without context, and part numbers.
        assert!(kinds("batch 536221234 done").is_empty());
        assert!(kinds("part AB-536-22-1234-X").is_empty());
    }

    #[test]
    fn iban_is_cut_at_country_length_and_checksummed() {
        assert_eq!(
            found(
                "IBAN DE89 3704 0044 0532 0130 00 AND MORE",
                FindingKind::Iban
            )
            .as_deref(),
            Some("DE89 3704 0044 0532 0130 00")
        );
        assert!(found("send to GB82WEST12345698765432 today", FindingKind::Iban).is_some());
        assert!(kinds("IBAN DE89 3704 0044 0532 0130 01").is_empty());
    }

    #[test]
    fn emails_and_phones() {
        assert_eq!(
            found(
                "write to jane.doe+ai@example.co.uk please",
                FindingKind::Email
            )
            .as_deref(),
            Some("jane.doe+ai@example.co.uk")
        );
        assert!(kinds("see icon@2x.png and git@localhost").is_empty());
        assert!(found("call me on +44 20 7946 0958", FindingKind::Phone).is_some());
        assert!(found("my phone is (415) 555-2671", FindingKind::Phone).is_some());
        // No context, version strings, dates.
        assert!(kinds("build 415-555-2671 passed").is_empty());
        assert!(kinds("upgrade to version 10.212.555.1234 tomorrow").is_empty());
        assert!(kinds("released 2024-10-15 at 10:30").is_empty());
    }

    #[test]
    fn vendor_secrets() {
        assert!(found(
            "AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE",
            FindingKind::AwsAccessKey
        )
        .is_some());
        assert!(found(
            "token ghp_16C7e42F292c6912E7710c838347Ae178B4a here",
            FindingKind::GithubToken
        )
        .is_some());
        assert!(found(
            "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
            FindingKind::SlackToken
        )
        .is_some());
        assert!(found(
            "OPENAI_API_KEY=sk-proj-Ab3dEf9hIj2lMn0pQr7tUv1xYz4B6c8D",
            FindingKind::OpenAiKey
        )
        .is_some());
        assert!(found(
            "key: sk-ant-api03-Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0FeDcBa",
            FindingKind::AnthropicKey
        )
        .is_some());
        let pem = "here:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\n-----END RSA PRIVATE KEY-----\nthanks";
        assert_eq!(
            found(pem, FindingKind::PrivateKey).as_deref(),
            Some(
                "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\n-----END RSA PRIVATE KEY-----"
            )
        );
        let jwt = "Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
        assert_eq!(kinds(jwt), vec![FindingKind::Jwt]);
        // Look-alikes: sk-learn, a slack placeholder, a dotted id that is not a JWT, an AWS-like word.
        assert!(kinds("we use sk-learn-compatible-estimators-for-everything").is_empty());
        assert!(kinds("set xoxb-your-bot-token-here in the config").is_empty());
        assert!(kinds("eyJustAWord.eyJanotherOne.signature").is_empty());
        assert!(kinds("the ASIAN market grew").is_empty());
    }

    #[test]
    fn generic_secrets_need_a_key_word_and_entropy() {
        assert!(found("db password=Summer2024!x", FindingKind::GenericSecret).is_some());
        assert_eq!(
            found("my password: Winter2025!", FindingKind::GenericSecret).as_deref(),
            Some("Winter2025!")
        );
        assert_eq!(
            found(
                r#"{"api_key": "9f86d081884c7d659a2feaa0c55ad015"}"#,
                FindingKind::GenericSecret
            )
            .as_deref(),
            Some("9f86d081884c7d659a2feaa0c55ad015")
        );
        // A git SHA or a UUID without a key word, prose after the word, placeholders, env look-ups.
        assert!(kinds("fixed in commit 9fceb02d0ae598e95dc970b74767f19372d61af8").is_empty());
        assert!(kinds("request 123e4567-e89b-12d3-a456-426614174000 failed").is_empty());
        assert!(kinds("the password reset flow requires confirmation").is_empty());
        assert!(kinds("password: <your-password>").is_empty());
        assert!(kinds("password = os.environ['DB_PASSWORD']").is_empty());
        assert!(kinds("token authentication_is_enabled").is_empty());
    }

    #[test]
    fn overlaps_keep_the_specific_finding() {
        let text = "api_key=AKIAIOSFODNN7EXAMPLE and mail bob@corp.com";
        assert_eq!(
            kinds(text),
            vec![FindingKind::AwsAccessKey, FindingKind::Email]
        );
    }

    #[test]
    fn offsets_move_with_the_masks_before_them() {
        let text = "mail bob@corp.com then the tool said: call 4111111111111111 now";
        let findings = scan_sensitive(text);
        let masked = redact(text, &findings);
        let tool = text.find("the tool").unwrap()..text.len();
        let at = |o, end| redacted_offset(text, &findings, o, end);
        // A range after a mask keeps its words; one that holds a mask covers the mask.
        assert_eq!(
            &masked[at(tool.start, false)..at(tool.end, true)],
            "the tool said: call [REDACTED:credit_card] now"
        );
        // Offsets before any mask do not move; ones inside a mask go to its edges.
        assert_eq!(at(3, false), 3);
        let card = text.find("4111").unwrap();
        assert_eq!(
            &masked[at(card + 2, false)..at(card + 3, true)],
            "[REDACTED:credit_card]"
        );
        assert_eq!(at(text.len(), true), masked.len());
    }

    #[test]
    fn redact_keeps_everything_else_byte_exact() {
        let text = "héllo bob@corp.com, card 4111111111111111 — ok";
        let findings = scan_sensitive(text);
        assert_eq!(
            redact(text, &findings),
            "héllo [REDACTED:email], card [REDACTED:credit_card] — ok"
        );
        assert_eq!(redact(text, &[]), text);
        // Findings that split a character, overlap a previous one or run past the end are skipped.
        let bad = [
            Finding {
                kind: FindingKind::Email,
                start: 0,
                end: 1,
                confidence: 1.0,
            },
            Finding {
                kind: FindingKind::Email,
                start: 1,
                end: 2,
                confidence: 1.0,
            },
            Finding {
                kind: FindingKind::Email,
                start: 0,
                end: 3,
                confidence: 1.0,
            },
            Finding {
                kind: FindingKind::Email,
                start: 3,
                end: 999,
                confidence: 1.0,
            },
        ];
        assert_eq!(
            redact(text, &bad),
            "[REDACTED:email]éllo bob@corp.com, card 4111111111111111 — ok"
        );
    }

    #[test]
    fn digit_run_prefilter_allows_phone_punctuation() {
        assert_eq!(longest_digit_run(b"(415) 555-2671"), 10);
        assert_eq!(longest_digit_run(b"in 2023 we had 15 users"), 4);
    }

    #[test]
    fn clean_text_has_no_findings() {
        let text = "Summarise the attached quarterly report in three bullet points for the leadership team.";
        assert!(scan_sensitive(text).is_empty());
    }
}
