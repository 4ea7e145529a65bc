//! How lb connects to an upstream of a pool: pingora's peer, by the pool's `protocol`
//! and `upstream_tls`. Shared by the request path and the active health checks, so that a check
//! speaks to an upstream as requests do.

use pingora::protocols::ALPN;
use pingora::upstreams::peer::HttpPeer;

use crate::config::{PoolConfig, Upstream, UpstreamProtocol};

/// The peer for one attempt on `upstream` of a pool: its timeouts and, by the pool's
/// `protocol`, TLS (server name, certificate checks, CA) and HTTP/2.
pub(crate) fn upstream_peer(pool: &PoolConfig, upstream: &Upstream) -> HttpPeer {
    let protocol = pool.protocol;
    let tls = &pool.upstream_tls;
    let sni = if protocol.tls() {
        tls.server_name(upstream).to_string()
    } else {
        String::new()
    };
    let mut peer = HttpPeer::new(upstream.addr, protocol.tls(), sni);
    let timeouts = &pool.timeouts;
    let options = &mut peer.options;
    options.connection_timeout = Some(timeouts.connect);
    options.total_connection_timeout = Some(timeouts.connect);
    options.read_timeout = Some(timeouts.read);
    options.write_timeout = Some(timeouts.write);
    options.idle_timeout = Some(timeouts.idle);
    match protocol {
        UpstreamProtocol::Http1 => {}
        UpstreamProtocol::Https => options.alpn = ALPN::H1,
        // Without TLS there is no negotiation: h2 only means HTTP/2 with prior knowledge.
        UpstreamProtocol::H2c => options.alpn = ALPN::H2,
        UpstreamProtocol::HttpsH2 => options.alpn = ALPN::H2H1,
    }
    if matches!(protocol, UpstreamProtocol::H2c | UpstreamProtocol::HttpsH2) {
        // Requests share an upstream connection as concurrent streams.
        options.max_h2_streams = H2_STREAMS_PER_UPSTREAM_CONNECTION;
    }
    if protocol.tls() {
        options.verify_cert = tls.verify;
        options.verify_hostname = tls.verify;
        options.ca = tls.ca.as_ref().map(|ca| ca.certs.clone());
    }
    // pingora's connection reuse tells peers apart by address, scheme, server name and
    // verification, not by ALPN or CA: the group key keeps a connection made for one protocol,
    // or checked against one CA (before a reload changed `ca_file`), from serving another.
    peer.group_key = ((protocol as u64) << 56) ^ tls.ca.as_ref().map_or(0, |ca| ca.fingerprint());
    peer
}

/// Streams lb opens at once on one HTTP/2 upstream connection (fewer if the upstream says so).
const H2_STREAMS_PER_UPSTREAM_CONNECTION: usize = 100;
