//! Response: delivering alerts to SOAR webhooks and response playbooks, verifiably and without loss.
//!
//! Detections are folded into findings per fingerprint ([`grouping`]), each notification is rendered for
//! its receiver ([`formats`], [`ocsf`]) and written to a durable outbox ([`outbox`]) before any attempt;
//! the delivery loop ([`Responder::run`]) signs ([`signing`]), sends, retries ([`backoff`], [`breaker`])
//! and records every outcome, inside an egress policy ([`egress`]).

pub mod backoff;
pub mod breaker;
pub mod config;
pub mod delivery;
pub mod egress;
pub mod finding;
pub mod formats;
pub mod grouping;
pub mod metrics;
pub mod ocsf;
pub mod outbox;
pub mod playbook;
mod responder;
mod secret;
pub mod signing;
pub mod table;

pub use config::{
    Auth, DeliveryConfig, DestinationConfig, EgressConfig, Format, GroupingConfig, PlaybookConfig,
    RespondConfig,
};
pub use delivery::Answer;
pub use finding::{Activity, Finding};
pub use outbox::{DeliveryRecord, DeliveryStatus, DestinationState, ResponseRecord};
pub use responder::{
    playbook_destination, Replay, RespondError, Responder, ResponseView, RECONCILE_WINDOW_MS,
};
pub use secret::Secret;
pub use table::{alert_responses_to_batch, deliveries_schema, deliveries_to_batch};
