//! Reading the API bearer token from its file.
//!
//! The token is only ever taken from a file (never from an argument or an environment value),
//! so it does not show up in `ps`, shell history or `/proc/*/environ`.

use std::io::Read as _;
use std::path::Path;

use zeroize::Zeroizing;

use crate::error::CliError;

/// More than any token the appliance issues; a larger file is the wrong file.
const MAX_TOKEN_FILE_BYTES: u64 = 4096;

/// Reads the token in `path`: surrounding whitespace (the trailing newline editors add)
/// is dropped, and what remains must be one non-empty run of printable ASCII.
pub fn read_token(path: &Path) -> Result<Zeroizing<String>, CliError> {
    let file = std::fs::File::open(path).map_err(|source| CliError::TokenFile {
        path: path.to_path_buf(),
        source,
    })?;
    let mut raw = Zeroizing::new(Vec::new());
    file.take(MAX_TOKEN_FILE_BYTES + 1)
        .read_to_end(&mut raw)
        .map_err(|source| CliError::TokenFile {
            path: path.to_path_buf(),
            source,
        })?;
    let malformed = || CliError::TokenMalformed {
        path: path.to_path_buf(),
    };
    if raw.len() as u64 > MAX_TOKEN_FILE_BYTES {
        return Err(malformed());
    }
    let text = std::str::from_utf8(&raw).map_err(|_| malformed())?;
    let token = text.trim();
    if token.is_empty() {
        return Err(CliError::TokenEmpty {
            path: path.to_path_buf(),
        });
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(malformed());
    }
    Ok(Zeroizing::new(token.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("write token file");
        path
    }

    #[test]
    fn the_trailing_newline_is_trimmed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(&dir, "admin.token", b"mdm_abc123\n");
        assert_eq!(read_token(&path).expect("token").as_str(), "mdm_abc123");
        let crlf = write(&dir, "crlf.token", b"mdm_abc123\r\n");
        assert_eq!(read_token(&crlf).expect("token").as_str(), "mdm_abc123");
        let bare = write(&dir, "bare.token", b"mdm_abc123");
        assert_eq!(read_token(&bare).expect("token").as_str(), "mdm_abc123");
    }

    #[test]
    fn a_missing_file_is_named_in_the_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nope.token");
        let err = read_token(&path).expect_err("missing file");
        assert!(matches!(err, CliError::TokenFile { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("nope.token"), "{text}");
        assert!(text.contains("cannot read the token file"), "{text}");
        assert_eq!(err.exit_code(), crate::error::EXIT_USAGE);
    }

    #[test]
    fn empty_and_malformed_files_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = write(&dir, "empty", b"\n\n");
        assert!(matches!(
            read_token(&empty),
            Err(CliError::TokenEmpty { .. })
        ));
        let two_words = write(&dir, "two", b"mdm_a mdm_b\n");
        assert!(matches!(
            read_token(&two_words),
            Err(CliError::TokenMalformed { .. })
        ));
        let two_lines = write(&dir, "lines", b"mdm_a\nmdm_b\n");
        assert!(matches!(
            read_token(&two_lines),
            Err(CliError::TokenMalformed { .. })
        ));
        let binary = write(&dir, "bin", &[0xff, 0xfe, 0x00]);
        assert!(matches!(
            read_token(&binary),
            Err(CliError::TokenMalformed { .. })
        ));
        let big = write(&dir, "big", &vec![b'a'; 5000]);
        assert!(matches!(
            read_token(&big),
            Err(CliError::TokenMalformed { .. })
        ));
    }

    #[test]
    fn a_directory_is_not_a_token_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            read_token(dir.path()),
            Err(CliError::TokenFile { .. })
        ));
    }
}
