//! Running `mdmctl backup ...`: the passphrase (read and checked before anything is sent,
//! never from an argument), the call to `POST /api/v1/backup`, and writing the answer so
//! that FILE, once it exists, is always a whole backup.
//!
//! The answer is written as it arrives to `FILE.partial` (created new, readable only by its
//! owner), flushed to disk, and renamed to FILE; on any failure, an interruption included,
//! the partial file is removed. The appliance builds the whole backup before it answers, so
//! the wait is mostly on the appliance and nothing shows progress.

use std::fs::File;
use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Method;
use serde_json::json;

use super::Output;
use crate::cli::backup::{BackupCommand, BackupCreate};
use crate::client::{ApiClient, RequestBody, API_PREFIX};
use crate::error::CliError;
use crate::password::{self, Secret};

/// Fewest characters the appliance accepts in a backup passphrase; checked here too, so a
/// short one is refused before the appliance pauses its writes for nothing.
pub const MIN_PASSPHRASE_CHARS: usize = 12;

/// The backup passphrase, for the messages about it. Control characters are refused: the
/// same text must be given again to `mdmd restore`, from a file or a pipe, where a stray tab
/// or carriage return cannot be seen.
const PASSPHRASE: Secret = Secret {
    noun: "passphrase",
    stdin_flag: "--passphrase-stdin",
    undone: "no backup was made",
    min_chars: MIN_PASSPHRASE_CHARS,
    printable_only: true,
};

/// Limit for the whole backup request. The appliance copies its database (writes wait),
/// derives the key from the passphrase, encrypts everything and only then answers, with a
/// body that can be hundreds of MB.
pub const BACKUP_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The type of the backup answer; anything else is not a backup.
const BACKUP_MEDIA_TYPE: &str = "application/octet-stream";

/// The reminder printed on stderr after a backup is written.
const RESTORE_REMINDER: &str = "the passphrase is needed to restore this backup (mdmd restore \
    --data-dir DIR --from FILE --passphrase-file F) and is not stored anywhere: keep it safe, \
    and apart from the backup";

/// Runs a `backup` subcommand.
pub async fn backup(
    client: &mut ApiClient,
    command: &BackupCommand,
    json: bool,
) -> Result<Output, CliError> {
    match command {
        BackupCommand::Create(args) => create(client, args, json).await,
    }
}

