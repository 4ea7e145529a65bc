//! Assembling pingora's [`Server`] from a validated [`Config`].

use std::net::SocketAddr;
use std::sync::Arc;

use pingora::server::configuration::Opt;
use pingora::server::Server;
use pingora::services::background::background_service;

use crate::config::Config;
use crate::health::{self, HealthService};
use crate::proxy::LbProxy;
use crate::selection::Balancer;

/// Why the server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: SocketAddr, reason: String },
}

/// Builds the server: the health-check service, and the proxy service that starts only after
/// the first round of checks has decided which upstreams are up.
///
/// `opt` carries pingora's command-line flags (`-u`, `-d`); its config path is not used, the
/// file having been read into `config` already.
pub fn build(mut opt: Opt, config: Config) -> Server {
    opt.conf = None;
    let Config { server: conf, lb } = config;
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();

    let check = health::build_check(&lb.health_check);
    let balancer = Arc::new(Balancer::new(lb.selection, &lb.upstreams, check));

    let health = background_service(
        "health checks",
        HealthService::new(balancer.clone(), &lb.health_check),
    );
    let health = server.add_service(health);

    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        LbProxy::new(balancer, &lb),
        "lb proxy",
    );
    for addr in &lb.listen {
        proxy.add_tcp(&addr.to_string());
    }
    let proxy = server.add_service(proxy);
    proxy.add_dependency(&health);
    server
}

/// Checks that every address can be bound now, so that a taken or privileged port is reported
/// clearly before the server starts (pingora binds later, in a service thread).
pub fn check_listen(addrs: &[SocketAddr]) -> Result<(), StartError> {
    for &addr in addrs {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            let reason = match e.kind() {
                std::io::ErrorKind::AddrInUse => "the address is already in use".to_string(),
                std::io::ErrorKind::PermissionDenied => format!(
                    "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE; \
                     try a port such as {})",
                    8000 + addr.port() % 1000
                ),
                std::io::ErrorKind::AddrNotAvailable => {
                    "no interface on this machine has that address".to_string()
                }
                _ => e.to_string(),
            };
            return Err(StartError::Listen { addr, reason });
        }
    }
    Ok(())
}
