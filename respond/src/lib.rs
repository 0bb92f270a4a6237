//! Response: delivering alerts to SOAR webhooks and response playbooks, verifiably and without loss.
