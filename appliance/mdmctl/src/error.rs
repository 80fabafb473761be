//! Every way a command can fail, and the exit code each one maps to.

use std::path::PathBuf;

/// Exit code: the API refused the request, or answered something the CLI cannot use.
pub const EXIT_API: u8 = 1;
/// Exit code: the command line or a local file named on it is wrong.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the appliance could not be reached, or TLS failed.
pub const EXIT_UNREACHABLE: u8 = 3;

/// Why a command failed. The message is shown to the admin as is, so each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// No `--server` and no `MDMCTL_SERVER`.
    #[error("no appliance address given: pass --server https://HOST:PORT or set MDMCTL_SERVER")]
    NoServer,
    /// The server address is not an absolute `https://` URL.
    #[error("--server {url:?} is not usable: {reason}")]
    ServerUrl {
        /// The address as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No `--token-file` and no `MDMCTL_TOKEN_FILE`.
    #[error(
        "no API token given: pass --token-file FILE or set MDMCTL_TOKEN_FILE \
         (the first admin token is admin.token in the appliance's data directory)"
    )]
    NoTokenFile,
    /// The token file could not be read.
    #[error("cannot read the token file {}: {source}", path.display())]
    TokenFile {
        /// The file named by `--token-file`.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The token file holds nothing but whitespace.
    #[error("the token file {} is empty; it must hold the API token on one line", path.display())]
    TokenEmpty {
        /// The file named by `--token-file`.
        path: PathBuf,
    },
    /// The token holds characters an HTTP header cannot carry.
    #[error(
        "the token file {} does not hold a token: it must be one line of printable ASCII \
         (is this the right file?)",
        path.display()
    )]
    TokenMalformed {
        /// The file named by `--token-file`.
        path: PathBuf,
    },
    /// The CA file could not be read.
    #[error("cannot read the CA file {}: {source}", path.display())]
    CaFile {
        /// The file named by `--ca`.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The CA file is not PEM, or holds no certificate.
    #[error(
        "the CA file {} holds no PEM certificate ({reason}); \
         it must be the appliance CA as served at /ca.pem",
        path.display()
    )]
    CaPem {
        /// The file named by `--ca`.
        path: PathBuf,
        /// What the PEM parser found.
        reason: String,
    },
    /// A certificate in the CA file is not usable as a trust anchor.
    #[error("a certificate in the CA file {} is not usable as a trust anchor: {source}", path.display())]
    CaCertificate {
        /// The file named by `--ca`.
        path: PathBuf,
        /// What rustls found wrong with it.
        #[source]
        source: rustls::Error,
    },
    /// No `--ca` was given, so no certificate can be trusted.
    #[error(
        "cannot trust {url}: no CA certificate given; pass --ca FILE (or set MDMCTL_CA) \
         with the appliance CA (PEM)"
    )]
    NoCa {
        /// The appliance address.
        url: String,
    },
    /// rustls refused to build the client configuration.
    #[error("the TLS client could not be configured: {0}")]
    TlsConfig(#[source] rustls::Error),
    /// A file named on the command line could not be read.
    #[error("cannot read {}: {source}", path.display())]
    InputFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file named on the command line cannot be written.
    #[error("cannot write {}: {source}", path.display())]
    OutputFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The partial file a download is written to already exists.
    #[error(
        "{} exists: an earlier run was interrupted, or one is writing it now; if none is, \
         remove it and try again",
        path.display()
    )]
    PartialFile {
        /// The `.partial` file.
        path: PathBuf,
    },
    /// The `--plist` file is not a command plist.
    #[error("{} is not a command plist: {reason}", path.display())]
    CommandPlist {
        /// The file named by `--plist`.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A destructive command was asked for without `--yes`.
    #[error(
        "{request_type} cannot be undone; add --yes to confirm that it should be sent to {targets}"
    )]
    NotConfirmed {
        /// The command's RequestType.
        request_type: String,
        /// The targets, listed for the admin to check.
        targets: String,
    },
    /// An action that cannot be undone was asked for without its confirmation flag.
    #[error("{action}; add {flag} to confirm")]
    Unconfirmed {
        /// What would happen, for the admin to check.
        action: String,
        /// The flag that confirms it.
        flag: &'static str,
    },
    /// A serial number given on the command line or in a `--file` is not one.
    #[error(
        "{origin}: {value:?} is not a serial number (1 to 64 letters and digits, as ABM lists it)"
    )]
    Serial {
        /// Where it came from: `argument 2`, `serials.txt line 7`.
        origin: String,
        /// The text as given.
        value: String,
    },
    /// No serial number was given to a command that acts on devices.
    #[error("no serial numbers given: list them as arguments or in --file (one per line)")]
    NoSerials,
    /// A file given as an ABM enrollment profile is not a JSON object.
    #[error("{} is not an ABM enrollment profile: {reason}", path.display())]
    ProfileJson {
        /// The file (`-` for standard input).
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A file given as certificate authorities for the ABM URL holds no usable certificate.
    #[error(
        "{} is not usable as the CA for the ABM URL ({reason}); it must hold the PEM \
         certificate(s) of the CA that issued that server's TLS certificate",
        path.display()
    )]
    AbmCa {
        /// The file named by `--abm-ca`.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A file given as a server token cannot be one.
    #[error(
        "{} is not an ABM server token ({reason}); download it again from the MDM server's \
         page in Apple Business Manager",
        path.display()
    )]
    ServerToken {
        /// The file named on the command line.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An argument value is wrong in a way clap cannot check.
    #[error("{0}")]
    Usage(String),
    /// The async runtime could not start.
    #[error("the network runtime could not start: {0}")]
    Runtime(#[source] std::io::Error),
    /// TCP connection to the appliance failed.
    #[error("cannot reach {url}: {source}")]
    Connect {
        /// The appliance address.
        url: String,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed.
    #[error("TLS with {url} failed: {reason}")]
    Tls {
        /// The appliance address.
        url: String,
        /// What went wrong, with the likely fix.
        reason: String,
    },
    /// The appliance did not answer in time.
    #[error("{url} did not answer within {seconds} s ({stage})")]
    Timeout {
        /// The appliance address.
        url: String,
        /// The limit that was exceeded.
        seconds: u64,
        /// What was being waited for.
        stage: &'static str,
    },
    /// The HTTP exchange broke after the connection was set up.
    #[error("the connection to {url} failed: {source}")]
    Http {
        /// The appliance address.
        url: String,
        /// The HTTP error.
        #[source]
        source: hyper::Error,
    },
    /// The API refused the request with its error shape (or an HTTP error without it).
    #[error("{code}: {message}")]
    Api {
        /// HTTP status of the answer.
        status: u16,
        /// The API's stable error code (`HTTP_<status>` when the body had none).
        code: String,
        /// The API's explanation.
        message: String,
    },
    /// The API answered success with a body the CLI cannot read.
    #[error("{url} answered with something other than the admin API ({reason}); is --server the appliance?")]
    BadResponse {
        /// The request URL.
        url: String,
        /// What is wrong with the answer.
        reason: String,
    },
}

impl CliError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Api { .. } | CliError::BadResponse { .. } => EXIT_API,
            CliError::NoServer
            | CliError::ServerUrl { .. }
            | CliError::NoTokenFile
            | CliError::TokenFile { .. }
            | CliError::TokenEmpty { .. }
            | CliError::TokenMalformed { .. }
            | CliError::CaFile { .. }
            | CliError::CaPem { .. }
            | CliError::CaCertificate { .. }
            | CliError::InputFile { .. }
            | CliError::OutputFile { .. }
            | CliError::PartialFile { .. }
            | CliError::CommandPlist { .. }
            | CliError::NotConfirmed { .. }
            | CliError::Unconfirmed { .. }
            | CliError::Serial { .. }
            | CliError::NoSerials
            | CliError::ProfileJson { .. }
            | CliError::AbmCa { .. }
            | CliError::ServerToken { .. }
            | CliError::Usage(_) => EXIT_USAGE,
            CliError::NoCa { .. }
            | CliError::TlsConfig(_)
            | CliError::Runtime(_)
            | CliError::Connect { .. }
            | CliError::Tls { .. }
            | CliError::Timeout { .. }
            | CliError::Http { .. } => EXIT_UNREACHABLE,
        }
    }

    /// The line printed on stderr: `error CODE: message` for API refusals (scripts match on
    /// the code), `error: message` otherwise.
    pub fn stderr_line(&self) -> String {
        match self {
            CliError::Api { .. } => format!("error {self}"),
            other => format!("error: {other}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_print_their_code_after_error() {
        let e = CliError::Api {
            status: 404,
            code: "LINK_NOT_FOUND".into(),
            message: "no enrollment link x".into(),
        };
        assert_eq!(
            e.stderr_line(),
            "error LINK_NOT_FOUND: no enrollment link x"
        );
        assert_eq!(e.exit_code(), EXIT_API);
    }

    #[test]
    fn local_and_network_failures_have_their_own_codes() {
        assert_eq!(CliError::NoServer.exit_code(), EXIT_USAGE);
        assert!(CliError::NoServer
            .stderr_line()
            .starts_with("error: no appliance address"));
        let refused = CliError::Connect {
            url: "https://127.0.0.1:1".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        assert_eq!(refused.exit_code(), EXIT_UNREACHABLE);
        assert!(refused.to_string().contains("https://127.0.0.1:1"));
        assert_eq!(
            CliError::NoCa {
                url: "https://x".into()
            }
            .exit_code(),
            EXIT_UNREACHABLE
        );
    }
}
