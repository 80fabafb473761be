//! Validation and summary of configuration profiles (`.mobileconfig`) uploaded by admins.
//!
//! [`parse`] accepts what Apple's tools and Apple Configurator export: an XML or binary
//! property list, or a CMS SignedData (DER or BER) that embeds one. It checks the top-level
//! keys Apple documents for a profile ("TopLevel") and the keys every payload carries
//! ("CommonPayloadKeys"), refuses what cannot work when sent with `InstallProfile` to a group
//! of devices, and returns what the console shows and what `RemoveProfile` later needs (the
//! top-level `PayloadIdentifier`).
//!
//! Not checked here (yet): payload-specific keys (a Wi-Fi payload's SSID, a restriction's
//! value), whether a payload type exists on the targeted platforms, and the signer's trust:
//! sites sign profiles with their own certificates, so a signature only has to be intact.
//! Encrypted profiles (`EncryptedPayloadContent`) and OpenStep ("ASCII") property lists are
//! refused rather than read. Text inside XML CDATA sections reads as empty (a limitation of the
//! `plist` crate); it only matters for the summary, since the uploaded bytes go to devices
//! unchanged. The size of an upload is the caller's to bound.

use std::collections::HashMap;
use std::io::Cursor;
use std::time::SystemTime;

use mdm_pki::{Certificate, PkiError};
use plist::{Dictionary, Value};
use serde::Serialize;

/// The most payloads one profile may carry. Apple sets no number; profiles built by hand or by
/// tools stay far below it, and every payload is stored and shown per device.
pub const MAX_PAYLOADS: usize = 1_000;

/// How deeply arrays and dictionaries may nest. Real profiles stay below ten levels (managed
/// preferences are the deepest). The limit exists because dropping a parsed value recurses
/// once per level: a few hundred kilobytes of `<array>` would otherwise exhaust the stack.
const MAX_NESTING: usize = 64;

/// A binary property list may reference one object many times, and the parser copies it at
/// every reference, so a tiny file can expand to gigabytes. The expansion is bounded by
/// `max(MIN_EXPANSION_BUDGET, EXPANSION_FACTOR * file size)`, in the rough bytes of
/// [`NODE_WEIGHT`] per value plus string and data lengths.
const MIN_EXPANSION_BUDGET: u64 = 64 * 1024 * 1024;
const EXPANSION_FACTOR: u64 = 16;
const NODE_WEIGHT: u64 = 48;

/// `PayloadError::field` for problems with the file as a whole.
const FILE: &str = "(file)";
/// `PayloadError::field` for problems with the CMS signature.
const SIGNATURE: &str = "(signature)";

/// The payload type Apple reserves for the MDM enrollment payload.
const MDM_PAYLOAD_TYPE: &str = "com.apple.mdm";
/// The payload type that makes the device ask for a password before removing the profile.
const REMOVAL_PASSWORD_PAYLOAD_TYPE: &str = "com.apple.profileRemovalPassword";

/// A validated configuration profile: what the console shows and the appliance stores beside
/// the uploaded bytes (which are sent to devices unchanged).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParsedProfile {
    /// Top-level `PayloadIdentifier`: the name `RemoveProfile` uses, and the key under which a
    /// device replaces an installed profile with a newer one.
    pub identifier: String,
    /// Top-level `PayloadUUID`.
    pub uuid: String,
    /// `PayloadDisplayName`, shown on the device.
    pub display_name: Option<String>,
    /// `PayloadDescription`.
    pub description: Option<String>,
    /// `PayloadOrganization`.
    pub organization: Option<String>,
    /// `PayloadScope` (`System` when absent).
    pub scope: ProfileScope,
    /// `PayloadRemovalDisallowed`: the device user cannot remove the profile.
    pub removal_disallowed: bool,
    /// A `com.apple.profileRemovalPassword` payload is present.
    pub has_removal_password: bool,
    /// The entries of `PayloadContent`, in file order.
    pub payloads: Vec<PayloadSummary>,
    /// The certificate that signed the upload; `None` for unsigned uploads.
    pub signer: Option<SignerSummary>,
    /// Non-fatal findings, one sentence each, for the admin to review.
    pub warnings: Vec<String>,
}

/// Where a profile installs on macOS (`PayloadScope`); other platforms ignore it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProfileScope {
    /// Device-wide (`System`), Apple's default.
    #[default]
    System,
    /// For the user whose channel installs it (`User`).
    User,
}

impl ProfileScope {
    /// The serialised name: `system` or `user`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProfileScope::System => "system",
            ProfileScope::User => "user",
        }
    }
}

/// One entry of a profile's `PayloadContent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PayloadSummary {
    /// `PayloadType`, e.g. `com.apple.wifi.managed`.
    pub payload_type: String,
    /// `PayloadIdentifier`.
    pub identifier: String,
    /// `PayloadUUID`.
    pub uuid: String,
    /// `PayloadDisplayName`.
    pub display_name: Option<String>,
}

/// The certificate whose signature on an upload verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SignerSummary {
    /// Subject in RFC 4514 form.
    pub subject: String,
    /// Issuer in RFC 4514 form.
    pub issuer: String,
    /// End of validity, RFC 3339 (UTC).
    pub not_after: String,
    /// SHA-256 of the certificate's DER, lowercase hex.
    pub certificate_sha256: String,
}

/// Why an upload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PayloadError {
    /// Where the problem is, as a path an admin can follow in the file
    /// (`PayloadContent[2].PayloadUUID`), or `(file)` / `(signature)` for the whole file.
    pub field: String,
    /// One sentence: what is wrong and what to do about it.
    pub message: String,
}

fn refuse(field: impl Into<String>, message: impl Into<String>) -> PayloadError {
    PayloadError {
        field: field.into(),
        message: message.into(),
    }
}

/// Validates an uploaded profile and summarises it.
///
/// Signed uploads (first byte `0x30`) must carry an intact CMS SignedData over id-data content;
/// the signer is not required to chain to any root, and an expired or not yet valid signer is
/// reported as a warning. The (signed or unsigned) property list must then be a configuration
/// profile: see the module documentation and the errors for what is refused.
pub fn parse(bytes: &[u8]) -> Result<ParsedProfile, PayloadError> {
    let mut warnings = Vec::new();
    match bytes.first() {
        None => Err(refuse(
            FILE,
            "The file is empty; upload the .mobileconfig file itself.",
        )),
        Some(0x30) => {
            let (content, signer) = open_signed(bytes, &mut warnings)?;
            let root = read_plist(&content, true)?;
            summarize(&root, Some(signer), warnings)
        }
        Some(_) => {
            let root = read_plist(bytes, false)?;
            summarize(&root, None, warnings)
        }
    }
}

/// Verifies a CMS SignedData and returns its content and signer.
fn open_signed(
    bytes: &[u8],
    warnings: &mut Vec<String>,
) -> Result<(Vec<u8>, SignerSummary), PayloadError> {
    // Decoding alone first, so that "this is not a SignedData at all" (a certificate, an
    // EnvelopedData, random DER) is told apart from "a SignedData whose signature fails".
    if let Err(e) = mdm_pki::cms::certificates(bytes) {
        return Err(refuse(
            FILE,
            format!(
                "The file is ASN.1 but not a CMS SignedData ({e}); upload the profile as an XML \
                 or binary property list, or signed as a CMS SignedData (DER or BER)."
            ),
        ));
    }
    let verified = mdm_pki::cms::verify(bytes, None).map_err(signature_refusal)?;
    if verified.content_type != mdm_pki::oid::ID_DATA {
        return Err(refuse(
            SIGNATURE,
            format!(
                "The signed content type is {}, not id-data ({}); sign the profile itself as \
                 data, e.g. with `openssl smime -sign -nodetach -outform der`.",
                verified.content_type,
                mdm_pki::oid::ID_DATA
            ),
        ));
    }
    let signer = summarize_signer(&verified.signer);
    let now = SystemTime::now();
    if verified.signer.not_after() < now {
        warnings.push(format!(
            "The signing certificate \"{}\" expired on {}, so devices may show the profile as \
             not verified; sign it again with a current certificate.",
            signer.subject, signer.not_after
        ));
    } else if verified.signer.not_before() > now {
        warnings.push(format!(
            "The signing certificate \"{}\" is not valid before {}, so devices may show the \
             profile as not verified until then; check the signing machine's clock.",
            signer.subject,
            rfc3339(verified.signer.not_before())
        ));
    }
    Ok((verified.content, signer))
}

