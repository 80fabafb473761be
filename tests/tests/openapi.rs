//! The admin API's OpenAPI document (`docs/reference/openapi.json`) against the code and a
//! running daemon:
//! - the daemon serves exactly the checked-in bytes, without a token;
//! - every route of the routers (read from their source text) is documented, and every
//!   documented route exists there;
//! - the document is sound: OpenAPI 3.1, canonical formatting, resolvable `$ref`s, unique
//!   operation ids, declared path parameters, roles that fit the methods;
//! - a running daemon agrees: documented routes answer (no "no such route"), roles are
//!   enforced as `x-required-role` says, every answer's status and media type are documented,
//!   and JSON bodies (requests sent and answers received along a walk through the whole API,
//!   groups and configuration profiles included) conform to the documented schemas; the media
//!   types of the request bodies sent are documented too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use appliance_tests::Appliance;
use base64::Engine as _;
use mdm_sim::abm::{AbmSimConfig, AbmSimulator, ContentCipher, ServerId, TokenOptions};
use mdm_sim::device::SimDevice;
use mdm_sim::http::headers;
use serde_json::{json, Value};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn doc_path() -> PathBuf {
    repo_root().join("docs/reference/openapi.json")
}

fn doc_text() -> String {
    std::fs::read_to_string(doc_path())
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", doc_path().display()))
}

fn load_doc() -> Doc {
    let root: Value = serde_json::from_str(&doc_text())
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", doc_path().display()));
    Doc { root }
}

/// The router side: admin API routes read from the web crate's source text.
///
/// A route is a match arm `(Method::X, [segments..])` (methods may be alternatives,
/// `Method::GET | Method::HEAD`; a guard `if ...` may follow). Segments are string literals
/// (alternatives `"a" | "b"` allowed), identifier bindings (a path parameter, `{name}`), or a
/// trailing `name @ ..` / `..` (the rest of the path, documented as one `{name}` template).
/// Anything else in a router file is refused loudly rather than skipped, so that the
/// extractor cannot go stale silently.
mod routers {
    use std::path::Path;

    /// The files holding admin API match arms, and the prefix their segments hang under
    /// (`api.rs` hands `/api/v1/abm/..` to `abm_api.rs` with the `abm` segment removed).
    pub const ROUTERS: &[(&str, &str)] = &[
        ("api.rs", "/api/v1"),
        ("lifecycle_api.rs", "/api/v1"),
        ("profiles_api.rs", "/api/v1"),
        ("users_api.rs", "/api/v1"),
        ("abm_api.rs", "/api/v1/abm"),
    ];

    /// One route found in the source.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Route {
        /// Upper case, as in `Method::GET`.
        pub method: String,
        /// With the source's binding names: `/api/v1/enrollments/{id}`.
        pub template: String,
        /// `file:line`, for failure messages.
        pub origin: String,
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Seg {
        Lit(String),
        Param(String),
        Rest(String),
    }

    /// The source as characters, each marked as code or not: comments become spaces
    /// (newlines kept, so line numbers hold) and are not code; string and character literals
    /// are kept as they are but are not code either.
    pub fn lex(src: &str) -> Vec<(char, bool)> {
        let c: Vec<char> = src.chars().collect();
        let mut out = Vec::with_capacity(c.len());
        let mut i = 0;
        let blank = |out: &mut Vec<(char, bool)>, ch: char| {
            out.push((if ch == '\n' { '\n' } else { ' ' }, false));
        };
        while i < c.len() {
            let next = c.get(i + 1).copied();
            let literal = if c[i] == 'r' && (i == 0 || !is_ident(c[i - 1])) {
                raw_string_len(&c[i..])
            } else if c[i] == '"' {
                let mut j = i + 1;
                while j < c.len() && c[j] != '"' {
                    j += if c[j] == '\\' { 2 } else { 1 };
                }
                Some((j + 1).min(c.len()) - i)
            } else if c[i] == '\'' && next == Some('\\') {
                c[i + 2..].iter().position(|&ch| ch == '\'').map(|p| p + 3)
            } else if c[i] == '\'' && c.get(i + 2) == Some(&'\'') {
                Some(3)
            } else {
                None
            };
            if let Some(n) = literal {
                let n = n.min(c.len() - i);
                out.extend(c[i..i + n].iter().map(|&ch| (ch, false)));
                i += n;
            } else if c[i] == '/' && next == Some('/') {
                while i < c.len() && c[i] != '\n' {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            } else if c[i] == '/' && next == Some('*') {
                // Rust block comments nest.
                let mut depth = 0;
                while i < c.len() {
                    if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                        depth += 1;
                        out.extend([(' ', false), (' ', false)]);
                        i += 2;
                    } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                        depth -= 1;
                        out.extend([(' ', false), (' ', false)]);
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        blank(&mut out, c[i]);
                        i += 1;
                    }
                }
            } else {
                // Lifetimes ('a) and everything else.
                out.push((c[i], true));
                i += 1;
            }
        }
        out
    }

    /// The source with comments replaced by spaces.
    pub fn blank_comments(src: &str) -> String {
        lex(src).into_iter().map(|(ch, _)| ch).collect()
    }

    /// Length of a raw string literal `r#"..."#` at the start of `c`.
    fn raw_string_len(c: &[char]) -> Option<usize> {
        let hashes = c[1..].iter().take_while(|&&ch| ch == '#').count();
        if c.get(1 + hashes) != Some(&'"') {
            return None;
        }
        let body = 2 + hashes;
        (body..c.len())
            .find(|&j| c[j] == '"' && (1..=hashes).all(|k| c.get(j + k) == Some(&'#')))
            .map(|j| j + 1 + hashes)
    }

    fn is_ident(ch: char) -> bool {
        ch.is_ascii_alphanumeric() || ch == '_'
    }

    struct Cur<'a> {
        c: &'a [char],
        i: usize,
    }

    impl Cur<'_> {
        fn ws(&mut self) {
            while self.c.get(self.i).is_some_and(|ch| ch.is_whitespace()) {
                self.i += 1;
            }
        }
        fn eat(&mut self, lit: &str) -> bool {
            let n = lit.chars().count();
            if self.i + n <= self.c.len()
                && self.c[self.i..self.i + n].iter().copied().eq(lit.chars())
            {
                self.i += n;
                true
            } else {
                false
            }
        }
        fn ident(&mut self) -> Option<String> {
            let start = self.i;
            while self.c.get(self.i).copied().is_some_and(is_ident) {
                self.i += 1;
            }
            (self.i > start).then(|| self.c[start..self.i].iter().collect())
        }
        fn method(&mut self) -> Option<String> {
            self.ws();
            self.eat("http::");
            if !self.eat("Method::") {
                return None;
            }
            self.ident()
        }
    }

    /// What follows a `(` in the source.
    enum Arm {
        /// Not a `(Method::X, ...)` tuple at all.
        NotMethod,
        /// `(Method::X, something that is not a slice pattern)`.
        OtherTuple,
        /// A route arm.
        Route(Vec<String>, Vec<Vec<Seg>>),
    }

    fn parse_arm(c: &[char], open: usize) -> Result<Arm, String> {
        let mut cur = Cur { c, i: open + 1 };
        let Some(first) = cur.method() else {
            return Ok(Arm::NotMethod);
        };
        let mut methods = vec![first];
        loop {
            cur.ws();
            if !cur.eat("|") {
                break;
            }
            methods.push(cur.method().ok_or("`|` not followed by `Method::X`")?);
        }
        cur.ws();
        if !cur.eat(",") {
            return Ok(Arm::OtherTuple);
        }
        cur.ws();
        if !cur.eat("[") {
            return Ok(Arm::OtherTuple);
        }
        // The slice pattern's items, split at top-level commas.
        let mut items = Vec::new();
        let mut item = String::new();
        let mut depth = 0usize;
        loop {
            let Some(&ch) = c.get(cur.i) else {
                return Err("unterminated slice pattern".into());
            };
            cur.i += 1;
            match ch {
                '"' => {
                    item.push('"');
                    while let Some(&s) = c.get(cur.i) {
                        cur.i += 1;
                        item.push(s);
                        if s == '"' {
                            break;
                        }
                    }
                }
                '(' | '[' => {
                    depth += 1;
                    item.push(ch);
                }
                ')' if depth > 0 => {
                    depth -= 1;
                    item.push(ch);
                }
                ']' if depth > 0 => {
                    depth -= 1;
                    item.push(ch);
                }
                ']' => break,
                ',' if depth == 0 => items.push(std::mem::take(&mut item)),
                _ => item.push(ch),
            }
        }
        items.push(item);
        let items: Vec<String> = items
            .into_iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        let mut segs = Vec::new();
        for (n, it) in items.iter().enumerate() {
            let alternatives = segment(it)?;
            if alternatives.iter().any(|s| matches!(s, Seg::Rest(_))) && n + 1 != items.len() {
                return Err(format!("`{it}` is not the last segment"));
            }
            segs.push(alternatives);
        }
        cur.ws();
        cur.eat(",");
        cur.ws();
        if !cur.eat(")") {
            return Err("expected `)` after the slice pattern".into());
        }
        cur.ws();
        if !(cur.eat("=>") || cur.eat("if ")) {
            return Err("a route tuple that is not a match arm (no `=>` or guard)".into());
        }
        Ok(Arm::Route(methods, segs))
    }

    fn segment(item: &str) -> Result<Vec<Seg>, String> {
        let mut t = item.trim();
        if t.starts_with('(') && t.ends_with(')') {
            t = t[1..t.len() - 1].trim();
        }
        if t.contains('|') {
            return t
                .split('|')
                .map(|alt| match segment(alt)?.as_slice() {
                    [Seg::Lit(l)] => Ok(Seg::Lit(l.clone())),
                    _ => Err(format!(
                        "alternative `{alt}` in `{item}` is not a string literal"
                    )),
                })
                .collect();
        }
        if let Some(lit) = t.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
            if lit.contains(['\\', '"', '/']) || lit.is_empty() {
                return Err(format!("segment literal `{t}` is not a plain path segment"));
            }
            return Ok(vec![Seg::Lit(lit.to_string())]);
        }
        if t == ".." {
            return Ok(vec![Seg::Rest("rest".into())]);
        }
        let binding = |s: &str| {
            let s = s.trim();
            (!s.is_empty()
                && s.chars().all(is_ident)
                && !s.starts_with(|ch: char| ch.is_ascii_digit() || ch.is_ascii_uppercase()))
            .then(|| s.to_string())
        };
        if let Some(name) = t
            .strip_suffix("..")
            .and_then(|s| s.trim().strip_suffix('@'))
        {
            return binding(name)
                .map(|n| vec![Seg::Rest(n)])
                .ok_or_else(|| format!("cannot read the rest binding `{t}`"));
        }
        binding(t)
            .map(|n| vec![Seg::Param(n)])
            .ok_or_else(|| format!("cannot read the segment pattern `{t}`"))
    }

    fn expand(prefix: &str, segs: &[Vec<Seg>]) -> Vec<String> {
        let mut paths = vec![prefix.to_string()];
        for alts in segs {
            paths = paths
                .iter()
                .flat_map(|p| {
                    alts.iter().map(move |s| match s {
                        Seg::Lit(l) => format!("{p}/{l}"),
                        Seg::Param(n) | Seg::Rest(n) => format!("{p}/{{{n}}}"),
                    })
                })
                .collect();
        }
        paths
    }

    fn line_of(c: &[char], i: usize) -> usize {
        1 + c[..i].iter().filter(|&&ch| ch == '\n').count()
    }

    /// What a source text holds.
    #[derive(Debug, Default)]
    pub struct Scan {
        pub routes: Vec<Route>,
        /// `(Method::X, ...)` tuples whose second half is not a slice pattern.
        pub other_tuples: Vec<String>,
        /// Slice-pattern arms the extractor cannot read.
        pub unreadable: Vec<String>,
    }

    /// Scans one source text for route arms.
    pub fn scan(src: &str, file: &str, prefix: &str) -> Scan {
        let lexed = lex(src);
        let text: Vec<char> = lexed.iter().map(|&(ch, _)| ch).collect();
        let mut out = Scan::default();
        for (i, _) in lexed
            .iter()
            .enumerate()
            .filter(|(_, &(ch, code))| code && ch == '(')
        {
            let origin = format!("{file}:{}", line_of(&text, i));
            match parse_arm(&text, i) {
                Ok(Arm::NotMethod) => {}
                Ok(Arm::OtherTuple) => out.other_tuples.push(format!(
                    "{origin}: a `(Method::X, ...)` tuple whose second half is not a slice pattern"
                )),
                Ok(Arm::Route(methods, segs)) => {
                    for m in &methods {
                        for template in expand(prefix, &segs) {
                            out.routes.push(Route {
                                method: m.clone(),
                                template,
                                origin: origin.clone(),
                            });
                        }
                    }
                }
                Err(e) => out
                    .unreadable
                    .push(format!("{origin}: cannot read this route arm: {e}")),
            }
        }
        out
    }

    /// Routes of a router file; anything in it the extractor cannot read is an error.
    pub fn routes_in(src: &str, file: &str, prefix: &str) -> Result<Vec<Route>, Vec<String>> {
        let s = scan(src, file, prefix);
        let errors: Vec<String> = s.other_tuples.into_iter().chain(s.unreadable).collect();
        if errors.is_empty() {
            Ok(s.routes)
        } else {
            Err(errors)
        }
    }

    /// `GET /api/v1/openapi.json`: answered in `App::api` before the routers, by comparing
    /// with `crate::openapi::PATH`.
    fn openapi_route(dir: &Path) -> Result<Route, String> {
        let api = std::fs::read_to_string(dir.join("api.rs")).map_err(|e| e.to_string())?;
        let api = blank_comments(&api);
        let (n, line) = api
            .lines()
            .enumerate()
            .find(|(_, l)| l.contains("crate::openapi::PATH"))
            .ok_or("api.rs no longer compares the path with crate::openapi::PATH")?;
        let method = line
            .split("Method::")
            .nth(1)
            .map(|rest| {
                rest.chars()
                    .take_while(|&ch| is_ident(ch))
                    .collect::<String>()
            })
            .filter(|m| !m.is_empty())
            .ok_or("the crate::openapi::PATH comparison in api.rs names no Method::X")?;
        let src = std::fs::read_to_string(dir.join("openapi.rs")).map_err(|e| e.to_string())?;
        let template = src
            .split("pub const PATH: &str = \"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .ok_or("openapi.rs no longer declares `pub const PATH: &str = \"...\"`")?
            .to_string();
        Ok(Route {
            method,
            template,
            origin: format!("api.rs:{}", n + 1),
        })
    }

    /// Every admin API route of the web crate in `dir`. Fails on arms it cannot read, and on
    /// route arms in files it does not know the prefix of.
    pub fn all(dir: &Path) -> Result<Vec<Route>, String> {
        let mut routes = vec![openapi_route(dir)?];
        let mut errors = Vec::new();
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "rs"))
            .collect();
        files.sort();
        for (name, _) in ROUTERS {
            if !files
                .iter()
                .any(|f| f.file_name().is_some_and(|n| n == *name))
            {
                errors.push(format!("router file {name} is gone: update ROUTERS"));
            }
        }
        for path in files {
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            let src = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
            match ROUTERS.iter().find(|(f, _)| *f == name) {
                Some((_, prefix)) => match routes_in(&src, &name, prefix) {
                    Ok(r) => routes.extend(r),
                    Err(e) => errors.extend(e),
                },
                // Other files (the device endpoints, SCEP's `(Method::GET, "GetCACaps")`) may
                // match on methods, but a slice-pattern route arm there belongs to an admin
                // API router this test does not know the prefix of.
                None => {
                    let s = scan(&src, &name, "");
                    errors.extend(s.routes.iter().map(|r| {
                        format!(
                            "{}: a route arm in a file the test does not know: add the file to ROUTERS with its prefix",
                            r.origin
                        )
                    }));
                    errors.extend(s.unreadable);
                }
            }
        }
        if errors.is_empty() {
            Ok(routes)
        } else {
            Err(errors.join("\n"))
        }
    }
}

