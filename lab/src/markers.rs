//! Markers in a byte stream that arrives in chunks: each is looked for after
//! the end of the previous match, whatever chunks it is split across.

/// What arrived so far, and where the last match ended.
#[derive(Default)]
pub struct Seen {
    buf: Vec<u8>,
    /// Just after the last match: the next marker is looked for from here.
    from: usize,
    /// Where the search for the marker being waited for may start again
    /// without missing a match (it was not found before).
    checked: usize,
}

impl Seen {
    pub fn add(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// Bytes added so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether `marker` arrived after the last match; if so, moves past it.
    /// Ask for the same marker until it is found: a marker given up on is
    /// not looked for in what arrived meanwhile.
    pub fn find(&mut self, marker: &[u8]) -> bool {
        if marker.is_empty() {
            return true;
        }
        let start = self.from.max(self.checked);
        let hit = self.buf[start..]
            .windows(marker.len())
            .position(|w| w == marker);
        match hit {
            Some(at) => {
                self.from = start + at + marker.len();
                self.checked = self.from;
                true
            }
            None => {
                // A match may still start in the last len-1 bytes.
                self.checked = self.buf.len().saturating_sub(marker.len() - 1).max(start);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_markers_in_order_across_chunks() {
        let mut s = Seen::default();
        s.add(b"boot... AMPHI-VIR");
        assert!(!s.find(b"AMPHI-VIRTIO-READY"));
        s.add(b"TIO-RE");
        assert!(!s.find(b"AMPHI-VIRTIO-READY"));
        s.add(b"ADY\nAMPHI-VIRTIO-END");
        assert!(s.find(b"AMPHI-VIRTIO-READY"));
        assert!(s.find(b"AMPHI-VIRTIO-END"));
        // Each match is used once: nothing after the last one.
        assert!(!s.find(b"AMPHI-VIRTIO-END"));
        s.add(b" AMPHI-VIRTIO-END");
        assert!(s.find(b"AMPHI-VIRTIO-END"));
        assert_eq!(s.len(), 17 + 6 + 20 + 17);
    }

    #[test]
    fn a_later_marker_before_an_earlier_one_does_not_count() {
        let mut s = Seen::default();
        s.add(b"END READY");
        assert!(s.find(b"READY"));
        assert!(!s.find(b"END"));
    }
}
