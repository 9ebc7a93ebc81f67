//! Import of the vision family. (Stub: filled in by its owner.)

use crate::cx::Registry;

pub fn register(_r: &mut Registry) {}