/// `/api/v1/devices/{key}` -> `/api/v1/devices/{}`: parameter names do not matter.
fn normalize(template: &str) -> String {
    template
        .split('/')
        .map(|s| {
            if s.starts_with('{') && s.ends_with('}') {
                "{}"
            } else {
                s
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

/// The OpenAPI document, with the few lookups the tests need.
struct Doc {
    root: Value,
}

impl Doc {
    fn paths(&self) -> &serde_json::Map<String, Value> {
        self.root["paths"].as_object().expect("paths is an object")
    }

    /// Every operation: (METHOD, template, operation).
    fn operations(&self) -> Vec<(String, String, &Value)> {
        let mut out = Vec::new();
        for (path, item) in self.paths() {
            for m in METHODS {
                if let Some(op) = item.get(m) {
                    out.push((m.to_uppercase(), path.clone(), op));
                }
            }
        }
        out
    }

    /// A local `$ref` target.
    fn pointer(&self, r: &str) -> Option<&Value> {
        let p = r.strip_prefix('#')?;
        self.root.pointer(p)
    }

    /// `s` with `$ref`s followed.
    fn resolve<'a>(&'a self, mut s: &'a Value) -> &'a Value {
        for _ in 0..32 {
            match s.get("$ref").and_then(Value::as_str) {
                Some(r) => match self.pointer(r) {
                    Some(t) => s = t,
                    None => return s,
                },
                None => return s,
            }
        }
        s
    }

    /// The operation serving a concrete path: the matching template with the most literal
    /// segments (the routers try literals like `devices/counts` before `devices/{key}`).
    fn operation_for(&self, method: &str, path: &str) -> Option<(String, &Value)> {
        let want: Vec<&str> = path.split('/').collect();
        let mut best: Option<(usize, String, &Value)> = None;
        for (m, template, op) in self.operations() {
            if m != method.to_uppercase() {
                continue;
            }
            let t: Vec<&str> = template.split('/').collect();
            if t.len() != want.len() {
                continue;
            }
            let fits = t
                .iter()
                .zip(&want)
                .all(|(a, b)| (a.starts_with('{') && !b.is_empty()) || a == b);
            if !fits {
                continue;
            }
            let literals = t.iter().filter(|s| !s.starts_with('{')).count();
            if best.as_ref().is_none_or(|(n, _, _)| literals > *n) {
                best = Some((literals, template, op));
            }
        }
        best.map(|(_, t, op)| (t, op))
    }

    /// Properties an object schema documents, through `$ref` and `allOf`; `None` when it
    /// names none (a free-form object).
    fn known_props(&self, s: &Value) -> Option<BTreeSet<String>> {
        let s = self.resolve(s);
        let mut out: Option<BTreeSet<String>> = s
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| p.keys().cloned().collect());
        for part in s
            .get("allOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(more) = self.known_props(part) {
                out.get_or_insert_with(BTreeSet::new).extend(more);
            }
        }
        out
    }

    /// Checks `v` against `schema` (the JSON Schema subset the document uses). `strict`:
    /// fields an object schema does not document are errors too, unless it says
    /// `additionalProperties`; it is off for the parts of an `allOf`, whose union is checked
    /// by the `allOf` itself.
    fn check(&self, schema: &Value, v: &Value, at: &str, strict: bool, errs: &mut Vec<String>) {
        let s = self.resolve(schema);
        if let Some(t) = s.get("type") {
            let types: Vec<&str> = match t {
                Value::String(one) => vec![one.as_str()],
                Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
                _ => vec![],
            };
            let fits = |ty: &str| match ty {
                "null" => v.is_null(),
                "boolean" => v.is_boolean(),
                "integer" => v.is_i64() || v.is_u64(),
                "number" => v.is_number(),
                "string" => v.is_string(),
                "array" => v.is_array(),
                "object" => v.is_object(),
                _ => false,
            };
            if !types.iter().any(|ty| fits(ty)) {
                errs.push(format!("{at}: expected {}, got {v}", types.join(" or ")));
                return;
            }
        }
        if let Some(values) = s.get("enum").and_then(Value::as_array) {
            if !values.contains(v) {
                errs.push(format!(
                    "{at}: {v} is not one of {}",
                    Value::from(values.clone())
                ));
            }
        }
        if let (Some("date-time"), Some(text)) =
            (s.get("format").and_then(Value::as_str), v.as_str())
        {
            if time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                .is_err()
            {
                errs.push(format!("{at}: {text:?} is not an RFC 3339 date-time"));
            }
        }
        for part in s
            .get("allOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            self.check(part, v, at, false, errs);
        }
        for (key, exactly_one) in [("anyOf", false), ("oneOf", true)] {
            if let Some(branches) = s.get(key).and_then(Value::as_array) {
                let results: Vec<Vec<String>> = branches
                    .iter()
                    .map(|b| {
                        let mut e = Vec::new();
                        self.check(b, v, at, strict, &mut e);
                        e
                    })
                    .collect();
                let passing = results.iter().filter(|e| e.is_empty()).count();
                if passing == 0 || (exactly_one && passing > 1) {
                    errs.push(format!(
                        "{at}: {passing} of the {key} branches fit {v}: {}",
                        results
                            .iter()
                            .map(|e| e.join("; "))
                            .collect::<Vec<_>>()
                            .join(" | ")
                    ));
                }
            }
        }
        if let Some(o) = v.as_object() {
            let props = s.get("properties").and_then(Value::as_object);
            for r in s
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(r) = r.as_str() {
                    if !o.contains_key(r) {
                        errs.push(format!("{at}: required field `{r}` is missing"));
                    }
                }
            }
            let known = self.known_props(s);
            let additional = s.get("additionalProperties");
            for (k, val) in o {
                let here = format!("{at}.{k}");
                if let Some(ps) = props.and_then(|p| p.get(k)) {
                    self.check(ps, val, &here, true, errs);
                } else if let Some(extra) = additional.filter(|a| a.is_object()) {
                    self.check(extra, val, &here, true, errs);
                } else if additional == Some(&Value::Bool(false))
                    || (strict
                        && additional.is_none()
                        && known.as_ref().is_some_and(|k2| !k2.contains(k)))
                {
                    errs.push(format!("{here}: field not in the documented schema"));
                }
            }
        }
        if let (Some(items), Some(a)) = (s.get("items"), v.as_array()) {
            for (i, item) in a.iter().enumerate() {
                self.check(items, item, &format!("{at}[{i}]"), true, errs);
            }
        }
    }

    /// Problems with an answer: undocumented status or media type, or a JSON body that does
    /// not fit its schema.
    fn check_answer(&self, method: &str, path: &str, a: &Answer) -> Vec<String> {
        let what = format!("{method} {path} -> {}", a.status);
        let Some((template, op)) = self.operation_for(method, path) else {
            return vec![format!("{what}: no documented operation")];
        };
        let responses = &op["responses"];
        let Some(resp) = responses
            .get(a.status.to_string())
            .or_else(|| responses.get("default"))
        else {
            return vec![format!(
                "{what}: status {} is not documented for {method} {template} (body: {})",
                a.status,
                a.text()
            )];
        };
        let resp = self.resolve(resp);
        let Some(content) = resp.get("content").and_then(Value::as_object) else {
            return if a.body.is_empty() {
                vec![]
            } else {
                vec![format!(
                    "{what}: a body, but the response documents no content"
                )]
            };
        };
        let media = a.media_type();
        let Some(mt) = content.get(&media) else {
            return vec![format!(
                "{what}: media type {media:?} is not documented (documented: {:?})",
                content.keys().collect::<Vec<_>>()
            )];
        };
        let mut errs = Vec::new();
        if media == "application/json" {
            match serde_json::from_slice::<Value>(&a.body) {
                Ok(v) => {
                    if let Some(schema) = mt.get("schema") {
                        self.check(schema, &v, &format!("{what}: $"), true, &mut errs);
                    }
                }
                Err(e) => errs.push(format!("{what}: not JSON: {e}")),
            }
        }
        errs
    }

    /// Problems with the media type of a request body: the operation must document it.
    fn check_request_media(&self, method: &str, path: &str, media: &str) -> Vec<String> {
        let Some((template, op)) = self.operation_for(method, path) else {
            return vec![format!("{method} {path}: no documented operation")];
        };
        let documented: Vec<&String> = op
            .pointer("/requestBody/content")
            .and_then(Value::as_object)
            .map(|c| c.keys().collect())
            .unwrap_or_default();
        if documented.iter().any(|m| m.as_str() == media) {
            Vec::new()
        } else {
            vec![format!(
                "{method} {template}: a {media} request body is not documented (documented: {documented:?})"
            )]
        }
    }

    /// Problems with a JSON request body against the operation's request schema.
    fn check_request(&self, method: &str, path: &str, body: &Value) -> Vec<String> {
        let Some((template, op)) = self.operation_for(method, path) else {
            return vec![format!("{method} {path}: no documented operation")];
        };
        let Some(schema) = op.pointer("/requestBody/content/application~1json/schema") else {
            return vec![format!(
                "{method} {template}: no JSON request body is documented"
            )];
        };
        let mut errs = Vec::new();
        self.check(
            schema,
            body,
            &format!("{method} {template} request: $"),
            true,
            &mut errs,
        );
        errs
    }
}

/// An HTTP answer as the tests look at it.
struct Answer {
    status: u16,
    content_type: String,
    /// `Content-Disposition`, for downloads.
    disposition: Option<String>,
    body: Vec<u8>,
}

impl Answer {
    fn media_type(&self) -> String {
        self.content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body)
            .chars()
            .take(400)
            .collect()
    }
    fn error_code(&self) -> Option<String> {
        self.json()["error"]["code"].as_str().map(str::to_string)
    }
}

