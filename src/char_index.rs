//! Char indexes to byte offsets. saphyr's markers count chars, slicing a `str` needs bytes,
//! and walking from the start of the file for every marker made big files quadratic (a
//! manifest of 200,000 numbers took seconds, one of 8 MiB would take many minutes).

/// Chars between two remembered byte offsets: a lookup walks at most this many.
const STRIDE: usize = 256;

/// The byte offset of every [`STRIDE`]th char of a text.
pub(crate) struct CharIndex<'t> {
    text: &'t str,
    checkpoints: Vec<usize>,
}

impl<'t> CharIndex<'t> {
    pub fn new(text: &'t str) -> Self {
        CharIndex {
            text,
            checkpoints: text
                .char_indices()
                .step_by(STRIDE)
                .map(|(b, _)| b)
                .collect(),
        }
    }

    /// The byte offset of char `index`; the text's length for the index just past its end;
    /// `None` beyond that.
    pub fn byte_offset(&self, index: usize) -> Option<usize> {
        let (chunk, within) = (index / STRIDE, index % STRIDE);
        let Some(&from) = self.checkpoints.get(chunk) else {
            let at_end = within == 0 && chunk == self.checkpoints.len();
            return at_end.then_some(self.text.len());
        };
        let rest = &self.text[from..];
        match rest.char_indices().nth(within) {
            Some((b, _)) => Some(from + b),
            // Only in the last chunk: fewer than `within` + 1 chars are left.
            None => (rest.chars().count() == within).then_some(self.text.len()),
        }
    }

    /// The chars `start..end` of the text.
    pub fn slice(&self, start: usize, end: usize) -> Option<&'t str> {
        let (start, end) = (self.byte_offset(start)?, self.byte_offset(end)?);
        self.text.get(start..end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_char_index_maps_to_its_byte_offset() {
        // Multi-byte chars on both sides of the checkpoints.
        for text in [
            String::new(),
            "a".repeat(STRIDE),
            "é€𝄞a".repeat(STRIDE),
            "ab€".repeat(STRIDE + 7),
        ] {
            let index = CharIndex::new(&text);
            let expected: Vec<usize> = text
                .char_indices()
                .map(|(b, _)| b)
                .chain([text.len()])
                .collect();
            for (i, b) in expected.iter().enumerate() {
                assert_eq!(index.byte_offset(i), Some(*b), "char {i} of {text:?}");
            }
            assert_eq!(index.byte_offset(expected.len()), None);
            assert_eq!(index.byte_offset(expected.len() + STRIDE), None);
        }
    }

    #[test]
    fn slices_by_chars() {
        let text = format!("{}ü: 1.10", "ä".repeat(STRIDE - 2));
        let index = CharIndex::new(&text);
        assert_eq!(index.slice(STRIDE + 1, STRIDE + 5), Some("1.10"));
        assert_eq!(index.slice(STRIDE - 2, STRIDE - 1), Some("ü"));
        assert_eq!(index.slice(STRIDE + 1, STRIDE + 6), None);
    }
}
