//! Parsing of pre-enrollment CSV files: the devices a site expects, imported by an admin.
//!
//! [`parse`] turns the bytes of an uploaded file into typed [`PreenrollRow`]s and per-row
//! [`RowError`]s. It does no I/O and touches no store: the caller decides what to write, and
//! can show every problem of a file at once because one bad row never stops the parse.
//!
//! Columns are found by header name in any order; see [`parse`] for the names accepted.
//! Comma- and semicolon-separated files are read (Excel writes `;` in many European locales),
//! with or without a UTF-8 byte order mark, with CRLF, LF or CR line endings.
//!
//! What it cannot do yet: files in another encoding than UTF-8 (Windows-1252 "CSV" exports,
//! UTF-16 "Unicode text") are rejected rather than transcoded, and tab-separated files are not
//! recognised.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Most data rows one file may hold.
pub const MAX_ROWS: usize = 200_000;

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";
/// Longest part of an offending value quoted back in an error message.
const SHOWN_CHARS: usize = 64;

/// Who owns a device, which decides how it is managed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ownership {
    /// The user's own device (BYOD).
    Personal,
    /// Owned by the organisation.
    Corporate,
    /// The user chooses at enrollment.
    SelectUser,
}

impl Ownership {
    /// Reads an ownership as admins write it: `personal`, `corporate`, `selectuser`
    /// (also `select user`, `select_user`), `company` (corporate) or `byod` (personal), in any
    /// case.
    pub fn parse(s: &str) -> Option<Self> {
        const NAMES: &[(&str, Ownership)] = &[
            ("personal", Ownership::Personal),
            ("byod", Ownership::Personal),
            ("corporate", Ownership::Corporate),
            ("company", Ownership::Corporate),
            ("selectuser", Ownership::SelectUser),
        ];
        lookup(s, NAMES)
    }

    /// The canonical name, as serialised.
    pub fn as_str(&self) -> &'static str {
        match self {
            Ownership::Personal => "personal",
            Ownership::Corporate => "corporate",
            Ownership::SelectUser => "selectuser",
        }
    }
}

/// The operating system family of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Platform {
    /// iPhone and iPod touch.
    #[serde(rename = "iOS")]
    Ios,
    /// iPad.
    #[serde(rename = "iPadOS")]
    IpadOs,
    /// Mac.
    #[serde(rename = "macOS")]
    MacOs,
    /// Apple TV.
    #[serde(rename = "tvOS")]
    TvOs,
    /// Apple Vision Pro.
    #[serde(rename = "visionOS")]
    VisionOs,
}

impl Platform {
    /// Reads a platform in any case: `iOS`, `iPadOS`, `macOS`, `tvOS`, `visionOS`, or the
    /// device words admins often write instead (`iPhone`, `iPad`, `Mac`, `OS X`, `Apple TV`).
    pub fn parse(s: &str) -> Option<Self> {
        const NAMES: &[(&str, Platform)] = &[
            ("ios", Platform::Ios),
            ("iphone", Platform::Ios),
            ("ipados", Platform::IpadOs),
            ("ipad", Platform::IpadOs),
            ("macos", Platform::MacOs),
            ("mac", Platform::MacOs),
            ("osx", Platform::MacOs),
            ("macosx", Platform::MacOs),
            ("tvos", Platform::TvOs),
            ("appletv", Platform::TvOs),
            ("visionos", Platform::VisionOs),
        ];
        lookup(s, NAMES)
    }

    /// Apple's spelling of the name, as serialised.
    pub fn as_str(&self) -> &'static str {
        match self {
            Platform::Ios => "iOS",
            Platform::IpadOs => "iPadOS",
            Platform::MacOs => "macOS",
            Platform::TvOs => "tvOS",
            Platform::VisionOs => "visionOS",
        }
    }
}

/// One valid device row of the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreenrollRow {
    /// The row number a spreadsheet shows for it (the header is row 1).
    pub row: usize,
    /// Upper-cased, 8 to 16 ASCII letters and digits.
    pub serial_number: String,
    /// The name of the person the device is for.
    pub name: String,
    /// The user's address: local part as written, domain lower-cased.
    pub email: String,
    /// Who owns the device.
    pub ownership: Ownership,
    /// The device's operating system family.
    pub platform: Platform,
    /// A phone number as written (digits, spaces and `+-().`).
    pub mobile: Option<String>,
    /// The name the device should carry.
    pub device_name: Option<String>,
}

/// A problem with one row; the row is left out of [`ParsedCsv::rows`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RowError {
    /// The row number a spreadsheet shows (the header is row 1).
    pub row: usize,
    /// The field at fault (`serial_number`, `name`, `email`, `ownership`, `platform`, `mobile`,
    /// `device_name`), or `None` when the whole row is unreadable.
    pub field: Option<&'static str>,
    /// `MISSING`, `INVALID`, `DUPLICATE_IN_FILE`, `FIELD_COUNT` or `ENCODING`.
    pub code: &'static str,
    /// One sentence saying what is wrong and what to do, quoting the value when useful.
    pub message: String,
}

/// The outcome of parsing a readable file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParsedCsv {
    /// The valid rows, in file order.
    pub rows: Vec<PreenrollRow>,
    /// Every problem found, in row order (and field order within a row).
    pub errors: Vec<RowError>,
    /// Header names of the columns that were not used, in file order. A column with an empty
    /// header appears as `(unnamed column N)`, N counting from 1.
    pub ignored_columns: Vec<String>,
    /// Data rows seen, blank rows excluded.
    pub total_rows: usize,
}

/// A problem that makes the whole file unusable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
pub enum CsvFileError {
    /// Not even a header: no bytes, or only blank lines.
    #[error("the file is empty")]
    Empty,
    /// A header but no data rows (blank rows do not count).
    #[error("the file has no rows")]
    NoRows,
    /// More than [`MAX_ROWS`] data rows.
    #[error("the file has more than {limit} device rows; split it into smaller files")]
    TooManyRows { limit: usize },
    /// A required column is absent; `column` is the field name, e.g. `serial_number`.
    #[error(
        "the header has no {column} column; name one column {} (case, spaces, _ and - do not \
         matter)",
        accepted_names(column)
    )]
    MissingColumn { column: &'static str },
    /// Two header cells name the same field (possibly through different aliases); `column`
    /// is the field name.
    #[error(
        "the header has more than one column for {column} ({}); keep only one",
        accepted_names(column)
    )]
    DuplicateColumn { column: String },
    /// The header cannot be read: it is not UTF-8 (or the file is UTF-16). Reading from
    /// memory has no other failure, but any the csv crate reported would land here too.
    #[error("the file cannot be read: {0}")]
    Header(String),
}

