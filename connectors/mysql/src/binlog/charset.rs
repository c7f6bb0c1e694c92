//! Text in the binlog is in each column's own character set (the snapshot's SELECT gets it
//! converted to UTF-8 by the server). The column's collation id, from the table map's
//! metadata, names the set; the server's own `information_schema.COLLATIONS` maps ids to sets.

use std::collections::HashMap;

use encoding_rs::Encoding;

/// How to turn a column's bytes into UTF-8.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum TextCharset {
    /// utf8mb4, utf8mb3, ascii: the bytes are UTF-8 already (checked).
    Utf8,
    /// Another set that `encoding_rs` decodes as MySQL does.
    Encoded(&'static Encoding),
    /// utf32: four big-endian bytes per character.
    Utf32,
}

/// The decoding of a MySQL character set name, or `None` when connector-run cannot convert it
/// exactly.
pub(crate) fn charset_named(name: &str) -> Option<TextCharset> {
    use encoding_rs as e;
    Some(match name {
        "utf8mb4" | "utf8mb3" | "utf8" | "ascii" => TextCharset::Utf8,
        // MySQL's latin1 is Windows-1252 (with 0x81, 0x8D, 0x8F, 0x90, 0x9D passed through as
        // C1 controls, as the WHATWG decoder does).
        "latin1" => TextCharset::Encoded(e::WINDOWS_1252),
        "latin2" => TextCharset::Encoded(e::ISO_8859_2),
        "cp1250" => TextCharset::Encoded(e::WINDOWS_1250),
        "cp1251" => TextCharset::Encoded(e::WINDOWS_1251),
        "cp1256" => TextCharset::Encoded(e::WINDOWS_1256),
        "cp1257" => TextCharset::Encoded(e::WINDOWS_1257),
        "greek" => TextCharset::Encoded(e::ISO_8859_7),
        "hebrew" => TextCharset::Encoded(e::ISO_8859_8),
        "latin7" => TextCharset::Encoded(e::ISO_8859_13),
        "koi8r" => TextCharset::Encoded(e::KOI8_R),
        "koi8u" => TextCharset::Encoded(e::KOI8_U),
        "cp866" => TextCharset::Encoded(e::IBM866),
        "gbk" | "gb2312" => TextCharset::Encoded(e::GBK),
        "gb18030" => TextCharset::Encoded(e::GB18030),
        "big5" => TextCharset::Encoded(e::BIG5),
        "sjis" | "cp932" => TextCharset::Encoded(e::SHIFT_JIS),
        "ujis" | "eucjpms" => TextCharset::Encoded(e::EUC_JP),
        "euckr" => TextCharset::Encoded(e::EUC_KR),
        "ucs2" | "utf16" => TextCharset::Encoded(e::UTF_16BE),
        "utf16le" => TextCharset::Encoded(e::UTF_16LE),
        "utf32" => TextCharset::Utf32,
        _ => return None,
    })
}

/// Collation id → character set name, as the server reports them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Collations(pub HashMap<u16, String>);

impl Collations {
    pub fn charset_of(&self, collation: u16) -> Option<&str> {
        self.0.get(&collation).map(String::as_str)
    }
}

/// Decodes text; `None` when the bytes are not valid in their character set.
pub(crate) fn decode_text(charset: TextCharset, bytes: Vec<u8>) -> Option<String> {
    match charset {
        TextCharset::Utf8 => String::from_utf8(bytes).ok(),
        TextCharset::Encoded(encoding) => {
            let (text, had_errors) = encoding.decode_without_bom_handling(&bytes);
            (!had_errors).then(|| text.into_owned())
        }
        TextCharset::Utf32 => {
            if !bytes.len().is_multiple_of(4) {
                return None;
            }
            bytes
                .chunks_exact(4)
                .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
                .collect::<Option<String>>()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_common_sets_as_mysql_converts_them() {
        let latin1 = charset_named("latin1").unwrap();
        assert_eq!(decode_text(latin1, b"caf\xe9 \x80".to_vec()).as_deref(), Some("café €"));
        assert_eq!(decode_text(latin1, vec![0x81]).as_deref(), Some("\u{81}"));
        let utf8 = charset_named("utf8mb4").unwrap();
        assert_eq!(decode_text(utf8, "日本".as_bytes().to_vec()).as_deref(), Some("日本"));
        assert_eq!(decode_text(utf8, vec![0xff]), None);
        assert_eq!(decode_text(charset_named("utf32").unwrap(), vec![0, 1, 0xf6, 0x00]).as_deref(), Some("😀"));
        assert_eq!(decode_text(charset_named("ucs2").unwrap(), vec![0, 0x41]).as_deref(), Some("A"));
        assert!(charset_named("swe7").is_none(), "a set we cannot convert exactly is refused");
    }
}
