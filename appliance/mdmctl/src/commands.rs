//! Running each subcommand: local checks, the API calls, and what is printed.

mod abm;
mod backup;
mod lifecycle;
mod profiles;
mod users;

use std::io::Read as _;
use std::path::Path;

use base64::Engine as _;
use bytes::Bytes;
use http::Method;
use serde_json::{json, Map, Value};

use crate::cli::{
    Action, CaCommand, CommandSend, EnrollmentsCommand, KeystoreCommand, LinkCommand, LinkCreate,
    MdmCommand, PushCertCommand, TokensCommand,
};
use crate::client::{encode_query, encode_segment, ApiClient, RequestBody, API_PREFIX};
use crate::error::CliError;
use crate::render;

/// Commands that destroy data on the device and need `--yes`.
const DESTRUCTIVE_COMMANDS: &[&str] = &["EraseDevice"];

/// What a command prints: `stdout` is the result (one value alone where a script wants to
/// capture it), `notes` go to stderr.
#[derive(Debug, Default)]
pub struct Output {
    /// Text for stdout, newline-terminated.
    pub stdout: String,
    /// Bytes for stdout that need not be text (a downloaded profile), written after `stdout`.
    pub binary: Vec<u8>,
    /// Lines for stderr: context and warnings.
    pub notes: Vec<String>,
    /// A failure that still has a result worth printing (an assignment where Apple refused
    /// some of the devices, an import report with row errors): printed after the notes, and
    /// it sets the exit code.
    pub error: Option<CliError>,
}

impl Output {
    fn text(stdout: String) -> Self {
        Output {
            stdout,
            binary: Vec::new(),
            notes: Vec::new(),
            error: None,
        }
    }

    fn line(value: &str) -> Self {
        Output::text(format!("{value}\n"))
    }

    fn json(value: &Value) -> Self {
        // Serialising a `Value` cannot fail; the fallback keeps this total without a panic.
        let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
        Output::text(format!("{text}\n"))
    }

    fn note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }

    fn notes(mut self, notes: impl IntoIterator<Item = String>) -> Self {
        self.notes.extend(notes);
        self
    }

    fn failing(mut self, error: Option<CliError>) -> Self {
        self.error = error;
        self
    }
}

/// Runs `command` against the appliance. `json` selects the API's JSON as output.
pub async fn execute(
    client: &mut ApiClient,
    command: &Action,
    json: bool,
) -> Result<Output, CliError> {
    match command {
        Action::Status => {
            let v = get(client, "/status").await?;
            Ok(if json {
                Output::json(&v)
            } else {
                Output::text(render::status(&v, client.origin()))
            })
        }
        Action::Ca {
            command: CaCommand::Show,
        } => ca_show(client, json).await,
        Action::EnrollLink { command } => enroll_link(client, command, json).await,
        Action::PushCert { command } => push_cert(client, command, json).await,
        Action::Enrollments { command } => enrollments(client, command, json).await,
        Action::Devices { command } => lifecycle::devices(client, command, json).await,
        Action::Release { key } => lifecycle::release(client, key, json).await,
        Action::Preenroll { command } => lifecycle::preenroll(client, command, json).await,
        Action::Activity(args) => lifecycle::activity(client, args, json).await,
        Action::Settings { command } => lifecycle::settings(client, command, json).await,
        Action::Groups { command } => profiles::groups(client, command, json).await,
        Action::Profiles { command } => profiles::profiles(client, command, json).await,
        Action::Command {
            command: MdmCommand::Send(send),
        } => command_send(client, send, json).await,
        Action::Command {
            command: MdmCommand::Show { uuid },
        } => {
            let v = command_with_every_delivery(client, &segment(uuid, "command UUID")?).await?;
            Ok(if json {
                Output::json(&v)
            } else {
                Output::text(render::command(&v))
            })
        }
        Action::Users { command } => users::users(client, command, json).await,
        Action::Tokens { command } => tokens(client, command, json).await,
        Action::Keystore {
            command: KeystoreCommand::Status,
        } => {
            let v = get(client, "/keystore").await?;
            Ok(if json {
                Output::json(&v)
            } else {
                Output::text(render::keystore(&v))
            })
        }
        Action::Keystore {
            command: KeystoreCommand::Rotate,
        } => {
            // A large database takes a while to re-seal; the daemon finishes the rotation even
            // if this call gives up waiting.
            let v = client
                .json_within(
                    Method::POST,
                    &format!("{API_PREFIX}/keystore/rotate"),
                    RequestBody::Empty,
                    std::time::Duration::from_secs(30 * 60),
                )
                .await?;
            Ok(if json {
                Output::json(&v)
            } else {
                Output::text(render::rotation(&v))
            })
        }
        Action::Abm { command } => abm::execute(client, command, json).await,
        Action::Backup { command } => backup::backup(client, command, json).await,
        Action::Push { device } => {
            let path = format!("/enrollments/{}/push", segment(device, "enrollment ID")?);
            let v = send(client, Method::POST, &path, RequestBody::Empty).await?;
            if json {
                return Ok(Output::json(&v));
            }
            let result = v["result"].as_str().unwrap_or("unknown");
            let detail = v["reason"].as_str().or(v["apns_id"].as_str()).unwrap_or("");
            let line = format!("{device}: {result} {detail}")
                .trim_end()
                .to_string();
            if result == "sent" {
                Ok(Output::line(&line))
            } else {
                Err(CliError::Api {
                    status: 200,
                    code: format!("PUSH_{}", result.to_uppercase()),
                    message: line,
                })
            }
        }
    }
}

