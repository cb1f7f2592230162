//! A pull reader over one message's JSON, handing out its keys, strings and raw values borrowed
//! from the message.
//!
//! The envelope is read field by field in the order it was sent; whatever persona does not use
//! (most of Debezium's `source` block) is passed over without being built. Every value is still
//! checked to be JSON (RFC 8259's grammar, nesting at most 127 deep as serde_json parses), the
//! ones passed over included, so a malformed message is an error, never a partial read.
//!
//! Why not a crate: serde_json's derive spent more of a decode walking its visitors than reading
//! the JSON, and the pull parsers measured in its place were slower still on messages of short
//! strings (jiter 0.17: decode 1.25× serde_json's time; sonic-rs: 1.26×; BENCHMARKS.md "A JSON
//! reader of its own"). Strings with escapes, rare here, are still unescaped by serde_json.

use std::borrow::Cow;
use std::fmt;

/// A JSON value as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawJson<'a> {
    text: &'a str,
    /// Whether a string's text has escapes, as the reader saw passing over it: without, it is
    /// borrowed as it is, with no second look for a backslash.
    escaped: bool,
}

impl<'a> RawJson<'a> {
    /// Its text, as sent.
    pub fn get(self) -> &'a str {
        self.text
    }

    pub fn is_null(self) -> bool {
        self.text == "null"
    }

    /// A JSON string's text; `None` for any other value. Borrowed unless it has escapes.
    pub fn as_str(self) -> Option<Cow<'a, str>> {
        let inner = self.text.strip_prefix('"')?.strip_suffix('"')?;
        if !self.escaped {
            return Some(Cow::Borrowed(inner));
        }
        serde_json::from_str::<String>(self.text).ok().map(Cow::Owned)
    }
}

impl fmt::Display for RawJson<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text)
    }
}

/// Why the JSON could not be read, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError(String);

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How deep arrays and objects may nest, as deep as serde_json parses them: deeper input is
/// refused rather than risking the stack.
const MAX_DEPTH: usize = 127;

/// Bytes a string may hold as they are: not its closing quote, not an escape, not a control
/// character (RFC 8259 §7). Bytes of multi-byte characters are plain; the message was checked to
/// be UTF-8 whole before it is read.
static PLAIN: [bool; 256] = {
    let mut plain = [true; 256];
    let mut byte = 0;
    while byte < 0x20 {
        plain[byte] = false;
        byte += 1;
    }
    plain[b'"' as usize] = false;
    plain[b'\\' as usize] = false;
    plain
};

/// Where the run of [`PLAIN`] bytes starting at `at` ends: sixteen bytes at a time while as many
/// are left in the message, then byte by byte. SSE2 compares sixteen bytes in a handful of
/// instructions, where the byte loop took five per byte and eight bytes at a time in general
/// registers (SWAR, as serde_json finds escapes) measured slower than it on these short strings.
#[inline(always)]
fn plain_run(bytes: &[u8], mut at: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    while at + 16 <= bytes.len() {
        use std::arch::x86_64::{
            __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8, _mm_movemask_epi8,
            _mm_or_si128, _mm_set1_epi8,
        };
        // SAFETY: the sixteen bytes from `at` are in `bytes` (checked above), `loadu` reads them
        // unaligned, and SSE2, which the other calls need, is part of every x86_64 target.
        let stops = unsafe {
            let chunk = _mm_loadu_si128(bytes.as_ptr().add(at).cast::<__m128i>());
            let quote = _mm_cmpeq_epi8(chunk, _mm_set1_epi8(b'"' as i8));
            let backslash = _mm_cmpeq_epi8(chunk, _mm_set1_epi8(b'\\' as i8));
            // A byte at most 0x1F, unsigned: the larger of it and 0x1F is 0x1F.
            let control =
                _mm_cmpeq_epi8(_mm_max_epu8(chunk, _mm_set1_epi8(0x1F)), _mm_set1_epi8(0x1F));
            _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control)) as u32
        };
        if stops != 0 {
            return at + stops.trailing_zeros() as usize;
        }
        at += 16;
    }
    while bytes.get(at).is_some_and(|&byte| PLAIN[byte as usize]) {
        at += 1;
    }
    at
}

