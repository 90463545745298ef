//! `email` notifiers, caught by a local SMTP sink that speaks STARTTLS with a test
//! certificate (tests/fixtures/smtp) and asks for credentials.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use base64::Engine;

use crate::support::{Home, text};

/// One mail the sink accepted, over TLS.
#[derive(Debug)]
struct Mail {
    /// `AUTH PLAIN`'s user and password.
    login: Option<(String, String)>,
    recipients: Vec<String>,
    data: String,
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/smtp")
        .join(name)
}

fn tls_config() -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(fixture("cert.pem"))
        .expect("cert.pem")
        .collect::<Result<_, _>>()
        .expect("certificates");
    let key = PrivateKeyDer::from_pem_file(fixture("key.pem")).expect("key.pem");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server certificate");
    Arc::new(config)
}

/// An SMTP server on loopback that turns its first `busy` sessions away (421), then
/// accepts mail over STARTTLS only, and hands each mail over.
fn smtp_sink(busy: usize) -> (u16, mpsc::Receiver<Mail>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let config = tls_config();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { continue };
            if n < busy {
                let _ = stream.write_all(b"421 4.3.2 busy, try again later\r\n");
                continue;
            }
            if let Some(mail) = session(stream, &config)
                && tx.send(mail).is_err()
            {
                break;
            }
        }
    });
    (port, rx)
}

/// One line, without its CRLF; `None` at the end of the stream.
fn read_line(stream: &mut impl Read) -> Option<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(1) => {}
            _ => return None,
        }
        if byte[0] == b'\n' {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Some(String::from_utf8_lossy(&line).into_owned());
        }
        line.push(byte[0]);
    }
}

/// One command line: its verb, upper-cased, and the whole line.
fn read_command(stream: &mut impl Read) -> Option<(String, String)> {
    let line = read_line(stream)?;
    let verb = line
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_uppercase();
    Some((verb, line))
}

/// Mail is only taken once the session is under TLS: a mail handed over proves STARTTLS.
fn session(mut plain: TcpStream, config: &Arc<rustls::ServerConfig>) -> Option<Mail> {
    plain
        .write_all(b"220 localhost ESMTP orch test sink\r\n")
        .ok()?;
    // In clear, only EHLO and STARTTLS: mail never goes unencrypted here.
    loop {
        let (verb, _) = read_command(&mut plain)?;
        match verb.as_str() {
            "EHLO" => plain.write_all(b"250-localhost\r\n250 STARTTLS\r\n").ok()?,
            "STARTTLS" => {
                plain.write_all(b"220 2.0.0 ready for TLS\r\n").ok()?;
                break;
            }
            "QUIT" => return None,
            _ => plain.write_all(b"530 5.7.0 STARTTLS first\r\n").ok()?,
        }
    }
    let connection = rustls::ServerConnection::new(Arc::clone(config)).ok()?;
    let mut tls = rustls::StreamOwned::new(connection, plain);
    let mut mail = Mail {
        login: None,
        recipients: Vec::new(),
        data: String::new(),
    };
    loop {
        let (verb, line) = read_command(&mut tls)?;
        match verb.as_str() {
            "EHLO" => tls.write_all(b"250-localhost\r\n250 AUTH PLAIN\r\n").ok()?,
            "AUTH" => {
                let mut words = line.split_whitespace().skip(2);
                let encoded = match words.next() {
                    Some(inline) => inline.to_string(),
                    None => {
                        tls.write_all(b"334 \r\n").ok()?;
                        read_line(&mut tls)?
                    }
                };
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(encoded.trim())
                    .ok()?;
                let parts: Vec<String> = decoded
                    .split(|b| *b == 0)
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect();
                mail.login = Some((parts.get(1)?.clone(), parts.get(2)?.clone()));
                tls.write_all(b"235 2.7.0 authenticated\r\n").ok()?;
            }
            "MAIL" => tls.write_all(b"250 2.1.0 ok\r\n").ok()?,
            "RCPT" => {
                mail.recipients.push(line[8..].trim().to_string());
                tls.write_all(b"250 2.1.5 ok\r\n").ok()?;
            }
            "DATA" => {
                tls.write_all(b"354 end with a dot\r\n").ok()?;
                loop {
                    let data = read_line(&mut tls)?;
                    if data == "." {
                        break;
                    }
                    mail.data.push_str(&data);
                    mail.data.push('\n');
                }
                tls.write_all(b"250 2.0.0 queued\r\n").ok()?;
            }
            "QUIT" => {
                let _ = tls.write_all(b"221 2.0.0 bye\r\n");
                let _ = tls.flush();
                return Some(mail);
            }
            _ => tls.write_all(b"502 5.5.2 not here\r\n").ok()?,
        }
    }
}