/// The largest page of deliveries the command view answers.
const DELIVERIES_PER_PAGE: u64 = 1000;

/// `GET /commands/{uuid}`, with the deliveries of every later page added to the first
/// answer's.
async fn command_with_every_delivery(
    client: &mut ApiClient,
    uuid: &str,
) -> Result<Value, CliError> {
    let path = format!("/commands/{uuid}");
    let first = page_query(Some(DELIVERIES_PER_PAGE), None);
    let mut v = get(client, &format!("{path}{}", first.text())).await?;
    if let Some(after) = v["next"].as_str().map(str::to_owned) {
        let rest = pages_of(
            client,
            &path,
            &Query::default(),
            "deliveries",
            Some(DELIVERIES_PER_PAGE),
            Some(&after),
            true,
        )
        .await?;
        if let Some(all) = v["deliveries"].as_array_mut() {
            all.extend(rest.items);
        }
    }
    v["next"] = Value::Null;
    Ok(v)
}

async fn get(client: &mut ApiClient, path: &str) -> Result<Value, CliError> {
    client
        .json(
            Method::GET,
            &format!("{API_PREFIX}{path}"),
            RequestBody::Empty,
        )
        .await
}

async fn send(
    client: &mut ApiClient,
    method: Method,
    path: &str,
    body: RequestBody,
) -> Result<Value, CliError> {
    client
        .json(method, &format!("{API_PREFIX}{path}"), body)
        .await
}

/// An ID for a URL path: refused when empty (it would address the collection instead),
/// percent-encoded otherwise.
fn segment(id: &str, what: &str) -> Result<String, CliError> {
    let id = id.trim();
    if id.is_empty() {
        return Err(CliError::Usage(format!("the {what} must not be empty")));
    }
    Ok(encode_segment(id))
}

/// A string field of a success answer, which the CLI prints alone.
fn required_str<'a>(
    v: &'a Value,
    key: &str,
    client: &ApiClient,
    path: &str,
) -> Result<&'a str, CliError> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| CliError::BadResponse {
            url: format!("{}{API_PREFIX}{path}", client.origin()),
            reason: format!("the answer has no {key:?} field"),
        })
}

async fn ca_show(client: &mut ApiClient, json: bool) -> Result<Output, CliError> {
    let path = format!("{API_PREFIX}/ca");
    let body = client.call(Method::GET, &path, RequestBody::Empty).await?;
    let pem = std::str::from_utf8(&body)
        .ok()
        .filter(|t| t.contains("-----BEGIN CERTIFICATE-----"))
        .ok_or_else(|| CliError::BadResponse {
            url: format!("{}{path}", client.origin()),
            reason: "the answer is not a PEM certificate".into(),
        })?;
    Ok(if json {
        Output::json(&json!({ "pem": pem }))
    } else if pem.ends_with('\n') {
        Output::text(pem.to_owned())
    } else {
        Output::line(pem)
    })
}