/// `FILE.partial`, where FILE is written first.
fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// Whether anything (a file, a directory, a dangling symbolic link) is at `path`.
fn occupied(path: &Path) -> Result<Option<std::fs::Metadata>, CliError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => Ok(Some(meta)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CliError::OutputFile {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The checks made before the passphrase is asked for: FILE is not a directory, does not
/// exist unless `force`, and no partial file is in the way.
fn check_destination(out: &Path, force: bool) -> Result<(), CliError> {
    match occupied(out)? {
        Some(meta) if meta.is_dir() => {
            return Err(CliError::Usage(format!(
                "--out {} is a directory; name the file to write, e.g. {}",
                out.display(),
                out.join("appliance.mdmbackup").display()
            )))
        }
        Some(_) if !force => {
            return Err(CliError::Unconfirmed {
                action: format!("{} exists and would be replaced", out.display()),
                flag: "--force",
            })
        }
        _ => {}
    }
    let partial = partial_path(out);
    if occupied(&partial)?.is_some() {
        return Err(CliError::PartialFile { path: partial });
    }
    Ok(())
}

/// The passphrase, from where the flags say; asked for on the terminal without them.
fn passphrase(args: &BackupCreate) -> Result<zeroize::Zeroizing<String>, CliError> {
    if let Some(path) = &args.passphrase_file {
        return password::from_file(path, &PASSPHRASE);
    }
    if args.passphrase_stdin {
        return password::from_stdin(&PASSPHRASE);
    }
    // Unlike a user's password, a passphrase is not taken from a pipe unasked: one that
    // cannot be recovered should come from where the admin said.
    if !std::io::stdin().is_terminal() {
        return Err(CliError::Usage(
            "standard input is not a terminal, so the passphrase cannot be asked for; give it \
             with --passphrase-file FILE or --passphrase-stdin"
                .into(),
        ));
    }
    password::typed_twice("Passphrase for the backup: ", &PASSPHRASE)
}

/// The backup being written: `FILE.partial`, removed when dropped unless it was put in place.
struct Partial {
    path: PathBuf,
    file: Option<File>,
    placed: bool,
}

impl Partial {
    /// Creates the partial file, failing if it exists, readable and writable by its owner
    /// only (on Unix): a backup opens every secret of the appliance to whoever has the
    /// passphrase, so no one else should even read it.
    fn create(path: PathBuf) -> Result<Partial, CliError> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        match options.open(&path) {
            Ok(file) => Ok(Partial {
                path,
                file: Some(file),
                placed: false,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(CliError::PartialFile { path })
            }
            Err(source) => Err(CliError::OutputFile { path, source }),
        }
    }

    fn error(&self, source: std::io::Error) -> CliError {
        CliError::OutputFile {
            path: self.path.clone(),
            source,
        }
    }

    /// Appends `bytes`.
    fn write(&mut self, bytes: &[u8]) -> Result<(), CliError> {
        let result = match self.file.as_mut() {
            Some(file) => file.write_all(bytes),
            None => Err(std::io::Error::other("the file is already closed")),
        };
        result.map_err(|e| self.error(e))
    }

    /// Flushes the file to disk and renames it to `out`. Returns a warning when the rename
    /// could not be flushed to disk too (the backup is complete, but a power cut could
    /// still lose its name).
    fn place(mut self, out: &Path, force: bool) -> Result<Option<String>, CliError> {
        let file = self
            .file
            .take()
            .ok_or_else(|| self.error(std::io::Error::other("the file is already closed")))?;
        file.sync_all().map_err(|e| self.error(e))?;
        drop(file);
        // Checked again: the backup took a while, and a rename replaces what it finds.
        if !force && occupied(out)?.is_some() {
            return Err(CliError::Unconfirmed {
                action: format!(
                    "{} appeared while the backup was made and would be replaced; the backup \
                     was not kept",
                    out.display()
                ),
                flag: "--force",
            });
        }
        std::fs::rename(&self.path, out).map_err(|source| CliError::OutputFile {
            path: out.to_path_buf(),
            source,
        })?;
        self.placed = true;
        Ok(sync_directory_of(out))
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.placed {
            drop(self.file.take());
            // Nothing better can be done if this fails: the error being reported matters more.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Flushes the directory holding `path`, so that a rename into it survives a power cut.
/// Returns a warning instead of failing: some file systems cannot flush a directory.
#[cfg(unix)]
fn sync_directory_of(path: &Path) -> Option<String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match File::open(dir).and_then(|d| d.sync_all()) {
        Ok(()) => None,
        Err(e) => Some(format!(
            "warning: {} could not be flushed to disk ({e}); the backup is complete, but run \
             `sync` before relying on it",
            dir.display()
        )),
    }
}

/// Directories cannot be opened to flush them here; the rename is as durable as the system
/// makes it.
#[cfg(not(unix))]
fn sync_directory_of(_path: &Path) -> Option<String> {
    None
}

/// Ctrl-C and, on Unix, SIGTERM, listened for from [`Interrupts::listen`] on. While they are,
/// they do not end the process, so the partial file can be removed before it exits.
#[cfg(unix)]
struct Interrupts(Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>);

#[cfg(unix)]
impl Interrupts {
    /// Starts listening. Without signal handling (it could not be set up) an interruption
    /// ends the process as usual and leaves the partial file behind.
    fn listen() -> Interrupts {
        use tokio::signal::unix::{signal, SignalKind};
        let both = signal(SignalKind::interrupt())
            .and_then(|int| Ok((int, signal(SignalKind::terminate())?)))
            .ok();
        Interrupts(both)
    }

    /// Resolves when an interruption arrives.
    async fn arrived(&mut self) {
        match &mut self.0 {
            Some((int, term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            None => std::future::pending().await,
        }
    }
}

/// Ctrl-C, listened for while the backup is received.
#[cfg(not(unix))]
struct Interrupts;

#[cfg(not(unix))]
impl Interrupts {
    fn listen() -> Interrupts {
        Interrupts
    }

    async fn arrived(&mut self) {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

async fn create(
    client: &mut ApiClient,
    args: &BackupCreate,
    json: bool,
) -> Result<Output, CliError> {
    let out = args.out.as_path();
    check_destination(out, args.force)?;
    let passphrase = passphrase(args)?;
    // The JSON copy the client sends is not wiped; the `Zeroizing` original is, right here.
    let body = RequestBody::Json(json!({ "passphrase": passphrase.as_str() }));
    drop(passphrase);

    let mut interrupts = Interrupts::listen();
    let mut partial = Partial::create(partial_path(out))?;
    let path = format!("{API_PREFIX}/backup");
    let download = client.download_within(
        Method::POST,
        &path,
        body,
        BACKUP_MEDIA_TYPE,
        BACKUP_TIMEOUT,
        |bytes| partial.write(bytes),
    );
    let received = tokio::select! {
        result = download => result?,
        () = interrupts.arrived() => {
            return Err(CliError::Usage(
                "interrupted; no backup was written (the appliance may still finish making \
                 it: its activity log records backup.created)"
                    .into(),
            ));
        }
    };
    if received == 0 {
        return Err(CliError::BadResponse {
            url: format!("{}{path}", client.origin()),
            reason: "the backup it sent is empty".into(),
        });
    }
    let warning = partial.place(out, args.force)?;

    let mut output = if json {
        Output::json(&json!({ "file": out.to_string_lossy(), "bytes": received }))
    } else {
        Output::line(&format!(
            "backup written to {} ({received} bytes)",
            out.display()
        ))
    };
    output = output.note(RESTORE_REMINDER);
    if let Some(w) = warning {
        output = output.note(w);
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_partial_file_sits_next_to_the_backup() {
        assert_eq!(
            partial_path(Path::new("/srv/b/x.mdmbackup")),
            PathBuf::from("/srv/b/x.mdmbackup.partial")
        );
        assert_eq!(partial_path(Path::new("x")), PathBuf::from("x.partial"));
    }

    #[test]
    fn the_destination_is_checked_before_the_passphrase() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("a.mdmbackup");
        check_destination(&out, false).expect("free");

        std::fs::write(&out, b"old").expect("write");
        let err = check_destination(&out, false).expect_err("exists");
        assert!(matches!(
            err,
            CliError::Unconfirmed {
                flag: "--force",
                ..
            }
        ));
        assert!(err
            .to_string()
            .ends_with("exists and would be replaced; add --force to confirm"));
        check_destination(&out, true).expect("--force");

        let err = check_destination(dir.path(), true).expect_err("a directory");
        assert!(err.to_string().contains("is a directory"), "{err}");

        std::fs::write(partial_path(&out), b"").expect("write");
        let err = check_destination(&out, true).expect_err("partial");
        assert!(matches!(err, CliError::PartialFile { .. }));
        assert_eq!(err.exit_code(), 2);
    }

    #[cfg(unix)]
    #[test]
    fn a_dangling_link_counts_as_an_existing_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("link.mdmbackup");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &out).expect("symlink");
        assert!(matches!(
            check_destination(&out, false),
            Err(CliError::Unconfirmed { .. })
        ));
    }

    #[test]
    fn a_partial_file_is_removed_unless_placed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("a.mdmbackup");
        let mut partial = Partial::create(partial_path(&out)).expect("create");
        partial.write(b"half a backup").expect("write");
        assert!(matches!(
            Partial::create(partial_path(&out)),
            Err(CliError::PartialFile { .. })
        ));
        drop(partial);
        assert!(!partial_path(&out).exists());
        assert!(!out.exists());

        let mut partial = Partial::create(partial_path(&out)).expect("create");
        partial.write(b"a whole ").expect("write");
        partial.write(b"backup").expect("write");
        assert_eq!(partial.place(&out, false).expect("placed"), None);
        assert_eq!(std::fs::read(&out).expect("read"), b"a whole backup");
        assert!(!partial_path(&out).exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&out).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        }
    }

    #[test]
    fn a_file_that_appeared_meanwhile_is_kept_without_force() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("a.mdmbackup");
        let mut partial = Partial::create(partial_path(&out)).expect("create");
        partial.write(b"new").expect("write");
        std::fs::write(&out, b"someone else's").expect("write");
        let err = partial.place(&out, false).expect_err("appeared");
        assert!(err.to_string().contains("appeared while"), "{err}");
        assert_eq!(std::fs::read(&out).expect("read"), b"someone else's");
        assert!(!partial_path(&out).exists());

        let mut partial = Partial::create(partial_path(&out)).expect("create");
        partial.write(b"new").expect("write");
        partial.place(&out, true).expect("--force");
        assert_eq!(std::fs::read(&out).expect("read"), b"new");
    }
}
