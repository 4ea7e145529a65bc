//! Assembling pingora's [`Server`] from a validated [`Config`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::Opt;
use pingora::server::{RunArgs, Server};
use pingora::services::background::{background_service, GenBackgroundService};
use pingora::services::listening::Service;

use super::discovery::DiscoveryService;
use super::handover::{HandoverService, ListenerTable, SavedStateUse, Signals};
use super::instance::InstanceFiles;
use super::lifecycle::{notify_upgrader, LifecycleService, UpgradeStage};
use super::reload::{build_routing, ReloadService};
use crate::admin::{AdminApp, Phase};
use crate::balancer::Registry;
use crate::config::{server_defaults, Config};
use crate::discovery::Discovery;
use crate::health::HealthService;
use crate::proxy::{tls_listener_settings, ClientApp, ClientConnections, InFlight, LbProxy};

/// Why the server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: SocketAddr, reason: String },
    #[error("lb.access_log.path: cannot open {0}")]
    AccessLog(String),
    #[error("{0}")]
    Discovery(String),
    #[error("lb.tls: cannot set up TLS: {0}")]
    Tls(String),
}

/// The assembled server with lb's signal handling, ready to run.
pub struct Built {
    server: Server,
    signals: Signals,
}

impl Built {
    /// Runs until the process is stopped (a daemon forks first).
    pub fn run(self) {
        self.server.run(RunArgs {
            shutdown_signal: Box::new(self.signals),
        });
    }
}