/// A quoted-printable body as text: soft line breaks joined, `=XX` bytes decoded.
fn quoted_printable(body: &str) -> String {
    let joined = body.replace("=\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'=', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn a_failure_is_mailed_over_starttls_with_credentials_from_the_environment() {
    let home = Home::new();
    // The first session is turned away: the notifier tries again.
    let (port, mails) = smtp_sink(1);
    home.write_dag(
        "mailing",
        r#"id: mailing
tasks:
  - id: load
    kind: shell
    with: { command: "echo 'loading; token=abc123'; echo 'disk full' >&2; exit 1" }
    on_failure:
      - email: { to: [oncall@example.com, "Data Team <data@example.com>"] }
"#,
    );
    let out = home
        .command(&["run", "mailing"])
        .env("ORCH_SMTP_URL", format!("smtp://127.0.0.1:{port}"))
        .env("ORCH_SMTP_CA_FILE", fixture("ca.pem"))
        .env("ORCH_SMTP_USERNAME", "alerts")
        .env("ORCH_SMTP_PASSWORD", "mail-pass-913")
        .env("ORCH_SMTP_FROM", "orch@example.com")
        .output()
        .expect("orch run");
    assert!(!out.status.success(), "the run fails as its task does");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("alert not sent; trying again"), "{stderr}");
    assert!(!stderr.contains("mail-pass-913"), "{stderr}");
    let mail = mails
        .recv_timeout(Duration::from_secs(5))
        .expect("a mail, sent before `orch run` returned");
    assert_eq!(
        mail.login,
        Some(("alerts".to_string(), "mail-pass-913".to_string()))
    );
    assert_eq!(
        mail.recipients,
        ["<oncall@example.com>", "<data@example.com>"]
    );
    let (headers, body) = mail.data.split_once("\n\n").expect("headers and body");
    let headers = headers.replace("\n ", " ");
    assert!(headers.contains("From: orch@example.com"), "{headers}");
    assert!(
        headers.contains("Subject: orch: task `load` of run `mailing__manual__"),
        "{headers}"
    );
    let body = quoted_printable(body);
    assert!(body.contains("state: failed"), "{body}");
    assert!(
        body.contains("error:\ncommand exited with status 1: disk full"),
        "{body}"
    );
    assert!(
        body.contains("loading; token=***"),
        "the log's end, masked: {body}"
    );
    assert!(!mail.data.contains("abc123"), "secrets are masked");
}

#[test]
fn mail_is_not_sent_in_clear_or_to_a_server_it_cannot_trust() {
    let home = Home::new();
    let (port, mails) = smtp_sink(0);
    home.write_dag(
        "mailing",
        "id: mailing\ntasks:\n  - id: t\n    kind: shell\n    with: { command: \"exit 1\" }\n    on_failure:\n      - email: { to: oncall@example.com }\n",
    );
    // Without the test CA, the sink's certificate is refused: nothing is handed over.
    let out = home
        .command(&["run", "mailing"])
        .env("ORCH_SMTP_URL", format!("smtp://127.0.0.1:{port}"))
        .output()
        .expect("orch run");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("alert not sent; giving up"), "{stderr}");
    assert!(mails.recv_timeout(Duration::from_millis(500)).is_err());
    // A URL that asks for no TLS is refused before any connection.
    let out = home
        .command(&["run", "mailing"])
        .env("ORCH_SMTP_URL", format!("http://127.0.0.1:{port}"))
        .output()
        .expect("orch run");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("the scheme must be smtp (STARTTLS) or smtps"),
        "{stderr}"
    );

    // A bad address fails the file's validation, with its place.
    home.write_dag(
        "bad",
        "tasks:\n  - id: t\n    kind: noop\n    on_failure:\n      - email: { to: \"not an address\" }\n",
    );
    let out = home.orch(&["dags", "validate"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("bad.yaml:") && err.contains("`not an address`"),
        "{err}"
    );
}
