//! Which addresses webhook requests may reach.
//!
//! A webhook URL is attacker-controlled input: without a policy, anyone who may register a
//! webhook can make the server POST to its own admin ports, the cloud metadata service
//! (169.254.169.254) or the private network behind it. So only public (globally routable)
//! addresses are allowed, plus networks the operator lists explicitly (`--webhook-allow-net`).
//!
//! The check runs at connect time, on the addresses actually resolved ([`GuardedResolver`]), not
//! just at registration: otherwise a DNS name that resolved to a public address when registered
//! could later resolve to 127.0.0.1 (DNS rebinding). IP-literal hosts never reach the resolver,
//! so [`AddressPolicy::check_url`] checks them before every request. Redirects are not followed.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    str::FromStr,
    sync::Arc,
};

use reqwest::{
    Url,
    dns::{Addrs, Name, Resolve, Resolving},
};

/// Longest URL accepted; keeps stored definitions and log lines small.
pub const MAX_URL_LEN: usize = 2048;

/// A CIDR network such as `127.0.0.0/8` or `fd00::/8`; a bare address means just that address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

/// A malformed `--webhook-allow-net` entry.
#[derive(Debug, thiserror::Error)]
#[error("invalid network {0:?}: use CIDR notation such as 127.0.0.0/8 or fd00::/8")]
pub struct BadNet(String);

impl FromStr for IpNet {
    type Err = BadNet;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadNet(s.to_string());
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if prefix > max {
            return Err(bad());
        }
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl IpNet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let full = usize::from(prefix / 8);
    let rest = prefix % 8;
    if a[..full] != b[..full] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    (a[full] & mask) == (b[full] & mask)
}

/// Why a webhook URL is refused. Messages say what to change.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("url is required")]
    Missing,
    #[error("url is {0} characters; the limit is {MAX_URL_LEN}")]
    TooLong(usize),
    #[error("url {url:?} is not a valid absolute URL: {reason}")]
    Invalid { url: String, reason: String },
    #[error("url scheme {0:?} is not supported; use http or https")]
    Scheme(String),
    #[error("url must use https: this server requires it (--webhook-require-https)")]
    HttpsRequired,
    #[error(
        "url {url:?} points to {ip}, a {kind} address, which webhooks may not reach (SSRF protection); use a public address, or start the server with --webhook-allow-net covering it"
    )]
    Refused {
        url: String,
        ip: IpAddr,
        kind: &'static str,
    },
}

/// The address rules for webhook requests.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    pub allow_nets: Vec<IpNet>,
    pub require_https: bool,
}

