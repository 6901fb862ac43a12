//! A zero-allocation JSON scanner for exchange frames.
//!
//! Exchange messages are small, flat objects whose numbers often arrive as decimal strings.
//! This scanner walks the bytes once and hands out borrowed slices: the fields of an object
//! (in whatever order they come; unknown ones are simply skipped), the elements of an array,
//! the raw text of strings and numbers. Nothing is decoded that the caller does not ask for
//! and nothing is allocated. Malformed input is an [`JsonError`] with its byte offset, never
//! a panic.

/// Why a frame is not valid JSON (or not the shape asked for).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{what} at byte {offset}")]
pub struct JsonError {
    /// Byte offset in the input.
    pub offset: usize,
    /// What was wrong.
    pub what: &'static str,
}

/// A JSON value, borrowed from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    /// A string's raw contents between the quotes (escapes left as they are).
    Str(&'a [u8]),
    /// A number's text.
    Num(&'a [u8]),
    /// `true` or `false`.
    Bool(bool),
    /// `null`.
    Null,
    /// An object's text, braces included; read it with [`fields`].
    Obj(&'a [u8]),
    /// An array's text, brackets included; read it with [`elements`].
    Arr(&'a [u8]),
}

impl<'a> Value<'a> {
    /// The string's raw bytes.
    #[inline]
    pub fn as_str_bytes(&self) -> Option<&'a [u8]> {
        match *self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The string as `&str` when it is UTF-8 and has no escapes (symbols, ids).
    #[inline]
    pub fn as_plain_str(&self) -> Option<&'a str> {
        match *self {
            Value::Str(s) if !s.contains(&b'\\') => std::str::from_utf8(s).ok(),
            _ => None,
        }
    }

    /// A venue symbol: a plain string of 1 to 64 printable ASCII characters (no space, no
    /// escape). Anything else (`""`, control bytes, non-ASCII) is no symbol.
    #[inline]
    pub fn as_symbol(&self) -> Option<&'a str> {
        match *self {
            Value::Str(s) if (1..=64).contains(&s.len()) && s.iter().all(|&c| c.is_ascii_graphic() && c != b'\\') => {
                std::str::from_utf8(s).ok()
            }
            _ => None,
        }
    }

    /// An unsigned integer, from a number or a numeric string.
    #[inline]
    pub fn as_u64(&self) -> Option<u64> {
        let digits = match *self {
            Value::Num(n) | Value::Str(n) => n,
            _ => return None,
        };
        if digits.is_empty() || digits.len() > 20 {
            return None;
        }
        let mut v: u64 = 0;
        for &b in digits {
            if !b.is_ascii_digit() {
                return None;
            }
            v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        }
        Some(v)
    }

    /// The boolean.
    #[inline]
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
}

#[inline]
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

fn err(offset: usize, what: &'static str) -> JsonError {
    JsonError { offset, what }
}

/// Scans a string starting at the opening quote; returns (contents, index after the quote).
/// Control characters inside strings are passed through (exchange frames have none, and
/// nothing here interprets string contents beyond comparing them).
#[inline]
fn scan_string(b: &[u8], start: usize) -> Result<(&[u8], usize), JsonError> {
    let mut i = start + 1;
    loop {
        match b.get(i) {
            Some(b'"') => return Ok((&b[start + 1..i], i + 1)),
            Some(b'\\') => i += 2,
            Some(_) => i += 1,
            None => return Err(err(start, "unterminated string")),
        }
    }
}

/// Skips a nested object or array starting at its opening bracket; returns the index after it.
fn skip_nested(b: &[u8], start: usize) -> Result<usize, JsonError> {
    let mut depth = 0usize;
    let mut i = start;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i = scan_string(b, i)?.1;
                continue;
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > 64 {
                    return Err(err(i, "nesting too deep"));
                }
            }
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return Ok(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    Err(err(start, "unterminated object or array"))
}

/// Reads one value at `i` (whitespace skipped); returns it and the index after it.
#[inline]
fn value_at(b: &[u8], i: usize) -> Result<(Value<'_>, usize), JsonError> {
    let i = skip_ws(b, i);
    let Some(&c) = b.get(i) else {
        return Err(err(i, "expected a value"));
    };
    match c {
        b'"' => scan_string(b, i).map(|(s, end)| (Value::Str(s), end)),
        b'{' => skip_nested(b, i).map(|end| (Value::Obj(&b[i..end]), end)),
        b'[' => skip_nested(b, i).map(|end| (Value::Arr(&b[i..end]), end)),
        b't' if b[i..].starts_with(b"true") => Ok((Value::Bool(true), i + 4)),
        b'f' if b[i..].starts_with(b"false") => Ok((Value::Bool(false), i + 5)),
        b'n' if b[i..].starts_with(b"null") => Ok((Value::Null, i + 4)),
        b'-' | b'0'..=b'9' => {
            let mut end = i + 1;
            while end < b.len() && matches!(b[end], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-') {
                end += 1;
            }
            Ok((Value::Num(&b[i..end]), end))
        }
        _ => Err(err(i, "unexpected character")),
    }
}

/// The fields of the object in `input` (which must start, after whitespace, with `{`).
pub fn fields(input: &[u8]) -> Result<Fields<'_>, JsonError> {
    let i = skip_ws(input, 0);
    if input.get(i) != Some(&b'{') {
        return Err(err(i, "expected an object"));
    }
    Ok(Fields { b: input, i: i + 1, done: false })
}

