//! Text exports an admin opens in a spreadsheet (the device lists' `format=csv`).

/// One CSV field (RFC 4180): quoted when it holds a separator, quote or line break. A leading
/// `=`, `+`, `-` or `@` is prefixed with `'` so spreadsheets do not run it as a formula.
pub fn csv_field(out: &mut String, v: &str) {
    let guarded;
    let v = if v.starts_with(['=', '+', '-', '@']) {
        guarded = format!("'{v}");
        guarded.as_str()
    } else {
        v
    };
    if v.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&v.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(v);
    }
}

/// One CSV record: the fields, quoted as [`csv_field`] does, and CRLF (RFC 4180).
pub fn csv_line(out: &mut String, fields: &[String]) {
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        csv_field(out, f);
    }
    out.push_str("\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quoting_and_formula_guard() {
        let mut out = String::new();
        csv_line(
            &mut out,
            &[
                "plain".into(),
                "a,b".into(),
                "say \"hi\"".into(),
                "=cmd()".into(),
            ],
        );
        assert_eq!(out, "plain,\"a,b\",\"say \"\"hi\"\"\",'=cmd()\r\n");
    }
}
