//! zstd frames: a value's compression with persona's level, a checksum and the deployment's
//! dictionary if any, and its decompression within the bounds of a state, with contexts kept per
//! thread.

use std::cell::RefCell;

use super::CodecError;
use super::dictionary::Dictionary;

/// zstd's level: its fastest regular one; higher levels save a few percent more of a state for
/// twice the time.
const ZSTD_LEVEL: i32 = 1;

/// The largest value a compressed one may expand to. A state is kilobytes, a large product's
/// hundreds: a frame declaring more is refused rather than allocated.
pub(super) const MAX_STATE_BYTES: u64 = 256 << 20;

/// Contexts a thread keeps of each kind: one without a dictionary, and one for each dictionary
/// a deployment trained, of which there are one or two.
const CONTEXTS_KEPT: usize = 4;

thread_local! {
    // A context per dictionary (0 for none), kept: making one allocates its tables, and loading
    // a dictionary into it, which cost more than compressing a state. A context kept reads its
    // dictionary's frames without asking for the dictionary again: an id is a hash of its
    // dictionary's content, so it names that one only.
    static COMPRESSORS: RefCell<Vec<(u32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(Vec::new()) };
    static DECOMPRESSORS: RefCell<Vec<(u32, zstd::bulk::Decompressor<'static>)>> =
        const { RefCell::new(Vec::new()) };
}

/// The context kept in `kept` for dictionary `id`, made by `make` the first time.
fn context<C, E>(
    kept: &mut Vec<(u32, C)>,
    id: u32,
    make: impl FnOnce() -> Result<C, E>,
) -> Result<&mut C, E> {
    let at = match kept.iter().position(|(kept_id, _)| *kept_id == id) {
        Some(at) => at,
        None => {
            let made = make()?;
            if kept.len() == CONTEXTS_KEPT {
                kept.remove(0);
            }
            kept.push((id, made));
            kept.len() - 1
        }
    };
    Ok(&mut kept[at].1)
}

/// `wire` (a value without its version byte) in one zstd frame behind `version`, compressed with
/// `dictionary` if any; `None` if zstd could not make a context (out of memory), and the value
/// is then written uncompressed.
pub(super) fn compress(
    wire: &[u8],
    version: u8,
    dictionary: Option<&Dictionary>,
) -> Option<Vec<u8>> {
    COMPRESSORS.with_borrow_mut(|kept| {
        let id = dictionary.map_or(0, Dictionary::id);
        let compressor = context(kept, id, || {
            let bytes = dictionary.map_or(&[][..], Dictionary::bytes);
            let mut made = zstd::bulk::Compressor::with_dictionary(ZSTD_LEVEL, bytes)?;
            // A damaged frame is then refused rather than read as some other state.
            made.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
            Ok::<_, std::io::Error>(made)
        })
        .ok()?;
        let mut value = Vec::with_capacity(1 + zstd::zstd_safe::compress_bound(wire.len()));
        value.push(version);
        let mut frame = std::io::Cursor::new(value);
        frame.set_position(1);
        compressor.compress_to_buffer(wire, &mut frame).ok()?;
        Some(frame.into_inner())
    })
}

/// The uncompressed value a compressed value holds (without its version byte).
pub(super) fn decompress(frame: &[u8]) -> Result<Vec<u8>, CodecError> {
    decompress_with(frame, &|_| None)
}

/// [`decompress`], the dictionary a frame names found by `known` from its id.
pub(super) fn decompress_with(
    frame: &[u8],
    known: &dyn Fn(u32) -> Option<Dictionary>,
) -> Result<Vec<u8>, CodecError> {
    let malformed = |detail: String| CodecError::Compressed(detail);
    let size = frame_size(frame)?;
    let id = zstd::zstd_safe::get_dict_id_from_frame(frame).map_or(0, |id| id.get());
    DECOMPRESSORS.with_borrow_mut(|kept| {
        let decompressor = context(kept, id, || match id {
            0 => zstd::bulk::Decompressor::new().map_err(|e| malformed(e.to_string())),
            _ => {
                let dictionary = known(id).ok_or(CodecError::UnknownDictionary(id))?;
                zstd::bulk::Decompressor::with_dictionary(dictionary.bytes())
                    .map_err(|e| malformed(e.to_string()))
            }
        })?;
        decompressor.decompress(frame, size).map_err(|e| malformed(e.to_string()))
    })
}

/// The bytes `frame` expands to, refused when the frame does not say or says more than a state
/// may hold.
fn frame_size(frame: &[u8]) -> Result<usize, CodecError> {
    let malformed = |detail: String| CodecError::Compressed(detail);
    let size = zstd::zstd_safe::get_frame_content_size(frame)
        .map_err(|_| malformed("not a zstd frame".into()))?
        .ok_or_else(|| malformed("the frame does not say its size".into()))?;
    if size > MAX_STATE_BYTES {
        return Err(malformed(format!("the frame expands to {size} bytes")));
    }
    Ok(size as usize)
}
