//! Which addresses a url source may reach. Checked where the address is known: on every
//! resolution (the HTTP client's DNS resolver, so each redirect hop and each Range resume is
//! checked after DNS, and a name that changes its answer cannot slip through) and on IP-literal
//! hosts, which bypass the resolver. Denied by default: loopback, link-local (the cloud metadata
//! service), private, CGNAT, unique-local, multicast and reserved ranges, where the API server,
//! pods and the node's own services live.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// The worker's egress policy for url sources.
#[derive(Clone, Debug, Default)]
pub struct Egress {
    /// Ranges allowed although they are in a denied class (`--egress-allow-cidr`).
    allow: Vec<IpNet>,
    /// Host names allowed whatever they resolve to (`--egress-allow-host`), lowercase.
    allow_hosts: Vec<String>,
}

/// An address the policy refuses, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{addr} is a {class} address, which the worker's egress policy denies (allow it with \
     --egress-allow-cidr or --egress-allow-host; chart: worker.egress.allowCidrs/allowHosts)"
)]
pub struct Denied {
    pub addr: IpAddr,
    pub class: &'static str,
}

impl Egress {
    pub fn new(allow: Vec<IpNet>, allow_hosts: Vec<String>) -> Self {
        let allow_hosts = allow_hosts
            .into_iter()
            .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        Egress { allow, allow_hosts }
    }

    /// Whether `host` is allowed whatever its addresses.
    pub fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.allow_hosts.contains(&host)
    }

    /// Whether `host` may be reached at `addr`.
    pub fn check(&self, host: &str, addr: IpAddr) -> Result<(), Denied> {
        if self.host_allowed(host) {
            return Ok(());
        }
        let addr = canonical(addr);
        match class(addr) {
            Some(class) if !self.allow.iter().any(|net| net.contains(&addr)) => Err(Denied { addr, class }),
            _ => Ok(()),
        }
    }
}

/// An IPv4 address carried in IPv6 (mapped, or NAT64's well-known prefix) is judged as IPv4.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let s = v6.segments();
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [a, b] = s[6].to_be_bytes();
                let [c, d] = s[7].to_be_bytes();
                return IpAddr::V4(Ipv4Addr::new(a, b, c, d));
            }
            IpAddr::V6(v6)
        }
        v4 => v4,
    }
}

/// The denied class of `addr`, or None for a public address.
fn class(addr: IpAddr) -> Option<&'static str> {
    match addr {
        IpAddr::V4(ip) => class_v4(ip),
        IpAddr::V6(ip) => class_v6(ip),
    }
}

fn class_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    Some(match () {
        () if ip.is_loopback() => "loopback",
        () if ip.is_link_local() => "link-local",
        () if ip.is_private() => "private",
        () if a == 100 && (64..128).contains(&b) => "shared (CGNAT)",
        () if ip.is_unspecified() || a == 0 => "unspecified",
        () if ip.is_multicast() => "multicast",
        () if ip.is_broadcast() || a >= 240 => "reserved",
        () if a == 192 && b == 0 && ip.octets()[2] == 0 => "IETF protocol",
        () if a == 198 && (b == 18 || b == 19) => "benchmarking",
        _ => return None,
    })
}

fn class_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    Some(match () {
        () if ip.is_loopback() => "loopback",
        () if ip.is_unspecified() => "unspecified",
        () if first & 0xffc0 == 0xfe80 => "link-local",
        () if first & 0xfe00 == 0xfc00 => "unique-local",
        () if first & 0xffc0 == 0xfec0 => "site-local",
        () if ip.is_multicast() => "multicast",
        // IPv4-compatible (deprecated) and 6to4 addresses embed an IPv4 address anywhere.
        () if ip.segments()[..6] == [0; 6] => "IPv4-compatible",
        () if first == 0x2002 => "6to4",
        _ => return None,
    })
}

