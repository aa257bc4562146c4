//! Counting gRPC messages in an HTTP/2 body.
//!
//! A gRPC body is a sequence of length-prefixed messages (1 byte compressed flag, 4 bytes
//! big-endian length, the message), and HTTP/2 data frames cut it anywhere: one frame may
//! carry many small messages (tonic batches a stream's ready messages) or a piece of a large
//! one. Following the prefixes counts exactly the messages sent, for a few comparisons per
//! frame, without decoding anything.

/// Follows the length prefixes of one body's data, frame by frame.
#[derive(Debug, Default)]
pub struct MessageCounter {
    /// Bytes of the current prefix seen so far (0..5).
    header: [u8; 5],
    header_len: usize,
    /// Bytes of the current message still to come after its prefix.
    remaining: u64,
}

impl MessageCounter {
    /// Feeds the next data frame; returns how many messages it completed.
    pub fn feed(&mut self, mut data: &[u8]) -> u64 {
        let mut completed = 0;
        while !data.is_empty() {
            if self.remaining > 0 {
                let take = self.remaining.min(data.len() as u64);
                self.remaining -= take;
                data = &data[take as usize..];
                if self.remaining == 0 {
                    completed += 1;
                }
                continue;
            }
            let take = (5 - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&data[..take]);
            self.header_len += take;
            data = &data[take..];
            if self.header_len == 5 {
                self.header_len = 0;
                let len = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]);
                self.remaining = u64::from(len);
                if len == 0 {
                    completed += 1;
                }
            }
        }
        completed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: usize) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.extend(std::iter::repeat_n(7u8, len));
        out
    }

    #[test]
    fn counts_messages_whatever_the_frame_cuts() {
        let body: Vec<u8> = [message(3), message(0), message(300), message(1)].concat();
        for frame in [1, 2, 4, 5, 6, 64, body.len()] {
            let mut counter = MessageCounter::default();
            let total: u64 = body.chunks(frame).map(|c| counter.feed(c)).sum();
            assert_eq!(total, 4, "frames of {frame} bytes");
        }
    }

    #[test]
    fn a_message_counts_once_it_is_whole() {
        let mut counter = MessageCounter::default();
        let body = message(10);
        assert_eq!(counter.feed(&body[..7]), 0);
        assert_eq!(counter.feed(&body[7..]), 1);
        assert_eq!(counter.feed(&message(2)), 1);
    }
}
