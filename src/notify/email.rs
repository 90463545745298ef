//! `email`: the event as a plain-text mail, sent through the SMTP server the environment
//! names, over TLS.
//!
//! The server and its credentials come from orch's environment, not from DAG files, as
//! Airflow's `[smtp]` settings do: a DAG says only who is told.
//! - `ORCH_SMTP_URL`: `smtp://HOST[:PORT]` (STARTTLS, required; port 587 by default) or
//!   `smtps://HOST[:PORT]` (TLS from the first byte; port 465). Mail never goes in clear.
//! - `ORCH_SMTP_USERNAME` and `ORCH_SMTP_PASSWORD` (or `ORCH_SMTP_PASSWORD_FILE`): credentials,
//!   when the server wants them.
//! - `ORCH_SMTP_FROM`: the sender, `orch@HOST` by default.
//! - `ORCH_SMTP_CA_FILE`: a PEM certificate to trust besides the public roots (a company's
//!   own mail relay).

use std::time::Duration;

use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Deserialize;

use super::Event;

/// How long one delivery may take, connection included.
const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Email {
    /// Who gets it: one address or a list.
    pub to: Recipients,
    /// The subject; the event's one-line summary by default.
    pub subject: Option<String>,
}

/// One address, or several.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Recipients {
    One(String),
    Many(Vec<String>),
}

impl Recipients {
    fn addresses(&self) -> &[String] {
        match self {
            Recipients::One(one) => std::slice::from_ref(one),
            Recipients::Many(many) => many,
        }
    }
}

impl Email {
    pub fn check(&self) -> Result<(), String> {
        let to = self.to.addresses();
        if to.is_empty() {
            return Err("an `email` notifier needs at least one address in `to`".to_string());
        }
        for address in to {
            address
                .parse::<Mailbox>()
                .map_err(|e| format!("email address `{address}`: {e}"))?;
        }
        if let Some(subject) = &self.subject
            && subject.contains(['\r', '\n'])
        {
            return Err("an email `subject` must be one line".to_string());
        }
        Ok(())
    }

    pub async fn send(&self, event: &Event) -> Result<(), String> {
        let server = Server::from_env()?;
        let mut message = Message::builder()
            .from(server.from.clone())
            .subject(self.subject.clone().unwrap_or_else(|| event.summary()))
            .header(ContentType::TEXT_PLAIN);
        for address in self.to.addresses() {
            let mailbox = address
                .parse::<Mailbox>()
                .map_err(|e| format!("email address `{address}`: {e}"))?;
            message = message.to(mailbox);
        }
        let message = message
            .body(body(event))
            .map_err(|e| format!("cannot write the mail: {e}"))?;
        server
            .transport()?
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| format!("{}: {e}", server.describe()))
    }
}

/// The mail's text: the summary, then each fact on its line, the log's end last.
fn body(event: &Event) -> String {
    let mut text = format!("{}\n\n", event.summary());
    let mut line = |name: &str, value: Option<&str>| {
        if let Some(value) = value {
            text.push_str(&format!("{name}: {value}\n"));
        }
    };
    line("event", Some(event.event.as_str()));
    line("DAG", Some(&event.dag_id));
    line("run", Some(&event.run_id));
    line("logical date", Some(&event.logical_date));
    line("task", event.task_id.as_deref());
    line("attempt", event.attempt.map(|a| a.to_string()).as_deref());
    line("state", Some(&event.state));
    line("link", event.link.as_deref());
    if let Some(error) = &event.error {
        text.push_str(&format!("\nerror:\n{error}\n"));
    }
    if let Some(tail) = &event.log_tail {
        text.push_str(&format!("\nend of the log:\n{tail}\n"));
    }
    text
}

/// The SMTP server of the environment.
struct Server {
    host: String,
    port: u16,
    /// TLS from the first byte (`smtps`), else STARTTLS.
    implicit_tls: bool,
    credentials: Option<Credentials>,
    from: Mailbox,
    ca: Option<Certificate>,
}

