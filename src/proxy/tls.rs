//! TLS termination: the settings of the HTTPS listeners and the choice of a certificate by SNI.
//!
//! The certificates live in the configuration of the current [`Routing`](crate::balancer::Routing),
//! which a reload swaps as a whole: each handshake reads the routing of its moment, so new
//! handshakes use new certificates at once while open connections keep the session they made.

use async_trait::async_trait;
use openssl::ssl::{NameType, SslMode, SslVersion};
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{TlsAccept, ALPN};
use pingora::protocols::tls::TlsRef;
use pingora::tls::ext;

use crate::balancer::SharedRouting;
use crate::config::{TlsConfig, TlsVersion};

/// Chooses each handshake's certificate from the current configuration.
pub(crate) struct CertificateChooser {
    routing: SharedRouting,
}

#[async_trait]
impl TlsAccept for CertificateChooser {
    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        let routing = self.routing.load();
        let Some(tls) = routing.config.tls.as_ref() else {
            // Not reachable: a reload cannot remove `lb.tls` while its listeners exist. With
            // no certificate the handshake fails and the connection closes.
            return;
        };
        let name = ssl.servername(NameType::HOST_NAME);
        let cert = tls.certificates.choose(name);
        let material = &cert.material;
        let result = ext::ssl_use_certificate(ssl, &material.leaf)
            .and_then(|()| ext::ssl_use_private_key(ssl, &material.key))
            .and_then(|()| {
                material
                    .chain
                    .iter()
                    .try_for_each(|c| ext::ssl_add_chain_cert(ssl, c))
            });
        if let Err(e) = result {
            log::error!(
                "cannot use the certificate {} in a handshake: {e}",
                cert.cert_path.display()
            );
        }
    }
}

/// The settings of every HTTPS listener: Mozilla's "intermediate" profile (TLS 1.2 and 1.3,
/// AEAD ciphers with forward secrecy only), raised to TLS 1.3 only by `min_version: "1.3"`;
/// ALPN `h2` then `http/1.1`, or `http/1.1` only; the certificate chosen per handshake.
pub(crate) fn listener_settings(
    config: &TlsConfig,
    routing: SharedRouting,
) -> pingora::Result<TlsSettings> {
    let mut settings = TlsSettings::with_callbacks(Box::new(CertificateChooser { routing }))?;
    let min = match config.min_version {
        TlsVersion::V1_2 => SslVersion::TLS1_2,
        TlsVersion::V1_3 => SslVersion::TLS1_3,
    };
    settings.set_min_proto_version(Some(min)).map_err(|e| {
        pingora::Error::because(
            pingora::ErrorType::InternalError,
            "cannot set the lowest TLS version",
            e,
        )
    })?;
    settings.set_alpn(if config.http2 { ALPN::H2H1 } else { ALPN::H1 });
    // OpenSSL's own read and write buffers (about 34 KiB) are freed while a connection is idle.
    settings.set_mode(SslMode::RELEASE_BUFFERS);
    Ok(settings)
}
