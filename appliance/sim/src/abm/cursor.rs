//! Fetch and sync cursors. They are opaque to clients, as Apple's are, but carry their
//! whole state (which server, where the fetch stands, where sync resumes, when the
//! cursor was made) under an HMAC, so the simulator keeps no per-cursor records and a
//! garbled or foreign cursor is recognised as such.

use base64::Engine;

/// What a cursor continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CursorKind {
    /// A cursor returned by `POST /server/devices`.
    Fetch,
    /// A cursor returned by `POST /devices/sync`.
    Sync,
}

/// The decoded content of a cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub(crate) kind: CursorKind,
    pub(crate) server: u32,
    /// Simulated time the cursor was made, seconds since the Unix epoch.
    pub(crate) created: u64,
    /// Event sequence number a sync from this cursor starts at. For fetch cursors, the
    /// event position when the fetch began, so nothing that happens during a fetch is
    /// missed by the sync after it.
    pub(crate) seq: u64,
    /// Fetch only: the last serial number returned so far.
    pub(crate) last_serial: Option<String>,
    /// Fetch only: the fetch has returned every device.
    pub(crate) done: bool,
}

const VERSION: u8 = 1;
const TAG_LEN: usize = 16;

impl Cursor {
    /// The opaque string form, authenticated with `key`.
    pub(crate) fn encode(&self, key: &aws_lc_rs::hmac::Key) -> String {
        let mut bytes = Vec::with_capacity(64);
        bytes.push(VERSION);
        bytes.push(match self.kind {
            CursorKind::Fetch => 0,
            CursorKind::Sync => 1,
        });
        bytes.push(u8::from(self.done));
        bytes.extend_from_slice(&self.server.to_be_bytes());
        bytes.extend_from_slice(&self.created.to_be_bytes());
        bytes.extend_from_slice(&self.seq.to_be_bytes());
        match &self.last_serial {
            // Serial numbers are short; anything longer than a byte can count was
            // never issued by the simulator.
            Some(serial) if serial.len() < 255 => {
                bytes.push(u8::try_from(serial.len()).unwrap_or(0));
                bytes.extend_from_slice(serial.as_bytes());
            }
            _ => bytes.push(255),
        }
        let tag = aws_lc_rs::hmac::sign(key, &bytes);
        bytes.extend_from_slice(&tag.as_ref()[..TAG_LEN]);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Decodes a cursor string; `None` when it is not one this simulator issued.
    pub(crate) fn decode(text: &str, key: &aws_lc_rs::hmac::Key) -> Option<Self> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text.trim())
            .ok()?;
        if bytes.len() < TAG_LEN + 24 {
            return None;
        }
        let (body, tag) = bytes.split_at(bytes.len() - TAG_LEN);
        let expected = aws_lc_rs::hmac::sign(key, body);
        // Constant-time comparison is not needed against test clients, but it is no
        // dearer than the alternative.
        if aws_lc_rs::constant_time::verify_slices_are_equal(&expected.as_ref()[..TAG_LEN], tag)
            .is_err()
        {
            return None;
        }
        if body[0] != VERSION {
            return None;
        }
        let kind = match body[1] {
            0 => CursorKind::Fetch,
            1 => CursorKind::Sync,
            _ => return None,
        };
        let done = body[2] == 1;
        let server = u32::from_be_bytes(body[3..7].try_into().ok()?);
        let created = u64::from_be_bytes(body[7..15].try_into().ok()?);
        let seq = u64::from_be_bytes(body[15..23].try_into().ok()?);
        let len = body[23];
        let expected_len = 24 + if len == 255 { 0 } else { usize::from(len) };
        if body.len() != expected_len {
            return None;
        }
        let last_serial = if len == 255 {
            None
        } else {
            let serial = body.get(24..24 + usize::from(len))?;
            Some(String::from_utf8(serial.to_vec()).ok()?)
        };
        Some(Self {
            kind,
            server,
            created,
            seq,
            last_serial,
            done,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> aws_lc_rs::hmac::Key {
        aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &[byte; 32])
    }

    #[test]
    fn cursors_round_trip_and_reject_tampering() {
        let k = key(1);
        for cursor in [
            Cursor {
                kind: CursorKind::Fetch,
                server: 3,
                created: 1_700_000_000,
                seq: 42,
                last_serial: Some("C02ABCDEFGHJ".into()),
                done: false,
            },
            Cursor {
                kind: CursorKind::Sync,
                server: 0,
                created: 5,
                seq: u64::MAX,
                last_serial: None,
                done: true,
            },
        ] {
            let text = cursor.encode(&k);
            assert_eq!(Cursor::decode(&text, &k), Some(cursor.clone()));
            assert_eq!(Cursor::decode(&text, &key(2)), None, "foreign key");
            let mut bytes = text.into_bytes();
            bytes[5] = if bytes[5] == b'A' { b'B' } else { b'A' };
            assert_eq!(Cursor::decode(&String::from_utf8(bytes).unwrap(), &k), None);
        }
        assert_eq!(Cursor::decode("", &k), None);
        assert_eq!(Cursor::decode("not a cursor!", &k), None);
    }
}
