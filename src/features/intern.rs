//! Names read from the definitions (sources, columns, entities), interned.

use ustr::Ustr;

/// Interns a name read from the definitions: columns and sources are named by `&'static str`
/// everywhere (rows, filters, state), and there are only as many as the definitions declare.
pub fn intern(name: &str) -> &'static str {
    Ustr::from(name).as_str()
}
