//! Frames: one datagram is `magic "PB" ‖ u32 LE body length ‖ postcard body`.
//!
//! The datagram boundary already delimits a frame; the header is a second, independent
//! check, so a peer that lies about a length (or a kernel that truncated a datagram) is
//! caught before the body is decoded. The decoder never panics on any input: it is fuzzed.

use serde::Deserialize;
use serde::Serialize;

use super::IpcError;

/// The two bytes every frame starts with.
pub const MAGIC: [u8; 2] = *b"PB";

/// Magic plus the u32 body length.
pub const HEADER_BYTES: usize = 6;

/// The largest frame (header included) either side sends or accepts: 1 MiB of body plus
/// room for the message's other fields.
pub const MAX_FRAME_BYTES: usize = 1024 * 1024 + 64;

/// The largest payload a call carries: a frame's maximum less room for the call's other
/// fields (header, id, a hook name of up to 64 bytes, depth: at most 90 bytes).
pub const MAX_PAYLOAD_BYTES: usize = MAX_FRAME_BYTES - 128;

/// The largest reply body (an answer or an error message) a call brings back: what a
/// `Reply` frame holds beside its other fields (header, tag, id, status and length: at
/// most 25 bytes). A larger one is answered as an error instead, in both isolation modes.
pub const MAX_REPLY_BYTES: usize = MAX_FRAME_BYTES - 32;

/// What answers a call whose reply body of `bytes` is over [`MAX_REPLY_BYTES`] (status and
/// message), in both isolation modes; `None` for a reply that fits.
pub fn oversized_reply(bytes: usize) -> Option<(i32, String)> {
    (bytes > MAX_REPLY_BYTES).then(|| {
        (
            plugboard_sdk::abi::STATUS_ERROR,
            format!(
                "the plugin's reply of {bytes} bytes exceeds the {MAX_REPLY_BYTES}-byte maximum of a reply"
            ),
        )
    })
}

/// Encodes `msg` into one frame.
///
/// A message whose frame would exceed [`MAX_FRAME_BYTES`] is refused with
/// [`IpcError::TooLarge`] (giving its exact size); the encoder stops storing bytes at the
/// maximum, so an oversized message costs no more than a maximal frame in memory.
pub fn encode_frame<T: Serialize + ?Sized>(msg: &T) -> Result<Vec<u8>, IpcError> {
    encode_frame_into(msg, Vec::with_capacity(128))
}

/// [`encode_frame`] into `buffer` (cleared first), so a sender can reuse one allocation.
pub(super) fn encode_frame_into<T: Serialize + ?Sized>(
    msg: &T,
    mut buffer: Vec<u8>,
) -> Result<Vec<u8>, IpcError> {
    buffer.clear();
    let mut out = Bounded {
        bytes: buffer,
        total: HEADER_BYTES,
    };
    out.bytes.extend_from_slice(&MAGIC);
    out.bytes.extend_from_slice(&[0; 4]);
    let out = postcard::serialize_with_flavor(msg, out).map_err(|err| IpcError::Encode {
        reason: format!(
            "postcard could not encode {}: {err}",
            short_type_name::<T>()
        ),
    })?;
    let too_large = IpcError::TooLarge {
        bytes: out.total,
        max: MAX_FRAME_BYTES,
    };
    if out.total > MAX_FRAME_BYTES {
        return Err(too_large);
    }
    let mut frame = out.bytes;
    let body_len = u32::try_from(frame.len() - HEADER_BYTES).map_err(|_| too_large)?;
    frame[2..HEADER_BYTES].copy_from_slice(&body_len.to_le_bytes());
    Ok(frame)
}

/// Decodes one frame (a whole datagram) into a `T`.
///
/// Every way a frame can be wrong is an [`IpcError::Protocol`] whose reason says what was
/// found and what was expected: oversized, shorter than the header, bad magic, a declared
/// body length that differs from the actual one, an undecodable body, or bytes left over
/// after the decoded value.
pub fn decode_frame<'a, T: Deserialize<'a>>(frame: &'a [u8]) -> Result<T, IpcError> {
    check_frame_size(frame.len())?;
    let (header, body) = frame.split_at(HEADER_BYTES.min(frame.len()));
    let [m0, m1, l0, l1, l2, l3] = *header else {
        return Err(protocol(format!(
            "truncated frame: {} bytes is shorter than the {HEADER_BYTES}-byte header \
             (magic \"PB\" and a u32 little-endian body length)",
            frame.len()
        )));
    };
    if [m0, m1] != MAGIC {
        return Err(protocol(format!(
            "bad magic {m0:#04x} {m1:#04x}, expected \"PB\" ({:#04x} {:#04x})",
            MAGIC[0], MAGIC[1]
        )));
    }
    let declared = u32::from_le_bytes([l0, l1, l2, l3]);
    if usize::try_from(declared).ok() != Some(body.len()) {
        let what = if usize::try_from(declared).is_ok_and(|d| d > body.len()) {
            "truncated frame"
        } else {
            "frame length mismatch"
        };
        return Err(protocol(format!(
            "{what}: the header declares a {declared}-byte body but the datagram carries {} \
             body bytes",
            body.len()
        )));
    }
    let (value, rest) = postcard::take_from_bytes::<T>(body).map_err(|err| {
        protocol(format!(
            "undecodable body: {err} (expected a postcard-encoded {})",
            short_type_name::<T>()
        ))
    })?;
    if !rest.is_empty() {
        return Err(protocol(format!(
            "{} trailing bytes after a complete {} (expected the body to end there)",
            rest.len(),
            short_type_name::<T>()
        )));
    }
    Ok(value)
}

/// Refuses a datagram of `len` bytes if it is bigger than a frame may be.
pub(super) fn check_frame_size(len: usize) -> Result<(), IpcError> {
    if len > MAX_FRAME_BYTES {
        Err(protocol(format!(
            "frame of {len} bytes exceeds the {MAX_FRAME_BYTES}-byte maximum"
        )))
    } else {
        Ok(())
    }
}

pub(super) fn protocol(reason: String) -> IpcError {
    IpcError::Protocol { reason }
}

/// `plugboard_engine::ipc::message::EngineMessage` → `EngineMessage` (generic names are
/// left whole).
fn short_type_name<T: ?Sized>() -> &'static str {
    let full = std::any::type_name::<T>();
    if full.contains('<') {
        full
    } else {
        full.rsplit("::").next().unwrap_or(full)
    }
}

/// A postcard output that stores at most `MAX_FRAME_BYTES` and counts the rest, so an
/// oversized message is measured exactly without being held in memory.
struct Bounded {
    bytes: Vec<u8>,
    total: usize,
}

impl postcard::ser_flavors::Flavor for Bounded {
    type Output = Self;

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.total = self.total.saturating_add(data.len());
        if self.total <= MAX_FRAME_BYTES {
            self.bytes.extend_from_slice(data);
        }
        Ok(())
    }

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.total = self.total.saturating_add(1);
        if self.total <= MAX_FRAME_BYTES {
            self.bytes.push(data);
        }
        Ok(())
    }

    fn finalize(self) -> postcard::Result<Self> {
        Ok(self)
    }
}
