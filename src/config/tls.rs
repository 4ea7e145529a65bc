//! `lb.tls`: the HTTPS listeners and their certificates.
//!
//! Every certificate and key is read and checked here, when the file is loaded (by `lb -t`, at
//! start and at each reload), so that a bad file is refused with its key path before it can
//! serve. The parsed certificates travel inside the validated configuration: a reload that
//! swaps the configuration swaps the certificates with it.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::X509;
use serde::Deserialize;

use super::values::cut;
use super::ConfigError;

/// The largest certificate or key file read (a chain is a few KiB).
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// A certificate expiring within this many days is warned about at start and at each reload.
pub const EXPIRY_WARNING_DAYS: i64 = 14;

/// `lb.tls` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub(crate) listen: Option<Vec<String>>,
    pub(crate) certificates: Option<Vec<RawCertificate>>,
    pub(crate) default_certificate: Option<usize>,
    pub(crate) min_version: Option<RawVersion>,
    pub(crate) http2: Option<bool>,
}

/// One entry of `lb.tls.certificates`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCertificate {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

/// `"1.2"` or `1.2`: YAML reads the unquoted form as a number.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum RawVersion {
    Text(String),
    Number(f64),
}

/// The lowest TLS version offered to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3 (Mozilla's "intermediate" profile).
    #[default]
    V1_2,
    /// TLS 1.3 only.
    V1_3,
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsVersion::V1_2 => "1.2",
            TlsVersion::V1_3 => "1.3",
        })
    }
}

/// The validated `lb.tls` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub listen: Vec<SocketAddr>,
    pub certificates: CertificateSet,
    pub min_version: TlsVersion,
    /// Offer HTTP/2 by ALPN (`h2`, then `http/1.1`); else HTTP/1.1 only.
    pub http2: bool,
}

/// A certificate chain and its private key, parsed.
pub struct Material {
    /// The server's own certificate.
    pub leaf: X509,
    /// The intermediate certificates that follow it in the file.
    pub chain: Vec<X509>,
    pub key: PKey<Private>,
}

impl PartialEq for Material {
    fn eq(&self, other: &Self) -> bool {
        let der = |c: &X509| c.to_der().unwrap_or_default();
        der(&self.leaf) == der(&other.leaf)
            && self.chain.len() == other.chain.len()
            && self
                .chain
                .iter()
                .zip(&other.chain)
                .all(|(a, b)| der(a) == der(b))
            && self.key.public_eq(&other.key)
    }
}

impl Eq for Material {}

/// One loaded certificate.
#[derive(Clone, PartialEq, Eq)]
pub struct Certificate {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// The DNS names it serves, lower case: its subjectAltName DNS entries, or its common name
    /// when it has none. `*.example.net` is a wildcard for one label.
    pub names: Vec<String>,
    /// When it expires, in seconds since the Unix epoch.
    pub not_after: i64,
    pub material: Arc<Material>,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("cert_path", &self.cert_path)
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .finish()
    }
}

impl Certificate {
    /// Its names joined by commas (the metric label, the status page).
    pub fn names_label(&self) -> String {
        self.names.join(",")
    }
}

/// The certificates, indexed for the choice by SNI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateSet {
    pub list: Vec<Certificate>,
    /// Index in `list` of the certificate for clients without SNI or with an unknown name.
    pub default: usize,
    /// Exact name → index (the first certificate listing a name wins).
    exact: HashMap<String, usize>,
    /// `example.net` for `*.example.net` → index.
    wildcard: HashMap<String, usize>,
}

impl CertificateSet {
    fn new(list: Vec<Certificate>, default: usize) -> Self {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, cert) in list.iter().enumerate() {
            for name in &cert.names {
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_string()).or_insert(i),
                    None => exact.entry(name.clone()).or_insert(i),
                };
            }
        }
        CertificateSet {
            list,
            default,
            exact,
            wildcard,
        }
    }

    /// The certificate for a client that asked for `server_name` (SNI): an exact name match
    /// (any case), then a wildcard covering its first label, then the default.
    pub fn choose(&self, server_name: Option<&str>) -> &Certificate {
        let index = server_name
            .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
            .and_then(|name| {
                self.exact.get(&name).copied().or_else(|| {
                    let (_, parent) = name.split_once('.')?;
                    self.wildcard.get(parent).copied()
                })
            })
            .unwrap_or(self.default);
        &self.list[index]
    }

    /// A line to log for each certificate that has expired or expires within
    /// [`EXPIRY_WARNING_DAYS`] of `now` (seconds since the epoch); the bool says "expired".
    pub fn expiry_warnings(&self, now: i64) -> Vec<(bool, String)> {
        let mut lines = Vec::new();
        for (i, cert) in self.list.iter().enumerate() {
            let key = format!("lb.tls.certificates[{i}].cert");
            let left = cert.not_after - now;
            let names = cert.names_label();
            if left <= 0 {
                lines.push((
                    true,
                    format!(
                        "{key}: {} ({names}) EXPIRED {} days ago: clients refuse it; it is \
                         still served until it is replaced",
                        cert.cert_path.display(),
                        -left / 86_400
                    ),
                ));
            } else if left < EXPIRY_WARNING_DAYS * 86_400 {
                lines.push((
                    false,
                    format!(
                        "{key}: {} ({names}) expires in {} days, {} hours: renew it",
                        cert.cert_path.display(),
                        left / 86_400,
                        left % 86_400 / 3600
                    ),
                ));
            }
        }
        lines
    }
}

