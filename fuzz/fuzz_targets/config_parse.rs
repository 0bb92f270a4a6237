//! The config file, and each section that a library crate defines, parsed from arbitrary TOML.
//!
//! Input: one selector byte choosing the type, then its body as TOML (as if it were the whole file). The
//! binary's top-level `Config` lives in the `vigil` bin crate, which cannot be a dependency; its module is
//! compiled in here from its source file (it uses only other crates), so the file the binary reads is the
//! file fuzzed, `[server]`, `[pipeline]`, `[sql]`, `[telemetry]` and `[tls]` included.
//!
//! Properties: no panic on any input; a section that parses serialises back to TOML (unless it holds a value
//! TOML cannot write) and that TOML parses again to the same section, so a config the binary prints (or a
//! person copies) means what was read; `KafkaConfig::validate` never panics.

#![no_main]

use libfuzzer_sys::fuzz_target;

/// The binary's `src/config.rs`; only its types are used here.
#[allow(dead_code)]
#[path = "../../src/config.rs"]
mod config;
use serde::de::DeserializeOwned;
use serde::Serialize;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(body) else {
        return;
    };
    match selector % 6 {
        0 => {
            round_trip::<vigil_store::StoreConfig>(text);
        }
        1 => {
            round_trip::<vigil_detect::DetectConfig>(text);
        }
        2 => {
            round_trip::<vigil_ingest::otlp::ReceiverConfig>(text);
        }
        3 => {
            if let Some(config) = round_trip::<vigil_ingest::kafka::KafkaConfig>(text) {
                let _ = config.validate();
            }
        }
        4 => {
            round_trip::<vigil_respond::RespondConfig>(text);
        }
        _ => {
            if let Some(config) = round_trip::<config::Config>(text) {
                let _ = config.kafka.validate();
            }
        }
    }
});

/// Parses `text` as `T`; if that works, checks that serialising and re-parsing is a fixed point. Compares
/// the serialised forms because not every section type implements `PartialEq` (and NaN thresholds would
/// break it anyway).
fn round_trip<T: DeserializeOwned + Serialize>(text: &str) -> Option<T> {
    let parsed: T = toml::from_str(text).ok()?;
    // Some values cannot be written as TOML (e.g. a map key type TOML has no syntax for); that is not a bug
    // in the config, only a limit of printing it.
    let Ok(printed) = toml::to_string(&parsed) else {
        return Some(parsed);
    };
    let reparsed: T = match toml::from_str(&printed) {
        Ok(reparsed) => reparsed,
        Err(e) => panic!("serialised config does not parse again: {e}\n--- input\n{text}\n--- printed\n{printed}"),
    };
    let reprinted = toml::to_string(&reparsed).expect("a re-parsed config serialises");
    assert_eq!(
        printed, reprinted,
        "config changed meaning in a serialise/parse round trip\n--- input\n{text}"
    );
    Some(parsed)
}
