//! The tail fusion: contractions with elementwise tails (f32 and int8) on small programs.
