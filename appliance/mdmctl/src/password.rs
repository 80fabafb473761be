//! Reading a secret (a user account's password, a backup passphrase) without it passing
//! through the command line, the screen or a message.
//!
//! On a terminal the secret is typed twice with echo off; otherwise it is the first line of
//! standard input or of a file. The terminal is put in non-canonical mode with signals off for
//! the prompt, and the keys are interpreted here (Enter, erase, kill, end of input, interrupt),
//! so that Ctrl-C restores the terminal instead of killing the process with echo still off.
//! Secrets live in [`Zeroizing`] buffers; the request body the client builds from them is an
//! ordinary copy, freed (not wiped) after the request. A [`Secret`] says what is asked for, so
//! that every message names it and says what the refusal left undone.
//!
//! What it cannot do: prompt on systems other than Unix (secrets come from standard input or
//! a file there), or edit the line beyond erasing the last character and clearing it.

use std::io::{BufRead, IsTerminal as _, Read as _};
use std::path::{Path, PathBuf};

use zeroize::{Zeroize as _, Zeroizing};

use crate::error::CliError;

/// More bytes than any password the appliance accepts (256 characters of up to 4 bytes), and
/// than anyone types as a passphrase: a longer line is the wrong input.
pub const MAX_SECRET_BYTES: usize = 1024;

/// The name standard input goes by in error messages.
const STDIN: &str = "standard input";
/// Where a secret read from standard input came from, as messages say it (a file's is
/// `in FILE`).
const ON_STDIN: &str = "on standard input";

/// What is being asked for, as the messages about it need to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Secret {
    /// The word for it: `password`, `passphrase`.
    pub noun: &'static str,
    /// The flag that reads it from standard input, named when that flag is misused.
    pub stdin_flag: &'static str,
    /// What a refusal leaves undone, ending the messages of the prompt: `nothing was changed`.
    pub undone: &'static str,
    /// Fewest characters accepted before anything is sent; 0 leaves the rule to the appliance.
    pub min_chars: usize,
    /// Whether control characters (a tab, a stray carriage return) are refused here. A secret
    /// that must later be given again from a file or a pipe, where such characters cannot be
    /// seen, is safer without them.
    pub printable_only: bool,
}

/// A user account's password: the appliance checks its rules and names the one broken.
pub const PASSWORD: Secret = Secret {
    noun: "password",
    stdin_flag: "--password-stdin",
    undone: "nothing was changed",
    min_chars: 0,
    printable_only: false,
};

fn stdin_error(source: std::io::Error) -> CliError {
    CliError::InputFile {
        path: PathBuf::from(STDIN),
        source,
    }
}

/// The secret given with `secret.stdin_flag`: the first line of standard input, which must
/// not be a terminal (typing there would show the secret).
pub fn from_stdin(secret: &Secret) -> Result<Zeroizing<String>, CliError> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        let Secret {
            noun, stdin_flag, ..
        } = secret;
        return Err(CliError::Usage(format!(
            "{stdin_flag} reads the {noun} from a pipe or a file, but standard input is a \
             terminal; leave out {stdin_flag} to be asked for it with the typing hidden"
        )));
    }
    first_line(&mut stdin.lock(), secret)
}

/// A new password for `username`: asked for twice on the terminal when standard input is
/// one (the two must match), else the first line of standard input.
pub fn new_password(username: &str) -> Result<Zeroizing<String>, CliError> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return first_line(&mut stdin.lock(), &PASSWORD);
    }
    let user = crate::table::clean(username.trim());
    typed_twice(&format!("Password for {user}: "), &PASSWORD)
}

/// The first line of `reader`, without its line break (`\n` or `\r\n`); nothing else is
/// trimmed, since spaces may be part of a secret.
pub fn first_line(
    reader: &mut impl BufRead,
    secret: &Secret,
) -> Result<Zeroizing<String>, CliError> {
    // Room for the longest line accepted and its line break, so the buffer never grows
    // (growing would leave copies of the secret in freed memory).
    let mut line = Zeroizing::new(Vec::with_capacity(MAX_SECRET_BYTES + 2));
    reader
        .take(u64::try_from(MAX_SECRET_BYTES + 2).unwrap_or(u64::MAX))
        .read_until(b'\n', &mut line)
        .map_err(stdin_error)?;
    end_at_line_break(&mut line);
    finish(line, ON_STDIN, secret)
}

