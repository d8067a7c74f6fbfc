//! The `pub` frame read by hand: the frame every publish sends, decoded without serde's
//! field machinery (about a third of a publish's CPU in the core went to serde, most of it
//! validating the body it then hands over untouched).
//!
//! It reads only the common shape and answers `None` for anything else: another op, an
//! unknown or repeated field, an escape in a name, a `null` topic, a number that is not a
//! plain u64, a missing field, any JSON error. `protocol::decode` then runs serde on the
//! frame, so every error message and every unusual frame stays serde's. What this reader
//! accepts must decode exactly as serde would decode it: tests and the `frame` fuzz target
//! compare the two on every frame.

use super::{ClientOp, Name, RawJson, REQ_BYTES_MAX};
use std::borrow::Cow;

/// Deeper bodies are left to serde, so that this reader's recursion stays small whatever
/// `json_depth_max` allows.
const NESTING_MAX: u32 = 32;

pub(super) fn decode(text: &str) -> Option<ClientOp<'_>> {
    let mut cursor = Cursor { text, at: 0 };
    cursor.skip_whitespace();
    cursor.expect(b'{')?;
    let mut fields = Fields::default();
    loop {
        cursor.skip_whitespace();
        let name = cursor.plain_string()?;
        cursor.skip_whitespace();
        cursor.expect(b':')?;
        cursor.skip_whitespace();
        fields.read(name, &mut cursor)?;
        cursor.skip_whitespace();
        match cursor.next()? {
            b',' => continue,
            b'}' => break,
            _ => return None,
        }
    }
    cursor.skip_whitespace();
    if cursor.at != text.len() || !fields.is_pub {
        return None;
    }
    Some(ClientOp::Pub { req: fields.req, topic: fields.topic?, body: fields.body?, key: fields.key.flatten(), producer: fields.producer.flatten(), seq: fields.seq.flatten() })
}

/// Each field once: a repeated one is serde's to refuse. `Some(None)` is a field given as `null`.
#[derive(Default)]
struct Fields<'a> {
    is_pub: bool,
    seen_op: bool,
    req: Option<RawJson<'a>>,
    topic: Option<Name<'a>>,
    body: Option<RawJson<'a>>,
    key: Option<Option<Name<'a>>>,
    producer: Option<Option<Name<'a>>>,
    seq: Option<Option<u64>>,
}

impl<'a> Fields<'a> {
    fn read(&mut self, name: &str, cursor: &mut Cursor<'a>) -> Option<()> {
        match name {
            "op" if !self.seen_op => {
                self.seen_op = true;
                self.is_pub = cursor.plain_string()? == "pub";
                // Another op is serde's: it is not this reader's business.
                self.is_pub.then_some(())
            }
            "req" if self.req.is_none() => {
                let req = cursor.value(0)?;
                let is_echoable = req.len() <= REQ_BYTES_MAX && matches!(req.as_bytes()[0], b'"' | b'-' | b'0'..=b'9');
                self.req = Some(RawJson(req)).filter(|_| is_echoable);
                self.req.map(|_| ())
            }
            "topic" if self.topic.is_none() => {
                self.topic = Some(Cow::Borrowed(cursor.plain_string()?));
                Some(())
            }
            "body" if self.body.is_none() => {
                self.body = Some(RawJson(cursor.value(0)?));
                Some(())
            }
            "key" if self.key.is_none() => {
                self.key = Some(cursor.optional_plain_string()?.map(Cow::Borrowed));
                Some(())
            }
            "producer" if self.producer.is_none() => {
                self.producer = Some(cursor.optional_plain_string()?.map(Cow::Borrowed));
                Some(())
            }
            "seq" if self.seq.is_none() => {
                self.seq = Some(if cursor.literal("null").is_some() { None } else { Some(cursor.plain_u64()?) });
                Some(())
            }
            _ => None,
        }
    }
}

struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then_some(())
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn literal(&mut self, word: &str) -> Option<()> {
        let is_here = self.bytes()[self.at..].starts_with(word.as_bytes());
        is_here.then(|| self.at += word.len())
    }

    /// Moves past the bytes of a string that need no care (all but `"`, `\` and control
    /// characters), 16 at a time while it can: the test of a chunk has no early exit, so it
    /// compiles to vector compares.
    fn skip_plain_string_bytes(&mut self) {
        // Bitwise, not short-circuit: branches would stop the compiler from vectorizing.
        let needs_care = |byte: u8| (byte == b'"') | (byte == b'\\') | (byte < 0x20);
        let bytes = self.bytes();
        while let Some(chunk) = bytes.get(self.at..self.at + 16) {
            if chunk.iter().fold(0u8, |any, &byte| any | u8::from(needs_care(byte))) != 0 {
                break;
            }
            self.at += 16;
        }
        while bytes.get(self.at).is_some_and(|&byte| !needs_care(byte)) {
            self.at += 1;
        }
    }

    /// A string without escapes, as its text between the quotes.
    fn plain_string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let start = self.at;
        loop {
            self.skip_plain_string_bytes();
            match self.next()? {
                b'"' => return Some(&self.text[start..self.at - 1]),
                b'\\' | 0..=0x1f => return None,
                _ => {}
            }
        }
    }

    fn optional_plain_string(&mut self) -> Option<Option<&'a str>> {
        if self.literal("null").is_some() {
            return Some(None);
        }
        self.plain_string().map(Some)
    }

    /// Digits only, no leading zero, within u64: what serde reads as the same u64.
    fn plain_u64(&mut self) -> Option<u64> {
        let start = self.at;
        self.digits()?;
        let digits = &self.text[start..self.at];
        if (digits.len() > 1 && digits.starts_with('0')) || matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        digits.parse().ok()
    }

    /// Any JSON value, checked as serde_json checks one it skips, as its text.
    fn value(&mut self, depth: u32) -> Option<&'a str> {
        let start = self.at;
        match self.peek()? {
            b'"' => self.string()?,
            b'{' => self.object(depth + 1)?,
            b'[' => self.array(depth + 1)?,
            b't' => self.literal("true")?,
            b'f' => self.literal("false")?,
            b'n' => self.literal("null")?,
            b'-' | b'0'..=b'9' => self.number()?,
            _ => return None,
        }
        Some(&self.text[start..self.at])
    }

    fn string(&mut self) -> Option<()> {
        self.expect(b'"')?;
        loop {
            self.skip_plain_string_bytes();
            match self.next()? {
                b'"' => return Some(()),
                b'\\' => match self.next()? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                    b'u' => {
                        for _ in 0..4 {
                            if !self.next()?.is_ascii_hexdigit() {
                                return None;
                            }
                        }
                    }
                    _ => return None,
                },
                0..=0x1f => return None,
                _ => {}
            }
        }
    }

    fn digits(&mut self) -> Option<()> {
        let start = self.at;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
        (self.at > start).then_some(())
    }

    /// JSON's number grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        if self.peek() == Some(b'0') {
            self.at += 1;
        } else {
            self.digits()?;
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            self.digits()?;
        }
        Some(())
    }

    fn array(&mut self, depth: u32) -> Option<()> {
        self.container(b'[', b']', depth, |cursor| cursor.value(depth).map(drop))
    }

    fn object(&mut self, depth: u32) -> Option<()> {
        self.container(b'{', b'}', depth, |cursor| {
            cursor.string()?;
            cursor.skip_whitespace();
            cursor.expect(b':')?;
            cursor.skip_whitespace();
            cursor.value(depth).map(drop)
        })
    }

    /// `open`, items separated by commas (none trailing), `close`.
    fn container(&mut self, open: u8, close: u8, depth: u32, item: impl Fn(&mut Self) -> Option<()>) -> Option<()> {
        if depth > NESTING_MAX {
            return None;
        }
        self.expect(open)?;
        self.skip_whitespace();
        if self.peek()? == close {
            self.at += 1;
            return Some(());
        }
        loop {
            self.skip_whitespace();
            item(self)?;
            self.skip_whitespace();
            match self.next()? {
                b',' => continue,
                byte if byte == close => return Some(()),
                _ => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{decode_without_pub_reader, JSON_DEPTH_MAX_LIMIT};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// The reader's answer, where it gives one, is serde's.
    fn agrees_with_serde(text: &str) -> bool {
        match super::decode(text) {
            Some(op) => {
                assert_eq!(Ok(&op), decode_without_pub_reader(text, JSON_DEPTH_MAX_LIMIT).as_ref(), "frame {text:?}");
                true
            }
            None => false,
        }
    }

    #[test]
    fn reads_common_pub_frames_as_serde_does() {
        let read = [
            r#"{"op":"pub","topic":"orders","body":{"a":[1,2.5e-3,"x\"y\u00e9"],"b":null,"c":true}}"#,
            r#" { "op" : "pub" , "req" : 7 , "topic" : "t" , "body" : [ ] , "key" : "k" , "producer" : "p" , "seq" : 0 } "#,
            "{\"op\":\"pub\",\"req\":\"r-1\",\"topic\":\"t\",\n\"body\":\"\",\"key\":null,\"producer\":null,\"seq\":null}",
            r#"{"body":-0.0E+1,"seq":18446744073709551615,"topic":"ünï","op":"pub"}"#,
            r#"{"op":"pub","topic":"t","body":{}}"#,
            r#"{"op":"pub","topic":"t","body":null}"#,
        ];
        for text in read {
            assert!(agrees_with_serde(text), "the reader left {text:?} to serde");
        }
    }

    #[test]
    fn leaves_the_rest_to_serde() {
        let left = [
            r#"{"op":"sub","topic":"t","group":"g"}"#,
            r#"{"op":"pub","topic":"t"}"#,
            r#"{"op":"pub","body":1}"#,
            r#"{"op":"pub","topic":"t","body":1,"topic":"u"}"#,
            r#"{"op":"pub","topic":"t","body":1,"group":"g"}"#,
            r#"{"op":"pub","topic":"t\u0041","body":1}"#,
            r#"{"op":"pub","topic":null,"body":1}"#,
            r#"{"op":"pub","topic":"t","body":01}"#,
            r#"{"op":"pub","topic":"t","body":1.}"#,
            r#"{"op":"pub","topic":"t","body":"\x"}"#,
            r#"{"op":"pub","topic":"t","body":"\u12g4"}"#,
            "{\"op\":\"pub\",\"topic\":\"t\",\"body\":\"tab\there\"}",
            r#"{"op":"pub","topic":"t","body":[1,]}"#,
            r#"{"op":"pub","topic":"t","body":{"a":1,}}"#,
            r#"{"op":"pub","topic":"t","body":1,"seq":1.0}"#,
            r#"{"op":"pub","topic":"t","body":1,"seq":-1}"#,
            r#"{"op":"pub","topic":"t","body":1,"seq":18446744073709551616}"#,
            r#"{"op":"pub","topic":"t","body":1,"req":[1]}"#,
            r#"{"op":"pub","topic":"t","body":1,"req":null}"#,
            r#"{"op":"pub","topic":"t","body":1} x"#,
            r#"{"op":"pub","topic":"t","body":1,}"#,
            r#"{"op":"pub","topic":"t","body":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}"#,
        ];
        for text in left {
            assert!(!agrees_with_serde(text), "the reader took {text:?}");
        }
        let long_req = format!(r#"{{"op":"pub","req":"{}","topic":"t","body":1}}"#, "r".repeat(200));
        assert!(!agrees_with_serde(&long_req));
    }

    const PIECES: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        " ",
        "\n",
        "\"",
        "\\",
        "\\\"",
        "\\u00e9",
        "\\ud800",
        "\\q",
        "\t",
        "\u{1}",
        "é",
        "0",
        "01",
        "-",
        "-0",
        "1.5",
        "1e9",
        "1E+2",
        "2.",
        ".5",
        "18446744073709551616",
        "true",
        "fals",
        "null",
        "\"op\"",
        "\"pub\"",
        "\"topic\"",
        "\"body\"",
        "\"key\"",
        "\"producer\"",
        "\"seq\"",
        "\"req\"",
        "\"group\"",
        "\"t\"",
        "7",
    ];

    /// Valid frames from a random order of fields, and frames with random pieces spliced in:
    /// wherever the reader answers, its answer is serde's.
    #[test]
    fn agrees_with_serde_on_random_frames() {
        let mut rng = ChaCha8Rng::seed_from_u64(12);
        let mut taken = 0;
        for _ in 0..200_000 {
            let mut fields = vec![r#""op":"pub""#, r#""topic":"orders""#, r#""body":{"n":[1,-2.5e3,"s\n"],"m":{}}"#];
            for optional in [r#""key":"k""#, r#""producer":"p""#, r#""seq":42"#, r#""req":"r""#, r#""req":3"#, r#""key":null"#] {
                if rng.gen_bool(0.3) {
                    fields.push(optional);
                }
            }
            for i in (1..fields.len()).rev() {
                fields.swap(i, rng.gen_range(0..=i));
            }
            let mut text = format!("{{{}}}", fields.join(","));
            for _ in 0..rng.gen_range(0..3) {
                let at = rng.gen_range(0..=text.len());
                if text.is_char_boundary(at) {
                    let piece = PIECES[rng.gen_range(0..PIECES.len())];
                    if rng.gen_bool(0.5) {
                        text.insert_str(at, piece);
                    } else {
                        let end = text[at..].char_indices().nth(piece.chars().count()).map_or(text.len(), |(i, _)| at + i);
                        text.replace_range(at..end, piece);
                    }
                }
            }
            taken += usize::from(agrees_with_serde(&text));
        }
        assert!(taken > 20_000, "the reader took only {taken} frames: the comparison saw too few");
    }
}