async fn call(
    app: &Appliance,
    token: Option<&str>,
    method: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> Answer {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut pairs = vec![("content-type", content_type)];
    if let Some(a) = &auth {
        pairs.push(("authorization", a));
    }
    let resp = app
        .admin
        .request(
            method.parse().unwrap(),
            &format!("{}{path}", app.base_url),
            headers(&pairs).unwrap(),
            body,
        )
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    Answer {
        status: resp.status,
        content_type: resp.header("content-type").unwrap_or_default().to_string(),
        disposition: resp.header("content-disposition").map(str::to_string),
        body: resp.body.to_vec(),
    }
}

/// 404 with one of the codes the routers answer for a path they do not know.
fn no_such_route(a: &Answer) -> bool {
    a.status == 404
        && matches!(
            a.error_code().as_deref(),
            Some("NOT_FOUND" | "API_VERSION_UNKNOWN")
        )
}

#[test]
fn extractor_reads_the_arm_forms_it_claims_to() {
    let src = r##"
        // (Method::GET, ["commented"]) => {}
        /* (Method::GET, ["blocked", /* nested */ x]) => {} */
        let s = "(Method::GET, [\"in a string\"]) =>";
        let raw = r#"(Method::POST, ["in a raw string"]) =>"#;
        let c = '(';
        match (method, segs) {
            (Method::GET, []) => a,
            (Method::GET | Method::HEAD, ["things", id]) => a,
            (
                Method::POST,
                ["things", thing_id, "parts", ("a" | "b")],
            ) => a,
            (Method::DELETE, ["files", rest @ ..]) if rest.len() > 1 => a,
            (http::Method::PUT, [name, "token"]) => a,
        }
    "##;
    let routes = routers::routes_in(src, "x.rs", "/p").unwrap();
    let got: Vec<(String, String)> = routes
        .iter()
        .map(|r| (r.method.clone(), r.template.clone()))
        .collect();
    let want: Vec<(String, String)> = [
        ("GET", "/p"),
        ("GET", "/p/things/{id}"),
        ("HEAD", "/p/things/{id}"),
        ("POST", "/p/things/{thing_id}/parts/a"),
        ("POST", "/p/things/{thing_id}/parts/b"),
        ("DELETE", "/p/files/{rest}"),
        ("PUT", "/p/{name}/token"),
    ]
    .iter()
    .map(|(m, t)| (m.to_string(), t.to_string()))
    .collect();
    assert_eq!(got, want);
    assert_eq!(routes[1].origin, "x.rs:9");

    // Forms it cannot read are errors naming the line, not skipped arms.
    for bad in [
        "match x { (Method::GET, segs) => a }",
        "match x { (Method::GET, [Some(x)]) => a }",
        "match x { (Method::GET, [\"a/b\"]) => a }",
        "match x { (Method::GET, [rest @ .., \"tail\"]) => a }",
        "let t = (Method::GET, [\"x\"]);",
    ] {
        let e = routers::routes_in(bad, "y.rs", "/p").unwrap_err();
        assert!(e[0].starts_with("y.rs:1: "), "{bad}: {e:?}");
    }
}

