//! BER to DER normalisation.
//!
//! CMS producers that stream (OpenSSL's `-stream`, Apple's and Microsoft's S/MIME code, the
//! `.p7m` server tokens from Apple Business Manager) emit BER: indefinite lengths and
//! constructed (chunked) OCTET STRINGs. The `der` crate only reads DER, so input is first
//! rewritten here into definite, minimal lengths with primitive strings.
//!
//! The rewrite is schema-less, which bounds what it can do: it flattens constructed encodings
//! of the *universal* string types, but a constructed string hidden behind an IMPLICIT
//! context-specific tag looks exactly like any other constructed element. The one such field
//! that matters to us, `EncryptedContentInfo.encryptedContent`, is handled by the CMS code
//! through [`Node::flatten_implicit_octets`]. `SET OF` elements are not re-sorted: that would
//! change bytes covered by signatures.

use crate::asn1::push_length;
use crate::error::PkiError;

/// Deepest nesting accepted. Real CMS messages stay below 20; the limit only exists so that
/// hostile input cannot exhaust the stack.
const MAX_DEPTH: usize = 64;

/// A parsed BER element.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Node {
    /// Primitive encoding: identifier octets and contents.
    Primitive { tag: Vec<u8>, value: Vec<u8> },
    /// Constructed encoding: identifier octets and child elements.
    Constructed { tag: Vec<u8>, children: Vec<Node> },
}

/// Normalise BER (indefinite lengths, constructed strings) into DER; DER input passes
/// unchanged.
///
/// Specifically: every length becomes definite and minimal, constructed encodings of universal
/// string types (OCTET STRING, BIT STRING, the character strings, the time types) become
/// primitive, and BOOLEAN TRUE becomes `0xFF`. Exactly one element must span the input.
pub fn ber_to_der(input: &[u8]) -> Result<Vec<u8>, PkiError> {
    let node = Node::parse(input)?;
    Ok(node.to_der())
}

impl Node {
    /// Parses exactly one normalised element spanning `input`.
    pub(crate) fn parse(input: &[u8]) -> Result<Node, PkiError> {
        let (node, used) = parse_element(input, 0, 0)?;
        if used != input.len() {
            return Err(PkiError::Ber {
                offset: used,
                reason: "trailing bytes after the outermost element",
            });
        }
        Ok(node)
    }

    /// First identifier octet.
    pub(crate) fn tag_byte(&self) -> u8 {
        let tag = match self {
            Node::Primitive { tag, .. } | Node::Constructed { tag, .. } => tag,
        };
        tag.first().copied().unwrap_or(0)
    }

    /// Children of a constructed element (`None` for a primitive one).
    pub(crate) fn children_mut(&mut self) -> Option<&mut Vec<Node>> {
        match self {
            Node::Constructed { children, .. } => Some(children),
            Node::Primitive { .. } => None,
        }
    }

    /// Rewrites a constructed `[n] IMPLICIT OCTET STRING` into its primitive form. Does
    /// nothing to an element that is already primitive.
    pub(crate) fn flatten_implicit_octets(&mut self) -> Result<(), PkiError> {
        if let Node::Constructed { tag, children } = self {
            let mut value = Vec::new();
            for child in children.iter() {
                match child {
                    Node::Primitive { tag, value: v } if tag.as_slice() == [0x04] => {
                        value.extend_from_slice(v)
                    }
                    _ => {
                        return Err(PkiError::Ber {
                            offset: 0,
                            reason: "a chunked implicit OCTET STRING holds something else",
                        })
                    }
                }
            }
            let mut tag = std::mem::take(tag);
            if let Some(first) = tag.first_mut() {
                *first &= !0x20;
            }
            *self = Node::Primitive { tag, value };
        }
        Ok(())
    }

    /// DER encoding of this element.
    pub(crate) fn to_der(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Node::Primitive { tag, value } => {
                out.extend_from_slice(tag);
                push_length(out, value.len());
                out.extend_from_slice(value);
            }
            Node::Constructed { tag, children } => {
                let mut content = Vec::new();
                for child in children {
                    child.write(&mut content);
                }
                out.extend_from_slice(tag);
                push_length(out, content.len());
                out.extend_from_slice(&content);
            }
        }
    }
}

fn ber_err(offset: usize, reason: &'static str) -> PkiError {
    PkiError::Ber { offset, reason }
}

