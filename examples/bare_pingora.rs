//! The floor under lb's figures: the smallest pingora round-robin proxy (no lb hooks, metrics,
//! retries or forwarding headers), for measuring what pingora itself costs on this machine.
//!
//! `cargo run --release --example bare_pingora -- LISTEN UPSTREAM...`, e.g.
//! `cargo run --release --example bare_pingora -- 127.0.0.1:18090 127.0.0.1:18081 127.0.0.1:18082`
//! (one worker thread, pingora's default buffers).

use std::sync::Arc;

use async_trait::async_trait;
use pingora::lb::{selection::RoundRobin, LoadBalancer};
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

struct Bare(Arc<LoadBalancer<RoundRobin>>);

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let upstream = self
            .0
            .select(b"", 256)
            .ok_or_else(|| Error::new(ErrorType::ConnectNoRoute))?;
        Ok(Box::new(HttpPeer::new(upstream, false, String::new())))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(listen), upstreams) = (args.first(), args.get(1..).unwrap_or_default()) else {
        eprintln!("usage: bare_pingora LISTEN UPSTREAM...");
        std::process::exit(2);
    };
    let Ok(balancer) = LoadBalancer::try_from_iter(upstreams) else {
        eprintln!("bad upstream address in {upstreams:?}");
        std::process::exit(2);
    };
    let conf = ServerConf {
        threads: 1,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    let mut proxy =
        pingora::proxy::http_proxy_service(&server.configuration, Bare(Arc::new(balancer)));
    proxy.add_tcp(listen);
    server.add_service(proxy);
    server.run_forever();
}