#[test]
fn every_route_is_documented_and_every_documented_route_exists() {
    let dir = repo_root().join("appliance/web/src");
    let routes = routers::all(&dir).unwrap_or_else(|e| {
        panic!("the route extractor cannot read the routers; fix the source or the extractor:\n{e}")
    });
    assert!(
        routes.len() >= 30,
        "only {} routes found in {}: the extractor has gone stale",
        routes.len(),
        dir.display()
    );
    let mut code: BTreeMap<(String, String), &routers::Route> = BTreeMap::new();
    for r in &routes {
        code.insert((r.method.clone(), normalize(&r.template)), r);
    }
    let doc = load_doc();
    let documented: BTreeMap<(String, String), String> = doc
        .operations()
        .into_iter()
        .map(|(m, t, _)| ((m, normalize(&t)), t))
        .collect();
    let missing: Vec<String> = code
        .iter()
        .filter(|(k, _)| !documented.contains_key(*k))
        .map(|((m, _), r)| format!("  {m} {} ({})", r.template, r.origin))
        .collect();
    let extra: Vec<String> = documented
        .iter()
        .filter(|(k, _)| !code.contains_key(*k))
        .map(|((m, _), t)| format!("  {m} {t}"))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/reference/openapi.json and the routers disagree.\n\
         Routes in the code but not in the document ({}):\n{}\n\
         Operations in the document but not in the code ({}):\n{}",
        missing.len(),
        missing.join("\n"),
        extra.len(),
        extra.join("\n")
    );
}