/// Where the run of ASCII digits starting at `at` ends, as [`plain_run`] reads (the envelope's
/// times are 13 to 19 digits long).
#[inline(always)]
fn digit_run(bytes: &[u8], mut at: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    while at + 16 <= bytes.len() {
        use std::arch::x86_64::{
            __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8, _mm_movemask_epi8,
            _mm_set1_epi8, _mm_sub_epi8,
        };
        // SAFETY: as in `plain_run`.
        let digits = unsafe {
            let chunk = _mm_loadu_si128(bytes.as_ptr().add(at).cast::<__m128i>());
            // A digit less `0` is at most 9, unsigned; any other byte wraps past it.
            let value = _mm_sub_epi8(chunk, _mm_set1_epi8(b'0' as i8));
            let nine = _mm_set1_epi8(9);
            _mm_movemask_epi8(_mm_cmpeq_epi8(_mm_max_epu8(value, nine), nine)) as u32
        };
        if digits != 0xFFFF {
            return at + (!digits).trailing_zeros() as usize;
        }
        at += 16;
    }
    while bytes.get(at).is_some_and(u8::is_ascii_digit) {
        at += 1;
    }
    at
}

/// Out of the way of the reader's loops, which never take it.
#[cold]
#[inline(never)]
fn split_character(at: usize) -> JsonError {
    JsonError(format!("a value at index {at} splits a character"))
}

/// A reader of one JSON document, checked to be UTF-8 already (the caller checks the message
/// whole, faster than string by string).
pub struct Reader<'a> {
    text: &'a str,
    bytes: &'a [u8],
    /// The next byte to read.
    at: usize,
}

impl<'a> Reader<'a> {
    pub fn new(text: &'a str) -> Self {
        Self { text, bytes: text.as_bytes(), at: 0 }
    }

    fn error(&self, what: &str) -> JsonError {
        match self.bytes.get(self.at) {
            Some(_) => JsonError(format!("{what} at index {}", self.at)),
            None => JsonError(format!("{what}, found the end of the message")),
        }
    }

    /// The next byte that is not whitespace, not consumed.
    fn peek(&mut self) -> Option<u8> {
        while let Some(&byte) = self.bytes.get(self.at) {
            if !matches!(byte, b' ' | b'\n' | b'\r' | b'\t') {
                return Some(byte);
            }
            self.at += 1;
        }
        None
    }

    /// Consumes `byte` as the next one that is not whitespace, or names what was `expected`.
    /// Inline where it is next, as in every message Kafka Connect's converter writes (no
    /// whitespace): fifteen calls a message were a tenth of reading its envelope.
    #[inline(always)]
    fn expect(&mut self, byte: u8, expected: &str) -> Result<(), JsonError> {
        if self.bytes.get(self.at) == Some(&byte) {
            self.at += 1;
            return Ok(());
        }
        self.expect_after_whitespace(byte, expected)
    }

    #[inline(never)]
    fn expect_after_whitespace(&mut self, byte: u8, expected: &str) -> Result<(), JsonError> {
        if self.peek() != Some(byte) {
            return Err(self.error(expected));
        }
        self.at += 1;
        Ok(())
    }

    /// Consumes `word` (`null`, `true`, `false`), next. Of a length known when compiled, so
    /// it is compared as one number, not by a call to `memcmp`.
    fn literal<const N: usize>(&mut self, word: &[u8; N]) -> Result<(), JsonError> {
        if self.bytes.get(self.at..self.at + N) != Some(word.as_slice()) {
            let word = String::from_utf8_lossy(word);
            return Err(self.error(&format!("expected `{word}`")));
        }
        self.at += N;
        Ok(())
    }

