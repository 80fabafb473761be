//! Small raw-DER helpers.
//!
//! The typed decoders of the `der` family re-encode what they decode, and re-encoding is not
//! always byte-identical (a `SET OF` is sorted on decode, for instance). Signatures cover the
//! bytes that were signed, so wherever signed bytes are needed (a TBSCertificate, a
//! CertificationRequestInfo, the signed attributes of a SignerInfo, a certificate inside a
//! SignedData) they are cut out of the input with this minimal TLV walker instead.

use der::{Any, Tag, Tagged};

use crate::error::PkiError;

/// One DER element: its first identifier octet, the whole encoding and the contents.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tlv<'a> {
    /// First identifier octet (class, constructed bit and low tag number).
    pub tag: u8,
    /// Identifier, length and contents.
    pub raw: &'a [u8],
    /// Contents octets only.
    pub value: &'a [u8],
}

/// Reads one definite-length element from the front of `input`.
pub(crate) fn read_tlv(input: &[u8]) -> Result<(Tlv<'_>, &[u8]), PkiError> {
    let bad = |reason| PkiError::invalid("DER element", reason);
    let tag = *input
        .first()
        .ok_or_else(|| bad("input ended before a tag"))?;
    let mut pos = 1;
    if tag & 0x1f == 0x1f {
        // High tag number form: skip the continuation octets.
        loop {
            let b = *input
                .get(pos)
                .ok_or_else(|| bad("input ended inside a tag"))?;
            pos += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
    }
    let first = *input
        .get(pos)
        .ok_or_else(|| bad("input ended before a length"))?;
    pos += 1;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 {
            return Err(bad("indefinite length in DER"));
        }
        if n > 4 {
            return Err(bad("length field longer than 4 octets"));
        }
        let bytes = input
            .get(pos..pos + n)
            .ok_or_else(|| bad("input ended inside a length"))?;
        pos += n;
        bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    let end = pos
        .checked_add(len)
        .filter(|end| *end <= input.len())
        .ok_or_else(|| bad("element runs past the end of its container"))?;
    Ok((
        Tlv {
            tag,
            raw: &input[..end],
            value: &input[pos..end],
        },
        &input[end..],
    ))
}

/// Reads exactly one element spanning all of `input`.
pub(crate) fn read_single(input: &[u8]) -> Result<Tlv<'_>, PkiError> {
    let (tlv, rest) = read_tlv(input)?;
    if !rest.is_empty() {
        return Err(PkiError::invalid(
            "DER element",
            "trailing bytes after the element",
        ));
    }
    Ok(tlv)
}

/// Splits the contents of a constructed element into its children.
pub(crate) fn children(mut value: &[u8]) -> Result<Vec<Tlv<'_>>, PkiError> {
    let mut out = Vec::new();
    while !value.is_empty() {
        let (tlv, rest) = read_tlv(value)?;
        out.push(tlv);
        value = rest;
    }
    Ok(out)
}

/// Appends a DER length.
pub(crate) fn push_length(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        let significant = &bytes[skip..];
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
}

/// Decodes the string types found in X.500 names and PKCS#9 attributes (DirectoryString and
/// the few others clients use for a challengePassword).
pub(crate) fn any_to_string(any: &Any) -> Option<String> {
    let bytes = any.value();
    match any.tag() {
        Tag::Utf8String => String::from_utf8(bytes.to_vec()).ok(),
        Tag::PrintableString | Tag::Ia5String | Tag::VisibleString => {
            if bytes.is_ascii() {
                String::from_utf8(bytes.to_vec()).ok()
            } else {
                None
            }
        }
        // T.61 in theory; in practice everyone writes Latin-1 into it.
        Tag::TeletexString => Some(bytes.iter().map(|b| char::from(*b)).collect()),
        Tag::BmpString => {
            if !bytes.len().is_multiple_of(2) {
                return None;
            }
            let units: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        // UniversalString cannot reach here: `der` rejects its tag while decoding.
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nested_elements_and_rejects_truncation() {
        let der = [0x30, 0x06, 0x02, 0x01, 0x05, 0x04, 0x01, 0xaa];
        let outer = read_single(&der).unwrap();
        assert_eq!(outer.tag, 0x30);
        let kids = children(outer.value).unwrap();
        assert_eq!(kids.len(), 2);
        assert_eq!(kids[0].value, &[0x05]);
        assert_eq!(kids[1].raw, &[0x04, 0x01, 0xaa]);
        assert!(read_tlv(&der[..5]).is_err());
        assert!(read_tlv(&[0x30, 0x80, 0x00, 0x00]).is_err());
        assert!(read_single(&[0x05, 0x00, 0x00]).is_err());
    }

    #[test]
    fn long_lengths_are_minimal() {
        let mut out = Vec::new();
        push_length(&mut out, 0x7f);
        push_length(&mut out, 0x80);
        push_length(&mut out, 0x1234);
        assert_eq!(out, [0x7f, 0x81, 0x80, 0x82, 0x12, 0x34]);
    }

    #[test]
    fn decodes_string_types() {
        let bmp = Any::new(Tag::BmpString, vec![0x00, 0x41, 0x00, 0xe9]).unwrap();
        assert_eq!(any_to_string(&bmp).as_deref(), Some("Aé"));
        let t61 = Any::new(Tag::TeletexString, vec![0x41, 0xe9]).unwrap();
        assert_eq!(any_to_string(&t61).as_deref(), Some("Aé"));
        let printable = Any::new(Tag::PrintableString, b"abc".to_vec()).unwrap();
        assert_eq!(any_to_string(&printable).as_deref(), Some("abc"));
        let int = Any::new(Tag::Integer, vec![1]).unwrap();
        assert_eq!(any_to_string(&int), None);
    }
}
