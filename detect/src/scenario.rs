//! Synthetic labelled traffic (being written).
