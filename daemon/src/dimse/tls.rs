//! TLS for upstream associations (PS3.15 B.1, the TLS secure transport profile):
//! rustls with the ring provider, the destination's certificate checked against
//! the configured roots, an optional client certificate for mutual TLS.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use crate::config::UpstreamTls;

/// The client configuration, or (the key of `[upstream.tls]` at fault, why).
pub fn client_config(t: &UpstreamTls) -> Result<Arc<ClientConfig>, (&'static str, String)> {
    let certs = |key,
                 path: &std::path::Path|
     -> Result<Vec<CertificateDer<'static>>, (&'static str, String)> {
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
    };
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs("ca_file", &t.ca_file)?);
    if added == 0 {
        return Err((
            "ca_file",
            format!("{}: no usable CA certificate", t.ca_file.display()),
        ));
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| ("ca_file", e.to_string()))?
            .with_root_certificates(roots);
    let config = match (&t.cert_file, &t.key_file) {
        (None, None) => builder.with_no_client_auth(),
        (Some(c), Some(k)) => {
            let chain = certs("cert_file", c)?;
            let key = PrivateKeyDer::from_pem_file(k).map_err(|e| {
                (
                    "key_file",
                    format!("{}: not a PEM private key ({e})", k.display()),
                )
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ("key_file", format!("does not fit cert_file: {e}")))?
        }
        _ => return Err(("cert_file", "cert_file and key_file go together".into())),
    };
    Ok(Arc::new(config))
}