/// Validates `lb.tls` against the plain listeners.
pub(crate) fn validate_tls(raw: RawTls, plain: &[SocketAddr]) -> Result<TlsConfig, ConfigError> {
    let listen_raw = raw.listen.ok_or_else(|| {
        ConfigError::invalid(
            "lb.tls.listen",
            "missing: give at least one address such as \"0.0.0.0:443\"",
        )
    })?;
    if listen_raw.is_empty() {
        return Err(ConfigError::invalid(
            "lb.tls.listen",
            "empty: give at least one address such as \"0.0.0.0:443\"",
        ));
    }
    let mut listen = Vec::with_capacity(listen_raw.len());
    for (i, text) in listen_raw.iter().enumerate() {
        let key = format!("lb.tls.listen[{i}]");
        let addr: SocketAddr = text.trim().parse().map_err(|_| {
            ConfigError::invalid(
                &key,
                format!(
                    "invalid address `{}`: write ip:port, e.g. 0.0.0.0:443 or [::]:443",
                    cut(text)
                ),
            )
        })?;
        if listen.contains(&addr) {
            return Err(ConfigError::invalid(
                key,
                format!("`{}` is listed twice", cut(text)),
            ));
        }
        if plain.contains(&addr) {
            return Err(ConfigError::invalid(
                key,
                format!("{addr} is also in lb.listen: an address is plain HTTP or HTTPS, not both"),
            ));
        }
        listen.push(addr);
    }
    let raw_certs = raw.certificates.ok_or_else(|| {
        ConfigError::invalid(
            "lb.tls.certificates",
            "missing: give at least one { cert: file.pem, key: file.key }",
        )
    })?;
    if raw_certs.is_empty() {
        return Err(ConfigError::invalid(
            "lb.tls.certificates",
            "empty: give at least one { cert: file.pem, key: file.key }",
        ));
    }
    let mut list = Vec::with_capacity(raw_certs.len());
    for (i, raw) in raw_certs.into_iter().enumerate() {
        list.push(load_certificate(&format!("lb.tls.certificates[{i}]"), raw)?);
    }
    let default = raw.default_certificate.unwrap_or(0);
    if default >= list.len() {
        return Err(ConfigError::invalid(
            "lb.tls.default_certificate",
            format!(
                "{default} is out of range: there {} {} certificate{}, numbered from 0",
                if list.len() == 1 { "is" } else { "are" },
                list.len(),
                if list.len() == 1 { "" } else { "s" }
            ),
        ));
    }
    let min_version = match raw.min_version {
        None => TlsVersion::default(),
        Some(raw) => {
            let text = match raw {
                RawVersion::Text(t) => t.trim().to_string(),
                RawVersion::Number(n) => n.to_string(),
            };
            match text.as_str() {
                "1.2" => TlsVersion::V1_2,
                "1.3" => TlsVersion::V1_3,
                _ => {
                    return Err(ConfigError::invalid(
                        "lb.tls.min_version",
                        format!(
                            "`{}` is not supported: write \"1.2\" or \"1.3\" (older versions \
                             are unsafe)",
                            cut(&text)
                        ),
                    ))
                }
            }
        }
    };
    Ok(TlsConfig {
        listen,
        certificates: CertificateSet::new(list, default),
        min_version,
        http2: raw.http2.unwrap_or(true),
    })
}

/// Reads a PEM file of at most [`MAX_PEM_BYTES`].
fn read_pem(key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    use std::io::Read;
    let fail = |reason: String| ConfigError::invalid(key, reason);
    let meta = std::fs::metadata(path)
        .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(fail(format!("{} is not a regular file", path.display())));
    }
    let file = std::fs::File::open(path)
        .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(fail(format!(
            "{} is larger than {MAX_PEM_BYTES} bytes: not a certificate or key file",
            path.display()
        )));
    }
    Ok(bytes)
}