/// The first line of the file at `path`, read as [`first_line`] reads standard input. The
/// file is read straight into a buffer that is wiped, not through a `BufReader` (whose own
/// buffer would keep a copy).
pub fn from_file(path: &Path, secret: &Secret) -> Result<Zeroizing<String>, CliError> {
    let cannot_read = |source| CliError::InputFile {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(cannot_read)?;
    let mut bytes = Zeroizing::new(Vec::with_capacity(MAX_SECRET_BYTES + 2));
    // At the limit `take` answers end of input without reading on, so `read_to_end` never
    // grows the buffer.
    file.take(u64::try_from(MAX_SECRET_BYTES + 2).unwrap_or(u64::MAX))
        .read_to_end(&mut bytes)
        .map_err(cannot_read)?;
    if let Some(end) = bytes.iter().position(|&b| b == b'\n') {
        // Keep the line break so that `end_at_line_break` treats it like standard input's.
        bytes.truncate(end + 1);
    }
    end_at_line_break(&mut bytes);
    finish(bytes, &format!("in {}", path.display()), secret)
}

/// Removes a final `\n` or `\r\n`.
fn end_at_line_break(line: &mut Vec<u8>) {
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
}

/// The number of characters in `bytes`, read as UTF-8 (continuation bytes are not counted).
fn char_count(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b & 0xc0 != 0x80).count()
}

/// Refuses a secret shorter than `secret.min_chars`. `origin` says where it came from.
fn check_length(bytes: &[u8], origin: &str, secret: &Secret) -> Result<(), CliError> {
    if char_count(bytes) < secret.min_chars {
        let Secret {
            noun,
            min_chars,
            undone,
            ..
        } = secret;
        return Err(CliError::Usage(format!(
            "the {noun} {origin} has fewer than {min_chars} characters, the fewest accepted; \
             {undone}"
        )));
    }
    Ok(())
}

/// Checks what was read and makes it text. `origin` says where it came from, with its
/// preposition (`on standard input`).
fn finish(
    mut bytes: Zeroizing<Vec<u8>>,
    origin: &str,
    secret: &Secret,
) -> Result<Zeroizing<String>, CliError> {
    let noun = secret.noun;
    if bytes.is_empty() {
        return Err(CliError::Usage(format!(
            "no {noun} {origin}: the line is empty"
        )));
    }
    if bytes.len() > MAX_SECRET_BYTES {
        return Err(CliError::Usage(format!(
            "the {noun} {origin} is longer than {MAX_SECRET_BYTES} bytes; \
             is this the right input?"
        )));
    }
    // The allocation moves into the String: no copy is made.
    let text = match String::from_utf8(std::mem::take(&mut *bytes)) {
        Ok(text) => Zeroizing::new(text),
        Err(e) => {
            e.into_bytes().zeroize();
            return Err(CliError::Usage(format!(
                "the {noun} {origin} is not UTF-8 text"
            )));
        }
    };
    if secret.printable_only && text.chars().any(char::is_control) {
        return Err(CliError::Usage(format!(
            "the {noun} {origin} holds a control character (a tab, a carriage return?), \
             which would be easy to get wrong when it is given again; {}",
            secret.undone
        )));
    }
    check_length(text.as_bytes(), origin, secret)?;
    Ok(text)
}

/// What a typed byte did to the line being entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Keep reading.
    More,
    /// Enter: the line is complete.
    Enter,
    /// The interrupt or quit key: give up.
    Interrupt,
    /// End of input on an empty line.
    EndOfInput,
}

/// The keys that mean something while a password is typed, as the terminal defines them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Keys {
    interrupt: u8,
    quit: u8,
    eof: u8,
    erase: u8,
    kill: u8,
}

impl Keys {
    /// The usual settings (`stty sane`): ^C, ^\, ^D, DEL, ^U.
    #[cfg(test)]
    const SANE: Keys = Keys {
        interrupt: 0x03,
        quit: 0x1c,
        eof: 0x04,
        erase: 0x7f,
        kill: 0x15,
    };
}

/// Removes the last character (all its UTF-8 bytes) from `line`.
fn erase_last_char(line: &mut Vec<u8>) {
    while let Some(byte) = line.pop() {
        // Continuation bytes are 10xxxxxx; the character ends at its lead byte.
        if byte & 0xc0 != 0x80 {
            break;
        }
    }
}

