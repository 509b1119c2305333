//! The JSON half of the one-pass check: strict RFC 8259 scanning (strings eight bytes at a
//! time, numbers, literals, arrays, objects with duplicate keys refused) without building
//! anything. What the FHIR half (`checks`) does with particular members is called from here.
use super::cuts::{Elements, Keys};
use super::policy::{FastLine, Unsure, MAX_DEPTH, MAX_NUMBER, R};

/// A mask whose lowest set bit lies in the first byte of `w` (little-endian) that is a quote,
/// a backslash, a control character or non-ASCII; 0 when there is none. (The classic SWAR
/// zero-byte test: bits above the first hit may be spurious, the lowest one is exact.)
#[inline]
fn special_bytes(w: u64) -> u64 {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let zero = |x: u64| x.wrapping_sub(LO) & !x & HI;
    let quote = zero(w ^ (LO * b'"' as u64));
    let backslash = zero(w ^ (LO * b'\\' as u64));
    let control = w.wrapping_sub(LO * 0x20) & !w & HI;
    quote | backslash | control | (w & HI)
}

pub(super) struct Scan<'a> {
    pub(super) b: &'a [u8],
    pub(super) i: usize,
    pub(super) f: &'a FastLine<'a>,
    /// Where the `resourceType` value and the local id lie.
    pub(super) found: (std::ops::Range<usize>, std::ops::Range<usize>),
    /// Byte ranges left out of the output, in order, not overlapping.
    pub(super) cuts: Vec<(usize, usize)>,
    /// Tenant codings seen in `meta` (exactly one, the caller's, is required).
    pub(super) codings: usize,
    pub(super) seen_type: bool,
    pub(super) seen_id: bool,
}

/// A string as found: where its content starts, the content, and whether it has escapes.
pub(super) struct Str<'a> {
    pub(super) at: usize,
    pub(super) raw: &'a [u8],
    pub(super) escaped: bool,
}

impl<'a> Str<'a> {
    /// The plain text, when there are no escapes.
    pub(super) fn plain(&self) -> R<&'a str> {
        if self.escaped {
            return Err(Unsure);
        }
        std::str::from_utf8(self.raw).map_err(|_| Unsure)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Place {
    Top,
    Meta,
    Any,
}

impl<'a> Scan<'a> {
    #[inline]
    pub(super) fn ws(&mut self) {
        while matches!(self.b.get(self.i), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.i += 1;
        }
    }

    #[inline]
    pub(super) fn peek(&self) -> R<u8> {
        self.b.get(self.i).copied().ok_or(Unsure)
    }

    #[inline]
    pub(super) fn eat(&mut self, c: u8) -> R<()> {
        if self.peek()? != c {
            return Err(Unsure);
        }
        self.i += 1;
        Ok(())
    }