/// Every `$ref` in `v`, with where it is.
fn refs<'a>(v: &'a Value, at: String, out: &mut Vec<(String, &'a str)>) {
    match v {
        Value::Object(o) => {
            for (k, val) in o {
                if k == "$ref" {
                    if let Some(r) = val.as_str() {
                        out.push((at.clone(), r));
                    }
                } else {
                    refs(val, format!("{at}/{k}"), out);
                }
            }
        }
        Value::Array(a) => {
            for (i, val) in a.iter().enumerate() {
                refs(val, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// Objects whose keys are not in order (only possible when serde_json preserves order).
fn unsorted(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            let keys: Vec<&String> = o.keys().collect();
            if keys.windows(2).any(|w| w[0] > w[1]) {
                out.push(at.clone());
            }
            for (k, val) in o {
                unsorted(val, format!("{at}/{k}"), out);
            }
        }
        Value::Array(a) => {
            for (i, val) in a.iter().enumerate() {
                unsorted(val, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn the_document_is_sound() {
    let text = doc_text();
    let doc = load_doc();
    let root = &doc.root;
    let mut problems = Vec::new();

    assert!(
        root["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "openapi must be 3.1.x, is {}",
        root["openapi"]
    );
    let canonical = serde_json::to_string_pretty(root).unwrap() + "\n";
    let mut out_of_order = Vec::new();
    unsorted(root, String::new(), &mut out_of_order);
    if canonical != text || !out_of_order.is_empty() {
        problems.push(format!(
            "the document is not in canonical form (2-space indentation, keys sorted, one trailing newline{}); \
             reformat it with `python3 -m json.tool --indent 2 --sort-keys --no-ensure-ascii`",
            if out_of_order.is_empty() {
                String::new()
            } else {
                format!("; unsorted: {out_of_order:?}")
            }
        ));
    }

    let mut all_refs = Vec::new();
    refs(root, String::new(), &mut all_refs);
    assert!(all_refs.len() > 50, "the document hardly reuses schemas");
    for (at, r) in &all_refs {
        if doc.pointer(r).is_none() {
            problems.push(format!("{at}: $ref {r} does not resolve"));
        }
    }

    let scheme = &root["components"]["securitySchemes"]["bearer"];
    if scheme["type"] != "http" || scheme["scheme"] != "bearer" {
        problems.push(format!(
            "components.securitySchemes.bearer is not http bearer: {scheme}"
        ));
    }
    if root["security"] != json!([{"bearer": []}]) {
        problems.push(format!(
            "global security is not bearer: {}",
            root["security"]
        ));
    }
    if root.get("servers").is_some() {
        problems.push("no `servers`: paths are the full router paths".into());
    }
    let tags: BTreeSet<&str> = root["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["name"].as_str())
        .collect();

    let mut ids = BTreeMap::new();
    for (method, template, op) in doc.operations() {
        let what = format!("{method} {template}");
        if !template.starts_with("/api/v1/") {
            problems.push(format!("{what}: only /api/v1 routes belong here"));
        }
        match op["operationId"].as_str() {
            Some(id) if !id.is_empty() => {
                if let Some(other) = ids.insert(id.to_string(), what.clone()) {
                    problems.push(format!("{what}: operationId {id} is also used by {other}"));
                }
            }
            _ => problems.push(format!("{what}: no operationId")),
        }
        if op["summary"].as_str().is_none_or(str::is_empty) {
            problems.push(format!("{what}: no summary"));
        }
        match op["tags"].as_array() {
            Some(t) if !t.is_empty() => {
                for tag in t {
                    if !tag.as_str().is_some_and(|n| tags.contains(n)) {
                        problems.push(format!("{what}: tag {tag} is not declared in `tags`"));
                    }
                }
            }
            _ => problems.push(format!("{what}: no tags")),
        }
        let responses = op["responses"].as_object();
        if responses.is_none_or(|r| r.is_empty()) {
            problems.push(format!("{what}: no responses"));
        }
        let public = op.get("security") == Some(&json!([]));
        let role = op["x-required-role"].as_str().unwrap_or("");
        match (public, role) {
            (true, "none") => {}
            (false, "admin" | "operator") => {}
            (false, "auditor") if method == "GET" => {}
            (false, "auditor") => problems.push(format!(
                "{what}: every change needs at least the operator role (api.rs checks it first)"
            )),
            _ => problems.push(format!(
                "{what}: x-required-role {role:?} (admin, operator, auditor; `none` only with `security: []`)"
            )),
        }
        let description = op["description"].as_str().unwrap_or("");
        if !public
            && !description
                .to_lowercase()
                .contains(&format!("role: {role}"))
        {
            problems.push(format!(
                "{what}: the description does not name the role {role}"
            ));
        }
        if !public {
            let has_401 = responses.is_some_and(|r| r.contains_key("401"));
            if !has_401 {
                problems.push(format!(
                    "{what}: a token is needed, so 401 is a possible answer"
                ));
            }
            if role != "auditor" && !responses.is_some_and(|r| r.contains_key("403")) {
                problems.push(format!("{what}: needs {role}, so 403 is a possible answer"));
            }
        }
        for (status, resp) in responses.into_iter().flatten() {
            let resp = doc.resolve(resp);
            if resp["description"].as_str().is_none_or(str::is_empty) {
                problems.push(format!("{what} {status}: no description"));
            }
            if status.starts_with('4') || status.starts_with('5') {
                let schema = resp
                    .pointer("/content/application~1json/schema")
                    .map(|s| doc.resolve(s));
                let is_error = schema.is_some_and(|s| s.pointer("/properties/error").is_some());
                if !is_error {
                    problems.push(format!("{what} {status}: not an `error` JSON body"));
                }
            }
        }

        // Path parameters: each template name declared (in=path, required), each declared
        // one in the template.
        let in_template: BTreeSet<String> = template
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(str::to_string)
            .collect();
        let item_params = doc.paths()[&template]["parameters"].as_array().cloned();
        let declared: Vec<Value> = item_params
            .into_iter()
            .flatten()
            .chain(op["parameters"].as_array().cloned().into_iter().flatten())
            .map(|p| doc.resolve(&p).clone())
            .collect();
        let declared_path: BTreeSet<String> = declared
            .iter()
            .filter(|p| p["in"] == "path")
            .filter_map(|p| p["name"].as_str().map(str::to_string))
            .collect();
        for p in &declared {
            if p.get("schema").is_none() {
                problems.push(format!("{what}: parameter {} has no schema", p["name"]));
            }
            if p["in"] == "path" && p["required"] != true {
                problems.push(format!(
                    "{what}: path parameter {} must be required",
                    p["name"]
                ));
            }
        }
        for missing in in_template.difference(&declared_path) {
            problems.push(format!(
                "{what}: path parameter {{{missing}}} is not declared"
            ));
        }
        for extra in declared_path.difference(&in_template) {
            problems.push(format!(
                "{what}: declares path parameter {extra} the template lacks"
            ));
        }
        if let Some(body) = op.get("requestBody") {
            if body["content"].as_object().is_none_or(|c| c.is_empty()) {
                problems.push(format!("{what}: request body without content"));
            }
        }
    }
    assert!(
        doc.operations().len() >= 30,
        "only {} operations documented",
        doc.operations().len()
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test]
async fn the_daemon_serves_the_checked_in_document_without_a_token() {
    let app = Appliance::start().await;
    let a = call(
        &app,
        None,
        "GET",
        "/api/v1/openapi.json",
        "application/json",
        vec![],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.media_type(), "application/json");
    assert!(
        a.body == doc_text().as_bytes(),
        "GET /api/v1/openapi.json differs from docs/reference/openapi.json: rebuild the daemon"
    );
    // A wrong token changes nothing: the description is public.
    let b = call(
        &app,
        Some("mdm_wrong"),
        "GET",
        "/api/v1/openapi.json",
        "application/json",
        vec![],
    )
    .await;
    assert_eq!((b.status, b.body.len()), (200, a.body.len()));
}

/// A concrete path for a template, with every parameter set to `value`.
fn fill(template: &str, value: &str) -> String {
    template
        .split('/')
        .map(|s| if s.starts_with('{') { value } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn documented_routes_answer_and_enforce_their_roles() {
    let app = Appliance::start().await;
    let doc = load_doc();
    let auditor = app.new_token("openapi-auditor", "Auditor").await;
    let operator = app.new_token("openapi-operator", "Operator").await;
    let mut problems = Vec::new();

    // Every GET without path parameters, as an auditor: the route exists, the answer is
    // documented and fits its schema.
    let mut probed = 0;
    for (method, template, op) in doc.operations() {
        if method != "GET" || template.contains('{') {
            continue;
        }
        probed += 1;
        let a = call(
            &app,
            Some(&auditor),
            "GET",
            &template,
            "application/json",
            vec![],
        )
        .await;
        if no_such_route(&a) {
            problems.push(format!(
                "GET {template}: the daemon has no such route ({})",
                a.text()
            ));
            continue;
        }
        let role = op["x-required-role"].as_str().unwrap_or("");
        if role == "admin" && a.error_code().as_deref() != Some("ROLE_INSUFFICIENT") {
            problems.push(format!(
                "GET {template}: documented as admin-only, but an auditor got {} {}",
                a.status,
                a.text()
            ));
        }
        if role != "admin" && a.status == 403 {
            problems.push(format!(
                "GET {template}: documented for auditors, refused: {}",
                a.text()
            ));
        }
        problems.extend(doc.check_answer("GET", &template, &a));
    }
    assert!(probed >= 10, "only {probed} GET routes without parameters");

    // Every operation, with made-up path parameters and an empty body, as an operator and
    // as an auditor: the route exists, and the role check is the documented one. Nothing
    // named "openapi-probe" exists, so operator-level calls that pass the role check stop
    // at a 404 or at the empty body (and push to an unknown enrollment answers "failed").
    for (method, template, op) in doc.operations() {
        if op.get("security") == Some(&json!([])) {
            continue;
        }
        let path = fill(&template, "openapi-probe");
        let role = op["x-required-role"].as_str().unwrap_or("");
        let refused: Vec<&str> = op["x-refused-roles"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        for (who, token) in [("operator", &operator), ("auditor", &auditor)] {
            let a = call(
                &app,
                Some(token),
                &method,
                &path,
                "application/json",
                vec![],
            )
            .await;
            if no_such_route(&a) {
                problems.push(format!(
                    "{method} {template}: the daemon has no such route ({})",
                    a.text()
                ));
                continue;
            }
            let allowed = match role {
                "auditor" => !refused.contains(&who),
                "operator" => who == "operator",
                _ => false,
            };
            let denied = a.status == 403 && a.error_code().as_deref() == Some("ROLE_INSUFFICIENT");
            if allowed == denied {
                problems.push(format!(
                    "{method} {template}: documented role {role}, but the {who} token got {} {}",
                    a.status,
                    a.text()
                ));
            }
            problems.extend(doc.check_answer(&method, &path, &a));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Walks the whole API against a daemon with an ABM simulator, two devices and real data,
/// checking every request body sent and every answer received against the document.
struct Walk<'a> {
    app: &'a Appliance,
    doc: &'a Doc,
    problems: Vec<String>,
    seen: BTreeSet<(String, String)>,
}

impl Walk<'_> {
    async fn raw(&mut self, method: &str, path: &str, content_type: &str, body: Vec<u8>) -> Answer {
        if !body.is_empty() {
            let bare = path.split('?').next().unwrap_or(path);
            let problems = self.doc.check_request_media(method, bare, content_type);
            self.problems.extend(problems);
        }
        let token = self.app.token.clone();
        let a = call(self.app, Some(&token), method, path, content_type, body).await;
        let bare = path.split('?').next().unwrap_or(path);
        if let Some((t, _)) = self.doc.operation_for(method, bare) {
            self.seen.insert((method.to_string(), t));
        }
        let problems = self.doc.check_answer(method, bare, &a);
        self.problems.extend(problems);
        a
    }

    /// A call expected to be refused with `status` and the error `code`. A JSON `body` is not
    /// checked against the request schema: some refusals are for bodies that do not fit it.
    async fn refused(
        &mut self,
        method: &str,
        path: &str,
        body: Option<Value>,
        status: u16,
        code: &str,
    ) {
        let bytes = body
            .map(|b| serde_json::to_vec(&b).unwrap())
            .unwrap_or_default();
        let a = self.raw(method, path, "application/json", bytes).await;
        assert_eq!(
            (a.status, a.error_code().as_deref()),
            (status, Some(code)),
            "{method} {path}: {}",
            a.text()
        );
    }

    /// A profile upload (`POST`, or `PUT` to replace) of raw bytes expecting `want`.
    async fn upload(&mut self, method: &str, path: &str, file: Vec<u8>, want: u16) -> Answer {
        let a = self
            .raw(method, path, "application/x-apple-aspen-config", file)
            .await;
        assert_eq!(a.status, want, "{method} {path}: {}", a.text());
        a
    }

    /// A JSON call (body checked against the documented request schema) expecting `want`.
    async fn json(&mut self, method: &str, path: &str, body: Option<Value>, want: u16) -> Value {
        let bytes = match &body {
            Some(b) => {
                let bare = path.split('?').next().unwrap_or(path);
                let problems = self.doc.check_request(method, bare, b);
                self.problems.extend(problems);
                serde_json::to_vec(b).unwrap()
            }
            None => Vec::new(),
        };
        let a = self.raw(method, path, "application/json", bytes).await;
        assert_eq!(a.status, want, "{method} {path}: {}", a.text());
        a.json()
    }
}

const SERVER: ServerId = ServerId(0);

#[tokio::test]
async fn answers_along_a_walk_through_the_api_fit_the_document() {
    let sim = AbmSimulator::start(AbmSimConfig::default()).await.unwrap();
    let serials = sim.add_devices(SERVER, 3).unwrap();
    let app = Appliance::start().await;
    let doc = load_doc();
    let mut w = Walk {
        app: &app,
        doc: &doc,
        problems: Vec::new(),
        seen: BTreeSet::new(),
    };

    // The appliance, links, a manually enrolled device and a command with its result.
    w.json("GET", "/api/v1/status", None, 200).await;
    w.json("GET", "/api/v1/keystore", None, 200).await;
    let ca = w.raw("GET", "/api/v1/ca", "application/json", vec![]).await;
    assert!(String::from_utf8_lossy(&ca.body).contains("BEGIN CERTIFICATE"));
    let link = w
        .json(
            "POST",
            "/api/v1/enroll-links",
            Some(json!({"label": "walk", "max_uses": 3, "ttl_seconds": 3600})),
            201,
        )
        .await;
    w.json("POST", "/api/v1/enroll-links", Some(json!({})), 201)
        .await;
    w.json("GET", "/api/v1/enroll-links", None, 200).await;
    let mut d = app.enroll_manual().await;
    let udid = d.udid.clone();
    let queued = w
        .json(
            "POST",
            "/api/v1/commands",
            Some(json!({"targets": [udid], "request_type": "DeviceInformation"})),
            201,
        )
        .await;
    let uuid = queued["command_uuid"].as_str().unwrap().to_string();
    w.json("GET", &format!("/api/v1/enrollments/{udid}"), None, 200)
        .await;
    d.run_until_idle().await.unwrap();
    w.json("GET", &format!("/api/v1/commands/{uuid}"), None, 200)
        .await;
    w.json("GET", "/api/v1/enrollments?limit=5", None, 200)
        .await;
    w.json(
        "GET",
        &format!("/api/v1/enrollments/{udid}/commands?limit=5"),
        None,
        200,
    )
    .await;
    w.json("GET", &format!("/api/v1/devices/{udid}"), None, 200)
        .await;
    let plist = base64::engine::general_purpose::STANDARD.encode(
        br#"<?xml version="1.0" encoding="UTF-8"?><plist version="1.0"><dict><key>Command</key><dict><key>RequestType</key><string>ProfileList</string></dict></dict></plist>"#,
    );
    w.json(
        "POST",
        "/api/v1/commands",
        Some(json!({"targets": [udid], "plist_base64": plist})),
        201,
    )
    .await;
    w.json(
        "DELETE",
        &format!("/api/v1/enroll-links/{}", link["id"].as_str().unwrap()),
        None,
        200,
    )
    .await;

    // Push certificate and tokens.
    w.json("GET", "/api/v1/push-cert", None, 200).await;
    let csr = w
        .raw("POST", "/api/v1/push-cert/csr", "application/json", vec![])
        .await;
    let cert =
        appliance_tests::sign_push_csr(&String::from_utf8_lossy(&csr.body), appliance_tests::TOPIC);
    w.raw(
        "PUT",
        "/api/v1/push-cert",
        "application/x-pem-file",
        cert.into_bytes(),
    )
    .await;
    let other = appliance_tests::sign_push_csr(
        &String::from_utf8_lossy(&csr.body),
        "com.apple.mgmt.External.00000000-0000-4000-8000-000000000000",
    );
    let refused = w
        .raw(
            "PUT",
            "/api/v1/push-cert",
            "application/x-pem-file",
            other.into_bytes(),
        )
        .await;
    assert_eq!(refused.status, 409, "{}", refused.text());
    let t = w
        .json(
            "POST",
            "/api/v1/tokens",
            Some(json!({"name": "walk", "role": "Auditor"})),
            201,
        )
        .await;
    w.json("GET", "/api/v1/tokens", None, 200).await;
    w.json(
        "DELETE",
        &format!("/api/v1/tokens/{}", t["id"].as_str().unwrap()),
        None,
        200,
    )
    .await;

    // Lifecycle: settings, pre-enrollment, and ABM with a device enrolled through ADE and
    // held in Setup Assistant until released by hand.
    w.json("GET", "/api/v1/settings", None, 200).await;
    w.json(
        "PATCH",
        "/api/v1/settings",
        Some(json!({"auto_release": false, "offline_after_hours": 48})),
        200,
    )
    .await;
    let csv = format!(
        "Serial Number;Name;Email;Ownership;Platform;Extra\r\n{};Ann;ann@example.org;corporate;iPadOS;x\r\nC0FFEE0001;Ben;ben@example.org;personal;iOS;y\r\n",
        serials[0]
    );
    let sample = w
        .raw(
            "GET",
            "/api/v1/preenroll/sample",
            "application/json",
            vec![],
        )
        .await;
    assert_eq!(sample.status, 200);
    for (query, want) in [
        ("?dry_run=true", 200),
        ("", 200),
        ("", 409),
        ("?on_duplicate=skip", 200),
    ] {
        let a = w
            .raw(
                "POST",
                &format!("/api/v1/preenroll/import{query}"),
                "text/csv",
                csv.clone().into_bytes(),
            )
            .await;
        assert_eq!(a.status, want, "import{query}: {}", a.text());
    }
    let invalid = w
        .raw(
            "POST",
            "/api/v1/preenroll/import",
            "text/csv",
            b"serial;name;email;ownership;platform\r\nX;;bad;none;Windows\r\n".to_vec(),
        )
        .await;
    assert_eq!(invalid.status, 422, "{}", invalid.text());
    w.json("GET", "/api/v1/preenroll?limit=1", None, 200).await;

    w.json(
        "POST",
        "/api/v1/abm",
        Some(json!({"name": "north", "base_url": sim.base_url(), "ca_pem": sim.ca_pem(), "interval_seconds": 0})),
        201,
    )
    .await;
    let pem = w
        .raw(
            "GET",
            "/api/v1/abm/north/public-key",
            "application/json",
            vec![],
        )
        .await;
    let cert = mdm_pki::Certificate::from_pem(&String::from_utf8_lossy(&pem.body)).unwrap();
    let opts = TokenOptions {
        cipher: ContentCipher::Aes256Cbc,
        ber: false,
        new_org: false,
    };
    let p7m = sim.server_token(SERVER, cert.der(), &opts).unwrap();
    let a = w
        .raw(
            "PUT",
            "/api/v1/abm/north/token",
            "application/pkcs7-mime",
            p7m,
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    w.json("POST", "/api/v1/abm/north/sync?full=true", None, 200)
        .await;
    w.json(
        "PUT",
        "/api/v1/abm/north/profiles/staff",
        Some(json!({"profile_name": "Staff", "is_supervised": true, "department": "IT", "skip_setup_items": ["Siri"]})),
        200,
    )
    .await;
    w.json(
        "PATCH",
        "/api/v1/abm/north",
        Some(json!({"default_profile": "staff", "interval_seconds": 0})),
        200,
    )
    .await;
    w.json(
        "PUT",
        "/api/v1/abm/north/rules/ipads",
        Some(json!({"priority": 5, "profile": "staff", "device_family": "iPad", "model": null})),
        200,
    )
    .await;
    w.json("POST", "/api/v1/abm/north/assign", None, 200).await;
    w.json(
        "POST",
        "/api/v1/abm/north/profiles/staff/assign",
        Some(json!({"serials": [serials[1]]})),
        200,
    )
    .await;
    let mut ade = appliance_tests::ade_device_builder(&sim, &serials[0]).build();
    app.enroll_ade(&mut ade).await;
    w.json("GET", &format!("/api/v1/devices/{}", serials[0]), None, 200)
        .await;
    w.json(
        "POST",
        &format!("/api/v1/devices/{}/release", serials[0]),
        None,
        202,
    )
    .await;
    w.json("GET", &format!("/api/v1/devices/{}", serials[0]), None, 200)
        .await;
    w.json("GET", "/api/v1/devices?status=assigned,awaiting_configuration,expected&sort=status&order=desc&limit=2", None, 200)
        .await;
    let csv_list = w
        .raw(
            "GET",
            "/api/v1/devices?format=csv",
            "application/json",
            vec![],
        )
        .await;
    assert!(String::from_utf8_lossy(&csv_list.body).starts_with("serial_number,status,"));
    w.json("GET", "/api/v1/devices/counts", None, 200).await;
    w.json("GET", "/api/v1/status", None, 200).await;
    walk_groups_and_profiles(&mut w, &mut ade, &serials[0]).await;
    walk_users(&mut w).await;

    w.json("GET", "/api/v1/abm", None, 200).await;
    w.json("GET", "/api/v1/abm/north", None, 200).await;
    w.json("GET", "/api/v1/abm/north/devices?limit=2", None, 200)
        .await;
    let abm_csv = w
        .raw(
            "GET",
            "/api/v1/abm/north/devices?format=csv",
            "application/json",
            vec![],
        )
        .await;
    assert!(String::from_utf8_lossy(&abm_csv.body).starts_with("serial_number,model,"));
    w.json(
        "GET",
        &format!("/api/v1/abm/north/devices/{}", serials[1]),
        None,
        200,
    )
    .await;
    w.json("GET", "/api/v1/abm/north/profiles", None, 200).await;
    w.json("GET", "/api/v1/abm/north/profiles/staff", None, 200)
        .await;
    w.json("GET", "/api/v1/abm/north/rules", None, 200).await;
    w.json(
        "POST",
        "/api/v1/abm/north/remove-profile",
        Some(json!({"serials": [serials[2]]})),
        200,
    )
    .await;
    w.json(
        "POST",
        "/api/v1/abm/north/disown",
        Some(json!({"serials": [serials[2]], "confirm": "disown 1 devices"})),
        200,
    )
    .await;
    let in_use = w
        .raw(
            "DELETE",
            "/api/v1/abm/north/profiles/staff",
            "application/json",
            vec![],
        )
        .await;
    assert_eq!(in_use.status, 409, "{}", in_use.text());
    w.json("DELETE", "/api/v1/abm/north/rules/ipads", None, 200)
        .await;
    w.json("DELETE", "/api/v1/abm/north/rules/assign-staff", None, 200)
        .await;
    w.json(
        "PATCH",
        "/api/v1/abm/north",
        Some(json!({"default_profile": ""})),
        200,
    )
    .await;
    w.json("DELETE", "/api/v1/abm/north/profiles/staff", None, 200)
        .await;
    let staged = w
        .raw(
            "POST",
            "/api/v1/abm/north/public-key",
            "application/json",
            vec![],
        )
        .await;
    assert_eq!(staged.status, 200, "{}", staged.text());
    w.json("GET", "/api/v1/abm/north", None, 200).await;

    w.json(
        "POST",
        "/api/v1/preenroll/delete",
        Some(json!({"serials": ["C0FFEE0001", "NOPE0000"]})),
        200,
    )
    .await;
    w.json(
        "DELETE",
        &format!("/api/v1/preenroll/{}", serials[0]),
        None,
        200,
    )
    .await;

    // The activity log in its three forms; JSON lines are ActivityEntry objects.
    w.json("GET", "/api/v1/activity?type=preenroll&limit=3", None, 200)
        .await;
    w.json(
        "GET",
        &format!(
            "/api/v1/activity?device={}&since=2020-01-01T00:00:00Z",
            serials[0]
        ),
        None,
        200,
    )
    .await;
    let csv_log = w
        .raw(
            "GET",
            "/api/v1/activity?format=csv",
            "application/json",
            vec![],
        )
        .await;
    assert!(String::from_utf8_lossy(&csv_log.body).starts_with("seq,at,actor,type,"));
    let lines = w
        .raw(
            "GET",
            "/api/v1/activity?format=jsonl",
            "application/json",
            vec![],
        )
        .await;
    let entry = json!({"$ref": "#/components/schemas/ActivityEntry"});
    let text = String::from_utf8_lossy(&lines.body).to_string();
    assert!(text.lines().count() > 10, "{text}");
    for (i, line) in text.lines().enumerate() {
        let v: Value = serde_json::from_str(line).unwrap();
        doc.check(
            &entry,
            &v,
            &format!("activity jsonl line {}", i + 1),
            true,
            &mut w.problems,
        );
    }

    w.json("DELETE", "/api/v1/abm/north?confirm=north", None, 200)
        .await;

    // The rest: pushing (an enrollment the appliance does not know answers `failed` at
    // once) and the document itself.
    w.json("POST", "/api/v1/enrollments/no-such-device/push", None, 200)
        .await;
    w.json("GET", "/api/v1/openapi.json", None, 200).await;

    assert!(
        w.problems.is_empty(),
        "{} problem(s) along the walk:\n{}",
        w.problems.len(),
        w.problems.join("\n")
    );
    // Operations added to the document later are welcome in the walk, but are not required
    // there: the document's completeness is the route test's job.
    let unseen: Vec<String> = doc
        .operations()
        .into_iter()
        .filter(|(m, t, _)| !w.seen.contains(&(m.clone(), t.clone())))
        .map(|(m, t, _)| format!("{m} {t}"))
        .collect();
    assert!(
        w.seen.len() >= 77,
        "the walk reached only {} operations; not: {unseen:?}",
        w.seen.len()
    );
}

/// Local user accounts, and an ABM profile that asks for sign-in.
async fn walk_users(w: &mut Walk<'_>) {
    let pw = "Walk-Password-1";
    let u = w
        .json(
            "POST",
            "/api/v1/users",
            Some(json!({"username": "Walker", "full_name": "Walk Er",
                        "email": "walker@example.org", "password": pw})),
            201,
        )
        .await;
    assert_eq!(u["username"], "walker");
    w.refused(
        "POST",
        "/api/v1/users",
        Some(json!({"username": "walker", "full_name": "Again", "password": pw})),
        409,
        "USER_EXISTS",
    )
    .await;
    w.refused(
        "POST",
        "/api/v1/users",
        Some(json!({"username": "short", "full_name": "S", "password": "x"})),
        400,
        "PASSWORD_POLICY",
    )
    .await;
    w.json("GET", "/api/v1/users?limit=10", None, 200).await;
    w.json("GET", "/api/v1/users/WALKER", None, 200).await;
    let changed = w
        .json(
            "PATCH",
            "/api/v1/users/walker",
            Some(json!({"email": "", "disabled": true, "password": "Walk-Password-2"})),
            200,
        )
        .await;
    assert!(changed["email"].is_null(), "{changed}");
    w.json("POST", "/api/v1/users/walker/unlock", None, 200)
        .await;
    w.refused("GET", "/api/v1/users/nobody", None, 404, "USER_NOT_FOUND")
        .await;
    let p = w
        .json(
            "PUT",
            "/api/v1/abm/north/profiles/signin",
            Some(json!({"profile_name": "Sign in", "authentication": "local"})),
            200,
        )
        .await;
    assert_eq!(p["authentication"], "local");
    w.json("DELETE", "/api/v1/abm/north/profiles/signin", None, 200)
        .await;
    w.json("DELETE", "/api/v1/users/walker", None, 200).await;
    let body = json!({"passphrase": "a walk through the backup"});
    let problems = w.doc.check_request("POST", "/api/v1/backup", &body);
    w.problems.extend(problems);
    let backup = w
        .raw(
            "POST",
            "/api/v1/backup",
            "application/json",
            serde_json::to_vec(&body).unwrap(),
        )
        .await;
    assert_eq!(backup.status, 200, "{}", backup.text());
    w.refused(
        "POST",
        "/api/v1/backup",
        Some(json!({"passphrase": "short"})),
        400,
        "BACKUP_PASSPHRASE_POLICY",
    )
    .await;
}

/// A small unsigned configuration profile around `payloads` (the XML of `PayloadContent`'s
/// dictionaries), with a fresh PayloadUUID.
fn mobileconfig(identifier: &str, payloads: &str) -> Vec<u8> {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0"><dict>
<key>PayloadType</key><string>Configuration</string>
<key>PayloadVersion</key><integer>1</integer>
<key>PayloadIdentifier</key><string>{identifier}</string>
<key>PayloadUUID</key><string>{}</string>
<key>PayloadDisplayName</key><string>Walk</string>
<key>PayloadContent</key><array>{payloads}</array>
</dict></plist>"#,
        payload_uuid()
    )
    .into_bytes()
}

fn payload_uuid() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("0A1B2C3D-0000-4000-8000-{n:012X}")
}

/// A restrictions payload; `camera` tells two versions of one profile apart.
fn restrictions(identifier: &str, camera: bool) -> String {
    format!(
        r#"<dict>
<key>PayloadType</key><string>com.apple.applicationaccess</string>
<key>PayloadVersion</key><integer>1</integer>
<key>PayloadIdentifier</key><string>{identifier}.restrictions</string>
<key>PayloadUUID</key><string>{}</string>
<key>allowCamera</key><{camera}/>
</dict>"#,
        payload_uuid()
    )
}

/// `content` as a CMS SignedData by a fresh self-signed certificate, as sites sign profiles.
fn sign(content: &[u8]) -> Vec<u8> {
    let key = mdm_pki::PrivateKey::generate(mdm_pki::KeyAlgorithm::Rsa2048).unwrap();
    let params = mdm_pki::CertificateParams::leaf(
        mdm_pki::Name::new("Walk Signer"),
        std::time::Duration::from_secs(86_400),
        std::time::Duration::from_secs(60),
    );
    let cert = mdm_pki::self_signed(&params, &key).unwrap();
    mdm_pki::cms::sign(content, &cert, &key, &Default::default()).unwrap()
}

/// A root certificate payload whose content is no certificate: a valid profile that the
/// device refuses to install.
fn broken_root(identifier: &str) -> String {
    format!(
        r#"<dict>
<key>PayloadType</key><string>com.apple.security.root</string>
<key>PayloadVersion</key><integer>1</integer>
<key>PayloadIdentifier</key><string>{identifier}.root</string>
<key>PayloadUUID</key><string>{}</string>
<key>PayloadContent</key><data>bm90IGEgY2VydGlmaWNhdGU=</data>
</dict>"#,
        payload_uuid()
    )
}

/// Groups and configuration profiles, with `serial` an enrolled ADE device: a static and a
/// rule-based group, uploads (and refused ones), an assignment the device installs, an
/// install it refuses and its retry, a new version, the file, unassignment removing the
/// profile, deletions; then the invitation a device without one lacks and the
/// `auto_unenroll_after_days` setting.
async fn walk_groups_and_profiles(w: &mut Walk<'_>, ade: &mut SimDevice, serial: &str) {
    let pilot = w
        .json(
            "POST",
            "/api/v1/groups",
            Some(json!({"name": "Walk pilot", "description": "walk", "members": [serial.to_lowercase(), "C0FFEE0002"]})),
            201,
        )
        .await;
    assert_eq!(
        (pilot["kind"].as_str(), pilot["members"].as_u64()),
        (Some("static"), Some(2)),
        "{pilot}"
    );
    let pilot_id = pilot["id"].as_str().unwrap().to_string();
    let rule = json!({"match": "any", "conditions": [
        {"field": "platform", "op": "is", "value": "iPad"},
        {"field": "os_version", "op": "version_at_least", "value": "17"}
    ]});
    let ipads = w
        .json(
            "POST",
            "/api/v1/groups",
            Some(json!({"name": "Walk iPads", "rule": rule})),
            201,
        )
        .await;
    assert_eq!(ipads["kind"], "rule", "{ipads}");
    w.refused(
        "POST",
        "/api/v1/groups",
        Some(json!({"name": "walk PILOT"})),
        409,
        "GROUP_NAME_TAKEN",
    )
    .await;
    w.refused(
        "POST",
        "/api/v1/groups",
        Some(
            json!({"name": "Bad", "rule": {"match": "all", "conditions": [
            {"field": "model", "op": "version_at_least", "value": "17"}]}}),
        ),
        400,
        "GROUP_RULE_INVALID",
    )
    .await;
    w.json("GET", "/api/v1/groups", None, 200).await;
    w.json("GET", "/api/v1/groups/Walk%20pilot", None, 200)
        .await;
    let patched = w
        .json(
            "PATCH",
            &format!("/api/v1/groups/{}", ipads["id"].as_str().unwrap()),
            Some(
                json!({"description": "", "rule": {"match": "all", "conditions": [
                {"field": "abm_connection", "op": "is", "value": "north"}]}}),
            ),
            200,
        )
        .await;
    assert_eq!(patched["rule"]["match"], "all", "{patched}");
    w.refused(
        "PATCH",
        "/api/v1/groups/Walk%20pilot",
        Some(json!({"rule": rule})),
        409,
        "GROUP_KIND_FIXED",
    )
    .await;
    let first = w
        .json(
            "GET",
            "/api/v1/groups/Walk%20pilot/members?limit=1",
            None,
            200,
        )
        .await;
    assert_eq!(first["total"], 2, "{first}");
    let after = first["next"].as_str().unwrap().to_string();
    w.json(
        "GET",
        &format!("/api/v1/groups/Walk%20pilot/members?after={after}"),
        None,
        200,
    )
    .await;
    let members = w
        .json("GET", "/api/v1/groups/Walk%20pilot/members", None, 200)
        .await;
    let unknown: Vec<&Value> = members["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["device"].is_null())
        .collect();
    assert_eq!(
        unknown.len(),
        1,
        "C0FFEE0002 is not a device yet: {members}"
    );
    w.json("GET", "/api/v1/groups/Walk%20iPads/members", None, 200)
        .await;
    let changed = w
        .json(
            "POST",
            "/api/v1/groups/Walk%20pilot/members",
            Some(json!({"add": ["C0FFEE0003", serial], "remove": ["C0FFEE0002"]})),
            200,
        )
        .await;
    assert_eq!(
        (
            &changed["added"],
            &changed["removed"],
            &changed["unchanged"]
        ),
        (&json!(1), &json!(1), &json!(1)),
        "{changed}"
    );
    w.refused(
        "POST",
        "/api/v1/groups/Walk%20iPads/members",
        Some(json!({"add": [serial]})),
        409,
        "GROUP_IS_RULE_BASED",
    )
    .await;

    // Uploads: a profile, one refused for its identifier, one refused as invalid, and one the
    // device will refuse (sent as octet-stream, which is accepted as well).
    let identifier = "org.example.walk.restrictions";
    let v1 = mobileconfig(identifier, &restrictions(identifier, false));
    let created = w
        .upload(
            "POST",
            "/api/v1/profiles?name=Walk%20restrictions",
            v1.clone(),
            201,
        )
        .await
        .json();
    assert_eq!(created["identifier"], identifier, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let a = w
        .upload("POST", "/api/v1/profiles?name=Again", v1.clone(), 409)
        .await;
    assert_eq!(a.error_code().as_deref(), Some("PROFILE_IDENTIFIER_TAKEN"));
    let a = w
        .upload(
            "POST",
            "/api/v1/profiles",
            mobileconfig("org.example.walk.empty", ""),
            400,
        )
        .await;
    assert_eq!(a.error_code().as_deref(), Some("PROFILE_INVALID"));
    let broken = w
        .raw(
            "POST",
            "/api/v1/profiles?name=Walk%20broken",
            "application/octet-stream",
            mobileconfig(
                "org.example.walk.root",
                &broken_root("org.example.walk.root"),
            ),
        )
        .await;
    assert_eq!(broken.status, 201, "{}", broken.text());
    w.json("GET", "/api/v1/profiles", None, 200).await;
    w.json("GET", &format!("/api/v1/profiles/{identifier}"), None, 200)
        .await;

    // Assignment: the pilot group holds the enrolled device, which installs the profile; the
    // broken one, assigned to it directly, fails on the device and is retried.
    let assign = format!("/api/v1/profiles/{id}/assign");
    let assigned = w
        .json(
            "POST",
            &assign,
            Some(json!({"groups": ["Walk pilot"]})),
            200,
        )
        .await;
    assert_eq!(assigned["reconcile"]["installs"], 1, "{assigned}");
    w.refused(
        "DELETE",
        "/api/v1/groups/Walk%20pilot",
        None,
        409,
        "GROUP_IN_USE",
    )
    .await;
    w.refused("POST", &assign, Some(json!({})), 400, "ASSIGNMENT_EMPTY")
        .await;
    w.refused(
        "POST",
        &assign,
        Some(json!({"groups": ["Nope"]})),
        404,
        "GROUP_NOT_FOUND",
    )
    .await;
    let assigned = w
        .json(
            "POST",
            "/api/v1/profiles/Walk%20broken/assign",
            Some(json!({"devices": [serial]})),
            200,
        )
        .await;
    assert_eq!(assigned["reconcile"]["installs"], 1, "{assigned}");
    ade.run_until_idle().await.unwrap();
    let page = w
        .json(
            "GET",
            &format!("/api/v1/profiles/{id}/installs?limit=1"),
            None,
            200,
        )
        .await;
    assert_eq!(page["items"][0]["state"], "installed", "{page}");
    let page = w
        .json("GET", "/api/v1/profiles/Walk%20broken/installs", None, 200)
        .await;
    assert_eq!(page["items"][0]["state"], "failed", "{page}");
    let retried = w
        .json("POST", "/api/v1/profiles/Walk%20broken/retry", None, 200)
        .await;
    assert_eq!(retried["reconcile"]["installs"], 1, "{retried}");
    ade.run_until_idle().await.unwrap();
    let device = w
        .json("GET", &format!("/api/v1/devices/{serial}"), None, 200)
        .await;
    let states: BTreeSet<(String, String)> = device["profiles"]["installs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["identifier"].as_str().unwrap().to_string(),
                i["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        states,
        BTreeSet::from([
            ("org.example.walk.restrictions".into(), "installed".into()),
            ("org.example.walk.root".into(), "failed".into()),
        ]),
        "{device}"
    );

    // A new version of the file, signed this time; one with another identifier refused; and
    // the file back as uploaded.
    let v2 = sign(&mobileconfig(identifier, &restrictions(identifier, true)));
    let replaced = w
        .upload("PUT", &format!("/api/v1/profiles/{id}"), v2.clone(), 200)
        .await
        .json();
    assert_ne!(replaced["sha256"], created["sha256"], "{replaced}");
    assert_eq!(
        replaced["summary"]["signer"]["subject"], "CN=Walk Signer",
        "{replaced}"
    );
    let a = w
        .upload(
            "PUT",
            &format!("/api/v1/profiles/{id}"),
            mobileconfig(
                "org.example.walk.other",
                &restrictions("org.example.walk.other", true),
            ),
            409,
        )
        .await;
    assert_eq!(
        a.error_code().as_deref(),
        Some("PROFILE_IDENTIFIER_CHANGED")
    );
    let file = w
        .raw(
            "GET",
            &format!("/api/v1/profiles/{id}/file"),
            "application/json",
            vec![],
        )
        .await;
    assert_eq!(file.status, 200, "{}", file.text());
    assert!(file.body == v2, "the file is the one last uploaded");
    assert_eq!(
        file.disposition.as_deref(),
        Some("attachment; filename=\"org.example.walk.restrictions.mobileconfig\"")
    );
    ade.run_until_idle().await.unwrap();

    // Unassigning removes the profile from the device; then everything goes.
    let unassigned = w
        .json(
            "POST",
            &format!("/api/v1/profiles/{id}/unassign"),
            Some(json!({"groups": [pilot_id]})),
            200,
        )
        .await;
    assert_eq!(unassigned["reconcile"]["removals"], 1, "{unassigned}");
    ade.run_until_idle().await.unwrap();
    w.json("DELETE", "/api/v1/profiles/Walk%20broken", None, 200)
        .await;
    w.json("DELETE", &format!("/api/v1/profiles/{id}"), None, 200)
        .await;
    w.json("DELETE", "/api/v1/groups/Walk%20pilot", None, 200)
        .await;
    w.json("DELETE", "/api/v1/groups/Walk%20iPads", None, 200)
        .await;
    w.refused(
        "GET",
        "/api/v1/groups/Walk%20pilot",
        None,
        404,
        "GROUP_NOT_FOUND",
    )
    .await;
    w.refused(
        "GET",
        &format!("/api/v1/profiles/{identifier}"),
        None,
        404,
        "PROFILE_NOT_FOUND",
    )
    .await;

    // The device was never unenrolled automatically, so it has no invitation.
    w.refused(
        "GET",
        &format!("/api/v1/devices/{serial}/invitation"),
        None,
        404,
        "INVITATION_NOT_FOUND",
    )
    .await;
    let settings = w
        .json(
            "PATCH",
            "/api/v1/settings",
            Some(json!({"auto_unenroll_after_days": 30})),
            200,
        )
        .await;
    assert_eq!(settings["auto_unenroll_after_days"], 30, "{settings}");
    // Not longer than offline_after_hours (48): a device would be unenrolled before it is
    // shown offline.
    w.refused(
        "PATCH",
        "/api/v1/settings",
        Some(json!({"auto_unenroll_after_days": 2})),
        400,
        "INVALID_FIELD",
    )
    .await;
    w.json(
        "PATCH",
        "/api/v1/settings",
        Some(json!({"auto_unenroll_after_days": 0})),
        200,
    )
    .await;
}

/// A documented path asked with a method the document does not give it answers
/// `405 METHOD_NOT_ALLOWED` with an `Allow` header naming the documented methods, so a client
/// can tell a wrong method from a wrong path; an undocumented path stays 404.
#[tokio::test]
async fn a_documented_path_with_another_method_answers_405_and_allow() {
    let app = Appliance::start().await;
    let doc: Value = serde_json::from_str(&doc_text()).unwrap();
    let methods = ["GET", "POST", "PUT", "PATCH", "DELETE"];
    let mut checked = 0;
    for (template, item) in doc["paths"].as_object().unwrap() {
        let documented: BTreeSet<String> = item
            .as_object()
            .unwrap()
            .keys()
            .map(|m| m.to_ascii_uppercase())
            .filter(|m| methods.contains(&m.as_str()))
            .collect();
        let Some(other) = methods.iter().find(|m| !documented.contains(**m)) else {
            continue;
        };
        let path = fill(template, "x");
        let resp = app
            .admin
            .request(
                other.parse().unwrap(),
                &format!("{}{path}", app.base_url),
                headers(&[("authorization", &format!("Bearer {}", app.token))]).unwrap(),
                Vec::new(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status, 405, "{other} {path}");
        let allow: BTreeSet<String> = resp
            .header("allow")
            .unwrap_or_else(|| panic!("{other} {path}: no Allow header"))
            .split(", ")
            .map(str::to_string)
            .collect();
        let mut expected = documented.clone();
        if documented.contains("GET") {
            expected.insert("HEAD".to_string());
        }
        assert_eq!(allow, expected, "{other} {path}");
        checked += 1;
    }
    assert!(checked > 20, "only {checked} paths checked");

    let (status, body) = app.api("DELETE", "/api/v1/no-such-thing", None).await;
    assert_eq!(status, 404, "{body}");
}

/// HEAD is GET without the body wherever a GET only reads: the same status and length, for
/// monitoring and link checkers. On an enrollment link it is refused and uses nothing up.
#[tokio::test]
async fn head_answers_like_get_without_the_body() {
    let app = Appliance::start().await;
    let auth = format!("Bearer {}", app.token);
    let ask = |method: &'static str, path: String, token: Option<String>| {
        let app = &app;
        async move {
            let h = match &token {
                Some(t) => headers(&[("authorization", t)]).unwrap(),
                None => headers(&[]).unwrap(),
            };
            app.admin
                .request(
                    method.parse().unwrap(),
                    &format!("{}{path}", app.base_url),
                    h,
                    Vec::new(),
                )
                .await
                .unwrap()
        }
    };
    for path in [
        "/api/v1/enrollments",
        "/api/v1/status",
        "/healthz",
        "/ca.pem",
    ] {
        let get = ask("GET", path.to_string(), Some(auth.clone())).await;
        let head = ask("HEAD", path.to_string(), Some(auth.clone())).await;
        assert_eq!(get.status, 200, "GET {path}");
        assert_eq!(head.status, 200, "HEAD {path}");
        assert!(head.body.is_empty(), "HEAD {path} sent a body");
        assert_eq!(
            head.header("content-length"),
            Some(get.body.len().to_string().as_str()),
            "HEAD {path}"
        );
        assert_eq!(
            head.header("content-type"),
            get.header("content-type"),
            "HEAD {path}"
        );
    }
    // The API's rules hold as for GET.
    let head = ask("HEAD", "/api/v1/enrollments".into(), None).await;
    assert_eq!(head.status, 401);
    assert!(head.body.is_empty());

    // An enrollment link: refused, and still good for its one use.
    let (st, v) = app
        .api(
            "POST",
            "/api/v1/enroll-links",
            Some(json!({"label": "checked by a link scanner", "max_uses": 1})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let url = v["url"].as_str().unwrap().to_string();
    let path = url
        .split_once("/enroll/")
        .map(|(_, t)| format!("/enroll/{t}"))
        .unwrap();
    let head = ask("HEAD", path.clone(), None).await;
    assert_eq!(head.status, 405);
    let get = ask("GET", path, None).await;
    assert_eq!(get.status, 200, "the link was not used up by the HEAD");
}