async fn enroll_link(
    client: &mut ApiClient,
    command: &LinkCommand,
    json: bool,
) -> Result<Output, CliError> {
    match command {
        LinkCommand::Create(LinkCreate {
            label,
            ttl,
            max_uses,
        }) => {
            // Only what was given is sent, so the appliance's defaults apply to the rest.
            let mut body = Map::new();
            if let Some(label) = label {
                body.insert("label".into(), json!(label));
            }
            if let Some(ttl) = ttl {
                body.insert("ttl_seconds".into(), json!(ttl));
            }
            if let Some(max) = max_uses {
                body.insert("max_uses".into(), json!(max));
            }
            let v = send(
                client,
                Method::POST,
                "/enroll-links",
                RequestBody::Json(Value::Object(body)),
            )
            .await?;
            if json {
                return Ok(Output::json(&v));
            }
            let url = required_str(&v, "url", client, "/enroll-links")?;
            Ok(Output::line(url).note(render::link_created_note(&v)))
        }
        LinkCommand::List => {
            let v = get(client, "/enroll-links").await?;
            Ok(if json {
                Output::json(&v)
            } else {
                Output::text(render::links(&v, time::OffsetDateTime::now_utc()))
            })
        }
        LinkCommand::Revoke { id } => {
            let path = format!("/enroll-links/{}", segment(id, "link ID")?);
            let v = send(client, Method::DELETE, &path, RequestBody::Empty).await?;
            Ok(if json {
                Output::json(&v)
            } else {
                Output::line(&format!("revoked enrollment link {}", id.trim()))
            })
        }
    }
}

fn read_input(path: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|source| CliError::InputFile {
        path: path.to_path_buf(),
        source,
    })
}