/// Builds the server. The services start in this order:
/// 1. bootstrap (takes over the listening sockets of an old process when upgrading) and the
///    health checks, whose first round decides which upstreams are up;
/// 2. the hand-over service, once bootstrap is done: it restores the runtime state the old
///    process saved (with `saved` = [`SavedStateUse::Restore`]);
/// 3. the proxy and the admin listener, once those are done;
/// 4. the lifecycle service, which announces the instance and handles its graceful end.
///
/// `opt` carries pingora's command-line flags (`-u`, `-d`); the file was read into `config`
/// already. `config_path`, when given, is re-read on SIGHUP.
pub fn build(
    mut opt: Opt,
    config: Config,
    config_path: Option<PathBuf>,
    saved: SavedStateUse,
) -> Result<Built, StartError> {
    opt.conf = None;
    let files = InstanceFiles::new(&config.server.pid_file);
    let grace = Duration::from_secs(
        config
            .server
            .grace_period_seconds
            .unwrap_or(server_defaults::GRACE_PERIOD_SECONDS),
    );
    let registry = Registry::new();
    // `dns:`/`srv:` names are looked up before anything starts: one that does not resolve
    // fails the start, naming its key.
    let discovery = Discovery::new(registry.metrics().clone());
    super::discovery::resolve_at_start(&discovery, &config.lb)
        .map_err(|e| StartError::Discovery(e.to_string()))?;
    let mut lb = config.lb.clone();
    discovery.expand(&mut lb);
    let routing = build_routing(lb, registry, None)
        .map_err(|e| StartError::AccessLog(e.to_string()))?
        .shared();
    let reload = config_path.map(|path| {
        Arc::new(ReloadService::new(
            routing.clone(),
            path,
            &config,
            discovery.clone(),
        ))
    });
    let listen = config.lb.listen.clone();
    let tls = config.lb.tls.clone();
    let upgrade_sock = config.server.upgrade_sock.clone();
    let phase = Phase::default();
    let table = ListenerTable::default();

    let mut server = Server::new_with_opt_and_conf(Some(opt), config.server);
    let bootstrap = server.bootstrap_as_a_service();
    let handover = server.add_service(HandoverService::new(
        files.clone(),
        routing.clone(),
        saved,
        table.clone(),
    ));
    handover.add_dependency(&bootstrap);
    let health = server.add_service(background_service(
        "health checks",
        HealthService::new(routing.clone(), || notify_upgrader(UpgradeStage::Checked)),
    ));
    server.add_service(background_service(
        "discovery",
        DiscoveryService::new(routing.clone(), discovery.clone()),
    ));
    if let Some(reload) = &reload {
        server.add_service(GenBackgroundService::new(
            "reload".to_string(),
            reload.clone(),
        ));
    }

    let in_flight = InFlight::default();
    let connections = ClientConnections::default();
    let nofile = super::fd_limit::raise_nofile();
    let admin_listen = config.lb.admin.as_ref().map(|a| a.listen);
    let routing_for_exit = routing.clone();
    let mut http = pingora::proxy::http_proxy(
        &server.configuration,
        LbProxy::new(routing.clone(), in_flight.clone()),
    );
    http.server_options = Some(crate::proxy::server_options(&config.lb));
    http.h2_options = Some(crate::proxy::h2_options(&config.lb));
    let mut proxy = Service::new(
        "lb proxy".to_string(),
        ClientApp::new(
            http,
            routing.clone(),
            connections.clone(),
            super::fd_limit::client_connection_budget(nofile),
            grace,
        ),
    );
    for addr in &listen {
        proxy.add_listener(ListenerConfig::tcp(addr.to_string()).l4_buffer(client_buffers()));
    }
    if let Some(tls) = &tls {
        super::reload::log_certificate_expiry(tls);
        for addr in &tls.listen {
            let settings = tls_listener_settings(tls, routing.clone())
                .map_err(|e| StartError::Tls(e.to_string()))?;
            proxy.add_listener(
                ListenerConfig::tcp(addr.to_string())
                    .tls(settings)
                    .l4_buffer(tls_client_buffers()),
            );
        }
    }
    let proxy = server.add_service(proxy);
    proxy.add_dependency(&bootstrap);
    proxy.add_dependency(&handover);
    proxy.add_dependency(&health);

    if let Some(addr) = admin_listen {
        let state_files = files.clone();
        let on_change = move |routing: &crate::balancer::Routing| {
            if let Err(e) = state_files.write_state(&routing.registry.snapshot()) {
                log::error!(
                    "cannot save the runtime state to {}: {e} (this change would not survive an upgrade)",
                    state_files.state_file.display()
                );
            }
        };
        let mut admin = Service::new(
            "admin".to_string(),
            AdminApp::new(
                routing.clone(),
                in_flight.clone(),
                phase.clone(),
                Arc::new(on_change),
                discovery.clone(),
            ),
        );
        admin.add_tcp(&addr.to_string());
        let admin = server.add_service(admin);
        admin.add_dependency(&bootstrap);
        admin.add_dependency(&handover);
    }

    let signals = Signals {
        files: files.clone(),
        routing: routing.clone(),
        phase: phase.clone(),
        table,
        upgrade_sock,
    };
    let lifecycle = server.add_service(background_service(
        "lifecycle",
        LifecycleService::new(
            files,
            reload,
            in_flight,
            connections,
            grace,
            routing_for_exit,
            phase,
        ),
    ));
    lifecycle.add_dependency(&proxy);
    Ok(Built { server, signals })
}

/// pingora's own buffers of client connections are off: they are allocated at accept and held
/// for the life of a connection, idle keep-alive ones included. Reads go straight into pingora's
/// request header and body buffers (a buffer in front bought no throughput); writes are
/// buffered by [`ClientApp`] only while a response is being written.
fn client_buffers() -> L4BufferSettings {
    L4BufferSettings::unbuffered()
}

/// Under TLS, a small read buffer: OpenSSL reads a record's 5-byte header, then the rest, and
/// the buffer makes that one system call for a request of up to 4 KiB. pingora's default
/// (64 KiB, held for the life of the connection) made an idle TLS connection cost about
/// 98 KiB. Writes are coalesced above TLS by [`ClientApp`] already.
fn tls_client_buffers() -> L4BufferSettings {
    L4BufferSettings::new(4096, 0)
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