fn signature_refusal(e: PkiError) -> PayloadError {
    match e {
        PkiError::ContentDigestMismatch | PkiError::BadSignature => refuse(
            SIGNATURE,
            "The signature does not match the content, so the file was altered or corrupted \
             after signing; upload the file exactly as the signing tool wrote it, or sign it again.",
        ),
        other => refuse(
            SIGNATURE,
            format!(
                "The signature cannot be verified ({other}); sign the profile again with its \
                 content embedded, or upload it unsigned."
            ),
        ),
    }
}

fn summarize_signer(cert: &Certificate) -> SignerSummary {
    SignerSummary {
        subject: cert.subject(),
        issuer: cert.issuer(),
        not_after: rfc3339(cert.not_after()),
        certificate_sha256: hex::encode(cert.sha256()),
    }
}

/// RFC 3339 in UTC, whole seconds (certificate times have no fractions).
fn rfc3339(t: SystemTime) -> String {
    let secs = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_secs()).map_or(i64::MIN, |s| -s),
    };
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        // Unreachable for X.509 times (years 1950 to 9999); kept readable rather than empty.
        .unwrap_or_else(|| format!("{secs} seconds after 1970-01-01T00:00:00Z"))
}

/// Reads an XML or binary property list, after checking that parsing it cannot exhaust the
/// stack or memory.
fn read_plist(bytes: &[u8], signed: bool) -> Result<Value, PayloadError> {
    let what = if signed {
        "The signed content"
    } else {
        "The file"
    };
    if bytes.starts_with(b"bplist00") {
        check_binary_plist(bytes).map_err(|e| e.into_error(what))?;
        // `from_reader` recognises the binary magic and reads nothing else.
        return Value::from_reader(Cursor::new(bytes)).map_err(|e| {
            refuse(
                FILE,
                format!(
                    "{what} is a malformed binary property list ({e}); export the profile again."
                ),
            )
        });
    }
    if looks_like_xml(bytes) {
        let bytes = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
        check_xml_nesting(bytes).map_err(|e| e.into_error(what))?;
        // The XML reader explicitly: the generic reader would fall back to OpenStep ("ASCII")
        // property lists, which profiles never are, and would then accept any text.
        return Value::from_reader_xml(bytes).map_err(|e| {
            refuse(
                FILE,
                format!(
                    "{what} is a malformed XML property list ({e}); fix the XML or export the \
                     profile again."
                ),
            )
        });
    }
    let accepted = if signed {
        "the signed content must be an XML or binary property list"
    } else {
        "upload an XML or binary property list, or one signed as a CMS SignedData (DER or BER)"
    };
    Err(refuse(
        FILE,
        format!("{what} is not a configuration profile; {accepted}."),
    ))
}

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// An XML document starts with `<`, after an optional UTF-8 byte order mark and whitespace.
fn looks_like_xml(bytes: &[u8]) -> bool {
    let bytes = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
    bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'<')
}

/// Why a property list was refused before parsing.
enum ShapeError {
    TooDeep,
    TooLarge { budget: u64 },
    Malformed(&'static str),
}

impl ShapeError {
    fn into_error(self, what: &str) -> PayloadError {
        let message = match self {
            ShapeError::TooDeep => format!(
                "{what} nests arrays and dictionaries more than {MAX_NESTING} levels deep, \
                 which no configuration profile does; check that the right file was chosen."
            ),
            ShapeError::TooLarge { budget } => format!(
                "{what} is a binary property list that would expand to more than {} MiB once \
                 its shared objects are copied, which no configuration profile does; export \
                 it again as XML.",
                budget / (1024 * 1024)
            ),
            ShapeError::Malformed(reason) => {
                format!("{what} is a malformed property list ({reason}); export the profile again.")
            }
        };
        refuse(FILE, message)
    }
}

/// Finds `needle` in `hay` at or after `from`; returns its start.
fn find(hay: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// The end (index just past `>`) of the markup starting at `rest[0] == '<'`. A `>` inside a
/// quoted attribute value would make readers disagree on where the markup ends (the XML
/// parser skips quoted text in some constructs and not in others); plists never contain one,
/// so it is refused. `None`: the markup is not closed before the end of the input.
fn markup_end(rest: &[u8]) -> Result<Option<usize>, ShapeError> {
    let naive = find(rest, 1, b">");
    let mut quote = None;
    let mut quoted = None;
    for (i, b) in rest.iter().enumerate().skip(1) {
        match (quote, *b) {
            (None, b'"' | b'\'') => quote = Some(*b),
            (Some(q), c) if c == q => quote = None,
            (None, b'>') => {
                quoted = Some(i);
                break;
            }
            _ => {}
        }
    }
    if naive != quoted {
        return Err(ShapeError::Malformed(
            "a '>' inside quotes in the XML markup",
        ));
    }
    Ok(naive.map(|i| i + 1))
}

/// The end of a comment, CDATA section or processing instruction that opens with `open` and
/// closes with `close`. The terminator is searched both right after the opening and from its
/// second byte, so that `<!-->` or `<?>` (where readers differ) are refused.
fn section_end(rest: &[u8], open: usize, close: &[u8]) -> Result<Option<usize>, ShapeError> {
    let strict = find(rest, open, close);
    let overlapping = find(rest, 1, close);
    if strict != overlapping {
        return Err(ShapeError::Malformed(
            "a comment or processing instruction that overlaps its own opening",
        ));
    }
    Ok(strict.map(|i| i + close.len()))
}

/// Checks how deeply `<array>` and `<dict>` elements nest, without parsing the XML. It counts
/// every `<array>`/`<dict>` start tag the XML reader could see as one, so its depth is never
/// below the parser's; markup it cannot delimit the way the reader does is refused.
fn check_xml_nesting(xml: &[u8]) -> Result<(), ShapeError> {
    let mut depth = 0usize;
    let mut pos = 0usize;
    while let Some(lt) = find(xml, pos, b"<") {
        let rest = &xml[lt..];
        let end = if rest.starts_with(b"<!--") {
            section_end(rest, 4, b"-->")?
        } else if rest.starts_with(b"<![CDATA[") {
            section_end(rest, 9, b"]]>")?
        } else if rest.starts_with(b"<?") {
            section_end(rest, 2, b"?>")?
        } else if rest.starts_with(b"<!") {
            let end = markup_end(rest)?;
            // A DOCTYPE with an internal subset nests markup the reader delimits by its own
            // rules; Apple's DOCTYPE line has none.
            let body = &rest[..end.unwrap_or(rest.len())];
            if body.iter().skip(1).any(|b| *b == b'<' || *b == b'[') {
                return Err(ShapeError::Malformed(
                    "a DOCTYPE with an internal subset, which property lists do not use",
                ));
            }
            end
        } else {
            let end = markup_end(rest)?;
            let tag = &rest[1..end.map_or(rest.len(), |e| e - 1)];
            let (closing, tag) = match tag.strip_prefix(b"/") {
                Some(t) => (true, t),
                None => (false, tag),
            };
            let name_len = tag
                .iter()
                .position(|b| b.is_ascii_whitespace() || *b == b'/')
                .unwrap_or(tag.len());
            let container = matches!(&tag[..name_len], b"array" | b"dict");
            if container && closing {
                depth = depth.saturating_sub(1);
            } else if container && !tag.ends_with(b"/") {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(ShapeError::TooDeep);
                }
            }
            end
        };
        match end {
            Some(e) => pos = lt + e,
            // Unterminated markup: the reader stops there too, with an error of its own.
            None => break,
        }
    }
    Ok(())
}

/// The parts of a binary property list ("bplist00") needed to walk its object graph: the
/// trailer's sizes and the offset table. Object formats follow Apple's CFBinaryPList.
struct BinaryPlist<'a> {
    data: &'a [u8],
    offset_size: usize,
    ref_size: usize,
    offset_table: usize,
    objects: usize,
    root: usize,
    trailer_start: usize,
}

/// What the walk needs to know of one object.
enum Shape {
    Leaf { weight: u64 },
    Container { refs_at: usize, refs: usize },
}