impl CsvFileError {
    /// The stable code operators can look up.
    pub fn code(&self) -> &'static str {
        match self {
            CsvFileError::Empty => "CSV_EMPTY",
            CsvFileError::NoRows => "CSV_NO_ROWS",
            CsvFileError::TooManyRows { .. } => "CSV_TOO_MANY_ROWS",
            CsvFileError::MissingColumn { .. } => "CSV_MISSING_COLUMN",
            CsvFileError::DuplicateColumn { .. } => "CSV_DUPLICATE_COLUMN",
            CsvFileError::Header(_) => "CSV_UNREADABLE",
        }
    }
}

/// A sample file an admin can download and fill in: every column and three example rows.
pub fn sample() -> &'static str {
    "name,email,ownership,serial_number,platform,mobile,device_name\r\n\
     Ada Lovelace,ada.lovelace@example.com,corporate,C02XK1ABJGH5,macOS,+44 20 7946 0018,Ada's MacBook Pro\r\n\
     Grace Hopper,grace@example.com,personal,F2LXR7QBHG7F,iOS,(555) 010-4477,\r\n\
     Front Desk,frontdesk@example.com,selectuser,DMPYT3EFGH34,iPadOS,,Reception iPad\r\n"
}

/// The fields of a row, in the order their errors are reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    SerialNumber,
    Name,
    Email,
    Ownership,
    Platform,
    Mobile,
    DeviceName,
}

const FIELDS: [Field; 7] = [
    Field::SerialNumber,
    Field::Name,
    Field::Email,
    Field::Ownership,
    Field::Platform,
    Field::Mobile,
    Field::DeviceName,
];

impl Field {
    fn key(self) -> &'static str {
        match self {
            Field::SerialNumber => "serial_number",
            Field::Name => "name",
            Field::Email => "email",
            Field::Ownership => "ownership",
            Field::Platform => "platform",
            Field::Mobile => "mobile",
            Field::DeviceName => "device_name",
        }
    }

    fn required(self) -> bool {
        !matches!(self, Field::Mobile | Field::DeviceName)
    }

    /// Header names accepted for the column, as shown to admins. They are compared ignoring
    /// case and the word separators ` `, `_` and `-`, so `serial_number` also accepts
    /// `Serial Number` and `SerialNumber`, and `email` accepts `E-Mail`.
    fn accepted(self) -> &'static [&'static str] {
        match self {
            Field::SerialNumber => &["serial_number", "serial"],
            Field::Name => &["name", "full name", "user"],
            Field::Email => &["email", "email address", "mail"],
            Field::Ownership => &["ownership"],
            Field::Platform => &["platform", "os", "device platform"],
            Field::Mobile => &["mobile", "phone", "mobile number", "phone number"],
            Field::DeviceName => &["device_name", "device"],
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

fn accepted_names(column: &str) -> String {
    let accepted = FIELDS
        .iter()
        .find(|f| f.key() == column)
        .map(|f| f.accepted())
        .unwrap_or(&[]);
    let mut out = String::new();
    for (i, name) in accepted.iter().enumerate() {
        if i > 0 {
            out.push_str(if i + 1 == accepted.len() {
                " or "
            } else {
                ", "
            });
        }
        out.push('"');
        out.push_str(name);
        out.push('"');
    }
    out
}

fn is_separator(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'_' | b'-')
}

/// Compares ignoring ASCII case and word separators: `Select_User` matches `selectuser`.
/// Runs per data row for ownership and platform, hence no normalised copies.
fn loose_eq(a: &str, b: &str) -> bool {
    fn loose(s: &str) -> impl Iterator<Item = u8> + '_ {
        s.bytes()
            .filter(|&c| !is_separator(c))
            .map(|c| c.to_ascii_lowercase())
    }
    loose(a).eq(loose(b))
}

fn lookup<T: Copy>(s: &str, names: &[(&str, T)]) -> Option<T> {
    let s = s.trim();
    names
        .iter()
        .find(|(name, _)| loose_eq(s, name))
        .map(|&(_, value)| value)
}

/// Quotes a value back to the admin: cut to [`SHOWN_CHARS`] characters, control characters
/// escaped so a stray tab or line break shows up instead of garbling the message.
fn shown(value: &str) -> String {
    let mut out = String::with_capacity(value.len().min(SHOWN_CHARS * 4) + 2);
    out.push('\'');
    for (i, c) in value.chars().enumerate() {
        if i == SHOWN_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// Picks `;` when the header line has semicolons but no comma outside quotes.
fn detect_delimiter(input: &[u8]) -> u8 {
    let mut in_quotes = false;
    let mut seen_content = false;
    let mut semicolon = false;
    for &b in input {
        match b {
            b'"' => {
                in_quotes = !in_quotes;
                seen_content = true;
            }
            b'\r' | b'\n' if !in_quotes => {
                // Blank lines before the header are skipped by the reader too.
                if seen_content {
                    break;
                }
            }
            b',' if !in_quotes => return b',',
            b';' if !in_quotes => {
                semicolon = true;
                seen_content = true;
            }
            _ => seen_content = true,
        }
    }
    if semicolon {
        b';'
    } else {
        b','
    }
}

/// Spreadsheet row numbers. The csv crate's line count cannot serve: it counts line breaks
/// inside quoted fields, and with CRLF it reports a record's start before the LF of the
/// previous terminator. A spreadsheet shows one row per record plus one per blank line, so
/// this counts records and the empty lines the reader skips between them, treating CRLF, LF
/// and a lone CR each as one line break.
struct RowCounter<'a> {
    input: &'a [u8],
    next_row: usize,
    prev_cr: bool,
}

impl<'a> RowCounter<'a> {
    fn new(input: &'a [u8]) -> Self {
        RowCounter {
            input,
            next_row: 1,
            prev_cr: false,
        }
    }

    /// The row of the record read from bytes `start..end` of the input.
    fn record(&mut self, start: u64, end: u64) -> usize {
        let span = usize::try_from(start)
            .ok()
            .zip(usize::try_from(end).ok())
            .and_then(|(s, e)| self.input.get(s..e))
            .unwrap_or(&[]);
        for &b in span {
            match b {
                b'\n' if self.prev_cr => self.prev_cr = false,
                b'\n' => self.next_row += 1,
                b'\r' => {
                    self.next_row += 1;
                    self.prev_cr = true;
                }
                _ => break,
            }
        }
        let row = self.next_row;
        self.next_row += 1;
        self.prev_cr = span.last() == Some(&b'\r');
        row
    }
}

fn is_blank(record: &csv::ByteRecord) -> bool {
    record
        .iter()
        .all(|f| std::str::from_utf8(f).is_ok_and(|s| s.trim().is_empty()))
}

/// Where each field's column is.
struct Header {
    names: Vec<String>,
    columns: [Option<usize>; FIELDS.len()],
}

impl Header {
    fn read(record: &csv::ByteRecord) -> Result<(Header, Vec<String>), CsvFileError> {
        let mut names = Vec::with_capacity(record.len());
        let mut columns = [None; FIELDS.len()];
        let mut ignored = Vec::new();
        for (i, raw) in record.iter().enumerate() {
            let name = std::str::from_utf8(raw)
                .map_err(|_| {
                    CsvFileError::Header(
                        "the header row is not UTF-8 text; save the file as \"CSV UTF-8\" and \
                         import it again"
                            .to_owned(),
                    )
                })?
                .trim();
            let field = FIELDS
                .iter()
                .find(|f| f.accepted().iter().any(|a| loose_eq(name, a)));
            match field {
                Some(f) if columns[f.index()].is_some() => {
                    return Err(CsvFileError::DuplicateColumn {
                        column: f.key().to_owned(),
                    })
                }
                Some(f) => columns[f.index()] = Some(i),
                None if name.is_empty() => ignored.push(format!("(unnamed column {})", i + 1)),
                None => ignored.push(name.to_owned()),
            }
            names.push(name.to_owned());
        }
        if let Some(missing) = FIELDS
            .iter()
            .find(|f| f.required() && columns[f.index()].is_none())
        {
            return Err(CsvFileError::MissingColumn {
                column: missing.key(),
            });
        }
        Ok((Header { names, columns }, ignored))
    }

    /// The row's fields by [`Field`] (trimmed, `""` for an absent optional column), or the
    /// header name of the first column that is not UTF-8.
    fn decode<'r>(&self, record: &'r csv::ByteRecord) -> Result<[&'r str; FIELDS.len()], &str> {
        let mut out = [""; FIELDS.len()];
        for (slot, column) in out.iter_mut().zip(self.columns) {
            if let Some(i) = column {
                let raw = record.get(i).unwrap_or(b"");
                *slot = std::str::from_utf8(raw)
                    .map_err(|_| self.names.get(i).map(String::as_str).unwrap_or(""))?
                    .trim();
            }
        }
        Ok(out)
    }
}

