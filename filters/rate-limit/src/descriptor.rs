//! Descriptors: the request values a limit counts by (a client address, an API key, a tenant),
//! and how each is read from the request. A value that cannot be read means the limit does not
//! apply to the request, as an Envoy rate limit action that cannot produce its descriptor entry.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use gatewasm::HeaderSnapshot;

/// One descriptor entry of a limit: its key (the entry's name in global mode's descriptors) and
/// where its value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// The entry's key (`remote_address`, `api_key`, ...).
    pub key: String,
    /// Where the value comes from.
    pub source: Source,
}

/// Where a descriptor's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The client's address.
    ClientAddress(ClientAddress),
    /// The request's host, lower-cased, without port.
    Host,
    /// The matched rule's path condition as written (`/api/`, `/users/{id}`): one counter per
    /// rule rather than per path.
    RulePath(String),
    /// The method.
    Method,
    /// The first value of a request header (lower-case name).
    Header(String),
    /// A request header jwt-auth sets from a verified token's claim (`claim_to_headers`), read
    /// like a header: jwt-auth removes client copies, so with jwt-auth earlier in the chain the
    /// value is the claim's.
    JwtClaimHeader(String),
    /// A fixed value.
    Constant(String),
}

/// Which address is the client's, and how much of it counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress {
    /// `None`: the downstream address Envoy gives (`source.address`: the peer, or the address
    /// Envoy's own `xff_num_trusted_hops` picked). `Some(n)`: the n-th `x-forwarded-for` entry
    /// from the right, where the proxies in front write; never the left end, which the client
    /// writes itself.
    pub xff_hop: Option<u32>,
    /// Leading bits of an IPv4 address that count (32: the whole address).
    pub ipv4_prefix: u8,
    /// Leading bits of an IPv6 address that count (64: one counter per /64, what one client
    /// usually gets).
    pub ipv6_prefix: u8,
}

impl Default for ClientAddress {
    fn default() -> Self {
        Self { xff_hop: None, ipv4_prefix: 32, ipv6_prefix: 128 }
    }
}

/// The request as descriptors read it.
pub struct RequestValues<'a> {
    /// Every request header.
    pub headers: &'a HeaderSnapshot,
    /// The normalized host, `None` when it cannot be read.
    pub host: Option<&'a str>,
    /// The method.
    pub method: &'a str,
}

impl Source {
    /// The value for this request; `None` when there is none (the limit then does not apply).
    /// `remote` reads the downstream address (a host call), at most once per request.
    pub fn value<'a>(
        &'a self,
        request: &RequestValues<'a>,
        remote: &mut dyn FnMut() -> Option<String>,
    ) -> Option<Cow<'a, [u8]>> {
        match self {
            Source::ClientAddress(c) => c.value(request.headers, remote).map(|a| Cow::Owned(a.into_bytes())),
            Source::Host => request.host.map(|h| Cow::Borrowed(h.as_bytes())),
            Source::RulePath(p) => Some(Cow::Borrowed(p.as_bytes())),
            Source::Method => Some(Cow::Borrowed(request.method.as_bytes())).filter(|m| !m.is_empty()),
            Source::Header(name) | Source::JwtClaimHeader(name) => {
                first_value(request.headers, name).map(Cow::Borrowed)
            }
            Source::Constant(c) => Some(Cow::Borrowed(c.as_bytes())),
        }
    }

    /// Whether reading the value needs the downstream address (a host call).
    pub fn reads_remote(&self) -> bool {
        matches!(self, Source::ClientAddress(_))
    }

    /// How the value is read, in the counter's identity: a change of source (another header)
    /// makes a new counter.
    pub fn identity(&self) -> String {
        match self {
            Source::ClientAddress(c) => {
                format!("client_address/{:?}/{}/{}", c.xff_hop, c.ipv4_prefix, c.ipv6_prefix)
            }
            Source::Host => "host".into(),
            Source::RulePath(_) => "path".into(),
            Source::Method => "method".into(),
            Source::Header(h) => format!("header/{h}"),
            Source::JwtClaimHeader(h) => format!("jwt_claim_header/{h}"),
            Source::Constant(_) => "constant".into(),
        }
    }
}