/// A file named on the command line, or standard input for `-`.
fn read_named(path: &Path) -> Result<Vec<u8>, CliError> {
    if path != Path::new("-") {
        return read_input(path);
    }
    let mut bytes = Vec::new();
    std::io::stdin()
        .lock()
        .read_to_end(&mut bytes)
        .map_err(|source| CliError::InputFile {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(bytes)
}

async fn push_cert(
    client: &mut ApiClient,
    command: &PushCertCommand,
    json: bool,
) -> Result<Output, CliError> {
    let v = match command {
        PushCertCommand::Import { file, force } => {
            let bytes = read_input(file)?;
            // The appliance sniffs the format itself; the type only documents the request.
            let content_type = if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
                "application/x-pem-file"
            } else {
                "application/pkix-cert"
            };
            let path = if *force {
                "/push-cert?force=true"
            } else {
                "/push-cert"
            };
            let body = RequestBody::Raw {
                content_type,
                bytes: Bytes::from(bytes),
            };
            send(client, Method::PUT, path, body).await?
        }
        PushCertCommand::Show => get(client, "/push-cert").await?,
        PushCertCommand::Csr { out } => {
            let path = format!("{API_PREFIX}/push-cert/csr");
            let body = client.call(Method::POST, &path, RequestBody::Empty).await?;
            let pem = std::str::from_utf8(&body)
                .ok()
                .filter(|t| t.contains("-----BEGIN CERTIFICATE REQUEST-----"))
                .ok_or_else(|| CliError::BadResponse {
                    url: format!("{}{path}", client.origin()),
                    reason: "the answer is not a PEM certificate request".into(),
                })?
                .to_owned();
            return Ok(match out {
                Some(file) => {
                    std::fs::write(file, &pem).map_err(|source| CliError::OutputFile {
                        path: file.clone(),
                        source,
                    })?;
                    Output::line(&format!("push CSR written to {}", file.display()))
                }
                None if json => Output::json(&json!({ "pem": pem })),
                None => Output::text(pem),
            });
        }
    };
    if json {
        return Ok(Output::json(&v));
    }
    let (summary, warning) = render::push_cert(&v);
    let mut out = Output::text(summary);
    if let PushCertCommand::Import { .. } = command {
        out = out.note("push certificate imported");
    }
    if let Some(w) = warning {
        out = out.note(w);
    }
    Ok(out)
}

/// A query string made of the options given, each value percent-encoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Query(Vec<String>);

impl Query {
    /// Adds `key=value`.
    fn push(&mut self, key: &str, value: &str) -> &mut Self {
        self.0.push(format!("{key}={}", encode_query(value)));
        self
    }

    /// Adds `key=value` when there is a value.
    fn opt(&mut self, key: &str, value: Option<impl std::fmt::Display>) -> &mut Self {
        if let Some(v) = value {
            self.push(key, &v.to_string());
        }
        self
    }

    /// Adds `key=v1,v2,...` (each value encoded, the commas kept) when the list has any.
    fn list(&mut self, key: &str, values: &[&str]) -> &mut Self {
        if !values.is_empty() {
            let joined: Vec<String> = values.iter().map(|v| encode_query(v)).collect();
            self.0.push(format!("{key}={}", joined.join(",")));
        }
        self
    }

    /// `?a=1&b=2`, or nothing.
    fn text(&self) -> String {
        if self.0.is_empty() {
            String::new()
        } else {
            format!("?{}", self.0.join("&"))
        }
    }
}

fn page_query(limit: Option<u64>, after: Option<&str>) -> Query {
    let mut q = Query::default();
    q.opt("limit", limit).opt("after", after);
    q
}

async fn enrollments(
    client: &mut ApiClient,
    command: &EnrollmentsCommand,
    json: bool,
) -> Result<Output, CliError> {
    match command {
        EnrollmentsCommand::List { limit, after, all } => {
            let page = list_pages(
                client,
                "/enrollments",
                &Query::default(),
                *limit,
                after.as_deref(),
                *all,
            )
            .await?;
            if json {
                return Ok(Output::json(
                    &json!({ "items": page.items, "next": page.next }),
                ));
            }
            let mut out = Output::text(render::enrollments(&page.items));
            if let Some(next) = page.next {
                out = out.note(format!(
                    "more enrollments follow: add --after {} (or --all)",
                    crate::table::clean(&next)
                ));
            }
            Ok(out)
        }
        EnrollmentsCommand::Show { id } => {
            let v = get(
                client,
                &format!("/enrollments/{}", segment(id, "enrollment ID")?),
            )
            .await?;
            Ok(if json {
                Output::json(&v)
            } else {
                Output::text(render::enrollment(&v))
            })
        }
        EnrollmentsCommand::Commands { id, limit } => {
            let path = format!(
                "/enrollments/{}/commands{}",
                segment(id, "enrollment ID")?,
                page_query(*limit, None).text()
            );
            let v = get(client, &path).await?;
            Ok(if json {
                Output::json(&v)
            } else {
                Output::text(render::deliveries(&v))
            })
        }
    }
}

/// Pages of a collection, gathered.
#[derive(Debug, Default)]
struct Pages {
    /// The items of every page fetched, in order.
    items: Vec<Value>,
    /// The cursor for the page after the last one fetched.
    next: Option<String>,
    /// How many items match in all, for collections that say (`total`).
    total: Option<u64>,
}

/// One page of a paged collection (`/enrollments`, `/devices`, `/abm/NAME/devices`), or every
/// page with `all`. `base` holds the collection's filters; the paging options follow them.
async fn list_pages(
    client: &mut ApiClient,
    collection: &str,
    base: &Query,
    limit: Option<u64>,
    after: Option<&str>,
    all: bool,
) -> Result<Pages, CliError> {
    pages_of(client, collection, base, "items", limit, after, all).await
}

/// [`list_pages`] for an answer whose page is in the list `key`.
async fn pages_of(
    client: &mut ApiClient,
    collection: &str,
    base: &Query,
    key: &str,
    limit: Option<u64>,
    after: Option<&str>,
    all: bool,
) -> Result<Pages, CliError> {
    let mut pages = Pages::default();
    let mut after = after.map(str::to_owned);
    loop {
        let mut query = base.clone();
        query.opt("limit", limit).opt("after", after.as_deref());
        let path = format!("{collection}{}", query.text());
        let page = get(client, &path).await?;
        let page_items =
            page.get(key)
                .and_then(Value::as_array)
                .ok_or_else(|| CliError::BadResponse {
                    url: format!("{}{API_PREFIX}{path}", client.origin()),
                    reason: format!("the answer has no \"{key}\" list"),
                })?;
        pages.items.extend(page_items.iter().cloned());
        // The count can move while paging; the last page's is the freshest.
        pages.total = page.get("total").and_then(Value::as_u64).or(pages.total);
        let next = page.get("next").and_then(Value::as_str).map(str::to_owned);
        if !all || next.is_none() {
            pages.next = next;
            return Ok(pages);
        }
        // A cursor that does not move would page forever.
        if next == after || page_items.is_empty() {
            return Err(CliError::BadResponse {
                url: format!("{}{API_PREFIX}{path}", client.origin()),
                reason: "paging did not advance".into(),
            });
        }
        after = next;
    }
}

/// Checks a `--plist` file locally (so a typo fails before anything is queued) and returns
/// its RequestType. The appliance does the full validation.
fn command_plist_type(path: &Path, bytes: &[u8]) -> Result<String, CliError> {
    let bad = |reason: String| CliError::CommandPlist {
        path: path.to_path_buf(),
        reason,
    };
    let value =
        plist::Value::from_reader(std::io::Cursor::new(bytes)).map_err(|e| bad(e.to_string()))?;
    let request_type = value
        .as_dictionary()
        .ok_or_else(|| bad("the top level is not a dictionary".into()))?
        .get("Command")
        .and_then(plist::Value::as_dictionary)
        .ok_or_else(|| bad("it has no Command dictionary".into()))?
        .get("RequestType")
        .and_then(plist::Value::as_string)
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| bad("Command has no RequestType string".into()))?;
    Ok(request_type.to_owned())
}