    /// The message's text over `span`, whose ends are at ASCII bytes (quotes, brackets, digits,
    /// letters of a literal): in a message of valid UTF-8 they are always character boundaries.
    #[inline(always)]
    fn text_of(&self, span: std::ops::Range<usize>) -> Result<&'a str, JsonError> {
        let start = span.start;
        self.text.get(span).ok_or_else(|| split_character(start))
    }

    /// Whether the next value is `null`, consumed if so; any other value stays to be read.
    pub fn null(&mut self) -> Result<bool, JsonError> {
        if self.peek() != Some(b'n') {
            return Ok(false);
        }
        self.literal(b"null")?;
        Ok(true)
    }

    /// The first key of the object that comes next; `None` when it is empty. An error when the
    /// next value is not an object.
    #[inline(always)]
    pub fn first_key(&mut self) -> Result<Option<Cow<'a, str>>, JsonError> {
        self.expect(b'{', "expected an object")?;
        match self.peek() {
            Some(b'}') => {
                self.at += 1;
                Ok(None)
            }
            Some(b'"') => self.key().map(Some),
            _ => Err(self.error("expected a key or `}`")),
        }
    }

    /// The next key of the object being read; `None` at its end.
    #[inline(always)]
    pub fn next_key(&mut self) -> Result<Option<Cow<'a, str>>, JsonError> {
        match self.peek() {
            Some(b',') => {
                self.at += 1;
                if self.peek() != Some(b'"') {
                    return Err(self.error("expected a key"));
                }
                self.key().map(Some)
            }
            Some(b'}') => {
                self.at += 1;
                Ok(None)
            }
            _ => Err(self.error("expected `,` or `}`")),
        }
    }

    /// A key, its opening quote next, and the colon after it.
    #[inline(always)]
    fn key(&mut self) -> Result<Cow<'a, str>, JsonError> {
        let key = self.quoted()?;
        self.expect(b':', "expected `:`")?;
        Ok(key)
    }

    /// The next value, a string.
    pub fn string(&mut self) -> Result<Cow<'a, str>, JsonError> {
        if self.peek() != Some(b'"') {
            return Err(self.error("expected a string"));
        }
        self.quoted()
    }

    /// The next value, a string or `null`.
    pub fn optional_string(&mut self) -> Result<Option<Cow<'a, str>>, JsonError> {
        if self.null()? { Ok(None) } else { self.string().map(Some) }
    }

    /// The string whose opening quote is next: borrowed unless it has escapes.
    #[inline(always)]
    fn quoted(&mut self) -> Result<Cow<'a, str>, JsonError> {
        let start = self.at + 1;
        let (end, escaped) = self.string_end(start)?;
        self.at = end + 1;
        if escaped {
            // Rare in change events: serde_json unescapes it (surrogate pairs and all).
            let quoted = self.text_of(start - 1..end + 1)?;
            return serde_json::from_str::<String>(quoted)
                .map(Cow::Owned)
                .map_err(|e| JsonError(format!("the string at index {start}: {e}")));
        }
        self.text_of(start..end).map(Cow::Borrowed)
    }

    /// Where the string starting at `at` (after its opening quote) ends (its closing quote), and
    /// whether it holds escapes.
    #[inline(always)]
    fn string_end(&self, mut at: usize) -> Result<(usize, bool), JsonError> {
        let mut escaped = false;
        loop {
            at = plain_run(self.bytes, at);
            let invalid = |what: &str| JsonError(format!("{what} at index {at}"));
            match self.bytes.get(at) {
                Some(b'"') => return Ok((at, escaped)),
                Some(b'\\') => {
                    escaped = true;
                    at += match self.bytes.get(at + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => 2,
                        Some(b'u')
                            if self
                                .bytes
                                .get(at + 2..at + 6)
                                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)) =>
                        {
                            6
                        }
                        _ => return Err(invalid("an invalid escape")),
                    };
                }
                Some(_) => return Err(invalid("a control character in a string")),
                None => return Err(JsonError("a string not closed".into())),
            }
        }
    }

    /// Where the number starting at `at` ends, and whether it is an integer (no fraction, no
    /// exponent).
    fn number_end(&self, mut at: usize) -> Result<(usize, bool), JsonError> {
        let digits = |at: usize| digit_run(self.bytes, at);
        let invalid = |at: usize| JsonError(format!("an invalid number at index {at}"));
        if self.bytes.get(at) == Some(&b'-') {
            at += 1;
        }
        at = match self.bytes.get(at) {
            Some(b'0') => at + 1,
            Some(b'1'..=b'9') => digits(at + 1),
            _ => return Err(invalid(at)),
        };
        let mut integer = true;
        if self.bytes.get(at) == Some(&b'.') {
            let end = digits(at + 1);
            if end == at + 1 {
                return Err(invalid(at + 1));
            }
            (at, integer) = (end, false);
        }
        if matches!(self.bytes.get(at), Some(b'e' | b'E')) {
            at += 1;
            if matches!(self.bytes.get(at), Some(b'+' | b'-')) {
                at += 1;
            }
            let end = digits(at);
            if end == at {
                return Err(invalid(at));
            }
            (at, integer) = (end, false);
        }
        Ok((at, integer))
    }

    /// The next value, an integer that fits 64 bits, or `null`.
    pub fn optional_integer(&mut self) -> Result<Option<i64>, JsonError> {
        if self.null()? {
            return Ok(None);
        }
        if !matches!(self.peek(), Some(b'-' | b'0'..=b'9')) {
            return Err(self.error("expected an integer"));
        }
        let (end, integer) = self.number_end(self.at)?;
        if !integer {
            return Err(self.error("expected an integer, found a fraction or an exponent"));
        }
        let number = self.text.get(self.at..end).and_then(|digits| digits.parse().ok());
        let number = number.ok_or_else(|| self.error("an integer beyond 64 bits"))?;
        self.at = end;
        Ok(Some(number))
    }

    /// The next value as sent, whatever it is (checked to be JSON).
    pub fn raw(&mut self) -> Result<RawJson<'a>, JsonError> {
        let next = self.peek();
        let start = self.at;
        let escaped = if next == Some(b'"') {
            let (end, escaped) = self.string_end(start + 1)?;
            self.at = end + 1;
            escaped
        } else {
            // Not a string: `as_str` has no text to give.
            self.skip()?;
            true
        };
        Ok(RawJson { text: self.text_of(start..self.at)?, escaped })
    }

    /// Passes over the next value (checked to be JSON). A string, what most fields passed over
    /// are, is passed over inline.
    #[inline(always)]
    pub fn skip(&mut self) -> Result<(), JsonError> {
        if self.bytes.get(self.at) == Some(&b'"') {
            self.at = self.string_end(self.at + 1)?.0 + 1;
            return Ok(());
        }
        self.skip_nested(0)
    }

    fn skip_nested(&mut self, depth: usize) -> Result<(), JsonError> {
        match self.peek() {
            Some(b'"') => self.at = self.string_end(self.at + 1)?.0 + 1,
            Some(b'-' | b'0'..=b'9') => self.at = self.number_end(self.at)?.0,
            Some(b't') => self.literal(b"true")?,
            Some(b'f') => self.literal(b"false")?,
            Some(b'n') => self.literal(b"null")?,
            Some(open @ (b'{' | b'[')) => {
                if depth == MAX_DEPTH {
                    return Err(self.error("nested more than 127 deep"));
                }
                self.at += 1;
                let (close, object) = if open == b'{' { (b'}', true) } else { (b']', false) };
                if self.peek() == Some(close) {
                    self.at += 1;
                    return Ok(());
                }
                loop {
                    if object {
                        if self.peek() != Some(b'"') {
                            return Err(self.error("expected a key"));
                        }
                        self.at = self.string_end(self.at + 1)?.0 + 1;
                        self.expect(b':', "expected `:`")?;
                    }
                    self.skip_nested(depth + 1)?;
                    match self.peek() {
                        Some(b',') => self.at += 1,
                        Some(byte) if byte == close => {
                            self.at += 1;
                            return Ok(());
                        }
                        _ => {
                            let close = char::from(close);
                            return Err(self.error(&format!("expected `,` or `{close}`")));
                        }
                    }
                }
            }
            _ => return Err(self.error("expected a value")),
        }
        Ok(())
    }

    /// Checks that nothing but whitespace follows the document.
    pub fn finish(&mut self) -> Result<(), JsonError> {
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(self.error("trailing characters")),
        }
    }
}

#[cfg(test)]
#[path = "tests_json.rs"]
mod tests;
