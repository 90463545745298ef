//! Who may use the web face, and how a request proves it.
//!
//! - No token configured: the server listens on loopback only ([`super::check_exposure`]),
//!   and answers only requests addressed to a loopback name, so a web page elsewhere cannot
//!   reach it through DNS rebinding.
//! - A token configured: the API takes `Authorization: Bearer TOKEN`; people sign in with the
//!   token on `/login`, which sets an HttpOnly, SameSite=Strict session cookie.
//! - Every request that changes something, but a bearer one, carries the `X-CSRF-Token`
//!   header equal to the `orch_csrf` cookie (bound to the session when there is one): a page
//!   of another site can neither read that cookie nor send that header.
//!
//! Tokens and CSRF values are compared in constant time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Form, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use base64::Engine;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::WebState;
use crate::config::Secret;
use crate::store::Actor;

const SESSION_COOKIE: &str = "orch_session";
const CSRF_COOKIE: &str = "orch_csrf";
const CSRF_HEADER: &str = "x-csrf-token";
/// How long a sign-in lasts.
const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// The signed-in sessions of this server (lost on restart: people sign in again).
pub struct Sessions {
    token: Option<Secret>,
    open: Mutex<HashMap<String, Session>>,
}

#[derive(Clone)]
struct Session {
    user: String,
    csrf: String,
    expires: Instant,
}

/// Who sent a request, as the handlers record it.
#[derive(Clone, Debug)]
pub struct Caller(pub Actor);

impl Sessions {
    pub fn new(token: Option<Secret>) -> Sessions {
        Sessions {
            token,
            open: Mutex::new(HashMap::new()),
        }
    }

    fn token_matches(&self, given: &str) -> bool {
        self.token
            .as_ref()
            .is_some_and(|t| bool::from(t.expose().as_bytes().ct_eq(given.as_bytes())))
    }

    fn open(&self, user: String) -> (String, Session) {
        let session = Session {
            user,
            csrf: random_token(),
            expires: Instant::now() + SESSION_LIFETIME,
        };
        let id = random_token();
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        open.retain(|_, s| s.expires > now);
        open.insert(id.clone(), session.clone());
        (id, session)
    }

    fn get(&self, id: &str) -> Option<Session> {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(id).filter(|s| s.expires > Instant::now()).cloned()
    }

    fn close(&self, id: &str) {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }
}