/// Loads and checks one `{cert, key}` pair; `prefix` is its key path.
fn load_certificate(prefix: &str, raw: RawCertificate) -> Result<Certificate, ConfigError> {
    let cert_key = format!("{prefix}.cert");
    let key_key = format!("{prefix}.key");
    let cert_pem = read_pem(&cert_key, &raw.cert)?;
    let mut stack = X509::stack_from_pem(&cert_pem)
        .ok()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            ConfigError::invalid(
                &cert_key,
                format!(
                    "{} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)",
                    raw.cert.display()
                ),
            )
        })?;
    let leaf = stack.remove(0);
    let key_pem = read_pem(&key_key, &raw.key)?;
    let key = PKey::private_key_from_pem(&key_pem).map_err(|_| {
        ConfigError::invalid(
            &key_key,
            format!(
                "{} holds no PEM private key (expected -----BEGIN PRIVATE KEY-----, unencrypted)",
                raw.key.display()
            ),
        )
    })?;
    let matches = leaf
        .public_key()
        .map(|public| public.public_eq(&key))
        .unwrap_or(false);
    if !matches {
        return Err(ConfigError::invalid(
            &key_key,
            format!(
                "does not match the certificate {} (this key is for another certificate)",
                raw.cert.display()
            ),
        ));
    }
    let not_after = expiry(&leaf).ok_or_else(|| {
        ConfigError::invalid(
            &cert_key,
            format!("{}: its expiry date cannot be read", raw.cert.display()),
        )
    })?;
    Ok(Certificate {
        names: names_of(&leaf),
        not_after,
        material: Arc::new(Material {
            leaf,
            chain: stack,
            key,
        }),
        cert_path: raw.cert,
        key_path: raw.key,
    })
}

/// The subjectAltName DNS entries, or the common name when there are none; lower case.
fn names_of(cert: &X509) -> Vec<String> {
    let mut names: Vec<String> = cert
        .subject_alt_names()
        .map(|sans| {
            sans.iter()
                .filter_map(|n| n.dnsname().map(|d| d.to_ascii_lowercase()))
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        names = cert
            .subject_name()
            .entries_by_nid(Nid::COMMONNAME)
            .filter_map(|e| e.data().to_string().ok().map(|s| s.to_ascii_lowercase()))
            .collect();
    }
    names.dedup();
    names
}

/// The certificate's notAfter in seconds since the epoch.
fn expiry(cert: &X509) -> Option<i64> {
    let epoch = openssl::asn1::Asn1Time::from_unix(0).ok()?;
    let diff = epoch.diff(cert.not_after()).ok()?;
    Some(i64::from(diff.days) * 86_400 + i64::from(diff.secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::asn1::Asn1Time;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::x509::extension::SubjectAlternativeName;
    use openssl::x509::X509NameBuilder;

    /// A self-signed certificate for `names` (none: only the common name `cn`).
    fn cert(cn: &str, names: &[&str], not_after: i64) -> Certificate {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_nid(Nid::COMMONNAME, cn).unwrap();
        let name = name.build();
        let mut b = X509::builder().unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::from_unix(0).unwrap()).unwrap();
        b.set_not_after(&Asn1Time::from_unix(not_after).unwrap())
            .unwrap();
        if !names.is_empty() {
            let mut san = SubjectAlternativeName::new();
            for n in names {
                san.dns(n);
            }
            let ext = san.build(&b.x509v3_context(None, None)).unwrap();
            b.append_extension(ext).unwrap();
        }
        b.sign(&key, MessageDigest::sha256()).unwrap();
        let leaf = b.build();
        Certificate {
            cert_path: PathBuf::from(format!("{cn}.pem")),
            key_path: PathBuf::from(format!("{cn}.key")),
            names: names_of(&leaf),
            not_after: expiry(&leaf).unwrap(),
            material: Arc::new(Material {
                leaf,
                chain: Vec::new(),
                key,
            }),
        }
    }

    #[test]
    fn sni_prefers_exact_names_then_wildcards_then_the_default() {
        let far = 4_000_000_000;
        let set = CertificateSet::new(
            vec![
                cert("one", &["a.example.com", "B.example.com"], far),
                cert("wild", &["*.example.com", "*.example.net"], far),
                cert("cn-only", &[], far),
            ],
            2,
        );
        let chosen = |sni: Option<&str>| set.choose(sni).cert_path.display().to_string();
        assert_eq!(chosen(Some("a.example.com")), "one.pem");
        assert_eq!(chosen(Some("b.EXAMPLE.com.")), "one.pem");
        assert_eq!(chosen(Some("c.example.com")), "wild.pem");
        assert_eq!(chosen(Some("x.example.net")), "wild.pem");
        assert_eq!(chosen(Some("x.y.example.net")), "cn-only.pem");
        assert_eq!(chosen(Some("example.net")), "cn-only.pem");
        assert_eq!(chosen(Some("cn-only")), "cn-only.pem");
        assert_eq!(chosen(None), "cn-only.pem");
        assert_eq!(set.list[2].names, vec!["cn-only".to_string()]);
    }

    #[test]
    fn expiry_is_read_and_warned_about_within_14_days() {
        let now = 1_800_000_000;
        let set = CertificateSet::new(
            vec![
                cert("soon", &["soon.test"], now + 3 * 86_400 + 7200),
                cert("gone", &["gone.test"], now - 86_400),
                cert("fine", &["fine.test"], now + 15 * 86_400),
            ],
            0,
        );
        assert_eq!(set.list[0].not_after, now + 3 * 86_400 + 7200);
        let warnings = set.expiry_warnings(now);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(!warnings[0].0);
        assert!(
            warnings[0]
                .1
                .contains("(soon.test) expires in 3 days, 2 hours"),
            "{warnings:?}"
        );
        assert!(warnings[1].0);
        assert!(warnings[1].1.contains("EXPIRED 1 days ago"), "{warnings:?}");
    }
}
