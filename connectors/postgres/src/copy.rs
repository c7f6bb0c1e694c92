//! The text format of `COPY ... TO STDOUT`: rows end with `\n`, fields are separated by tabs,
//! `\N` is NULL, and backslash escapes stand for tab, newline, backslash and the other control
//! characters. The server sends UTF-8 (the driver asks for client_encoding UTF8).

use connector_framework::{ConnectorError, Result};

/// Rows of a COPY stream that arrive in chunks: complete lines are handed out, a line cut at a
/// chunk's end waits for the next chunk.
#[derive(Debug, Default)]
pub(crate) struct Lines {
    partial: Vec<u8>,
}

impl Lines {
    /// Calls `row` with each complete line of `chunk` (without its `\n`).
    pub(crate) fn feed(&mut self, chunk: &[u8], mut row: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let mut rest = chunk;
        if !self.partial.is_empty() {
            match memchr::memchr(b'\n', rest) {
                Some(end) => {
                    self.partial.extend_from_slice(&rest[..end]);
                    let line = std::mem::take(&mut self.partial);
                    row(&line)?;
                    rest = &rest[end + 1..];
                }
                None => {
                    self.partial.extend_from_slice(rest);
                    return Ok(());
                }
            }
        }
        while let Some(end) = memchr::memchr(b'\n', rest) {
            row(&rest[..end])?;
            rest = &rest[end + 1..];
        }
        self.partial.extend_from_slice(rest);
        Ok(())
    }

    /// Fails when the stream ended inside a row.
    pub(crate) fn finish(&self) -> Result<()> {
        if self.partial.is_empty() {
            Ok(())
        } else {
            Err(ConnectorError::transient("the COPY stream ended inside a row"))
        }
    }
}

/// Calls `field` with each field of `line` in order: `None` for NULL, else its text with the
/// escapes undone (`scratch` holds it when there were any). The line is checked to be UTF-8
/// once; tabs, being ASCII, never split a character.
pub(crate) fn fields(
    line: &[u8],
    scratch: &mut String,
    mut field: impl FnMut(usize, Option<&str>) -> Result<()>,
) -> Result<usize> {
    let text = std::str::from_utf8(line)
        .map_err(|e| ConnectorError::permanent(format!("COPY sent text that is not UTF-8: {e}")))?;
    let mut count = 0;
    let mut start = 0;
    let ends = memchr::memchr_iter(b'\t', line).chain(std::iter::once(line.len()));
    for end in ends {
        let raw = &text[start..end];
        start = end + 1;
        if raw == "\\N" {
            field(count, None)?;
        } else if memchr::memchr(b'\\', raw.as_bytes()).is_none() {
            field(count, Some(raw))?;
        } else {
            unescape(raw.as_bytes(), scratch)?;
            field(count, Some(scratch.as_str()))?;
        }
        count += 1;
    }
    Ok(count)
}

/// Undoes COPY's escapes into `out`.
fn unescape(raw: &[u8], out: &mut String) -> Result<()> {
    let mut bytes = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b != b'\\' || i + 1 == raw.len() {
            bytes.push(b);
            i += 1;
            continue;
        }
        let c = raw[i + 1];
        i += 2;
        match c {
            b'b' => bytes.push(0x08),
            b'f' => bytes.push(0x0c),
            b'n' => bytes.push(b'\n'),
            b'r' => bytes.push(b'\r'),
            b't' => bytes.push(b'\t'),
            b'v' => bytes.push(0x0b),
            b'0'..=b'7' => {
                // Up to three octal digits.
                let mut v = u32::from(c - b'0');
                for _ in 0..2 {
                    match raw.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                bytes.push(v as u8);
            }
            b'x' if raw.get(i).is_some_and(u8::is_ascii_hexdigit) => {
                let mut v = 0u32;
                for _ in 0..2 {
                    match raw.get(i).and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            v = v * 16 + d;
                            i += 1;
                        }
                        None => break,
                    }
                }
                bytes.push(v as u8);
            }
            other => bytes.push(other),
        }
    }
    out.clear();
    out.push_str(
        &String::from_utf8(bytes)
            .map_err(|e| ConnectorError::permanent(format!("COPY sent text that is not UTF-8: {e}")))?,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(line: &[u8]) -> Vec<Option<String>> {
        let mut out = Vec::new();
        let mut scratch = String::new();
        fields(line, &mut scratch, |_, f| {
            out.push(f.map(str::to_string));
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn fields_nulls_and_escapes() {
        assert_eq!(
            split(b"1\t\\N\ta\\tb\\nc\\\\d\t\t\\\\N"),
            [Some("1".into()), None, Some("a\tb\nc\\d".into()), Some(String::new()), Some("\\N".into())]
        );
        assert_eq!(split("caf\u{e9}\\011x".as_bytes()), [Some("caf\u{e9}\tx".into())]);
    }

    #[test]
    fn lines_cut_across_chunks_are_joined() {
        let mut lines = Lines::default();
        let mut seen = Vec::new();
        for chunk in [&b"a\tb\nc"[..], b"d\te", b"f\n", b"g\n"] {
            lines
                .feed(chunk, |l| {
                    seen.push(String::from_utf8(l.to_vec()).unwrap());
                    Ok(())
                })
                .unwrap();
        }
        assert_eq!(seen, ["a\tb", "cd\tef", "g"]);
        lines.finish().unwrap();
        lines.feed(b"half", |_| Ok(())).unwrap();
        assert!(lines.finish().is_err());
    }
}
