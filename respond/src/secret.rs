//! A credential that can be configured and used but never shown.
//!
//! Webhook tokens, passwords and signing secrets end up in configs that are printed, in errors that are
//! logged and in `Debug` dumps of whole structs; wrapping them here makes every such path print `***`.

use std::fmt;

use serde::{Deserialize, Serialize, Serializer};

/// A secret string: `Debug`, `Display` and `Serialize` all print `***`; only [`Secret::expose`] reveals it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The real value, for the one place that puts it on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Serialising a config (e.g. `vigil config show`) must not leak the value either.
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_printed() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "*** ***");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"***\"");
        let parsed: Secret = serde_json::from_str("\"tok\"").unwrap();
        assert_eq!(parsed.expose(), "tok");
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Holder {
            token: Secret,
        }
        assert!(!format!("{:?}", Holder { token: s }).contains("hunter2"));
    }
}
