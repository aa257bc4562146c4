//! The journal's unit: the writes of one group commit, framed and checksummed.
//!
//! ```text
//! magic u32 | payload_len u32 | lsn u64 | payload_crc u32 | header_crc u32 | payload
//! payload = op*, op = tag u8 (1 put, 2 delete) | varint key_len | key [| varint len | value]
//! ```
//!
//! All integers are little-endian. The header has its own checksum so that a frame whose payload
//! was torn still says which `lsn` it held. Segments are zero-filled before use, so an all-zero
//! header is the end of a segment's frames.

use bytes::Bytes;
use prost::encoding::{decode_varint, encode_varint, encoded_len_varint};

/// "ORDJ" in little-endian byte order.
const MAGIC: u32 = u32::from_le_bytes(*b"ORDJ");
pub const HEADER_LEN: usize = 24;
const PUT: u8 = 1;
const DELETE: u8 = 2;

/// One write to sled's tree, as the writer staged it. Values are shared (`Bytes`) between the
/// journal encoder, the in-memory views and the applier, so a chunk is never copied per use.
#[derive(Debug, Clone)]
pub struct Op {
    pub key: Vec<u8>,
    pub value: Option<Bytes>,
}

impl Op {
    /// Bytes this write holds in memory until sled has it.
    pub fn size(&self) -> usize {
        self.key.len() + self.value.as_ref().map_or(0, Bytes::len)
    }
}

/// Encodes one frame into `out` (cleared first).
pub fn encode(lsn: u64, ops: &[Op], out: &mut Vec<u8>) {
    out.clear();
    out.resize(HEADER_LEN, 0);
    for op in ops {
        match &op.value {
            Some(value) => {
                out.push(PUT);
                encode_varint(op.key.len() as u64, out);
                out.extend_from_slice(&op.key);
                encode_varint(value.len() as u64, out);
                out.extend_from_slice(value);
            }
            None => {
                out.push(DELETE);
                encode_varint(op.key.len() as u64, out);
                out.extend_from_slice(&op.key);
            }
        }
    }
    seal(lsn, out);
}

/// Where each write's value starts in the frame [`encode`] makes of `ops`, counted from the
/// frame's first byte (`None` for deletes): how the applier locates chunks in a segment.
pub fn value_offsets(ops: &[Op]) -> impl Iterator<Item = Option<u64>> + '_ {
    let mut pos = HEADER_LEN as u64;
    ops.iter().map(move |op| {
        pos += 1 + encoded_len_varint(op.key.len() as u64) as u64 + op.key.len() as u64;
        op.value.as_ref().map(|value| {
            pos += encoded_len_varint(value.len() as u64) as u64;
            let at = pos;
            pos += value.len() as u64;
            at
        })
    })
}

/// The lsn of the first frame of a segment whose first bytes are `header`, if one is there.
pub fn first_lsn(header: &[u8; HEADER_LEN]) -> Option<u64> {
    payload_len(header)?;
    let mut lsn = [0u8; 8];
    lsn.copy_from_slice(&header[8..16]);
    Some(u64::from_le_bytes(lsn))
}

/// Encodes one frame around an already encoded payload (a frame's ops, copied as they are)
/// into `out` (cleared first).
pub fn encode_payload(lsn: u64, payload: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.resize(HEADER_LEN, 0);
    out.extend_from_slice(payload);
    seal(lsn, out);
}

/// Writes the header of the frame whose payload follows it in `out`.
fn seal(lsn: u64, out: &mut [u8]) {
    let payload_len = (out.len() - HEADER_LEN) as u32;
    let payload_crc = crc32fast::hash(&out[HEADER_LEN..]);
    out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    out[4..8].copy_from_slice(&payload_len.to_le_bytes());
    out[8..16].copy_from_slice(&lsn.to_le_bytes());
    out[16..20].copy_from_slice(&payload_crc.to_le_bytes());
    let header_crc = crc32fast::hash(&out[..20]);
    out[20..24].copy_from_slice(&header_crc.to_le_bytes());
}

/// What the bytes at one position of a segment hold.
#[derive(Debug)]
pub enum Decoded<'a> {
    /// A whole, checksummed frame of `len` bytes (header included).
    Frame {
        lsn: u64,
        len: usize,
        payload: &'a [u8],
    },
    /// Zeros (or nothing at all): no frame was ever written here.
    End,
    /// Something that is neither: a torn or corrupted frame. `lsn` is known when the header
    /// is intact.
    Invalid { lsn: Option<u64>, reason: String },
    /// A frame whose header holds and whose `len` bytes are all there, but whose payload no
    /// longer matches its checksum: damaged, torn inside, or a frame sled had applied whose
    /// deleted events were zeroed in place ([`super::Sealed::scrub_later`]).
    Altered { lsn: u64, len: usize },
}

