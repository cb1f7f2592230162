//! Merging two [`Buckets`] (two shares of one entity, as a read or the recommendation index
//! puts a product's shares together) in one linear pass.

use std::cmp::Ordering::{Equal, Greater, Less};

use ecow::EcoString;
use thin_vec::ThinVec;

use super::{Buckets, Entry, narrow, text_order};

impl Buckets {
    /// Adds every row of `other`, as [`Self::add`] of each would, in one linear pass: merging a
    /// product's shares row by row moved every entry after each row that fell between two, which
    /// for a product's viewers is quadratic (a third of persona's CPU, in the minute after a
    /// catch-up, went to the recommendation index merging its products: BENCHMARKS.md, "Shares
    /// merged in one pass"). Both dictionaries are in text order, so their union renumbers each
    /// side's entries without reordering them, and the two runs of entries merge as sorted lists.
    pub fn merge(&mut self, other: &Buckets) {
        if other.is_empty() {
            return;
        }
        if self.is_empty() {
            *self = other.clone();
            return;
        }
        let (values, ours, theirs) = union(&self.named_values(), &other.named_values());
        let before = std::mem::take(&mut self.entries);
        let mut entries = Vec::with_capacity(before.len() + other.entries.len());
        let (mut left, mut right) =
            (renumbered(&before, ours).peekable(), renumbered(&other.entries, theirs).peekable());
        loop {
            let next = match (left.peek(), right.peek()) {
                (Some(l), Some(r)) => match (l.bucket, l.value).cmp(&(r.bucket, r.value)) {
                    Less => left.next(),
                    Greater => right.next(),
                    Equal => {
                        let (l, r) = (left.next(), right.next());
                        l.zip(r).map(|(l, r)| Entry {
                            rows: narrow(i64::from(l.rows) + i64::from(r.rows)),
                            ..l
                        })
                    }
                },
                (Some(_), None) => left.next(),
                (None, _) => right.next(),
            };
            match next {
                Some(entry) if entry.rows != 0 => entries.push(entry),
                Some(_) => {}
                None => break,
            }
        }
        self.entries = entries;
        self.values = values;
    }

    /// The dictionary's values an entry names.
    fn named_values(&self) -> Named<'_> {
        let mut is_named = vec![false; self.values.len() + 1];
        for entry in &self.entries {
            is_named[entry.value as usize] = true;
        }
        let named = self.values.iter().enumerate().filter(|(at, _)| is_named[at + 1]);
        Named {
            named: named.map(|(at, text)| (at as u32 + 1, text)).collect(),
            size: is_named.len(),
        }
    }
}

/// `entries` naming their values by `new` index: a renumbering by a union keeps their order.
fn renumbered(entries: &[Entry], new: Vec<u32>) -> impl Iterator<Item = Entry> + '_ {
    entries.iter().map(move |e| Entry { value: new[e.value as usize], ..*e })
}

/// The union of two dictionaries' named values (see [`Buckets::named_values`]), in text order,
/// and the new index of each old one on either side (`""` keeps 0).
fn union(ours: &Named<'_>, theirs: &Named<'_>) -> (ThinVec<EcoString>, Vec<u32>, Vec<u32>) {
    let mut values = ThinVec::with_capacity(ours.named.len().max(theirs.named.len()));
    let (mut our_index, mut their_index) = (vec![0; ours.size], vec![0; theirs.size]);
    let (mut our_named, mut their_named) =
        (ours.named.iter().peekable(), theirs.named.iter().peekable());
    loop {
        let order = match (our_named.peek(), their_named.peek()) {
            (Some((_, o)), Some((_, t))) => text_order(o.as_bytes(), t.as_bytes()),
            (Some(_), None) => Less,
            (None, Some(_)) => Greater,
            (None, None) => break,
        };
        // Indices from 1: `""` is 0 and never in the dictionary.
        let index = values.len() as u32 + 1;
        let ours = if order == Greater { None } else { our_named.next() };
        let theirs = if order == Less { None } else { their_named.next() };
        if let Some((old, text)) = ours {
            our_index[*old as usize] = index;
            values.push((*text).clone());
        }
        if let Some((old, text)) = theirs {
            their_index[*old as usize] = index;
            if order != Equal {
                values.push((*text).clone());
            }
        }
    }
    (values, our_index, their_index)
}

/// The values of a dictionary some entry names, by index (from 1), in order; `size` is one more
/// than the dictionary's length (`""`, 0, is not in it).
struct Named<'a> {
    named: Vec<(u32, &'a EcoString)>,
    size: usize,
}
