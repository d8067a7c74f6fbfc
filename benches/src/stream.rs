//! ferry-bench's connection to ferry: plain TCP for `ws://`, TLS (rustls) for `wss://`,
//! trusting the certificate authorities of the PEM file named by `FERRY_CA`.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, OnceLock};

pub enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    /// Connects to the host and port of `url`, with TLS when it is `wss://`.
    pub fn connect(url: &str) -> Result<Stream, String> {
        let (tls, rest) = match url.split_once("://") {
            Some(("wss", rest)) => (true, rest),
            Some(("ws", rest)) => (false, rest),
            _ => return Err(format!("{url}: want ws:// or wss://")),
        };
        let authority = rest.split('/').next().unwrap_or_default();
        let tcp = TcpStream::connect(authority).map_err(|e| format!("connect {authority}: {e}"))?;
        Stream::over(tcp, tls.then_some(authority))
    }

    /// `tcp` as is, or under TLS to the host of `authority` (`host:port`).
    pub fn over(tcp: TcpStream, tls_to: Option<&str>) -> Result<Stream, String> {
        let Some(authority) = tls_to else { return Ok(Stream::Plain(tcp)) };
        let host = authority.rsplit_once(':').map_or(authority, |(host, _)| host);
        let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| format!("{host}: {e}"))?;
        let connection = rustls::ClientConnection::new(client_config()?, name).map_err(|e| e.to_string())?;
        Ok(Stream::Tls(Box::new(rustls::StreamOwned::new(connection, tcp))))
    }

    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => &tls.sock,
        }
    }
}

/// One client configuration for every connection (session resumption across them).
fn client_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            use rustls::pki_types::{pem::PemObject, CertificateDer};
            let path = std::env::var("FERRY_CA").map_err(|_| "wss:// needs FERRY_CA: the PEM file of the authority that signed the server's certificate".to_string())?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(&path).map_err(|e| format!("FERRY_CA {path}: {e}"))? {
                roots.add(cert.map_err(|e| format!("FERRY_CA {path}: {e}"))?).map_err(|e| format!("FERRY_CA {path}: {e}"))?;
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.read(buf),
            Stream::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.write(buf),
            Stream::Tls(tls) => tls.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(tcp) => tcp.flush(),
            Stream::Tls(tls) => tls.flush(),
        }
    }
}