/// Applies one typed byte to `line`, as a terminal in canonical mode would. Control
/// characters without a meaning here (the ESC of an arrow key, a tab) are dropped: they are
/// not typed as part of a secret. Past [`MAX_SECRET_BYTES`] the bytes are counted but
/// not kept, so the buffer never grows and [`finish`] reports the length.
fn edit(line: &mut Zeroizing<Vec<u8>>, byte: u8, keys: &Keys, overflow: &mut bool) -> Step {
    match byte {
        b'\r' | b'\n' => Step::Enter,
        b if b == keys.interrupt || b == keys.quit => Step::Interrupt,
        b if b == keys.eof => {
            if line.is_empty() {
                Step::EndOfInput
            } else {
                Step::More
            }
        }
        // Terminals send either DEL or BS for the erase key, whatever stty says.
        b if b == keys.erase || b == 0x7f || b == 0x08 => {
            erase_last_char(line);
            Step::More
        }
        b if b == keys.kill => {
            line.zeroize();
            *overflow = false;
            Step::More
        }
        b if b < 0x20 => Step::More,
        b => {
            if line.len() < MAX_SECRET_BYTES {
                line.push(b);
            } else {
                *overflow = true;
            }
            Step::More
        }
    }
}

/// Feeds bytes from `next` into a line until Enter, and returns it. `None` from `next` is
/// the end of input.
fn read_typed(
    mut next: impl FnMut() -> Result<Option<u8>, CliError>,
    keys: &Keys,
) -> Result<Zeroizing<Vec<u8>>, Typed> {
    let mut line = Zeroizing::new(Vec::with_capacity(MAX_SECRET_BYTES));
    let mut overflow = false;
    loop {
        let step = match next().map_err(Typed::Failed)? {
            Some(byte) => edit(&mut line, byte, keys, &mut overflow),
            None if line.is_empty() => Step::EndOfInput,
            // End of input after some typing ends the line, as in canonical mode.
            None => Step::Enter,
        };
        match step {
            Step::More => {}
            Step::Enter if overflow => {
                // One byte more than allowed is enough for `finish` to refuse it.
                line.zeroize();
                line.resize(MAX_SECRET_BYTES + 1, b'x');
                return Ok(line);
            }
            Step::Enter => return Ok(line),
            Step::Interrupt => return Err(Typed::Interrupted),
            Step::EndOfInput => return Err(Typed::EndOfInput),
        }
    }
}

/// Why no line was typed.
#[derive(Debug)]
enum Typed {
    Interrupted,
    EndOfInput,
    Failed(CliError),
}

/// The error for a prompt that ended without a line.
fn not_typed(why: Typed, secret: &Secret) -> CliError {
    let Secret { noun, undone, .. } = secret;
    match why {
        Typed::Interrupted => {
            CliError::Usage(format!("interrupted at the {noun} prompt; {undone}"))
        }
        Typed::EndOfInput => CliError::Usage(format!("no {noun} typed (end of input); {undone}")),
        Typed::Failed(e) => e,
    }
}

/// Compares the two entries and returns the secret, refusing a mismatch.
fn confirmed(
    first: Zeroizing<Vec<u8>>,
    second: Zeroizing<Vec<u8>>,
    secret: &Secret,
) -> Result<Zeroizing<String>, CliError> {
    if *first != *second {
        return Err(CliError::Usage(format!(
            "the two {}s typed differ; {}",
            secret.noun, secret.undone
        )));
    }
    finish(first, "on the terminal", secret)
}

/// Asks for `secret` twice on the terminal that standard input is, with `prompt` first and
/// echo off, and refuses two different entries. One too short is refused before the second
/// is asked for. The caller makes sure standard input is a terminal.
#[cfg(unix)]
pub fn typed_twice(prompt: &str, secret: &Secret) -> Result<Zeroizing<String>, CliError> {
    let terminal = tty::HiddenInput::start().map_err(stdin_error)?;
    let first = terminal.ask(prompt, secret)?;
    check_length(&first, "typed", secret)?;
    let second = terminal.ask("Type it again: ", secret)?;
    drop(terminal);
    confirmed(first, second, secret)
}

/// Asks for `secret` twice on the terminal: only on Unix.
#[cfg(not(unix))]
pub fn typed_twice(_prompt: &str, secret: &Secret) -> Result<Zeroizing<String>, CliError> {
    Err(CliError::Usage(format!(
        "asking for a {} on the terminal is only supported on Unix; pipe it in with {}",
        secret.noun, secret.stdin_flag
    )))
}

#[cfg(unix)]
mod tty {
    use std::io::Write as _;

