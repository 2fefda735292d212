//! TCP grants and the SSRF guard shared by TCP and HTTP.
//!
//! A grant names `host:port`. At the start of each invocation every grant is resolved once and
//! the guest may connect to exactly the resulting addresses (so DNS cannot change under it).
//! Loopback, private, link-local, shared, unspecified and cloud metadata addresses are only
//! reachable when the grant names the address literally (or `localhost` for loopback): a name
//! that happens to resolve into one of those ranges is refused, with a note saying why.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Where an address points, for the SSRF guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    Public,
    Loopback,
    Private,
    LinkLocal,
    /// 169.254.169.254, fd00:ec2::254 and friends: cloud instance metadata.
    Metadata,
    /// 0.0.0.0, ::, multicast, broadcast, documentation and other reserved ranges.
    Reserved,
}

impl AddressClass {
    pub fn describe(self) -> &'static str {
        match self {
            AddressClass::Public => "a public address",
            AddressClass::Loopback => "a loopback address",
            AddressClass::Private => "a private address",
            AddressClass::LinkLocal => "a link-local address",
            AddressClass::Metadata => "a cloud metadata address",
            AddressClass::Reserved => "a reserved address",
        }
    }
}

pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return classify_v4(v4);
            }
            let seg = v6.segments();
            if v6 == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x254) {
                AddressClass::Metadata
            } else if v6.is_loopback() {
                AddressClass::Loopback
            } else if v6.is_unspecified()
                || v6.is_multicast()
                || seg[0] == 0x2001 && seg[1] == 0xdb8
            {
                AddressClass::Reserved
            } else if seg[0] & 0xffc0 == 0xfe80 {
                AddressClass::LinkLocal
            } else if seg[0] & 0xfe00 == 0xfc00 {
                AddressClass::Private
            } else {
                AddressClass::Public
            }
        }
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    let o = ip.octets();
    if o == [169, 254, 169, 254] || o == [100, 100, 100, 200] {
        AddressClass::Metadata
    } else if ip.is_loopback() {
        AddressClass::Loopback
    } else if ip.is_link_local() {
        AddressClass::LinkLocal
    } else if ip.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64) {
        AddressClass::Private
    } else if ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0
        || o[0] >= 240
    {
        AddressClass::Reserved
    } else {
        AddressClass::Public
    }
}

pub use tend_manifest::grant::TcpGrant;

/// Resolve `host` for a grant and keep the addresses the SSRF guard lets through. Returns the
/// allowed addresses and a note for each one refused.
pub async fn resolve_guarded(host: &str, port: u16) -> (Vec<SocketAddr>, Vec<String>) {
    if let Ok(ip) = host.parse::<IpAddr>() {
        // Named literally: the operator meant exactly this address.
        return (vec![SocketAddr::new(ip, port)], Vec::new());
    }
    if host == "localhost" {
        return (
            vec![
                SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port),
                SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port),
            ],
            Vec::new(),
        );
    }
    let mut allowed = Vec::new();
    let mut notes = Vec::new();
    match tokio::net::lookup_host((host, port)).await {
        Ok(addrs) => {
            for addr in addrs {
                match classify(addr.ip()) {
                    AddressClass::Public => allowed.push(addr),
                    class => notes.push(format!(
                        "{host}:{port} resolved to {}, {}; refused (name the address literally in the grant to allow it)",
                        addr.ip(),
                        class.describe()
                    )),
                }
            }
        }
        Err(e) => notes.push(format!("{host}:{port} did not resolve: {e}")),
    }
    (allowed, notes)
}

/// The exact socket addresses one invocation may connect to.
#[derive(Debug, Clone, Default)]
pub struct TcpPolicy {
    pub allowed: HashSet<SocketAddr>,
    pub uses_names: bool,
    /// The host names the grants name (lower-case): the only names a guest may look up.
    pub names: HashSet<String>,
}

impl TcpPolicy {
    pub async fn resolve(grants: &[String], notes: &mut Vec<String>) -> TcpPolicy {
        let mut policy = TcpPolicy::default();
        for g in grants {
            let Ok(grant) = TcpGrant::parse(g) else {
                continue;
            };
            if grant.host.parse::<IpAddr>().is_err() {
                policy.uses_names = true;
                policy.names.insert(grant.host.clone());
            }
            let (addrs, mut n) = resolve_guarded(&grant.host, grant.port).await;
            policy.allowed.extend(addrs);
            notes.append(&mut n);
        }
        policy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        let c = |s: &str| classify(s.parse().expect("ip"));
        assert_eq!(c("8.8.8.8"), AddressClass::Public);
        assert_eq!(c("127.0.0.1"), AddressClass::Loopback);
        assert_eq!(c("127.9.9.9"), AddressClass::Loopback);
        assert_eq!(c("10.1.2.3"), AddressClass::Private);
        assert_eq!(c("172.16.0.1"), AddressClass::Private);
        assert_eq!(c("192.168.1.1"), AddressClass::Private);
        assert_eq!(c("100.64.0.1"), AddressClass::Private);
        assert_eq!(c("169.254.169.254"), AddressClass::Metadata);
        assert_eq!(c("169.254.1.1"), AddressClass::LinkLocal);
        assert_eq!(c("0.0.0.0"), AddressClass::Reserved);
        assert_eq!(c("::1"), AddressClass::Loopback);
        assert_eq!(c("::ffff:127.0.0.1"), AddressClass::Loopback);
        assert_eq!(c("::ffff:169.254.169.254"), AddressClass::Metadata);
        assert_eq!(c("fd00:ec2::254"), AddressClass::Metadata);
        assert_eq!(c("fe80::1"), AddressClass::LinkLocal);
        assert_eq!(c("fd12::1"), AddressClass::Private);
        assert_eq!(c("2606:4700::1111"), AddressClass::Public);
    }

    #[test]
    fn grant_syntax() {
        assert_eq!(
            TcpGrant::parse("DB.example:5432"),
            Ok(TcpGrant {
                host: "db.example".into(),
                port: 5432
            })
        );
        assert_eq!(
            TcpGrant::parse("[::1]:80").map(|g| g.host),
            Ok("::1".into())
        );
        assert!(TcpGrant::parse("db.example").is_err());
        assert!(TcpGrant::parse("db:0").is_err());
        assert!(TcpGrant::parse(":80").is_err());
    }

    #[tokio::test]
    async fn names_resolving_to_loopback_are_refused_literals_are_not() {
        let (ok, notes) = resolve_guarded("127.0.0.1", 80).await;
        assert_eq!(ok.len(), 1);
        assert!(notes.is_empty());
        let (ok, notes) = resolve_guarded("localhost", 80).await;
        assert_eq!(ok.len(), 2, "{notes:?}");
        // `ip6-localhost` resolves to ::1 through /etc/hosts on Debian; a name, not a literal.
        let (ok, notes) = resolve_guarded("ip6-localhost", 80).await;
        assert!(ok.is_empty());
        assert!(
            notes
                .iter()
                .all(|n| n.contains("refused") || n.contains("did not resolve")),
            "{notes:?}"
        );
    }
}
