//! Where postcard writes a value: a vector, byte by byte.
//!
//! postcard's own vector flavors copy each varint with `extend_from_slice`, a `memmove` call
//! for one to five bytes. A state is thousands of varints, and those calls took about a sixth
//! of encoding one (BENCHMARKS.md, "Varints pushed, not copied").

use postcard::ser_flavors::Flavor;
use serde::Serialize;

/// Longest run of bytes pushed one by one; longer ones (texts) are copied at once.
const PUSHED_UP_TO: usize = 16;

struct Pushed(Vec<u8>);

impl Flavor for Pushed {
    type Output = Vec<u8>;

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        if data.len() <= PUSHED_UP_TO {
            for byte in data {
                self.0.push(*byte);
            }
        } else {
            self.0.extend_from_slice(data);
        }
        Ok(())
    }

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<Vec<u8>> {
        Ok(self.0)
    }
}

/// `buffer` with `value` appended in postcard's form.
pub(super) fn append(value: &impl Serialize, buffer: Vec<u8>) -> Vec<u8> {
    // postcard fails only on a sequence of unknown length, and every one here is a vector.
    postcard::serialize_with_flavor(value, Pushed(buffer)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::append;

    #[test]
    fn writes_what_postcard_writes_after_what_the_buffer_held() {
        let long = "a text longer than the bytes pushed one by one";
        let value = (u64::MAX, -3_i64, 300_u32, "short", long, vec![1_u64 << 40, 7], [9_u8; 20]);
        let mut expected = vec![5];
        expected.extend(postcard::to_allocvec(&value).expect("serializes"));
        assert_eq!(append(&value, vec![5]), expected);
    }
}