/// 32 random bytes, URL-safe base64.
fn random_token() -> String {
    let mut bytes = [0_u8; 32];
    // The system's random source failing is not something a request can recover from; a
    // fixed value would be worse than none, so fall back to the thread's CSPRNG.
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn same(a: &str, b: &str) -> bool {
    !a.is_empty() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Whether the request's Host names this machine's loopback, as a browser on it would.
fn addressed_to_loopback(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        // HTTP/1.0 clients without Host: only a local tool would send such a thing.
        return true;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn is_api(path: &str) -> bool {
    path.starts_with("/api/") || path == "/metrics"
}

fn unauthorized(path: &str) -> Response {
    if is_api(path) {
        let body = serde_json::json!({
            "error": "sign in, or send Authorization: Bearer TOKEN"
        });
        let mut response = (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"orch\""),
        );
        response
    } else {
        let next = urlencode(path);
        Redirect::to(&format!("/login?next={next}")).into_response()
    }
}

fn forbidden(message: &'static str) -> Response {
    (
        StatusCode::FORBIDDEN,
        axum::Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}

const CSRF_MISSING: &str = "missing or wrong X-CSRF-Token header: send the value of the orch_csrf cookie (or use Authorization: Bearer)";

/// Decides every request but `/healthz`: lets it through with its [`Caller`], or answers it.
pub async fn guard(
    State(state): State<WebState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_string();
    let headers = request.headers();
    let changes = !matches!(*request.method(), Method::GET | Method::HEAD);
    let sessions = &state.sessions;
    let source = peer.to_string();
    let mut set_csrf = None;
    let caller = if sessions.token.is_none() {
        if !addressed_to_loopback(headers) {
            return forbidden(
                "this server answers requests to localhost only; set a token to serve other names",
            );
        }
        let csrf = cookie(headers, CSRF_COOKIE);
        if changes && path != "/login" {
            let sent = headers.get(CSRF_HEADER).and_then(|h| h.to_str().ok());
            if !matches!((csrf, sent), (Some(c), Some(s)) if same(c, s)) {
                return forbidden(CSRF_MISSING);
            }
        }
        if csrf.is_none() {
            set_csrf = Some(random_token());
        }
        Caller(Actor {
            name: "local".to_string(),
            source,
        })
    } else if let Some(given) = bearer(headers) {
        if !sessions.token_matches(given) {
            return unauthorized(&path);
        }
        Caller(Actor {
            name: "api".to_string(),
            source,
        })
    } else if let Some(session) = cookie(headers, SESSION_COOKIE).and_then(|id| sessions.get(id)) {
        if changes && path != "/login" {
            let sent = headers.get(CSRF_HEADER).and_then(|h| h.to_str().ok());
            if !sent.is_some_and(|s| same(&session.csrf, s)) {
                return forbidden(CSRF_MISSING);
            }
        }
        Caller(Actor {
            name: session.user,
            source,
        })
    } else if path == "/login" || path.starts_with("/assets/") {
        Caller(Actor {
            name: "anonymous".to_string(),
            source,
        })
    } else {
        return unauthorized(&path);
    };
    request.extensions_mut().insert(caller);
    let mut response = next.run(request).await;
    if let Some(csrf) = set_csrf
        && let Ok(value) =
            HeaderValue::from_str(&format!("{CSRF_COOKIE}={csrf}; Path=/; SameSite=Strict"))
    {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

#[derive(Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    token: String,
    next: Option<String>,
}

/// Where to go after signing in: a path of this site only, never another site.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        // No control characters: a CR/LF would split the `Location` header.
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.contains('\\')
                && !n.chars().any(char::is_control) =>
        {
            n
        }
        _ => "/",
    }
}

pub async fn login_page(State(state): State<WebState>, Query(q): Query<LoginQuery>) -> Response {
    if state.sessions.token.is_none() {
        return Redirect::to("/").into_response();
    }
    login_form(safe_next(q.next.as_deref()), None).into_response()
}

pub async fn login(
    State(state): State<WebState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if state.sessions.token.is_none() {
        return Redirect::to("/").into_response();
    }
    // A sign-in posted from another site's page (login CSRF) is refused.
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
        if origin != "null" && origin_host != host {
            return forbidden("sign-in from another site refused");
        }
    }
    let next = safe_next(form.next.as_deref()).to_string();
    if !state.sessions.token_matches(form.token.trim()) {
        tracing::warn!(%peer, "web sign-in with a wrong token");
        let mut page = login_form(&next, Some("Wrong token.")).into_response();
        *page.status_mut() = StatusCode::UNAUTHORIZED;
        return page;
    }
    let user = match form.name.trim() {
        "" => "web".to_string(),
        name => name.chars().take(64).collect(),
    };
    tracing::info!(%peer, user, "web sign-in");
    let (id, session) = state.sessions.open(user);
    let mut response = Redirect::to(&next).into_response();
    for cookie in [
        format!("{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict"),
        format!("{CSRF_COOKIE}={}; Path=/; SameSite=Strict", session.csrf),
    ] {
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

pub async fn logout(State(state): State<WebState>, headers: HeaderMap) -> Response {
    if let Some(id) = cookie(&headers, SESSION_COOKIE) {
        state.sessions.close(id);
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    for name in [SESSION_COOKIE, CSRF_COOKIE] {
        if let Ok(value) =
            HeaderValue::from_str(&format!("{name}=; Path=/; Max-Age=0; SameSite=Strict"))
        {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

/// The sign-in page; `next` is escaped, the only text in it that came from a request.
fn login_form(next: &str, error: Option<&str>) -> Html<String> {
    let error = error
        .map(|e| format!("<p class=\"error\">{}</p>", escape_html(e)))
        .unwrap_or_default();
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>orch: sign in</title>\
         <link rel=\"stylesheet\" href=\"/assets/app.css\"></head><body><main class=\"login\">\
         <h1>orch</h1>{error}<form method=\"post\" action=\"/login\">\
         <label>Your name <input name=\"name\" autocomplete=\"username\"></label>\
         <label>Token <input name=\"token\" type=\"password\" autocomplete=\"current-password\" required></label>\
         <input type=\"hidden\" name=\"next\" value=\"{}\">\
         <button type=\"submit\">Sign in</button></form></main></body></html>",
        escape_html(next)
    ))
}

fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_of_this_site_are_followed_after_sign_in() {
        assert_eq!(safe_next(Some("/dags/x")), "/dags/x");
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(Some("/\\evil.example")), "/");
        assert_eq!(safe_next(None), "/");
        assert_eq!(safe_next(Some("/runs\r\nSet-Cookie: x=1")), "/");
    }

    #[test]
    fn loopback_names_are_recognised_and_others_are_not() {
        let with_host = |host: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, HeaderValue::from_str(host).expect("header"));
            addressed_to_loopback(&headers)
        };
        assert!(with_host("127.0.0.1:8080"));
        assert!(with_host("localhost:8080"));
        assert!(with_host("[::1]:8080"));
        assert!(!with_host("evil.example:8080"));
        assert!(!with_host("192.168.1.5:8080"));
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            escape_html("\"><script>&'"),
            "&quot;&gt;&lt;script&gt;&amp;&#39;"
        );
    }
}
