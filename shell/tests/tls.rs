//! TLS on the client listener, against the real binary: wss:// and https:// with a certificate
//! made here work with a standard client (Python's ssl and websocket-client); plain ws:// to
//! the TLS port is answered 400 in plain HTTP; optional client certificates are required when
//! `tls_client_ca` is set.

mod support;

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType};
use serde_json::Value;
use std::path::{Path, PathBuf};
use support::Server;

/// A test CA and, signed by it, a certificate for 127.0.0.1 and a client's certificate; the
/// PEM files' paths.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl Pki {
    fn make(dir: &Path) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "ferry test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let signed = |name: &str, purpose: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
            params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
            params.extended_key_usages = vec![purpose];
            (params.signed_by(&key, &ca, &ca_key).unwrap(), key)
        };
        let (server, server_key) = signed("localhost", ExtendedKeyUsagePurpose::ServerAuth);
        let (client, client_key) = signed("orders-service", ExtendedKeyUsagePurpose::ClientAuth);
        let write = |name: &str, text: String| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        Pki {
            ca: write("ca.pem", ca.pem()),
            server_cert: write("server.pem", server.pem()),
            server_key: write("server-key.pem", server_key.serialize_pem()),
            client_cert: write("client.pem", client.pem()),
            client_key: write("client-key.pem", client_key.serialize_pem()),
        }
    }

    fn server_settings(&self) -> Vec<String> {
        ["--set".into(), format!("tls_cert={}", self.server_cert.display()), "--set".into(), format!("tls_key={}", self.server_key.display())].to_vec()
    }
}

/// Subscribes, publishes a body of several TLS records, and reads it back over wss:// with
/// Python's websocket-client; then GETs /metrics over https://. Prints what it saw as JSON.
const PYTHON_CLIENT: &str = r#"
import json, ssl, sys, urllib.request, websocket
addr, ca, cert, key = sys.argv[1:5]
sslopt = {"ca_certs": ca}
context = ssl.create_default_context(cafile=ca)
if cert:
    sslopt.update(certfile=cert, keyfile=key)
    context.load_cert_chain(cert, key)
seen = {}
try:
    ws = websocket.create_connection("wss://%s/ws" % addr, sslopt=sslopt, timeout=10)
    seen["welcome"] = json.loads(ws.recv())["op"]
    body = "x" * 40000
    ws.send(json.dumps({"op": "sub", "req": 1, "topic": "secure", "group": "g", "from": "earliest"}))
    ws.send(json.dumps({"op": "pub", "req": 2, "topic": "secure", "body": body}))
    while "delivered" not in seen or "puback" not in seen:
        frame = json.loads(ws.recv())
        if frame["op"] == "puback":
            seen["puback"] = frame["id"]
        elif frame["op"] == "msg":
            seen["delivered"] = frame["body"] == body
            ws.send(json.dumps({"op": "ack", "group": "g", "topic": "secure", "ids": [frame["id"]]}))
    ws.close()
    with urllib.request.urlopen("https://%s/metrics" % addr, context=context, timeout=10) as answer:
        seen["metrics"] = answer.status
        seen["published"] = "ferry_published_total" in answer.read().decode()
except Exception as e:
    seen["error"] = "%s: %s" % (type(e).__name__, e)
print(json.dumps(seen))
"#;

fn python_client(python: &Path, addr: &str, ca: &Path, client: Option<(&Path, &Path)>) -> Value {
    let (cert, key) = client.map_or((String::new(), String::new()), |(c, k)| (c.display().to_string(), k.display().to_string()));
    let out = std::process::Command::new(python).arg("-c").arg(PYTHON_CLIENT).arg(addr).arg(ca).arg(cert).arg(key).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|_| panic!("the client printed {stdout:?}, stderr {}", String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn wss_and_https_work_with_a_standard_client_and_plain_ws_is_told_to_use_tls() {
    let Some(python) = support::required_tool("python3") else { return };
    let dir = support::temp_dir("tls");
    let pki = Pki::make(&dir);
    let settings = pki.server_settings();
    let args: Vec<&str> = settings.iter().map(String::as_str).collect();
    let server = Server::start(&dir.join("data"), "127.0.0.1:0", &args);
    assert!(server.log_text().contains(&format!("listening on wss://{}/ws", server.addr)), "{}", server.log_text());

    let seen = python_client(&python, &server.addr, &pki.ca, None);
    assert_eq!(seen["welcome"], "welcome", "{seen}");
    assert!(seen["puback"].as_u64().is_some(), "{seen}");
    assert_eq!(seen["delivered"], true, "the 40 kB body came back whole: {seen}");
    assert_eq!(seen["metrics"], 200, "{seen}");
    assert_eq!(seen["published"], true, "{seen}");

    // Plain ws:// to the TLS port: a plain 400 saying what to do, not a hang or a reset.
    let refused = support::Client::connect(&server.url()).err().expect("plain ws:// must fail");
    assert!(refused.contains("400"), "{refused}");
    let (status, body) = support::http_get(&server.addr, "/metrics");
    assert_eq!(status, 400);
    assert!(body.contains("use wss:// or https://"), "{body}");
    // Bytes that are neither TLS nor HTTP: the connection ends, the server goes on.
    let mut garbage = std::net::TcpStream::connect(&server.addr).unwrap();
    std::io::Write::write_all(&mut garbage, &[0u8; 64]).unwrap();
    garbage.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut garbage, &mut answer);
    assert!(answer.len() < 64, "at most a TLS alert: {answer:?}");
    let again = python_client(&python, &server.addr, &pki.ca, None);
    assert!(again["puback"].as_u64().is_some(), "still serving after the bad clients: {again}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn with_tls_client_ca_only_clients_with_a_certificate_it_signed_get_in() {
    let Some(python) = support::required_tool("python3") else { return };
    let dir = support::temp_dir("tls-client-ca");
    let pki = Pki::make(&dir);
    let mut settings = pki.server_settings();
    settings.extend(["--set".to_string(), format!("tls_client_ca={}", pki.ca.display())]);
    let args: Vec<&str> = settings.iter().map(String::as_str).collect();
    let server = Server::start(&dir.join("data"), "127.0.0.1:0", &args);

    let without = python_client(&python, &server.addr, &pki.ca, None);
    assert!(without["error"].as_str().is_some_and(|e| !e.is_empty()), "no client certificate: refused ({without})");
    assert!(without.get("welcome").is_none(), "{without}");
    let with = python_client(&python, &server.addr, &pki.ca, Some((&pki.client_cert, &pki.client_key)));
    assert_eq!(with["delivered"], true, "{with}");
    assert_eq!(with["metrics"], 200, "{with}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tls_files_that_cannot_be_read_stop_the_start_naming_the_setting() {
    let dir = support::temp_dir("tls-bad");
    let pki = Pki::make(&dir);
    let missing = dir.join("missing.pem");
    let (code, log) =
        support::serve_expecting_exit(&dir.join("data"), &["--set", &format!("tls_cert={}", pki.server_cert.display()), "--set", &format!("tls_key={}", missing.display())]);
    assert_ne!(code, Some(0));
    assert!(log.contains(&format!("tls_key {}", missing.display())), "{log}");
    let (code, log) = support::serve_expecting_exit(&dir.join("data"), &["--set", &format!("tls_cert={}", pki.server_cert.display())]);
    assert_ne!(code, Some(0));
    assert!(log.contains("tls_cert and tls_key go together"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}
