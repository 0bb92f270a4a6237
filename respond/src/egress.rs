//! Where webhooks may be sent. A webhook URL is configuration that an attacker who can edit it would love
//! to point at cloud metadata (169.254.169.254) or a local admin port, so those are refused unless listed,
//! and names are checked again on every DNS answer (a name cannot be rebound to a forbidden address).

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

use crate::config::EgressConfig;

#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("invalid allow_cidrs entry {0:?}: {1}")]
    BadCidr(String, ipnet::AddrParseError),
    #[error("destination URL is not valid: {0}")]
    BadUrl(#[from] url::ParseError),
    #[error("destination URL must be http or https, not {0:?}")]
    Scheme(String),
    #[error("destination URL has no host")]
    NoHost,
    #[error("egress policy denies {0} (add it to respond.egress.allow_hosts or allow_cidrs)")]
    Denied(String),
}

#[derive(Debug, Clone)]
pub struct EgressPolicy {
    hosts: HashSet<String>,
    cidrs: Vec<IpNet>,
}

impl EgressPolicy {
    pub fn new(cfg: &EgressConfig) -> Result<EgressPolicy, EgressError> {
        let cidrs = cfg
            .allow_cidrs
            .iter()
            .map(|c| {
                c.parse::<IpNet>()
                    .map_err(|e| EgressError::BadCidr(c.clone(), e))
            })
            .collect::<Result<_, _>>()?;
        let hosts = cfg.allow_hosts.iter().map(|h| normalise_host(h)).collect();
        Ok(EgressPolicy { hosts, cidrs })
    }

    fn strict(&self) -> bool {
        !self.hosts.is_empty() || !self.cidrs.is_empty()
    }

    fn host_listed(&self, host: &str) -> bool {
        self.hosts.contains(&normalise_host(host))
    }

    /// Whether a connection to `ip` is allowed.
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        if self.cidrs.iter().any(|n| n.contains(&ip)) || self.hosts.contains(&ip.to_string()) {
            return true;
        }
        !self.strict() && !forbidden_by_default(ip)
    }

    /// Checks a URL before any request: scheme, IP literals, and listed names. Names not listed are
    /// checked at resolution by [`EgressResolver`].
    pub fn check_url(&self, url: &str) -> Result<Url, EgressError> {
        let parsed = Url::parse(url)?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(EgressError::Scheme(parsed.scheme().to_string()));
        }
        let ok = match parsed.host().ok_or(EgressError::NoHost)? {
            Host::Ipv4(ip) => self.allows_ip(IpAddr::V4(ip)),
            Host::Ipv6(ip) => self.allows_ip(IpAddr::V6(ip)),
            // In strict mode a name must be listed itself or resolve into a listed network.
            Host::Domain(d) => self.host_listed(d) || !self.strict() || !self.cidrs.is_empty(),
        };
        if ok {
            Ok(parsed)
        } else {
            Err(EgressError::Denied(
                parsed.host_str().unwrap_or_default().to_string(),
            ))
        }
    }
}

fn normalise_host(h: &str) -> String {
    let h = h
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    match h.parse::<IpAddr>() {
        Ok(ip) => canonical(ip).to_string(),
        Err(_) => h,
    }
}

/// IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Loopback, link-local (cloud metadata lives there), unspecified, multicast, broadcast, and the
/// metadata addresses that are not link-local (Alibaba's 100.100.100.200, AWS's IPv6 fd00:ec2::254).
fn forbidden_by_default(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.octets() == [100, 100, 100, 200]
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6
                    == "fd00:ec2::254"
                        .parse::<std::net::Ipv6Addr>()
                        .unwrap_or(std::net::Ipv6Addr::UNSPECIFIED)
        }
    }
}

/// A DNS resolver for reqwest that drops every address the policy forbids.
#[derive(Debug, Clone)]
pub struct EgressResolver {
    policy: Arc<EgressPolicy>,
}

impl EgressResolver {
    pub fn new(policy: Arc<EgressPolicy>) -> EgressResolver {
        EgressResolver { policy }
    }
}

impl Resolve for EgressResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let listed = policy.host_listed(&host);
            let allowed: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| listed || policy.allows_ip(a.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(
                    Box::new(EgressError::Denied(host)) as Box<dyn std::error::Error + Send + Sync>
                );
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(hosts: &[&str], cidrs: &[&str]) -> EgressPolicy {
        EgressPolicy::new(&EgressConfig {
            allow_hosts: hosts.iter().map(|s| s.to_string()).collect(),
            allow_cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
        })
        .unwrap()
    }

    #[test]
    fn default_policy_refuses_metadata_loopback_link_local() {
        let p = policy(&[], &[]);
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "http://127.0.0.1:8080/hook",
            "http://[::1]/x",
            "http://[::ffff:169.254.169.254]/x",
            "http://100.100.100.200/",
            "http://0.0.0.0/",
            "http://[fe80::1]/",
        ] {
            assert!(
                matches!(p.check_url(url), Err(EgressError::Denied(_))),
                "{url}"
            );
        }
        assert!(p.check_url("https://soar.example.com/hook").is_ok());
        assert!(p.check_url("http://10.1.2.3/hook").is_ok());
        assert!(matches!(
            p.check_url("file:///etc/passwd"),
            Err(EgressError::Scheme(_))
        ));
    }

    #[test]
    fn listed_hosts_and_cidrs_are_the_only_ones_when_given() {
        let p = policy(&["127.0.0.1", "SOAR.example.com."], &["10.20.0.0/16"]);
        assert!(p.check_url("http://127.0.0.1:9/x").is_ok());
        assert!(p.check_url("https://soar.example.com/x").is_ok());
        assert!(p.check_url("http://10.20.3.4/x").is_ok());
        assert!(p.check_url("http://10.21.3.4/x").is_err());
        assert!(p.check_url("http://169.254.169.254/x").is_err());
        let only_hosts = policy(&["127.0.0.1"], &[]);
        assert!(only_hosts.check_url("https://other.example.com/x").is_err());
        let metadata_allowed = policy(&[], &["169.254.169.254/32"]);
        assert!(metadata_allowed
            .check_url("http://169.254.169.254/x")
            .is_ok());
    }

    #[tokio::test]
    async fn resolver_drops_forbidden_answers() {
        let r = EgressResolver::new(Arc::new(policy(&[], &[])));
        let name: Name = "localhost".parse().unwrap();
        let err = r.resolve(name).await.err().expect("localhost is loopback");
        assert!(err.to_string().contains("egress policy denies localhost"));
        let r = EgressResolver::new(Arc::new(policy(&["localhost"], &[])));
        let addrs: Vec<_> = r
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(!addrs.is_empty());
    }
}
