//! Reading a user account's password without it passing through the command line, the
//! screen or a message.
//!
//! On a terminal the password is typed twice with echo off; otherwise it is the first line
//! of standard input. The terminal is put in non-canonical mode with signals off for the
//! prompt, and the keys are interpreted here (Enter, erase, kill, end of input, interrupt),
//! so that Ctrl-C restores the terminal instead of killing the process with echo still off.
//! Passwords live in [`Zeroizing`] buffers; the request body the client builds from them is
//! an ordinary copy, freed (not wiped) after the request.
//!
//! What it cannot do: prompt on systems other than Unix (use `--password-stdin` there), or
//! edit the line beyond erasing the last character and clearing it.

use std::io::{BufRead, IsTerminal as _, Read as _};
use std::path::PathBuf;

use zeroize::{Zeroize as _, Zeroizing};

use crate::error::CliError;

/// More bytes than any password the appliance accepts (256 characters of up to 4 bytes):
/// a longer line is the wrong input.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// The name standard input goes by in error messages.
const STDIN: &str = "standard input";

fn stdin_error(source: std::io::Error) -> CliError {
    CliError::InputFile {
        path: PathBuf::from(STDIN),
        source,
    }
}

/// The password given with `--password-stdin`: the first line of standard input, which must
/// not be a terminal (typing there would show the password).
pub fn from_stdin() -> Result<Zeroizing<String>, CliError> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Err(CliError::Usage(
            "--password-stdin reads the password from a pipe or a file, but standard input \
             is a terminal; leave out --password-stdin to be asked for it with the typing \
             hidden"
                .into(),
        ));
    }
    first_line(&mut stdin.lock())
}

/// A new password for `username`: asked for twice on the terminal when standard input is
/// one (the two must match), else the first line of standard input.
pub fn new_password(username: &str) -> Result<Zeroizing<String>, CliError> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return first_line(&mut stdin.lock());
    }
    prompt_twice(username)
}

/// The first line of `reader`, without its line break (`\n` or `\r\n`); nothing else is
/// trimmed, since spaces may be part of a password.
pub fn first_line(reader: &mut impl BufRead) -> Result<Zeroizing<String>, CliError> {
    // Room for the longest line accepted and its line break, so the buffer never grows
    // (growing would leave copies of the password in freed memory).
    let mut line = Zeroizing::new(Vec::with_capacity(MAX_PASSWORD_BYTES + 2));
    reader
        .take(u64::try_from(MAX_PASSWORD_BYTES + 2).unwrap_or(u64::MAX))
        .read_until(b'\n', &mut line)
        .map_err(stdin_error)?;
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    finish(line, STDIN)
}