/// Why a field was refused.
struct Problem {
    code: &'static str,
    message: String,
}

impl Problem {
    fn missing(message: &str) -> Self {
        Problem {
            code: "MISSING",
            message: message.to_owned(),
        }
    }
    fn invalid(message: String) -> Self {
        Problem {
            code: "INVALID",
            message,
        }
    }
}

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

fn longer_than(s: &str, max: usize) -> bool {
    s.chars().nth(max).is_some()
}

/// Whether `v` has the shape of an Apple serial number: 8 to 16 ASCII letters and digits.
pub fn is_serial(v: &str) -> bool {
    (8..=16).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn check_serial(v: &str) -> Result<String, Problem> {
    if v.is_empty() {
        return Err(Problem::missing(
            "the serial number is empty; every device needs the serial number printed on it or \
             on its box",
        ));
    }
    if !is_serial(v) {
        return Err(Problem::invalid(format!(
            "the serial number {} is not valid: it must be 8 to 16 letters and digits, without \
             spaces or punctuation",
            shown(v)
        )));
    }
    Ok(v.to_ascii_uppercase())
}

fn check_name(v: &str) -> Result<String, Problem> {
    if v.is_empty() {
        return Err(Problem::missing(
            "the name is empty; enter the name of the person the device is for",
        ));
    }
    if longer_than(v, 128) {
        return Err(Problem::invalid(format!(
            "the name {} is longer than 128 characters; shorten it",
            shown(v)
        )));
    }
    if has_control(v) {
        return Err(Problem::invalid(format!(
            "the name {} contains control characters such as tabs or line breaks; remove them",
            shown(v)
        )));
    }
    Ok(v.to_owned())
}

fn check_email(v: &str) -> Result<String, Problem> {
    if v.is_empty() {
        return Err(Problem::missing(
            "the email address is empty; enter the address of the person the device is for",
        ));
    }
    let invalid = |why: &str| {
        Problem::invalid(format!(
            "the email address {} is not valid: {why}",
            shown(v)
        ))
    };
    if v.chars().count() < 3 || longer_than(v, 254) {
        return Err(invalid("it must be 3 to 254 characters long"));
    }
    if v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("it must not contain spaces or control characters"));
    }
    let Some((local, domain)) = v.split_once('@').filter(|(_, d)| !d.contains('@')) else {
        return Err(invalid("it must contain exactly one @"));
    };
    if local.is_empty() {
        return Err(invalid("it has nothing before the @"));
    }
    if !domain.contains('.')
        || domain.starts_with('.')
        || domain.ends_with('.')
        || domain.contains("..")
    {
        return Err(invalid(
            "the part after the @ must be a domain name such as example.com",
        ));
    }
    let mut out = String::with_capacity(v.len());
    out.push_str(local);
    out.push('@');
    if domain.is_ascii() {
        out.extend(domain.chars().map(|c| c.to_ascii_lowercase()));
    } else {
        out.push_str(&domain.to_lowercase());
    }
    Ok(out)
}

fn check_ownership(v: &str) -> Result<Ownership, Problem> {
    if v.is_empty() {
        return Err(Problem::missing(
            "the ownership is empty; enter personal, corporate or selectuser",
        ));
    }
    Ownership::parse(v).ok_or_else(|| {
        Problem::invalid(format!(
            "the ownership {} is not recognised; use personal, corporate or selectuser",
            shown(v)
        ))
    })
}

fn check_platform(v: &str) -> Result<Platform, Problem> {
    if v.is_empty() {
        return Err(Problem::missing(
            "the platform is empty; enter iOS, iPadOS, macOS, tvOS or visionOS",
        ));
    }
    Platform::parse(v).ok_or_else(|| {
        Problem::invalid(format!(
            "the platform {} is not recognised; use iOS, iPadOS, macOS, tvOS or visionOS",
            shown(v)
        ))
    })
}

fn check_mobile(v: &str) -> Result<Option<String>, Problem> {
    if v.is_empty() {
        return Ok(None);
    }
    let allowed = v.len() <= 32
        && v.bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b' ' | b'+' | b'-' | b'(' | b')' | b'.'));
    if !allowed || v.bytes().filter(u8::is_ascii_digit).count() < 5 {
        return Err(Problem::invalid(format!(
            "the mobile number {} is not valid: use at least 5 digits and at most 32 characters, \
             with only spaces and + - ( ) . besides the digits",
            shown(v)
        )));
    }
    Ok(Some(v.to_owned()))
}

fn check_device_name(v: &str) -> Result<Option<String>, Problem> {
    if v.is_empty() {
        return Ok(None);
    }
    if longer_than(v, 64) {
        return Err(Problem::invalid(format!(
            "the device name {} is longer than 64 characters; shorten it",
            shown(v)
        )));
    }
    if has_control(v) {
        return Err(Problem::invalid(format!(
            "the device name {} contains control characters such as tabs or line breaks; \
             remove them",
            shown(v)
        )));
    }
    Ok(Some(v.to_owned()))
}