/// Refuses a destructive command unless `--yes` was given.
fn confirm(request_type: &str, devices: &[String], yes: bool) -> Result<(), CliError> {
    let destructive = DESTRUCTIVE_COMMANDS
        .iter()
        .any(|d| d.eq_ignore_ascii_case(request_type.trim()));
    if destructive && !yes {
        return Err(CliError::NotConfirmed {
            request_type: request_type.trim().to_owned(),
            targets: devices.join(", "),
        });
    }
    Ok(())
}

/// The request body of `command send`, built and checked without the network.
fn command_request(send: &CommandSend) -> Result<Value, CliError> {
    let devices: Vec<String> = send.devices.iter().map(|d| d.trim().to_owned()).collect();
    if devices.iter().any(String::is_empty) {
        return Err(CliError::Usage(
            "--device needs an enrollment ID, not an empty value".into(),
        ));
    }
    match (&send.request_type, &send.plist) {
        (Some(request_type), None) => {
            confirm(request_type, &devices, send.yes)?;
            Ok(json!({ "targets": devices, "request_type": request_type.trim() }))
        }
        (None, Some(path)) => {
            let bytes = read_input(path)?;
            let request_type = command_plist_type(path, &bytes)?;
            confirm(&request_type, &devices, send.yes)?;
            // The file goes as written: re-serialising could change what the admin reviewed.
            let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes);
            Ok(json!({ "targets": devices, "plist_base64": encoded }))
        }
        // clap's argument group makes these unreachable; kept as an error, not a panic.
        _ => Err(CliError::Usage(
            "give either a command TYPE or --plist FILE".into(),
        )),
    }
}

async fn command_send(
    client: &mut ApiClient,
    send_args: &CommandSend,
    json: bool,
) -> Result<Output, CliError> {
    let body = command_request(send_args)?;
    let v = send(client, Method::POST, "/commands", RequestBody::Json(body)).await?;
    if json {
        return Ok(Output::json(&v));
    }
    let uuid = required_str(&v, "command_uuid", client, "/commands")?;
    let mut out = Output::line(uuid);
    out.notes = render::command_queued_notes(&v);
    Ok(out)
}

