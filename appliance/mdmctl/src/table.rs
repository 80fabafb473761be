//! Plain aligned text for humans: tables with a header row, and key/value blocks.
//!
//! Every cell passes through [`clean`]: device names, labels and plist strings come from
//! devices and other admins, and a terminal must not interpret escape sequences hidden in
//! them.

/// Spaces between two columns.
const GAP: usize = 2;

/// Makes untrusted text safe to print on a terminal, on one line: line breaks and tabs become
/// spaces; other control characters (ANSI escapes included) and the Unicode bidirectional
/// overrides that can make text read differently from what it is become `U+FFFD`.
pub fn clean(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\n' | '\r' | '\t' => ' ',
            c if c.is_control() => '\u{FFFD}',
            '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' => '\u{FFFD}',
            c => c,
        })
        .collect()
}

/// Display width of a cell. Counting characters keeps Latin, Greek and Cyrillic text aligned;
/// double-width (CJK, emoji) cells push their row right by a column or so, which is accepted
/// rather than pulling in a Unicode width table.
fn width(cell: &str) -> usize {
    cell.chars().count()
}

/// A table with a header row. Cells are cleaned on insertion.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&str]) -> Self {
        Table {
            headers: headers.iter().map(|h| clean(h)).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are shown empty and extra cells are dropped, so that one
    /// odd row cannot shift every column after it.
    pub fn push<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut row: Vec<String> = cells
            .into_iter()
            .take(self.headers.len())
            .map(|c| clean(c.as_ref()))
            .collect();
        row.resize(self.headers.len(), String::new());
        self.rows.push(row);
    }

    /// The table as text: header, then rows, each line ending in `\n`, columns left-aligned
    /// and separated by two spaces. The last column is not padded, so no line has trailing
    /// spaces.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            write_line(&mut out, row, &widths);
        }
        out
    }
}

fn write_line(out: &mut String, cells: &[String], widths: &[usize]) {
    let last = cells.len().saturating_sub(1);
    let mut line = String::new();
    for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
        line.push_str(cell);
        if i < last {
            line.extend(std::iter::repeat_n(' ', w - width(cell) + GAP));
        }
    }
    out.push_str(line.trim_end());
    out.push('\n');
}

/// A block of `key  value` lines with the values aligned. Values are cleaned; keys are the
/// CLI's own words.
pub fn key_values(rows: &[(&str, String)]) -> String {
    let key_width = rows.iter().map(|(k, _)| width(k)).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in rows {
        let line = format!("{key:<key_width$}{:GAP$}{}", "", clean(value));
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_on_the_widest_cell() {
        let mut t = Table::new(&["ID", "STATE", "SERIAL"]);
        t.push(["a", "enrolled", "C02XYZ"]);
        t.push(["longer-id", "checked out", ""]);
        assert_eq!(
            t.render(),
            "ID         STATE        SERIAL\n\
             a          enrolled     C02XYZ\n\
             longer-id  checked out\n"
        );
    }

    #[test]
    fn an_empty_table_is_just_its_header() {
        let t = Table::new(&["ID", "NAME"]);
        assert_eq!(t.render(), "ID  NAME\n");
    }

    #[test]
    fn short_and_long_rows_keep_the_columns() {
        let mut t = Table::new(&["A", "B"]);
        t.push(["only-a"]);
        t.push(["1", "2", "dropped"]);
        assert_eq!(t.render(), "A       B\nonly-a\n1       2\n");
    }

    #[test]
    fn non_ascii_cells_are_measured_in_characters() {
        let mut t = Table::new(&["NAME", "X"]);
        t.push(["Zoë's iPad", "1"]);
        t.push(["Ж", "2"]);
        assert_eq!(t.render(), "NAME        X\nZoë's iPad  1\nЖ           2\n");
    }

    #[test]
    fn terminal_escapes_and_line_breaks_are_neutralised() {
        assert_eq!(clean("evil\u{1b}[2Jname"), "evil\u{FFFD}[2Jname");
        assert_eq!(clean("two\nlines\tand tab"), "two lines and tab");
        assert_eq!(clean("abc\u{202E}fdp.exe"), "abc\u{FFFD}fdp.exe");
        assert_eq!(clean("\u{9b}31m"), "\u{FFFD}31m");
        let mut t = Table::new(&["NAME"]);
        t.push(["a\u{7}b"]);
        assert_eq!(t.render(), "NAME\na\u{FFFD}b\n");
    }

    #[test]
    fn key_values_align_and_clean() {
        let text = key_values(&[
            ("Version", "0.1.0".into()),
            ("Push topic", "com.apple.mgmt.External.x".into()),
            ("Caller", "bad\u{1b}name".into()),
            ("Empty", String::new()),
        ]);
        assert_eq!(
            text,
            "Version     0.1.0\n\
             Push topic  com.apple.mgmt.External.x\n\
             Caller      bad\u{FFFD}name\n\
             Empty\n"
        );
    }
}