/// Iterates `(key, value)` over an object's fields; stops at the first error (returned once).
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    b: &'a [u8],
    i: usize,
    done: bool,
}

impl<'a> Fields<'a> {
    #[inline]
    fn field(&self, i: usize) -> Result<((&'a [u8], Value<'a>), usize), JsonError> {
        let b = self.b;
        if b.get(i) != Some(&b'"') {
            return Err(err(i, "expected a field name"));
        }
        let (key, after) = scan_string(b, i)?;
        let colon = skip_ws(b, after);
        if b.get(colon) != Some(&b':') {
            return Err(err(colon, "expected ':'"));
        }
        let (value, end) = value_at(b, colon + 1)?;
        let next = skip_ws(b, end);
        match b.get(next) {
            Some(b',') | Some(b'}') => Ok(((key, value), next)),
            _ => Err(err(next, "expected ',' or '}'")),
        }
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(&'a [u8], Value<'a>), JsonError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let b = self.b;
        let mut i = skip_ws(b, self.i);
        match b.get(i) {
            Some(b'}') => {
                self.done = true;
                return None;
            }
            Some(b',') => i = skip_ws(b, i + 1),
            _ => {}
        }
        match self.field(i) {
            Ok((kv, next)) => {
                self.i = next;
                Some(Ok(kv))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// The elements of the array in `input` (which must start, after whitespace, with `[`).
pub fn elements(input: &[u8]) -> Result<Elements<'_>, JsonError> {
    let i = skip_ws(input, 0);
    if input.get(i) != Some(&b'[') {
        return Err(err(i, "expected an array"));
    }
    Ok(Elements { b: input, i: i + 1, done: false })
}

/// Iterates an array's values; stops at the first error (returned once).
#[derive(Debug, Clone)]
pub struct Elements<'a> {
    b: &'a [u8],
    i: usize,
    done: bool,
}

impl<'a> Iterator for Elements<'a> {
    type Item = Result<Value<'a>, JsonError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let b = self.b;
        let mut i = skip_ws(b, self.i);
        match b.get(i) {
            Some(b']') => {
                self.done = true;
                return None;
            }
            Some(b',') => i += 1,
            _ => {}
        }
        match value_at(b, i) {
            Ok((v, end)) => {
                let next = skip_ws(b, end);
                if !matches!(b.get(next), Some(b',') | Some(b']')) {
                    self.done = true;
                    return Some(Err(err(next, "expected ',' or ']'")));
                }
                self.i = next;
                Some(Ok(v))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// A book level of the usual shape, `["<price>","<qty>"]` (whitespace allowed), at `i` in
/// a side's array, after the `[` or the `,` before it: the two strings and the index of the
/// `,` or `]` that follows. Scans the level once, where the generic path (an element, then
/// the elements of that element) scans it twice. `None` for any other shape.
#[inline]
fn string_pair_at(b: &[u8], i: usize) -> Option<(&[u8], &[u8], usize)> {
    let mut i = skip_ws(b, i);
    if b.get(i) == Some(&b',') {
        i = skip_ws(b, i + 1);
    }
    if b.get(i) != Some(&b'[') {
        return None;
    }
    let i = skip_ws(b, i + 1);
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let (price, after) = scan_string(b, i).ok()?;
    let i = skip_ws(b, after);
    if b.get(i) != Some(&b',') {
        return None;
    }
    let i = skip_ws(b, i + 1);
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let (qty, after) = scan_string(b, i).ok()?;
    let i = skip_ws(b, after);
    if b.get(i) != Some(&b']') {
        return None;
    }
    let next = skip_ws(b, i + 1);
    matches!(b.get(next), Some(b',') | Some(b']')).then_some((price, qty, next))
}

/// Iterates `[price, qty]` string pairs of an exchange book side (`[["1.0","2"],...]`).
#[derive(Debug, Clone)]
pub struct Levels<'a> {
    inner: Option<Elements<'a>>,
}

impl<'a> Levels<'a> {
    /// Levels from an array value (an empty iterator for anything else).
    pub fn of(v: Value<'a>) -> Result<Self, JsonError> {
        match v {
            Value::Arr(a) => Ok(Self { inner: Some(elements(a)?) }),
            _ => Err(err(0, "book side is not an array")),
        }
    }

    /// No levels.
    pub fn empty() -> Self {
        Self { inner: None }
    }
}

impl<'a> Iterator for Levels<'a> {
    type Item = Result<(&'a [u8], &'a [u8]), JsonError>;

    fn next(&mut self) -> Option<Self::Item> {
        let inner = self.inner.as_mut()?;
        if !inner.done {
            // The common shape, read in one pass; anything else takes the generic path below,
            // which gives the same answer (or the same error) for it.
            if let Some((price, qty, next)) = string_pair_at(inner.b, inner.i) {
                inner.i = next;
                return Some(Ok((price, qty)));
            }
        }
        let level = match inner.next()? {
            Ok(Value::Arr(pair)) => pair,
            Ok(_) => return Some(Err(err(0, "book level is not an array"))),
            Err(e) => return Some(Err(e)),
        };
        let mut it = match elements(level) {
            Ok(it) => it,
            Err(e) => return Some(Err(e)),
        };
        match (it.next(), it.next()) {
            (Some(Ok(Value::Str(p))), Some(Ok(Value::Str(q)))) => Some(Ok((p, q))),
            _ => Some(Err(err(0, "book level is not [price, qty] strings"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields_in_any_order_and_skips_unknown_ones() {
        let doc = br#" {"e":"trade","x":{"deep":[1,{"a":"]"}]},"p":"0.001","m":true,"n":null,"t":12345,"esc":"a\"b"} "#;
        let got: Vec<_> = fields(doc).unwrap().map(|r| r.unwrap()).collect();
        assert_eq!(got.len(), 7);
        assert_eq!(got[0], (&b"e"[..], Value::Str(b"trade")));
        assert_eq!(got[1].1, Value::Obj(br#"{"deep":[1,{"a":"]"}]}"#));
        assert_eq!(got[2].1, Value::Str(b"0.001"));
        assert_eq!(got[3].1.as_bool(), Some(true));
        assert_eq!(got[4].1, Value::Null);
        assert_eq!(got[5].1.as_u64(), Some(12_345));
        assert_eq!(got[6].1, Value::Str(br#"a\"b"#));
        assert_eq!(got[6].1.as_plain_str(), None, "escaped strings are not plain");
        assert_eq!(Value::Str(b"BTCUSDT").as_symbol(), Some("BTCUSDT"));
        for bad in [&b""[..], b" ", b"BTC USDT", b"BTC\\u0000", b"\xc3\xa9", b"\x01"] {
            assert_eq!(Value::Str(bad).as_symbol(), None, "{bad:?}");
        }
        assert_eq!(Value::Num(b"1").as_symbol(), None);
    }

    #[test]
    fn levels_and_elements() {
        let levels: Vec<_> = Levels::of(Value::Arr(br#"[["1.5","2"], ["1.4" , "0"]]"#)).unwrap().map(|r| r.unwrap()).collect();
        assert_eq!(levels, vec![(&b"1.5"[..], &b"2"[..]), (&b"1.4"[..], &b"0"[..])]);
        assert_eq!(Levels::of(Value::Arr(b"[]")).unwrap().count(), 0);
        assert!(Levels::of(Value::Arr(br#"[["1.5"]]"#)).unwrap().next().unwrap().is_err());
    }

    #[test]
    fn malformed_input_is_an_error_never_a_panic() {
        let bad: &[&[u8]] = &[
            b"",
            b"[",
            b"{",
            b"{\"a\"",
            b"{\"a\":}",
            b"{\"a\":1 \"b\":2}",
            b"{\"a\":\"x",
            b"{\"a\":[1,2}",
            b"nul",
            b"{\"a\":tru}",
            b"\xff\xfe",
        ];
        for input in bad {
            let r: Result<Vec<_>, _> = fields(input).and_then(|f| f.collect::<Result<Vec<_>, _>>());
            assert!(r.is_err(), "{:?}", String::from_utf8_lossy(input));
        }
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
                if let Ok(f) = fields(&bytes) {
                    for item in f {
                        if let Ok((_, Value::Arr(a))) = item {
                            for l in Levels::of(Value::Arr(a)).unwrap_or_else(|_| Levels::empty()) {
                                let _ = l;
                            }
                        }
                    }
                }
            }
        }
    }
}