impl AddressPolicy {
    /// None when `ip` may be contacted, otherwise what kind of address it is.
    pub fn refusal(&self, ip: IpAddr) -> Option<&'static str> {
        let ip = canonical(ip);
        if self.allow_nets.iter().any(|net| net.contains(ip)) {
            return None;
        }
        non_public_kind(ip)
    }

    /// Parses and checks a URL: scheme, https requirement, and IP-literal hosts (which bypass
    /// the resolver). DNS names are checked when resolved.
    pub fn check_url(&self, raw: &str) -> Result<Url, UrlError> {
        if raw.trim().is_empty() {
            return Err(UrlError::Missing);
        }
        if raw.len() > MAX_URL_LEN {
            return Err(UrlError::TooLong(raw.len()));
        }
        let url = Url::parse(raw).map_err(|err| UrlError::Invalid {
            url: raw.to_string(),
            reason: err.to_string(),
        })?;
        match url.scheme() {
            "https" => {}
            "http" if self.require_https => return Err(UrlError::HttpsRequired),
            "http" => {}
            other => return Err(UrlError::Scheme(other.to_string())),
        }
        let ip = match url.host() {
            None => {
                return Err(UrlError::Invalid {
                    url: raw.to_string(),
                    reason: "it has no host".into(),
                });
            }
            Some(url::Host::Domain(_)) => return Ok(url),
            Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
        };
        match self.refusal(ip) {
            None => Ok(url),
            Some(kind) => Err(UrlError::Refused {
                url: raw.to_string(),
                ip,
                kind,
            }),
        }
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:127.0.0.1`) are judged as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// What kind of non-public address `ip` is, or None for a globally routable one. Written out
/// because `IpAddr::is_global` is still unstable.
pub fn non_public_kind(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => v4_kind(v4),
        IpAddr::V6(v6) => v6_kind(v6),
    }
}

fn v4_kind(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip.is_unspecified() || a == 0 => "unspecified (0.0.0.0/8)",
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_private() => "private",
        _ if ip.is_link_local() => "link-local",
        (100, 64..=127, _) => "shared (carrier-grade NAT)",
        (192, 0, 0) => "IETF protocol assignment",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (198, 18..=19, _) => "benchmarking",
        _ if ip.is_multicast() => "multicast",
        _ if ip.is_broadcast() => "broadcast",
        _ if a >= 240 => "reserved",
        _ => return None,
    })
}

fn v6_kind(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    Some(match s {
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_loopback() => "loopback",
        [0x64, 0xff9b, ..] => "NAT64",
        [0x100, 0, 0, 0, ..] => "discard-only",
        [0x2001, 0xdb8, ..] => "documentation",
        [0x2001, 0x0..=0x1ff, ..] => "IETF protocol assignment",
        [0x2002, ..] => "6to4",
        [x, ..] if x & 0xfe00 == 0xfc00 => "unique-local",
        [x, ..] if x & 0xffc0 == 0xfe80 => "link-local",
        [x, ..] if x & 0xffc0 == 0xfec0 => "site-local",
        [x, ..] if x & 0xff00 == 0xff00 => "multicast",
        [0, 0, 0, 0, 0, 0, ..] => "IPv4-compatible",
        _ => return None,
    })
}

/// A DNS resolver that drops addresses the policy refuses, and fails with a clear message when
/// none remain, so a refused endpoint shows up in `ListDeliveries` as exactly that.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    pub policy: Arc<AddressPolicy>,
}

/// The error a delivery attempt records when every resolved address is refused.
#[derive(Debug, thiserror::Error)]
#[error(
    "{host} resolves only to refused addresses ({addrs}) (SSRF protection); use a public address, or start the server with --webhook-allow-net covering it"
)]
pub struct RefusedHost {
    host: String,
    addrs: String,
}

impl GuardedResolver {
    /// Resolves `host` and keeps only the allowed addresses.
    pub async fn resolve_allowed(
        policy: &AddressPolicy,
        host: &str,
    ) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
        let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host, 0)).await?.collect();
        let (allowed, refused): (Vec<_>, Vec<_>) = resolved
            .into_iter()
            .partition(|addr| policy.refusal(addr.ip()).is_none());
        if allowed.is_empty() {
            let addrs = refused
                .iter()
                .map(|a| {
                    let ip = a.ip();
                    format!("{ip}: {}", non_public_kind(ip).unwrap_or("refused"))
                })
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Box::new(RefusedHost {
                host: host.to_string(),
                addrs,
            }));
        }
        Ok(allowed)
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let allowed = Self::resolve_allowed(&policy, name.as_str()).await?;
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn non_public_addresses_are_refused() {
        let policy = AddressPolicy::default();
        for addr in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "2001:db8::1",
        ] {
            assert!(policy.refusal(ip(addr)).is_some(), "{addr} must be refused");
        }
        for addr in [
            "1.1.1.1",
            "8.8.8.8",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(policy.refusal(ip(addr)).is_none(), "{addr} must be allowed");
        }
    }

    #[test]
    fn allow_list_opens_listed_networks_only() {
        let policy = AddressPolicy {
            allow_nets: vec!["127.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()],
            require_https: false,
        };
        assert!(policy.refusal(ip("127.0.0.2")).is_none());
        assert!(policy.refusal(ip("::ffff:127.0.0.1")).is_none());
        assert!(policy.refusal(ip("fd12::1")).is_none());
        assert!(policy.refusal(ip("10.0.0.1")).is_some());
        assert!(policy.refusal(ip("::1")).is_some());
    }

    #[test]
    fn nets_parse_and_match() {
        let net: IpNet = "172.16.0.0/12".parse().unwrap();
        assert!(net.contains(ip("172.31.255.255")));
        assert!(!net.contains(ip("172.32.0.0")));
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("nonsense".parse::<IpNet>().is_err());
        let single: IpNet = "10.0.0.7".parse().unwrap();
        assert!(single.contains(ip("10.0.0.7")) && !single.contains(ip("10.0.0.8")));
    }

    #[test]
    fn urls_are_checked() {
        let policy = AddressPolicy::default();
        assert!(matches!(
            policy.check_url("not a url"),
            Err(UrlError::Invalid { .. })
        ));
        assert!(matches!(
            policy.check_url("ftp://example.com/"),
            Err(UrlError::Scheme(_))
        ));
        assert!(matches!(
            policy.check_url("http://127.0.0.1:8080/hook"),
            Err(UrlError::Refused { .. })
        ));
        assert!(matches!(
            policy.check_url("http://[::1]/"),
            Err(UrlError::Refused { .. })
        ));
        assert!(policy.check_url("https://example.com/hook").is_ok());
        let strict = AddressPolicy {
            require_https: true,
            ..AddressPolicy::default()
        };
        assert!(matches!(
            strict.check_url("http://example.com/"),
            Err(UrlError::HttpsRequired)
        ));
    }

    /// DNS names are judged by what they resolve to, at connect time.
    #[tokio::test]
    async fn resolver_drops_refused_addresses() {
        let policy = AddressPolicy::default();
        let err = GuardedResolver::resolve_allowed(&policy, "localhost")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("SSRF"), "{err}");
        let open = AddressPolicy {
            allow_nets: vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
            require_https: false,
        };
        let addrs = GuardedResolver::resolve_allowed(&open, "localhost")
            .await
            .unwrap();
        assert!(!addrs.is_empty());
    }
}