/// The HTTP client's resolver: the system's (getaddrinfo, as reqwest's default), then only the
/// addresses the policy allows. A name that resolves only to denied ones fails with [`Denied`].
pub struct Resolver {
    pub egress: Arc<Egress>,
}

impl Resolve for Resolver {
    fn resolve(&self, name: Name) -> Resolving {
        let egress = self.egress.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut denied = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match egress.check(&host, a.ip()) {
                    Ok(()) => true,
                    Err(d) => {
                        denied.get_or_insert(d);
                        false
                    }
                })
                .collect();
            match (allowed.is_empty(), denied) {
                (true, Some(denied)) => Err(Box::new(denied) as Box<dyn std::error::Error + Send + Sync>),
                _ => Ok(Box::new(allowed.into_iter()) as Addrs),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    #[test]
    fn denies_internal_ranges_and_allows_public_ones() {
        let policy = Egress::default();
        for (addr, class) in [
            ("127.0.0.1", "loopback"),
            ("127.8.9.10", "loopback"),
            ("169.254.169.254", "link-local"),
            ("10.96.0.1", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "shared (CGNAT)"),
            ("100.127.255.255", "shared (CGNAT)"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "reserved"),
            ("240.0.0.1", "reserved"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fe80::1", "link-local"),
            ("fd00:ec2::254", "unique-local"),
            ("fc00::1", "unique-local"),
            ("ff02::1", "multicast"),
            // IPv4 inside IPv6 is judged as the IPv4 address.
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
            ("::a9fe:a9fe", "IPv4-compatible"),
            ("2002:a9fe:a9fe::1", "6to4"),
        ] {
            assert_eq!(policy.check("h", ip(addr)).map_err(|d| d.class), Err(class), "{addr}");
        }
        for addr in [
            "93.184.216.34",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.32.0.1",
            "2606:4700::1111",
        ] {
            assert_eq!(policy.check("h", ip(addr)), Ok(()), "{addr}");
        }
    }

    #[test]
    fn allow_lists_open_ranges_and_hosts() -> Result<(), ipnet::AddrParseError> {
        let policy = Egress::new(
            vec!["10.1.0.0/16".parse()?, "fd00::/8".parse()?],
            vec!["Files.Streamscan.svc.".into()],
        );
        assert_eq!(policy.check("h", ip("10.1.2.3")), Ok(()));
        assert_eq!(policy.check("h", ip("::ffff:10.1.2.3")), Ok(()));
        assert!(policy.check("h", ip("10.2.0.1")).is_err());
        assert_eq!(policy.check("h", ip("fd00::1")), Ok(()));
        assert_eq!(policy.check("files.streamscan.svc", ip("10.2.0.1")), Ok(()));
        assert_eq!(policy.check("FILES.streamscan.svc", ip("127.0.0.1")), Ok(()));
        assert!(policy.check("other.svc", ip("127.0.0.1")).is_err());
        let message = policy.check("h", ip("169.254.169.254")).err().map(|d| d.to_string());
        assert!(
            message.is_some_and(|m| m.contains("169.254.169.254 is a link-local address") && m.contains("allowCidrs"))
        );
        Ok(())
    }

    #[tokio::test]
    async fn the_resolver_drops_denied_addresses() {
        let resolver = Resolver {
            egress: Arc::new(Egress::default()),
        };
        let name: Result<Name, _> = "localhost".parse();
        let Ok(name) = name else {
            panic!("localhost is a valid name");
        };
        let err = resolver.resolve(name).await.err().map(|e| e.to_string());
        assert!(
            err.is_some_and(|e| e.contains("loopback")),
            "localhost resolved to an allowed address"
        );
        let allowed = Resolver {
            egress: Arc::new(Egress::new(vec![], vec!["localhost".into()])),
        };
        let Ok(name) = "localhost".parse::<Name>() else {
            panic!("localhost is a valid name");
        };
        assert!(allowed.resolve(name).await.is_ok_and(|mut a| a.next().is_some()));
    }
}