/// The first value of header `name`, as the client's bytes.
fn first_value<'h>(headers: &'h HeaderSnapshot, name: &str) -> Option<&'h [u8]> {
    headers.iter_bytes().find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes())).map(|(_, v)| v)
}

impl ClientAddress {
    /// The client's address with the configured prefix applied (`203.0.113.7`, `2001:db8::/64`).
    /// The n-th `x-forwarded-for` entry from the right when there are that many and it is an
    /// address (the request then came through the proxies that write it); otherwise, and
    /// without `xff_hop`, the downstream address.
    pub fn value(
        &self,
        headers: &HeaderSnapshot,
        remote: &mut dyn FnMut() -> Option<String>,
    ) -> Option<String> {
        if let Some(hop) = self.xff_hop {
            if let Some(ip) = xff_entry(headers, hop).as_deref().and_then(parse_address) {
                return Some(self.masked(ip));
            }
        }
        let remote = remote()?;
        Some(match parse_address(&remote) {
            Some(ip) => self.masked(ip),
            // Not an IP (a Unix socket's path): counted as it is.
            None => remote,
        })
    }

    fn masked(&self, ip: IpAddr) -> String {
        match ip {
            IpAddr::V4(v4) if self.ipv4_prefix < 32 => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.ipv4_prefix)).unwrap_or(0);
                format!("{}/{}", Ipv4Addr::from(u32::from(v4) & mask), self.ipv4_prefix)
            }
            IpAddr::V6(v6) if self.ipv6_prefix < 128 => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.ipv6_prefix)).unwrap_or(0);
                format!("{}/{}", Ipv6Addr::from(u128::from(v6) & mask), self.ipv6_prefix)
            }
            // An IPv4-mapped IPv6 address is the IPv4 client it maps.
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => self.masked(IpAddr::V4(v4)),
                None => v6.to_string(),
            },
            IpAddr::V4(v4) => v4.to_string(),
        }
    }
}

/// The `hop`-th `x-forwarded-for` entry from the right (1: the last), over every
/// `x-forwarded-for` header in order; `None` when there are fewer entries.
fn xff_entry(headers: &HeaderSnapshot, hop: u32) -> Option<String> {
    let mut entries: Vec<&str> = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        entries.extend(value.split(',').map(str::trim));
    }
    let from_left = entries.len().checked_sub(usize::try_from(hop).ok()?)?;
    entries.get(from_left).map(|e| (*e).to_string())
}