impl Server {
    fn from_env() -> Result<Server, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let url = var("ORCH_SMTP_URL").ok_or(
            "no mail server: set ORCH_SMTP_URL to smtp://HOST:587 (STARTTLS) or smtps://HOST:465",
        )?;
        let shown = crate::redact::secrets(&url).into_owned();
        let parsed = url::Url::parse(&url).map_err(|e| format!("ORCH_SMTP_URL `{shown}`: {e}"))?;
        let (implicit_tls, default_port) = match parsed.scheme() {
            "smtp" => (false, 587),
            "smtps" => (true, 465),
            other => {
                return Err(format!(
                    "ORCH_SMTP_URL `{shown}`: the scheme must be smtp (STARTTLS) or smtps, not {other}"
                ));
            }
        };
        let host = parsed
            .host_str()
            .ok_or_else(|| format!("ORCH_SMTP_URL `{shown}` has no host"))?
            .to_string();
        let password = match (var("ORCH_SMTP_PASSWORD"), var("ORCH_SMTP_PASSWORD_FILE")) {
            (Some(password), _) => Some(password),
            (None, Some(path)) => Some(
                std::fs::read_to_string(&path)
                    .map_err(|e| format!("ORCH_SMTP_PASSWORD_FILE {path}: {e}"))?
                    .trim_end()
                    .to_string(),
            ),
            (None, None) => None,
        };
        let credentials = match (var("ORCH_SMTP_USERNAME"), password) {
            (Some(user), Some(password)) => Some(Credentials::new(user, password)),
            (Some(_), None) => {
                return Err("ORCH_SMTP_USERNAME is set without ORCH_SMTP_PASSWORD".to_string());
            }
            (None, _) => None,
        };
        let from =
            var("ORCH_SMTP_FROM").unwrap_or_else(|| format!("orch@{}", crate::lease::host_name()));
        let from = from
            .parse::<Mailbox>()
            .map_err(|e| format!("ORCH_SMTP_FROM `{from}`: {e}"))?;
        let ca = match var("ORCH_SMTP_CA_FILE") {
            Some(path) => {
                let pem =
                    std::fs::read(&path).map_err(|e| format!("ORCH_SMTP_CA_FILE {path}: {e}"))?;
                Some(
                    Certificate::from_pem(&pem)
                        .map_err(|e| format!("ORCH_SMTP_CA_FILE {path}: {e}"))?,
                )
            }
            None => None,
        };
        Ok(Server {
            port: parsed.port().unwrap_or(default_port),
            host,
            implicit_tls,
            credentials,
            from,
            ca,
        })
    }

    fn transport(&self) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
        let mut tls = TlsParameters::builder(self.host.clone());
        if let Some(ca) = &self.ca {
            tls = tls.add_root_certificate(ca.clone());
        }
        let tls = tls
            .build_rustls()
            .map_err(|e| format!("{}: {e}", self.describe()))?;
        let tls = if self.implicit_tls {
            Tls::Wrapper(tls)
        } else {
            Tls::Required(tls)
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&self.host)
            .port(self.port)
            .tls(tls)
            .timeout(Some(TIMEOUT));
        if let Some(credentials) = &self.credentials {
            builder = builder.credentials(credentials.clone());
        }
        Ok(builder.build())
    }

    /// The server, for errors: never its credentials.
    fn describe(&self) -> String {
        format!("mail server {}:{}", self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_subjects_are_checked_when_the_file_loads() {
        let ok = Email {
            to: Recipients::Many(vec![
                "oncall@example.com".into(),
                "Data <d@example.com>".into(),
            ]),
            subject: None,
        };
        assert!(ok.check().is_ok());
        let bad = Email {
            to: Recipients::One("not an address".into()),
            subject: None,
        };
        assert!(bad.check().unwrap_err().contains("not an address"));
        let none = Email {
            to: Recipients::Many(Vec::new()),
            subject: None,
        };
        assert!(none.check().is_err());
        let injected = Email {
            to: Recipients::One("a@example.com".into()),
            subject: Some("hi\r\nBcc: x@example.com".into()),
        };
        assert!(injected.check().unwrap_err().contains("one line"));
    }
}