    use rustix::termios::{
        tcgetattr, tcsetattr, LocalModes, OptionalActions, SpecialCodeIndex, Termios,
    };
    use zeroize::Zeroizing;

    use super::{not_typed, read_typed, stdin_error, Keys, Secret};
    use crate::error::CliError;

    /// Standard input (a terminal) with echo, line editing and signal keys off; the
    /// terminal's settings come back when this is dropped, on every path out.
    pub struct HiddenInput {
        saved: Termios,
        keys: Keys,
    }

    impl HiddenInput {
        /// Switches the terminal on standard input to hidden, byte-at-a-time input.
        pub fn start() -> std::io::Result<HiddenInput> {
            let stdin = std::io::stdin();
            let saved = tcgetattr(&stdin)?;
            let codes = &saved.special_codes;
            let keys = Keys {
                interrupt: codes[SpecialCodeIndex::VINTR],
                quit: codes[SpecialCodeIndex::VQUIT],
                eof: codes[SpecialCodeIndex::VEOF],
                erase: codes[SpecialCodeIndex::VERASE],
                kill: codes[SpecialCodeIndex::VKILL],
            };
            let mut hidden = saved.clone();
            // ISIG off turns Ctrl-C into a byte this code sees, so the settings are put
            // back before the command ends, instead of a killed process leaving the
            // terminal without echo.
            hidden.local_modes.remove(
                LocalModes::ECHO
                    | LocalModes::ECHONL
                    | LocalModes::ICANON
                    | LocalModes::ISIG
                    | LocalModes::IEXTEN,
            );
            hidden.special_codes[SpecialCodeIndex::VMIN] = 1;
            hidden.special_codes[SpecialCodeIndex::VTIME] = 0;
            // Flush: what was typed before the prompt appeared is not taken as the secret.
            tcsetattr(&stdin, OptionalActions::Flush, &hidden)?;
            Ok(HiddenInput { saved, keys })
        }

        /// Shows `prompt` on stderr and reads one hidden line of `secret`.
        pub fn ask(&self, prompt: &str, secret: &Secret) -> Result<Zeroizing<Vec<u8>>, CliError> {
            let mut stderr = std::io::stderr().lock();
            let _ = write!(stderr, "{prompt}");
            let _ = stderr.flush();
            let stdin = std::io::stdin();
            // Read straight from the descriptor, a byte at a time: going through `Stdin`
            // would leave the secret in its buffer, which is never wiped.
            let next = || {
                let mut byte = [0_u8; 1];
                loop {
                    match rustix::io::read(&stdin, &mut byte) {
                        Ok(0) => return Ok(None),
                        Ok(_) => return Ok(Some(byte[0])),
                        Err(rustix::io::Errno::INTR) => {}
                        Err(e) => return Err(stdin_error(e.into())),
                    }
                }
            };
            let typed = read_typed(next, &self.keys);
            // Echo is off, so the line break the person typed has to be written here.
            let _ = writeln!(stderr);
            typed.map_err(|why| not_typed(why, secret))
        }
    }