/// Collects the rows and errors of the data part of a file.
struct Collector {
    rows: Vec<PreenrollRow>,
    errors: Vec<RowError>,
    /// First row of each valid serial number, to report repeats.
    first_row: HashMap<String, usize>,
}

impl Collector {
    fn keep<T>(&mut self, row: usize, field: Field, checked: Result<T, Problem>) -> Option<T> {
        match checked {
            Ok(value) => Some(value),
            Err(problem) => {
                self.errors.push(RowError {
                    row,
                    field: Some(field.key()),
                    code: problem.code,
                    message: problem.message,
                });
                None
            }
        }
    }

    fn row(&mut self, row: usize, fields: [&str; FIELDS.len()]) {
        let value = |f: Field| fields[f.index()];
        let serial = check_serial(value(Field::SerialNumber)).and_then(|serial| {
            match self.first_row.get(&serial) {
                Some(&first) => Err(Problem {
                    code: "DUPLICATE_IN_FILE",
                    message: format!(
                        "the serial number {} already appears in row {first}; keep one row per \
                         device",
                        shown(&serial)
                    ),
                }),
                None => {
                    self.first_row.insert(serial.clone(), row);
                    Ok(serial)
                }
            }
        });
        let serial_number = self.keep(row, Field::SerialNumber, serial);
        let name = self.keep(row, Field::Name, check_name(value(Field::Name)));
        let email = self.keep(row, Field::Email, check_email(value(Field::Email)));
        let ownership = self.keep(
            row,
            Field::Ownership,
            check_ownership(value(Field::Ownership)),
        );
        let platform = self.keep(row, Field::Platform, check_platform(value(Field::Platform)));
        let mobile = self.keep(row, Field::Mobile, check_mobile(value(Field::Mobile)));
        let device_name = self.keep(
            row,
            Field::DeviceName,
            check_device_name(value(Field::DeviceName)),
        );
        if let (
            Some(serial_number),
            Some(name),
            Some(email),
            Some(ownership),
            Some(platform),
            Some(mobile),
            Some(device_name),
        ) = (
            serial_number,
            name,
            email,
            ownership,
            platform,
            mobile,
            device_name,
        ) {
            self.rows.push(PreenrollRow {
                row,
                serial_number,
                name,
                email,
                ownership,
                platform,
                mobile,
                device_name,
            });
        }
    }
}

fn unreadable(err: &csv::Error) -> CsvFileError {
    CsvFileError::Header(err.to_string())
}

