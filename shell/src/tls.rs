//! TLS settings of the client listener, read and checked once at start: a file that cannot be
//! read or parsed stops the start with a message naming it, never a server without TLS.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::sync::Arc;

/// The PEM files named by `tls_cert`, `tls_key` and `tls_client_ca`.
#[derive(Debug, Default, Clone)]
pub struct TlsFiles {
    /// The server's certificate chain, leaf first.
    pub cert: String,
    pub key: String,
    /// When set, clients must present a certificate signed by one of these authorities.
    pub client_ca: String,
}

impl TlsFiles {
    /// `None` when TLS is off (no `tls_cert` nor `tls_key`).
    pub fn server_config(&self) -> Result<Option<Arc<ServerConfig>>, String> {
        match (self.cert.is_empty(), self.key.is_empty()) {
            (true, true) if self.client_ca.is_empty() => return Ok(None),
            (true, true) => return Err("tls_client_ca needs tls_cert and tls_key".into()),
            (false, true) | (true, false) => return Err("tls_cert and tls_key go together: set both or neither".into()),
            (false, false) => {}
        }
        let chain = certificates(&self.cert, "tls_cert")?;
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| format!("tls_key {}: {e}", self.key))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider)).with_safe_default_protocol_versions().map_err(|e| format!("TLS: {e}"))?;
        let builder = if self.client_ca.is_empty() {
            builder.with_no_client_auth()
        } else {
            let mut roots = RootCertStore::empty();
            for cert in certificates(&self.client_ca, "tls_client_ca")? {
                roots.add(cert).map_err(|e| format!("tls_client_ca {}: {e}", self.client_ca))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().map_err(|e| format!("tls_client_ca {}: {e}", self.client_ca))?;
            builder.with_client_cert_verifier(verifier)
        };
        let mut config = builder.with_single_cert(chain, key).map_err(|e| format!("tls_cert {} with tls_key {}: {e}", self.cert, self.key))?;
        // WebSockets and the console speak HTTP/1.1; a client offering only h2 learns it here.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Some(Arc::new(config)))
    }
}

/// Every certificate of a PEM file; none at all is an error.
fn certificates(path: &str, setting: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_file_iter(path).map_err(|e| format!("{setting} {path}: {e}"))?.collect::<Result<Vec<_>, _>>().map_err(|e| format!("{setting} {path}: {e}"))?;
    if chain.is_empty() {
        return Err(format!("{setting} {path}: no certificate in the file"));
    }
    Ok(chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    #[test]
    fn bad_settings_are_errors_that_name_the_setting_and_good_ones_load() {
        let dir = std::env::temp_dir().join(format!("ferry-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = write(&dir, "cert.pem", &made.cert.pem());
        let key = write(&dir, "key.pem", &made.key_pair.serialize_pem());
        let garbage = write(&dir, "garbage.pem", "not a pem file\n");
        let files = |cert: &str, key: &str, client_ca: &str| TlsFiles { cert: cert.into(), key: key.into(), client_ca: client_ca.into() };

        assert!(files("", "", "").server_config().unwrap().is_none(), "no settings: no TLS");
        assert!(files(&cert, &key, "").server_config().unwrap().is_some());
        assert!(files(&cert, &key, &cert).server_config().unwrap().is_some(), "client certificates signed by a CA file");
        let error = |f: TlsFiles| f.server_config().err().unwrap();
        assert!(error(files(&cert, "", "")).contains("tls_cert and tls_key go together"));
        assert!(error(files("", "", &cert)).contains("tls_client_ca needs"));
        assert!(error(files(&garbage, &key, "")).contains(&format!("tls_cert {garbage}: no certificate")));
        assert!(error(files(&cert, &garbage, "")).starts_with(&format!("tls_key {garbage}")));
        assert!(error(files(&cert, "/nonexistent/key.pem", "")).starts_with("tls_key /nonexistent/key.pem"));
        assert!(error(files(&cert, &key, &garbage)).starts_with(&format!("tls_client_ca {garbage}")));
        // A key that is not the certificate's.
        let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let other_key = write(&dir, "other-key.pem", &other.key_pair.serialize_pem());
        assert!(error(files(&cert, &other_key, "")).contains("with tls_key"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