    impl Drop for HiddenInput {
        fn drop(&mut self) {
            // Nothing better can be done if this fails: the error would hide the result.
            let _ = tcsetattr(std::io::stdin(), OptionalActions::Now, &self.saved);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(input: &[u8]) -> Result<Zeroizing<Vec<u8>>, Typed> {
        let mut bytes = input.iter().copied();
        read_typed(|| Ok(bytes.next()), &Keys::SANE)
    }

    fn line_of(input: &[u8]) -> Vec<u8> {
        typed(input).expect("a line").to_vec()
    }

    #[test]
    fn the_first_line_is_taken_without_its_line_break_only() {
        for (input, expect) in [
            (&b"correct horse\n"[..], "correct horse"),
            (b"  spaced out  \r\nsecond line\n", "  spaced out  "),
            (b"no newline at all", "no newline at all"),
            ("pässwörd-ñ\n".as_bytes(), "pässwörd-ñ"),
        ] {
            let got = first_line(&mut std::io::Cursor::new(input), &PASSWORD).expect("password");
            assert_eq!(got.as_str(), expect);
        }
    }

    #[test]
    fn empty_long_and_binary_input_is_refused_without_quoting_it() {
        for input in [&b""[..], b"\n", b"\r\n"] {
            let err = first_line(&mut std::io::Cursor::new(input), &PASSWORD).expect_err("empty");
            assert_eq!(
                err.to_string(),
                "no password on standard input: the line is empty"
            );
            assert_eq!(err.exit_code(), 2);
        }
        let long = vec![b'a'; MAX_SECRET_BYTES + 1];
        let err = first_line(&mut std::io::Cursor::new(&long), &PASSWORD).expect_err("long");
        assert!(err.to_string().contains("longer than 1024 bytes"), "{err}");
        let exact = vec![b'a'; MAX_SECRET_BYTES];
        assert_eq!(
            first_line(&mut std::io::Cursor::new(&exact), &PASSWORD)
                .expect("the longest accepted")
                .len(),
            MAX_SECRET_BYTES
        );
        let err = first_line(&mut std::io::Cursor::new(b"secret\xff\xfe\n"), &PASSWORD)
            .expect_err("binary");
        assert!(err.to_string().contains("not UTF-8"), "{err}");
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn typed_lines_end_at_enter_and_honour_erase_and_kill() {
        assert_eq!(line_of(b"hunter22\r"), b"hunter22");
        assert_eq!(line_of(b"hunter22\n"), b"hunter22");
        assert_eq!(line_of(b"hunterXY\x7f\x7f22\r"), b"hunter22");
        assert_eq!(line_of(b"hunter2X\x0822\r"), b"hunter222");
        assert_eq!(line_of(b"wrong\x15hunter22\r"), b"hunter22");
        // Erase removes a whole character, not one byte of it.
        assert_eq!(line_of("pwé\x7fe\r".as_bytes()), b"pwe");
        assert_eq!(line_of("€\x7f\x7fok\r".as_bytes()), b"ok");
        // The ESC of an arrow key is dropped; ^D inside a line does nothing.
        assert_eq!(line_of(b"a\x1bb\x04c\r"), b"abc");
        // End of input after some typing ends the line.
        assert_eq!(line_of(b"abc"), b"abc");
    }

    #[test]
    fn interrupt_quit_and_end_of_input_stop_the_prompt() {
        assert!(matches!(typed(b"half\x03rest\r"), Err(Typed::Interrupted)));
        assert!(matches!(typed(b"\x1c"), Err(Typed::Interrupted)));
        assert!(matches!(typed(b"\x04"), Err(Typed::EndOfInput)));
        assert!(matches!(typed(b""), Err(Typed::EndOfInput)));
        let custom = Keys {
            interrupt: 0x07,
            ..Keys::SANE
        };
        let mut bytes = b"ab\x07".iter().copied();
        assert!(matches!(
            read_typed(|| Ok(bytes.next()), &custom),
            Err(Typed::Interrupted)
        ));
    }

    #[test]
    fn an_overlong_typed_line_is_refused_by_length() {
        let mut input = vec![b'a'; MAX_SECRET_BYTES + 10];
        input.push(b'\r');
        let line = typed(&input).expect("a line");
        let err = finish(line, "on the terminal", &PASSWORD).expect_err("too long");
        assert!(err.to_string().contains("longer than"), "{err}");
        // Clearing the line forgets the overflow.
        let mut input = vec![b'a'; MAX_SECRET_BYTES + 10];
        input.extend_from_slice(b"\x15short-enough\r");
        assert_eq!(line_of(&input), b"short-enough");
    }

    #[test]
    fn the_two_entries_must_match() {
        let a = || Zeroizing::new(b"correct horse".to_vec());
        assert_eq!(
            confirmed(a(), a(), &PASSWORD).expect("same").as_str(),
            "correct horse"
        );
        let err = confirmed(a(), Zeroizing::new(b"correct h0rse".to_vec()), &PASSWORD)
            .expect_err("differ");
        assert_eq!(
            err.to_string(),
            "the two passwords typed differ; nothing was changed"
        );
        assert!(confirmed(
            Zeroizing::new(Vec::new()),
            Zeroizing::new(Vec::new()),
            &PASSWORD
        )
        .is_err());
    }

    /// A secret with a local length rule and no control characters, as a backup passphrase.
    const LONG_SECRET: Secret = Secret {
        noun: "passphrase",
        stdin_flag: "--passphrase-stdin",
        undone: "no backup was made",
        min_chars: 12,
        printable_only: true,
    };

    #[test]
    fn the_messages_name_the_secret_and_what_was_left_undone() {
        let err = confirmed(
            Zeroizing::new(b"correct horse battery".to_vec()),
            Zeroizing::new(b"correct horse battery!".to_vec()),
            &LONG_SECRET,
        )
        .expect_err("differ");
        assert_eq!(
            err.to_string(),
            "the two passphrases typed differ; no backup was made"
        );
        assert_eq!(
            not_typed(Typed::Interrupted, &LONG_SECRET).to_string(),
            "interrupted at the passphrase prompt; no backup was made"
        );
        assert_eq!(
            not_typed(Typed::EndOfInput, &PASSWORD).to_string(),
            "no password typed (end of input); nothing was changed"
        );
        assert_eq!(
            not_typed(Typed::Interrupted, &PASSWORD).to_string(),
            "interrupted at the password prompt; nothing was changed"
        );
    }

    #[test]
    fn a_minimum_length_counts_characters_not_bytes() {
        let read = |input: &str| first_line(&mut std::io::Cursor::new(input), &LONG_SECRET);
        let err = read("eleven char\n").expect_err("11 characters");
        assert_eq!(
            err.to_string(),
            "the passphrase on standard input has fewer than 12 characters, the fewest \
             accepted; no backup was made"
        );
        assert_eq!(err.exit_code(), 2);
        assert!(!err.to_string().contains("eleven char"), "{err}");
        assert_eq!(
            read("twelve chars\n").expect("12 characters").as_str(),
            "twelve chars"
        );
        // Eleven characters in 22 bytes are still too few; twelve of them are enough.
        assert!(read("ééééééééééé\n").is_err());
        assert_eq!(read("éééééééééééé").expect("12").chars().count(), 12);
        // Passwords leave the rule to the appliance.
        assert_eq!(
            first_line(&mut std::io::Cursor::new("short\n"), &PASSWORD)
                .expect("any length")
                .as_str(),
            "short"
        );
        assert_eq!(char_count("a€é".as_bytes()), 3);
    }

    #[test]
    fn control_characters_are_refused_where_the_secret_says_so() {
        for input in ["correct horse\tbattery\n", "correct horse battery\r\r\n"] {
            let err = first_line(&mut std::io::Cursor::new(input), &LONG_SECRET)
                .expect_err("control character");
            assert!(err.to_string().contains("control character"), "{err}");
            assert!(!err.to_string().contains("horse"), "{err}");
        }
        assert_eq!(
            first_line(&mut std::io::Cursor::new("tab\there\n"), &PASSWORD)
                .expect("left to the appliance")
                .as_str(),
            "tab\there"
        );
    }

    #[test]
    fn files_give_their_first_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pass.txt");
        for (content, expect) in [
            (
                &b"correct horse battery\nsecond line\n"[..],
                "correct horse battery",
            ),
            (b"correct horse battery\r\n", "correct horse battery"),
            (b"  no line break at all  ", "  no line break at all  "),
        ] {
            std::fs::write(&path, content).expect("write");
            let got = from_file(&path, &LONG_SECRET).expect("passphrase");
            assert_eq!(got.as_str(), expect);
        }
        // A long file is fine as long as its first line is not.
        let mut long = b"correct horse battery\n".to_vec();
        long.extend(vec![b'x'; 10 * MAX_SECRET_BYTES]);
        std::fs::write(&path, &long).expect("write");
        assert_eq!(
            from_file(&path, &LONG_SECRET).expect("first line").as_str(),
            "correct horse battery"
        );
        std::fs::write(&path, vec![b'x'; MAX_SECRET_BYTES + 1]).expect("write");
        let err = from_file(&path, &LONG_SECRET).expect_err("too long");
        assert!(err.to_string().contains("longer than 1024 bytes"), "{err}");

        std::fs::write(&path, "\ncorrect horse battery\n").expect("write");
        let err = from_file(&path, &LONG_SECRET).expect_err("empty first line");
        assert_eq!(
            err.to_string(),
            format!("no passphrase in {}: the line is empty", path.display())
        );
        std::fs::write(&path, "too short\n").expect("write");
        let err = from_file(&path, &LONG_SECRET).expect_err("short");
        assert!(
            err.to_string().starts_with(&format!(
                "the passphrase in {} has fewer than 12",
                path.display()
            )),
            "{err}"
        );
        let missing = dir.path().join("missing.txt");
        assert!(matches!(
            from_file(&missing, &LONG_SECRET),
            Err(CliError::InputFile { path, .. }) if path == missing
        ));
        assert!(matches!(
            from_file(dir.path(), &LONG_SECRET),
            Err(CliError::InputFile { .. })
        ));
    }
}