fn read_be(data: &[u8], at: usize, size: usize) -> Option<u64> {
    let bytes = data.get(at..at.checked_add(size)?)?;
    Some(bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
}

fn to_usize(v: u64) -> Option<usize> {
    usize::try_from(v).ok()
}

impl<'a> BinaryPlist<'a> {
    fn open(data: &'a [u8]) -> Result<Self, ShapeError> {
        let bad = ShapeError::Malformed;
        let trailer_start = data
            .len()
            .checked_sub(32)
            .filter(|t| *t >= 8)
            .ok_or(bad("too short for a binary property list"))?;
        let trailer = &data[trailer_start..];
        let sizes = [1, 2, 3, 4, 8];
        let offset_size = usize::from(trailer[6]);
        let ref_size = usize::from(trailer[7]);
        if !sizes.contains(&offset_size) || !sizes.contains(&ref_size) {
            return Err(bad("invalid integer sizes in the trailer"));
        }
        let field = |at| read_be(trailer, at, 8).and_then(to_usize);
        let (objects, root, offset_table) = match (field(8), field(16), field(24)) {
            (Some(n), Some(r), Some(t)) => (n, r, t),
            _ => return Err(bad("the trailer's counts are out of range")),
        };
        let table_end = objects
            .checked_mul(offset_size)
            .and_then(|len| len.checked_add(offset_table));
        if table_end.is_none_or(|end| end > trailer_start) {
            return Err(bad("the offset table lies outside the file"));
        }
        if root >= objects {
            return Err(bad("the root object does not exist"));
        }
        Ok(BinaryPlist {
            data,
            offset_size,
            ref_size,
            offset_table,
            objects,
            root,
            trailer_start,
        })
    }

    /// The object a container references at position `i` of its reference list.
    fn reference(&self, refs_at: usize, i: usize) -> Result<usize, ShapeError> {
        i.checked_mul(self.ref_size)
            .and_then(|off| off.checked_add(refs_at))
            .and_then(|at| read_be(self.data, at, self.ref_size))
            .and_then(to_usize)
            .filter(|r| *r < self.objects)
            .ok_or(ShapeError::Malformed("an object reference is out of range"))
    }

    fn shape(&self, index: usize) -> Result<Shape, ShapeError> {
        let bad = ShapeError::Malformed;
        let at = index
            .checked_mul(self.offset_size)
            .and_then(|off| read_be(self.data, self.offset_table + off, self.offset_size))
            .and_then(to_usize)
            .filter(|at| *at < self.trailer_start)
            .ok_or(bad("an object offset is out of range"))?;
        let marker = self.data[at];
        let (kind, low) = (marker >> 4, marker & 0x0f);
        // Fixed-size objects (booleans, numbers, dates, UIDs) are the parser's to check.
        if !matches!(kind, 0x4 | 0x5 | 0x6 | 0xa | 0xd) {
            return Ok(Shape::Leaf {
                weight: NODE_WEIGHT,
            });
        }
        // A low nibble of 0xF means the length follows as an integer object of 2^n bytes.
        let (len, body) = if low == 0x0f {
            let size = self
                .data
                .get(at + 1)
                .map(|m| 1usize << (m & 0x03))
                .ok_or(bad("an object length is truncated"))?;
            let len = read_be(self.data, at + 2, size)
                .and_then(to_usize)
                .ok_or(bad("an object length is truncated"))?;
            (len, at + 2 + size)
        } else {
            (usize::from(low), at + 1)
        };
        let (unit, items) = match kind {
            0x4 | 0x5 => (1, len),
            0x6 => (2, len),
            0xa => (self.ref_size, len),
            _ => (
                self.ref_size,
                len.checked_mul(2).ok_or(bad("a dictionary is too large"))?,
            ),
        };
        let bytes = items
            .checked_mul(unit)
            .filter(|n| {
                body.checked_add(*n)
                    .is_some_and(|end| end <= self.trailer_start)
            })
            .ok_or(bad("an object extends past the end of the object table"))?;
        Ok(match kind {
            0xa | 0xd => Shape::Container {
                refs_at: body,
                refs: items,
            },
            _ => Shape::Leaf {
                weight: NODE_WEIGHT.saturating_add(bytes as u64),
            },
        })
    }
}

/// An open container during the walk.
struct Frame {
    index: usize,
    refs_at: usize,
    refs: usize,
    next: usize,
    weight: u64,
    nesting: usize,
}

/// Walks the object graph of a binary property list (iteratively, each object once) and
/// refuses nesting deeper than [`MAX_NESTING`], reference cycles, and graphs whose expansion
/// (every reference copied, as the parser does) exceeds the budget.
fn check_binary_plist(data: &[u8]) -> Result<(), ShapeError> {
    let plist = BinaryPlist::open(data)?;
    let budget = MIN_EXPANSION_BUDGET
        .max(EXPANSION_FACTOR.saturating_mul(data.len() as u64))
        .min(u64::from(u32::MAX));
    // Per object: 0 = not seen, 1 = being walked, 2 + nesting = done. Weights are capped by
    // the budget, which fits in a u32, to keep the memo small on files with many objects.
    let mut state = vec![0u8; plist.objects];
    let mut weights = vec![0u32; plist.objects];
    let mut stack: Vec<Frame> = Vec::new();
    let mut pending = Some(plist.root);
    loop {
        // The object just entered, or the container just closed: its weight and nesting.
        let mut finished = None;
        if let Some(index) = pending.take() {
            match state[index] {
                0 => match plist.shape(index)? {
                    Shape::Leaf { weight } => {
                        state[index] = 2;
                        finished = Some((index, weight, 0));
                    }
                    Shape::Container { refs_at, refs } => {
                        if stack.len() >= MAX_NESTING {
                            return Err(ShapeError::TooDeep);
                        }
                        state[index] = 1;
                        stack.push(Frame {
                            index,
                            refs_at,
                            refs,
                            next: 0,
                            weight: NODE_WEIGHT.saturating_add(refs as u64 * 8),
                            nesting: 0,
                        });
                    }
                },
                1 => return Err(ShapeError::Malformed("an object contains itself")),
                done => {
                    let nesting = usize::from(done - 2);
                    if stack.len() + nesting > MAX_NESTING {
                        return Err(ShapeError::TooDeep);
                    }
                    finished = Some((index, u64::from(weights[index]), nesting));
                }
            }
        } else {
            let Some(top) = stack.last_mut() else {
                return Ok(());
            };
            if top.next < top.refs {
                pending = Some(plist.reference(top.refs_at, top.next)?);
                top.next += 1;
                continue;
            }
            if let Some(frame) = stack.pop() {
                let nesting = frame.nesting + 1;
                // `nesting` is at most MAX_NESTING, far below the u8 range.
                state[frame.index] = u8::try_from(nesting + 2).unwrap_or(u8::MAX);
                finished = Some((frame.index, frame.weight, nesting));
            }
        }
        if let Some((index, weight, nesting)) = finished {
            if weight > budget {
                return Err(ShapeError::TooLarge { budget });
            }
            weights[index] = u32::try_from(weight).unwrap_or(u32::MAX);
            match stack.last_mut() {
                Some(parent) => {
                    parent.weight = parent.weight.saturating_add(weight);
                    parent.nesting = parent.nesting.max(nesting);
                    if parent.weight > budget {
                        return Err(ShapeError::TooLarge { budget });
                    }
                }
                None => return Ok(()),
            }
        }
    }
}

/// A value's type, as an admin reads it in an error message.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Array(_) => "an array",
        Value::Dictionary(_) => "a dictionary",
        Value::Boolean(_) => "a boolean",
        Value::Data(_) => "data",
        Value::Date(_) => "a date",
        Value::Real(_) => "a real number",
        Value::Integer(_) => "an integer",
        Value::String(_) => "a string",
        Value::Uid(_) => "a UID",
        _ => "an unknown type",
    }
}

/// The types Apple documents for keys that are not read into the summary but would make a
/// device refuse the profile when mistyped.
#[derive(Clone, Copy)]
enum Expected {
    String,
    Boolean,
    Date,
    Integer,
    Number,
    Dictionary,
}

impl Expected {
    fn matches(self, v: &Value) -> bool {
        match self {
            Expected::String => matches!(v, Value::String(_)),
            Expected::Boolean => matches!(v, Value::Boolean(_)),
            Expected::Date => matches!(v, Value::Date(_)),
            Expected::Integer => matches!(v, Value::Integer(_)),
            Expected::Number => matches!(v, Value::Integer(_) | Value::Real(_)),
            Expected::Dictionary => matches!(v, Value::Dictionary(_)),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Expected::String => "a string",
            Expected::Boolean => "a boolean",
            Expected::Date => "a date",
            Expected::Integer => "an integer",
            Expected::Number => "a number",
            Expected::Dictionary => "a dictionary",
        }
    }
}

/// Optional top-level keys and their types (Apple's "TopLevel").
const TOP_LEVEL_TYPES: &[(&str, Expected)] = &[
    ("PayloadDisplayName", Expected::String),
    ("PayloadDescription", Expected::String),
    ("PayloadOrganization", Expected::String),
    ("PayloadScope", Expected::String),
    ("PayloadRemovalDisallowed", Expected::Boolean),
    ("HasRemovalPasscode", Expected::Boolean),
    ("IsEncrypted", Expected::Boolean),
    ("PayloadDate", Expected::Date),
    ("PayloadExpirationDate", Expected::Date),
    ("RemovalDate", Expected::Date),
    ("DurationUntilRemoval", Expected::Number),
    ("TargetDeviceType", Expected::Integer),
    ("ConsentText", Expected::Dictionary),
];