/// Parses a pre-enrollment CSV file.
///
/// Columns are recognised by header name in any order, ignoring case, surrounding spaces and
/// the separators ` `, `_`, `-` between words:
///
/// | field | required | header names |
/// |---|---|---|
/// | `name` | yes | name, full name, user |
/// | `email` | yes | email, email address, e-mail, mail |
/// | `ownership` | yes | ownership |
/// | `serial_number` | yes | serial number, serial, serialnumber |
/// | `platform` | yes | platform, os, device platform |
/// | `mobile` | no | mobile, phone, mobile number, phone number |
/// | `device_name` | no | device name, devicename, device |
///
/// Other columns are listed in [`ParsedCsv::ignored_columns`]. Blank rows are skipped. Each
/// row yields either a [`PreenrollRow`] or one [`RowError`] per faulty field (one per row
/// when it has the wrong number of fields or is not UTF-8). A serial number seen earlier in
/// the file is an error on the later rows.
///
/// # Errors
/// A [`CsvFileError`] when the file is empty, has no data rows or more than [`MAX_ROWS`], or
/// its header is unreadable, lacks a required column or names one twice.
pub fn parse(bytes: &[u8]) -> Result<ParsedCsv, CsvFileError> {
    if bytes.starts_with(b"\xFF\xFE") || bytes.starts_with(b"\xFE\xFF") {
        return Err(CsvFileError::Header(
            "the file is UTF-16 text; save it as \"CSV UTF-8\" and import it again".to_owned(),
        ));
    }
    let input = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
    let delimiter = detect_delimiter(input);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(delimiter)
        .from_reader(input);
    let mut counter = RowCounter::new(input);
    let mut record = csv::ByteRecord::new();

    let (header, ignored_columns) = loop {
        let start = reader.position().byte();
        if !reader
            .read_byte_record(&mut record)
            .map_err(|e| unreadable(&e))?
        {
            return Err(CsvFileError::Empty);
        }
        counter.record(start, reader.position().byte());
        if !is_blank(&record) {
            break Header::read(&record)?;
        }
    };
    let width = header.names.len();

    let mut collector = Collector {
        rows: Vec::new(),
        errors: Vec::new(),
        first_row: HashMap::new(),
    };
    let mut total_rows = 0;
    loop {
        let start = reader.position().byte();
        if !reader
            .read_byte_record(&mut record)
            .map_err(|e| unreadable(&e))?
        {
            break;
        }
        let row = counter.record(start, reader.position().byte());
        if is_blank(&record) {
            continue;
        }
        total_rows += 1;
        if total_rows > MAX_ROWS {
            return Err(CsvFileError::TooManyRows { limit: MAX_ROWS });
        }
        if record.len() != width {
            let message = format!(
                "expected {width} fields as in the header but found {}; check for missing or \
                 extra '{}' separators (a value containing one must be in double quotes)",
                record.len(),
                char::from(delimiter)
            );
            collector.errors.push(RowError {
                row,
                field: None,
                code: "FIELD_COUNT",
                message,
            });
            continue;
        }
        match header.decode(&record) {
            Ok(fields) => collector.row(row, fields),
            Err(column) => collector.errors.push(RowError {
                row,
                field: None,
                code: "ENCODING",
                message: format!(
                    "this row is not UTF-8 text (column {}); save the file as \"CSV UTF-8\" and \
                     import it again",
                    shown(column)
                ),
            }),
        }
    }
    if total_rows == 0 {
        return Err(CsvFileError::NoRows);
    }
    Ok(ParsedCsv {
        rows: collector.rows,
        errors: collector.errors,
        ignored_columns,
        total_rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "name,email,ownership,serial_number,platform,mobile,device_name";

    fn parsed(input: &str) -> ParsedCsv {
        parse(input.as_bytes()).unwrap()
    }

    fn file(rows: &[&str]) -> String {
        let mut s = String::from(HEADER);
        s.push('\n');
        for r in rows {
            s.push_str(r);
            s.push('\n');
        }
        s
    }

    /// (row, field, code) of every error, for compact assertions.
    fn error_keys(p: &ParsedCsv) -> Vec<(usize, Option<&'static str>, &'static str)> {
        p.errors.iter().map(|e| (e.row, e.field, e.code)).collect()
    }

    fn ada(row: usize) -> PreenrollRow {
        PreenrollRow {
            row,
            serial_number: "C02XK1ABJGH5".into(),
            name: "Ada Lovelace".into(),
            email: "ada@example.com".into(),
            ownership: Ownership::Corporate,
            platform: Platform::MacOs,
            mobile: Some("+44 20 7946 0018".into()),
            device_name: Some("Ada's Mac".into()),
        }
    }

    #[test]
    fn reads_a_plain_file() {
        let p = parsed(&file(&[
            "Ada Lovelace,ada@example.com,corporate,C02XK1ABJGH5,macOS,+44 20 7946 0018,Ada's Mac",
        ]));
        assert_eq!(p.rows, vec![ada(2)]);
        assert!(p.errors.is_empty());
        assert!(p.ignored_columns.is_empty());
        assert_eq!(p.total_rows, 1);
    }

    #[test]
    fn columns_in_any_order() {
        let p = parsed(
            "device_name,platform,serial_number,mobile,ownership,email,name\n\
             Ada's Mac,macOS,C02XK1ABJGH5,+44 20 7946 0018,corporate,ada@example.com,Ada Lovelace\n",
        );
        assert_eq!(p.rows, vec![ada(2)]);
        assert!(p.errors.is_empty());
    }

    #[test]
    fn optional_columns_may_be_absent_or_empty() {
        let p = parsed(
            "serial,name,email,ownership,os\n\
             C02XK1ABJGH5,Ada Lovelace,ada@example.com,corporate,macOS\n",
        );
        assert_eq!(p.rows.len(), 1);
        assert_eq!(p.rows[0].mobile, None);
        assert_eq!(p.rows[0].device_name, None);

        let p = parsed(&file(&[
            "Ada Lovelace,ada@example.com,corporate,C02XK1ABJGH5,macOS,  ,",
        ]));
        assert_eq!(p.rows[0].mobile, None);
        assert_eq!(p.rows[0].device_name, None);
    }

    #[test]
    fn header_aliases_case_spacing_and_separators() {
        let headers = [
            " Full Name ,E-Mail,OWNERSHIP,Serial_Number,Device Platform,Phone Number,DeviceName",
            "user,Email Address,Ownership,SerialNumber,OS,Phone,Device",
            "Name,mail,ownership,serial-number,platform,Mobile_Number,device_name",
            "NAME,e_mail,ownership,Serial,Platform,mobile,Device-Name",
        ];
        for header in headers {
            let input = format!(
                "{header}\r\nAda Lovelace,ada@example.com,corporate,C02XK1ABJGH5,macOS,\
                 +44 20 7946 0018,Ada's Mac\r\n"
            );
            let p = parsed(&input);
            assert_eq!(p.rows, vec![ada(2)], "header {header:?}");
            assert!(p.ignored_columns.is_empty(), "header {header:?}");
        }
    }

    #[test]
    fn username_is_not_a_name_alias() {
        let err = parse(b"username,email,ownership,serial,platform\n").unwrap_err();
        assert_eq!(err, CsvFileError::MissingColumn { column: "name" });
    }

    #[test]
    fn byte_order_mark_is_skipped() {
        let input = format!(
            "\u{FEFF}{}",
            file(&["Ada Lovelace,ada@example.com,corporate,C02XK1ABJGH5,macOS,+44 20 7946 0018,Ada's Mac"])
        );
        assert!(input.as_bytes().starts_with(UTF8_BOM));
        let p = parsed(&input);
        assert_eq!(p.rows, vec![ada(2)]);
        assert!(p.ignored_columns.is_empty());
    }

    #[test]
    fn crlf_rows_are_numbered_like_a_spreadsheet() {
        let input = format!(
            "{HEADER}\r\n\
             Ada Lovelace,ada@example.com,corporate,C02XK1ABJGH5,macOS,,\r\n\
             \r\n\
             Bad Row,bad,corporate,C02XK1ABJGH6,macOS,,\r\n\
             Grace Hopper,grace@example.com,personal,F2LXR7QBHG7F,iOS,,\r\n"
        );
        let p = parsed(&input);
        assert_eq!(p.rows.iter().map(|r| r.row).collect::<Vec<_>>(), vec![2, 5]);
        assert_eq!(error_keys(&p), vec![(4, Some("email"), "INVALID")]);
        assert_eq!(p.rows[1].device_name, None);
        assert_eq!(p.total_rows, 3);
    }

    #[test]
    fn cr_only_line_endings() {
        let input = format!(
            "{HEADER}\r\
             Ada Lovelace,ada@example.com,corporate,C02XK1ABJGH5,macOS,,\r\
             \r\
             Grace Hopper,grace@example.com,personal,F2LXR7QBHG7F,iOS,,\r"
        );
        let p = parsed(&input);
        assert_eq!(p.rows.iter().map(|r| r.row).collect::<Vec<_>>(), vec![2, 4]);
    }

    #[test]
    fn semicolon_separated_file() {
        let input = "Name;E-Mail;Ownership;Serial Number;Platform;Mobile;Device Name\r\n\
                     Lovelace, Ada;ada@example.com;Corporate;C02XK1ABJGH5;macOS;+44 20 7946 0018;\"Ada's Mac; office\"\r\n\
                     Only;three;fields\r\n";
        let p = parsed(input);
        assert_eq!(p.rows.len(), 1);
        assert_eq!(p.rows[0].name, "Lovelace, Ada");
        assert_eq!(p.rows[0].device_name.as_deref(), Some("Ada's Mac; office"));
        assert_eq!(error_keys(&p), vec![(3, None, "FIELD_COUNT")]);
        assert!(
            p.errors[0].message.contains("';'"),
            "{}",
            p.errors[0].message
        );
    }

    #[test]
    fn a_quoted_semicolon_in_a_comma_header_keeps_commas() {
        assert_eq!(detect_delimiter(b"\"a;b\",c\n"), b',');
        assert_eq!(detect_delimiter(b"\"a,b\";c\n"), b';');
        assert_eq!(detect_delimiter(b"\n\na;b\nx,y\n"), b';');
        assert_eq!(detect_delimiter(b"name\n"), b',');
    }

    #[test]
    fn quoted_fields_with_commas_quotes_and_line_breaks() {
        let input = format!(
            "{HEADER}\n\
             \"Lovelace, Ada\",ada@example.com,corporate,C02XK1ABJGH5,macOS,,\"The \"\"Engine\"\" Mac\"\n\
             Grace Hopper,grace@example.com,personal,F2LXR7QBHG7F,iOS,,\"two\nlines\"\n\
             Bad,grace@example.com,personal,F2LXR7QBHG7G,windows,,\n"
        );
        let p = parsed(&input);
        assert_eq!(p.rows.len(), 1);
        assert_eq!(p.rows[0].name, "Lovelace, Ada");
        assert_eq!(p.rows[0].device_name.as_deref(), Some("The \"Engine\" Mac"));
        // The line break inside the quoted field does not count as a spreadsheet row.
        assert_eq!(
            error_keys(&p),
            vec![
                (3, Some("device_name"), "INVALID"),
                (4, Some("platform"), "INVALID")
            ]
        );
        assert!(
            p.errors[0].message.contains("two\\nlines"),
            "{}",
            p.errors[0].message
        );
    }

    #[test]
    fn fields_are_trimmed_and_normalised() {
        let p = parsed(&file(&[
            "  Ada Lovelace  , Ada.L@Example.COM ,Select User,  c02xk1abjgh5 , os x ,\u{a0}(555) 010-4477 , Mac ",
        ]));
        let r = &p.rows[0];
        assert_eq!(r.name, "Ada Lovelace");
        assert_eq!(r.email, "Ada.L@example.com");
        assert_eq!(r.ownership, Ownership::SelectUser);
        assert_eq!(r.serial_number, "C02XK1ABJGH5");
        assert_eq!(r.platform, Platform::MacOs);
        assert_eq!(r.mobile.as_deref(), Some("(555) 010-4477"));
        assert_eq!(r.device_name.as_deref(), Some("Mac"));
    }

    #[test]
    fn invalid_values_name_row_and_field() {
        let long = "x".repeat(129);
        let long_device = "d".repeat(65);
        let cases: Vec<(&str, &str, &str)> = vec![
            ("serial_number", "", "MISSING"),
            ("serial_number", "C02XK1A", "INVALID"),
            ("serial_number", "C02XK1ABJGH5C02XK", "INVALID"),
            ("serial_number", "C02X-K1ABJGH5", "INVALID"),
            ("serial_number", "C02X K1ABJGH5", "INVALID"),
            ("serial_number", "C02XK1ABJGHÉ", "INVALID"),
            ("name", "", "MISSING"),
            ("name", &long, "INVALID"),
            ("name", "Ada\u{7}Lovelace", "INVALID"),
            ("email", "", "MISSING"),
            ("email", "a@", "INVALID"),
            ("email", "ada.example.com", "INVALID"),
            ("email", "ada@@example.com", "INVALID"),
            ("email", "a@b@example.com", "INVALID"),
            ("email", "@example.com", "INVALID"),
            ("email", "ada@localhost", "INVALID"),
            ("email", "ada@.example.com", "INVALID"),
            ("email", "ada@example.com.", "INVALID"),
            ("email", "ada@example..com", "INVALID"),
            ("email", "ada lovelace@example.com", "INVALID"),
            ("ownership", "", "MISSING"),
            ("ownership", "rented", "INVALID"),
            ("platform", "", "MISSING"),
            ("platform", "windows", "INVALID"),
            ("mobile", "1234", "INVALID"),
            ("mobile", "+1 555 CALL ME", "INVALID"),
            ("mobile", "123456789012345678901234567890123", "INVALID"),
            ("device_name", &long_device, "INVALID"),
            ("device_name", "tab\there", "INVALID"),
        ];
        for (field, value, code) in cases {
            let mut values = [
                ("name", "Ada Lovelace".to_owned()),
                ("email", "ada@example.com".to_owned()),
                ("ownership", "corporate".to_owned()),
                ("serial_number", "C02XK1ABJGH5".to_owned()),
                ("platform", "macOS".to_owned()),
                ("mobile", "".to_owned()),
                ("device_name", "".to_owned()),
            ];
            for (k, v) in values.iter_mut() {
                if *k == field {
                    *v = format!("\"{}\"", value.replace('"', "\"\""));
                }
            }
            let row: Vec<&str> = values.iter().map(|(_, v)| v.as_str()).collect();
            let valid = "Grace Hopper,grace@example.com,personal,F2LXR7QBHG7F,iOS,,";
            let p = parsed(&file(&[valid, &row.join(",")]));
            assert_eq!(
                error_keys(&p),
                vec![(3, Some(field), code)],
                "{field} = {value:?}"
            );
            assert_eq!(p.rows.len(), 1, "{field} = {value:?}");
            assert_eq!(p.total_rows, 2);
            let message = &p.errors[0].message;
            if code == "INVALID" && value.chars().count() <= SHOWN_CHARS && !has_control(value) {
                assert!(message.contains(value), "{message} should quote {value:?}");
            }
        }
    }

    #[test]
    fn boundary_values_are_accepted() {
        let name = "n".repeat(128);
        let device = "é".repeat(64);
        let local = "l".repeat(242);
        let email = format!("{local}@example.com");
        assert_eq!(email.len(), 254);
        let row = format!("{name},{email},byod,ABCD1234,apple tv,12345,{device}");
        let p = parsed(&file(&[
            &row,
            "N,a@b.c,company,ABCDEFGH12345678,iPhone,+1 (555) 010.4477,",
        ]));
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(p.rows[0].ownership, Ownership::Personal);
        assert_eq!(p.rows[0].platform, Platform::TvOs);
        assert_eq!(p.rows[1].ownership, Ownership::Corporate);
        assert_eq!(p.rows[1].platform, Platform::Ios);

        let too_long = format!("{}@example.com", "l".repeat(243));
        let p = parsed(&file(&[&format!("N,{too_long},byod,ABCD1234,ios,,")]));
        assert_eq!(error_keys(&p), vec![(2, Some("email"), "INVALID")]);
    }

    #[test]
    fn every_bad_field_of_a_row_is_reported_once() {
        let p = parsed(&file(&[
            ",not-an-email,rented,bad,windows,12,",
            "Grace Hopper,grace@example.com,personal,F2LXR7QBHG7F,iOS,,",
            "Ada Lovelace,ada@example.com,corporate,short,macOS,,",
        ]));
        assert_eq!(
            error_keys(&p),
            vec![
                (2, Some("serial_number"), "INVALID"),
                (2, Some("name"), "MISSING"),
                (2, Some("email"), "INVALID"),
                (2, Some("ownership"), "INVALID"),
                (2, Some("platform"), "INVALID"),
                (2, Some("mobile"), "INVALID"),
                (4, Some("serial_number"), "INVALID"),
            ]
        );
        assert_eq!(p.rows.len(), 1);
        assert_eq!(p.total_rows, 3);
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        let value = "z".repeat(300);
        let p = parsed(&file(&[&format!(
            "Ada,ada@example.com,corporate,C02XK1ABJGH5,{value},,"
        )]));
        let message = &p.errors[0].message;
        assert!(message.contains(&format!("'{}…'", "z".repeat(SHOWN_CHARS))));
        assert!(!message.contains(&"z".repeat(SHOWN_CHARS + 1)));
    }

    #[test]
    fn missing_required_column() {
        for (drop, key) in [
            ("name", "name"),
            ("email", "email"),
            ("ownership", "ownership"),
            ("serial_number", "serial_number"),
            ("platform", "platform"),
        ] {
            let header: Vec<&str> = HEADER.split(',').filter(|c| *c != drop).collect();
            let err = parse(format!("{}\nx\n", header.join(",")).as_bytes()).unwrap_err();
            assert_eq!(err, CsvFileError::MissingColumn { column: key });
            assert_eq!(err.code(), "CSV_MISSING_COLUMN");
        }
        let err = parse(b"name,email,ownership,platform\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the header has no serial_number column; name one column \"serial_number\" or \
             \"serial\" (case, spaces, _ and - do not matter)"
        );
    }

    #[test]
    fn duplicate_column() {
        let err = parse(
            b"name,email,ownership,Serial Number,platform,serial\nA,a@b.c,byod,ABCD1234,ios,ABCD1234\n",
        )
        .unwrap_err();
        assert_eq!(
            err,
            CsvFileError::DuplicateColumn {
                column: "serial_number".into()
            }
        );
        assert_eq!(err.code(), "CSV_DUPLICATE_COLUMN");
        assert!(err.to_string().contains("serial_number"));

        let err = parse(b"name,email,phone,ownership,serial,platform,mobile\n").unwrap_err();
        assert_eq!(
            err,
            CsvFileError::DuplicateColumn {
                column: "mobile".into()
            }
        );
    }

    #[test]
    fn unknown_columns_are_ignored_and_listed() {
        let p = parsed(
            "Department,name,email,ownership,serial,platform,,Notes,notes\n\
             Sales,Ada Lovelace,ada@example.com,corporate,C02XK1ABJGH5,macOS,x,anything,\n",
        );
        assert_eq!(
            p.ignored_columns,
            vec!["Department", "(unnamed column 7)", "Notes", "notes"]
        );
        assert_eq!(p.rows.len(), 1);
        assert!(p.errors.is_empty());
    }

    #[test]
    fn blank_rows_are_skipped_but_counted_as_rows() {
        let input = format!(
            "\n{HEADER}\n\
             \n\
             ,,,,,,\n\
             \u{20},  ,,,,,\n\
             Ada Lovelace,ada@example.com,corporate,C02XK1ABJGH5,macOS,,\n\
             ,\n\
             Grace Hopper,grace@example.com,personal,F2LXR7QBHG7F,iOS,,x\n\n"
        );
        let p = parsed(&input);
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(p.total_rows, 2);
        // A spreadsheet shows the leading blank line as row 1 and the header as row 2.
        assert_eq!(p.rows.iter().map(|r| r.row).collect::<Vec<_>>(), vec![6, 8]);
    }

    #[test]
    fn field_count_mismatch_does_not_stop_the_parse() {
        let p = parsed(&file(&[
            "Ada Lovelace,ada@example.com,corporate,C02XK1ABJGH5,macOS",
            "Grace Hopper,grace@example.com,personal,F2LXR7QBHG7F,iOS,,,extra",
            "Grace Hopper,grace@example.com,personal,F2LXR7QBHG7F,iOS,,",
        ]));
        assert_eq!(
            error_keys(&p),
            vec![(2, None, "FIELD_COUNT"), (3, None, "FIELD_COUNT")]
        );
        assert!(p.errors[0].message.contains("expected 7"));
        assert!(p.errors[0].message.contains("found 5"));
        assert!(p.errors[1].message.contains("found 8"));
        assert_eq!(p.rows.len(), 1);
        assert_eq!(p.rows[0].row, 4);
        assert_eq!(p.total_rows, 3);
    }

    #[test]
    fn repeated_serial_numbers_point_at_the_first() {
        let p = parsed(&file(&[
            "Ada Lovelace,ada@example.com,corporate,C02XK1ABJGH5,macOS,,",
            "Grace Hopper,grace@example.com,personal,F2LXR7QBHG7F,iOS,,",
            "Ada Again,ada@example.com,corporate,c02xk1abjgh5,macOS,,",
            "Ada Thrice,bad,corporate,C02XK1ABJGH5,macOS,,",
        ]));
        assert_eq!(
            error_keys(&p),
            vec![
                (4, Some("serial_number"), "DUPLICATE_IN_FILE"),
                (5, Some("serial_number"), "DUPLICATE_IN_FILE"),
                (5, Some("email"), "INVALID"),
            ]
        );
        assert!(
            p.errors[0].message.contains("row 2"),
            "{}",
            p.errors[0].message
        );
        assert!(p.errors[1].message.contains("row 2"));
        assert_eq!(p.rows.len(), 2);
    }

    #[test]
    fn a_serial_counts_as_seen_even_when_its_row_has_other_errors() {
        let p = parsed(&file(&[
            "Ada Lovelace,bad,corporate,C02XK1ABJGH5,macOS,,",
            "Ada Lovelace,ada@example.com,corporate,C02XK1ABJGH5,macOS,,",
        ]));
        assert_eq!(
            error_keys(&p),
            vec![
                (2, Some("email"), "INVALID"),
                (3, Some("serial_number"), "DUPLICATE_IN_FILE"),
            ]
        );
        assert!(p.rows.is_empty());
    }

    #[test]
    fn a_row_that_is_not_utf8_is_an_error_for_that_row() {
        let mut input =
            file(&["Ada Lovelace,ada@example.com,corporate,C02XK1ABJGH5,macOS,,"]).into_bytes();
        // "Jos\xE9" is Windows-1252 for José.
        input
            .extend_from_slice(b"Jos\xE9 Garc\xEDa,jose@example.com,personal,F2LXR7QBHG7F,iOS,,\n");
        input.extend_from_slice(b"Grace Hopper,grace@example.com,personal,DMPYT3EFGH34,iOS,,\n");
        let p = parse(&input).unwrap();
        assert_eq!(error_keys(&p), vec![(3, None, "ENCODING")]);
        assert!(
            p.errors[0].message.contains("'name'"),
            "{}",
            p.errors[0].message
        );
        assert_eq!(p.rows.len(), 2);
        assert_eq!(p.total_rows, 3);
    }

    #[test]
    fn invalid_utf8_in_an_ignored_column_is_harmless() {
        let mut input = b"name,email,ownership,serial,platform,notes\n".to_vec();
        input.extend_from_slice(b"Ada,ada@example.com,corporate,C02XK1ABJGH5,macOS,caf\xE9\n");
        let p = parse(&input).unwrap();
        assert!(p.errors.is_empty());
        assert_eq!(p.rows.len(), 1);
    }

    #[test]
    fn a_header_that_is_not_utf8_is_a_file_error() {
        let err = parse(b"n\xE4me,email,ownership,serial,platform\nA,a@b.c,byod,ABCD1234,ios\n")
            .unwrap_err();
        assert!(matches!(err, CsvFileError::Header(_)));
        assert_eq!(err.code(), "CSV_UNREADABLE");
        assert!(err.to_string().contains("UTF-8"));

        let utf16: Vec<u8> = [0xFF, 0xFE]
            .into_iter()
            .chain("name".encode_utf16().flat_map(u16::to_le_bytes))
            .collect();
        let err = parse(&utf16).unwrap_err();
        assert!(err.to_string().contains("UTF-16"), "{err}");
    }

    #[test]
    fn empty_and_header_only_files() {
        for empty in [&b""[..], b"\xEF\xBB\xBF", b"\n\r\n\n", b",,,\n , \n"] {
            let err = parse(empty).unwrap_err();
            assert_eq!(err, CsvFileError::Empty, "{empty:?}");
            assert_eq!(err.code(), "CSV_EMPTY");
            assert_eq!(err.to_string(), "the file is empty");
        }
        for header_only in [
            HEADER.to_owned(),
            format!("{HEADER}\r\n"),
            format!("{HEADER}\n\n,,,,,,\n"),
        ] {
            let err = parse(header_only.as_bytes()).unwrap_err();
            assert_eq!(err, CsvFileError::NoRows);
            assert_eq!(err.code(), "CSV_NO_ROWS");
            assert_eq!(err.to_string(), "the file has no rows");
        }
    }

    #[test]
    fn too_many_rows() {
        // Single-field rows are counted before they fail the field count, keeping this cheap.
        let mut input = format!("{HEADER}\n");
        input.push_str(&"x\n".repeat(MAX_ROWS + 1));
        let err = parse(input.as_bytes()).unwrap_err();
        assert_eq!(err, CsvFileError::TooManyRows { limit: MAX_ROWS });
        assert_eq!(err.code(), "CSV_TOO_MANY_ROWS");
        assert!(err.to_string().contains("200000"));

        let mut input = format!("{HEADER}\n");
        input.push_str(&"x\n".repeat(MAX_ROWS));
        let p = parse(input.as_bytes()).unwrap();
        assert_eq!(p.total_rows, MAX_ROWS);
        assert_eq!(p.errors.len(), MAX_ROWS);
        assert_eq!(p.errors[MAX_ROWS - 1].row, MAX_ROWS + 1);
    }

    #[test]
    fn sample_parses_cleanly() {
        let sample = sample();
        assert!(sample
            .starts_with("name,email,ownership,serial_number,platform,mobile,device_name\r\n"));
        assert_eq!(sample.matches("\r\n").count(), sample.matches('\n').count());
        let p = parsed(sample);
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert!(p.ignored_columns.is_empty());
        assert_eq!(p.total_rows, 3);
        let ownerships: Vec<_> = p.rows.iter().map(|r| r.ownership).collect();
        assert_eq!(
            ownerships,
            vec![
                Ownership::Corporate,
                Ownership::Personal,
                Ownership::SelectUser
            ]
        );
        let platforms: Vec<_> = p.rows.iter().map(|r| r.platform).collect();
        assert_eq!(
            platforms,
            vec![Platform::MacOs, Platform::Ios, Platform::IpadOs]
        );
        assert_eq!(
            p.rows.iter().map(|r| r.row).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
    }

    #[test]
    fn fifty_thousand_rows() {
        let mut input = String::with_capacity(50_000 * 90);
        input.push_str(HEADER);
        input.push_str("\r\n");
        for i in 0..50_000 {
            input.push_str(&format!(
                "User {i},user{i}@example.com,corporate,SN{i:08},iOS,+1 555 {i:05},Phone {i}\r\n"
            ));
        }
        let p = parsed(&input);
        assert!(p.errors.is_empty(), "{:?}", p.errors.first());
        assert_eq!(p.rows.len(), 50_000);
        assert_eq!(p.total_rows, 50_000);
        assert_eq!(p.rows[49_999].row, 50_001);
        assert_eq!(p.rows[49_999].serial_number, "SN00049999");
    }

    #[test]
    fn ownership_and_platform_names() {
        for (input, want) in [
            ("personal", Ownership::Personal),
            ("BYOD", Ownership::Personal),
            ("Corporate", Ownership::Corporate),
            ("company", Ownership::Corporate),
            ("selectuser", Ownership::SelectUser),
            ("Select User", Ownership::SelectUser),
            ("select_user", Ownership::SelectUser),
        ] {
            assert_eq!(Ownership::parse(input), Some(want), "{input}");
        }
        assert_eq!(Ownership::parse("rental"), None);
        assert_eq!(Ownership::parse(""), None);
        for o in [
            Ownership::Personal,
            Ownership::Corporate,
            Ownership::SelectUser,
        ] {
            assert_eq!(Ownership::parse(o.as_str()), Some(o));
            assert_eq!(
                serde_json::to_string(&o).unwrap(),
                format!("\"{}\"", o.as_str())
            );
            let back: Ownership = serde_json::from_str(&format!("\"{}\"", o.as_str())).unwrap();
            assert_eq!(back, o);
        }
        assert_eq!(Ownership::SelectUser.as_str(), "selectuser");

        for (input, want) in [
            ("iOS", Platform::Ios),
            ("iphone", Platform::Ios),
            ("IPADOS", Platform::IpadOs),
            ("iPad", Platform::IpadOs),
            ("macOS", Platform::MacOs),
            ("Mac", Platform::MacOs),
            ("OSX", Platform::MacOs),
            ("OS X", Platform::MacOs),
            ("tvOS", Platform::TvOs),
            ("AppleTV", Platform::TvOs),
            ("Apple TV", Platform::TvOs),
            ("visionOS", Platform::VisionOs),
        ] {
            assert_eq!(Platform::parse(input), Some(want), "{input}");
        }
        assert_eq!(Platform::parse("android"), None);
        let expected = [
            (Platform::Ios, "iOS"),
            (Platform::IpadOs, "iPadOS"),
            (Platform::MacOs, "macOS"),
            (Platform::TvOs, "tvOS"),
            (Platform::VisionOs, "visionOS"),
        ];
        for (p, name) in expected {
            assert_eq!(p.as_str(), name);
            assert_eq!(Platform::parse(name), Some(p));
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{name}\""));
            let back: Platform = serde_json::from_str(&format!("\"{name}\"")).unwrap();
            assert_eq!(back, p);
        }
    }

    #[test]
    fn rows_round_trip_through_json() {
        let row = ada(2);
        let json = serde_json::to_value(&row).unwrap();
        assert_eq!(json["ownership"], "corporate");
        assert_eq!(json["platform"], "macOS");
        let back: PreenrollRow = serde_json::from_value(json).unwrap();
        assert_eq!(back, row);
    }
}