    /// Reads a string (at its opening quote): content validated, UTF-8 checked.
    #[inline]
    pub(super) fn string(&mut self) -> R<Str<'a>> {
        self.eat(b'"')?;
        let b = self.b;
        let at = self.i;
        let mut j = at;
        let (mut escaped, mut high) = (false, false);
        loop {
            // Eight bytes at a time, up to the first byte that is not plain.
            while let Some(word) = b.get(j..j + 8) {
                let special = special_bytes(u64::from_le_bytes(word.try_into().expect("eight bytes")));
                if special != 0 {
                    j += special.trailing_zeros() as usize / 8;
                    break;
                }
                j += 8;
            }
            // Most often the quote that ends the string; tested in order of likelihood.
            let c = *b.get(j).ok_or(Unsure)?;
            if c == b'"' {
                break;
            } else if c == b'\\' {
                match b.get(j + 1) {
                    // Simple escapes stay as they are; `\u` (and surrogates) go the long way.
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                        escaped = true;
                        j += 2;
                    }
                    _ => return Err(Unsure),
                }
            } else if c >= 0x80 {
                high = true;
                j += 1;
            } else if c < 0x20 {
                return Err(Unsure);
            } else {
                // A plain byte in a tail shorter than a word.
                j += 1;
            }
        }
        let raw = &b[at..j];
        if high && std::str::from_utf8(raw).is_err() {
            return Err(Unsure);
        }
        self.i = j + 1;
        Ok(Str { at, raw, escaped })
    }

    /// Any value; `place` says what the surrounding check cares about.
    pub(super) fn value(&mut self, depth: usize, place: Place) -> R<()> {
        if depth > MAX_DEPTH {
            return Err(Unsure);
        }
        match self.peek()? {
            b'{' => self.object(depth, place),
            b'[' => self.array(depth, false),
            b'"' => self.string().map(drop),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number(),
        }
    }

    #[inline]
    pub(super) fn literal(&mut self, word: &[u8]) -> R<()> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(Unsure)
        }
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?` of at most [`MAX_NUMBER`] bytes (exponents and long
    /// numbers go the long way: the strict parser refuses a magnitude past `f64`'s, found by
    /// the `fastline_diff` fuzz target).
    #[inline]
    pub(super) fn number(&mut self) -> R<()> {
        let b = self.b;
        let mut i = self.i;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        match b.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                while b.get(i).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                }
            }
            _ => return Err(Unsure),
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            if !b.get(i).is_some_and(u8::is_ascii_digit) {
                return Err(Unsure);
            }
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
        }
        if matches!(b.get(i), Some(b'e' | b'E')) || i - self.i > MAX_NUMBER {
            return Err(Unsure);
        }
        self.i = i;
        Ok(())
    }

    /// An array; under a canonical element (`canonicals`), each string in it is a canonical.
    pub(super) fn array(&mut self, depth: usize, canonicals: bool) -> R<()> {
        self.eat(b'[')?;
        self.ws();
        if self.peek()? == b']' {
            return self.eat(b']');
        }
        loop {
            if canonicals && self.peek()? == b'"' {
                let v = self.string()?;
                self.canonical(v.at, v.plain()?)?;
            } else {
                self.value(depth + 1, Place::Any)?;
            }
            self.ws();
            match self.peek()? {
                b',' => {
                    self.i += 1;
                    self.ws();
                }
                b']' => return self.eat(b']'),
                _ => return Err(Unsure),
            }
        }
    }

    /// Marks the member being read for removal; `members` turns the mark into the cut.
    pub(super) fn cut_member(&mut self) {
        self.cuts.push((usize::MAX, usize::MAX));
    }

    /// The members of an object: `{`, key/value pairs through `each`, `}`. A duplicate or
    /// escaped key → Unsure. A member whose handler pushed the `(MAX, MAX)` mark is cut with
    /// one neighbouring comma.
    pub(super) fn members(&mut self, depth: usize, mut each: impl FnMut(&mut Self, &'a [u8]) -> R<()>) -> R<()> {
        if depth > MAX_DEPTH {
            return Err(Unsure);
        }
        self.eat(b'{')?;
        self.ws();
        if self.peek()? == b'}' {
            return self.eat(b'}');
        }
        let mut keys = Keys::default();
        let mut elements = Elements::default();
        loop {
            let start = self.i;
            let key = self.string()?;
            // serde_json (feature raw_value) reads an object whose key is its private token as
            // something else entirely, so the tree check would judge another document: Unsure
            // (found by the fastline_diff fuzz target).
            if key.escaped || key.raw.starts_with(b"$serde_json::") || !keys.insert(key.raw) {
                return Err(Unsure);
            }
            self.ws();
            self.eat(b':')?;
            self.ws();
            each(self, key.raw)?;
            let end = self.i;
            let cut = self.cuts.last() == Some(&(usize::MAX, usize::MAX));
            if cut {
                self.cuts.pop();
            }
            elements.element(start, end, cut, &mut self.cuts);
            self.ws();
            match self.peek()? {
                b',' => {
                    self.i += 1;
                    self.ws();
                }
                b'}' => {
                    elements.close(end, &mut self.cuts);
                    return self.eat(b'}');
                }
                _ => return Err(Unsure),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_word_test_finds_the_first_special_byte() {
        for byte in 0..=255u8 {
            for pos in 0..8 {
                let mut w = [b'a'; 8];
                w[pos] = byte;
                let mask = special_bytes(u64::from_le_bytes(w));
                let special = byte == b'"' || byte == b'\\' || !(0x20..0x80).contains(&byte);
                assert_eq!(mask != 0, special, "byte {byte} at {pos}");
                if special {
                    assert_eq!(mask.trailing_zeros() as usize / 8, pos, "byte {byte} at {pos}");
                }
                // Whatever follows a special byte, the first one is found.
                let mut w2 = [0u8; 8];
                w2[..pos].fill(b'a');
                if special {
                    w2[pos] = byte;
                    assert_eq!(special_bytes(u64::from_le_bytes(w2)).trailing_zeros() as usize / 8, pos);
                }
            }
        }
    }
}