/// Optional keys common to all payloads (Apple's "CommonPayloadKeys").
const ITEM_TYPES: &[(&str, Expected)] = &[
    ("PayloadDisplayName", Expected::String),
    ("PayloadDescription", Expected::String),
    ("PayloadOrganization", Expected::String),
];

/// `prefix` + `key` as a path: `PayloadUUID` at the top level, `PayloadContent[2].PayloadUUID`
/// inside an item.
fn path(prefix: &str, key: &str) -> String {
    format!("{prefix}{key}")
}

fn check_types(
    dict: &Dictionary,
    prefix: &str,
    types: &[(&str, Expected)],
) -> Result<(), PayloadError> {
    for (key, expected) in types {
        if let Some(v) = dict.get(key) {
            if !expected.matches(v) {
                return Err(refuse(
                    path(prefix, key),
                    format!(
                        "{key} is {}, but must be {}; correct its type in the profile.",
                        kind(v),
                        expected.name()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// A key that must be present as a string with something other than whitespace in it.
fn required_string<'a>(
    dict: &'a Dictionary,
    prefix: &str,
    key: &str,
) -> Result<&'a str, PayloadError> {
    match dict.get(key) {
        None => Err(refuse(
            path(prefix, key),
            format!("{key} is missing; every profile and payload needs it as a non-empty string."),
        )),
        Some(Value::String(s)) if s.trim().is_empty() => Err(refuse(
            path(prefix, key),
            format!("{key} is empty; give it a value."),
        )),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(refuse(
            path(prefix, key),
            format!(
                "{key} is {}, but must be a string; correct its type in the profile.",
                kind(other)
            ),
        )),
    }
}

/// An optional key already type-checked as a string.
fn optional_string(dict: &Dictionary, key: &str) -> Option<String> {
    dict.get(key).and_then(Value::as_string).map(str::to_owned)
}

fn required_integer(dict: &Dictionary, prefix: &str, key: &str) -> Result<i128, PayloadError> {
    match dict.get(key) {
        None => Err(refuse(
            path(prefix, key),
            format!("{key} is missing; add it as the integer 1."),
        )),
        Some(Value::Integer(i)) => Ok(i
            .as_signed()
            .map(i128::from)
            .or_else(|| i.as_unsigned().map(i128::from))
            .unwrap_or_default()),
        Some(other) => Err(refuse(
            path(prefix, key),
            format!(
                "{key} is {}, but must be an integer (1); correct its type in the profile.",
                kind(other)
            ),
        )),
    }
}

/// The canonical textual UUID form, 8-4-4-4-12 hexadecimal digits.
fn is_uuid_form(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn warn_uuid_form(uuid: &str, field: &str, warnings: &mut Vec<String>) {
    if !is_uuid_form(uuid) {
        warnings.push(format!(
            "{field} \"{uuid}\" is not in UUID form (8-4-4-4-12 hexadecimal digits); devices \
             accept it, but a generated UUID is the reliable way to keep it unique."
        ));
    }
}

fn summarize(
    root: &Value,
    signer: Option<SignerSummary>,
    mut warnings: Vec<String>,
) -> Result<ParsedProfile, PayloadError> {
    let top = root.as_dictionary().ok_or_else(|| {
        refuse(
            FILE,
            format!(
                "The property list's root is {}, not a dictionary; a configuration profile is a \
                 dictionary with PayloadType Configuration.",
                kind(root)
            ),
        )
    })?;
    if top.contains_key("EncryptedPayloadContent") {
        return Err(refuse(
            "EncryptedPayloadContent",
            "The profile is encrypted, which binds it to one device's certificate so it cannot \
             be assigned to groups; upload the unencrypted profile.",
        ));
    }

    let payload_type = required_string(top, "", "PayloadType")?;
    if payload_type != "Configuration" {
        return Err(refuse(
            "PayloadType",
            format!(
                "The top-level PayloadType is \"{payload_type}\", but a profile's must be \
                 \"Configuration\"; upload the whole profile rather than a single payload."
            ),
        ));
    }
    let identifier = required_string(top, "", "PayloadIdentifier")?;
    if let Some(c) = identifier.chars().find(|c| c.is_control()) {
        return Err(refuse(
            "PayloadIdentifier",
            format!(
                "PayloadIdentifier contains the control character U+{:04X}; use a reverse-DNS \
                 name such as com.example.wifi, since devices remove the profile by this name.",
                u32::from(c)
            ),
        ));
    }
    let uuid = required_string(top, "", "PayloadUUID")?;
    warn_uuid_form(uuid, "PayloadUUID", &mut warnings);
    let version = required_integer(top, "", "PayloadVersion")?;
    if version != 1 {
        return Err(refuse(
            "PayloadVersion",
            format!("PayloadVersion is {version}, but Apple defines only version 1; set it to 1."),
        ));
    }
    check_types(top, "", TOP_LEVEL_TYPES)?;
    let scope = match top.get("PayloadScope").and_then(Value::as_string) {
        None | Some("System") => ProfileScope::System,
        Some("User") => ProfileScope::User,
        Some(other) => {
            return Err(refuse(
                "PayloadScope",
                format!(
                    "PayloadScope is \"{other}\", but must be \"System\" or \"User\" (or absent, \
                     meaning System)."
                ),
            ))
        }
    };
    let removal_disallowed = top
        .get("PayloadRemovalDisallowed")
        .and_then(Value::as_boolean)
        .unwrap_or(false);
    if removal_disallowed {
        warnings.push(
            "PayloadRemovalDisallowed is true: the device user cannot remove this profile, only \
             the MDM can."
                .to_owned(),
        );
    }
    if let Some(removal) = top.get("RemovalDate").and_then(Value::as_date) {
        if SystemTime::from(removal) < SystemTime::now() {
            warnings.push(format!(
                "RemovalDate {} has passed, so devices remove the profile as soon as they \
                 install it; set a later date or remove the key.",
                removal.to_xml_format()
            ));
        }
    }

    let (payloads, has_removal_password) = summarize_items(top, uuid, &mut warnings)?;
    Ok(ParsedProfile {
        identifier: identifier.to_owned(),
        uuid: uuid.to_owned(),
        display_name: optional_string(top, "PayloadDisplayName"),
        description: optional_string(top, "PayloadDescription"),
        organization: optional_string(top, "PayloadOrganization"),
        scope,
        removal_disallowed,
        has_removal_password,
        payloads,
        signer,
        warnings,
    })
}

fn summarize_items(
    top: &Dictionary,
    top_uuid: &str,
    warnings: &mut Vec<String>,
) -> Result<(Vec<PayloadSummary>, bool), PayloadError> {
    let items = match top.get("PayloadContent") {
        None => {
            return Err(refuse(
                "PayloadContent",
                "PayloadContent is missing; a profile must contain at least one payload.",
            ))
        }
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(refuse(
                "PayloadContent",
                format!(
                    "PayloadContent is {}, but must be an array of payload dictionaries.",
                    kind(other)
                ),
            ))
        }
    };
    if items.is_empty() {
        return Err(refuse(
            "PayloadContent",
            "PayloadContent is empty, so the profile would configure nothing; add at least one \
             payload.",
        ));
    }
    if items.len() > MAX_PAYLOADS {
        return Err(refuse(
            "PayloadContent",
            format!(
                "PayloadContent holds {} payloads, more than the {MAX_PAYLOADS} the appliance \
                 accepts in one profile; split it into several profiles.",
                items.len()
            ),
        ));
    }

    // UUIDs are compared without regard to case: RFC 9562 defines them case-insensitively, so
    // two spellings of one UUID are a copy-paste mistake, not two payloads. `None` stands for
    // the top-level UUID.
    let mut uuids: HashMap<String, Option<usize>> = HashMap::new();
    uuids.insert(top_uuid.to_lowercase(), None);
    let mut identifiers: HashMap<&str, usize> = HashMap::new();
    let mut summaries = Vec::with_capacity(items.len());
    let mut has_removal_password = false;
    for (i, item) in items.iter().enumerate() {
        let prefix = format!("PayloadContent[{i}].");
        let dict = item.as_dictionary().ok_or_else(|| {
            refuse(
                format!("PayloadContent[{i}]"),
                format!(
                    "This entry is {}, but every PayloadContent entry must be a payload \
                     dictionary.",
                    kind(item)
                ),
            )
        })?;
        let payload_type = required_string(dict, &prefix, "PayloadType")?;
        if payload_type == MDM_PAYLOAD_TYPE {
            return Err(refuse(
                path(&prefix, "PayloadType"),
                "An MDM enrollment payload (com.apple.mdm) cannot be installed through MDM; \
                 remove it, since devices get the appliance's own MDM payload when they enroll.",
            ));
        }
        let identifier = required_string(dict, &prefix, "PayloadIdentifier")?;
        let uuid = required_string(dict, &prefix, "PayloadUUID")?;
        required_integer(dict, &prefix, "PayloadVersion")?;
        check_types(dict, &prefix, ITEM_TYPES)?;

        if let Some(first) = uuids.insert(uuid.to_lowercase(), Some(i)) {
            let other = match first {
                None => "the profile's top-level PayloadUUID".to_owned(),
                Some(j) => format!("PayloadContent[{j}].PayloadUUID"),
            };
            return Err(refuse(
                path(&prefix, "PayloadUUID"),
                format!(
                    "PayloadContent[{i}].PayloadUUID \"{uuid}\" repeats {other}; give every \
                     payload its own UUID (e.g. from uuidgen)."
                ),
            ));
        }
        if let Some(j) = identifiers.insert(identifier, i) {
            return Err(refuse(
                path(&prefix, "PayloadIdentifier"),
                format!(
                    "PayloadContent[{j}] and PayloadContent[{i}] share the PayloadIdentifier \
                     \"{identifier}\"; give each payload its own identifier."
                ),
            ));
        }
        warn_uuid_form(uuid, &path(&prefix, "PayloadUUID"), warnings);
        has_removal_password |= payload_type == REMOVAL_PASSWORD_PAYLOAD_TYPE;
        summaries.push(PayloadSummary {
            payload_type: payload_type.to_owned(),
            identifier: identifier.to_owned(),
            uuid: uuid.to_owned(),
            display_name: optional_string(dict, "PayloadDisplayName"),
        });
    }
    Ok((summaries, has_removal_password))
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::OnceLock;
    use std::time::Duration;

    use const_oid::ObjectIdentifier;
    use mdm_pki::cms::{self, SignerOptions};
    use mdm_pki::{CertificateParams, KeyAlgorithm, Name, PrivateKey};

    use super::*;

    const TOP_UUID: &str = "6F1D4E2A-3B5C-4D7E-8F90-A1B2C3D4E5F6";

    fn uuid_n(n: usize) -> String {
        format!("00000000-0000-4000-8000-{n:012X}")
    }

    fn item(payload_type: &str, identifier: &str, uuid: &str) -> Dictionary {
        let mut d = Dictionary::new();
        d.insert("PayloadType".into(), payload_type.into());
        d.insert("PayloadIdentifier".into(), identifier.into());
        d.insert("PayloadUUID".into(), uuid.into());
        d.insert("PayloadVersion".into(), 1.into());
        d
    }

    fn wifi(n: usize) -> Dictionary {
        let mut d = item(
            "com.apple.wifi.managed",
            &format!("com.example.profile.wifi{n}"),
            &uuid_n(n),
        );
        d.insert("PayloadDisplayName".into(), format!("Wi-Fi {n}").into());
        d.insert("SSID_STR".into(), format!("Site {n}").into());
        d
    }

    fn profile(items: Vec<Dictionary>) -> Dictionary {
        let mut d = Dictionary::new();
        d.insert("PayloadType".into(), "Configuration".into());
        d.insert("PayloadIdentifier".into(), "com.example.profile".into());
        d.insert("PayloadUUID".into(), TOP_UUID.into());
        d.insert("PayloadVersion".into(), 1.into());
        d.insert("PayloadDisplayName".into(), "Example".into());
        let items: Vec<Value> = items.into_iter().map(Value::Dictionary).collect();
        d.insert("PayloadContent".into(), Value::Array(items));
        d
    }

    fn two_payloads() -> Dictionary {
        profile(vec![wifi(0), wifi(1)])
    }

    fn xml(d: &Dictionary) -> Vec<u8> {
        let mut out = Vec::new();
        Value::Dictionary(d.clone())
            .to_writer_xml(&mut out)
            .unwrap();
        out
    }

    fn binary(d: &Dictionary) -> Vec<u8> {
        let mut out = Vec::new();
        Value::Dictionary(d.clone())
            .to_writer_binary(&mut out)
            .unwrap();
        out
    }

    fn refused(bytes: &[u8]) -> PayloadError {
        match parse(bytes) {
            Ok(p) => panic!("accepted: {p:?}"),
            Err(e) => e,
        }
    }

    /// The field an XML rendering of `d` is refused for, after checking the binary rendering
    /// is refused for the same reason.
    fn refused_field(d: &Dictionary) -> String {
        let e = refused(&xml(d));
        assert_eq!(refused(&binary(d)), e, "XML and binary disagree");
        e.field
    }

    fn with(mut d: Dictionary, key: &str, v: impl Into<Value>) -> Dictionary {
        d.insert(key.into(), v.into());
        d
    }

    fn without(mut d: Dictionary, key: &str) -> Dictionary {
        d.remove(key);
        d
    }

    #[test]
    fn valid_xml_profile_is_summarised() {
        let p = parse(&xml(&two_payloads())).unwrap();
        assert_eq!(p.identifier, "com.example.profile");
        assert_eq!(p.uuid, TOP_UUID);
        assert_eq!(p.display_name.as_deref(), Some("Example"));
        assert_eq!(p.description, None);
        assert_eq!(p.organization, None);
        assert_eq!(p.scope, ProfileScope::System);
        assert!(!p.removal_disallowed);
        assert!(!p.has_removal_password);
        assert_eq!(p.signer, None);
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        assert_eq!(
            p.payloads,
            vec![
                PayloadSummary {
                    payload_type: "com.apple.wifi.managed".into(),
                    identifier: "com.example.profile.wifi0".into(),
                    uuid: uuid_n(0),
                    display_name: Some("Wi-Fi 0".into()),
                },
                PayloadSummary {
                    payload_type: "com.apple.wifi.managed".into(),
                    identifier: "com.example.profile.wifi1".into(),
                    uuid: uuid_n(1),
                    display_name: Some("Wi-Fi 1".into()),
                },
            ]
        );
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["scope"], "system");
        assert_eq!(
            json["payloads"][1]["payload_type"],
            "com.apple.wifi.managed"
        );
    }

    #[test]
    fn binary_plist_is_accepted_and_equals_xml() {
        let d = two_payloads();
        let from_binary = parse(&binary(&d)).unwrap();
        assert_eq!(from_binary, parse(&xml(&d)).unwrap());
    }

    #[test]
    fn xml_with_byte_order_mark_comments_and_cdata_is_accepted() {
        let mut doc = b"\xEF\xBB\xBF".to_vec();
        let body = String::from_utf8(xml(&two_payloads())).unwrap();
        // More `<array>`s than MAX_NESTING in a comment and in a CDATA section: the nesting
        // check must skip both, as the XML reader does.
        let deep = "<array>".repeat(MAX_NESTING + 10);
        let body = body
            .replacen("<dict>", &format!("<!-- {deep} --><dict>"), 1)
            .replacen(
                "<string>Site 0</string>",
                &format!("<string><![CDATA[{deep}]]></string>"),
                1,
            );
        assert!(body.contains("CDATA"));
        doc.extend_from_slice(body.as_bytes());
        let p = parse(&doc).unwrap();
        assert_eq!(p, parse(&xml(&two_payloads())).unwrap());
    }

    #[test]
    fn optional_top_level_keys_are_read() {
        let d = with(
            with(
                with(two_payloads(), "PayloadDescription", "Site Wi-Fi"),
                "PayloadOrganization",
                "Example Corp",
            ),
            "PayloadScope",
            "User",
        );
        let mut d = with(d, "ConsentText", Value::Dictionary(Dictionary::new()));
        d.insert("DurationUntilRemoval".into(), Value::Real(3600.5));
        let p = parse(&xml(&d)).unwrap();
        assert_eq!(p.description.as_deref(), Some("Site Wi-Fi"));
        assert_eq!(p.organization.as_deref(), Some("Example Corp"));
        assert_eq!(p.scope, ProfileScope::User);
        assert_eq!(p.scope.as_str(), "user");
        assert_eq!(ProfileScope::System.as_str(), "system");
        let p = parse(&xml(&with(two_payloads(), "PayloadScope", "System"))).unwrap();
        assert_eq!(p.scope, ProfileScope::System);
    }

    #[test]
    fn removal_password_payload_is_detected() {
        let mut password = item(
            REMOVAL_PASSWORD_PAYLOAD_TYPE,
            "com.example.profile.removal",
            &uuid_n(9),
        );
        password.insert("RemovalPassword".into(), "secret".into());
        let p = parse(&xml(&profile(vec![wifi(0), password]))).unwrap();
        assert!(p.has_removal_password);
        assert_eq!(p.payloads.len(), 2);
    }

    #[test]
    fn warnings_are_reported_without_refusing() {
        let mut odd = wifi(1);
        odd.insert("PayloadUUID".into(), "wifi-one".into());
        let d = with(profile(vec![wifi(0), odd]), "PayloadUUID", "not-a-uuid");
        let d = with(d, "PayloadRemovalDisallowed", true);
        let past = SystemTime::now() - Duration::from_secs(86_400);
        let d = with(d, "RemovalDate", Value::Date(past.into()));
        let p = parse(&xml(&d)).unwrap();
        assert!(p.removal_disallowed);
        assert_eq!(p.warnings.len(), 4, "{:#?}", p.warnings);
        assert!(p.warnings[0].starts_with("PayloadUUID \"not-a-uuid\""));
        assert!(p.warnings[1].contains("PayloadRemovalDisallowed"));
        assert!(p.warnings[2].contains("RemovalDate"));
        assert!(p.warnings[3].starts_with("PayloadContent[1].PayloadUUID \"wifi-one\""));
        for w in &p.warnings {
            assert!(w.ends_with('.') && !w.contains('\n'), "{w}");
        }

        // A future removal date and an explicit false are not findings.
        let future = SystemTime::now() + Duration::from_secs(86_400);
        let d = with(two_payloads(), "RemovalDate", Value::Date(future.into()));
        let d = with(d, "PayloadRemovalDisallowed", false);
        assert!(parse(&xml(&d)).unwrap().warnings.is_empty());
    }

    #[test]
    fn whole_file_problems_name_the_file() {
        let e = refused(b"");
        assert_eq!(e.field, FILE);
        assert!(e.message.contains("empty"));

        let e = refused(b"hello, this is not a profile");
        assert_eq!(e.field, FILE);
        assert!(
            e.message.contains("XML or binary property list")
                && e.message.contains("CMS SignedData (DER or BER)"),
            "{e}"
        );

        // OpenStep text property lists are not profiles, even though the plist crate reads them.
        let e = refused(b"{ PayloadType = Configuration; PayloadVersion = 1; }");
        assert_eq!(e.field, FILE);

        let doc = xml(&two_payloads());
        let e = refused(&doc[..doc.len() / 2]);
        assert_eq!(e.field, FILE);
        assert!(e.message.contains("malformed XML"), "{e}");

        let e = refused(&b"bplist00 truncated"[..]);
        assert_eq!(e.field, FILE);
        assert!(e.message.contains("malformed"), "{e}");

        let mut root_array = Vec::new();
        Value::Array(vec![Value::Dictionary(two_payloads())])
            .to_writer_xml(&mut root_array)
            .unwrap();
        let e = refused(&root_array);
        assert_eq!(e.field, FILE);
        assert!(e.message.contains("root is an array"), "{e}");
    }

    #[test]
    fn error_display_is_field_then_message() {
        let e = refused(&xml(&without(two_payloads(), "PayloadUUID")));
        assert_eq!(e.to_string(), format!("PayloadUUID: {}", e.message));
    }

    #[test]
    fn encrypted_profiles_are_refused() {
        let d = with(
            without(two_payloads(), "PayloadContent"),
            "EncryptedPayloadContent",
            Value::Data(vec![0x30, 0x80, 0, 0]),
        );
        assert_eq!(refused_field(&d), "EncryptedPayloadContent");
        let e = refused(&xml(&d));
        assert!(e.message.contains("unencrypted"), "{e}");
    }

    #[test]
    fn top_level_payload_type_must_be_configuration() {
        assert_eq!(
            refused_field(&without(two_payloads(), "PayloadType")),
            "PayloadType"
        );
        assert_eq!(
            refused_field(&with(two_payloads(), "PayloadType", 1)),
            "PayloadType"
        );
        // A single payload uploaded on its own.
        assert_eq!(refused_field(&wifi(0)), "PayloadType");
    }

    #[test]
    fn top_level_identifier_must_be_a_clean_non_empty_string() {
        let base = two_payloads;
        assert_eq!(
            refused_field(&without(base(), "PayloadIdentifier")),
            "PayloadIdentifier"
        );
        for bad in ["", "   ", "com.example\nprofile", "com.example\u{7f}"] {
            assert_eq!(
                refused_field(&with(base(), "PayloadIdentifier", bad)),
                "PayloadIdentifier",
                "{bad:?}"
            );
        }
        let e = refused(&xml(&with(base(), "PayloadIdentifier", "a\tb")));
        assert!(e.message.contains("U+0009"), "{e}");
        assert_eq!(
            refused_field(&with(base(), "PayloadIdentifier", true)),
            "PayloadIdentifier"
        );
    }

    #[test]
    fn top_level_uuid_and_version_are_required() {
        assert_eq!(
            refused_field(&without(two_payloads(), "PayloadUUID")),
            "PayloadUUID"
        );
        assert_eq!(
            refused_field(&with(two_payloads(), "PayloadUUID", "")),
            "PayloadUUID"
        );
        assert_eq!(
            refused_field(&with(two_payloads(), "PayloadUUID", 7)),
            "PayloadUUID"
        );
        assert_eq!(
            refused_field(&without(two_payloads(), "PayloadVersion")),
            "PayloadVersion"
        );
        assert_eq!(
            refused_field(&with(two_payloads(), "PayloadVersion", "1")),
            "PayloadVersion"
        );
        assert_eq!(
            refused_field(&with(two_payloads(), "PayloadVersion", 2)),
            "PayloadVersion"
        );
    }

    #[test]
    fn mistyped_optional_top_level_keys_are_named() {
        let cases: Vec<(&str, Value)> = vec![
            ("PayloadDisplayName", 5.into()),
            ("PayloadDescription", true.into()),
            ("PayloadOrganization", Value::Array(vec![])),
            ("PayloadScope", 1.into()),
            ("PayloadRemovalDisallowed", "true".into()),
            ("RemovalDate", "2030-01-01".into()),
            ("DurationUntilRemoval", "3600".into()),
        ];
        for (key, v) in cases {
            assert_eq!(refused_field(&with(two_payloads(), key, v)), key);
        }
        let e = refused(&xml(&with(two_payloads(), "PayloadDisplayName", 5)));
        assert!(
            e.message.contains("is an integer, but must be a string"),
            "{e}"
        );
    }

    #[test]
    fn payload_scope_must_be_system_or_user() {
        for bad in ["Device", "user", ""] {
            assert_eq!(
                refused_field(&with(two_payloads(), "PayloadScope", bad)),
                "PayloadScope",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn payload_content_must_be_a_non_empty_array_of_dictionaries() {
        assert_eq!(
            refused_field(&without(two_payloads(), "PayloadContent")),
            "PayloadContent"
        );
        assert_eq!(refused_field(&profile(vec![])), "PayloadContent");
        assert_eq!(
            refused_field(&with(
                two_payloads(),
                "PayloadContent",
                Value::Dictionary(wifi(0))
            )),
            "PayloadContent"
        );
        let items = vec![Value::Dictionary(wifi(0)), "wifi".into()];
        assert_eq!(
            refused_field(&with(two_payloads(), "PayloadContent", Value::Array(items))),
            "PayloadContent[1]"
        );
    }

    #[test]
    fn payload_items_need_their_common_keys() {
        let cases: Vec<(Dictionary, &str)> = vec![
            (
                without(wifi(1), "PayloadType"),
                "PayloadContent[1].PayloadType",
            ),
            (
                with(wifi(1), "PayloadType", " "),
                "PayloadContent[1].PayloadType",
            ),
            (
                with(wifi(1), "PayloadIdentifier", ""),
                "PayloadContent[1].PayloadIdentifier",
            ),
            (
                without(wifi(1), "PayloadIdentifier"),
                "PayloadContent[1].PayloadIdentifier",
            ),
            (
                with(wifi(1), "PayloadUUID", 12),
                "PayloadContent[1].PayloadUUID",
            ),
            (
                without(wifi(1), "PayloadUUID"),
                "PayloadContent[1].PayloadUUID",
            ),
            (
                without(wifi(1), "PayloadVersion"),
                "PayloadContent[1].PayloadVersion",
            ),
            (
                with(wifi(1), "PayloadVersion", "1"),
                "PayloadContent[1].PayloadVersion",
            ),
            (
                with(wifi(1), "PayloadDisplayName", 3),
                "PayloadContent[1].PayloadDisplayName",
            ),
        ];
        for (bad, field) in cases {
            assert_eq!(refused_field(&profile(vec![wifi(0), bad])), field);
        }
    }

    #[test]
    fn uuids_must_be_unique_across_the_profile() {
        let mut copy = wifi(2);
        copy.insert("PayloadUUID".into(), uuid_n(0).to_lowercase().into());
        let e = refused(&xml(&profile(vec![wifi(0), wifi(1), copy])));
        assert_eq!(e.field, "PayloadContent[2].PayloadUUID");
        assert!(
            e.message.contains("repeats PayloadContent[0].PayloadUUID"),
            "{e}"
        );

        let mut top = wifi(0);
        top.insert("PayloadUUID".into(), TOP_UUID.into());
        let e = refused(&xml(&profile(vec![top])));
        assert_eq!(e.field, "PayloadContent[0].PayloadUUID");
        assert!(e.message.contains("top-level PayloadUUID"), "{e}");
    }

    #[test]
    fn item_identifiers_must_be_unique() {
        let mut copy = wifi(1);
        copy.insert(
            "PayloadIdentifier".into(),
            "com.example.profile.wifi0".into(),
        );
        let e = refused(&xml(&profile(vec![wifi(0), copy])));
        assert_eq!(e.field, "PayloadContent[1].PayloadIdentifier");
        assert!(
            e.message.contains("PayloadContent[0]") && e.message.contains("PayloadContent[1]"),
            "{e}"
        );
    }

    #[test]
    fn mdm_payloads_are_refused() {
        let mdm = item(MDM_PAYLOAD_TYPE, "com.example.profile.mdm", &uuid_n(5));
        let e = refused(&xml(&profile(vec![wifi(0), mdm])));
        assert_eq!(e.field, "PayloadContent[1].PayloadType");
        assert!(e.message.contains("com.apple.mdm"), "{e}");
    }

    #[test]
    fn payload_count_is_limited() {
        let items: Vec<Dictionary> = (0..MAX_PAYLOADS).map(wifi).collect();
        assert_eq!(
            parse(&binary(&profile(items))).unwrap().payloads.len(),
            MAX_PAYLOADS
        );
        let items: Vec<Dictionary> = (0..=MAX_PAYLOADS).map(wifi).collect();
        let e = refused(&binary(&profile(items)));
        assert_eq!(e.field, "PayloadContent");
        assert!(e.message.contains("1001 payloads"), "{e}");
    }

    fn nested_xml(levels: usize) -> Vec<u8> {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<plist version=\"1.0\">{}{}</plist>",
            "<array>".repeat(levels),
            "</array>".repeat(levels)
        )
        .into_bytes()
    }

    #[test]
    fn deeply_nested_xml_is_refused_before_parsing() {
        // Accepted by the nesting check; refused only because the root is not a dictionary.
        let e = refused(&nested_xml(MAX_NESTING));
        assert!(e.message.contains("root is an array"), "{e}");
        let e = refused(&nested_xml(MAX_NESTING + 1));
        assert_eq!(e.field, FILE);
        assert!(e.message.contains("levels deep"), "{e}");
        // Deep enough to overflow the stack when dropped, had it been parsed.
        let e = refused(&nested_xml(300_000));
        assert!(e.message.contains("levels deep"), "{e}");
        // Self-closing empty arrays do not nest.
        let flat = format!("<plist>{}</plist>", "<array/>".repeat(MAX_NESTING * 2));
        assert!(refused(flat.as_bytes()).message.contains("malformed XML"));
    }

    #[test]
    fn deep_payload_content_within_the_limit_is_accepted() {
        let mut inner = Value::String("leaf".into());
        for _ in 0..(MAX_NESTING - 4) {
            let mut d = Dictionary::new();
            d.insert("Nested".into(), inner);
            inner = Value::Dictionary(d);
        }
        let p = profile(vec![with(wifi(0), "Settings", inner)]);
        assert_eq!(parse(&xml(&p)).unwrap().payloads.len(), 1);
        assert_eq!(parse(&binary(&p)).unwrap().payloads.len(), 1);
    }

    #[test]
    fn xml_markup_readers_could_delimit_differently_is_refused() {
        let doc = String::from_utf8(xml(&two_payloads())).unwrap();
        for trick in [
            "<plist version=\">\">",
            "<!DOCTYPE plist [ <!ENTITY x \"y\"> ]>",
            "<!-->",
            "<?>",
        ] {
            let bad = doc.replacen(
                "<plist version=\"1.0\">",
                &format!("{trick}<plist version=\"1.0\">"),
                1,
            );
            let e = refused(bad.as_bytes());
            assert_eq!(e.field, FILE, "{trick}");
            assert!(
                e.message.contains("malformed property list"),
                "{trick}: {e}"
            );
        }
    }

    /// A binary plist whose objects are all arrays; `objects[i]` lists the references of object
    /// `i`, and object 0 is the root. 8-byte offsets and 4-byte references.
    fn bplist_of_arrays(objects: &[Vec<u32>]) -> Vec<u8> {
        let mut out = b"bplist00".to_vec();
        let mut offsets = Vec::new();
        for refs in objects {
            offsets.push(out.len() as u64);
            if refs.len() < 15 {
                out.push(0xa0 | refs.len() as u8);
            } else {
                out.push(0xaf);
                out.push(0x13);
                out.extend((refs.len() as u64).to_be_bytes());
            }
            for r in refs {
                out.extend(r.to_be_bytes());
            }
        }
        let table = out.len() as u64;
        for o in &offsets {
            out.extend(o.to_be_bytes());
        }
        out.extend([0u8; 6]);
        out.extend([8, 4]);
        out.extend((objects.len() as u64).to_be_bytes());
        out.extend(0u64.to_be_bytes());
        out.extend(table.to_be_bytes());
        out
    }

    /// `levels` arrays, each holding the next `fan_out` times.
    fn chain(levels: usize, fan_out: usize) -> Vec<Vec<u32>> {
        (0..levels)
            .map(|i| {
                if i + 1 == levels {
                    Vec::new()
                } else {
                    vec![u32::try_from(i + 1).unwrap(); fan_out]
                }
            })
            .collect()
    }

    #[test]
    fn handmade_binary_plists_are_what_the_parser_reads() {
        let bytes = bplist_of_arrays(&chain(3, 2));
        let v = Value::from_reader(Cursor::new(&bytes)).unwrap();
        let leaf = Value::Array(vec![]);
        let mid = Value::Array(vec![leaf.clone(), leaf]);
        assert_eq!(v, Value::Array(vec![mid.clone(), mid]));
        assert!(refused(&bytes).message.contains("root is an array"));
    }

    #[test]
    fn deeply_nested_binary_plists_are_refused_before_parsing() {
        let e = refused(&bplist_of_arrays(&chain(MAX_NESTING, 1)));
        assert!(e.message.contains("root is an array"), "{e}");
        let e = refused(&bplist_of_arrays(&chain(MAX_NESTING + 1, 1)));
        assert_eq!(e.field, FILE);
        assert!(e.message.contains("levels deep"), "{e}");
        let e = refused(&bplist_of_arrays(&chain(300_000, 1)));
        assert!(e.message.contains("levels deep"), "{e}");
        // Shared subtrees count with their full depth wherever they are referenced.
        let mut objects = chain(MAX_NESTING, 1);
        objects[0] = vec![1, 1];
        assert!(refused(&bplist_of_arrays(&objects))
            .message
            .contains("root is an array"));
        objects.insert(0, vec![1]);
        for refs in objects.iter_mut().skip(1) {
            for r in refs.iter_mut() {
                *r += 1;
            }
        }
        assert!(refused(&bplist_of_arrays(&objects))
            .message
            .contains("levels deep"));
    }

    #[test]
    fn exponentially_shared_binary_plists_are_refused() {
        // 40 levels, each referencing the next twice: 2^40 copies once expanded.
        let e = refused(&bplist_of_arrays(&chain(40, 2)));
        assert_eq!(e.field, FILE);
        assert!(e.message.contains("expand"), "{e}");
    }

    #[test]
    fn cyclic_binary_plists_are_refused() {
        let e = refused(&bplist_of_arrays(&[vec![1], vec![0]]));
        assert_eq!(e.field, FILE);
        assert!(e.message.contains("contains itself"), "{e}");
    }

    fn signer() -> &'static (PrivateKey, Certificate) {
        static SIGNER: OnceLock<(PrivateKey, Certificate)> = OnceLock::new();
        SIGNER.get_or_init(|| {
            let key = PrivateKey::generate(KeyAlgorithm::Rsa2048).unwrap();
            let params = CertificateParams::leaf(
                Name::new("Profile Signer"),
                Duration::from_secs(30 * 86_400),
                Duration::from_secs(60),
            );
            let cert = mdm_pki::self_signed(&params, &key).unwrap();
            (key, cert)
        })
    }

    fn sign(content: &[u8]) -> Vec<u8> {
        let (key, cert) = signer();
        cms::sign(content, cert, key, &SignerOptions::default()).unwrap()
    }

    #[test]
    fn signed_profiles_are_verified_and_their_signer_summarised() {
        let (_, cert) = signer();
        let d = two_payloads();
        let unsigned = parse(&xml(&d)).unwrap();
        for content in [xml(&d), binary(&d)] {
            let p = parse(&sign(&content)).unwrap();
            let s = p.signer.clone().unwrap();
            assert_eq!(s.subject, "CN=Profile Signer");
            assert_eq!(s.issuer, "CN=Profile Signer");
            assert_eq!(s.certificate_sha256, hex::encode(cert.sha256()));
            let not_after = time::OffsetDateTime::parse(
                &s.not_after,
                &time::format_description::well_known::Rfc3339,
            )
            .unwrap();
            let expected = cert
                .not_after()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            assert_eq!(not_after.unix_timestamp(), i64::try_from(expected).unwrap());
            assert!(s.not_after.ends_with('Z'), "{}", s.not_after);
            assert!(p.warnings.is_empty(), "{:?}", p.warnings);
            assert_eq!(ParsedProfile { signer: None, ..p }, unsigned);
        }
    }

    #[test]
    fn tampered_signed_profiles_are_refused() {
        let signed = sign(&xml(&two_payloads()));
        let needle = b"com.example.profile.wifi1";
        let at = signed
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap();
        let mut content_flipped = signed.clone();
        content_flipped[at] ^= 0x01;
        let e = refused(&content_flipped);
        assert_eq!(e.field, SIGNATURE);
        assert!(e.message.contains("altered or corrupted"), "{e}");

        // The signature value is the last element of the SignerInfo, at the end of the file.
        let mut signature_flipped = signed.clone();
        let last = signature_flipped.len() - 1;
        signature_flipped[last] ^= 0x01;
        assert_eq!(refused(&signature_flipped).field, SIGNATURE);

        // The original still verifies: the refusals are about the flipped bits.
        assert!(parse(&signed).is_ok());
    }

    #[test]
    fn expired_signers_are_a_warning() {
        let key = PrivateKey::generate(KeyAlgorithm::Rsa2048).unwrap();
        let mut params = CertificateParams::leaf(
            Name::new("Old Signer"),
            Duration::from_secs(86_400),
            Duration::from_secs(60),
        );
        params.not_before = SystemTime::now() - Duration::from_secs(10 * 86_400);
        params.not_after = SystemTime::now() - Duration::from_secs(86_400);
        let cert = mdm_pki::self_signed(&params, &key).unwrap();
        let signed = cms::sign(
            &xml(&two_payloads()),
            &cert,
            &key,
            &SignerOptions::default(),
        )
        .unwrap();
        let p = parse(&signed).unwrap();
        assert_eq!(p.signer.unwrap().subject, "CN=Old Signer");
        assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
        assert!(
            p.warnings[0].contains("\"CN=Old Signer\" expired on"),
            "{:?}",
            p.warnings
        );
    }

    #[test]
    fn signed_content_must_be_a_profile() {
        let e = refused(&sign(b"just some text"));
        assert_eq!(e.field, FILE);
        assert!(e.message.starts_with("The signed content"), "{e}");
        let e = refused(&sign(&xml(&without(two_payloads(), "PayloadContent"))));
        assert_eq!(e.field, "PayloadContent");
    }

    #[test]
    fn der_that_is_not_signed_data_is_refused_as_the_wrong_format() {
        let (_, cert) = signer();
        let e = refused(cert.der());
        assert_eq!(e.field, FILE);
        assert!(e.message.contains("not a CMS SignedData"), "{e}");
        let e = refused(&[0x30, 0x03, 0x02, 0x01]);
        assert_eq!(e.field, FILE);
    }

    fn der(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = content.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes = len.to_be_bytes();
            let skip = bytes.iter().take_while(|b| **b == 0).count();
            out.push(0x80 | (bytes.len() - skip) as u8);
            out.extend(&bytes[skip..]);
        }
        out.extend(content);
        out
    }

    fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
        der(0x30, &parts.concat())
    }

    fn oid(id: &ObjectIdentifier) -> Vec<u8> {
        der(0x06, id.as_bytes())
    }

    /// A SignedData whose signer signs the content directly (no signed attributes, which
    /// `cms::sign` always adds with contentType id-data), so any eContentType can be declared.
    fn signed_as(content: &[u8], content_type: &ObjectIdentifier) -> Vec<u8> {
        let (key, cert) = signer();
        let null = vec![0x05, 0x00];
        let sha256 = seq(&[oid(&mdm_pki::oid::SHA256), null.clone()]);
        let signature_alg = seq(&[oid(&mdm_pki::oid::SHA256_WITH_RSA), null]);
        let key_id = cert.subject_key_identifier().unwrap();
        let signature = key.sign_sha256(content).unwrap();
        let signer_info = seq(&[
            der(0x02, &[3]),
            der(0x80, &key_id),
            sha256.clone(),
            signature_alg,
            der(0x04, &signature),
        ]);
        let encapsulated = seq(&[oid(content_type), der(0xa0, &der(0x04, content))]);
        let signed_data = seq(&[
            der(0x02, &[3]),
            der(0x31, &sha256),
            encapsulated,
            der(0xa0, cert.der()),
            der(0x31, &signer_info),
        ]);
        seq(&[oid(&mdm_pki::oid::ID_SIGNED_DATA), der(0xa0, &signed_data)])
    }

    #[test]
    fn signed_content_type_must_be_id_data() {
        let content = xml(&two_payloads());
        // The hand-built SignedData is valid: with id-data it is accepted.
        let p = parse(&signed_as(&content, &mdm_pki::oid::ID_DATA)).unwrap();
        assert_eq!(p.signer.unwrap().subject, "CN=Profile Signer");
        let tst_info = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.1.4");
        let e = refused(&signed_as(&content, &tst_info));
        assert_eq!(e.field, SIGNATURE);
        assert!(e.message.contains("1.2.840.113549.1.9.16.1.4"), "{e}");
    }

    /// A directory under the system temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            let dir = std::env::temp_dir().join(format!("payload-test-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir(&dir).unwrap();
            TempDir(dir)
        }
        fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn openssl(args: &[&str], dir: &Path) -> bool {
        match Command::new("openssl").args(args).current_dir(dir).output() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => panic!("openssl could not run: {e}"),
            Ok(out) => {
                assert!(
                    out.status.success(),
                    "openssl {args:?} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                true
            }
        }
    }

    #[test]
    fn profiles_signed_by_openssl_are_accepted() {
        let dir = TempDir::new();
        let d = two_payloads();
        std::fs::write(dir.path("profile.mobileconfig"), xml(&d)).unwrap();
        let made_key = openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "key.pem",
                "-out",
                "cert.pem",
                "-subj",
                "/CN=OpenSSL Signer",
                "-days",
                "30",
            ],
            &dir.0,
        );
        if !made_key {
            eprintln!("skipping: the openssl binary is not installed");
            return;
        }
        let cert_pem = std::fs::read_to_string(dir.path("cert.pem")).unwrap();
        let cert = Certificate::from_pem(&cert_pem).unwrap();
        let signing = [
            "-sign",
            "-nodetach",
            "-outform",
            "der",
            "-in",
            "profile.mobileconfig",
            "-signer",
            "cert.pem",
            "-inkey",
            "key.pem",
            "-out",
        ];
        // S/MIME mode rewrites line endings to CRLF before signing; CMS mode with -binary and
        // -stream signs the bytes as they are and writes indefinite-length BER.
        assert!(openssl(
            &[&["smime"], &signing[..], &["smime.der"]].concat(),
            &dir.0
        ));
        assert!(openssl(
            &[&["cms", "-binary", "-stream"], &signing[..], &["cms.ber"]].concat(),
            &dir.0
        ));
        let ber = std::fs::read(dir.path("cms.ber")).unwrap();
        assert_eq!(&ber[..2], &[0x30, 0x80], "expected indefinite-length BER");

        let unsigned = parse(&xml(&d)).unwrap();
        for file in ["smime.der", "cms.ber"] {
            let p = parse(&std::fs::read(dir.path(file)).unwrap()).unwrap();
            let s = p.signer.clone().unwrap();
            assert_eq!(s.subject, "CN=OpenSSL Signer", "{file}");
            assert_eq!(s.certificate_sha256, hex::encode(cert.sha256()), "{file}");
            assert!(p.warnings.is_empty(), "{file}: {:?}", p.warnings);
            assert_eq!(ParsedProfile { signer: None, ..p }, unsigned, "{file}");
        }

        let mut tampered = ber.clone();
        let needle = b"com.example.profile.wifi0";
        let at = tampered
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap();
        tampered[at + 3] ^= 0x20;
        assert_eq!(refused(&tampered).field, SIGNATURE);
    }
}