/// The payload length a frame header announces, once its checksum holds: how many bytes to
/// read next when frames are read from a stream rather than a whole segment.
pub fn payload_len(header: &[u8; HEADER_LEN]) -> Option<usize> {
    let word = |at: usize| {
        u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    (word(0) == MAGIC && crc32fast::hash(&header[..20]) == word(20)).then(|| word(4) as usize)
}

/// Reads the frame starting at `buf[0]`.
pub fn decode(buf: &[u8]) -> Decoded<'_> {
    let header = &buf[..buf.len().min(HEADER_LEN)];
    if header.iter().all(|b| *b == 0) {
        return Decoded::End;
    }
    if header.len() < HEADER_LEN {
        return Decoded::Invalid {
            lsn: None,
            reason: format!("frame header cut short at {} bytes", header.len()),
        };
    }
    let word = |at: usize| u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
    if word(0) != MAGIC {
        return Decoded::Invalid {
            lsn: None,
            reason: "no frame header (bad magic)".into(),
        };
    }
    if crc32fast::hash(&buf[..20]) != word(20) {
        return Decoded::Invalid {
            lsn: None,
            reason: "frame header checksum mismatch".into(),
        };
    }
    let mut lsn_bytes = [0u8; 8];
    lsn_bytes.copy_from_slice(&buf[8..16]);
    let lsn = u64::from_le_bytes(lsn_bytes);
    let len = HEADER_LEN + word(4) as usize;
    if len > buf.len() {
        return Decoded::Invalid {
            lsn: Some(lsn),
            reason: format!("frame of {len} bytes is cut short at {} bytes", buf.len()),
        };
    }
    let payload = &buf[HEADER_LEN..len];
    if crc32fast::hash(payload) != word(16) {
        return Decoded::Altered { lsn, len };
    }
    Decoded::Frame { lsn, len, payload }
}

/// Splits a checksummed payload back into its writes.
pub fn decode_ops(mut payload: &[u8]) -> Result<Vec<Op>, String> {
    let mut ops = Vec::new();
    while let Some((&tag, rest)) = payload.split_first() {
        payload = rest;
        let key = take(&mut payload)?.to_vec();
        let value = match tag {
            PUT => Some(Bytes::copy_from_slice(take(&mut payload)?)),
            DELETE => None,
            other => return Err(format!("unknown op tag {other}")),
        };
        ops.push(Op { key, value });
    }
    Ok(ops)
}

fn take<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], String> {
    let len = decode_varint(buf).map_err(|e| e.to_string())? as usize;
    if len > buf.len() {
        return Err(format!("op of {len} bytes runs past the frame"));
    }
    let (head, rest) = buf.split_at(len);
    *buf = rest;
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops() -> Vec<Op> {
        vec![
            Op {
                key: b"e1".to_vec(),
                value: Some(Bytes::from_static(b"chunk")),
            },
            Op {
                key: b"r-gone".to_vec(),
                value: None,
            },
        ]
    }

    #[test]
    fn round_trip() {
        let mut buf = Vec::new();
        encode(7, &ops(), &mut buf);
        buf.extend_from_slice(&[0; 64]);
        let Decoded::Frame { lsn, len, payload } = decode(&buf) else {
            panic!("not a frame");
        };
        assert_eq!((lsn, len), (7, buf.len() - 64));
        let decoded = decode_ops(payload).expect("ops");
        assert_eq!(decoded.len(), 2);
        assert_eq!(decoded[0].value.as_deref(), Some(&b"chunk"[..]));
        assert!(decoded[1].value.is_none());
        assert!(matches!(decode(&buf[len..]), Decoded::End));
    }

    #[test]
    fn value_offsets_point_at_values() {
        let mut ops = ops();
        ops.push(Op {
            key: vec![b'e'; 200],
            value: Some(Bytes::from(vec![7u8; 300])),
        });
        let mut buf = Vec::new();
        encode(9, &ops, &mut buf);
        let offsets: Vec<Option<u64>> = value_offsets(&ops).collect();
        assert_eq!(offsets[1], None);
        for (op, at) in ops.iter().zip(offsets) {
            if let (Some(value), Some(at)) = (&op.value, at) {
                let at = at as usize;
                assert_eq!(&buf[at..at + value.len()], value.as_ref());
            }
        }
        let header: [u8; HEADER_LEN] = buf[..HEADER_LEN].try_into().expect("header");
        assert_eq!(first_lsn(&header), Some(9));
        assert_eq!(first_lsn(&[0; HEADER_LEN]), None);
    }

    /// Every single-byte flip and every cut is caught: none decodes as a frame.
    #[test]
    fn damage_is_detected() {
        let mut frame = Vec::new();
        encode(3, &ops(), &mut frame);
        for at in 0..frame.len() {
            let mut bad = frame.clone();
            bad[at] ^= 0x40;
            assert!(
                !matches!(decode(&bad), Decoded::Frame { .. }),
                "flip at {at}"
            );
        }
        for cut in 1..frame.len() {
            assert!(
                !matches!(decode(&frame[..cut]), Decoded::Frame { .. }),
                "cut at {cut}"
            );
        }
        let mut torn = frame.clone();
        let last = torn.len() - 1;
        torn[last] ^= 1;
        assert!(matches!(
            decode(&torn),
            Decoded::Altered { lsn: 3, len } if len == frame.len()
        ));
    }
}