/// Universal tag numbers whose constructed form is a chunked string.
fn is_universal_string(tag_number: u8) -> bool {
    // BIT STRING, OCTET STRING, UTF8String, NumericString to UniversalString, BMPString.
    matches!(tag_number, 0x03 | 0x04 | 0x0c | 0x12..=0x1c | 0x1e)
}

/// Parses one element at `input[0..]` (`base` is its offset in the whole input, for errors).
/// Returns the normalised node and the number of bytes consumed.
fn parse_element(input: &[u8], base: usize, depth: usize) -> Result<(Node, usize), PkiError> {
    if depth > MAX_DEPTH {
        return Err(ber_err(base, "nesting is too deep"));
    }
    let first = *input
        .first()
        .ok_or_else(|| ber_err(base, "input ended before a tag"))?;
    let mut pos = 1;
    if first & 0x1f == 0x1f {
        loop {
            let b = *input
                .get(pos)
                .ok_or_else(|| ber_err(base + pos, "input ended inside a tag"))?;
            pos += 1;
            if b & 0x80 == 0 {
                break;
            }
            if pos > 5 {
                return Err(ber_err(base, "tag number is too large"));
            }
        }
    }
    let tag = input[..pos].to_vec();
    let constructed = first & 0x20 != 0;

    let len_octet = *input
        .get(pos)
        .ok_or_else(|| ber_err(base + pos, "input ended before a length"))?;
    pos += 1;
    let definite_len = if len_octet == 0x80 {
        None
    } else if len_octet < 0x80 {
        Some(usize::from(len_octet))
    } else {
        let n = usize::from(len_octet & 0x7f);
        if n > std::mem::size_of::<u32>() {
            return Err(ber_err(base + pos - 1, "length field is too long"));
        }
        let bytes = input
            .get(pos..pos + n)
            .ok_or_else(|| ber_err(base + pos, "input ended inside a length"))?;
        pos += n;
        Some(
            bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b)),
        )
    };

    match (constructed, definite_len) {
        (false, None) => Err(ber_err(base, "indefinite length on a primitive element")),
        (false, Some(len)) => {
            let end = pos
                .checked_add(len)
                .filter(|end| *end <= input.len())
                .ok_or_else(|| ber_err(base, "element runs past the end of its container"))?;
            let mut value = input[pos..end].to_vec();
            if first == 0x00 {
                return Err(ber_err(
                    base,
                    "end-of-contents marker outside an indefinite length",
                ));
            }
            // BER allows any non-zero octet for TRUE; DER only 0xFF.
            if first == 0x01 && value.len() == 1 && value[0] != 0 {
                value[0] = 0xff;
            }
            Ok((Node::Primitive { tag, value }, end))
        }
        (true, Some(len)) => {
            let end = pos
                .checked_add(len)
                .filter(|end| *end <= input.len())
                .ok_or_else(|| ber_err(base, "element runs past the end of its container"))?;
            let mut children = Vec::new();
            let mut at = pos;
            while at < end {
                let (child, used) = parse_element(&input[at..end], base + at, depth + 1)?;
                children.push(child);
                at += used;
            }
            Ok((finish_constructed(tag, children, base)?, end))
        }
        (true, None) => {
            let mut children = Vec::new();
            let mut at = pos;
            loop {
                match input.get(at..at + 2) {
                    Some([0x00, 0x00]) => {
                        at += 2;
                        break;
                    }
                    Some(_) => {
                        let (child, used) = parse_element(&input[at..], base + at, depth + 1)?;
                        children.push(child);
                        at += used;
                    }
                    None => {
                        return Err(ber_err(
                            base + at,
                            "input ended before the end-of-contents marker",
                        ))
                    }
                }
            }
            Ok((finish_constructed(tag, children, base)?, at))
        }
    }
}

