//! zstd frames: a value's compression with persona's level and a checksum, and its
//! decompression within the bounds of a state, each with a context kept per thread.

use std::cell::RefCell;

use super::CodecError;

/// zstd's level: its fastest regular one; higher levels save a few percent more of a state for
/// twice the time.
pub(super) const ZSTD_LEVEL: i32 = 1;

/// The largest value a compressed one may expand to. A state is kilobytes, a large product's
/// hundreds: a frame declaring more is refused rather than allocated.
pub(super) const MAX_STATE_BYTES: u64 = 256 << 20;

thread_local! {
    // A context each, kept: making one allocates its tables, which cost as much as compressing
    // a state.
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
    // The frame, built here and kept between values, like the uncompressed value.
    static FRAME: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// `wire` (a value without its version byte) in one zstd frame behind `version`; `None` if
/// zstd could not make a context (out of memory), and the value is then written uncompressed.
pub(super) fn compress(wire: &[u8], version: u8) -> Option<Vec<u8>> {
    COMPRESSOR.with_borrow_mut(|compressor| {
        if compressor.is_none() {
            let mut made = zstd::bulk::Compressor::new(ZSTD_LEVEL).ok()?;
            // A damaged frame is then refused rather than read as some other state.
            made.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true)).ok()?;
            *compressor = Some(made);
        }
        let compressor = compressor.as_mut()?;
        FRAME.with_borrow_mut(|frame| {
            frame.clear();
            frame.reserve(zstd::zstd_safe::compress_bound(wire.len()));
            compressor.compress_to_buffer(wire, frame).ok()?;
            let mut value = Vec::with_capacity(1 + frame.len());
            value.push(version);
            value.extend_from_slice(frame);
            Some(value)
        })
    })
}

/// The uncompressed value a compressed value holds (without its version byte).
pub(super) fn decompress(frame: &[u8]) -> Result<Vec<u8>, CodecError> {
    let malformed = |detail: String| CodecError::Compressed(detail);
    let size = frame_size(frame)?;
    DECOMPRESSOR.with_borrow_mut(|decompressor| {
        if decompressor.is_none() {
            *decompressor =
                Some(zstd::bulk::Decompressor::new().map_err(|e| malformed(e.to_string()))?);
        }
        let decompressor = decompressor.as_mut().ok_or_else(|| malformed("no context".into()))?;
        decompressor.decompress(frame, size).map_err(|e| malformed(e.to_string()))
    })
}

/// The bytes `frame` expands to, refused when the frame does not say or says more than a state
/// may hold.
pub(super) fn frame_size(frame: &[u8]) -> Result<usize, CodecError> {
    let malformed = |detail: String| CodecError::Compressed(detail);
    let size = zstd::zstd_safe::get_frame_content_size(frame)
        .map_err(|_| malformed("not a zstd frame".into()))?
        .ok_or_else(|| malformed("the frame does not say its size".into()))?;
    if size > MAX_STATE_BYTES {
        return Err(malformed(format!("the frame expands to {size} bytes")));
    }
    Ok(size as usize)
}
