//! The one error type of this crate.

/// Why a device message, command or MachineInfo could not be parsed or encoded.
///
/// Variants name the Apple key involved so that a log line points at the offending field. None
/// of them knows about HTTP; the web layer maps them (typically to `400 Bad Request`).
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The bytes are neither an XML nor a binary property list.
    #[error("the body is not an XML or binary property list: {0}")]
    NotAPlist(#[source] plist::Error),

    /// The property list parsed but its top level is not a dictionary.
    #[error("the property list's top level is a {found}, but a dictionary was expected")]
    NotADictionary {
        /// The kind of value found instead (`array`, `string`, ...).
        found: &'static str,
    },

    /// A key Apple documents as required is absent.
    #[error("the required key {0} is missing")]
    MissingField(&'static str),

    /// A key is present but its value has the wrong type or an unusable value.
    #[error("the key {field} is invalid: {reason}")]
    InvalidField {
        /// The Apple key name (dotted for nested keys, e.g. `Command.RequestType`).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// A check-in carried a `MessageType` this crate does not know.
    #[error("the check-in MessageType {0:?} is not supported by this server")]
    UnknownMessageType(String),

    /// A plist that has neither `MessageType` (check-in) nor `Status` (command report).
    #[error(
        "the message has neither a MessageType (check-in) nor a Status (command report) key; \
         it is not an MDM device message"
    )]
    NotADeviceMessage,

    /// A command name (for example typed on the CLI) is not one of the known commands.
    #[error("unknown command type {name:?}; known command types: {known}")]
    UnknownCommand {
        /// The name that was given.
        name: String,
        /// Comma-separated list of the known command types.
        known: String,
    },

    /// A command type was named that cannot be built without arguments.
    #[error("the command {command} needs {needs}; build it with its arguments instead of by name")]
    CommandNeedsArguments {
        /// Apple's `RequestType` of the command.
        command: &'static str,
        /// What is missing, in words.
        needs: &'static str,
    },

    /// Writing a property list failed (for example a binary-only `UID` value put into XML).
    #[error("could not write the property list as XML: {0}")]
    Encode(#[source] plist::Error),
}
