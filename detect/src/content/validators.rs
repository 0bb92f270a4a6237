//! Checksums and plausibility rules that turn a pattern match into a finding. Patterns alone fire on order
//! numbers, ISBNs and hashes; these validators are what keep precision up.

use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;

/// Luhn (mod 10) over ASCII digits; random 16-digit numbers pass it only one time in ten.
pub fn luhn_valid(digits: &[u8]) -> bool {
    if digits.is_empty() {
        return false;
    }
    let mut sum = 0u32;
    for (i, &d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// Card lengths allowed for a known issuer prefix (IIN ranges of the networks a company would see), or
/// `None` when no network issues cards starting with these digits.
pub fn card_network_accepts(digits: &[u8]) -> bool {
    let len = digits.len();
    let prefix = |n: usize| -> u32 {
        digits[..n.min(len)]
            .iter()
            .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'))
    };
    if len < 13 {
        return false;
    }
    let p1 = prefix(1);
    let p2 = prefix(2);
    let p3 = prefix(3);
    let p4 = prefix(4);
    let p6 = prefix(6);
    match p1 {
        // Visa
        4 => matches!(len, 13 | 16 | 19),
        // Mastercard 51-55, 2221-2720
        5 if (51..=55).contains(&p2) => len == 16,
        2 if (2221..=2720).contains(&p4) => len == 16,
        3 => {
            // Amex 34/37, Diners 300-305/36/38-39, JCB 3528-3589
            ((p2 == 34 || p2 == 37) && len == 15)
                || (((300..=305).contains(&p3) || p2 == 36 || p2 == 38 || p2 == 39)
                    && (14..=19).contains(&len))
                || ((3528..=3589).contains(&p4) && (16..=19).contains(&len))
        }
        6 => {
            // Discover 6011, 644-649, 65, 622126-622925; UnionPay 62
            (p4 == 6011
                || (644..=649).contains(&p3)
                || p2 == 65
                || (622126..=622925).contains(&p6)
                || p2 == 62)
                && (16..=19).contains(&len)
        }
        _ => false,
    }
}

/// US SSN rules the SSA never issues (the checks Presidio applies): area 000, 666 or 9xx, group 00,
/// serial 0000, all digits the same, and the Woolworth wallet number that was printed on sample cards.
pub fn ssn_valid(area: &str, group: &str, serial: &str) -> bool {
    if area == "000" || area == "666" || area.starts_with('9') || group == "00" || serial == "0000"
    {
        return false;
    }
    let all: Vec<u8> = area
        .bytes()
        .chain(group.bytes())
        .chain(serial.bytes())
        .collect();
    if all.iter().all(|&b| b == all[0]) {
        return false;
    }
    !(area == "078" && group == "05" && serial == "1120")
}

/// IBAN lengths per country (ISO 13616 registry).
fn iban_length(country: &str) -> Option<usize> {
    Some(match country {
        "AD" => 24,
        "AE" => 23,
        "AL" => 28,
        "AT" => 20,
        "AZ" => 28,
        "BA" => 20,
        "BE" => 16,
        "BG" => 22,
        "BH" => 22,
        "BR" => 29,
        "BY" => 28,
        "CH" => 21,
        "CR" => 22,
        "CY" => 28,
        "CZ" => 24,
        "DE" => 22,
        "DK" => 18,
        "DO" => 28,
        "EE" => 20,
        "EG" => 29,
        "ES" => 24,
        "FI" => 18,
        "FO" => 18,
        "FR" => 27,
        "GB" => 22,
        "GE" => 22,
        "GI" => 23,
        "GL" => 18,
        "GR" => 27,
        "GT" => 28,
        "HR" => 21,
        "HU" => 28,
        "IE" => 22,
        "IL" => 23,
        "IQ" => 23,
        "IS" => 26,
        "IT" => 27,
        "JO" => 30,
        "KW" => 30,
        "KZ" => 20,
        "LB" => 28,
        "LC" => 32,
        "LI" => 21,
        "LT" => 20,
        "LU" => 20,
        "LV" => 21,
        "MC" => 27,
        "MD" => 24,
        "ME" => 22,
        "MK" => 19,
        "MR" => 27,
        "MT" => 31,
        "MU" => 30,
        "NL" => 18,
        "NO" => 15,
        "PK" => 24,
        "PL" => 28,
        "PS" => 29,
        "PT" => 25,
        "QA" => 29,
        "RO" => 24,
        "RS" => 22,
        "SA" => 24,
        "SC" => 31,
        "SE" => 24,
        "SI" => 19,
        "SK" => 24,
        "SM" => 27,
        "ST" => 25,
        "SV" => 28,
        "TL" => 23,
        "TN" => 24,
        "TR" => 26,
        "UA" => 29,
        "VA" => 22,
        "VG" => 24,
        "XK" => 20,
        _ => return None,
    })
}

/// Expected compact length of an IBAN starting with this country code.
pub fn iban_expected_len(compact: &[u8]) -> Option<usize> {
    let cc = std::str::from_utf8(compact.get(..2)?).ok()?;
    iban_length(cc)
}

/// ISO 7064 mod 97-10 over the compact (no spaces, upper-case) IBAN of its country's exact length.
pub fn iban_valid(compact: &[u8]) -> bool {
    if iban_expected_len(compact) != Some(compact.len()) {
        return false;
    }
    if !compact[2..4].iter().all(u8::is_ascii_digit) {
        return false;
    }
    let mut rem: u32 = 0;
    for &b in compact[4..].iter().chain(&compact[..4]) {
        let v = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// Shannon entropy in bits per byte: how random a candidate secret looks.
pub fn shannon_entropy(s: &[u8]) -> f64 {
    if s.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &b in s {
        counts[b as usize] += 1;
    }
    let n = s.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

/// Whether a value next to a secret keyword is random enough to be a credential. The limits are the
/// detect-secrets ones (4.5 bits/char base64, 3.0 hex), scaled down for short values because a string of
/// n distinct characters cannot exceed log2(n) bits per character.
pub fn high_entropy_secret(value: &[u8]) -> bool {
    if value.len() < 16 {
        return false;
    }
    let entropy = shannon_entropy(value);
    let reachable = 0.85 * (value.len() as f64).log2();
    if value.iter().all(u8::is_ascii_hexdigit) {
        entropy >= 3.0f64.min(reachable)
    } else {
        entropy >= 4.5f64.min(reachable)
    }
}

/// A JWT's first part must be base64url JSON naming its algorithm; this is what separates a token from
/// any dotted identifier.
pub fn jwt_header_valid(header_b64: &str) -> bool {
    let decoded = URL_SAFE_NO_PAD
        .decode(header_b64.trim_end_matches('='))
        .or_else(|_| URL_SAFE.decode(header_b64));
    let Ok(bytes) = decoded else { return false };
    match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(serde_json::Value::Object(map)) => {
            map.get("alg").is_some_and(serde_json::Value::is_string)
        }
        _ => false,
    }
}

/// NANP numbers: area and exchange codes start with 2-9, and N11 codes are service numbers.
pub fn nanp_valid(area: &[u8], exchange: &[u8]) -> bool {
    area.len() == 3
        && exchange.len() == 3
        && (b'2'..=b'9').contains(&area[0])
        && (b'2'..=b'9').contains(&exchange[0])
        && !(area[1] == b'1' && area[2] == b'1')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_accepts_test_cards_and_rejects_off_by_one() {
        assert!(luhn_valid(b"4111111111111111"));
        assert!(luhn_valid(b"378282246310005"));
        assert!(luhn_valid(b"5555555555554444"));
        assert!(!luhn_valid(b"4111111111111112"));
        assert!(!luhn_valid(b"1234567812345678"));
    }

    #[test]
    fn card_networks_by_prefix_and_length() {
        assert!(card_network_accepts(b"4111111111111111"));
        assert!(card_network_accepts(b"378282246310005"));
        assert!(card_network_accepts(b"2223003122003222"));
        assert!(card_network_accepts(b"6011111111111117"));
        assert!(card_network_accepts(b"3530111333300000"));
        // Amex prefix with a Visa length, and a prefix no network uses.
        assert!(!card_network_accepts(b"3782822463100051"));
        assert!(!card_network_accepts(b"9111111111111111"));
        assert!(!card_network_accepts(b"1234567812345670"));
    }

    #[test]
    fn ssn_invalidation_rules() {
        assert!(ssn_valid("219", "09", "9999"));
        assert!(ssn_valid("123", "45", "6789"));
        for (a, g, s) in [
            ("000", "12", "3456"),
            ("666", "12", "3456"),
            ("912", "12", "3456"),
            ("123", "00", "4567"),
            ("123", "45", "0000"),
            ("111", "11", "1111"),
            ("078", "05", "1120"),
        ] {
            assert!(!ssn_valid(a, g, s), "{a}-{g}-{s}");
        }
    }

    #[test]
    fn iban_mod97_and_length() {
        assert!(iban_valid(b"DE89370400440532013000"));
        assert!(iban_valid(b"GB82WEST12345698765432"));
        assert!(iban_valid(b"NL91ABNA0417164300"));
        assert!(iban_valid(b"FR1420041010050500013M02606"));
        assert!(!iban_valid(b"DE89370400440532013001"));
        assert!(!iban_valid(b"DE8937040044053201300"));
        assert!(!iban_valid(b"ZZ89370400440532013000"));
    }

    #[test]
    fn entropy_limits_separate_keys_from_words() {
        assert!(high_entropy_secret(
            b"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
        ));
        assert!(high_entropy_secret(b"9f86d081884c7d659a2feaa0c55ad015"));
        assert!(!high_entropy_secret(b"aaaaaaaaaaaaaaaaaaaaaaaa"));
        assert!(!high_entropy_secret(b"passwordpassword"));
        assert!(!high_entropy_secret(b"short"));
        assert!(!high_entropy_secret(b"0000000011111111"));
    }

    #[test]
    fn jwt_header_must_be_json_with_alg() {
        assert!(jwt_header_valid("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"));
        assert!(!jwt_header_valid("eyJ0eXAiOiJKV1QifQ")); // {"typ":"JWT"} has no alg
        assert!(!jwt_header_valid("not base64 at all"));
    }

    #[test]
    fn nanp_rules() {
        assert!(nanp_valid(b"415", b"555"));
        assert!(!nanp_valid(b"911", b"555"));
        assert!(!nanp_valid(b"115", b"555"));
        assert!(!nanp_valid(b"415", b"055"));
    }
}
