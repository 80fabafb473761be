//! What the Setup Assistant web view does with the `configuration_web_url` page: show HTML,
//! let the person fill in a form and submit it, and install what comes back once it is an
//! enrollment profile (`application/x-apple-aspen-config`).
//!
//! The form reading is a browser's, reduced to what an enrollment page needs: the first
//! `<form>`'s `action` and its `<input>` fields with their `name`, `type` and `value`.

use crate::http::HttpResponse;

/// The content type Setup Assistant installs as a profile.
pub const PROFILE_CONTENT_TYPE: &str = "application/x-apple-aspen-config";

/// What the web view shows after a request.
#[derive(Debug, Clone)]
pub enum WebView {
    /// An enrollment profile: Setup Assistant installs it.
    Profile(Vec<u8>),
    /// A page: its status and HTML.
    Page { status: u16, html: String },
}

impl WebView {
    pub(crate) fn from_response(resp: HttpResponse) -> Self {
        let ct = resp
            .headers
            .get(::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase();
        if resp.is_success() && ct.starts_with(PROFILE_CONTENT_TYPE) {
            WebView::Profile(resp.body.to_vec())
        } else {
            WebView::Page {
                status: resp.status,
                html: String::from_utf8_lossy(&resp.body).into_owned(),
            }
        }
    }
}

/// One input of a form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    pub name: String,
    pub kind: String,
    pub value: String,
}

/// The first form of a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Form {
    pub action: String,
    pub method: String,
    pub inputs: Vec<Input>,
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// The value of attribute `name` in a tag's text (double- or single-quoted).
fn attr(tag: &str, name: &str) -> Option<String> {
    let lower = tag.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find(name) {
        let at = from + i;
        from = at + name.len();
        let before_ok = at == 0 || lower.as_bytes()[at - 1].is_ascii_whitespace();
        let rest = lower[from..].trim_start();
        if !before_ok || !rest.starts_with('=') {
            continue;
        }
        let offset = tag.len() - rest.len() + 1;
        let value = tag[offset..].trim_start();
        let quote = value.chars().next()?;
        if quote == '"' || quote == '\'' {
            let end = value[1..].find(quote)?;
            return Some(unescape(&value[1..=end]));
        }
        let end = value
            .find(|c: char| c.is_ascii_whitespace() || c == '>')
            .unwrap_or(value.len());
        return Some(unescape(&value[..end]));
    }
    None
}

/// The page's first form, if it has one.
pub fn first_form(html: &str) -> Option<Form> {
    let lower = html.to_ascii_lowercase();
    let start = lower.find("<form")?;
    let end = lower[start..]
        .find("</form>")
        .map_or(html.len(), |e| start + e);
    let open_end = start + lower[start..].find('>')?;
    let form_tag = &html[start..open_end];
    let mut inputs = Vec::new();
    let mut pos = open_end;
    while let Some(i) = lower[pos..end].find("<input") {
        let s = pos + i;
        let e = s + lower[s..end].find('>')?;
        let tag = &html[s..e];
        if let Some(name) = attr(tag, "name") {
            inputs.push(Input {
                name,
                kind: attr(tag, "type").unwrap_or_else(|| "text".into()),
                value: attr(tag, "value").unwrap_or_default(),
            });
        }
        pos = e;
    }
    Some(Form {
        action: attr(form_tag, "action").unwrap_or_default(),
        method: attr(form_tag, "method").unwrap_or_else(|| "get".into()),
        inputs,
    })
}

/// The text of the page without its tags (what a person reads), whitespace collapsed.
pub fn visible_text(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    let body = html
        .find("</style>")
        .map_or(html, |i| &html[i + "</style>".len()..]);
    for c in body.chars() {
        match c {
            '<' => {
                in_tag = true;
                out.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    unescape(&out.split_whitespace().collect::<Vec<_>>().join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_forms_like_a_browser() {
        let html = r#"<html><style>p{}</style><p>Hello &amp; welcome</p>
            <FORM method="post" action='/mdm/enroll/sign-in'>
            <input type="hidden" name="session" value="a&quot;b">
            <input id=u name=username>
            <input name="password" type="password" required></form>"#;
        let f = first_form(html).unwrap();
        assert_eq!(f.action, "/mdm/enroll/sign-in");
        assert_eq!(f.method, "post");
        assert_eq!(f.inputs.len(), 3);
        assert_eq!(f.inputs[0].value, "a\"b");
        assert_eq!(f.inputs[1].name, "username");
        assert_eq!(f.inputs[1].kind, "text");
        assert_eq!(f.inputs[2].kind, "password");
        assert!(visible_text(html).starts_with("Hello & welcome"));
        assert!(first_form("<p>no form</p>").is_none());
    }
}