/// Turns a constructed universal string into its primitive form; leaves anything else alone.
fn finish_constructed(tag: Vec<u8>, children: Vec<Node>, base: usize) -> Result<Node, PkiError> {
    let first = tag.first().copied().unwrap_or(0);
    let universal = first & 0xc0 == 0;
    let number = first & 0x1f;
    if !(universal && is_universal_string(number)) {
        return Ok(Node::Constructed { tag, children });
    }
    // Children are already normalised, so chunks nested in chunks are primitive by now.
    let chunk_ok = |t: &[u8]| t == [number] || t == [0x04];
    let mut value = Vec::new();
    if number == 0x03 {
        let mut unused = 0u8;
        let count = children.len();
        value.push(0);
        for (i, child) in children.into_iter().enumerate() {
            let Node::Primitive { tag: t, value: v } = child else {
                return Err(ber_err(
                    base,
                    "a chunked BIT STRING holds a constructed element",
                ));
            };
            if !chunk_ok(&t) {
                return Err(ber_err(base, "a chunked BIT STRING holds another type"));
            }
            let (&bits, data) = v
                .split_first()
                .ok_or_else(|| ber_err(base, "a BIT STRING chunk has no unused-bits octet"))?;
            if bits != 0 && i + 1 != count {
                return Err(ber_err(
                    base,
                    "only the last BIT STRING chunk may have unused bits",
                ));
            }
            unused = bits;
            value.extend_from_slice(data);
        }
        value[0] = unused;
    } else {
        for child in children {
            let Node::Primitive { tag: t, value: v } = child else {
                return Err(ber_err(
                    base,
                    "a chunked string holds a constructed element",
                ));
            };
            if !chunk_ok(&t) {
                return Err(ber_err(base, "a chunked string holds another type"));
            }
            value.extend_from_slice(&v);
        }
    }
    Ok(Node::Primitive {
        tag: vec![number],
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_passes_unchanged() {
        let der = [
            0x30, 0x0b, 0x02, 0x01, 0x01, 0x04, 0x03, 0x61, 0x62, 0x63, 0x01, 0x01, 0xff,
        ];
        assert_eq!(ber_to_der(&der).unwrap(), der);
    }

    #[test]
    fn nested_indefinite_and_chunked_strings() {
        // SEQUENCE(indef) { [0](indef) { OCTET STRING(constructed, indef) { "ab", "c" } },
        //                   BOOLEAN 0x01 }
        let ber = [
            0x30, 0x80, 0xa0, 0x80, 0x24, 0x80, 0x04, 0x02, b'a', b'b', 0x04, 0x01, b'c', 0x00,
            0x00, 0x00, 0x00, 0x01, 0x01, 0x01, 0x00, 0x00,
        ];
        let der = ber_to_der(&ber).unwrap();
        assert_eq!(
            der,
            [0x30, 0x0a, 0xa0, 0x05, 0x04, 0x03, b'a', b'b', b'c', 0x01, 0x01, 0xff]
        );
    }

    #[test]
    fn chunked_bit_string_keeps_last_unused_bits() {
        let ber = [
            0x23, 0x80, 0x03, 0x02, 0x00, 0xaa, 0x03, 0x02, 0x04, 0xf0, 0x00, 0x00,
        ];
        assert_eq!(ber_to_der(&ber).unwrap(), [0x03, 0x03, 0x04, 0xaa, 0xf0]);
        let bad = [
            0x23, 0x80, 0x03, 0x02, 0x01, 0xaa, 0x03, 0x02, 0x04, 0xf0, 0x00, 0x00,
        ];
        assert!(ber_to_der(&bad).is_err());
    }

    #[test]
    fn non_minimal_lengths_are_shortened() {
        let ber = [0x04, 0x82, 0x00, 0x02, 0x01, 0x02];
        assert_eq!(ber_to_der(&ber).unwrap(), [0x04, 0x02, 0x01, 0x02]);
    }

    #[test]
    fn garbage_is_rejected_without_panicking() {
        for input in [
            &[][..],
            &[0x30],
            &[0x30, 0x80],
            &[0x30, 0x80, 0x00],
            &[0x04, 0x80, 0x00, 0x00],
            &[0x30, 0x05, 0x01],
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
            &[0x30, 0x89, 1, 2, 3, 4, 5, 6, 7, 8, 9],
            &[0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0x00],
            &[0x00, 0x00],
            &[0x04, 0x00, 0x00],
        ] {
            assert!(ber_to_der(input).is_err(), "{input:02x?}");
        }
        let deep: Vec<u8> = std::iter::repeat_n([0x30u8, 0x80], 200).flatten().collect();
        assert!(ber_to_der(&deep).is_err());
    }

    #[test]
    fn implicit_octets_are_flattened_on_request() {
        let ber = [0xa0, 0x80, 0x04, 0x01, 0x01, 0x04, 0x01, 0x02, 0x00, 0x00];
        let mut node = Node::parse(&ber).unwrap();
        node.flatten_implicit_octets().unwrap();
        assert_eq!(node.to_der(), [0x80, 0x02, 0x01, 0x02]);
    }
}