/// Checks what was read and makes it text. `origin` names where it came from.
fn finish(mut bytes: Zeroizing<Vec<u8>>, origin: &str) -> Result<Zeroizing<String>, CliError> {
    if bytes.is_empty() {
        return Err(CliError::Usage(format!(
            "no password on {origin}: the line is empty"
        )));
    }
    if bytes.len() > MAX_PASSWORD_BYTES {
        return Err(CliError::Usage(format!(
            "the password on {origin} is longer than {MAX_PASSWORD_BYTES} bytes; \
             is this the right input?"
        )));
    }
    // The allocation moves into the String: no copy is made.
    match String::from_utf8(std::mem::take(&mut *bytes)) {
        Ok(text) => Ok(Zeroizing::new(text)),
        Err(e) => {
            e.into_bytes().zeroize();
            Err(CliError::Usage(format!(
                "the password on {origin} is not UTF-8 text"
            )))
        }
    }
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
/// not typed as part of a password. Past [`MAX_PASSWORD_BYTES`] the bytes are counted but
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
            if line.len() < MAX_PASSWORD_BYTES {
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
    let mut line = Zeroizing::new(Vec::with_capacity(MAX_PASSWORD_BYTES));
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
                line.resize(MAX_PASSWORD_BYTES + 1, b'x');
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

/// Compares the two entries and returns the password, refusing a mismatch.
fn confirmed(
    first: Zeroizing<Vec<u8>>,
    second: Zeroizing<Vec<u8>>,
) -> Result<Zeroizing<String>, CliError> {
    if *first != *second {
        return Err(CliError::Usage(
            "the two passwords typed differ; nothing was changed".into(),
        ));
    }
    finish(first, "the terminal")
}

#[cfg(unix)]
fn prompt_twice(username: &str) -> Result<Zeroizing<String>, CliError> {
    let terminal = tty::HiddenInput::start().map_err(stdin_error)?;
    let user = crate::table::clean(username.trim());
    let first = terminal.ask(&format!("Password for {user}: "))?;
    let second = terminal.ask("Type it again: ")?;
    drop(terminal);
    confirmed(first, second)
}

#[cfg(not(unix))]
fn prompt_twice(_username: &str) -> Result<Zeroizing<String>, CliError> {
    Err(CliError::Usage(
        "asking for a password on the terminal is only supported on Unix; pipe it in with \
         --password-stdin"
            .into(),
    ))
}

#[cfg(unix)]
mod tty {
    use std::io::Write as _;

    use rustix::termios::{
        tcgetattr, tcsetattr, LocalModes, OptionalActions, SpecialCodeIndex, Termios,
    };
    use zeroize::Zeroizing;

    use super::{read_typed, stdin_error, Keys, Typed};
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
            // Flush: what was typed before the prompt appeared is not taken as the password.
            tcsetattr(&stdin, OptionalActions::Flush, &hidden)?;
            Ok(HiddenInput { saved, keys })
        }

        /// Shows `prompt` on stderr and reads one hidden line.
        pub fn ask(&self, prompt: &str) -> Result<Zeroizing<Vec<u8>>, CliError> {
            let mut stderr = std::io::stderr().lock();
            let _ = write!(stderr, "{prompt}");
            let _ = stderr.flush();
            let stdin = std::io::stdin();
            // Read straight from the descriptor, a byte at a time: going through `Stdin`
            // would leave the password in its buffer, which is never wiped.
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
            typed.map_err(|why| match why {
                Typed::Interrupted => CliError::Usage(
                    "interrupted at the password prompt; nothing was changed".into(),
                ),
                Typed::EndOfInput => {
                    CliError::Usage("no password typed (end of input); nothing was changed".into())
                }
                Typed::Failed(e) => e,
            })
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
            let got = first_line(&mut std::io::Cursor::new(input)).expect("password");
            assert_eq!(got.as_str(), expect);
        }
    }

    #[test]
    fn empty_long_and_binary_input_is_refused_without_quoting_it() {
        for input in [&b""[..], b"\n", b"\r\n"] {
            let err = first_line(&mut std::io::Cursor::new(input)).expect_err("empty");
            assert_eq!(
                err.to_string(),
                "no password on standard input: the line is empty"
            );
            assert_eq!(err.exit_code(), 2);
        }
        let long = vec![b'a'; MAX_PASSWORD_BYTES + 1];
        let err = first_line(&mut std::io::Cursor::new(&long)).expect_err("long");
        assert!(err.to_string().contains("longer than 1024 bytes"), "{err}");
        let exact = vec![b'a'; MAX_PASSWORD_BYTES];
        assert_eq!(
            first_line(&mut std::io::Cursor::new(&exact))
                .expect("the longest accepted")
                .len(),
            MAX_PASSWORD_BYTES
        );
        let err = first_line(&mut std::io::Cursor::new(b"secret\xff\xfe\n")).expect_err("binary");
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
        let mut input = vec![b'a'; MAX_PASSWORD_BYTES + 10];
        input.push(b'\r');
        let line = typed(&input).expect("a line");
        let err = finish(line, "the terminal").expect_err("too long");
        assert!(err.to_string().contains("longer than"), "{err}");
        // Clearing the line forgets the overflow.
        let mut input = vec![b'a'; MAX_PASSWORD_BYTES + 10];
        input.extend_from_slice(b"\x15short-enough\r");
        assert_eq!(line_of(&input), b"short-enough");
    }

    #[test]
    fn the_two_entries_must_match() {
        let a = || Zeroizing::new(b"correct horse".to_vec());
        assert_eq!(confirmed(a(), a()).expect("same").as_str(), "correct horse");
        let err = confirmed(a(), Zeroizing::new(b"correct h0rse".to_vec())).expect_err("differ");
        assert_eq!(
            err.to_string(),
            "the two passwords typed differ; nothing was changed"
        );
        assert!(confirmed(Zeroizing::new(Vec::new()), Zeroizing::new(Vec::new())).is_err());
    }
}
