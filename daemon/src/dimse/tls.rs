//! TLS (PS3.15 B.1, the TLS secure transport profile) with rustls and the ring
//! provider: toward upstreams (their certificate checked against the configured
//! roots, an optional client certificate for mutual TLS), and for our own DICOM
//! TLS listener and HTTPS.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::UpstreamTls;

type Fault = (&'static str, String);

fn certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, Fault> {
    let pem = std::fs::read(path).map_err(|e| (key, format!("{}: {e}", path.display())))?;
    let v: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            (
                key,
                format!("{}: not PEM certificates ({e})", path.display()),
            )
        })?;
    if v.is_empty() {
        return Err((key, format!("{}: no certificate in it", path.display())));
    }
    Ok(v)
}

fn private_key(key: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, Fault> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        (
            key,
            format!("{}: not a PEM private key ({e})", path.display()),
        )
    })
}

fn roots(key: &'static str, path: &Path) -> Result<RootCertStore, Fault> {
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs(key, path)?);
    if added == 0 {
        return Err((key, format!("{}: no usable CA certificate", path.display())));
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The client configuration, or (the key of `[upstream.tls]` at fault, why).
pub fn client_config(t: &UpstreamTls) -> Result<Arc<ClientConfig>, Fault> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ("ca_file", e.to_string()))?
        .with_root_certificates(roots("ca_file", &t.ca_file)?);
    let config = match (&t.cert_file, &t.key_file) {
        (None, None) => builder.with_no_client_auth(),
        (Some(c), Some(k)) => builder
            .with_client_auth_cert(certs("cert_file", c)?, private_key("key_file", k)?)
            .map_err(|e| ("key_file", format!("does not fit cert_file: {e}")))?,
        _ => return Err(("cert_file", "cert_file and key_file go together".into())),
    };
    Ok(Arc::new(config))
}

/// A TLS server configuration (our DICOM TLS listener, HTTPS): TLS 1.2 and 1.3
/// with ring's suites, all ECDHE with AEAD ciphers (BCP 195 / RFC 9325). With
/// `client_ca`, a client certificate is asked for and, when one is presented,
/// must chain to it and be valid now; without one the handshake still succeeds
/// (who must present one is decided per peer, scp/mod.rs).
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, Fault> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ("cert_file", e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots("client_ca_file", ca)?),
                provider(),
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| ("client_ca_file", e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(
            certs("cert_file", cert_file)?,
            private_key("key_file", key_file)?,
        )
        .map_err(|e| ("key_file", format!("does not fit cert_file: {e}")))?;
    Ok(Arc::new(config))
}

/// Our TLS server configurations (DICOM TLS listener, HTTPS), built from the
/// files at start and again on SIGHUP: new certificates on the same listeners.
#[derive(Default)]
pub struct ServerTls {
    dicom: std::sync::RwLock<Option<Arc<ServerConfig>>>,
    http: std::sync::RwLock<Option<Arc<ServerConfig>>>,
}

impl ServerTls {
    /// Reads the certificate files `cfg` names; on any error nothing changes and
    /// the error names its key.
    pub fn load(&self, cfg: &crate::config::Config) -> Result<(), (String, String)> {
        let dicom = match &cfg.dicom.tls {
            Some(t) => Some(
                server_config(&t.cert_file, &t.key_file, t.client_ca_file.as_deref())
                    .map_err(|(k, m)| (format!("dicom.tls.{k}"), m))?,
            ),
            None => None,
        };
        let http = match &cfg.http.tls {
            Some(t) => Some(
                server_config(&t.cert_file, &t.key_file, None)
                    .map_err(|(k, m)| (format!("http.tls.{k}"), m))?,
            ),
            None => None,
        };
        if let Ok(mut w) = self.dicom.write() {
            *w = dicom;
        }
        if let Ok(mut w) = self.http.write() {
            *w = http;
        }
        Ok(())
    }

    pub fn dicom(&self) -> Option<Arc<ServerConfig>> {
        self.dicom.read().ok().and_then(|c| c.clone())
    }

    pub fn http(&self) -> Option<Arc<ServerConfig>> {
        self.http.read().ok().and_then(|c| c.clone())
    }
}
