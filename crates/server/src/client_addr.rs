//! Who is calling: the client address that anonymous rate limits are keyed
//! by.
//!
//! The TCP peer is the client unless it is one of the operator's
//! `--trusted-proxies`. Only then is the one header the operator named with
//! `--forwarded-header` read (`X-Forwarded-For` by default, `Forwarded`
//! (RFC 7239) or `X-Real-IP`), from the right: each hop appends the address
//! it received from, so the rightmost address that is not a trusted proxy is
//! the first one no trusted proxy can vouch for — the client. Anything a
//! client writes further left, and every other forwarding header (which the
//! proxy may pass through untouched), is ignored, so a client cannot choose
//! its own bucket.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;

use crate::AppState;

/// An address block, `ADDR/PREFIX` or a bare address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let network = IpAddr::from_str(addr).map_err(|_| format!("{s:?} is not an IP address or CIDR block"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Self { network, prefix })
    }
}

impl Cidr {
    /// Whether `ip` is inside the block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let masked = |bits: u128, width: u32| -> u128 {
            if self.prefix == 0 { 0 } else { bits >> (width - u32::from(self.prefix)) }
        };
        match (self.network, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => masked(u32::from(n).into(), 32) == masked(u32::from(a).into(), 32),
            (IpAddr::V6(n), IpAddr::V6(a)) => masked(u128::from(n), 128) == masked(u128::from(a), 128),
            _ => false,
        }
    }
}

/// The header a trusted proxy writes the client's address into.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For` (nginx `$proxy_add_x_forwarded_for`, HAProxy
    /// `option forwardfor`).
    #[default]
    XForwardedFor,
    /// `Forwarded: for=…` (RFC 7239).
    Forwarded,
    /// `X-Real-IP` (one address, set by the proxy).
    XRealIp,
}

impl FromStr for ForwardedHeader {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "x-forwarded-for" => Ok(Self::XForwardedFor),
            "forwarded" => Ok(Self::Forwarded),
            "x-real-ip" => Ok(Self::XRealIp),
            other => Err(format!("{other:?} is not x-forwarded-for, forwarded or x-real-ip")),
        }
    }
}

/// The proxies whose forwarding header is believed, and which header that
/// is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    blocks: Vec<Cidr>,
    header: ForwardedHeader,
}

impl TrustedProxies {
    /// Parses `CIDR,CIDR,…` (empty: none), reading `X-Forwarded-For`.
    pub fn parse(list: &str) -> Result<Self, String> {
        let blocks = list.split(',').filter(|s| !s.trim().is_empty()).map(Cidr::from_str).collect::<Result<_, _>>()?;
        Ok(Self { blocks, header: ForwardedHeader::default() })
    }

    /// The same proxies, read through `header`.
    pub fn with_header(self, header: ForwardedHeader) -> Self {
        Self { header, ..self }
    }

    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.blocks.iter().any(|c| c.contains(canonical(ip)))
    }

    /// True when no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }
}

/// An IPv4-mapped IPv6 address as IPv4; everything else as is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Most forwarded hops read from the headers.
const MAX_HOPS: usize = 32;

/// The client address of a request from `peer`.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    let peer = canonical(peer);
    if !trusted.contains(peer) {
        return peer;
    }
    let hops = match trusted.header {
        ForwardedHeader::XForwardedFor => x_forwarded_for(headers),
        ForwardedHeader::Forwarded => forwarded_for(headers),
        ForwardedHeader::XRealIp => x_real_ip(headers),
    };
    let mut client = peer;
    for hop in hops.into_iter().rev().take(MAX_HOPS) {
        // A hop that does not parse cannot be vouched for: the last trusted
        // hop's own address is the best answer.
        let Some(ip) = hop.map(canonical) else { break };
        client = ip;
        if !trusted.contains(ip) {
            break;
        }
    }
    client
}

/// The addresses of `X-Forwarded-For` (every instance, in order).
fn x_forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("").split(','))
        .map(|s| parse_node(s.trim()))
        .collect()
}

/// The address of the last `X-Real-IP` (a proxy sets it, replacing any the
/// client sent).
fn x_real_ip(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    headers
        .get_all("x-real-ip")
        .iter()
        .next_back()
        .map(|v| parse_node(v.to_str().unwrap_or("").trim()))
        .into_iter()
        .collect()
}

/// The `for=` addresses of `Forwarded` (RFC 7239, every instance, in order).
fn forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    headers
        .get_all("forwarded")
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("").split(','))
        .map(|element| {
            element.split(';').find_map(|pair| {
                let (name, value) = pair.trim().split_once('=')?;
                name.trim().eq_ignore_ascii_case("for").then(|| parse_node(value.trim().trim_matches('"')))?
            })
        })
        .collect()
}

/// `1.2.3.4`, `1.2.3.4:80`, `[2001:db8::1]`, `[2001:db8::1]:80` or a bare
/// IPv6 address; `unknown` and obfuscated identifiers are `None`.
fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = IpAddr::from_str(s) {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return IpAddr::from_str(rest.split(']').next()?).ok();
    }
    SocketAddr::from_str(s).ok().map(|a| a.ip())
}

