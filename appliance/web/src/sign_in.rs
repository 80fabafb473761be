//! The Setup Assistant sign-in page (`configuration_web_url` with user authentication).
//!
//! One self-contained HTML page: no scripts, no external resources, a strict
//! Content-Security-Policy, never cached. Its form posts to [`FORM_PATH`] with the sign-in
//! token the service handed out; the answer is either the enrollment profile (Setup Assistant
//! installs it) or the page again with a message.

use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use mdm_service::accounts::setup::SignInPage;

use crate::respond::{status_for, with_body, Resp};

/// Where the sign-in form posts.
pub const FORM_PATH: &str = "/mdm/enroll/sign-in";
/// Largest form body accepted (token, name, password and their encoding).
pub const MAX_FORM: usize = 8 * 1024;

/// Escapes text for HTML element content and double-quoted attributes.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
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

const STYLE: &str =
    "body{font-family:-apple-system,system-ui,sans-serif;margin:0;padding:2em 1.5em;\
background:#f5f5f7;color:#1d1d1f}main{max-width:26em;margin:0 auto}h1{font-size:1.5em;\
font-weight:600}p{line-height:1.4}.msg{background:#fff3f3;border:1px solid #e0b4b4;\
border-radius:.5em;padding:.75em}label{display:block;margin:1em 0 .3em}input{box-sizing:\
border-box;width:100%;font-size:1.1em;padding:.6em;border:1px solid #c7c7cc;border-radius:.5em}\
button{margin-top:1.5em;width:100%;font-size:1.1em;padding:.7em;border:0;border-radius:.5em;\
background:#0071e3;color:#fff}.small{color:#6e6e73;font-size:.85em}";

/// The page's HTML.
pub fn render(page: &SignInPage) -> String {
    let org = esc(&page.organization);
    let mut html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<title>Sign in to enroll with {org}</title><style>{STYLE}</style></head><body><main>\
<h1>Sign in to {org}</h1>"
    );
    if let Some(m) = &page.message {
        html.push_str(&format!("<p class=\"msg\" role=\"alert\">{}</p>", esc(m)));
    }
    match &page.session {
        Some(token) => {
            html.push_str(&format!(
                "<p>Sign in with the account your IT administrator gave you. This device will be \
managed by {org} for you.</p>\
<form method=\"post\" action=\"{FORM_PATH}\" autocomplete=\"off\">\
<input type=\"hidden\" name=\"session\" value=\"{}\">\
<label for=\"username\">Username</label>\
<input id=\"username\" name=\"username\" autocapitalize=\"none\" autocorrect=\"off\" \
spellcheck=\"false\" required maxlength=\"64\">\
<label for=\"password\">Password</label>\
<input id=\"password\" name=\"password\" type=\"password\" required maxlength=\"256\">\
<button type=\"submit\">Sign in and enroll</button></form>",
                esc(token)
            ));
        }
        None => html.push_str("<p>Go back to restart the enrollment.</p>"),
    }
    if !page.serial.is_empty() {
        html.push_str(&format!(
            "<p class=\"small\">Serial number {}</p>",
            esc(&page.serial)
        ));
    }
    html.push_str("</main></body></html>\n");
    html
}

/// The page as a response, with the headers a credential form needs.
pub fn respond(status: StatusCode, page: &SignInPage) -> Resp {
    let mut resp = with_body(
        status,
        "text/html; charset=utf-8",
        Bytes::from(render(page)),
    );
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

/// A refused sign-in: the page again, with the status of its class.
pub fn refusal(r: &mdm_service::accounts::setup::SignInRefusal) -> Resp {
    tracing::info!(code = r.code, "Setup Assistant sign-in refused");
    respond(status_for(r.kind), &r.page)
}

/// The posted form: `session`, `username`, `password` (each once).
#[derive(Debug)]
pub struct Form {
    pub session: String,
    pub username: String,
    pub password: mdm_service::accounts::Password,
}

/// Parses `application/x-www-form-urlencoded`. `None` when a field is missing or repeated.
pub fn parse_form(body: &[u8]) -> Option<Form> {
    let (mut session, mut username, mut password) = (None, None, None);
    for (k, v) in form_urlencoded::parse(body) {
        let slot = match k.as_ref() {
            "session" => &mut session,
            "username" => &mut username,
            "password" => &mut password,
            _ => continue,
        };
        if slot.replace(v.into_owned()).is_some() {
            return None;
        }
    }
    Some(Form {
        session: session?,
        username: username?,
        password: mdm_service::accounts::Password::new(password?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(message: Option<&str>, session: Option<&str>) -> SignInPage {
        SignInPage {
            session: session.map(str::to_owned),
            organization: "Example <School>".into(),
            serial: "C02ABC".into(),
            message: message.map(str::to_owned),
        }
    }

    #[test]
    fn escapes_everything_shown() {
        let html = render(&page(Some("bad \"x\" & <y>"), Some("tok\"en")));
        assert!(html.contains("Example &lt;School&gt;"));
        assert!(html.contains("bad &quot;x&quot; &amp; &lt;y&gt;"));
        assert!(html.contains("value=\"tok&quot;en\""));
        assert!(!html.contains("<School>"));
        assert!(html.contains(FORM_PATH));
    }

    #[test]
    fn no_form_without_a_session() {
        let html = render(&page(Some("expired"), None));
        assert!(!html.contains("<form"));
        assert!(html.contains("restart"));
    }

    #[test]
    fn forms_need_each_field_once() {
        let f = parse_form(b"session=abc&username=Alice&password=p%26ss+word").unwrap();
        assert_eq!(f.session, "abc");
        assert_eq!(f.username, "Alice");
        assert!(parse_form(b"session=abc&username=a").is_none());
        assert!(parse_form(b"session=a&session=b&username=a&password=b").is_none());
    }
}