async fn tokens(
    client: &mut ApiClient,
    command: &TokensCommand,
    json: bool,
) -> Result<Output, CliError> {
    match command {
        TokensCommand::Create { name, role } => {
            let body = json!({ "name": name, "role": role.api_name() });
            let v = send(client, Method::POST, "/tokens", RequestBody::Json(body)).await?;
            if json {
                return Ok(Output::json(&v));
            }
            let token = required_str(&v, "token", client, "/tokens")?;
            Ok(Output::line(token).note(format!(
                "token for {} ({}) created; it is shown only this once, so store it now",
                crate::table::clean(name),
                role.api_name().to_lowercase()
            )))
        }
        TokensCommand::List => {
            let v = get(client, "/tokens").await?;
            Ok(if json {
                Output::json(&v)
            } else {
                Output::text(render::tokens(&v))
            })
        }
        TokensCommand::Revoke { id } => {
            let path = format!("/tokens/{}", segment(id, "token ID")?);
            let v = send(client, Method::DELETE, &path, RequestBody::Empty).await?;
            Ok(if json {
                Output::json(&v)
            } else {
                Output::line(&format!(
                    "token {} ({}) revoked",
                    id,
                    v["name"].as_str().unwrap_or("?")
                ))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn send_args(
        devices: &[&str],
        request_type: Option<&str>,
        plist: Option<PathBuf>,
        yes: bool,
    ) -> CommandSend {
        CommandSend {
            devices: devices.iter().map(|d| (*d).to_owned()).collect(),
            request_type: request_type.map(str::to_owned),
            plist,
            yes,
        }
    }

    #[test]
    fn typed_commands_become_request_type_bodies() {
        let body = command_request(&send_args(
            &["A", " B "],
            Some("DeviceInformation"),
            None,
            false,
        ))
        .expect("body");
        assert_eq!(
            body,
            json!({"targets": ["A", "B"], "request_type": "DeviceInformation"})
        );
        assert!(matches!(
            command_request(&send_args(&[""], Some("ProfileList"), None, false)),
            Err(CliError::Usage(_))
        ));
    }

    #[test]
    fn erasing_needs_yes() {
        let err = command_request(&send_args(&["A", "B"], Some("erasedevice"), None, false))
            .expect_err("no --yes");
        assert!(matches!(err, CliError::NotConfirmed { .. }));
        assert!(err.to_string().contains("A, B"), "{err}");
        assert_eq!(err.exit_code(), 2);
        assert!(command_request(&send_args(&["A"], Some("EraseDevice"), None, true)).is_ok());
    }

    #[test]
    fn plist_files_are_checked_and_sent_verbatim() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = dir.path().join("lock.plist");
        let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<plist version=\"1.0\"><dict>\
                   <key>Command</key><dict><key>RequestType</key><string>DeviceLock</string>\
                   <key>Message</key><string>Call IT</string></dict></dict></plist>\n";
        std::fs::write(&good, xml).expect("write");
        let body = command_request(&send_args(&["A"], None, Some(good), false)).expect("body");
        let sent = body["plist_base64"].as_str().expect("base64");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(sent)
            .expect("decode");
        assert_eq!(decoded, xml.as_bytes());
        assert_eq!(body["targets"], json!(["A"]));
        assert!(body.get("request_type").is_none());

        let erase = dir.path().join("erase.plist");
        std::fs::write(
            &erase,
            "<plist version=\"1.0\"><dict><key>Command</key><dict><key>RequestType</key>\
             <string>EraseDevice</string></dict></dict></plist>",
        )
        .expect("write");
        assert!(matches!(
            command_request(&send_args(&["A"], None, Some(erase), false)),
            Err(CliError::NotConfirmed { .. })
        ));

        for (name, text, expect) in [
            ("junk.plist", "not a plist", ""),
            (
                "array.plist",
                "<plist version=\"1.0\"><array/></plist>",
                "not a dictionary",
            ),
            (
                "nocmd.plist",
                "<plist version=\"1.0\"><dict/></plist>",
                "no Command",
            ),
            (
                "notype.plist",
                "<plist version=\"1.0\"><dict><key>Command</key><dict/></dict></plist>",
                "no RequestType",
            ),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            let err = command_request(&send_args(&["A"], None, Some(path), false)).expect_err(name);
            assert!(
                matches!(err, CliError::CommandPlist { .. }),
                "{name}: {err:?}"
            );
            assert!(err.to_string().contains(expect), "{name}: {err}");
        }
        let missing = command_request(&send_args(
            &["A"],
            None,
            Some(dir.path().join("none")),
            false,
        ));
        assert!(matches!(missing, Err(CliError::InputFile { .. })));
    }

    #[test]
    fn queries_and_segments() {
        assert_eq!(page_query(None, None).text(), "");
        assert_eq!(
            page_query(Some(10), Some("U:1")).text(),
            "?limit=10&after=U%3A1"
        );
        let mut q = Query::default();
        q.list("status", &["offline", "a b"])
            .list("empty", &[])
            .opt("search", Some("x&y=z"))
            .opt("missing", None::<u64>)
            .push("order", "desc");
        assert_eq!(
            q.text(),
            "?status=offline,a%20b&search=x%26y%3Dz&order=desc"
        );
        assert_eq!(segment(" L1 ", "link ID").expect("id"), "L1");
        assert!(matches!(segment("  ", "link ID"), Err(CliError::Usage(_))));
    }

    #[test]
    fn json_output_is_pretty_and_newline_terminated() {
        let out = Output::json(&json!({"a": 1}));
        assert_eq!(out.stdout, "{\n  \"a\": 1\n}\n");
        assert!(out.notes.is_empty());
    }
}