/// An address as Envoy or a proxy writes it: `1.2.3.4`, `1.2.3.4:5678`, `::1`, `[::1]:5678`.
fn parse_address(text: &str) -> Option<IpAddr> {
    text.parse::<IpAddr>().ok().or_else(|| text.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn client(xff_hop: Option<u32>, v4: u8, v6: u8) -> ClientAddress {
        ClientAddress { xff_hop, ipv4_prefix: v4, ipv6_prefix: v6 }
    }

    fn address(c: ClientAddress, xff: &[&str], remote: Option<&str>) -> Option<String> {
        let pairs: Vec<(&str, &str)> = xff.iter().map(|v| ("x-forwarded-for", *v)).collect();
        let headers = HeaderSnapshot::from_strs(&pairs);
        let mut reads = 0;
        let value = c.value(&headers, &mut || {
            reads += 1;
            remote.map(str::to_string)
        });
        assert!(reads <= 1);
        value
    }

    #[test]
    fn the_downstream_address_without_its_port() {
        let c = ClientAddress::default();
        assert_eq!(address(c, &[], Some("203.0.113.7:51234")).as_deref(), Some("203.0.113.7"));
        assert_eq!(address(c, &[], Some("[2001:db8::1]:443")).as_deref(), Some("2001:db8::1"));
        assert_eq!(
            address(c, &["1.1.1.1"], Some("10.0.0.1:1")).as_deref(),
            Some("10.0.0.1"),
            "no xff_hop: XFF unread"
        );
        assert_eq!(address(c, &[], Some("[::ffff:192.0.2.9]:80")).as_deref(), Some("192.0.2.9"));
        assert_eq!(address(c, &[], Some("/run/envoy.sock")).as_deref(), Some("/run/envoy.sock"));
        assert_eq!(address(c, &[], None), None, "no address: the limit does not apply");
    }

    #[test]
    fn the_nth_forwarded_entry_from_the_right_never_the_clients_own() {
        let one = client(Some(1), 32, 128);
        let two = client(Some(2), 32, 128);
        // The client wrote 6.6.6.6 itself; the load balancer appended the client's real address.
        let xff = ["6.6.6.6, 198.51.100.4"];
        assert_eq!(address(one, &xff, Some("10.0.0.2:1")).as_deref(), Some("198.51.100.4"));
        assert_eq!(address(two, &xff, Some("10.0.0.2:1")).as_deref(), Some("6.6.6.6"));
        // Entries over several headers, in order.
        let split = ["6.6.6.6", "198.51.100.4,10.1.1.1"];
        assert_eq!(address(two, &split, Some("10.0.0.2:1")).as_deref(), Some("198.51.100.4"));
        // Too few entries, or an entry that is not an address: the downstream address.
        assert_eq!(address(two, &["198.51.100.4"], Some("10.0.0.2:1")).as_deref(), Some("10.0.0.2"));
        assert_eq!(address(one, &["unknown"], Some("10.0.0.2:1")).as_deref(), Some("10.0.0.2"));
        assert_eq!(address(one, &[], Some("10.0.0.2:1")).as_deref(), Some("10.0.0.2"));
        assert_eq!(address(one, &["[2001:db8::5]:4711"], None).as_deref(), Some("2001:db8::5"));
    }

    #[test]
    fn prefixes_count_a_network_as_one_client() {
        let c = client(None, 24, 64);
        assert_eq!(address(c, &[], Some("203.0.113.77:1")).as_deref(), Some("203.0.113.0/24"));
        assert_eq!(address(c, &[], Some("[2001:db8:1:2:3:4:5:6]:1")).as_deref(), Some("2001:db8:1:2::/64"));
        let all = client(None, 0, 0);
        assert_eq!(address(all, &[], Some("203.0.113.77:1")).as_deref(), Some("0.0.0.0/0"));
        assert_eq!(address(all, &[], Some("[::1]:1")).as_deref(), Some("::/0"));
    }

    #[test]
    fn values_and_missing_values() {
        let headers = HeaderSnapshot::from_pairs(vec![
            (b"x-api-key".to_vec(), b"k\xff1".to_vec()),
            (b"x-api-key".to_vec(), b"second".to_vec()),
            (b"x-empty".to_vec(), Vec::new()),
        ]);
        let request = RequestValues { headers: &headers, host: None, method: "GET" };
        let mut remote = || None;
        let value = |s: Source, remote: &mut dyn FnMut() -> Option<String>| {
            s.value(&request, remote).map(|v| v.into_owned())
        };
        assert_eq!(
            value(Source::Header("x-api-key".into()), &mut remote),
            Some(b"k\xff1".to_vec()),
            "raw bytes, first value"
        );
        assert_eq!(value(Source::Header("x-empty".into()), &mut remote), Some(Vec::new()), "present, empty");
        assert_eq!(value(Source::JwtClaimHeader("x-tenant".into()), &mut remote), None);
        assert_eq!(value(Source::Host, &mut remote), None, "a host that cannot be read");
        assert_eq!(value(Source::Method, &mut remote), Some(b"GET".to_vec()));
        assert_eq!(value(Source::RulePath("/api/".into()), &mut remote), Some(b"/api/".to_vec()));
        assert_eq!(value(Source::Constant("login".into()), &mut remote), Some(b"login".to_vec()));
        assert_eq!(value(Source::ClientAddress(ClientAddress::default()), &mut remote), None);
        assert!(Source::ClientAddress(ClientAddress::default()).reads_remote());
        assert!(!Source::Host.reads_remote());
    }
}
