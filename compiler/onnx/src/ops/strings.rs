//! Import of the strings family. (Stub: filled in by its owner.)

use crate::cx::Registry;

pub fn register(_r: &mut Registry) {}