/// The rate-limit bucket of the calling client (see
/// [`blindpass_service::client_bucket`]); `unknown` when the request did not
/// come through a socket (router tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAddr(pub String);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        // Admission found it already (the same rule, once per request).
        if let Some(client) = parts.extensions.get::<ClientAddr>() {
            return Ok(client.clone());
        }
        let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() else {
            return Ok(Self("unknown".into()));
        };
        let ip = client_address(peer.ip(), &parts.headers, &state.trusted_proxies);
        Ok(Self(blindpass_service::client_bucket(ip)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_and_match() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.1.2.3")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.0.0.1")), "IPv4-mapped");
        let c: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(c.contains(ip("2001:db8:1::1")));
        assert!(!c.contains(ip("2001:db9::1")));
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("8.8.8.8")));
        assert!("127.0.0.1".parse::<Cidr>().unwrap().contains(ip("127.0.0.1")));
        for bad in ["10.0.0.0/33", "nonsense", "::/129", "1.2.3.4/x"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert_eq!(TrustedProxies::parse("").unwrap(), TrustedProxies::default());
        assert!(TrustedProxies::parse("10.0.0.0/8, ::1").unwrap().contains(ip("::1")));
    }

    #[test]
    fn an_untrusted_peer_cannot_spoof_its_address() {
        let trusted = TrustedProxies::parse("10.0.0.1").unwrap();
        let h = headers(&[("x-forwarded-for", "1.1.1.1"), ("forwarded", "for=2.2.2.2")]);
        assert_eq!(client_address(ip("127.0.0.9"), &h, &trusted), ip("127.0.0.9"));
    }

    #[test]
    fn a_trusted_proxy_is_read_from_the_right() {
        let trusted = TrustedProxies::parse("10.0.0.0/8").unwrap();
        // The client wrote "6.6.6.6" itself; the proxy appended the real one.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.7")]);
        assert_eq!(client_address(ip("10.0.0.1"), &h, &trusted), ip("203.0.113.7"));
        // Two trusted hops.
        let h = headers(&[("x-forwarded-for", "203.0.113.7, 10.0.0.2")]);
        assert_eq!(client_address(ip("10.0.0.1"), &h, &trusted), ip("203.0.113.7"));
        // Several header instances are one list.
        let h = headers(&[("x-forwarded-for", "6.6.6.6"), ("x-forwarded-for", "203.0.113.8")]);
        assert_eq!(client_address(ip("10.0.0.1"), &h, &trusted), ip("203.0.113.8"));
        // Only the named header is read: a Forwarded the client wrote and
        // the proxy passed through is ignored.
        let h = headers(&[("x-forwarded-for", "203.0.113.7"), ("forwarded", "for=6.6.6.6")]);
        assert_eq!(client_address(ip("10.0.0.1"), &h, &trusted), ip("203.0.113.7"));
        let h = headers(&[("forwarded", "for=6.6.6.6")]);
        assert_eq!(client_address(ip("10.0.0.1"), &h, &trusted), ip("10.0.0.1"), "no X-Forwarded-For: the proxy");
        // Forwarded, when named, with quoted IPv6 and ports.
        let forwarded = trusted.clone().with_header(ForwardedHeader::Forwarded);
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6, for=\"[2001:db8:cafe::17]:4711\";proto=https"),
        ]);
        assert_eq!(client_address(ip("10.0.0.1"), &h, &forwarded), ip("2001:db8:cafe::17"));
        // X-Real-IP, when named: the last one (the proxy's).
        let real = trusted.clone().with_header(ForwardedHeader::XRealIp);
        let h = headers(&[("x-real-ip", "6.6.6.6"), ("x-real-ip", "203.0.113.9"), ("x-forwarded-for", "6.6.6.7")]);
        assert_eq!(client_address(ip("10.0.0.1"), &h, &real), ip("203.0.113.9"));
        assert_eq!("X-Real-IP".parse::<ForwardedHeader>(), Ok(ForwardedHeader::XRealIp));
        assert!("via".parse::<ForwardedHeader>().is_err());
        // Garbage stops the walk at the last trusted hop.
        let h = headers(&[("x-forwarded-for", "203.0.113.7, garbage")]);
        assert_eq!(client_address(ip("10.0.0.1"), &h, &trusted), ip("10.0.0.1"));
        let h = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(client_address(ip("10.0.0.1"), &h, &forwarded), ip("10.0.0.1"));
        // No header: the proxy itself.
        assert_eq!(client_address(ip("10.0.0.1"), &HeaderMap::new(), &trusted), ip("10.0.0.1"));
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        let a = blindpass_service::client_bucket(ip("2001:db8:1:2:aaaa::1"));
        let b = blindpass_service::client_bucket(ip("2001:db8:1:2:bbbb::2"));
        let c = blindpass_service::client_bucket(ip("2001:db8:1:3::1"));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(blindpass_service::client_bucket(ip("::ffff:127.0.0.2")), "127.0.0.2");
    }
}
